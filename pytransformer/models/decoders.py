"""The decoder families that are their description alone: Qwen2 / Qwen2.5, Qwen3, Phi-3 and Mistral. Each is a
`Decoder` over a `DecoderConfig` (made from a Hugging Face config.json or a GGUF file's metadata by io/); the class
names the family, so that checkpoints record it and save_pretrained writes its Hugging Face layout. Parameter names
are Llama's: embed.weight, blocks.i.attn.ln.weight, blocks.i.attn.sublayer.{q,k,v,o}.weight (q/k/v biases in
Qwen2, q_norm/k_norm in Qwen3), blocks.i.ffn.ln.weight, blocks.i.ffn.sublayer.{gate,up,down}.weight, norm.weight,
lm_head.weight (untied)."""

from __future__ import annotations

from .decoder import Decoder


class Qwen2(Decoder):
    """Qwen2 / Qwen2.5: Llama's layout with q, k and v biases (sliding windows only where use_sliding_window)."""


class Qwen3(Decoder):
    """Qwen3: Llama's layout with an RMSNorm on each query and key head and a head_dim of its own."""


class Phi3(Decoder):
    """Phi-3: Llama's layout (q|k|v and gate|up fused in its files), longrope rotary scaling in the 128k models."""


class Mistral(Decoder):
    """Mistral: Llama's layout with sliding-window attention on every layer when sliding_window is set."""
