"""Hostile Hugging Face folders: config.json fields out of range and safetensors headers that lie are each one
ValueError naming the file and the field (or the tensor, with the expected and the found shape), decided before
the model is allocated; weights holding NaN or inf load with a warning naming them. Fuzzers mutate the config of
a small folder of every family (GPT-2, BERT, ViT, Llama, Qwen2, Qwen3, Phi-3, Mistral) and the GGUF metadata of a tiny Llama, and the
safetensors header of a GPT-2 folder, with a seeded rng: every case loads or raises ValueError, in bounded time
and memory."""

from __future__ import annotations

import json
import math
import re
import struct
import time
import tracemalloc
import warnings

import numpy as np
import pytest

import tiny_gguf
from pytransformer import from_pretrained
from pytransformer.models import (BERT, GPT, ViT, BertConfig, DecoderConfig, GPTConfig, Llama, LlamaConfig, Mistral, Phi3,
                                  Qwen2, Qwen3, ViTConfig)

DECODER = dict(vocab_size=40, n_layer=2, n_embd=16, n_head=4, n_kv_head=2, intermediate_size=24, max_positions=32,
               tie_word_embeddings=False)

FAMILIES = {
    "gpt2": (GPT, GPTConfig(vocab_size=40, max_positions=16, n_layer=2, n_head=2, n_embd=8)),
    "bert": (BERT, BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=16, max_position_embeddings=16)),
    "vit": (ViT, ViTConfig(image_size=16, patch_size=4, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=16, num_labels=3)),
    "llama": (Llama, LlamaConfig(vocab_size=40, n_layer=2, n_embd=16, n_head=4, n_kv_head=2, intermediate_size=24,
                                 max_positions=32, tie_word_embeddings=False)),
    "qwen2": (Qwen2, DecoderConfig(**DECODER, qkv_bias=True, sliding_window=8, layer_types=("full", "sliding"))),
    "qwen3": (Qwen3, DecoderConfig(**DECODER, qk_norm=True, head_dim=6)),
    "phi3": (Phi3, DecoderConfig(**DECODER, rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 2.0],
                                                          "long_factor": [3.0, 4.0],
                                                          "original_max_position_embeddings": 16})),
    "mistral": (Mistral, DecoderConfig(**DECODER, sliding_window=8, layer_types=("sliding", "sliding"))),
}
LLAMA_SIZES = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "max_position_embeddings"]
# the sizes each family reads from config.json (every one required to be a positive integer in range)
SIZES = {"gpt2": ["vocab_size", "n_positions", "n_layer", "n_head", "n_embd"],
         "bert": ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size"],
         "vit": ["image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size"],
         "llama": LLAMA_SIZES, "qwen2": LLAMA_SIZES, "qwen3": LLAMA_SIZES, "phi3": LLAMA_SIZES,
         "mistral": LLAMA_SIZES}
EPS = {"gpt2": "layer_norm_epsilon", "bert": "layer_norm_eps", "vit": "layer_norm_eps", "llama": "rms_norm_eps",
       **{family: "rms_norm_eps" for family in ("qwen2", "qwen3", "phi3", "mistral")}}
NOT_SIZES = [0, -1, -(2**31), 2**31, 2**63, 10**30, 1.5, math.nan, math.inf, "8", True, None, [8], {"n": 8}, "x" * 10**5]
NOT_EPS = [0.0, -1e-5, 1.0, 2.0, math.nan, math.inf, -math.inf, "1e-5", True, None, [1e-5]]


def folder_of(family, tmp_path):
    model_class, config = FAMILIES[family]
    folder = tmp_path / family
    model_class(config).save_pretrained(folder)
    return folder


def config_of(folder):
    return json.loads((folder / "config.json").read_text())


def refused(path, match=None):
    with pytest.raises(ValueError, match=match) as e:
        from_pretrained(path)
    message = str(e.value)
    assert message.startswith(str(path)) and "\n" not in message and len(message) < len(str(path)) + 600, message
    assert message.count("config.json:") <= 1, message
    return message


def bounded(load, what, seconds=5.0, peak_bytes=64 << 20):
    """load() in bounded time and traced memory: returns whether it loaded (True) or raised ValueError (False)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            load()
        return True
    except ValueError:
        return False
    except Exception as e:
        raise AssertionError(f"{what}: {type(e).__name__}: {str(e)[:200]}") from e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        elapsed = time.perf_counter() - start
        assert elapsed < seconds and peak < peak_bytes, f"{what}: {elapsed:.1f} s, {peak >> 20} MiB"


# --- config.json -----------------------------------------------------------------------------------------------

def load_and_run(path, run=True):
    """from_pretrained(path), then one forward of three tokens; a ValueError must name the path it came from."""
    try:
        model = from_pretrained(path)
    except ValueError as e:
        assert str(e).startswith(str(path)), str(e)
        raise
    if run:
        model(np.array([[0, 1, 2]]))



@pytest.mark.parametrize("family", FAMILIES)
def test_every_size_field_out_of_range_is_refused_by_name(family, tmp_path):
    folder = folder_of(family, tmp_path)
    good = config_of(folder)
    for field in SIZES[family]:
        for value in NOT_SIZES:
            (folder / "config.json").write_text(json.dumps({**good, field: value}))
            message = refused(folder)
            assert f"config.json: {field}" in message or "does not fit" in message, (field, value, message)
            if not isinstance(value, int) or value <= 0:
                assert field in message, (field, value, message)


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_a_sliding_window_out_of_range_is_refused_by_name(family, tmp_path):
    folder = folder_of(family, tmp_path)
    good = config_of(folder)
    for value in NOT_SIZES:
        if value is not None:  # (None: no window)
            (folder / "config.json").write_text(json.dumps({**good, "sliding_window": value}))
            refused(folder, "config.json: sliding_window must be an integer in")


@pytest.mark.parametrize("family,field,value", [
    ("phi3", "rope_parameters", {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0, 2.0]}),
    ("phi3", "rope_parameters", {"rope_type": "longrope", "short_factor": [1.0, -2.0], "long_factor": [1.0, 2.0]}),
    ("phi3", "rope_parameters", {"rope_type": "dynamic", "factor": 2.0}),
    ("qwen2", "rope_parameters", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                                  "high_freq_factor": 1.0}),
    ("qwen2", "rope_parameters", {"rope_type": "linear", "factor": math.nan}),
    ("qwen2", "rope_parameters", "linear"),
    ("qwen2", "layer_types", ["full_attention", "local"]),
    ("qwen2", "max_window_layers", -1),
    ("qwen3", "rope_parameters", {"rope_type": "yarn", "factor": 4.0, "partial_rotary_factor": 0.5}),
    ("phi3", "original_max_position_embeddings", 1), ("phi3", "original_max_position_embeddings", 16.5),
    ("mistral", "hidden_act", "gelu"),
    ("mistral", "attention_bias", True)])
def test_a_familys_rotary_window_and_activation_fields_are_refused_by_name(tmp_path, family, field, value):
    folder = folder_of(family, tmp_path)
    config = config_of(folder)
    config.pop("layer_types", None)  # (Qwen2's sliding layers then follow max_window_layers)
    (folder / "config.json").write_text(json.dumps({**config, field: value, "use_sliding_window": True}))
    refused(folder, "config.json: .*(" + "|".join((field, "factor", "dynamic", "partial rotary", "layer_types")) + ")")


@pytest.mark.parametrize("family", FAMILIES)
def test_an_eps_out_of_range_is_refused_by_name(family, tmp_path):
    folder = folder_of(family, tmp_path)
    good = config_of(folder)
    for value in NOT_EPS:
        (folder / "config.json").write_text(json.dumps({**good, EPS[family]: value}))
        refused(folder, f"config.json: {EPS[family]} must be a number in")


@pytest.mark.parametrize("family,fields", [("gpt2", ("n_embd", "n_head")), ("bert", ("hidden_size", "num_attention_heads")),
                                           ("vit", ("hidden_size", "num_attention_heads")),
                                           ("llama", ("hidden_size", "num_attention_heads"))])
def test_heads_that_do_not_divide_the_width_are_refused(family, fields, tmp_path):
    folder = folder_of(family, tmp_path)
    llama = {"num_key_value_heads": 3, "head_dim": None} if family == "llama" else {}  # (no head size of its own)
    (folder / "config.json").write_text(json.dumps({**config_of(folder), fields[1]: 3, **llama}))
    refused(folder, f"{fields[0]} .* must be a multiple of {fields[1]} 3")


def test_a_llama_head_too_wide_to_describe_is_refused_before_allocating(tmp_path):
    folder = folder_of("llama", tmp_path)
    changes = {"hidden_size": 2**31 - 2, "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": None}
    (folder / "config.json").write_text(json.dumps({**config_of(folder), **changes}))
    assert not bounded(lambda: from_pretrained(folder), "wide head")
    refused(folder, "hidden_size / num_attention_heads = 2147483646 is past the 4096")


CONFIG_FUZZ_CASES = 150


@pytest.mark.parametrize("family", FAMILIES)
def test_fuzzed_configs_load_or_raise_value_error_naming_the_folder(family, tmp_path):
    folder = folder_of(family, tmp_path)
    good = config_of(folder)
    keys = sorted(good)
    rng = np.random.default_rng(len(family))
    values = NOT_SIZES + NOT_EPS + ["", "gelu", {}, [], 2**31 - 1, 2**31 - 2]
    outcomes = []
    for _ in range(CONFIG_FUZZ_CASES):
        cfg = dict(good)
        for key in rng.choice(keys, rng.integers(1, 4), replace=False):
            old = cfg[key]
            choices = values + ([old + 1, old * 2, old - 1, -old] if isinstance(old, (int, float)) else [])
            cfg[str(key)] = choices[rng.integers(len(choices))]
        (folder / "config.json").write_text(json.dumps(cfg))

        def load():
            load_and_run(folder, run=family != "vit")

        outcomes.append(bounded(load, json.dumps({k: v for k, v in cfg.items() if v != good.get(k)})[:300]))
    assert any(outcomes) and not all(outcomes)


@pytest.mark.parametrize("key,value", [
    ("llama.block_count", 0), ("llama.block_count", 2**31), ("llama.embedding_length", 0),
    ("llama.embedding_length", 2**31 - 2), ("llama.attention.head_count", 0), ("llama.attention.head_count", 3),
    ("llama.attention.head_count", 2**31), ("llama.attention.head_count_kv", 3), ("llama.attention.head_count_kv", 0),
    ("llama.feed_forward_length", 0), ("llama.context_length", 0), ("llama.attention.key_length", 2**20),
    ("llama.attention.key_length", 15), ("llama.attention.layer_norm_rms_epsilon", math.nan),
    ("llama.attention.layer_norm_rms_epsilon", -1.0), ("llama.rope.freq_base", math.inf),
    ("llama.rope.freq_base", 0.0), ("llama.vocab_size", 0), ("llama.rope.scaling.type", "yarn"),
    ("general.architecture", "gpt2")])
def test_gguf_llama_fields_out_of_range_are_refused_by_name(tmp_path, key, value):
    V = tiny_gguf.V
    vtype = V.STRING if isinstance(value, str) else V.FLOAT32 if isinstance(value, float) else V.UINT32 \
        if value < 2**32 else V.UINT64
    path = tiny_gguf.llama(tmp_path / "bad.gguf", **{key.replace(".", "__"): (value, vtype)})
    refused(path, f"metadata .*{re.escape(key)}")


GGUF_CONFIG_FUZZ_CASES = 120


def test_fuzzed_gguf_llama_metadata_loads_or_raises_value_error_naming_the_file(tmp_path):
    V = tiny_gguf.V
    keys = [k for k in tiny_gguf.metadata() if k.startswith("llama.")] + [
        "llama.attention.key_length", "llama.rope.dimension_count", "llama.vocab_size", "llama.rope.scaling.type",
        "general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.pre",
        "tokenizer.chat_template", "tokenizer.ggml.add_bos_token"]
    hostile = [(0, V.UINT32), (1, V.UINT32), (3, V.UINT32), (2**32 - 1, V.UINT32), (-1, V.INT32), (2**63, V.UINT64),
               (-(2**63), V.INT64), (math.nan, V.FLOAT32), (math.inf, V.FLOAT64), (-0.0, V.FLOAT32), (1e-6, V.FLOAT32),
               (True, V.BOOL), ("llama", V.STRING), ("x" * 5000, V.STRING), ([1, 2, 3], V.ARRAY),
               (["a", "b"], V.ARRAY), ([], V.ARRAY), (64, V.UINT8), (16, V.UINT16), (259, V.UINT32)]
    rng = np.random.default_rng(7)
    path = tmp_path / "fuzz.gguf"
    outcomes = []
    for _ in range(GGUF_CONFIG_FUZZ_CASES):
        changes = {}
        for key in rng.choice(keys, rng.integers(1, 3), replace=False):
            value, vtype = hostile[rng.integers(len(hostile))]
            if vtype == V.ARRAY and value == []:
                value, vtype = [0], V.ARRAY  # (the writer cannot type an empty array)
            changes[str(key).replace(".", "__")] = (value, vtype)
        tiny_gguf.llama(path, **changes)

        def load():
            load_and_run(path)

        outcomes.append(bounded(load, str(changes)[:300]))
    assert any(outcomes) and not all(outcomes)


# --- tensors ------------------------------------------------------------------------------------------------------


def rewrite_tensors(folder, change):
    """Rewrite model.safetensors with change(header dict, data bytes) -> (header, data)."""
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = change(json.loads(raw[8:8 + n]), raw[8 + n:])
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_a_transposed_conv1d_weight_is_refused_with_both_shapes(tmp_path):
    folder = folder_of("gpt2", tmp_path)  # (c_fc is (8, 32) in the file; stored as (32, 8) it has the same size)

    def transpose(header, data):
        header["transformer.h.1.mlp.c_fc.weight"]["shape"] = [32, 8]
        return header, data

    rewrite_tensors(folder, transpose)
    refused(folder, r"mis-shaped \[transformer.h.1.mlp.c_fc.weight: expected \(8, 32\), found \(32, 8\)\]")


def test_a_transposed_llama_projection_is_refused_with_both_shapes(tmp_path):
    folder = folder_of("llama", tmp_path)

    def transpose(header, data):
        header["model.layers.0.mlp.gate_proj.weight"]["shape"] = [16, 24]
        return header, data

    rewrite_tensors(folder, transpose)
    refused(folder, r"model.layers.0.mlp.gate_proj.weight: expected \(24, 16\), found \(16, 24\)")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_weight_holding_nan_or_inf_is_a_warning_naming_it(family, tmp_path):
    folder = folder_of(family, tmp_path)
    raw = (folder / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    name = max(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (none on a clean folder)
        from_pretrained(folder)
    for bad in (np.nan, -np.inf):
        def poison(header, data, bad=bad):
            begin = header[name]["data_offsets"][0]
            return header, data[:begin] + np.float32(bad).tobytes() + data[begin + 4:]

        rewrite_tensors(folder, poison)
        with pytest.warns(RuntimeWarning, match=fr"{folder}: NaN or inf in 1 tensor\(s\): \[{name}\]"):
            from_pretrained(folder)


HEADER_FUZZ_CASES = 300
NESTING = (2, 50, 5000, 200000)


def header_text(header: dict) -> bytes:
    text = json.dumps(header).encode()
    for depth in NESTING:
        text = text.replace(f'"<nested {depth}>"'.encode(), b"[" * depth + b"]" * depth)
    return text


def mutate_header(header: dict, data_len: int, rng) -> tuple[str, dict]:
    """One hostile edit of a safetensors header: offsets, dtypes, shapes, overlapping ranges, JSON nesting."""
    names = sorted(k for k in header if k != "__metadata__")
    name = names[rng.integers(len(names))]
    info = dict(header[name])
    kind = ["offsets", "dtype", "shape", "overlap", "nesting", "keys"][rng.integers(6)]
    begin, end = info["data_offsets"]
    if kind == "offsets":
        choices = [[end, begin], [begin + 4, end + 4], [begin - 4, end - 4], [begin, data_len + 4], [-8, end],
                   [begin, 2**64], [float(begin), end], [str(begin), end], [begin], [begin, end, end], None]
        info["data_offsets"] = choices[rng.integers(len(choices))]
    elif kind == "dtype":
        info["dtype"] = ["F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "Q4_0", "f32", None, 4][rng.integers(11)]
    elif kind == "shape":
        shape = info["shape"]
        choices = [shape[::-1], shape + [1], shape[:-1], [1] + shape, [-s for s in shape], [0] + shape,
                   [2**40, 2**40], [2**64] + shape, [float(s) for s in shape], [str(s) for s in shape], "shape",
                   [[s] for s in shape]]
        info["shape"] = choices[rng.integers(len(choices))]
    elif kind == "overlap":  # another tensor's bytes, or straddling a neighbour
        other = header[names[rng.integers(len(names))]]["data_offsets"]
        info["data_offsets"] = [other[0], other[0] + end - begin] if rng.integers(2) else [begin + 4, end + 4]
    elif kind == "nesting":  # (a marker: header_text writes the brackets, deeper than json.dumps recurses)
        info[["dtype", "shape", "data_offsets"][rng.integers(3)]] = f"<nested {rng.choice(NESTING)}>"
    else:
        choices = [("drop", None), ("extra", 1), ("metadata", {"a": [1]}), ("metadata", "x"), ("name", "")]
        what, value = choices[rng.integers(len(choices))]
        if what == "drop":
            info.pop(["dtype", "shape", "data_offsets"][rng.integers(3)])
        elif what == "extra":
            info["extra"] = value
        elif what == "metadata":
            return f"{kind}:{what}", {**header, "__metadata__": value}
        else:
            return f"{kind}:{what}", {**{k: v for k, v in header.items() if k != name}, value: info}
    return f"{kind}:{name}", {**header, name: info}


def test_fuzzed_safetensors_headers_load_or_raise_value_error(tmp_path):
    folder = folder_of("gpt2", tmp_path)
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    rng = np.random.default_rng(11)
    outcomes = []
    for _ in range(HEADER_FUZZ_CASES):
        what, hostile = mutate_header(header, len(data), rng)
        text = header_text(hostile)
        length = len(text) if rng.integers(8) else int(rng.choice([0, 7, len(text) + 1, len(text) - 1, 2**63]))
        path.write_bytes(struct.pack("<Q", length) + text + data)

        def load():
            load_and_run(folder)

        outcomes.append(bounded(load, what))
    assert any(outcomes) and not all(outcomes)


def test_a_config_json_larger_than_any_config_is_refused_unread(tmp_path, monkeypatch):
    from pytransformer.io import hf_common

    folder = folder_of("gpt2", tmp_path)
    monkeypatch.setattr(hf_common, "MAX_HEADER", 1000)  # (a small limit stands for the 100 MB one)
    (folder / "config.json").write_text(json.dumps({**config_of(folder), "padding": " " * 1000}))
    refused(folder, "config.json: more than 1000 bytes")


def test_a_config_json_that_is_a_folder_is_refused(tmp_path):
    folder = folder_of("gpt2", tmp_path)
    (folder / "config.json").unlink()
    (folder / "config.json").mkdir()
    refused(folder, "config.json: not a file")
