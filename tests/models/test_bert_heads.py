"""BERT's pre-training heads against transformers on random configs: BertForPreTraining (masked-LM + next-sentence),
BertForNextSentencePrediction and BertForTokenClassification: logits, loss and every parameter's gradient."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer.io.hf import from_pretrained

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


def hf_model(tmp_path, cls, **kw):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=40, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, **kw)
    model = getattr(transformers, cls)(cfg).float().eval()
    folder = tmp_path / cls
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


def inputs(rng):
    ids = rng.integers(0, 90, (3, 12))
    tt = np.zeros_like(ids)
    tt[:, 6:] = 1  # sentence A, then sentence B
    mask = np.ones_like(ids)
    mask[2, 9:] = 0
    return ids, tt, mask


def check_grads(ours, hf, tie=("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")):
    named = {k: v for k, v in hf.named_parameters() if k not in tie}
    grads = ours.grad_dict()
    assert set(grads) == set(named), set(grads) ^ set(named)
    for name, g in grads.items():
        want = named[name].grad.numpy()
        assert rel(g, want) < 1e-4 or np.abs(g - want).max() < 1e-7, name


def test_pretraining_heads_match_transformers(tmp_path, rng):
    hf, folder = hf_model(tmp_path, "BertForPreTraining")
    ours = from_pretrained(folder).train()
    assert ours.config.mlm and ours.config.nsp
    ids, tt, mask = inputs(rng)
    labels = np.where(rng.random(ids.shape) < 0.3, ids, -100)
    nsp = np.array([0, 1, 1])
    out = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), token_type_ids=torch.from_numpy(tt),
             labels=torch.from_numpy(labels), next_sentence_label=torch.from_numpy(nsp))
    out.loss.backward()
    with ours.evaluating():
        mlm, seq = ours.pretraining_logits(ids, mask, tt)
    assert rel(mlm, out.prediction_logits.detach().numpy()) < 1e-4
    assert rel(seq, out.seq_relationship_logits.detach().numpy()) < 1e-4
    ours.zero_grad()
    loss = ours.loss(ids, labels, mask, tt, next_sentence_label=nsp)
    assert abs(loss - out.loss.item()) < 1e-5 * out.loss.item()
    ours.backward()
    check_grads(ours, hf)


def check_one_head(ours, hf, ids, tt, mask, labels):
    """A one-loss head against transformers' model of it: logits, loss and every parameter's gradient."""
    out = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), token_type_ids=torch.from_numpy(tt),
             labels=torch.from_numpy(labels))
    out.loss.backward()
    assert rel(ours(ids, mask, tt), out.logits.detach().numpy()) < 1e-4
    ours.zero_grad()
    assert abs(ours.loss(ids, labels, mask, tt) - out.loss.item()) < 1e-5 * out.loss.item()
    ours.backward()
    check_grads(ours, hf)


def test_next_sentence_prediction_matches_transformers(tmp_path, rng):
    hf, folder = hf_model(tmp_path, "BertForNextSentencePrediction")
    ids, tt, mask = inputs(rng)
    check_one_head(from_pretrained(folder).train(), hf, ids, tt, mask, np.array([1, 0, 1]))


def test_token_classification_matches_transformers(tmp_path, rng):
    hf, folder = hf_model(tmp_path, "BertForTokenClassification", num_labels=5)
    ours = from_pretrained(folder).train()
    assert ours.config.num_token_labels == 5 and not ours.config.pooler
    ids, tt, mask = inputs(rng)
    labels = rng.integers(0, 5, ids.shape)
    labels[2, 9:] = -100  # padding is not scored
    check_one_head(ours, hf, ids, tt, mask, labels)


@pytest.mark.parametrize("cls", ["BertForPreTraining", "BertForNextSentencePrediction", "BertForTokenClassification"])
def test_save_pretrained_round_trips_each_head(tmp_path, cls):
    hf, folder = hf_model(tmp_path, cls, **({"num_labels": 3} if "Token" in cls else {}))
    ours = from_pretrained(folder)
    ours.save_pretrained(tmp_path / "again")
    back = getattr(transformers, cls).from_pretrained(tmp_path / "again")
    for name, p in hf.state_dict().items():
        np.testing.assert_allclose(back.state_dict()[name].numpy(), p.numpy(), rtol=0, atol=0)
