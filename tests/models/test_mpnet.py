"""MPNet's relative-position buckets and whole encoder against transformers' MPNetModel (the sentence-embedding
comparison is in tests/test_sentence_models.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer.models.mpnet import BUCKETS, MPNet, MPNetConfig, relative_position_bucket

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


def test_buckets_equal_transformers_at_every_distance():
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    relative = np.arange(-1500, 1501)
    want = MPNetEncoder.relative_position_bucket(torch.from_numpy(relative), num_buckets=BUCKETS).numpy()
    np.testing.assert_array_equal(relative_position_bucket(relative), want)
    assert set(want) == set(range(BUCKETS)) - {BUCKETS // 2}  # every bucket but 'distance 0, ahead' is reached


def test_encoder_equals_transformers_with_padding(tmp_path):
    from st_models import bert_folder

    from pytransformer.io.hf_mpnet import load_mpnet

    folder = bert_folder(tmp_path / "mpnet", family="mpnet")
    hf = transformers.MPNetModel.from_pretrained(folder).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(5, hf.config.vocab_size, (3, 30))
    mask = np.ones_like(ids)
    mask[1, 17:] = mask[2, 4:] = 0
    ids[mask == 0] = 1  # padding, as MPNet numbers positions from its ids
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    got = load_mpnet(folder).encode(ids, mask)
    # 2 layers of 32 channels, float32 both sides: ~1e-6 on O(1) hidden states
    np.testing.assert_allclose(got[mask == 1], want[mask == 1], atol=2e-5, rtol=0)


def test_save_pretrained_round_trips_through_transformers(tmp_path):
    model = MPNet(MPNetConfig(vocab_size=40, n_embd=16, n_layer=2, n_head=2, intermediate_size=24, max_positions=20))
    model.eval().save_pretrained(tmp_path)
    hf = transformers.MPNetModel.from_pretrained(tmp_path).eval()
    ids = np.random.default_rng(1).integers(3, 40, (2, 20))
    with torch.no_grad():
        want = hf(input_ids=torch.from_numpy(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(model.encode(ids), want, atol=2e-5, rtol=0)


def test_training_mode_is_refused():
    model = MPNet(MPNetConfig(vocab_size=40, n_embd=16, n_layer=1, n_head=2, intermediate_size=24, max_positions=8))
    with pytest.raises(NotImplementedError, match="inference only"):
        model.train().encode(np.zeros((1, 4), np.int64))
