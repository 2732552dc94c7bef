"""The CUDA path (pytransformer.cuda, cpp/cuda): every kernel forward and backward against the float64 reference
on the op-case registry's cases (the same sizes and tolerances as the CPU's), dropout masks equal to the CPU's bit
for bit, deterministic backward passes, device arrays, and errors.

These run wherever a `_cuda` module loads: on a GPU, or here under the CPU emulator of the CUDA execution model
(`PYTRANSFORMER_CUDA_MODULE=<a build with PYTRANSFORMER_CUDA=EMULATE>`, which `.ci/cuda` sets); elsewhere they skip.
Whatever the build, the tests at the bottom check that the CPU package never needs CUDA."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pytransformer import cuda, ops, opcases
from pytransformer import reference as ref
from pytransformer.cuda import DeviceArray, to_device, to_host

needs_cuda = pytest.mark.skipif(not cuda.is_available(), reason="no CUDA module and device (or emulator) here")

CPU_ONLY = {"matmul_bf16_weights", "matmul_int8_weights",  # bfloat16 / int8 copies: CPU inference formats
            "matmul_quantized_int8",  # (int8 activations: CUDA products keep float32 ones)
            "matmul_dinp",  # (the gradient through frozen narrow weights: CPU kernels only)
            "hamming_candidates", "int8_candidates",  # (search's first passes over a memory-mapped index: CPU kernels)
            "mask_logits",  # (a grammar's mask: the sampler's rows are on the host)
            "attention_f16_cache"}  # (a KV cache of halves: a CPU model's; a CUDA cache holds float32)
# The emulator runs CUDA threads as fibers on one core: attention cases of more than ~200 blocks or 5,000 query-key
# pairs and quantised products of more than 4,096 outputs (the CPU's thread chunks of 15,429 rows: 10-50 s each
# there) run on a GPU only; every other case runs everywhere.


def _device(x):
    if isinstance(x, np.ndarray):
        return to_device(x)
    if isinstance(x, ops.Quantized):
        return x.to("cuda")
    if isinstance(x, list):
        return [_device(v) for v in x]
    return x


def _small(case):
    s = case.s
    if not cuda.emulated() or case.op not in ("attention", "matmul_quantized"):
        return True
    if case.op == "matmul_quantized":
        return s["N"] * s["OC"] <= 4096
    B, NH, NKV, Tq, Tk = s["B"], s["NH"], s.get("NKV", s["NH"]), s["Tq"], s["Tk"]
    blocks = B * NH * -(-Tq // 8) + B * NKV * -(-Tk // 8)
    return blocks <= 200 and B * NH * Tq * Tk <= 5_000


CUDA_CASES = [c for c in opcases.cases("test") if c.op not in CPU_ONLY]


@needs_cuda
@pytest.mark.parametrize("case", CUDA_CASES, ids=lambda c: c.label)
def test_cuda_kernel_matches_float64_reference(rng, case):
    if not _small(case):
        pytest.skip("too large for the emulator (runs on a GPU)")
    x = case.make(rng)
    got = {k: to_host(v) for k, v in case.spec.ours({k: _device(v) for k, v in x.items()}, case.o).items()}
    want = case.spec.reference(x, case.o)
    for name in want:
        floor = case.spec.floors.get(name, 0.0)
        err = opcases.rel_err(got[name], want[name], floor)
        tol = 0.0 if name in case.spec.exact else case.tol
        if name in case.spec.exact:
            err = opcases.rel_err(got[name], np.asarray(want[name], np.float32))
        assert err <= tol, f"{case.label}: {name} relative error {err:.3g} > {tol:.3g}"


def test_every_cuda_op_has_cases():
    assert {c.op for c in CUDA_CASES} == set(opcases.OPS) - CPU_ONLY


@needs_cuda
@pytest.mark.parametrize("case", [c for c in CUDA_CASES if c.op == "attention"], ids=lambda c: c.label)
def test_a_nan_reaches_the_rows_it_reaches_on_the_cpu(rng, case):
    """reference.attention's rule, which the CPU kernels follow (test_attention_nonfinite.py): a NaN query, or a
    NaN key or value row that a row sees, makes that row NaN (lse too, but for a value); rows that do not see it and
    rows that see no key are untouched."""
    from test_attention_nonfinite import poisonings

    if not _small(case):
        pytest.skip("too large for the emulator (runs on a GPU)")
    x = case.make(rng)
    causal, mask, window = case.o.get("causal", False), x["key_mask"], case.o.get("window", 0)
    visible = ref.attention_visible(x["q"].shape[2], x["k"].shape[2], causal, mask, window)
    for what, name, index, _ in poisonings(rng, x, visible, causal):
        poisoned = dict(x, **{name: x[name].copy()})
        poisoned[name][index] = np.nan
        q, k, v = (poisoned[n] for n in ("q", "k", "v"))
        want = ops.attention_forward(q, k, v, causal, mask, window=window)
        got = ops.attention_forward(to_device(q), to_device(k), to_device(v), causal,
                                    None if mask is None else to_device(mask), window=window)
        for name_, g, w in zip(("out", "lse"), got, want):
            g = to_host(g)
            np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"{case.label}: {what}: {name_} NaN rows")
            np.testing.assert_allclose(g[~np.isnan(w)], w[~np.isnan(w)], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{case.label}: {what}: {name_}")


@needs_cuda
def test_dropout_masks_equal_the_cpus_bit_for_bit(rng):
    x = rng.standard_normal(70001).astype(np.float32)
    for p, seed in [(0.1, 0), (0.5, 2**64 - 1), (0.37, 12345)]:
        np.testing.assert_array_equal(ops.dropout_forward(to_device(x), p, seed).numpy(), ops.dropout_forward(x, p, seed))


@needs_cuda
def test_backward_passes_are_deterministic(rng):
    """Repeated ids (embedding) and many queries per key (attention) add in a fixed order: equal bits each run."""
    ids = to_device(rng.integers(0, 5, 300))
    dout = to_device(rng.standard_normal((300, 40)).astype(np.float32))
    runs = [ops.embedding_backward(dout, ids, 5).numpy() for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    q, k, v, g = (to_device(rng.standard_normal((1, 2, 20, 8)).astype(np.float32)) for _ in range(4))
    out, lse = ops.attention_forward(q, k, v, True)
    a = [t.numpy() for t in ops.attention_backward(g, q, k, v, out, lse, True)]
    b = [t.numpy() for t in ops.attention_backward(g, q, k, v, out, lse, True)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@needs_cuda
def test_attention_layouts_and_a_kv_cache_with_spare_rows(rng):
    """bthd (a Linear's (B, T, C) output read per head) and k/v holding more rows than are used (kv_len)."""
    B, NH, NKV, Tq, Tkv, Tk, HS = 2, 4, 2, 3, 12, 9, 16
    q = rng.standard_normal((B, Tq, NH, HS)).astype(np.float32)
    k = rng.standard_normal((B, Tkv, NKV, HS)).astype(np.float32)
    v = rng.standard_normal((B, Tkv, NKV, HS)).astype(np.float32)
    mask = rng.random((B, Tk)) > 0.2
    want, want_lse = ops.attention_forward(q, k, v, True, mask, layout="bthd", kv_len=Tk)
    got, lse = ops.attention_forward(to_device(q), to_device(k), to_device(v), True, to_device(mask),
                                     layout="bthd", kv_len=Tk)
    assert opcases.rel_err(got.numpy(), want) < 2e-6 and opcases.rel_err(lse.numpy(), want_lse) < 2e-6
    g = rng.standard_normal(q.shape).astype(np.float32)
    kk, vv = np.ascontiguousarray(k[:, :Tk]), np.ascontiguousarray(v[:, :Tk])
    want_grads = ops.attention_backward(g, q, kk, vv, want, want_lse, True, mask, layout="bthd")
    got_grads = ops.attention_backward(to_device(g), to_device(q), to_device(kk), to_device(vv), got, lse, True,
                                       to_device(mask), layout="bthd")
    for a, b in zip(got_grads, want_grads):
        assert opcases.rel_err(a.numpy(), b) < 2e-6


@needs_cuda
def test_outputs_are_written_in_place_and_gradients_accumulate(rng):
    x, w = (rng.standard_normal(s).astype(np.float32) for s in [(4, 6), (3, 6)])
    g = rng.standard_normal((4, 3)).astype(np.float32)
    out = DeviceArray.empty((4, 3))
    assert ops.matmul_forward(to_device(x), to_device(w), out=out) is out
    dw = to_device(np.ones((3, 6), np.float32))
    ops.matmul_backward(to_device(g), to_device(x), to_device(w), dweight=dw)
    np.testing.assert_allclose(dw.numpy(), 1 + g.T @ x, rtol=1e-5, atol=1e-5)


@needs_cuda
def test_device_arrays(rng):
    a = rng.standard_normal((3, 4, 5)).astype(np.float32)
    d = DeviceArray.from_numpy(a)
    assert d.shape == (3, 4, 5) and d.dtype == np.float32 and d.nbytes == a.nbytes
    np.testing.assert_array_equal(d.numpy(), a)
    np.testing.assert_array_equal(d[1].numpy(), a[1])
    np.testing.assert_array_equal(d[1:3].reshape(-1, 5).numpy(), a[1:3].reshape(-1, 5))
    np.testing.assert_array_equal(d.copy().numpy(), a)
    iface = d.__cuda_array_interface__
    assert iface["shape"] == (3, 4, 5) and iface["typestr"] == "<f4" and iface["data"] == (d.ptr, False)

    class Foreign:  # what CuPy or torch hand over
        __cuda_array_interface__ = iface

    view = DeviceArray.from_cuda_array(Foreign())
    assert view.ptr == d.ptr
    np.testing.assert_array_equal(view.numpy(), a)
    with pytest.raises(ValueError, match="C-contiguous"):
        DeviceArray.from_cuda_array(type("T", (), {"__cuda_array_interface__": dict(iface, strides=(4, 12, 48))})())
    with pytest.raises(TypeError, match="numpy"):
        np.asarray(d)
    with pytest.raises(IndexError):
        d[3]
    with pytest.raises(ValueError, match="reshape"):
        d.reshape(7, -1)


@needs_cuda
def test_bad_calls_are_python_errors(rng):
    x, w = to_device(rng.standard_normal((4, 6)).astype(np.float32)), to_device(np.ones((3, 6), np.float32))
    with pytest.raises(TypeError, match="device array"):
        ops.matmul_forward(x, np.ones((3, 6), np.float32))  # host and device arrays mixed
    with pytest.raises(ValueError, match="IC"):
        ops.matmul_forward(x, to_device(np.ones((3, 5), np.float32)))
    with pytest.raises(ValueError, match="out of range"):
        ops.embedding_forward(to_device(np.array([0, 7])), w)
    with pytest.raises(ValueError, match="out of range"):
        ops.crossentropy_forward(to_device(np.ones((2, 3), np.float32)), to_device(np.array([1, 3])))
    with pytest.raises(ValueError, match="overlaps"):
        ops.matmul_forward(x, w, out=x.ravel()[:12].reshape(4, 3))
    with pytest.raises(TypeError, match="CPU-only"):
        ops.matmul_forward(x, ops.to_bfloat16(np.ones((3, 6), np.float32)))
    with pytest.raises(MemoryError):
        DeviceArray.empty((1 << 50,))


@needs_cuda
def test_a_gpt_trains_and_generates_on_the_device_as_on_the_cpu(rng):
    """The whole model: loss, every gradient, clipping and AdamW steps (dropout on: the masks are the CPU's), then
    greedy generation through the KV cache; the same numbers as the CPU path."""
    from pytransformer import optim
    from pytransformer.models.gpt import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=61, max_positions=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
    cpu, dev = GPT(cfg, seed=3), GPT(cfg, seed=3, device="cuda")
    assert type(dev.params.data) is DeviceArray and type(dev.blocks[0].attn.sublayer.q.weight.data) is DeviceArray
    idx, targets = rng.integers(0, 61, (2, 9)), rng.integers(0, 61, (2, 9))
    targets[0, 2] = -100
    opt_cpu, opt_dev = optim.AdamW(cpu.params, lr=1e-2), optim.AdamW(dev.params, lr=1e-2)
    for _ in range(3):
        cpu.zero_grad()
        dev.zero_grad()
        loss_cpu, loss_dev = cpu.loss(idx, targets), dev.loss(idx, targets)
        assert abs(loss_dev - loss_cpu) <= 1e-5 * abs(loss_cpu)
        cpu.backward()
        dev.backward()
        assert opcases.rel_err(dev.params.grad.numpy(), cpu.params.grad) <= 1e-5
        assert optim.clip_grad_norm(dev.params, 0.5) == pytest.approx(optim.clip_grad_norm(cpu.params, 0.5), 1e-5)
        opt_cpu.step()
        opt_dev.step()
    # (AdamW moves every parameter by ~lr whatever its gradient's size: near-zero gradients amplify rounding)
    assert opcases.rel_err(dev.params.data.numpy(), cpu.params.data) <= 1e-4
    prompt = idx[:, :4]
    np.testing.assert_array_equal(dev.generate(prompt, 6, temperature=0), cpu.generate(prompt, 6, temperature=0))
    with dev.evaluating(), cpu.evaluating():
        assert opcases.rel_err(dev.forward(idx).numpy(), cpu.forward(idx)) <= 1e-5
        assert opcases.rel_err(dev.forward(idx[:1]).numpy(), cpu.forward(idx[:1])) <= 1e-5  # (read-only positions)
    dev.to("cpu")
    assert type(dev.params.data) is np.ndarray
    assert opcases.rel_err(dev.forward(idx), cpu.forward(idx)) <= 1e-4


@needs_cuda
@pytest.mark.parametrize("interleaved", [False, True])
def test_a_llama_trains_and_generates_on_the_device_as_on_the_cpu(rng, interleaved):
    """RMSNorm, rotary positions (both layouts), grouped-query attention and SwiGLU: loss, gradients, greedy
    generation through the KV cache."""
    from pytransformer.models.llama import Llama, LlamaConfig

    cfg = LlamaConfig(vocab_size=50, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, intermediate_size=40,
                      rope_interleaved=interleaved)
    cpu, dev = Llama(cfg, seed=1), Llama(cfg, seed=1, device="cuda")
    idx, targets = rng.integers(0, 50, (2, 7)), rng.integers(0, 50, (2, 7))
    loss_cpu, loss_dev = cpu.loss(idx, targets), dev.loss(idx, targets)
    assert abs(loss_dev - loss_cpu) <= 1e-5 * abs(loss_cpu)
    cpu.backward()
    dev.backward()
    assert opcases.rel_err(dev.params.grad.numpy(), cpu.params.grad) <= 1e-5
    np.testing.assert_array_equal(dev.generate(idx[:, :3], 5, temperature=0), cpu.generate(idx[:, :3], 5,
                                                                                           temperature=0))


@needs_cuda
def test_a_llama_with_gguf_blocks_runs_on_the_device_with_them(rng):
    """GGUF-quantised weights (as from_pretrained leaves them) move to the device as blocks: the products and the
    embedding lookup decode them there, with the CPU's logits and tokens."""
    from pytransformer.models.llama import Llama, LlamaConfig
    from pytransformer.nn import Embedding

    cfg = LlamaConfig(vocab_size=64, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=96)

    def make():
        model = Llama(cfg, seed=2).eval()
        blocks = np.random.default_rng(7)
        kinds = iter(["Q4_1", "Q8_0", "Q4_0"] * 20)
        table = None
        for m in model.modules():
            if hasattr(m, "set_quantized") and not isinstance(m, Embedding) and m.weight is not model.embed.weight:
                qt = next(kinds)
                m.set_quantized(ops.Quantized(opcases.random_blocks(blocks, qt, *m.weight.shape), qt, m.weight.shape))
        table = ops.Quantized(opcases.random_blocks(blocks, "Q8_0", 64, 64), "Q8_0", (64, 64))
        model.embed.set_quantized(table)
        model.lm_head.set_quantized(table)
        return model

    cpu, dev = make().set_activation_dtype("float32"), make().to("cuda")  # (the device keeps float32 activations)
    assert type(dev.embed.quantized.data) is DeviceArray and type(dev.lm_head.stored.blocks.data) is DeviceArray
    ids = rng.integers(0, 64, (2, 6))
    with cpu.evaluating(), dev.evaluating():
        assert opcases.rel_err(dev.forward(ids).numpy(), cpu.forward(ids)) <= 1e-5
    np.testing.assert_array_equal(dev.generate(ids[:, :3], 5, temperature=0), cpu.generate(ids[:, :3], 5,
                                                                                           temperature=0))


@needs_cuda
def test_narrow_weights_move_to_the_device_as_float32(rng):
    from pytransformer.models.gpt import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=11, max_positions=8, n_layer=1, n_head=1, n_embd=8)
    idx = rng.integers(0, 11, (1, 5))
    cpu = GPT(cfg)
    dev = GPT(cfg).set_weight_dtype("bfloat16").to("cuda")
    with cpu.evaluating(), dev.evaluating():
        assert opcases.rel_err(dev.forward(idx).numpy(), cpu.forward(idx)) <= 1e-5


def _bert():
    from pytransformer.models.bert import BERT, BertConfig

    return BERT(BertConfig(vocab_size=50, max_positions=16, n_layer=2, n_embd=32,
                           n_head=2, intermediate_size=40, dropout=0.1, pad_token_id=0,
                           nsp=True), seed=1)


def _vit():
    from pytransformer.models.vit import ViT, ViTConfig

    return ViT(ViTConfig(image_size=8, patch_size=4, num_channels=3, n_layer=1, n_embd=16,
                         n_head=2, intermediate_size=20, num_labels=3), seed=1)


def _transformer():
    from pytransformer.models.transformer import Transformer, TransformerConfig

    return Transformer(TransformerConfig(src_vocab_size=50, tgt_vocab_size=40, n_encoder_layer=1, n_decoder_layer=2,
                                         n_embd=32, n_head=2, intermediate_size=40, dropout=0.1, label_smoothing=0.1), seed=1)


@needs_cuda
@pytest.mark.parametrize("family", ["bert", "vit", "transformer"])
def test_encoder_families_train_on_the_device_as_on_the_cpu(rng, family):
    """BERT (padding mask, padding_idx, masked-LM + next-sentence, the tanh pooler), ViT (patches and the class
    token) and the 2017 encoder-decoder (scaled embeddings, cross-attention, label smoothing, greedy decoding)."""
    make = {"bert": _bert, "vit": _vit, "transformer": _transformer}[family]
    cpu, dev = make().set_activation_dtype("float32"), make().to("cuda")  # (the device keeps float32 activations)
    ids = rng.integers(0, 40, (2, 7))
    ids[1, 5:] = 0  # padding
    if family == "bert":
        mask = (ids != 0).astype(np.int64)
        labels = np.where(rng.random((2, 7)) < 0.4, rng.integers(0, 50, (2, 7)), -100)
        run = lambda m: m.loss(ids, labels, attention_mask=mask, next_sentence_label=np.array([0, 1]))  # noqa: E731
    elif family == "vit":
        pixels = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
        run = lambda m: m.loss(pixels, np.array([0, 2]))  # noqa: E731
    else:
        src_mask = (ids != 0).astype(np.int64)
        run = lambda m: m.loss(ids, ids[:, :5], ids[:, 1:6], src_mask=src_mask)  # noqa: E731
    loss_cpu, loss_dev = run(cpu), run(dev)
    assert abs(loss_dev - loss_cpu) <= 1e-5 * abs(loss_cpu)
    cpu.backward()
    dev.backward()
    assert opcases.rel_err(dev.params.grad.numpy(), cpu.params.grad) <= 1e-5
    if family == "transformer":
        np.testing.assert_array_equal(dev.greedy_decode(ids, 1, 2, 6, src_mask), cpu.greedy_decode(ids, 1, 2, 6,
                                                                                                  src_mask))
        with pytest.raises(NotImplementedError, match="CPU"):
            dev.beam_search(ids[:1], 1, 2, 4)


@needs_cuda
def test_tanh_kernels_match_float64(rng):
    x = rng.standard_normal(1000).astype(np.float32) * 3
    g = rng.standard_normal(1000).astype(np.float32)
    out = ops.tanh_forward(to_device(x))
    want = np.tanh(x.astype(np.float64))
    assert opcases.rel_err(out.numpy(), want) <= 2e-6
    assert opcases.rel_err(ops.tanh_backward(to_device(g), out).numpy(), g * (1 - want * want)) <= 2e-6


def test_importing_pytransformer_loads_no_cuda_library(tmp_path):
    code = ("import sys, pytransformer, pytransformer.ops; "
            "maps = open('/proc/self/maps').read(); "
            "print('pytransformer._cuda' in sys.modules, 'libcublas' in maps or 'libcuda.so' in maps)")
    env = {k: v for k, v in os.environ.items() if k != "PYTRANSFORMER_CUDA_MODULE"}
    # (run outside the source tree: the installed package, not the checkout's sources)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1].split() == ["False", "False"]


def test_cpu_info_tells_the_truth_about_cuda():
    import pytransformer

    assert pytransformer.cpu_info()["cuda"] == cuda.is_available()


@pytest.mark.skipif(cuda.is_available(), reason="a CUDA module and device are here")
def test_without_cuda_device_arrays_say_why():
    from pytransformer.models.gpt import GPT, GPTConfig

    with pytest.raises(RuntimeError, match="CUDA"):
        DeviceArray.from_numpy(np.ones(3, np.float32))
    with pytest.raises(RuntimeError, match="CUDA"):
        GPT(GPTConfig(vocab_size=11, max_positions=8, n_layer=1, n_head=1, n_embd=8), device="cuda")
