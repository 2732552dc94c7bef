"""A Hugging Face folder is a security boundary too: config.json is checked field by field, and every tensor it
implies against the files, before a byte of the model is allocated; each failure is a ValueError naming the field
or the tensor. Uses GPT-2/BERT folders this test writes itself."""

from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np
import pytest

from pytransformer import from_pretrained
from pytransformer.io import load_file
from pytransformer.io.safetensors import parse_header
from pytransformer.models import GPT, GPTConfig

SMALL = GPTConfig(vocab_size=40, max_positions=16, n_layer=2, n_head=2, n_embd=8)


@pytest.fixture
def gpt2_folder(tmp_path):
    GPT(SMALL).save_pretrained(tmp_path)
    return tmp_path


def rewrite_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_the_written_folder_loads(gpt2_folder):
    assert from_pretrained(gpt2_folder).config.n_layer == 2


def test_a_config_claiming_a_big_model_fails_before_allocating_it(gpt2_folder):
    rewrite_config(gpt2_folder, n_layer=10, n_embd=2048, n_head=16, vocab_size=50257)  # 2 GB if built
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match="checkpoint does not fit the model: missing"):
            from_pretrained(gpt2_folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2.0
    assert peak < 64 << 20, f"peak {peak / 2**20:.0f} MiB allocated before refusing"


@pytest.mark.parametrize("changes,field", [
    ({"n_head": 0}, "n_head"), ({"n_head": 3}, "n_embd 8 must be a multiple of n_head"),
    ({"n_layer": -1}, "n_layer"), ({"n_layer": 10**9}, "n_layer"), ({"n_embd": "8"}, "n_embd"),
    ({"vocab_size": 10**12}, "vocab_size"), ({"layer_norm_epsilon": -1.0}, "layer_norm_epsilon"),
    ({"n_positions": True}, "n_positions"), ({"activation_function": ["relu"]}, "activation_function"),
    ({"architectures": ["GPT2ForQuestionAnswering"]}, "unsupported gpt2 architecture"),
])
def test_bad_fields_are_named(gpt2_folder, changes, field):
    rewrite_config(gpt2_folder, **changes)
    with pytest.raises(ValueError, match=field):
        from_pretrained(gpt2_folder)


def test_a_huge_but_valid_vocab_claim_is_a_size_mismatch_not_a_memory_error(gpt2_folder):
    rewrite_config(gpt2_folder, vocab_size=2**31 - 1)
    with pytest.raises(ValueError, match="mis-shaped.*wte"):
        from_pretrained(gpt2_folder)


@pytest.mark.parametrize("text,what", [("[1, 2]", "must be a JSON object"), ("{", "not valid JSON"),
                                       ("[" * 100000 + "]" * 100000, "nested too deeply|not valid JSON")])
def test_a_config_that_is_not_an_object(gpt2_folder, text, what):
    (gpt2_folder / "config.json").write_text(text)
    with pytest.raises(ValueError, match=what):
        from_pretrained(gpt2_folder)


def test_a_sharded_index_without_a_weight_map(gpt2_folder):
    (gpt2_folder / "model.safetensors").rename(gpt2_folder / "shard.safetensors")
    (gpt2_folder / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(ValueError, match="weight_map"):
        from_pretrained(gpt2_folder)
    (gpt2_folder / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../x.safetensors"}}')
    with pytest.raises(ValueError, match="must be a file in the folder"):
        from_pretrained(gpt2_folder)


def test_a_header_nested_100000_deep_is_a_value_error():
    raw = b"[" * 100000 + b"]" * 100000
    header = len(raw).to_bytes(8, "little") + raw
    with pytest.raises(ValueError, match="nested too deeply|not valid JSON"):
        parse_header(header, len(header))


def test_mmap_false_keeps_a_private_copy_that_survives_truncation(gpt2_folder):
    path = gpt2_folder / "model.safetensors"
    mapped_size = path.stat().st_size
    private = load_file(path, mmap=False)
    want = {k: v.copy() for k, v in private.items()}
    with open(path, "r+b") as f:
        f.truncate(16)  # another process cuts the file: the private copy does not care
    for k, v in private.items():
        np.testing.assert_array_equal(v, want[k])
    assert mapped_size > 16


def test_from_pretrained_mmap_false_gives_the_same_model(gpt2_folder):
    a, b = from_pretrained(gpt2_folder), from_pretrained(gpt2_folder, mmap=False)
    np.testing.assert_array_equal(a.params.data, b.params.data)
