"""Gemma 3 (text): a decoder whose description differs from Llama's in its parts -- RMSNorm scaling by (1 + w),
sandwich norms (before and after each sublayer), q/k norms per head, a GeGLU feed-forward, embeddings times
sqrt(n_embd), attention scaled by query_pre_attn_scalar ** -0.5, sliding-window layers with their own rotary base,
and optional final logit soft-capping. Its config is the DecoderConfig itself (`gemma3_config` fills in the parts)."""

from __future__ import annotations

from .decoder import Decoder, DecoderConfig


def gemma3_config(**fields) -> DecoderConfig:
    """A Gemma 3 description: the fields given (sizes, eps, rotary bases, window, layer_types, ...) over Gemma 3's
    fixed parts."""
    parts = dict(norm="rmsnorm", norm_offset=1.0, norm_placement="sandwich", qk_norm=True, positions="rotary",
                 ffn="gated", activation="gelu_tanh", embed_scale=True, tie_word_embeddings=True)
    return DecoderConfig(**{**parts, **fields})


class Gemma3(Decoder):
    """The decoder a Gemma 3 DecoderConfig describes. Parameters: embed.weight, blocks.i.attn.ln.weight (input norm),
    blocks.i.attn.post_ln.weight, blocks.i.attn.sublayer.{q,k,v,o}.weight, blocks.i.attn.sublayer.{q,k}_norm.weight,
    blocks.i.ffn.ln.weight (pre-feed-forward norm), blocks.i.ffn.post_ln.weight, blocks.i.ffn.sublayer.{gate,up,
    down}.weight, norm.weight, lm_head.weight (untied)."""
