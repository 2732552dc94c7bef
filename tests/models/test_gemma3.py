"""Gemma 3 (text) against transformers' Gemma3ForCausalLM on tiny random checkpoints built here: head_dim apart from
n_embd / n_head, one and two key/value heads, sliding windows shorter than the sequence, layer_types mixing sliding
and full layers (each with its rotary base), soft-capped and plain logits, tied and untied heads. Logits, loss, every
parameter's gradient, ten AdamW steps, greedy tokens over the KV cache, save_pretrained both ways.

transformers runs in float64, so each bound is our float32 error alone (that of one forward and backward through a
few layers: 1e-4 relative to the largest value, as in test_llama)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import greedy_by_recomputation
from torch_mirror import adamw_steps_match

from pytransformer.io.hf import from_pretrained
from pytransformer.models import Decoder, Gemma3, gemma3_config

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TOL = 1e-4
V = 101
# (name, tie, NH, NKV, head_dim, layer_types, window, query_pre_attn_scalar, final_logit_softcapping)
SHAPES = [("sliding-full", True, 4, 2, 16, ("sliding", "full"), 5, 24, 30.0),
          ("one-kv-head", False, 4, 1, 12, ("sliding", "sliding", "full"), 3, 12, None),
          ("window-past-sequence", True, 2, 2, 24, ("full", "sliding"), 40, 24, 5.0),
          ("all-sliding", False, 6, 3, 10, ("sliding", "sliding"), 2, 7, None)]
HF_TYPES = {"sliding": "sliding_attention", "full": "full_attention"}


def rel(a, b):
    b = np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def hf_tiny(tmp_path, name, tie, NH, NKV, head_dim, layer_types, window, scalar, cap, seed=0, full_scaling=None,
            local_theta=30.0):
    torch.manual_seed(seed)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=len(layer_types),
        num_attention_heads=NH, num_key_value_heads=NKV, head_dim=head_dim, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 500.0, **(full_scaling or {})},
                                            "sliding_attention": {"rope_type": "default", "rope_theta": local_theta}},
        sliding_window=window, layer_types=[HF_TYPES[t] for t in layer_types], query_pre_attn_scalar=scalar,
        final_logit_softcapping=cap, tie_word_embeddings=tie, attn_implementation="eager", eos_token_id=None,
        pad_token_id=None, bos_token_id=None)
    model = transformers.Gemma3ForCausalLM(cfg).float().eval()
    with torch.no_grad():  # norms away from 0 (a scale of 1 + w), so that their gradients and placement are tested
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.3 * torch.randn_like(p))
            elif "embed" in n:  # (logits large enough that soft-capping bends them)
                p.mul_(20.0)
    folder = tmp_path / f"gemma3-{name}"
    model.save_pretrained(folder, safe_serialization=True)
    return model.double(), folder


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s[0])
def test_logits_loss_and_every_gradient_match_transformers(tmp_path, rng, shape):
    hf, folder = hf_tiny(tmp_path, *shape)
    ours = from_pretrained(folder).train()
    assert isinstance(ours, Gemma3) and ours.config.layer_types == shape[5]
    ids = rng.integers(0, V, (2, 17))
    out = hf(torch.from_numpy(ids), labels=torch.from_numpy(ids))
    out.loss.backward()
    assert rel(ours(ids), out.logits.detach().numpy()) < TOL
    ours.zero_grad()
    loss = ours.loss(ids, labels=ids)
    assert abs(loss - out.loss.item()) < TOL * out.loss.item()
    ours.backward()
    grads = ours.grad_dict()
    named = dict(hf.named_parameters())
    assert set(grads) == set(named) - ({"lm_head.weight"} if shape[1] else set())
    for n, g in grads.items():
        assert rel(g, named[n].grad.numpy()) < TOL, n


def test_linear_rope_scaling_applies_to_the_full_layers_only(tmp_path, rng):
    """Gemma 3 4B+: the full layers' linear rotary scaling; the sliding layers' table stays unscaled, even at the
    same base (tables are per layer kind, not per base)."""
    hf, folder = hf_tiny(tmp_path, *SHAPES[0], full_scaling={"rope_type": "linear", "factor": 4.0}, local_theta=500.0)
    ours = from_pretrained(folder)
    assert ours.description.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    ids = rng.integers(0, V, (1, 23))
    assert rel(ours(ids), hf(torch.from_numpy(ids)).logits.detach().numpy()) < TOL


def test_ten_adamw_steps_match_torch(tmp_path, rng):
    """Ten AdamW steps, transformers fed our current parameters before each (torch_mirror.adamw_steps_match)."""
    hf, folder = hf_tiny(tmp_path, *SHAPES[1])
    adamw_steps_match(torch, hf.train(), from_pretrained(folder).train(), lambda _: rng.integers(0, V, (2, 12)), TOL)


@pytest.mark.parametrize("shape", SHAPES[:2], ids=lambda s: s[0])
def test_greedy_generation_matches_transformers(tmp_path, rng, shape):
    """A prompt longer than the window, then twelve tokens over the KV cache (the C++ decoding plan)."""
    hf, folder = hf_tiny(tmp_path, *shape)
    ours = from_pretrained(folder)
    prompt = rng.integers(0, V, (1, 9))
    want = hf.generate(torch.from_numpy(prompt), max_new_tokens=12, do_sample=False).numpy()
    np.testing.assert_array_equal(ours.generate(prompt, 12, temperature=0.0), want)


def test_cache_decoding_equals_recomputation_past_the_window_and_the_table(rng):
    """Greedy decoding over the KV cache (windowed layers read only their window of it) equals recomputing the
    whole sequence each step, also past the rotary tables' first size."""
    model = Gemma3(gemma3_config(vocab_size=50, n_layer=3, n_embd=32, n_head=4, n_kv_head=2, head_dim=12,
                                 intermediate_size=40, max_positions=400, rope_theta=1000.0, rope_local_theta=20.0,
                                 sliding_window=7, layer_types=("sliding", "full", "sliding"),
                                 query_pre_attn_scalar=16.0, final_logit_softcapping=10.0), seed=3).eval()
    ids = rng.integers(0, 50, (1, 250))
    np.testing.assert_array_equal(model.generate(ids, 10, temperature=0.0), greedy_by_recomputation(model, ids, 10))


@pytest.mark.parametrize("tie", [True, False])
def test_save_pretrained_loads_in_transformers_and_back(tmp_path, rng, tie):
    model = Gemma3(gemma3_config(vocab_size=60, n_layer=2, n_embd=32, n_head=4, n_kv_head=1, head_dim=16,
                                 intermediate_size=48, rope_theta=700.0, rope_local_theta=40.0, sliding_window=4,
                                 layer_types=("sliding", "full"), query_pre_attn_scalar=20.0,
                                 final_logit_softcapping=3.0, tie_word_embeddings=tie), seed=1)
    for _, p in model.params:  # (norm weights away from their zero init)
        p.data += np.float32(0.1)
    model.save_pretrained(tmp_path)
    hf = transformers.Gemma3ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").double().eval()
    ids = rng.integers(0, 60, (2, 11))
    with model.evaluating():
        logits = model(ids)
    assert rel(logits, hf(torch.from_numpy(ids)).logits.detach().numpy()) < TOL
    back = from_pretrained(tmp_path)
    assert isinstance(back, Gemma3) and back.config == model.config
    np.testing.assert_array_equal(back(ids), logits)


def test_config_counts_parameters_like_transformers(tmp_path):
    hf, _ = hf_tiny(tmp_path, *SHAPES[1])
    cfg = from_pretrained(tmp_path / f"gemma3-{SHAPES[1][0]}").config
    assert cfg.num_params() == sum(p.numel() for p in hf.parameters()) == Gemma3(cfg).num_parameters()


@pytest.mark.parametrize("field,value,message", [
    ("sliding_window", 0, "sliding_window must be a positive integer"),
    ("layer_types", ("full",), "layer_types must be 2 entries"),
    ("layer_types", ("full", "local"), "layer_types must be 2 entries"),
    ("final_logit_softcapping", -1.0, "final_logit_softcapping must be a positive number"),
    ("query_pre_attn_scalar", float("nan"), "query_pre_attn_scalar must be a positive number"),
    ("activation", "relu", "gated feed-forward with relu")])
def test_bad_descriptions_are_one_line_errors(field, value, message):
    with pytest.raises((ValueError, NotImplementedError), match=message):
        gemma3_config(vocab_size=20, n_layer=2, n_embd=16, n_head=2, **{field: value})


def test_a_train_checkpoint_round_trips(tmp_path, rng):
    from pytransformer.checkpoint import load_checkpoint, save_checkpoint

    model = Gemma3(gemma3_config(vocab_size=30, n_layer=2, n_embd=16, n_head=2, head_dim=8, intermediate_size=24,
                                 sliding_window=3, layer_types=("sliding", "full"), rope_local_theta=10.0), seed=2)
    save_checkpoint(tmp_path / "ckpt.safetensors", model, step=3)
    back = load_checkpoint(tmp_path / "ckpt.safetensors")["model"]
    ids = rng.integers(0, 30, (1, 9))
    assert isinstance(back, Gemma3) and back.config == model.config
    assert type(model.config).from_dict(model.config.to_dict()) == model.config
    np.testing.assert_array_equal(back(ids), model(ids))


TRANSFORMERS_4_CONFIG = {"model_type": "gemma3_text", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
                         "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
                         "rope_theta": 1e6, "rope_local_base_freq": 1e4, "rope_scaling": None, "sliding_window": 3,
                         "sliding_window_pattern": 2, "query_pre_attn_scalar": 4}


def test_a_transformers_4_config_is_read():
    from pytransformer.io.hf_gemma3 import from_hf

    config, prefix = from_hf(TRANSFORMERS_4_CONFIG, {"model.embed_tokens.weight": None})
    assert prefix == "model." and config.layer_types == ("sliding", "full", "sliding", "full")
    assert (config.rope_theta, config.rope_local_theta, config.sliding_window, config.attn_scale) == (1e6, 1e4, 3, 0.5)
    assert [config.rope_local(i) for i in range(4)] == [True, False, True, False]
    assert [config.window(i) for i in range(4)] == [3, 0, 3, 0]


@pytest.mark.parametrize("field,value,message", [
    ("hidden_activation", "gelu", "hidden_activation 'gelu' is not supported"),
    ("attn_logit_softcapping", 50.0, "attn_logit_softcapping 50.0 is not supported"),
    ("layer_types", ["full_attention"], "layer_types must list 4"),
    ("rope_parameters", {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "linear", "factor": 2.0}}, "sliding layers' rope scaling"),
    ("sliding_window", 0, "sliding_window"),
    ("query_pre_attn_scalar", -1, "query_pre_attn_scalar")])
def test_a_bad_config_is_a_one_line_error_naming_the_field(field, value, message):
    from pytransformer.io.hf_gemma3 import from_hf

    with pytest.raises(ValueError, match=message):
        from_hf({**TRANSFORMERS_4_CONFIG, field: value}, {})
