"""ViT's patch embedding: an image (B, Ch, H, W) cut into p x p patches, each flattened (Ch * p * p, in
(channel, row, column) order as a stride-p convolution sees it) through one shared Linear, then a learnable
class token in front: (B, 1 + H/p * W/p, C)."""

from __future__ import annotations

import numpy as np

from .. import ops
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
        x = self.proj.forward(ops.like(patches, self.cls_token.data))  # (the patches go where the model lives)
        return ops.prepend_row(self.cls_token.data, x)

    def backward(self, dout):
        self.proj.backward(ops.split_first_row(dout, self.cls_token.grad.reshape(-1)))
        return None
        self.cls_token.grad[0, 0] += dout[:, 0].sum(axis=0)
        self.proj.backward(np.ascontiguousarray(dout[:, 1:]))
        return None
