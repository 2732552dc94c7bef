"""examples/translate_dates.py: the encoder-decoder learns dates in words -> ISO dates in seconds, and its
cross-attention lines the output up with the source: the month's digit reads the month's word, the year's digits
the year's words."""

from __future__ import annotations

import datetime
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "examples"))
import translate_dates as td  # noqa: E402


def test_dates_are_translated_and_cross_attention_aligns():
    model = td.train(steps=900, log=lambda s: None)
    test = td.random_dates(np.random.default_rng(7), 200)
    assert td.evaluate(model, test) >= 0.9
    aligned = checks = 0
    dates = [datetime.date(1987, 11, 5), datetime.date(2003, 2, 28), datetime.date(1951, 7, 14),
             datetime.date(2046, 9, 30), datetime.date(1999, 12, 1)]
    for d in dates:
        src, mask, tgt_in, _ = td.encode([d])
        probs = td.cross_attention(model, src, mask, tgt_in)[0].mean(0)  # (T, S)
        words = td.date_words(d)
        read = [words[int(probs[row, :len(words)].argmax())] for row in range(10)]  # row r writes character r
        aligned += read[6] == td.MONTHS[d.month - 1]  # the month's second digit reads the month
        aligned += read[3] in td.year_words(d.year)   # the year's last digit reads a year word
        checks += 2
    assert aligned >= checks - 2, (aligned, checks)
