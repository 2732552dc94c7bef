"""Tiny random transformers checkpoints of the llama-like families (Qwen2 with and without sliding layers, Qwen3,
Phi-3 with longrope, Mistral with and without its window, Llama 3.2 with llama3 scaling), made here for the family tests of the Hugging Face and GGUF loaders."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer.models import Llama, Mistral, Phi3, Qwen2, Qwen3

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

V, C, F, NH, NKV = 101, 48, 80, 6, 2
HS = C // NH
ORIGINAL = 16  # Phi-3's pretraining length here: prompts and generations cross it (short -> long factors)


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def _longrope(rng):
    return {"rope_type": "longrope", "rope_theta": 500.0, "short_factor": list(rng.uniform(1, 3, HS // 2)),
            "long_factor": list(rng.uniform(2, 8, HS // 2))}


# family -> (transformers config class, model class, our class, extra config fields)
CASES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", Qwen2, {}),
    "qwen2-tied": ("Qwen2Config", "Qwen2ForCausalLM", Qwen2, {"tie_word_embeddings": True}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", Phi3, {"original_max_position_embeddings": ORIGINAL,
                                                     "rope_parameters": _longrope}),
    "qwen2-window": ("Qwen2Config", "Qwen2ForCausalLM", Qwen2, {"use_sliding_window": True, "sliding_window": 5,
                                                                "max_window_layers": 1}),  # (layer 1 slides)
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", Qwen3, {"head_dim": 16}),  # (q/k norms; 6 * 16 != 48)
    "mistral": ("MistralConfig", "MistralForCausalLM", Mistral, {"sliding_window": None, "head_dim": 10}),
    "mistral-window": ("MistralConfig", "MistralForCausalLM", Mistral, {"sliding_window": 7}),
    # Llama 3.2's shape: llama3 rotary scaling (a smoothed band and a divided band at these sizes), tied head
    "llama3": ("LlamaConfig", "LlamaForCausalLM", Llama, {"tie_word_embeddings": True, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": ORIGINAL}}),
}


def hf_tiny(tmp_path, family, seed=0, shard=False):
    """A transformers model of the family with random weights (norms and biases away from their init) and its
    folder."""
    config_class, model_class, _, extra = CASES[family]
    rng = np.random.default_rng(seed)
    extra = {k: v(rng) if callable(v) else v for k, v in extra.items()}
    fields = dict(vocab_size=V, hidden_size=C, intermediate_size=F, num_hidden_layers=2, num_attention_heads=NH,
                  num_key_value_heads=NKV, max_position_embeddings=64, rms_norm_eps=1e-5,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0}, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    cfg = getattr(transformers, config_class)(**{**fields, **extra})
    model = getattr(transformers, model_class)(cfg).float().eval()
    model.model.embed_tokens.padding_idx = None  # (torch would keep the padding row's gradient at zero)
    with torch.no_grad():  # norms away from 1 and biases away from 0, so that their gradients are tested
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / f"{family}-{seed}"
    model.save_pretrained(folder, **({"max_shard_size": "40KB"} if shard else {}))
    return model, folder
