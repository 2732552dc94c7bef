"""SentenceEncoder on any sentence-transformers folder: tiny random models made here with sentence-transformers
(every pooling mode, Dense, Normalize, prompts with and without their tokens pooled, max_seq_length) give the
embeddings sentence-transformers gives, within float32 error."""

from __future__ import annotations

import numpy as np
import pytest
from st_models import TEXTS, sentence_model

pytest.importorskip("sentence_transformers")
pytest.importorskip("torch")

# A 2-layer, 32-channel encoder in float32: errors ~1e-7 relative; embeddings are O(1) (pooled hidden states)
# or unit length, so 1e-5 absolute holds with two orders of margin and fails on any wrong token or mask.
TOL = 1e-5
MODES = ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("st")


def ours(path):
    from pytransformer import SentenceEncoder

    return SentenceEncoder(path)


@pytest.mark.parametrize("mode", MODES)
def test_each_pooling_mode_equals_sentence_transformers(folder, mode):
    st = sentence_model(folder / mode, [mode], normalize=False)
    got = ours(folder / mode / "st").encode(TEXTS)
    np.testing.assert_allclose(got, st.encode(TEXTS), atol=TOL, rtol=0)


def test_modes_concatenated_then_dense_then_normalize(folder):
    st = sentence_model(folder / "all", MODES, dense=16)
    enc = ours(folder / "all" / "st")
    assert enc.dim == 16 and [k for k, _ in enc.steps] == ["pool", "dense", "normalize"]
    np.testing.assert_allclose(enc.encode(TEXTS), st.encode(TEXTS), atol=TOL, rtol=0)


@pytest.mark.parametrize("include_prompt", [True, False])
def test_prompts_equal_sentence_transformers(folder, include_prompt):
    path = folder / f"prompt{include_prompt}"
    st = sentence_model(path, ["mean", "cls"], prompts={"query": "query : ", "passage": "passage : "},
                        include_prompt=include_prompt)
    enc = ours(path / "st")
    for name in ("query", "passage"):
        np.testing.assert_allclose(enc.encode(TEXTS, prompt_name=name), st.encode(TEXTS, prompt_name=name),
                                   atol=TOL, rtol=0)
    assert np.abs(enc.encode(TEXTS, prompt_name="query") - enc.encode(TEXTS)).max() > 0.01  # the prompt matters
    with pytest.raises(ValueError, match=r"prompt_name must be one of \['document', 'passage', 'query'\]"):
        enc.encode(TEXTS, prompt_name="nope")


def test_long_texts_are_cut_at_max_seq_length(folder):
    st = sentence_model(folder / "long", ["mean"])
    enc = ours(folder / "long" / "st")
    assert enc.max_seq_length == st.max_seq_length == 20
    long = [" ".join(["loaf"] * 50), " ".join(["loaf"] * 18 + ["dog"] * 30)]
    assert [len(enc.token_ids(t)) for t in long] == [20, 20]
    np.testing.assert_allclose(enc.encode(long), st.encode(long), atol=TOL, rtol=0)
    np.testing.assert_allclose(enc.encode(long[0]), enc.encode(long[1]), atol=TOL)  # the dogs were cut off


def test_one_string_gives_one_vector_and_batching_changes_nothing(folder):
    sentence_model(folder / "one", ["mean"])
    enc = ours(folder / "one" / "st")
    one = enc.encode(TEXTS[2])
    assert one.shape == (32,)
    for batch_size in (1, 3):
        np.testing.assert_allclose(enc.encode(TEXTS, batch_size=batch_size)[2], one, atol=1e-6)


def test_progress_reaches_the_total(folder, capsys):
    sentence_model(folder / "progress", ["mean"])
    ours(folder / "progress" / "st").encode(TEXTS * 10, batch_size=8, show_progress=True)
    assert "40" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sentences": ["a", 3]}, TypeError, r"sentences\[1\] must be a str, got int"),
    ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1, got 0"),
])
def test_bad_arguments_are_one_line(folder, kwargs, error, match):
    sentence_model(folder / "bad", ["mean"])
    with pytest.raises(error, match=match):
        ours(folder / "bad" / "st").encode(**({"sentences": TEXTS} | kwargs))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int8_activations_without_int8_weights_are_refused(folder, dtype):
    """(not quietly run as float32: only int8 weights have int8-activation products)"""
    from pytransformer import SentenceEncoder

    sentence_model(folder / "act", ["mean"])
    with pytest.raises(ValueError, match="activation_dtype='int8' needs dtype='int8'"):
        SentenceEncoder(folder / "act" / "st", dtype=dtype, activation_dtype="int8")


def test_unsupported_modules_are_named(folder, tmp_path):
    import shutil

    sentence_model(folder / "odd", ["mean"])
    shutil.copytree(folder / "odd" / "st", tmp_path / "st")
    (tmp_path / "st" / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", "type": '
                                                  '"sentence_transformers.models.LSTM"}]')
    with pytest.raises(NotImplementedError, match="'sentence_transformers.models.LSTM' is not supported"):
        ours(tmp_path / "st")


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta"])
def test_roberta_shaped_encoders_equal_sentence_transformers(folder, family):
    st = sentence_model(folder / family, ["mean", "cls"], family=family)
    enc = ours(folder / family / "st")
    long = [" ".join(["loaf"] * 40)]  # cut at max_seq_length
    np.testing.assert_allclose(enc.encode(TEXTS + long), st.encode(TEXTS + long), atol=TOL, rtol=0)


def test_mpnet_equals_sentence_transformers(folder):
    st = sentence_model(folder / "mpnet", ["mean", "cls"], family="mpnet")
    enc = ours(folder / "mpnet" / "st")
    assert type(enc.model).__name__ == "MPNet"
    long = [" ".join(["loaf"] * 40), " ".join(["dog", "cat"] * 9)]  # cut at 20 tokens: distances into log buckets
    np.testing.assert_allclose(enc.encode(TEXTS + long), st.encode(TEXTS + long), atol=TOL, rtol=0)
