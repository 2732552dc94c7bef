"""ViT's patch embedding: an image (B, Ch, H, W) cut into p x p patches, each flattened (Ch * p * p, in
(channel, row, column) order as a stride-p convolution sees it) through one shared Linear, then a learnable
class token in front: (B, 1 + H/p * W/p, C)."""

from __future__ import annotations

import numpy as np

from .. import ops
from ..cuda import DeviceArray, to_device
from .layers import Linear
from .module import Module, Parameter, normal


def image_to_patches(x, p):
    """(B, Ch, H, W) -> (B, N, Ch * p * p), N = (H / p) * (W / p) in row-major patch order."""
    B, Ch, H, W = x.shape
    x = x.reshape(B, Ch, H // p, p, W // p, p).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(x).reshape(B, (H // p) * (W // p), Ch * p * p)


class PatchEmbedding(Module):
    def __init__(self, image_size: int, patch_size: int, channels: int, C: int, std: float = 0.02):
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} must be a multiple of the patch size {patch_size}")
        self.p = patch_size
        self.image_size = image_size
        self.channels = channels
        self.proj = Linear(channels * patch_size * patch_size, C, True, std)
        self.cls_token = Parameter((1, 1, C), normal(std))

    def forward(self, images):
        if images.ndim != 4 or images.shape[1:] != (self.channels, self.image_size, self.image_size):
            raise ValueError(f"images must be (B, {self.channels}, {self.image_size}, {self.image_size}), "
                             f"got {tuple(images.shape)}")
        patches = image_to_patches(np.ascontiguousarray(images, np.float32), self.p)
        if type(self.cls_token.data) is DeviceArray:  # (the model is on a GPU: the patches go there)
            x = self.proj.forward(to_device(patches))
            B, N, C = x.shape
            out = DeviceArray.empty((B, 1 + N, C))
            for b in range(B):
                out[b][:1].copy_from(self.cls_token.data[0])
                out[b][1:].copy_from(x[b])
            return out
        x = self.proj.forward(patches)
        cls = np.broadcast_to(self.cls_token.data, (x.shape[0], 1, x.shape[2]))
        return np.ascontiguousarray(np.concatenate([cls, x], axis=1))

    def backward(self, dout):
        if type(dout) is DeviceArray:
            B, N1, C = dout.shape
            rows = DeviceArray.empty((B, N1 - 1, C))
            for b in range(B):
                rows[b].copy_from(dout[b][1:])
            # the class token's gradient: the B rows at position 0 summed in order (an embedding backward onto
            # one row)
            firsts = to_device(np.arange(B, dtype=np.int64) * N1)
            cls_rows = ops.embedding_forward(firsts, dout.reshape(B * N1, C))
            ops.embedding_backward(cls_rows, to_device(np.zeros(B, np.int64)), 1,
                                   dtable=self.cls_token.grad.reshape(1, C))
            self.proj.backward(rows)
            return None
        self.cls_token.grad[0, 0] += dout[:, 0].sum(axis=0)
        self.proj.backward(np.ascontiguousarray(dout[:, 1:]))
        return None
