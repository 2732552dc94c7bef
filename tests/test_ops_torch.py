"""Step 3 of the ladder: forward and backward of every op against PyTorch autograd (skipped without torch)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, f32

from pytransformer import ops

TOL = 2e-5


def t64(torch, x, grad=True):
    return torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=grad)


def test_linear_matches_torch(torch, isa, rng):
    x, w, b, g = f32(rng, 2, 17, 65), f32(rng, 130, 65), f32(rng, 130), f32(rng, 2, 17, 130)
    tx, tw, tb = t64(torch, x), t64(torch, w), t64(torch, b)
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(torch.from_numpy(g).double())
    assert_close(ops.matmul_forward(x, w, b), ty.detach().numpy(), TOL, "out")
    dx, dw, db = ops.matmul_backward(g, x, w)
    assert_close(dx, tx.grad.numpy(), TOL, "dinp")
    assert_close(dw, tw.grad.numpy(), TOL, "dweight")
    assert_close(db, tb.grad.numpy(), TOL, "dbias")


def test_layernorm_matches_torch(torch, isa, rng):
    x, w, b, g = f32(rng, 3, 5, 130) * 2 + 1, f32(rng, 130), f32(rng, 130), f32(rng, 3, 5, 130)
    tx, tw, tb = t64(torch, x), t64(torch, w), t64(torch, b)
    ty = torch.nn.functional.layer_norm(tx, (130,), tw, tb, 1e-5)
    ty.backward(torch.from_numpy(g).double())
    y, mean, rstd = ops.layernorm_forward(x, w, b, 1e-5)
    assert_close(y, ty.detach().numpy(), TOL, "out")
    dx, dw, db = ops.layernorm_backward(g, x, w, mean, rstd)
    assert_close(dx, tx.grad.numpy(), TOL, "dinp")
    assert_close(dw, tw.grad.numpy(), TOL, "dweight")
    assert_close(db, tb.grad.numpy(), TOL, "dbias")


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_matches_torch(torch, isa, rng, approximate):
    x, g = f32(rng, 1000, scale=3.0), f32(rng, 1000)
    tx = t64(torch, x)
    ty = torch.nn.functional.gelu(tx, approximate=approximate)
    ty.backward(torch.from_numpy(g).double())
    assert_close(ops.gelu_forward(x, approximate), ty.detach().numpy(), TOL, "out", floor=1.0)
    assert_close(ops.gelu_backward(g, x, approximate), tx.grad.numpy(), TOL, "dinp", floor=1.0)


def test_relu_matches_torch(torch, isa, rng):
    x, g = f32(rng, 1000), f32(rng, 1000)
    tx = t64(torch, x)
    torch.relu(tx).backward(torch.from_numpy(g).double())
    np.testing.assert_array_equal(ops.relu_forward(x), np.maximum(x, 0))
    assert_close(ops.relu_backward(g, x), tx.grad.numpy(), 0.0)


def test_softmax_matches_torch(torch, isa, rng):
    x, g = f32(rng, 7, 130, scale=3.0), f32(rng, 7, 130)
    tx = t64(torch, x)
    ty = torch.softmax(tx, -1)
    ty.backward(torch.from_numpy(g).double())
    y = ops.softmax_forward(x)
    assert_close(y, ty.detach().numpy(), TOL, "out")
    assert_close(ops.softmax_backward(g, y), tx.grad.numpy(), TOL, "dinp")


def test_crossentropy_matches_torch(torch, isa, rng):
    x, t = f32(rng, 33, 65, scale=3.0), rng.integers(0, 65, 33)
    t[[0, 5]] = -100
    tx = t64(torch, x)
    tl = torch.nn.functional.cross_entropy(tx, torch.from_numpy(t), ignore_index=-100)
    tl.backward()
    loss, _, lse = ops.crossentropy_forward(x, t, -100)
    assert abs(loss - tl.item()) < TOL * abs(tl.item())
    assert_close(ops.crossentropy_backward(x, t, lse, 1.0, -100), tx.grad.numpy(), TOL, "dlogits")


def test_embedding_matches_torch(torch, isa, rng):
    table, ids, g = f32(rng, 11, 17), rng.integers(0, 11, (3, 40)), f32(rng, 3, 40, 17)
    tt = t64(torch, table)
    torch.nn.functional.embedding(torch.from_numpy(ids), tt).backward(torch.from_numpy(g).double())
    assert_close(ops.embedding_forward(ids, table), table[ids], 0.0)
    assert_close(ops.embedding_backward(g, ids, 11), tt.grad.numpy(), TOL, "dtable")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Tq,Tk,HS", [(1, 1, 8), (17, 17, 63), (64, 64, 64), (130, 130, 20), (9, 33, 16)])
def test_attention_matches_torch_sdpa(torch, isa, rng, causal, Tq, Tk, HS):
    B, NH = 2, 3
    q, k, v, g = f32(rng, B, NH, Tq, HS), f32(rng, B, NH, Tk, HS), f32(rng, B, NH, Tk, HS), f32(rng, B, NH, Tq, HS)
    tq, tk, tv = t64(torch, q), t64(torch, k), t64(torch, v)
    # torch's is_causal is top-left aligned; ours is bottom-right (KV-cache). Spell the mask out.
    vis = torch.ones(Tq, Tk, dtype=torch.bool)
    if causal:
        vis = torch.arange(Tk)[None, :] <= torch.arange(Tq)[:, None] + (Tk - Tq)
    ty = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=vis)
    ty.backward(torch.from_numpy(g).double())
    out, lse = ops.attention_forward(q, k, v, causal)
    assert_close(out, ty.detach().numpy(), TOL, "out")
    dq, dk, dv = ops.attention_backward(g, q, k, v, out, lse, causal)
    # floor: with one key dq and dk are 0 analytically (torch gives ~1e-17), so compare against O(1) scale
    assert_close(dq, tq.grad.numpy(), TOL, "dq", floor=0.1)
    assert_close(dk, tk.grad.numpy(), TOL, "dk", floor=0.1)
    assert_close(dv, tv.grad.numpy(), TOL, "dv", floor=0.1)


def test_attention_key_padding_matches_torch_sdpa(torch, isa, rng):
    B, NH, T, HS = 3, 2, 20, 16
    q, k, v, g = (f32(rng, B, NH, T, HS) for _ in range(4))
    mask = np.ones((B, T), bool)
    mask[1, 12:] = False
    mask[2, 3:] = False
    tq, tk, tv = t64(torch, q), t64(torch, k), t64(torch, v)
    ty = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.from_numpy(mask)[:, None, None, :])
    ty.backward(torch.from_numpy(g).double())
    out, lse = ops.attention_forward(q, k, v, False, mask)
    assert_close(out, ty.detach().numpy(), TOL, "out")
    for name, a, b in zip(("dq", "dk", "dv"), ops.attention_backward(g, q, k, v, out, lse, False, mask),
                          (tq.grad, tk.grad, tv.grad)):
        assert_close(a, b.numpy(), TOL, name)


def test_adamw_matches_torch_over_ten_steps(torch, isa, rng):
    n = 1000
    p = f32(rng, n)
    tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
    opt = torch.optim.AdamW([tp], lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for step in range(1, 11):
        g = f32(rng, n)
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        ops.adamw_step(p, m, v, g, 3e-3, 0.9, 0.95, 1e-8, 0.1, step)
    assert_close(p, tp.detach().numpy(), 1e-5, "params")


def test_dropout_scale_matches_torch_convention(torch, isa, rng):
    # torch: kept elements are scaled by 1 / (1 - p); dropped are 0. Same convention, own RNG.
    x = f32(rng, 10000)
    y = ops.dropout_forward(x, 0.2, 5)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / np.float32(0.8), rtol=1e-6)


def test_residual_matches_torch(torch, isa, rng):
    a, b, g = f32(rng, 3, 130), f32(rng, 3, 130), f32(rng, 3, 130)
    ta, tb = t64(torch, a), t64(torch, b)
    ty = ta + tb
    ty.backward(torch.from_numpy(g).double())
    assert_close(ops.residual_forward(a, b), ty.detach().numpy(), 1e-7, "out")
    da, db = ops.residual_backward(g)
    assert_close(da, ta.grad.numpy(), 0.0, "da")
    assert_close(db, tb.grad.numpy(), 0.0, "db")


@pytest.mark.parametrize("NH,NKV,Tq,Tk", [(9, 3, 17, 17), (4, 1, 1, 40), (6, 2, 70, 70)])
def test_grouped_query_attention_matches_torch_sdpa(torch, isa, rng, NH, NKV, Tq, Tk):
    B, HS = 2, 16
    q, g = f32(rng, B, NH, Tq, HS), f32(rng, B, NH, Tq, HS)
    k, v = f32(rng, B, NKV, Tk, HS), f32(rng, B, NKV, Tk, HS)
    tq, tk, tv = t64(torch, q), t64(torch, k), t64(torch, v)
    vis = torch.arange(Tk)[None, :] <= torch.arange(Tq)[:, None] + (Tk - Tq)
    ty = torch.nn.functional.scaled_dot_product_attention(tq, tk.repeat_interleave(NH // NKV, 1),
                                                          tv.repeat_interleave(NH // NKV, 1), attn_mask=vis)
    ty.backward(torch.from_numpy(g).double())
    out, lse = ops.attention_forward(q, k, v, True)
    assert_close(out, ty.detach().numpy(), TOL, "out")
    for name, a, b in zip(("dq", "dk", "dv"), ops.attention_backward(g, q, k, v, out, lse, True),
                          (tq.grad, tk.grad, tv.grad)):
        assert_close(a, b.numpy(), TOL, name, floor=0.1)


def test_rmsnorm_matches_torch(torch, isa, rng):
    x, w, g = f32(rng, 3, 5, 130) * 2 + 1, f32(rng, 130), f32(rng, 3, 5, 130)
    tx, tw = t64(torch, x), t64(torch, w)
    ty = torch.nn.functional.rms_norm(tx, (130,), tw, 1e-5)
    ty.backward(torch.from_numpy(g).double())
    y, rstd = ops.rmsnorm_forward(x, w, 1e-5)
    assert_close(y, ty.detach().numpy(), TOL, "out")
    dx, dw = ops.rmsnorm_backward(g, x, w, rstd)
    assert_close(dx, tx.grad.numpy(), TOL, "dinp")
    assert_close(dw, tw.grad.numpy(), TOL, "dweight")


@pytest.mark.parametrize("gated", ["swiglu", "geglu"])
def test_gated_matches_torch(torch, isa, rng, gated):
    act = {"swiglu": torch.nn.functional.silu,
           "geglu": lambda x: torch.nn.functional.gelu(x, approximate="tanh")}[gated]
    gate, up, g = f32(rng, 1000, scale=3.0), f32(rng, 1000), f32(rng, 1000)
    tg, tu = t64(torch, gate), t64(torch, up)
    ty = act(tg) * tu
    ty.backward(torch.from_numpy(g).double())
    assert_close(getattr(ops, gated + "_forward")(gate, up), ty.detach().numpy(), TOL, "out")
    dgate, dup = getattr(ops, gated + "_backward")(g, gate, up)
    assert_close(dgate, tg.grad.numpy(), TOL, "dgate")
    assert_close(dup, tu.grad.numpy(), TOL, "dup")


def test_rope_matches_transformers_llama_rotary(torch, isa, rng):
    """Hugging Face's apply_rotary_pov_emb (q * cos + rotate_half(q) * sin) with its own cos/sin tables, and the
    gradient through it by autograd."""
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    B, T, NH, HS, base = 2, 9, 3, 64, 100000.0
    x, g = f32(rng, B, T, NH, HS), f32(rng, B, T, NH, HS)
    pos = np.stack([np.arange(T), np.arange(T) + 5]).astype(np.int64)
    inv = 1.0 / (base ** (torch.arange(0, HS, 2, dtype=torch.float64) / HS))
    emb = torch.cat([torch.from_numpy(pos).double()[..., None] * inv] * 2, -1)  # (B, T, HS)
    tx = t64(torch, x.transpose(0, 2, 1, 3))  # (B, NH, T, HS)
    ty, _ = llama.apply_rotary_pos_emb(tx, tx, emb.cos(), emb.sin())
    ty.backward(torch.from_numpy(g.transpose(0, 2, 1, 3).copy()).double())
    cos, sin = ops.rope_tables(T + 5, HS, base)
    assert_close(ops.rope_forward(x, cos, sin, pos), ty.detach().numpy().transpose(0, 2, 1, 3), TOL, "out")
    assert_close(ops.rope_backward(g, cos, sin, pos), tx.grad.numpy().transpose(0, 2, 1, 3), TOL, "dinp")


def test_label_smoothing_matches_torch(torch, isa, rng):
    x, t = f32(rng, 9, 50, scale=3.0), rng.integers(0, 50, 9)
    t[2] = -100
    tx = t64(torch, x)
    tl = torch.nn.functional.cross_entropy(tx, torch.from_numpy(t), ignore_index=-100, label_smoothing=0.1)
    tl.backward()
    loss, _, lse = ops.crossentropy_forward(x, t, label_smoothing=0.1)
    assert abs(loss - tl.item()) < 1e-5 * abs(tl.item())
    assert_close(ops.crossentropy_backward(x, t, lse, label_smoothing=0.1), tx.grad.numpy(), TOL, "dlogits")
