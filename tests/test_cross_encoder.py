"""CrossEncoder against sentence-transformers' CrossEncoder on tiny random BertForSequenceClassification
checkpoints made here: scores (one label, sigmoid), logits (three labels), pairs cut 'longest_first' at the
maximum length, and rank."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from st_models import TEXTS, bert_folder

pytest.importorskip("sentence_transformers")
pytest.importorskip("torch")

TOL = 1e-5  # scores are O(1) logits of a 2-layer float32 encoder (errors ~1e-7)
PAIRS = [("bake bread", t) for t in TEXTS] + [("the cat", "the cat sat on the mat"), (TEXTS[2], TEXTS[2] + " dog")]


def theirs(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import CrossEncoder

        return CrossEncoder(str(path), device="cpu")


@pytest.fixture(scope="module")
def one_label(tmp_path_factory):
    return bert_folder(tmp_path_factory.mktemp("ce1"), num_labels=1)


def test_scores_equal_sentence_transformers(one_label):
    from pytransformer import CrossEncoder

    ours = CrossEncoder(one_label)
    got = ours.predict(PAIRS, batch_size=3)
    want = theirs(one_label).predict(PAIRS)
    assert got.shape == (len(PAIRS),) and ((got > 0) & (got < 1)).all()  # sigmoid of one logit
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    assert ours.predict(PAIRS[0]) == pytest.approx(float(want[0]), abs=TOL)


def test_long_pairs_are_cut_longest_first(one_label):
    from pytransformer import CrossEncoder

    ours = CrossEncoder(one_label)
    pairs = [("loaf " * 30, "dog"), ("dog cat", "loaf " * 30), ("loaf " * 12, "bread " * 12)]
    assert [len(ours.batcher.pair_ids(a, b)[0]) for a, b in pairs] == [20, 20, 20]
    np.testing.assert_allclose(ours.predict(pairs), theirs(one_label).predict(pairs), atol=TOL, rtol=0)


def test_rank_equals_sentence_transformers(one_label):
    from pytransformer import CrossEncoder

    got = CrossEncoder(one_label).rank("bake bread", TEXTS, top_k=3, return_documents=True)
    want = theirs(one_label).rank("bake bread", TEXTS, top_k=3, return_documents=True)
    assert [g["corpus_id"] for g in got] == [w["corpus_id"] for w in want]
    assert [g["text"] for g in got] == [w["text"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=TOL, rtol=0)


def test_several_labels_give_logits(tmp_path):
    from pytransformer import CrossEncoder

    path = bert_folder(tmp_path, num_labels=3)
    got = CrossEncoder(path).predict(PAIRS)
    assert got.shape == (len(PAIRS), 3)
    np.testing.assert_allclose(got, theirs(path).predict(PAIRS), atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="one score per pair; this one gives 3"):
        CrossEncoder(path).rank("q", ["d"])


@pytest.mark.parametrize("call, error, match", [
    (lambda ce: ce.predict([("a", "b"), ("a",)]), TypeError, r"pairs\[1\] must be a pair of strings"),
    (lambda ce: ce.rank("a", []), ValueError, "documents is empty"),
    (lambda ce: ce.rank("a", ["b"], top_k=0), ValueError, "top_k must be an integer >= 1"),
    (lambda ce: ce.predict([("a", "b")], batch_size=-1), ValueError, "batch_size must be an integer >= 1"),
])
def test_bad_input_is_one_line(one_label, call, error, match):
    from pytransformer import CrossEncoder

    with pytest.raises(error, match=match):
        call(CrossEncoder(one_label))


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_a_plain_encoder_is_refused(tmp_path, family):
    from pytransformer import CrossEncoder

    with pytest.raises(ValueError, match="not a sequence-classification checkpoint"):
        CrossEncoder(bert_folder(tmp_path, family=family))


@pytest.mark.parametrize("max_length", [20, 21])
def test_pairs_are_cut_as_transformers_cuts_them(tmp_path, max_length):
    import transformers

    from pytransformer.encoders import Batcher

    path = bert_folder(tmp_path, max_seq_length=max_length)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    ours = Batcher(path, 64, 0)
    for n1 in (3, 8, 9, 10, 13, 30):
        for n2 in (3, 8, 9, 10, 13, 30):
            a, b = " ".join(["dog"] * n1), " ".join(["cat"] * n2)
            want = tok(a, b, truncation=True, max_length=max_length)
            assert ours.pair_ids(a, b) == (want["input_ids"], want["token_type_ids"]), (n1, n2)


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta"])
def test_roberta_shaped_cross_encoders_equal_sentence_transformers(tmp_path, family):
    from pytransformer import CrossEncoder

    path = bert_folder(tmp_path, num_labels=1, family=family)
    ours = CrossEncoder(path)
    assert ours.batcher.pair_ids("the", "cat")[1] == [0] * len(ours.batcher.pair_ids("the", "cat")[0])
    np.testing.assert_allclose(ours.predict(PAIRS), theirs(path).predict(PAIRS), atol=TOL, rtol=0)
