"""LoRA adapters (nn/lora.py, io/peft.py) against peft on torch: tiny Llama and Qwen2 checkpoints made here, each
with a peft adapter whose B is drawn nonzero. Logits, loss, every A and B gradient, ten AdamW steps and greedy tokens
equal peft's (a float64 copy of the same model, so every difference is our float32 rounding); adapters travel
through peft's files both ways; a base in GGUF blocks trains as its float32 widening does; dropout trains and eval
ignores it; bad adapter files are one-line errors naming the file and the tensor or field."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hf_families import C, F, hf_tiny

import pytransformer as pt
from pytransformer import ops
from pytransformer.io import load_file, save_file
from pytransformer.models import Llama, LlamaConfig
from pytransformer.nn import Linear
from pytransformer.nn.lora import LoRAWeight
from pytransformer.nn.weights import Float32Weight
from pytransformer.opcases import random_blocks
from pytransformer.optim import AdamW

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

# (a Llama with llama3 scaling and a tied head; Qwen2 with q/k/v biases; Phi-3's fused qkv_proj and gate_up_proj,
# whose peft adapter has one A each over our separate q, k, v and gate, up)
FAMILIES = ["llama3", "qwen2", "phi3"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FUSED_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
R, ALPHA = 4, 8
EPS = float(np.finfo(np.float32).eps)
# A float32 forward and backward through the model against float64: each of its 2 x 2 sub-layers (attention, MLP)
# sums up to max(C, F) products, rounding by ~sqrt(K) eps relative with random signs; x 16 for the norms, softmax and
# the LoRA chain (x A^T B^T, then back) compounding them.
TOL = 16 * 4 * math.sqrt(max(C, F)) * EPS  # ~ 7e-5


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def adapted(tmp_path, family, dropout=0.0, seed=0):
    """(peft model in float64 over the family's tiny checkpoint, its base folder, its adapter folder): A as peft
    draws it, B drawn nonzero."""
    hf, folder = hf_tiny(tmp_path, family, seed)
    torch.manual_seed(seed + 1)
    pm = peft.get_peft_model(hf.double(), peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=dropout,
                                                          target_modules=FUSED_TARGETS if family == "phi3"
                                                          else TARGETS))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    pm.save_pretrained(tmp_path / f"adapter-{family}")
    return pm.eval(), folder, tmp_path / f"adapter-{family}"


def peft_grads(pm):
    """peft's A and B gradients under the names peft saves them with."""
    return {n.replace(".default.", "."): p.grad.numpy() for n, p in pm.named_parameters() if p.grad is not None}


def feed(pm, model):
    """Our current A and B into the peft model (its gradients dropped)."""
    named = {n.replace(".default.", "."): p for n, p in pm.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for name, value in model.state_dict().items():
            named[name].copy_(torch.from_numpy(np.asarray(value, np.float64)))
            named[name].grad = None


def step_matches(pm, model, ids):
    """One forward and backward of ids in both (training mode): loss and every LoRA gradient within TOL."""
    out = pm(input_ids=torch.from_numpy(ids), labels=torch.from_numpy(ids))
    out.loss.backward()
    model.zero_grad()
    loss = model.loss(ids, labels=ids)
    model.backward()
    assert abs(loss - out.loss.item()) < TOL * out.loss.item()
    want, got = peft_grads(pm), model.grad_dict()
    assert set(got) == set(want) and len(got) == 2 * len(pm.peft_config["default"].target_modules) * 2  # (A, B; 2 layers)
    for name, g in got.items():
        assert rel(g, want[name]) < TOL, name
    return loss


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_loss_and_every_lora_gradient_match_peft(tmp_path, rng, family):
    pm, base, adapter = adapted(tmp_path, family)
    model = pt.from_pretrained(base, adapter=adapter)
    ids = rng.integers(0, 101, (3, 13))
    want = pm(input_ids=torch.from_numpy(ids)).logits.detach().numpy()
    assert rel(model(ids), want) < TOL
    base_logits = pt.from_pretrained(base)(ids)
    assert rel(base_logits, want) > 100 * TOL  # (the adapter changes the logits: B is nonzero)
    step_matches(pm.train(), model.train(), ids)


def test_base_weights_take_no_gradient_and_the_optimizer_sees_only_the_adapter(tmp_path, rng):
    _, base, adapter = adapted(tmp_path, "llama3")
    model = pt.from_pretrained(base, adapter=adapter).train()
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert len(linears) == 14 and all(isinstance(m.stored, LoRAWeight) for m in linears)
    assert model.trainable is model.adapter.params
    assert model.trainable.size == sum(R * sum(m.weight.shape) for m in linears)  # (A (r, IC) and B (OC, r))
    ids = rng.integers(0, 101, (2, 9))
    model.zero_grad()
    model.loss(ids, labels=ids)
    model.backward()
    assert not model.params.grad[: model.params.decay_size].any()  # (no matrix of the base takes a gradient)
    assert np.abs(model.trainable.grad).max() > 0


def test_ten_adamw_steps_match_peft_fed_our_parameters(tmp_path, rng):
    """Before each step peft gets our current A and B and must give our loss and gradients (one forward/backward's
    float32 error, as tests/models/test_llama.py compares AdamW steps: no trajectory, which Adam's normalisation
    would amplify); our AdamW over the adapter alone then steps, and the loss falls."""
    pm, base, adapter = adapted(tmp_path, "llama3")
    model = pt.from_pretrained(base, adapter=adapter).train()
    pm.train()
    opt = AdamW(model.trainable, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    ids = rng.integers(0, 101, (2, 12))
    losses = []
    for _ in range(10):
        feed(pm, model)
        losses.append(step_matches(pm, model, ids))
        opt.step()
    assert all(b < a for a, b in zip(losses, losses[1:])), losses  # (it learns, step after step)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tokens_equal_peft(tmp_path, rng, family):
    pm, base, adapter = adapted(tmp_path, family)
    model = pt.from_pretrained(base, adapter=adapter)
    prompt = rng.integers(0, 101, (1, 6))
    want = pm.generate(input_ids=torch.from_numpy(prompt), max_new_tokens=10, do_sample=False, pad_token_id=0)
    np.testing.assert_array_equal(model.generate(prompt, 10, temperature=0.0), want.numpy())


def test_what_we_save_peft_loads_with_the_same_logits(tmp_path, rng):
    hf, base = hf_tiny(tmp_path, "qwen2")
    model = pt.from_pretrained(base).add_adapter(rank=R, alpha=ALPHA, targets=["q_proj", "v_proj", "down_proj"],
                                                 seed=3)
    for name, p in model.adapter.params:
        p.data[...] = rng.normal(0.0, 0.3, p.shape)
    model.save_adapter(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (R, ALPHA, ["down_proj", "q_proj",
                                                                                         "v_proj"])
    pm = peft.PeftModel.from_pretrained(hf.double(), tmp_path / "ours").eval()
    ids = rng.integers(0, 101, (2, 11))
    assert rel(model(ids), pm(input_ids=torch.from_numpy(ids)).logits.detach().numpy()) < TOL


def test_default_targets_on_phi3_adapt_every_projection_and_peft_loads_them(tmp_path, rng):
    """Phi-3's fused modules by default: q, k, v share qkv_proj's A, gate and up gate_up_proj's; what we save peft
    loads onto the transformers model with our logits."""
    hf, base = hf_tiny(tmp_path, "phi3")
    model = pt.from_pretrained(base).add_adapter(rank=R, alpha=ALPHA)
    linears = [m for m in model.modules() if isinstance(m, Linear) and m is not model.lm_head]
    assert len(linears) == 2 * 7 and all(isinstance(m.stored, LoRAWeight) for m in linears)
    attn = model.blocks[0].attn.sublayer
    assert attn.q.stored.lora_A is attn.k.stored.lora_A is attn.v.stored.lora_A
    Q, K = attn.q.weight.shape[0], attn.k.weight.shape[0]  # (one A (r, in) per module: qkv, o, gate_up, down;
    assert model.trainable.size == 2 * R * ((C + Q + C + F) + (Q + 2 * K + C + 2 * F + C))  # a B (out, r) per Linear)
    for name, p in model.adapter.params:
        p.data[...] = rng.normal(0.0, 0.3, p.shape)
    model.save_adapter(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(FUSED_TARGETS)
    pm = peft.PeftModel.from_pretrained(hf.double(), tmp_path / "ours").eval()
    ids = rng.integers(0, 101, (2, 11))
    assert rel(model(ids), pm(input_ids=torch.from_numpy(ids)).logits.detach().numpy()) < TOL


@pytest.mark.parametrize("family", ["llama3", "phi3"])
def test_peft_files_round_trip_through_us_unchanged(tmp_path, family):
    _, base, adapter = adapted(tmp_path, family)
    pt.from_pretrained(base, adapter=adapter).save_adapter(tmp_path / "again")
    theirs, ours = (load_file(f / "adapter_model.safetensors") for f in (adapter, tmp_path / "again"))
    assert set(theirs) == set(ours)
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name].astype(np.float32))


def test_merge_adapter_equals_peft_merge_and_decodes_through_the_plan(tmp_path, rng):
    pm, base, adapter = adapted(tmp_path, "qwen2")
    model = pt.from_pretrained(base, adapter=adapter)
    with pytest.raises(NotImplementedError, match="adapter"):
        model.plan()
    model.merge_adapter()
    assert model.adapter is None and model.plan() is not None
    merged = pm.merge_and_unload()
    ids = rng.integers(0, 101, (2, 11))
    assert rel(model(ids), merged(input_ids=torch.from_numpy(ids)).logits.detach().numpy()) < TOL
    model.save_pretrained(tmp_path / "merged")
    assert rel(pt.from_pretrained(tmp_path / "merged")(ids), model(ids)) == 0.0


def _blocks_and_widening(rng, qtypes):
    """A tiny Llama (widths multiples of the 32-value blocks) whose projections are GGUF blocks (qtypes in turn), and
    its twin whose float32 weights are those blocks' exact values; the same adapter (B drawn nonzero) on both."""
    config = LlamaConfig(vocab_size=101, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=96,
                         max_positions=64)
    model, twin = Llama(config, seed=1), Llama(config, seed=1)
    linears = zip((m for m in model.modules() if isinstance(m, Linear)),
                  (m for m in twin.modules() if isinstance(m, Linear)))
    for i, (layer, other) in enumerate(linears):
        OC, IC = layer.weight.shape
        qt = qtypes[i % len(qtypes)]
        blocks = ops.Quantized(random_blocks(rng, qt, OC, IC), qt, (OC, IC))
        layer.set_quantized(blocks)
        ops.dequantize(blocks, out=other.weight.data)
    B = rng.normal(0.0, 0.3, twin.add_adapter(R, ALPHA).trainable.size).astype(np.float32)
    model.set_activation_dtype("float32").add_adapter(R, ALPHA)
    for m in (model, twin):
        m.trainable.data[...] = np.where(m.trainable.data == 0, B, m.trainable.data)  # (B zero at first, A drawn)
    return model, twin


@pytest.mark.parametrize("qtypes", [["Q4_0"], ["Q8_0"], ["Q4_0", "Q8_0"]])
def test_a_block_base_trains_as_its_float32_widening(rng, qtypes):
    """Frozen GGUF blocks (dequantised in registers, no float32 copy): logits and loss equal the float32 widening's up
    to float32 summation order; the LoRA gradients too, where the block format has its dinp."""
    blocks, widened = _blocks_and_widening(rng, qtypes)
    ids = rng.integers(0, 101, (2, 10))
    with blocks.evaluating(), widened.evaluating():
        assert rel(blocks(ids), widened(ids)) < TOL
    blocks.train().zero_grad()
    widened.train().zero_grad()
    loss = blocks.loss(ids, labels=ids)
    assert abs(loss - widened.loss(ids, labels=ids)) < TOL * loss
    widened.backward()
    try:
        blocks.backward()
    except NotImplementedError as e:
        pytest.skip(f"{qtypes}: {e} (branch lora-dinp)")
    want = widened.grad_dict()
    for name, g in blocks.grad_dict().items():
        assert rel(g, want[name]) < TOL, name


def test_dropout_trains_seeded_and_eval_ignores_it(tmp_path, rng):
    """lora_dropout 0.5 (from peft's adapter_config.json): a training forward drops, the same seed drops the same,
    and eval mode gives the adapter without dropout."""
    _, base, adapter = adapted(tmp_path, "llama3", dropout=0.5)
    ids = rng.integers(0, 101, (2, 12))
    model = pt.from_pretrained(base, adapter=adapter)
    assert model.adapter.dropout == 0.5
    undropped = model(ids)
    model.train()
    assert rel(model(ids), undropped) > 1e-3
    model.eval()
    np.testing.assert_array_equal(model(ids), undropped)

    def losses(model, steps):
        model.train()
        opt = AdamW(model.trainable, lr=1e-2)
        out = []
        for _ in range(steps):
            model.zero_grad()
            out.append(model.loss(ids, labels=ids))
            model.backward()
            opt.step()
        return out

    run = losses(pt.from_pretrained(base, adapter=adapter), 8)
    assert run[-1] < run[0], run
    assert losses(pt.from_pretrained(base, adapter=adapter), 3) == run[:3]  # (seeded: the same masks, the same run)


def _spoil_tensors(change):
    def spoil(folder):
        path = folder / "adapter_model.safetensors"
        tensors = {k: np.array(v) for k, v in load_file(path).items()}
        change(tensors)
        save_file(tensors, path)
    return spoil


def _spoil_config(**fields):
    def spoil(folder):
        path = folder / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return spoil


Q0 = "base_model.model.model.layers.0.self_attn.q_proj"
BAD = {  # what is spoiled -> (how, what the one-line error must say)
    "missing tensor": (_spoil_tensors(lambda t: t.pop(f"{Q0}.lora_B.weight")),
                       f"adapter_model.safetensors: no tensor {Q0}.lora_B"),
    "wrong shape": (_spoil_tensors(lambda t: t.update({f"{Q0}.lora_A.weight": np.zeros((R, 5), np.float32)})),
                    f"adapter_model.safetensors: {Q0}.lora_A.weight has shape \\(4, 5\\)"),
    "rank mismatch": (_spoil_config(r=8),
                      "adapter_model.safetensors: .*lora_A.weight has shape \\(4, 48\\); rank 8"),
    "extra tensor": (_spoil_tensors(lambda t: t.update({"base_model.model.lm_head.lora_A.weight":
                                                        np.zeros((4, 48), np.float32)})),
                     "adapter_model.safetensors: tensor 'base_model.model.lm_head.lora_A.weight' is not one"),
    "unknown target": (_spoil_config(target_modules=["q_proj", "qkv"]), "adapter_config.json: unknown target 'qkv'"),
    "no target": (_spoil_config(target_modules=".*norm"),
                  "adapter_config.json: target pattern '.\\*norm' matches none"),
    "dora": (_spoil_config(use_dora=True), "adapter_config.json: use_dora True is not supported"),
    "bad rank": (_spoil_config(r=0), "adapter_config.json: rank must be a positive integer, got 0"),
    "not json": (lambda f: (f / "adapter_config.json").write_text("{r: 4"), "adapter_config.json"),
    "no weights": (lambda f: (f / "adapter_model.safetensors").unlink(), "adapter_model.safetensors: no such file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_adapter_is_one_line_naming_the_file_and_tensor(tmp_path, case):
    _, base, adapter = adapted(tmp_path, "llama3")
    spoil, message = BAD[case]
    spoil(adapter)
    model = pt.from_pretrained(base)
    with pytest.raises(ValueError, match=message) as e:
        pt.io.peft.load_adapter(model, adapter)
    assert "\n" not in str(e.value) and str(adapter) in str(e.value)
    assert model.adapter is None and not any(isinstance(m.stored, LoRAWeight) for m in model.modules()
                                             if isinstance(m, Linear))


@pytest.mark.parametrize("kwargs,message", [
    ({"rank": 0}, "rank must be a positive integer, got 0"), ({"alpha": -1}, "alpha must be a positive number"),
    ({"dropout": 1.0}, "dropout must be in \\[0, 1\\), got 1.0"), ({"targets": ["q_proj", "c_attn"]},
                                                                   "unknown target 'c_attn'"),
    ({"rank": 49}, "rank 49 exceeds the smallest targeted matrix")])
def test_bad_adapter_settings_are_one_line_errors(tmp_path, kwargs, message):
    _, base = hf_tiny(tmp_path, "qwen2")
    model = pt.from_pretrained(base)
    with pytest.raises(ValueError, match=message):
        model.add_adapter(**kwargs)
    assert model.adapter is None


def test_gpt2s_conv1d_modules_are_named_when_refused():
    """GPT-2 keeps its projections as Conv1D (in, out) weights, which LoRA does not adapt yet: the default targets
    are a one-line error naming them, never a silent subset."""
    from pytransformer.models import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=64, max_positions=32, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="its c_attn, c_proj, c_fc are Conv1D weights .in, out., which LoRA does "
                                         "not adapt yet"):
        model.add_adapter()
    assert model.adapter is None


def test_one_adapter_at_a_time_and_the_base_comes_back_whole(tmp_path, rng):
    _, base = hf_tiny(tmp_path, "qwen2")
    model = pt.from_pretrained(base)
    ids = rng.integers(0, 101, (1, 9))
    before = model(ids)
    model.add_adapter()
    with pytest.raises(ValueError, match="adapter attached already"):
        model.add_adapter()
    with pytest.raises(ValueError, match="before add_adapter"):
        model.set_weight_dtype("bfloat16")
    model.trainable.data[...] = 0.1
    assert rel(model(ids), before) > 1e-3
    model.remove_adapter()
    np.testing.assert_array_equal(model(ids), before)
    with pytest.raises(ValueError, match="no adapter"):
        model.save_adapter(tmp_path / "none")


def test_an_adapted_model_refuses_another_device_before_moving_anything(tmp_path, rng):
    """to("cuda") with an adapter attached is refused before any parameter or weight moves (no GPU needed: the
    check comes before the device's)."""
    _, base = hf_tiny(tmp_path, "qwen2")
    model = pt.from_pretrained(base).add_adapter()
    ids = rng.integers(0, 101, (1, 9))
    before = model(ids)
    stored = [m.stored for m in model.modules() if hasattr(m, "stored")]
    with pytest.raises(NotImplementedError, match="LoRA adapters run on the CPU, not 'cuda'; merge_adapter"):
        model.to("cuda")
    assert model.device == "cpu" and type(model.params.data) is np.ndarray
    assert [m.stored for m in model.modules() if hasattr(m, "stored")] == stored
    np.testing.assert_array_equal(model(ids), before)


def test_llama_cpp_row_order_takes_peft_adapters_in_hugging_face_order(tmp_path, rng):
    """A model whose q/k rows are in llama.cpp's order (as a GGUF file gives them) reads and writes B in Hugging Face's
    row order: the same logits as peft, and the same file back."""
    from dataclasses import replace

    pm, base, adapter = adapted(tmp_path, "llama3")
    plain = pt.from_pretrained(base)
    model = Llama(replace(plain.config, rope_interleaved=True))
    model.load_state_dict(plain.state_dict())
    pt.io.peft.load_adapter(model.eval(), adapter)
    ids = rng.integers(0, 101, (2, 9))
    assert rel(model(ids), pm(input_ids=torch.from_numpy(ids)).logits.detach().numpy()) < TOL
    model.save_adapter(tmp_path / "again")
    theirs, ours = (load_file(f / "adapter_model.safetensors") for f in (adapter, tmp_path / "again"))
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name].astype(np.float32))


def test_a_lora_weight_backpropagates_through_base_and_update(rng):
    """dinp of W + scale B A, against the float64 product."""
    W = rng.standard_normal((24, 40)).astype(np.float32)
    lora = LoRAWeight(Float32Weight(W), 4, 8.0)
    for p in (lora.lora_A, lora.lora_B):
        p.data, p.grad = rng.standard_normal(p.shape).astype(np.float32), np.zeros(p.shape, np.float32)
    dout = rng.standard_normal((3, 5, 24)).astype(np.float32)
    merged = W.astype(np.float64) + 2.0 * lora.lora_B.data.astype(np.float64) @ lora.lora_A.data
    assert rel(lora.dinp(dout), dout @ merged) < 16 * math.sqrt(40) * EPS
    np.testing.assert_allclose(lora.delta(), merged - W, rtol=0, atol=16 * math.sqrt(4) * EPS * np.abs(merged).max())
