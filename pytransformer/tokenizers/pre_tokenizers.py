"""tokenizer.json pre-tokenizers: text -> the pieces the model tokenizes one by one, as Hugging Face's `tokenizers`
splits them: ByteLevel (GPT-2's split, bytes mapped to printable characters), Split (a regex or a string with one of
the five delimiter behaviours: Llama 3, Qwen2, Gemma), Metaspace (SentencePiece's U+2581), Whitespace,
WhitespaceSplit, BertPreTokenizer, Punctuation, Digits and Sequence.

A pre-tokenizer is a function (pieces, at_start) -> pieces; at_start says the first piece begins the whole text
(Metaspace's prepend_scheme "first")."""

from __future__ import annotations

import re
import unicodedata

from . import splitters
from .bpe import pre_tokenize
from .byte_pairs import bytes_to_unicode
from .splitters import is_punctuation
from .unicode_regex import WHITE_SPACE, compile_pattern

_WHITE = re.compile(f"[{WHITE_SPACE}]")


def _spans(text, matches, invert):
    """[(start, end, is_match)] covering text, from the (start, end) of each match."""
    out, prev = [], 0
    for s, e in matches:
        if prev != s:
            out.append((prev, s, invert))
        out.append((s, e, not invert))
        prev = e
    if prev != len(text):
        out.append((prev, len(text), invert))
    return out


def _merge_into_neighbour(spans):
    acc, previous_match = [], False
    for s, e, is_match in spans:
        if is_match and not previous_match and acc:
            acc[-1][1] = e
        else:
            acc.append([s, e])
        previous_match = is_match
    return acc


def split(text, matches, behavior, invert=False) -> list[str]:
    """`tokenizers`' NormalizedString.split: the text cut at matches, each delimiter Removed, Isolated,
    MergedWithPrevious, MergedWithNext or Contiguous; empty pieces dropped."""
    spans = _spans(text, matches, invert)
    if behavior == "Removed":
        cuts = [(s, e) for s, e, m in spans if not m]
    elif behavior == "Isolated":
        cuts = [(s, e) for s, e, _ in spans]
    elif behavior == "MergedWithPrevious":
        cuts = _merge_into_neighbour(spans)
    elif behavior == "MergedWithNext":  # the same fold from the right
        n = len(text)
        cuts = [(n - e, n - s) for s, e in _merge_into_neighbour([(n - e, n - s, m) for s, e, m in reversed(spans)])]
        cuts.reverse()
    elif behavior == "Contiguous":
        cuts, previous = [], False
        for s, e, m in spans:
            if m == previous and cuts:
                cuts[-1] = (cuts[-1][0], e)
            else:
                cuts.append((s, e))
            previous = m
    else:
        raise ValueError(f"unsupported split behavior {behavior!r}")
    return [text[s:e] for s, e in cuts if e > s]


def _char_matches(pred):
    return lambda text: [(i, i + 1) for i, c in enumerate(text) if pred(c)]


def _regex_matches(rx):
    return lambda text: [m.span() for m in rx.finditer(text)]


def _splitter(find, behavior, invert=False):
    def pre(pieces, at_start):
        return [p for piece in pieces for p in split(piece, find(piece), behavior, invert)]
    return pre


def _isolating_regex(rx):
    """Split(regex, Isolated): the matches and the text between them. A pattern that matches every character (Llama
    3's, Qwen2's) gives its matches straight from findall; the general split otherwise."""
    general = _splitter(_regex_matches(rx), "Isolated")
    if rx.groups:
        return general

    def pre(pieces, at_start):
        out = []
        for piece in pieces:
            found = rx.findall(piece)
            if sum(map(len, found)) == len(piece) and "" not in found:
                out.extend(found)
            else:
                out.extend(general([piece], at_start))
        return out
    return pre


def _is_numeric(c):
    return unicodedata.category(c) in ("Nd", "Nl", "No")


def _split(spec):
    pattern = spec.get("pattern") or {}
    behavior, invert = spec.get("behavior", "Isolated"), spec.get("invert", False)
    if "String" in pattern:
        rx = re.compile(re.escape(pattern["String"]))
    elif "Regex" in pattern:
        if pattern["Regex"] in splitters.COMPILED and behavior == "Isolated" and not invert:  # (every character
            split = splitters.findall(pattern["Regex"])  # in a match: the matches are the pieces)
            return lambda pieces, at_start: [p for piece in pieces for p in split(piece)]
        rx = compile_pattern(pattern["Regex"])
    else:
        raise ValueError(f"Split needs a String or Regex pattern, got {pattern!r}")
    if behavior == "Isolated" and not invert:
        return _isolating_regex(rx)
    return _splitter(_regex_matches(rx), behavior, invert)


def _byte_level(spec, spell_bytes=True):
    """spell_bytes=False: the split only, the model spelling the bytes itself (models.BPEModel(byte_level=True))."""
    add_prefix_space, use_regex = spec.get("add_prefix_space", True), spec.get("use_regex", True)
    table = bytes_to_unicode()  # byte -> character: str.translate over the bytes read as latin-1

    def pre(pieces, at_start):
        if add_prefix_space:
            pieces = [p if p.startswith(" ") else " " + p for p in pieces]
        if use_regex:
            pieces = [q for p in pieces for q in pre_tokenize(p)]
        return [p.encode("utf-8").decode("latin-1").translate(table) for p in pieces] if spell_bytes else pieces
    return pre


def _metaspace(spec):
    replacement = spec.get("replacement", "\u2581")
    scheme = spec.get("prepend_scheme") or ("always" if spec.get("add_prefix_space", True) else "never")
    do_split = spec.get("split", True)

    def pre(pieces, at_start):
        out = []
        for i, piece in enumerate(pieces):
            piece = piece.replace(" ", replacement)
            if not piece.startswith(replacement) and (
                    scheme == "always" or (scheme == "first" and at_start and i == 0)):
                piece = replacement + piece
            if do_split:
                out.extend(split(piece, [(j, j + 1) for j, c in enumerate(piece) if c == replacement],
                                 "MergedWithNext"))
            else:
                out.append(piece)
        return out
    return pre


def _whitespace(spec):
    return _splitter(_regex_matches(re.compile(r"\w+|[^\w\s]+")), "Removed", invert=True)


def _whitespace_split(spec):
    return _splitter(_regex_matches(_WHITE), "Removed")


def _bert(spec):
    """Whitespace removed, then each punctuation character isolated (splitters: one pass)."""
    split = splitters.findall("bert")
    return lambda pieces, at_start: [p for piece in pieces for p in split(piece)]


def _punctuation(spec):
    return _splitter(_char_matches(is_punctuation), spec.get("behavior", "Isolated"))


def _digits(spec):
    return _splitter(_char_matches(_is_numeric), "Isolated" if spec.get("individual_digits") else "Contiguous")


def _sequence(spec, spell_bytes=True):
    specs = spec.get("pretokenizers", [])
    steps = [build(s, spell_bytes or i < len(specs) - 1) for i, s in enumerate(specs)]

    def pre(pieces, at_start):
        for step in steps:
            pieces = step(pieces, at_start)
        return pieces
    return pre


_BUILDERS = {"ByteLevel": _byte_level, "Split": _split, "Metaspace": _metaspace, "Whitespace": _whitespace,
             "WhitespaceSplit": _whitespace_split, "BertPreTokenizer": _bert, "Punctuation": _punctuation,
             "Digits": _digits, "Sequence": _sequence}


def ends_in_byte_level(spec) -> bool:
    """Whether the last step of the pre-tokenizer spec is ByteLevel (GPT-2, Llama 3, Qwen2): a BPE model can then
    spell the bytes itself (build(spec, spell_bytes=False))."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "Sequence":
        steps = spec.get("pretokenizers") or [None]
        return ends_in_byte_level(steps[-1])
    return kind == "ByteLevel"


def build(spec, spell_bytes=True):
    """The pre-tokenizer a tokenizer.json "pre_tokenizer" object describes (None: the text is one piece).
    spell_bytes=False: a final ByteLevel step splits but leaves the bytes to the model (see ends_in_byte_level)."""
    if spec is None:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in _BUILDERS:
        raise ValueError(f"unsupported pre-tokenizer {kind!r} (supported: {', '.join(_BUILDERS)})")
    if spell_bytes or kind not in ("ByteLevel", "Sequence"):
        return _BUILDERS[kind](spec)
    return _BUILDERS[kind](spec, spell_bytes=False)
