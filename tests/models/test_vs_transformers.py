"""Random configurations built by transformers itself (optional test dependency): save_pretrained there, load
here, and the logits agree; and the other way round, a model saved here loads in transformers."""

from __future__ import annotations

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from pytransformer.io.hf import from_pretrained  # noqa: E402


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def perturb_layernorms(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(torch.randn_like(m.weight) * 0.1)
                m.bias.add_(torch.randn_like(m.bias) * 0.1)


@pytest.mark.parametrize("n_embd,n_head,n_layer,vocab", [(48, 3, 3, 77), (32, 4, 1, 50)])
def test_random_gpt2_from_transformers(tmp_path, rng, n_embd, n_head, n_layer, vocab):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=n_embd, n_head=n_head, n_layer=n_layer, vocab_size=vocab, n_positions=40)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    perturb_layernorms(hf)
    hf.save_pretrained(tmp_path)
    ids = rng.integers(0, vocab, (2, 13))
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)).logits.numpy()
    assert rel(from_pretrained(tmp_path).forward(ids), want) < 1e-4


@pytest.mark.parametrize("cls_name", ["BertModel", "BertForMaskedLM", "BertForSequenceClassification"])
def test_random_bert_from_transformers(tmp_path, rng, cls_name):
    torch.manual_seed(1)
    cfg = transformers.BertConfig(vocab_size=90, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=80, max_position_embeddings=32, num_labels=3)
    hf = getattr(transformers, cls_name)(cfg).eval()
    perturb_layernorms(hf)
    hf.save_pretrained(tmp_path)
    ids, mask = rng.integers(0, 90, (2, 11)), np.ones((2, 11), np.int64)
    mask[1, 7:] = 0
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    ours = from_pretrained(tmp_path)
    got = ours(ids, mask)
    want = out.last_hidden_state.numpy() if cls_name == "BertModel" else out.logits.numpy()
    keep = mask.astype(bool) if got.ndim == 3 else slice(None)
    assert rel(got[keep], want[keep]) < 1e-4


def test_random_vit_from_transformers(tmp_path, rng):
    torch.manual_seed(2)
    cfg = transformers.ViTConfig(image_size=12, patch_size=3, num_channels=2, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=64, num_labels=4)
    hf = transformers.ViTForImageClassification(cfg).eval()
    perturb_layernorms(hf)
    hf.save_pretrained(tmp_path)
    x = rng.standard_normal((2, 2, 12, 12)).astype(np.float32)
    with torch.no_grad():
        want = hf(pixel_values=torch.from_numpy(x)).logits.numpy()
    assert rel(from_pretrained(tmp_path).forward(x), want) < 1e-4


@pytest.mark.parametrize("kind", ["gpt2", "bert", "vit"])
def test_models_saved_here_load_in_transformers(tmp_path, rng, kind):
    from pytransformer.models import BERT, GPT, BertConfig, GPTConfig, ViT, ViTConfig

    if kind == "gpt2":
        model = GPT(GPTConfig(vocab_size=60, max_positions=20, n_layer=2, n_head=2, n_embd=16), seed=3)
        ids = rng.integers(0, 60, (2, 9))
        ours, load = model.forward(ids), transformers.GPT2LMHeadModel
        run = lambda hf: hf(torch.from_numpy(ids)).logits
    elif kind == "bert":
        model = BERT(BertConfig(vocab_size=60, n_embd=16, n_layer=2, n_head=2,
                                intermediate_size=32, max_positions=20, num_labels=0, pooler=False), seed=3)
        ids = rng.integers(0, 60, (2, 9))
        ours, load = model.eval()(ids), transformers.BertForMaskedLM  # eval: BERT's dropout defaults to 0.1
        run = lambda hf: hf(input_ids=torch.from_numpy(ids)).logits
    else:
        model = ViT(ViTConfig(image_size=8, patch_size=4, num_channels=3, n_embd=16, n_layer=1,
                              n_head=2, intermediate_size=32, num_labels=3), seed=3)
        x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
        ours, load = model.forward(x), transformers.ViTForImageClassification
        run = lambda hf: hf(pixel_values=torch.from_numpy(x)).logits
    model.save_pretrained(tmp_path)
    hf = load.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert rel(ours, run(hf).numpy()) < 1e-4


def test_random_gpt2_model_and_vit_model_without_heads(tmp_path, rng):
    torch.manual_seed(3)
    g = transformers.GPT2Model(transformers.GPT2Config(n_embd=32, n_head=2, n_layer=2, vocab_size=40,
                                                       n_positions=16)).eval()
    perturb_layernorms(g)
    g.save_pretrained(tmp_path / "g")
    ids = rng.integers(0, 40, (2, 7))
    with torch.no_grad():
        hidden = g(torch.from_numpy(ids)).last_hidden_state
        logits = (hidden @ g.wte.weight.T).numpy()  # GPT2Model + the tied head
    assert rel(from_pretrained(tmp_path / "g").forward(ids), logits) < 1e-4

    v = transformers.ViTModel(transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16,
                                                     num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=32)).eval()
    perturb_layernorms(v)
    v.save_pretrained(tmp_path / "v")
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = v(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    assert rel(from_pretrained(tmp_path / "v").forward(x), want) < 1e-4
