"""The GGUF reader: files written by the `gguf` package (every tensor type, every metadata type) read back exactly;
hostile and truncated files refused with ValueError naming the problem (never a crash, a hang or a huge
allocation); a tiny Llama written as llama.cpp's converter writes it loads and matches transformers."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from pytransformer import _core, ops
from pytransformer import reference as ref
from pytransformer.io import gguf as ours
from pytransformer.io.gguf import read_gguf
from pytransformer.opcases import QUANT_TYPES, random_blocks
from tiny_gguf import TOKENS, write

gguf = pytest.importorskip("gguf")
QT = gguf.GGMLQuantizationType
TYPES = list(ops.QTYPES)


def test_the_type_tables_agree_with_the_gguf_package_and_the_kernels():
    assert sorted(QUANT_TYPES) == sorted(TYPES) == sorted(ours._BLOCKS)  # (every type has its op cases)
    for name, (values, size) in ours._BLOCKS.items():
        assert ops.QTYPES[name] == getattr(QT, name).value
        assert gguf.GGML_QUANT_SIZES[getattr(QT, name)] == (values, size)
        assert _core.quant_row_bytes(ops.QTYPES[name], 3 * values) == 3 * size
        assert _core.quant_row_bytes(ops.QTYPES[name], 3 * values + 1) == (-1 if values > 1 else 3 * size + size)
    for t in QT:  # (ids newer than the reader's table are named by number)
        assert ours.type_name(t.value) in (t.name, f"ggml type {t.value}")
    assert ours.type_name(19) == "IQ1_S" and ours.type_name(1000) == "ggml type 1000"


@pytest.mark.parametrize("qtype", [t for t in TYPES if ours._BLOCKS[t][0] > 1])
def test_a_row_that_is_not_whole_blocks_is_refused_by_name(tmp_path, qtype):
    values = ours._BLOCKS[qtype][0]
    path = tmp_path / "ragged.gguf"
    path.write_bytes(header(n_tensors=1) + gstr("w") + struct.pack("<IQIQ", 1, values + 1, ops.QTYPES[qtype], 0)
                     + bytes(1024))
    with pytest.raises(ValueError, match=f"'w': a row of {values + 1} values is not a whole number of {qtype}"):
        read_gguf(path)


@pytest.fixture(scope="module")
def every_type(tmp_path_factory):
    rng = np.random.default_rng(0)
    tensors = []
    for i, t in enumerate(TYPES):
        rows, cols = 3 + i % 5, 512
        data = rng.standard_normal((rows, cols)).astype(np.float32) if t == "F32" else random_blocks(rng, t, rows, cols)
        tensors.append((f"t.{t}", data, t, (rows, cols)))
    V = gguf.GGUFValueType
    metadata = {"u8": (7, V.UINT8), "i8": (-7, V.INT8), "u16": (700, V.UINT16), "i16": (-700, V.INT16),
                "u32": (70000, V.UINT32), "i32": (-70000, V.INT32), "f32": (0.5, V.FLOAT32), "b": (True, V.BOOL),
                "s": ("héllo ✓", V.STRING), "u64": (2**40, V.UINT64), "i64": (-(2**40), V.INT64),
                "f64": (0.25, V.FLOAT64), "ai": ([1, 2, 3], V.ARRAY), "as": (["a", "", "ü"], V.ARRAY)}
    path = write(tmp_path_factory.mktemp("gguf") / "every.gguf", tensors, metadata)
    return path, tensors, metadata


def test_every_tensor_type_reads_back_and_dequantises_like_the_gguf_package(every_type):
    path, tensors, _ = every_type
    f = read_gguf(path)
    theirs = gguf.GGUFReader(str(path))
    by_name = {t.name: t for t in theirs.tensors}
    for name, data, qtype, shape in tensors:
        info = f.tensors[name]
        assert info.qtype == qtype and info.shape == shape
        q = f.quantized(name)
        np.testing.assert_array_equal(q.data.reshape(-1), np.asarray(by_name[name].data).view(np.uint8).reshape(-1))
        want = gguf.quants.dequantize(np.asarray(by_name[name].data), getattr(QT, qtype)).reshape(shape)
        scale = np.abs(want).max()  # (equal up to the rounding of d * sc * q - dmin * m: one fused, one not)
        assert np.abs(ops.dequantize(q) - want).max() <= 1e-6 * scale, qtype
        assert np.abs(ref.dequantize(q.data, qtype, shape[1]) - want).max() <= 1e-6 * scale, qtype


def test_every_metadata_type_reads_back(every_type):
    path, _, metadata = every_type
    md = read_gguf(path).metadata
    for key, (value, _) in metadata.items():
        got = md[key]
        if isinstance(value, list):
            assert list(got) == value
        elif isinstance(value, float):
            assert got == pytest.approx(value)
        else:
            assert got == value
    assert md["general.architecture"] == "llama"


def test_float_tensors_come_as_float32_arrays(every_type):
    path, tensors, _ = every_type
    f = read_gguf(path)
    np.testing.assert_array_equal(f.tensor("t.F32"), tensors[0][1])
    assert f.tensor("t.F16").dtype == np.float32 and f.tensor("t.Q4_1").qtype == "Q4_1"


def small_file(tmp_path, qtype="Q8_0"):
    rng = np.random.default_rng(1)
    cols = 256 if qtype.endswith("K") or qtype == "IQ4_XS" else 64
    return write(tmp_path / "small.gguf", [("w", random_blocks(rng, qtype, 2, cols), qtype, (2, cols)),
                                           ("b", np.ones(8, np.float32), "F32", (8,))],
                 {"tokens": (["x", "yy", "zzz"], gguf.GGUFValueType.ARRAY)}).read_bytes()


def test_every_truncation_is_refused_with_a_value_error(tmp_path):
    raw = small_file(tmp_path)
    target = tmp_path / "cut.gguf"
    for n in list(range(0, 400)) + list(range(400, len(raw), 7)):
        target.write_bytes(raw[:n])
        with pytest.raises(ValueError):
            read_gguf(target)


@pytest.mark.parametrize("qtype", TYPES)
def test_random_corruption_never_crashes(tmp_path, qtype):
    """Bytes of the header and tables flipped at random: the reader either reads a file or raises ValueError; what
    it reads, the kernels dequantise and multiply (a changed type or shape still fits its bytes)."""
    raw = bytearray(small_file(tmp_path, qtype))
    rng = np.random.default_rng(2)
    target = tmp_path / "fuzz.gguf"
    header_end = raw.index(b"b") + 64  # (the tables; the data after them is not interpreted)
    for _ in range(400):
        data = bytearray(raw)
        for at in rng.integers(0, header_end, rng.integers(1, 4)):
            data[at] = rng.integers(0, 256)
        target.write_bytes(bytes(data))
        try:
            f = read_gguf(target)
            for name in f.tensors:
                try:
                    t = f.tensor(name)
                except ValueError:
                    continue
                if isinstance(t, ops.Quantized) and t.shape[0] * t.shape[1] <= 1 << 16:
                    ops.dequantize(t)
                    ops.matmul_forward(np.ones((5, t.shape[1]), np.float32), t)
        except ValueError:
            pass


def header(n_tensors=0, n_kv=0, version=3):
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


@pytest.mark.parametrize("raw,match", [
    (b"GGML" + bytes(40), "no GGUF magic"),
    (header(version=7) + bytes(16), "version 7"),
    (header(n_kv=10**15) + bytes(16), "cannot fit"),
    (header(n_tensors=10**12) + bytes(16), "cannot fit"),
    (header(n_kv=1) + gstr("k") + struct.pack("<IIQ", 9, 4, 10**12) + bytes(8), "claims"),
    (header(n_kv=1) + gstr("k") + struct.pack("<IIQ", 9, 8, 10**12) + bytes(8), "claims"),
    (header(n_kv=1) + struct.pack("<Q", 2**62) + bytes(16), "truncated|limit"),
    (header(n_kv=1) + gstr("k") + struct.pack("<I", 99) + bytes(16), "unknown value type"),
    (header(n_kv=1) + gstr("general.alignment") + struct.pack("<II", 4, 3) + bytes(16), "power of two"),
    (header(n_tensors=1) + gstr("w") + struct.pack("<I", 5) + bytes(60), "dimensions"),
    (header(n_tensors=1) + gstr("w") + struct.pack("<IQQIQ", 2, 2**40, 2**40, 0, 0) + bytes(8), "more values"),
    (header(n_tensors=1) + gstr("w") + struct.pack("<IQIQ", 1, 64, 0, 10**9) + bytes(8), "outside"),
    (header(n_tensors=1) + gstr("w") + struct.pack("<IQIQ", 1, 33, 8, 0) + bytes(8), "whole number"),
    (header(n_tensors=2) + (gstr("w") + struct.pack("<IQIQ", 1, 1, 0, 0)) * 2 + bytes(32), "twice"),
], ids=["magic", "version", "kv-count", "tensor-count", "int-array", "string-array", "key-length", "value-type",
        "alignment", "n-dims", "dims", "offset", "blocks", "duplicate"])
def test_hostile_headers_are_refused_by_name(tmp_path, raw, match):
    path = tmp_path / "bad.gguf"
    path.write_bytes(raw + bytes(64))  # (room for the data section: each case fails on its own field)
    with pytest.raises(ValueError, match=match):
        read_gguf(path)


@pytest.mark.parametrize("code,name", [(19, "IQ1_S"), (16, "IQ2_XXS"), (15, "Q8_K"), (99, "ggml type 99")])
def test_unread_tensor_types_are_listed_but_refused_by_name_when_read(tmp_path, code, name):
    path = tmp_path / "iq.gguf"
    path.write_bytes(header(n_tensors=1) + gstr("blk.0.ffn_up.weight") + struct.pack("<IQIQ", 1, 256, code, 0)
                     + bytes(64))
    f = read_gguf(path)
    assert f.tensors["blk.0.ffn_up.weight"].qtype == name
    for read in (f.tensor, f.quantized):
        with pytest.raises(ValueError) as e:
            read("blk.0.ffn_up.weight")
        message = str(e.value)
        assert f"'blk.0.ffn_up.weight' is {name}, which pytransformer does not read" in message
        assert "\n" not in message
        assert "supported: " + ", ".join(ours._BLOCKS) in message


# --- a tiny Llama as llama.cpp's converter writes it ------------------------------------------------------------


def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: q and k rows reordered for llama.cpp's rotary pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("C,FF,NH,NKV,kinds,embed,head", [
    (64, 96, 4, 2, ["Q4_0", "Q4_1", "Q8_0", "BF16", "F32", "Q5_0", "Q5_1"], "Q8_0", "F16"),
    # float matrices of widths that are no whole number of vectors: prompts of 4-16 rows run the batch kernel
    (6, 7, 3, 1, ["F16", "BF16", "F16", "F32"], "F16", "BF16"),
], ids=["blocks", "narrow-floats"])
def test_tiny_llama_gguf_matches_transformers(tmp_path, C, FF, NH, NKV, kinds, embed, head):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from pytransformer.io.hf import from_pretrained

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(TOKENS), hidden_size=C, intermediate_size=FF, num_hidden_layers=2,
                                   num_attention_heads=NH, num_key_value_heads=NKV, rope_theta=1000.0,
                                   rms_norm_eps=1e-6, max_position_embeddings=128, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(cfg).float().eval()
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    names = {"model.embed_tokens.weight": ("token_embd.weight", embed),
             "model.norm.weight": ("output_norm.weight", "F32"), "lm_head.weight": ("output.weight", head)}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(2):
        for k, (hf_part, g) in enumerate(parts.items()):
            names[f"model.layers.{i}.{hf_part}.weight"] = (f"blk.{i}.{g}.weight",
                                                           "F32" if "norm" in g else kinds[(i + k) % len(kinds)])
    tensors, dense = [], {}
    for hf_name, (g, qtype) in names.items():
        w = sd[hf_name]
        if g.endswith("attn_q.weight"):
            w = permute(w, NH)
        elif g.endswith("attn_k.weight"):
            w = permute(w, NKV)
        if qtype == "F32":
            tensors.append((g, w, "F32", w.shape))
            dense[hf_name] = sd[hf_name]
            continue
        q = gguf.quants.quantize(w.astype(np.float32), getattr(QT, qtype))
        tensors.append((g, q.view(np.uint8).reshape(w.shape[0], -1), qtype, w.shape))
        # what transformers' model should hold: the file's rounded values
        dense[hf_name] = gguf.quants.dequantize(q, getattr(QT, qtype)).reshape(w.shape)
    # q and k: the rounded values of the permuted rows, put back in Hugging Face's row order
    for i in range(2):
        for proj, heads in (("q", NH), ("k", NKV)):
            hf_name = f"model.layers.{i}.self_attn.{proj}_proj.weight"
            g = f"blk.{i}.attn_{proj}.weight"
            qtype = names[hf_name][1]
            w = permute(sd[hf_name], heads)
            if qtype != "F32":
                w = gguf.quants.dequantize(gguf.quants.quantize(w.astype(np.float32), getattr(QT, qtype)),
                                           getattr(QT, qtype)).reshape(w.shape)
            hs = w.shape[0] // heads
            dense[hf_name] = w.reshape(heads, hs // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
    V = gguf.GGUFValueType
    md = {"llama.block_count": (2, V.UINT32), "llama.context_length": (128, V.UINT32),
          "llama.embedding_length": (C, V.UINT32), "llama.feed_forward_length": (FF, V.UINT32),
          "llama.attention.head_count": (NH, V.UINT32), "llama.attention.head_count_kv": (NKV, V.UINT32),
          "llama.rope.freq_base": (1000.0, V.FLOAT32), "llama.attention.layer_norm_rms_epsilon": (1e-6, V.FLOAT32),
          "tokenizer.ggml.model": ("gpt2", V.STRING),
          "tokenizer.ggml.tokens": (TOKENS, V.ARRAY), "tokenizer.ggml.merges": (["Ġ t"], V.ARRAY)}
    path = write(tmp_path / "tiny.gguf", tensors, md)
    model = from_pretrained(path, activation_dtype="float32")  # (the exact path: int8 activations round inputs)
    with torch.no_grad():
        hf.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in dense.items()})
        ids = np.random.default_rng(3).integers(0, 64, (2, 20))
        want = hf(torch.from_numpy(ids)).logits.numpy()
    got = model(ids)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
    assert model.tokenizer is not None and model.tokenizer.vocab_size == len(TOKENS)
    # quantised in memory: the matrices are the file's blocks, nothing widened
    assert model.blocks[0].attn.sublayer.v.quantized.qtype == names["model.layers.0.self_attn.v_proj.weight"][1] \
        or names["model.layers.0.self_attn.v_proj.weight"][1] == "F32"
    np.testing.assert_array_equal(model.generate(ids[:1, :5], 8, temperature=0.0),
                                  hf.generate(torch.from_numpy(ids[:1, :5]), max_new_tokens=8, do_sample=False,
                                              pad_token_id=0).numpy())
