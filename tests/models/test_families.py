"""BERT, the encoder-decoder Transformer and ViT against PyTorch mirrors (logits, loss, every gradient, ten
AdamW steps), and the mask invariants: padded keys change nothing; a padded batch equals its rows one by one."""

from __future__ import annotations

import numpy as np
import pytest

import torch_mirror as tm
from pytransformer.models import GPT, BERT, BertConfig, GPTConfig, Transformer, TransformerConfig, ViT, ViTConfig, mask_tokens

BERT_CFG = BertConfig(vocab_size=41, n_embd=24, n_layer=2, n_head=3,
                      intermediate_size=40, max_positions=20, dropout=0.0, num_labels=3)
TR_CFG = TransformerConfig(src_vocab_size=23, tgt_vocab_size=19, n_embd=24, n_head=4, n_encoder_layer=2,
                           n_decoder_layer=2, intermediate_size=40, dropout=0.0, max_positions=32)
VIT_CFG = ViTConfig(image_size=8, patch_size=4, num_channels=3, n_embd=24, n_layer=2,
                    n_head=3, intermediate_size=40, num_labels=5)


def padded_mask(B, T, lengths):
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


def test_bert_mlm_matches_torch_mirror(torch, rng):
    model = BERT(BERT_CFG, seed=1)
    ids = rng.integers(0, 41, (3, 11))
    mask = padded_mask(3, 11, [11, 7, 9])
    labels = np.where(rng.random((3, 11)) < 0.4, ids, -100)
    labels[~mask] = -100
    P = tm.params_from(model, torch)
    logits_t = tm.bert_mlm_logits(torch, P, ids, BERT_CFG, mask)
    loss_t = torch.nn.functional.cross_entropy(logits_t.reshape(-1, 41), torch.from_numpy(labels).reshape(-1))
    loss_t.backward()
    logits = model.mlm_logits(ids, mask)
    np.testing.assert_allclose(logits[mask], logits_t.detach().numpy()[mask], rtol=1e-4, atol=1e-5)
    model.zero_grad()
    loss = model.mlm_loss(ids, labels, mask)
    assert abs(loss - loss_t.item()) < 1e-5 * loss_t.item()
    model.backward()
    tm.check_grads(model, P)


def test_bert_cls_head_matches_torch_mirror_over_ten_adamw_steps(torch, rng):
    model = BERT(BERT_CFG, seed=2)
    ids, labels = rng.integers(0, 41, (4, 9)), rng.integers(0, 3, 4)
    mask = padded_mask(4, 9, [9, 5, 9, 3])
    P = tm.params_from(model, torch)
    tm.adamw_steps_agree(
        torch, model, P,
        lambda step: torch.nn.functional.cross_entropy(tm.bert_classify_logits(torch, P, ids, BERT_CFG, mask),
                                                       torch.from_numpy(labels)),
        lambda step: model.classify_loss(ids, labels, mask))


def test_bert_padded_batch_equals_rows_one_by_one(rng):
    model = BERT(BERT_CFG, seed=3).eval()
    ids = rng.integers(0, 41, (3, 10))
    lengths = [10, 4, 7]
    batch = model.encode(ids, padded_mask(3, 10, lengths))
    for i, n in enumerate(lengths):
        alone = model.encode(ids[i:i + 1, :n])
        np.testing.assert_allclose(batch[i, :n], alone[0], rtol=1e-5, atol=1e-5)


def test_bert_padded_keys_change_nothing(rng):
    model = BERT(BERT_CFG, seed=4).eval()
    ids = rng.integers(0, 41, (2, 8))
    mask = padded_mask(2, 8, [8, 5])
    other = ids.copy()
    other[1, 5:] = (other[1, 5:] + 3) % 41
    np.testing.assert_allclose(model.encode(ids, mask)[1, :5], model.encode(other, mask)[1, :5], rtol=1e-6, atol=1e-6)


def test_mask_tokens_follows_bert_recipe():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 1000, (200, 100))
    ids[:, 0] = 1  # a special token, never selected
    inputs, labels = mask_tokens(ids, rng, 1000, mask_id=4, special_ids=(1,))
    selected = labels != -100
    assert abs(selected[:, 1:].mean() - 0.15) < 0.01 and not selected[:, 0].any()
    assert abs((inputs[selected] == 4).mean() - 0.8) < 0.02
    assert abs((inputs[selected] == ids[selected]).mean() - 0.1) < 0.02  # kept (plus ~0.1% random hits)
    np.testing.assert_array_equal(inputs[~selected], ids[~selected])


@pytest.mark.parametrize("shared", [False, True])
def test_transformer_matches_torch_mirror(torch, rng, shared):
    cfg = TransformerConfig(**{**TR_CFG.to_dict(), "share_embeddings": shared,
                               "src_vocab_size": 19 if shared else 23})
    model = Transformer(cfg, seed=1)
    src, tgt = rng.integers(0, cfg.src_vocab_size, (2, 9)), rng.integers(0, 19, (2, 7))
    src_mask = padded_mask(2, 9, [9, 6])
    tgt_out = rng.integers(0, 19, (2, 7))
    P = tm.params_from(model, torch)
    logits_t = tm.transformer_logits(torch, P, src, tgt, cfg, src_mask)
    loss_t = torch.nn.functional.cross_entropy(logits_t.reshape(-1, 19), torch.from_numpy(tgt_out).reshape(-1))
    loss_t.backward()
    np.testing.assert_allclose(model.forward(src, tgt, src_mask), logits_t.detach().numpy(), rtol=1e-4, atol=1e-5)
    model.zero_grad()
    loss = model.loss(src, tgt, tgt_out, src_mask)
    assert abs(loss - loss_t.item()) < 1e-5 * loss_t.item()
    model.backward()
    tm.check_grads(model, P)


def test_transformer_shared_embeddings_and_decoding(rng):
    cfg = TransformerConfig(src_vocab_size=12, tgt_vocab_size=12, n_embd=16, n_head=2, n_encoder_layer=1,
                            n_decoder_layer=1, intermediate_size=32, dropout=0.0, max_positions=16, share_embeddings=True)
    model = Transformer(cfg, seed=0)
    assert "tgt_emb.weight" not in model.named_parameters_dict()
    src = rng.integers(3, 12, (2, 5))
    out = model.greedy_decode(src, bos_id=1, eos_id=2, max_len=6)
    assert out.shape[0] == 2 and out.shape[1] <= 7 and (out[:, 0] == 1).all()
    best = model.beam_search(src[:1], bos_id=1, eos_id=2, max_len=6, beam_size=3)
    assert best[0, 0] == 1 and best.shape[1] <= 7


def test_vit_matches_torch_mirror(torch, rng):
    model = ViT(VIT_CFG, seed=1)
    images = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 5, 3)
    P = tm.params_from(model, torch)
    logits_t = tm.vit_logits(torch, P, images, VIT_CFG)
    loss_t = torch.nn.functional.cross_entropy(logits_t, torch.from_numpy(labels))
    loss_t.backward()
    np.testing.assert_allclose(model.forward(images), logits_t.detach().numpy(), rtol=1e-4, atol=1e-5)
    model.zero_grad()
    loss = model.loss(images, labels)
    assert abs(loss - loss_t.item()) < 1e-5 * loss_t.item()
    model.backward()
    tm.check_grads(model, P)


def test_vit_rejects_wrong_image_shape():
    model = ViT(VIT_CFG)
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 8, 8\)"):
        model.forward(np.zeros((1, 3, 9, 8), np.float32))


def test_transformer_ten_adamw_steps_match_torch(torch, rng):
    model = Transformer(TR_CFG, seed=2)
    src, tgt, tgt_out = rng.integers(0, 23, (2, 9)), rng.integers(0, 19, (2, 7)), rng.integers(0, 19, (2, 7))
    P = tm.params_from(model, torch)
    tm.adamw_steps_agree(
        torch, model, P,
        lambda step: torch.nn.functional.cross_entropy(
            tm.transformer_logits(torch, P, src, tgt, TR_CFG).reshape(-1, 19), torch.from_numpy(tgt_out).reshape(-1)),
        lambda step: model.loss(src, tgt, tgt_out))


def test_vit_ten_adamw_steps_match_torch(torch, rng):
    model = ViT(VIT_CFG, seed=2)
    images, labels = rng.standard_normal((4, 3, 8, 8)).astype(np.float32), rng.integers(0, 5, 4)
    P = tm.params_from(model, torch)
    tm.adamw_steps_agree(
        torch, model, P,
        lambda step: torch.nn.functional.cross_entropy(tm.vit_logits(torch, P, images, VIT_CFG),
                                                       torch.from_numpy(labels)),
        lambda step: model.loss(images, labels))


@pytest.mark.parametrize("config", [
    GPTConfig(vocab_size=37, max_positions=24, n_layer=2, n_head=3, n_embd=24),
    GPTConfig(vocab_size=11, max_positions=5, n_layer=3, n_head=2, n_embd=8, bias=False, head_dim=6),
    BertConfig(vocab_size=50, n_embd=24, n_layer=2, n_head=3, intermediate_size=40,
               max_positions=16),
    BertConfig(vocab_size=50, n_embd=16, n_layer=1, n_head=2, intermediate_size=20,
               max_positions=8, mlm=False, pooler=False, num_token_labels=3),
    TransformerConfig(20, 22, n_embd=24, n_head=3, n_encoder_layer=2, n_decoder_layer=1, intermediate_size=40, max_positions=16),
    TransformerConfig(20, 20, n_embd=16, n_head=2, n_encoder_layer=1, n_decoder_layer=2, intermediate_size=24, max_positions=8,
                      share_embeddings=True),
    ViTConfig(image_size=8, patch_size=4, n_embd=24, n_layer=2, n_head=3,
              intermediate_size=40, num_labels=5),
    ViTConfig(image_size=8, patch_size=2, n_embd=16, n_layer=1, n_head=2,
              intermediate_size=20, num_labels=0),
], ids=lambda c: type(c).__name__)
def test_num_params_from_the_config_equals_the_built_model(config):
    model_class = {GPTConfig: GPT, BertConfig: BERT, TransformerConfig: Transformer, ViTConfig: ViT}[type(config)]
    assert config.num_params() == model_class(config).num_parameters()
