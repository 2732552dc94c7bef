"""Generation with a KV cache: the same tokens as recomputing the whole sequence every step, batches of
left-padded prompts giving each row what it gets alone, samplers that do what they say, seeds, streaming, stops."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer import ops
from pytransformer import reference as ref
from pytransformer.generate import KVCache, Sampler, generate
from pytransformer.models import GPT, GPTConfig

CFG = GPTConfig(vocab_size=41, max_positions=24, n_layer=2, n_head=3, n_embd=24)


def recompute_greedy(model, ids, n):
    """The definition: every step, the whole context (its last max_positions tokens) through the model."""
    ids = ids.copy()
    with model.evaluating():
        for _ in range(n):
            logits = model.forward(np.ascontiguousarray(ids[:, -model.config.max_positions:]))[:, -1]
            ids = np.concatenate([ids, logits.argmax(-1)[:, None]], 1)
    return ids


@pytest.mark.parametrize("T,n", [(1, 5), (7, 10), (20, 15), (24, 3), (30, 4)])  # past max_positions too
def test_greedy_with_the_cache_equals_recomputing(rng, T, n):
    model = GPT(CFG, seed=2)
    ids = rng.integers(0, 41, (2, T))
    np.testing.assert_array_equal(model.generate(ids, n, temperature=0.0), recompute_greedy(model, ids, n))


def test_cached_logits_match_a_full_forward(rng):
    model = GPT(CFG, seed=4)
    ids = rng.integers(0, 41, (3, 12))
    with model.evaluating():
        full = model.forward(ids)
        cache = model.new_cache(3, 12)
        first = model.forward(ids[:, :7], cache=cache, position_ids=np.broadcast_to(np.arange(7), (3, 7)))
        steps = [model.forward(ids[:, t:t + 1], cache=cache, position_ids=np.full((3, 1), t))[:, 0]
                 for t in range(7, 12)]
    np.testing.assert_allclose(first, full[:, :7], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.stack(steps, 1), full[:, 7:], rtol=1e-5, atol=1e-5)
    assert cache.length == 12


def test_left_padded_batch_rows_equal_each_prompt_alone(rng):
    model = GPT(CFG, seed=5)
    prompts = [rng.integers(0, 41, n) for n in (3, 9, 6)]
    T = max(len(p) for p in prompts)
    ids = np.zeros((3, T), np.int64)
    mask = np.zeros((3, T), np.int64)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):], mask[i, T - len(p):] = p, 1
    out = model.generate(ids, 8, temperature=0.0, attention_mask=mask)
    for i, p in enumerate(prompts):
        alone = model.generate(p[None, :], 8, temperature=0.0)
        np.testing.assert_array_equal(out[i, T:], alone[0, len(p):])


def test_same_seed_same_tokens_and_stream_equals_generate(rng):
    model = GPT(CFG, seed=6)
    ids = rng.integers(0, 41, (2, 5))
    kw = dict(temperature=0.9, top_k=10, top_p=0.9, repetition_penalty=1.3)
    a = model.generate(ids, 12, seed=7, **kw)
    b = model.generate(ids, 12, seed=7, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, model.generate(ids, 12, seed=8, **kw))
    streamed = np.stack(list(model.stream(ids, 12, seed=7, **kw)), 1)
    np.testing.assert_array_equal(streamed, a[:, 5:])


def test_stop_ids_end_rows_and_pad_them(rng):
    model = GPT(CFG, seed=7)
    ids = rng.integers(0, 41, (2, 4))
    free = model.generate(ids, 10, temperature=0.0)
    stop = int(free[0, 6])  # a token row 0 produces at its third step
    out = model.generate(ids, 10, temperature=0.0, stop=stop)
    first = int(np.argmax(out[0, 4:] == stop))
    assert (out[0, 4 + first:] == stop).all()  # padded with the stop id after it
    np.testing.assert_array_equal(out[0, :4 + first + 1], free[0, :4 + first + 1])
    if not (free[1, 4:] == stop).any():
        np.testing.assert_array_equal(out[1], free[1])  # the other row runs to the end
    everyone = model.generate(ids[:1], 10, temperature=0.0, stop=int(free[0, 4]))
    assert everyone.shape == (1, 5)  # every row stopped: generation ends early


def test_top_k_one_and_a_tiny_top_p_are_greedy(rng):
    model = GPT(CFG, seed=8)
    ids = rng.integers(0, 41, (2, 6))
    greedy = model.generate(ids, 8, temperature=0.0)
    np.testing.assert_array_equal(model.generate(ids, 8, temperature=1.5, top_k=1, seed=1), greedy)
    np.testing.assert_array_equal(model.generate(ids, 8, temperature=1.5, top_p=1e-9, seed=1), greedy)


def test_sampler_follows_its_definition():
    logits = np.array([[2.0, 1.0, 0.5, -1.0, -3.0]])
    seen = np.array([[True, False, False, True, False]])
    assert Sampler(temperature=0.0)(logits, seen, None)[0] == 0
    # a seen positive logit is divided by the penalty (2.0 -> 0.8 < 1.0), a seen negative one multiplied
    assert Sampler(temperature=0.0, repetition_penalty=2.5)(logits, seen, None)[0] == 1
    # a penalty below 1 favours what was seen: token 3 (logit 1 in -logits) becomes 1 / 0.1 = 10, the largest
    assert Sampler(temperature=0.0, repetition_penalty=0.1)(-logits, seen, None)[0] == 3

    draws = np.array([Sampler(temperature=1.0, top_k=2)(logits, seen, np.random.default_rng(i))[0]
                      for i in range(400)])
    assert set(draws) <= {0, 1}
    p = np.exp([2.0, 1.0]) / np.exp([2.0, 1.0]).sum()
    assert abs((draws == 0).mean() - p[0]) < 0.08
    nucleus = np.array([Sampler(temperature=1.0, top_p=0.5)(logits, seen, np.random.default_rng(i))[0]
                        for i in range(50)])
    assert set(nucleus) == {0}  # token 0 alone holds more than half the probability
    with pytest.raises(ValueError, match="top_p"):
        Sampler(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        Sampler(temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        Sampler(top_k=0)


def test_generation_keeps_nothing_and_checks_its_input(rng):
    model = GPT(CFG, seed=1)
    model.generate(rng.integers(0, 41, (1, 3)), 3, temperature=0.0)
    assert all(getattr(m, "_x", None) is None for m in model.modules())
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, np.ones((1, 3), np.int64), 2, attention_mask=np.array([[1, 0, 1]]))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, np.ones((1, 3), np.int64), -1)
    with pytest.raises(TypeError, match="integer numpy array"):
        generate(model, np.ones((1, 3), np.float32), 2)
    assert generate(model, np.ones((1, 3), np.int64), 0).shape == (1, 3)


def test_attention_reads_a_cache_in_place(rng):
    B, NH, HS, cap, used = 2, 3, 8, 16, 9
    q = rng.standard_normal((B, 2, NH, HS)).astype(np.float32)
    k = rng.standard_normal((B, cap, NH, HS)).astype(np.float32)
    v = rng.standard_normal((B, cap, NH, HS)).astype(np.float32)
    k[:, used:], v[:, used:] = np.nan, np.nan  # rows past the length must never be read
    out, _ = ops.attention_forward(q, k, v, True, layout="bthd", kv_len=used)
    t = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731
    want, _ = ref.attention_forward(t(q), t(k[:, :used]), t(v[:, :used]), True)
    np.testing.assert_allclose(t(out), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="kv_len"):
        ops.attention_forward(q, k, v, True, layout="bthd", kv_len=cap + 1)


def test_cache_memory_is_what_it_says():
    cache = KVCache(2, 3, 10, 4, 8)
    assert cache.nbytes == 2 * 2 * 3 * 10 * 4 * 8 * 4


def log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_score_is_the_log_probability_of_each_next_token(rng):
    model = GPT(CFG, seed=9)
    ids = rng.integers(0, 41, (2, 11))
    with model.evaluating():
        logp = log_softmax(model.forward(ids))
    want = np.take_along_axis(logp[:, :-1], ids[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(model.score(ids), want, rtol=1e-5, atol=1e-5)


def test_score_of_a_left_padded_row_equals_the_row_alone(rng):
    model = GPT(CFG, seed=9)
    short = rng.integers(0, 41, 6)
    ids = np.concatenate([np.zeros(4, np.int64), short])[None, :]
    mask = np.concatenate([np.zeros(4), np.ones(6)])[None, :]
    got = model.score(ids, attention_mask=mask)
    assert (got[0, :4] == 0).all()  # padding, and the first real token (no context), score 0
    np.testing.assert_allclose(got[0, 4:], model.score(short[None, :])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("L,stride", [(20, None), (60, None), (60, 24), (61, 7), (200, 10)])
def test_perplexity_scores_every_token_once_with_a_sliding_window(rng, L, stride):
    from pytransformer.generate import perplexity

    model = GPT(CFG, seed=3)
    ids = rng.integers(0, 41, L)
    ppl, count = perplexity(model, ids, stride)
    window, stride = CFG.max_positions, stride or CFG.max_positions // 2
    if stride < window:  # (windows that do not overlap leave each window's first token without context)
        assert count == L - 1
    nll, scored_to, begin = [], 1, 0  # transformers' recipe, written out in float64
    while scored_to < L:
        end = min(begin + window, L)
        with model.evaluating():
            logp = log_softmax(model.forward(ids[None, begin:end]))[0]
        for t in range(max(scored_to, begin + 1), end):
            nll.append(-logp[t - begin - 1, ids[t]])
        scored_to, begin = end, begin + stride
    assert count == len(nll)
    assert abs(ppl - np.exp(np.mean(nll))) < 1e-4 * ppl


def test_score_matches_transformers_loss_on_the_gpt2_fixture():
    from conftest import SHARED_DATA

    folder = SHARED_DATA / "hf" / "gpt2-tiny"
    if not folder.exists():
        pytest.skip("shared data absent")
    from pytransformer import from_pretrained

    ref_ = np.load(folder / "ref.npz")
    model = from_pretrained(folder)
    loss = -model.score(ref_["input_ids"]).mean()  # transformers: mean over every (row, next-token) pair
    assert abs(loss - float(ref_["loss"])) < 1e-4 * abs(float(ref_["loss"]))


def test_encoder_decoder_greedy_with_the_cache_equals_recomputing(rng):
    from pytransformer.models import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(13, 17, n_embd=24, n_head=3, n_encoder_layer=2, n_decoder_layer=2,
                                          intermediate_size=40, max_positions=16), seed=3)
    src = rng.integers(2, 13, (3, 9))
    src_mask = np.ones((3, 9), bool)
    src_mask[1, 6:] = False  # a padded source
    got = model.greedy_decode(src, 0, 1, 12, src_mask=src_mask)
    with model.evaluating():  # the definition: the whole target prefix through the decoder every step
        memory = model.encode(src, src_mask)
        out = np.zeros((3, 1), np.int64)
        done = np.zeros(3, bool)
        for _ in range(12):
            nxt = np.where(done, 1, model.decode(out, memory, src_mask)[:, -1].argmax(-1))
            out = np.concatenate([out, nxt[:, None]], 1)
            done |= nxt == 1
            if done.all():
                break
    np.testing.assert_array_equal(got, out)
    with pytest.raises(ValueError, match="positions"):
        model.greedy_decode(src, 0, 1, 16)


def test_bfloat16_weights_compute_with_the_rounded_weights_exactly(rng):
    from pytransformer.nn.layers import HoldsWeight

    model = GPT(CFG, seed=11)
    rounded = GPT(CFG, seed=11)  # the same model with every product weight rounded to bfloat16, kept in float32
    for m in rounded.modules():
        if isinstance(m, HoldsWeight) and m.weight is not rounded.wte.weight:
            m.weight.data[...] = ref.round_bfloat16(m.weight.data)
    ids = rng.integers(0, 41, (2, 9))
    model.set_weight_dtype("bfloat16")
    with model.evaluating(), rounded.evaluating():
        got = model.forward(ids)
        # the tied head reads the rounded table, the embedding lookup the float32 one: mirror that by hand
        h = rounded.ln_f.forward(_hidden(rounded, ids))
        want = h.astype(np.float64) @ ref.round_bfloat16(rounded.wte.weight.data).T
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def _hidden(model, ids):
    x = model.drop.forward(model.wpe.forward(model.wte.forward(ids)))
    for block in model.blocks:
        x = block.forward(x)
    return x


def test_bfloat16_weights_are_for_inference_and_float32_comes_back(rng):
    model = GPT(CFG, seed=12).set_weight_dtype("bfloat16")
    ids = rng.integers(0, 41, (2, 6))
    model.loss(ids, np.roll(ids, -1, 1))
    with pytest.raises(RuntimeError, match="bfloat16 weights"):
        model.backward()
    model.set_weight_dtype("float32")
    model.zero_grad()
    model.loss(ids, np.roll(ids, -1, 1))
    model.backward()
    assert np.isfinite(model.params.grad).all()
    with pytest.raises(ValueError, match="weight dtype"):
        model.set_weight_dtype("int4")
    model.set_weight_dtype("int8")
    model.loss(ids, np.roll(ids, -1, 1))
    with pytest.raises(RuntimeError, match="int8 weights"):
        model.backward()


def test_bfloat16_greedy_tokens_equal_float32_on_the_gpt2_fixture():
    from conftest import SHARED_DATA

    folder = SHARED_DATA / "hf" / "gpt2-tiny"
    if not folder.exists():
        pytest.skip("shared data absent")
    from pytransformer import from_pretrained

    ref_ = np.load(folder / "ref.npz")
    full, half = from_pretrained(folder), from_pretrained(folder, dtype="bfloat16")
    prompt = ref_["input_ids"][:1, :4]
    n = ref_["greedy"].shape[1] - 4
    np.testing.assert_array_equal(half.generate(prompt, n, temperature=0.0), full.generate(prompt, n, temperature=0.0))
    with full.evaluating(), half.evaluating():
        a, b = full.forward(ref_["input_ids"]), half.forward(ref_["input_ids"])
    assert np.abs(a - b).max() < 2e-2 * np.abs(a).max()


def test_int8_weights_agree_with_float32_on_the_next_token(rng):
    """The accuracy guard: top-1 agreement of the next-token prediction over many positions."""
    model = GPT(GPTConfig(vocab_size=97, max_positions=64, n_layer=2, n_head=4, n_embd=64), seed=13)
    ids = rng.integers(0, 97, (8, 64))
    with model.evaluating():
        full = model.forward(ids)
    model.set_weight_dtype("int8")
    with model.evaluating():
        narrow = model.forward(ids)
    agree = (full.argmax(-1) == narrow.argmax(-1)).mean()
    assert agree >= 0.98, agree
    assert np.abs(full - narrow).max() < 0.05 * np.abs(full).max()


def recompute_beam_search(model, src, bos, eos, max_len, beam_size, alpha, src_mask=None):
    """The definition: every step, every beam's whole prefix through the decoder."""
    with model.evaluating():
        memory = model.encode(src, src_mask)

        def next_logits(seqs):
            mem = np.ascontiguousarray(np.repeat(memory, len(seqs), axis=0))
            mask = None if src_mask is None else np.repeat(np.asarray(src_mask), len(seqs), axis=0)
            return model.decode(seqs, mem, mask)[:, -1]
        return recompute_beams(next_logits, [bos], eos, max_len, beam_size, alpha)


def recompute_beams(next_logits, prompt, eos, max_len, beam_size, alpha):
    """Beam search written out without a cache: next_logits(prefixes (N, T)) -> (N, V) for every live beam."""
    beams, finished = [(0.0, list(prompt))], []
    for _ in range(max_len):
        seqs = np.array([b[1] for b in beams], np.int64)
        logits = np.asarray(next_logits(seqs), np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        candidates = [(score + row[t], seq + [int(t)]) for (score, seq), row in zip(beams, logp)
                      for t in np.argsort(row)[-beam_size:]]
        candidates.sort(key=lambda c: c[0], reverse=True)
        beams = []
        for score, seq in candidates:
            (finished if seq[-1] == eos else beams).append((score, seq))
            if len(beams) == beam_size:
                break
        if not beams or len(finished) >= beam_size:
            break
    pool = finished or beams
    return max(pool, key=lambda c: c[0] / (((5 + len(c[1])) / 6) ** alpha))[1]


@pytest.mark.parametrize("beam_size,masked", [(1, False), (3, False), (4, True)])
def test_beam_search_on_the_cache_equals_recomputing(rng, beam_size, masked):
    from pytransformer.models import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(11, 9, n_embd=24, n_head=3, n_encoder_layer=1, n_decoder_layer=2,
                                          intermediate_size=32, max_positions=16), seed=beam_size)
    src = rng.integers(2, 11, (1, 8))
    mask = None
    if masked:
        mask = np.ones((1, 8), bool)
        mask[0, 6:] = False
    got = model.beam_search(src, 0, 1, 10, beam_size=beam_size, src_mask=mask)
    assert got[0].tolist() == recompute_beam_search(model, src, 0, 1, 10, beam_size, 0.6, mask)


def test_fused_qkv_follows_the_weights(rng):
    """Decoding multiplies by q|k|v at once: a view of the flat buffer in float32 (so training updates show at
    once), a concatenation of the narrow copies otherwise (rebuilt when they change)."""
    model = GPT(CFG, seed=14)
    ids = rng.integers(0, 41, (1, 6))
    attn = model.blocks[0].attn.sublayer
    first = model.generate(ids, 6, temperature=0.0)
    assert attn._qkv.fused is not None and np.shares_memory(attn._qkv.fused.data, model.params.data)
    model.params.data[:] *= np.float32(1.5)  # as an optimizer step would, in place
    np.testing.assert_array_equal(model.generate(ids, 6, temperature=0.0), recompute_greedy(model, ids, 6))
    model.set_weight_dtype("int8")
    narrow = model.generate(ids, 6, temperature=0.0)
    assert attn._qkv.fused.kind == "int8"  # one product over the concatenated int8 copies
    with model.evaluating():  # the unfused int8 path, as a check
        x = rng.standard_normal((1, 3, CFG.n_embd)).astype(np.float32)
        q, k, v = attn._qkv(x)
        np.testing.assert_allclose(q, attn.q.forward(x), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(v, attn.v.forward(x), rtol=1e-6, atol=1e-6)
    assert narrow.shape == first.shape


def test_stop_strings_end_a_row_when_its_text_contains_them(rng):
    from pytransformer.generate import stream

    model = GPT(CFG, seed=7)
    ids = rng.integers(0, 41, (2, 4))
    letters = "abcdefghijklmnopqrstuvwxyz0123456789 .,:;"
    decode = lambda toks: "".join(letters[t] for t in toks)  # noqa: E731
    free = model.generate(ids, 12, temperature=0.0)
    target = decode(free[0, 7:9])  # two tokens row 0 produces at its 4th and 5th steps
    out = model.generate(ids, 12, temperature=0.0, stop_strings=[target], decode=decode, pad_id=40)
    text0 = decode(out[0, 4:])
    end = text0.index(target) + len(target)
    assert decode(free[0, 4:4 + end]) == text0[:end] and (out[0, 4 + end:] == 40).all()
    with pytest.raises(ValueError, match="decode="):
        list(stream(model, ids, 3, stop_strings=["x"]))


def small_llama(seed):
    from pytransformer.models import Llama, LlamaConfig

    return Llama(LlamaConfig(vocab_size=29, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, intermediate_size=48,
                             max_positions=32), seed=seed)


DECODERS = {"gpt": lambda seed: GPT(CFG, seed=seed), "llama": small_llama}


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("beam_size,stop", [(1, None), (3, None), (4, "found"), (6, "found")])
def test_decoder_only_beam_search_on_the_cache_equals_recomputing(rng, family, beam_size, stop):
    from pytransformer.generate import beam_search

    model = DECODERS[family](beam_size)
    model.params.data[:] *= np.float32(8.0)  # sharper attention: a beam reading another's keys shows sooner
    for _ in range(4):
        ids = rng.integers(0, 20, (1, 5))
        rule = stop
        with model.evaluating():
            next_logits = lambda seqs: model.forward(seqs)[:, -1]  # noqa: E731
            if stop == "found":  # a token the search meets (a stop rule that never fires would test nothing)
                rule = recompute_beams(next_logits, ids[0], None, 6, beam_size, 0.6)[8]
            want = recompute_beams(next_logits, ids[0], rule, 12, beam_size, 0.6)
        got = beam_search(model, ids, 12, beam_size=beam_size, stop=rule)
        assert got[0].tolist() == want
        np.testing.assert_array_equal(model.beam_search(ids, 12, beam_size=beam_size, stop=rule), got)  # (the method)
        if rule is not None:
            assert got[0, -1] == rule and len(want) < 17  # a finished hypothesis won


@pytest.mark.parametrize("family", DECODERS)
def test_a_wide_enough_beam_finds_the_likeliest_continuation(rng, family):
    """Brute force: with beam_size >= V^(n-1) every prefix is kept, so the search is exact: the best of all V^n
    continuations by total log-probability (one length: no length penalty decides)."""
    from pytransformer.generate import beam_search

    model = DECODERS[family](7)
    V, n = {"gpt": 41, "llama": 29}[family], 2
    ids = rng.integers(0, V, (1, 4))
    every = np.array([[a, b] for a in range(V) for b in range(V)])  # (V^2, 2)
    seqs = np.concatenate([np.repeat(ids, len(every), 0), every], 1)
    with model.evaluating():
        logp = log_softmax(model.forward(seqs[:, :-1]))
    total = np.take_along_axis(logp[:, -n:], seqs[:, -n:, None], -1)[..., 0].sum(-1)
    got = beam_search(model, ids, n, beam_size=V)
    np.testing.assert_array_equal(got[0], seqs[total.argmax()])
    narrow = beam_search(model, ids, n, beam_size=1)  # beam size 1: greedy
    np.testing.assert_array_equal(narrow, model.generate(ids, n, temperature=0.0))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_beam_search_matches_transformers_num_beams(tmp_path, rng, arch):
    """transformers' beam search keeps the 2 * num_beams best of all beams' candidates and drops EOS ones;
    without an end token both keep the global best num_beams each step, so the results are the same sequence."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from pytransformer.generate import beam_search
    from pytransformer.io.hf import from_pretrained

    torch.manual_seed(3)
    if arch == "llama":
        cfg = transformers.LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        hf = transformers.LlamaForCausalLM(cfg).eval()
    else:
        cfg = transformers.GPT2Config(n_embd=32, n_head=4, n_layer=2, vocab_size=61, n_positions=64)
        hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # larger weights: peaked distributions, so no near-tie decides
        for p in hf.parameters():
            p.mul_(4.0 if p.ndim == 2 else 1.0)
    hf.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    hf.generation_config.eos_token_id = None  # (every token is an ordinary one, as with stop=None here)
    for _ in range(3):
        ids = rng.integers(0, 61, (1, 6))
        with torch.no_grad():
            want = hf.generate(torch.from_numpy(ids), attention_mask=torch.ones(1, 6, dtype=torch.long),
                               num_beams=4, do_sample=False, max_new_tokens=10, length_penalty=0.0,
                               pad_token_id=0).numpy()
        got = beam_search(ours, ids, 10, beam_size=4, length_penalty=0.0)
        np.testing.assert_array_equal(got, want)


def poisoned(model, value):
    model.params.data[model.params.size // 2] = value  # one weight in the middle of the flat buffer
    return model


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_logits_raise_instead_of_generating(rng, value):
    from pytransformer.generate import beam_search

    ids = rng.integers(0, 41, (2, 5))
    model = poisoned(GPT(CFG, seed=1), value)
    with model.evaluating():
        assert not np.isfinite(model.forward(ids)[:, -1]).all()
    for kw in ({"temperature": 0.0}, {"temperature": 0.8, "top_k": 5, "seed": 0}, {"top_p": 0.9, "seed": 1}):
        with pytest.raises(ValueError, match=r"logits are not finite \(NaN or inf\) in row\(s\) \[0, 1\]"):
            model.generate(ids, 4, **kw)
    with pytest.raises(ValueError, match="not finite"):
        beam_search(model, ids[:1], 4, beam_size=3)


def test_non_finite_logits_raise_in_the_encoder_decoder_too(rng):
    from pytransformer.models import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(11, 9, n_embd=24, n_head=3, n_encoder_layer=1, n_decoder_layer=1,
                                          intermediate_size=32, max_positions=16), seed=1)
    src = rng.integers(2, 11, (2, 6))
    model.greedy_decode(src, 0, 1, 5)  # fine before
    model.decoder[0].ffn.sublayer.fc2.weight.data[0, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        model.greedy_decode(src, 0, 1, 5)
    with pytest.raises(ValueError, match="not finite"):
        model.beam_search(src[:1], 0, 1, 5, beam_size=2)


def test_beam_search_checks_its_input(rng):
    from pytransformer.generate import beam_search

    model = GPT(CFG, seed=1)
    ids = rng.integers(0, 41, (1, 5))
    with pytest.raises(ValueError, match="one prompt at a time"):
        beam_search(model, np.repeat(ids, 2, 0), 3)
    with pytest.raises(ValueError, match="beam_size must be an integer >= 1"):
        beam_search(model, ids, 3, beam_size=0)
    with pytest.raises(ValueError, match="exceed the model's 24 positions"):
        beam_search(model, ids, 20)
    np.testing.assert_array_equal(beam_search(model, ids, 0), ids)


def test_the_encoder_decoder_samples_through_the_same_loop(rng):
    """decoder_for(src) is a decoder like any other: sampling, seeds and stops work on it as on a decoder-only
    model, and top_k=1 is greedy_decode."""
    from pytransformer.models import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(13, 17, n_embd=24, n_head=3, n_encoder_layer=1, n_decoder_layer=2,
                                          intermediate_size=40, max_positions=16), seed=5)
    src = rng.integers(2, 13, (3, 7))
    src_mask = np.ones((3, 7), bool)
    src_mask[2, 5:] = False
    bos = np.zeros((3, 1), np.int64)
    decoder = model.decoder_for(src, src_mask)
    greedy = model.greedy_decode(src, 0, 1, 10, src_mask=src_mask)
    np.testing.assert_array_equal(generate(decoder, bos, 10, temperature=2.0, top_k=1, stop=1, seed=3), greedy)
    a = generate(decoder, bos, 10, temperature=1.0, seed=4)
    np.testing.assert_array_equal(a, generate(model.decoder_for(src, src_mask), bos, 10, temperature=1.0, seed=4))
    assert not np.array_equal(a, generate(decoder, bos, 10, temperature=1.0, seed=5))
