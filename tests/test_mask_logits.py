"""ops.mask_logits, a grammar's bitmask on logits (its values against the float64 reference: the op cases in
pytransformer/opcases.py): written in place, and bad arguments are one error naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

from pytransformer import _core, ops
from pytransformer import reference as ref


def words_of(allowed):
    """(N, ceil(V / 32)) int32 bitmask of allowed (N, V) bool, 32 tokens a word, the lowest bit first."""
    N, V = allowed.shape
    padded = np.zeros((N, (V + 31) // 32 * 32), bool)
    padded[:, :V] = allowed
    return np.packbits(padded, axis=1, bitorder="little").view(np.int32)


def test_the_logits_are_masked_in_place_and_returned(isa, rng):
    logits = rng.standard_normal((3, 77)).astype(np.float32)
    allowed = rng.random((3, 70)) < 0.3
    expected = ref.mask_logits(logits, words_of(allowed), 70)
    out = ops.mask_logits(logits, words_of(allowed), 70)
    assert out is logits
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(np.isfinite(logits[:, :70]), allowed)


def test_the_words_follow_llguidances_layout(rng):
    """Token i is bit i % 32 of word i // 32, the lowest bit first: token 33 alone is word 1 = 2."""
    logits = np.zeros((1, 64), np.float32)
    ops.mask_logits(logits, np.array([[0, 2]], np.int32), 64)
    assert np.flatnonzero(np.isfinite(logits[0])).tolist() == [33]


@pytest.mark.parametrize("call, error, words", [
    (lambda x, w: ops.mask_logits(x, w.astype(np.int64), 70), TypeError, "words must be int32"),
    (lambda x, w: ops.mask_logits(x, w[:, :2], 70), ValueError, r"words must be int32 \(N, 3\)"),
    (lambda x, w: ops.mask_logits(x.astype(np.float64), w, 70), TypeError, "logits must be float32"),
    (lambda x, w: ops.mask_logits(x, w, 78), ValueError, r"vocab must be in \[0, V=77\]"),
    (lambda x, w: ops.mask_logits(x[:, ::2], w, 39), ValueError, "logits must be C-contiguous"),
    (lambda x, w: ops.mask_logits(x, x[:, :3].view(np.int32), 70), ValueError, "logits overlaps words"),
    (lambda x, w: _core.mask_logits(x, w, 3, 77, 78), ValueError, r"vocab \(78\) must be <= V \(77\)"),
    (lambda x, w: _core.mask_logits(x, w, 3, 77, -1), ValueError, "non-negative"),
])
def test_bad_arguments_are_one_error_naming_them(rng, call, error, words):
    x = rng.standard_normal((3, 77)).astype(np.float32)
    with pytest.raises(error, match=words):
        call(x, words_of(rng.random((3, 70)) < 0.5))


def test_the_binding_refuses_words_laid_over_the_logits():
    x = np.zeros((3, 77), np.float32)
    with pytest.raises(ValueError, match="logits overlaps words"):
        _core.mask_logits(x, x.reshape(-1)[:9].view(np.int32).reshape(3, 3), 3, 77, 70)
