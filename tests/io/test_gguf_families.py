"""GGUF files of each llama-like family, written here with the `gguf` package as llama.cpp's converter lays them out
(convert_hf_to_gguf.py: q/k rows permuted for the llama architecture only, Phi-3's fused attn_qkv and gate|up
ffn_up, its rope_factors_long/short tensors, Llama 3's rope_freqs divisors), give transformers' logits and greedy
tokens on the same (rounded) weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hf_families import CASES, ORIGINAL, V, hf_tiny, rel
from pytransformer.io.hf import from_pretrained
from tiny_gguf import write

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
QT = gguf.GGMLQuantizationType
GV = gguf.GGUFValueType

# family -> llama.cpp's architecture (Mistral and Llama 3 are written as "llama")
ARCH = {"qwen2": "qwen2", "qwen2-tied": "qwen2", "qwen3": "qwen3", "phi3": "phi3", "mistral": "llama",
        "llama3": "llama"}  # (llama.cpp records no sliding window for qwen2 and llama files: those cases are not here)
# Hugging Face's tensor names -> llama.cpp's (gguf-py's tensor map for these architectures)
GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
         "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "self_attn.qkv_proj": "attn_qkv", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf_name):
    base, suffix = hf_name.rsplit(".", 1)
    if base in GLOBAL:
        return f"{GLOBAL[base]}.{suffix}"
    _, _, i, part = base.split(".", 3)
    return f"blk.{i}.{LAYER[part]}.{suffix}"


def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: q and k rows reordered for llama.cpp's rotary pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_divisors(rope):
    """convert_hf_to_gguf.py's rope_freqs for Llama 3: per frequency, the factor inv_freq is divided by."""
    hs = CASES["llama3"][3].get("head_dim") or 48 // 6
    out = []
    for freq in 1.0 / rope["rope_theta"] ** (np.arange(0, hs, 2) / hs):
        wavelen = 2 * math.pi / freq
        if wavelen < rope["original_max_position_embeddings"] / rope["high_freq_factor"]:
            out.append(1.0)
        elif wavelen > rope["original_max_position_embeddings"] / rope["low_freq_factor"]:
            out.append(rope["factor"])
        else:
            smooth = (rope["original_max_position_embeddings"] / wavelen - rope["low_freq_factor"]) / \
                (rope["high_freq_factor"] - rope["low_freq_factor"])
            out.append(1 / ((1 - smooth) / rope["factor"] + smooth))
    return np.array(out, np.float32)


def to_gguf(hf, family, path, changes=None):
    """The file llama.cpp's converter would write (matrices alternately F16 and BF16, vectors F32), and the state
    dict transformers must hold to compute what the file holds (the matrices' rounded values). changes: metadata
    keys or tensor names -> a new (value, type) / array, or None to drop it."""
    cfg, arch = hf.config, ARCH[family]
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hs = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    tensors, dense = [], {}
    for k, (name, value) in enumerate(hf.state_dict().items()):
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        w = value.numpy()
        g = gguf_name(name)
        if arch == "llama" and ".attn_q." in g:
            w = permute(w, n_head)
        elif arch == "llama" and ".attn_k." in g:
            w = permute(w, n_kv)
        if w.ndim == 1:
            tensors.append((g, w, "F32", w.shape))
            dense[name] = value.numpy()
            continue
        qtype = ("F16", "BF16")[k % 2]
        q = gguf.quants.quantize(w.astype(np.float32), getattr(QT, qtype))
        tensors.append((g, q.view(np.uint8).reshape(w.shape[0], -1), qtype, w.shape))
        rounded = gguf.quants.dequantize(q, getattr(QT, qtype)).reshape(w.shape)
        if arch == "llama" and (".attn_q." in g or ".attn_k." in g):  # (back to Hugging Face's row order)
            heads = n_head if ".attn_q." in g else n_kv
            rounded = rounded.reshape(heads, rounded.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
        dense[name] = rounded
    md = {f"{arch}.block_count": (cfg.num_hidden_layers, GV.UINT32),
          f"{arch}.context_length": (cfg.max_position_embeddings, GV.UINT32),
          f"{arch}.embedding_length": (cfg.hidden_size, GV.UINT32),
          f"{arch}.feed_forward_length": (cfg.intermediate_size, GV.UINT32),
          f"{arch}.attention.head_count": (n_head, GV.UINT32), f"{arch}.attention.head_count_kv": (n_kv, GV.UINT32),
          f"{arch}.attention.key_length": (hs, GV.UINT32), f"{arch}.attention.value_length": (hs, GV.UINT32),
          f"{arch}.rope.freq_base": (500.0, GV.FLOAT32),
          f"{arch}.attention.layer_norm_rms_epsilon": (cfg.rms_norm_eps, GV.FLOAT32)}
    rope = cfg.rope_parameters
    if rope["rope_type"] == "llama3":
        tensors.append(("rope_freqs.weight", llama3_divisors(rope), "F32", (hs // 2,)))
    if rope["rope_type"] == "longrope":
        scale = cfg.max_position_embeddings / cfg.original_max_position_embeddings
        md[f"{arch}.rope.scaling.attn_factor"] = (math.sqrt(1 + math.log(scale) / math.log(ORIGINAL)), GV.FLOAT32)
        md[f"{arch}.rope.scaling.original_context_length"] = (ORIGINAL, GV.UINT32)
        md[f"{arch}.rope.dimension_count"] = (hs, GV.UINT32)
        for which in ("long", "short"):
            factors = np.array(rope[f"{which}_factor"], np.float32)
            tensors.append((f"rope_factors_{which}.weight", factors, "F32", factors.shape))
    for key, value in (changes or {}).items():
        md.pop(key, None)
        tensors = [t for t in tensors if t[0] != key]
        if isinstance(value, np.ndarray):
            tensors.append((key, value, "F32", value.shape))
        elif value is not None:
            md[key] = value
    return write(path, tensors, md, arch), dense


@pytest.mark.parametrize("family", ARCH)
def test_each_familys_gguf_gives_transformers_logits_and_tokens(tmp_path, rng, family):
    hf, _ = hf_tiny(tmp_path, family)
    path, dense = to_gguf(hf, family, tmp_path / f"{family}.gguf")
    ours = from_pretrained(path)
    with torch.no_grad():
        loaded = hf.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in dense.items()},
                                    strict=False)
        assert loaded.missing_keys == (["lm_head.weight"] if hf.config.tie_word_embeddings else [])  # (tied)
        ids = rng.integers(0, V, (2, 2 * ORIGINAL))  # (past the original length: the long or scaled frequencies)
        want = hf(torch.from_numpy(ids)).logits.numpy()
    assert rel(ours(ids), want) < 1e-4
    prompt = ids[:1, :ORIGINAL - 5]
    np.testing.assert_array_equal(ours.generate(prompt, 10, temperature=0.0),
                                  hf.generate(torch.from_numpy(prompt), max_new_tokens=10, do_sample=False,
                                              pad_token_id=0).numpy())


def test_phi3s_fused_tensors_stay_the_files_blocks(tmp_path):
    """attn_qkv and ffn_up are split into q, k, v and gate, up as views of the mapped file: nothing copied."""
    hf, _ = hf_tiny(tmp_path, "phi3")
    path, _ = to_gguf(hf, "phi3", tmp_path / "phi3.gguf")
    attn = from_pretrained(path).blocks[0].attn.sublayer
    q, k, v = (layer.quantized.data for layer in (attn.q, attn.k, attn.v))
    assert not any(a.flags.owndata for a in (q, k, v))
    assert k.ctypes.data == q.ctypes.data + q.nbytes and v.ctypes.data == k.ctypes.data + k.nbytes


@pytest.mark.parametrize("family,key,value,match", [
    ("qwen2", "qwen2.attention.head_count_kv", (4, GV.UINT32), "metadata qwen2.attention.head_count_kv 4 must divide"),
    ("qwen2", "qwen2.rope.scaling.type", ("yarn", GV.STRING), "metadata qwen2.rope.scaling.type 'yarn' is not"),
    ("qwen2", "blk.1.attn_v.bias", None, r"missing \['blk.1.attn_v.bias'\]"),
    ("qwen3", "blk.0.attn_k_norm.weight", np.ones(8, np.float32), r"blk.0.attn_k_norm.weight: expected \(16,\)"),
    ("phi3", "rope_factors_long.weight", np.ones(3, np.float32), "rope_factors_long.weight must be 4 floats"),
    ("phi3", "rope_factors_short.weight", -np.ones(4, np.float32), "rope_factors_short.weight must hold positive"),
    ("phi3", "phi3.rope.scaling.attn_factor", (math.nan, GV.FLOAT32), "metadata phi3.rope.scaling.attn_factor"),
    ("phi3", "phi3.rope.scaling.original_context_length", None,
     "metadata has no phi3.rope.scaling.original_context_length"),
    ("phi3", "blk.0.attn_qkv.weight", np.ones((40, 48), np.float32), r"blk.0.attn_qkv.weight: expected \(80, 48\)"),
    ("llama3", "rope_freqs.weight", np.full(4, math.inf, np.float32), "rope_freqs.weight must hold positive"),
    ("llama3", "llama.attention.sliding_window", (4, GV.UINT32), "sliding_window 4 is not supported by the llama"),
])
def test_a_familys_bad_metadata_or_tensor_is_refused_by_name(tmp_path, family, key, value, match):
    hf, _ = hf_tiny(tmp_path, family)
    path, _ = to_gguf(hf, family, tmp_path / f"{family}.gguf", {key: value})
    with pytest.raises(ValueError, match=match) as e:
        from_pretrained(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
