"""A PyTorch GPT that mirrors pytransformer.models.GPT parameter for parameter (same names, same layout), for
side-by-side training runs: torch eager with F.scaled_dot_product_attention, as a torch user would write it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class TorchGPT(torch.nn.Module):
    def __init__(self, model):
        """Copies the current parameters of a pytransformer GPT (float32)."""
        super().__init__()
        self.cfg = model.config
        self.p = torch.nn.ParameterDict({name.replace(".", "__"): torch.nn.Parameter(torch.tensor(p.data.copy()))
                                         for name, p in model.params})

    def w(self, name):
        return self.p[name.replace(".", "__")]

    def linear(self, x, prefix):
        return F.linear(x, self.w(prefix + "weight"), self.w(prefix + "bias"))

    def ln(self, x, prefix):
        return F.layer_norm(x, x.shape[-1:], self.w(prefix + "weight"), self.w(prefix + "bias"), self.cfg.norm_eps)

    def forward(self, idx, targets=None):
        c = self.cfg
        B, T = idx.shape
        C, NH = c.n_embd, c.n_head
        x = self.w("wte.weight")[idx] + self.w("wpe.weight")[:T]
        for l in range(c.n_layer):
            pre = f"blocks.{l}."
            h = self.ln(x, pre + "attn.ln.")
            q, k, v = (self.linear(h, f"{pre}attn.sublayer.{n}.").view(B, T, NH, C // NH).transpose(1, 2) for n in "qkv")
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + self.linear(a, pre + "attn.sublayer.o.")
            h = self.ln(x, pre + "ffn.ln.")
            h = F.gelu(self.linear(h, pre + "ffn.sublayer.fc1."), approximate="tanh")
            x = x + self.linear(h, pre + "ffn.sublayer.fc2.")
        logits = self.ln(x, "ln_f.") @ self.w("wte.weight").T
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def param_groups(self, model, weight_decay):
        decay = [self.w(n) for n, p in model.params if len(p.shape) >= 2]
        rest = [self.w(n) for n, p in model.params if len(p.shape) < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
