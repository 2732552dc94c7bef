"""Gemma 3's GGUF files (llama.cpp's architecture "gemma3": Gemma 3 270M, 1B, 4B, ... text) for the one decoder
reader (io/gguf_decoder.py): its extra tensors and the parts llama.cpp fixes in code rather than in the metadata.

- Tensors beyond llama's: attn_q_norm and attn_k_norm (q/k RMSNorm per head), post_attention_norm and post_ffw_norm
  (the sandwich norms after each sub-layer); the head is tied to token_embd (no output.weight).
- convert_hf_to_gguf.py stores every norm weight of Gemma plus one (Gemma's RMSNorm scales by 1 + w): the one is
  taken off again at load (norm_shift), as transformers does, so the model is Gemma 3's description as it is.
- q/k rows are stored unpermuted (llama.cpp rotates gemma3 as NEOX: pairs HS/2 apart, as transformers does).
- Fixed in llama-model.cpp (LLM_ARCH_GEMMA3): every sixth layer attends globally and the others through the
  sliding window (set_swa_pattern(6)); the sliding layers rotate with base 10000; attention scales by
  1 / sqrt(key_length), except the 27B (62 layers): 1 / sqrt(n_embd / n_head). `gemma3.final_logit_softcapping` is
  read when present. The 4B+ files' linear rotary scaling applies to the global layers only (llama.cpp sets the
  sliding layers' scale to 1, as transformers does).
"""

from __future__ import annotations

from ..models import Gemma3, gemma3_config
from .gguf_decoder import GGUFArch
from .safetensors import quote

SLIDING_PATTERN = 6    # layer i is global when i % 6 == 5
LOCAL_ROPE_THETA = 10000.0
LAYERS_27B = 62        # the one size whose attention scale is 1 / sqrt(n_embd / n_head)


def gemma3_fields(fields: dict) -> dict:
    """DecoderConfig's fields of a gemma3 file: the shared ones (gguf_decoder.decoder_fields) and Gemma 3's own."""
    scaling = fields["rope_scaling"]
    if scaling is not None and scaling.get("rope_type") != "linear":
        raise ValueError(f"metadata gemma3.rope.scaling: a gemma3 file's rotary scaling must be linear (the 4B+ "
                         f"global layers'), got {quote(scaling)}")
    n_layer, n_head, head_dim = fields["n_layer"], fields["n_head"], fields["head_dim"]
    if head_dim is None:
        head_dim = fields["n_embd"] // n_head
    window = fields["sliding_window"]
    return {**fields,
            "layer_types": None if window is None else tuple(
                "full" if i % SLIDING_PATTERN == SLIDING_PATTERN - 1 else "sliding" for i in range(n_layer)),
            "rope_local_theta": None if window is None else LOCAL_ROPE_THETA,
            "query_pre_attn_scalar": float(fields["n_embd"] // n_head if n_layer == LAYERS_27B else head_dim)}


GEMMA3 = GGUFArch("gemma3", Gemma3, lambda fields: gemma3_config(**gemma3_fields(fields)), norm_shift=1.0,
                  layer_tensors={"attn_q_norm.weight": ("attn.sublayer.q_norm.weight",),
                                 "attn_k_norm.weight": ("attn.sublayer.k_norm.weight",),
                                 "post_attention_norm.weight": ("attn.post_ln.weight",),
                                 "post_ffw_norm.weight": ("ffn.post_ln.weight",)})
