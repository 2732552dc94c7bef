"""Functional PyTorch mirrors of pytransformer's models, built from a model's own parameter names, so that
logits, losses and every gradient can be compared one to one (the way llm.c's test_gpt2 checks itself)."""

from __future__ import annotations

import math

import numpy as np


def params_from(model, torch):
    """name -> float64 leaf tensor requiring grad, from the model's current values."""
    return {name: torch.tensor(p.data, dtype=torch.float64, requires_grad=True) for name, p in model.params}


def layer_norm(torch, x, P, prefix, eps):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], P[prefix + "weight"], P[prefix + "bias"], eps)


def linear(torch, x, P, prefix):
    b = P.get(prefix + "bias")
    return torch.nn.functional.linear(x, P[prefix + "weight"], b)


def attention(torch, x, memory, P, prefix, NH, causal, key_mask=None):
    F = torch.nn.functional
    kv = x if memory is None else memory
    B, Tq, C = x.shape
    Tk = kv.shape[1]
    HS = P[prefix + "q.weight"].shape[0] // NH          # head size: C // NH unless given apart
    NKV = P[prefix + "k.weight"].shape[0] // HS         # key/value heads: NH unless grouped
    q = linear(torch, x, P, prefix + "q.").view(B, Tq, NH, HS).transpose(1, 2)
    k = linear(torch, kv, P, prefix + "k.").view(B, Tk, NKV, HS).transpose(1, 2).repeat_interleave(NH // NKV, 1)
    v = linear(torch, kv, P, prefix + "v.").view(B, Tk, NKV, HS).transpose(1, 2).repeat_interleave(NH // NKV, 1)
    mask = torch.ones(Tq, Tk, dtype=torch.bool)
    if causal:
        mask = torch.arange(Tk)[None, :] <= torch.arange(Tq)[:, None] + (Tk - Tq)
    mask = mask[None, None]
    if key_mask is not None:
        mask = mask & torch.from_numpy(np.asarray(key_mask, bool))[:, None, None, :]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(HS)
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return linear(torch, (p @ v).transpose(1, 2).reshape(B, Tq, NH * HS), P, prefix + "o.")


def feed_forward(torch, x, P, prefix, activation):
    F = torch.nn.functional
    h = linear(torch, x, P, prefix + "fc1.")
    h = {"gelu": lambda t: F.gelu(t, approximate="tanh"), "gelu_exact": F.gelu, "relu": F.relu}[activation](h)
    return linear(torch, h, P, prefix + "fc2.")


def residual(torch, x, P, prefix, norm, eps, sublayer):
    """pre: x + f(LN(x)); post: LN(x + f(x)); the sublayer's parameters under prefix + 'sublayer.'"""
    if norm == "pre":
        return x + sublayer(layer_norm(torch, x, P, prefix + "ln.", eps))
    return layer_norm(torch, x + sublayer(x), P, prefix + "ln.", eps)


def gpt_logits(torch, P, idx, cfg):
    T = idx.shape[1]
    x = P["wte.weight"][torch.from_numpy(idx)] + P["wpe.weight"][:T]
    eps = cfg.norm_eps
    for l in range(cfg.n_layer):
        pre = f"blocks.{l}."
        x = residual(torch, x, P, pre + "attn.", "pre", eps,
                     lambda h: attention(torch, h, None, P, pre + "attn.sublayer.", cfg.n_head, True))
        x = residual(torch, x, P, pre + "ffn.", "pre", eps,
                     lambda h: feed_forward(torch, h, P, pre + "ffn.sublayer.", "gelu"))
    x = layer_norm(torch, x, P, "ln_f.", eps)
    return x @ P["wte.weight"].T


def bert_hidden(torch, P, ids, cfg, attention_mask=None, token_type_ids=None):
    T = ids.shape[1]
    tt = np.zeros_like(ids) if token_type_ids is None else token_type_ids
    x = P["word.weight"][torch.from_numpy(ids)] + P["token_type.weight"][torch.from_numpy(tt)] + P["position.weight"][:T]
    x = layer_norm(torch, x, P, "emb_ln.", cfg.layer_norm_eps)
    for l in range(cfg.num_hidden_layers):
        pre = f"blocks.{l}."
        x = residual(torch, x, P, pre + "attn.", "post", cfg.layer_norm_eps,
                     lambda h: attention(torch, h, None, P, pre + "attn.sublayer.", cfg.num_attention_heads, False,
                                         attention_mask))
        x = residual(torch, x, P, pre + "ffn.", "post", cfg.layer_norm_eps,
                     lambda h: feed_forward(torch, h, P, pre + "ffn.sublayer.", cfg.hidden_act))
    return x


def bert_mlm_logits(torch, P, ids, cfg, attention_mask=None, token_type_ids=None):
    h = bert_hidden(torch, P, ids, cfg, attention_mask, token_type_ids)
    h = torch.nn.functional.gelu(linear(torch, h, P, "mlm_dense."))
    h = torch.nn.functional.layer_norm(h, h.shape[-1:], P["mlm_ln.weight"], P["mlm_ln.bias"], cfg.layer_norm_eps)
    return h @ P["word.weight"].T + P["mlm_bias"]


def bert_classify_logits(torch, P, ids, cfg, attention_mask=None):
    h = bert_hidden(torch, P, ids, cfg, attention_mask)
    pooled = torch.tanh(linear(torch, h[:, 0], P, "pooler."))
    return linear(torch, pooled, P, "cls_head.")


def transformer_logits(torch, P, src, tgt, cfg, src_mask=None):
    C, eps = cfg.d_model, cfg.layer_norm_eps
    from pytransformer.nn import sinusoidal_table
    pe_s = torch.tensor(sinusoidal_table(src.shape[1], C), dtype=torch.float64)
    pe_t = torch.tensor(sinusoidal_table(tgt.shape[1], C), dtype=torch.float64)
    tgt_table = P["tgt_emb.weight"] if "tgt_emb.weight" in P else P["src_emb.weight"]
    x = P["src_emb.weight"][torch.from_numpy(src)] * math.sqrt(C) + pe_s
    for l in range(cfg.n_encoder_layers):
        pre = f"encoder.{l}."
        x = residual(torch, x, P, pre + "attn.", "post", eps,
                     lambda h: attention(torch, h, None, P, pre + "attn.sublayer.", cfg.n_head, False, src_mask))
        x = residual(torch, x, P, pre + "ffn.", "post", eps,
                     lambda h: feed_forward(torch, h, P, pre + "ffn.sublayer.", "relu"))
    y = tgt_table[torch.from_numpy(tgt)] * math.sqrt(C) + pe_t
    for l in range(cfg.n_decoder_layers):
        pre = f"decoder.{l}."
        y = residual(torch, y, P, pre + "attn.", "post", eps,
                     lambda h: attention(torch, h, None, P, pre + "attn.sublayer.", cfg.n_head, True))
        y = residual(torch, y, P, pre + "cross.", "post", eps,
                     lambda h: attention(torch, h, x, P, pre + "cross.sublayer.", cfg.n_head, False, src_mask))
        y = residual(torch, y, P, pre + "ffn.", "post", eps,
                     lambda h: feed_forward(torch, h, P, pre + "ffn.sublayer.", "relu"))
    return y @ tgt_table.T


def vit_logits(torch, P, images, cfg):
    from pytransformer.nn import image_to_patches
    patches = torch.from_numpy(image_to_patches(images, cfg.patch_size)).double()
    x = linear(torch, patches, P, "patch.proj.")
    cls = P["patch.cls_token"].expand(x.shape[0], 1, x.shape[2])
    x = torch.cat([cls, x], 1) + P["pos.weight"]
    for l in range(cfg.num_hidden_layers):
        pre = f"blocks.{l}."
        x = residual(torch, x, P, pre + "attn.", "pre", cfg.layer_norm_eps,
                     lambda h: attention(torch, h, None, P, pre + "attn.sublayer.", cfg.num_attention_heads, False))
        x = residual(torch, x, P, pre + "ffn.", "pre", cfg.layer_norm_eps,
                     lambda h: feed_forward(torch, h, P, pre + "ffn.sublayer.", "gelu_exact"))
    x = layer_norm(torch, x, P, "ln.", cfg.layer_norm_eps)
    return linear(torch, x[:, 0], P, "classifier.")


def check_grads(model, P, tol=1e-3, floor=1e-4):
    """Every parameter's gradient against the mirror's, relative to max(|torch grad|, floor)."""
    for name, p in model.params:
        want = P[name].grad
        want = np.zeros(p.shape) if want is None else want.numpy()
        err = np.abs(p.grad - want).max() / max(np.abs(want).max(), floor)
        assert err < tol, f"{name}: gradient relative error {err:.2e}"


def sync_params(torch, P, model):
    """Copy the model's current parameters into the mirror's leaves (and drop their gradients)."""
    with torch.no_grad():
        for name, p in model.params:
            P[name].copy_(torch.from_numpy(np.asarray(p.data, np.float64)))
            P[name].grad = None


def adamw_steps_agree(torch, model, P, torch_loss, our_loss, steps=10, lr=1e-3, tol=2e-4, **adamw):
    """Ten (or `steps`) of our AdamW steps; before each, the float64 mirror is fed our current parameters and
    must give the same loss (within `tol` relative) and every gradient (check_grads). Each comparison is then one
    forward/backward's float32 error, whatever the CPU or BLAS: no trajectory is compared, so Adam's normalisation
    cannot amplify a last-bit difference over the steps (our AdamW itself is checked against torch's on identical
    gradients in tests/test_ops_torch.py). our_loss(step) / torch_loss(step) compute that step's loss."""
    from pytransformer.optim import AdamW

    opt = AdamW(model.params, lr=lr, **({"weight_decay": 0.0} | adamw))
    losses = []
    for step in range(steps):
        sync_params(torch, P, model)
        lt = torch_loss(step)
        lt.backward()
        model.zero_grad()
        loss = our_loss(step)
        model.backward()
        assert abs(loss - lt.item()) < tol * abs(lt.item()), f"step {step}: {loss} vs {lt.item()}"
        check_grads(model, P)
        opt.step()
        losses.append(loss)
    assert losses[-1] < losses[0], losses  # and it learned something
    return losses


def adamw_steps_match(torch, hf, ours, ids_of, tol, steps=10):
    """`steps` AdamW steps at lr 1e-2 on fresh batches (ids_of(step) -> ids). Before each, the transformers model hf
    is fed our current parameters and must give our loss and every gradient within `tol` (one forward/backward's
    float32 error): no trajectory is compared (Adam's normalisation turns a last-bit difference in a near-zero
    gradient into a full step, and torch's BLAS sums in another order on another CPU). Our AdamW itself equals
    torch's on identical gradients (test_ops_torch)."""
    from pytransformer import optim

    opt = optim.AdamW(ours.params, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, decay_vectors=True)
    named = dict(hf.named_parameters())
    for step in range(steps):
        with torch.no_grad():
            for name, v in ours.state_dict().items():
                named[name].copy_(torch.from_numpy(np.array(v)))
        hf.zero_grad()
        ids = ids_of(step)
        out = hf(torch.from_numpy(ids), labels=torch.from_numpy(ids))
        out.loss.backward()
        ours.zero_grad()
        loss = ours.loss(ids, labels=ids)
        ours.backward()
        assert abs(loss - out.loss.item()) < tol * out.loss.item(), step
        for name, g in ours.grad_dict().items():
            want = named[name].grad.numpy()
            assert np.abs(g - want).max() / np.abs(want).max() < tol, (step, name)
        opt.step()


def transformers_step_matches(torch, hf, ours, ids, tol=1e-4):
    """One forward and backward of ids (B, T) in the transformers model hf and ours (train mode): the logits, the
    loss and every gradient (under transformers' names; a tied head once) within tol of transformers'."""
    out = hf(torch.from_numpy(ids), labels=torch.from_numpy(ids))
    out.loss.backward()
    want = out.logits.detach().numpy()
    assert np.abs(ours(ids) - want).max() / np.abs(want).max() < tol
    ours.zero_grad()
    loss = ours.loss(ids, labels=ids)
    assert abs(loss - out.loss.item()) < 0.1 * tol * out.loss.item()
    ours.backward()
    grads = ours.grad_dict()
    named = dict(hf.named_parameters())
    assert set(grads) == set(named) - ({"lm_head.weight"} if hf.config.tie_word_embeddings else set())
    for name, g in grads.items():
        want = named[name].grad.numpy()
        assert np.abs(g - want).max() / np.abs(want).max() < tol, name
