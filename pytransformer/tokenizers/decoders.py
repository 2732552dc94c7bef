"""tokenizer.json decoders: token strings -> text pieces (joined by the caller), each as Hugging Face's
`tokenizers` decode_chain: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, WordPiece, BPEDecoder and
Sequence."""

from __future__ import annotations

from .byte_pairs import bytes_to_unicode


def _byte_level(spec):
    table = {c: b for b, c in bytes_to_unicode().items()}

    def decode(tokens):
        data = bytearray()
        for t in tokens:
            try:
                data += bytes(table[c] for c in t)
            except KeyError:  # a token outside the byte alphabet (an added token): its own UTF-8
                data += t.encode("utf-8")
        return [data.decode("utf-8", errors="replace")]
    return decode


def _metaspace(spec):
    replacement = spec.get("replacement", "\u2581")
    scheme = spec.get("prepend_scheme") or ("always" if spec.get("add_prefix_space", True) else "never")

    def decode(tokens):
        out = [t.replace(replacement, " ") for t in tokens]
        if out and scheme != "never":  # the first token loses its replacement characters
            out[0] = tokens[0].replace(replacement, "")
        return out
    return decode


def _replace(spec):
    pattern, content = spec.get("pattern") or {}, spec.get("content", "")
    if "String" not in pattern:
        raise ValueError(f"decoder Replace supports a String pattern, got {pattern!r}")
    s = pattern["String"]
    return lambda tokens: [t.replace(s, content) for t in tokens]


def byte_value(token):
    """The byte of a <0xNN> token, else None."""
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return int(token[3:5], 16)
        except ValueError:
            return None
    return None


def _byte_fallback(spec):
    def decode(tokens):
        out, pending = [], bytearray()

        def flush():
            if pending:
                try:
                    out.append(pending.decode("utf-8"))
                except UnicodeDecodeError:  # as `tokenizers`: one U+FFFD per byte of an invalid run
                    out.extend("\ufffd" * len(pending))
                pending.clear()
        for t in tokens:
            b = byte_value(t)
            if b is None:
                flush()
                out.append(t)
            else:
                pending.append(b)
        flush()
        return out
    return decode


def _strip(spec):
    content, start, stop = spec.get("content", " "), int(spec.get("start", 0)), int(spec.get("stop", 0))

    def strip_one(t):
        for _ in range(start):
            t = t.removeprefix(content)
        for _ in range(stop):
            t = t.removesuffix(content)
        return t
    return lambda tokens: [strip_one(t) for t in tokens]


_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def cleanup(text: str) -> str:
    """`tokenizers`' (and transformers') clean_up_tokenization: no space before punctuation and contractions."""
    for a, b in _CLEANUP:
        text = text.replace(a, b)
    return text


def _wordpiece(spec):
    prefix, clean = spec.get("prefix", "##"), spec.get("cleanup", True)

    def decode(tokens):
        out = []
        for i, t in enumerate(tokens):
            if i:
                t = t[len(prefix):] if t.startswith(prefix) else " " + t
            out.append(cleanup(t) if clean else t)
        return out
    return decode


def _bpe_decoder(spec):
    suffix = spec.get("suffix", "</w>")
    return lambda tokens: [t.replace(suffix, "" if i == len(tokens) - 1 else " ") for i, t in enumerate(tokens)]


def _sequence(spec):
    steps = [build(s) for s in spec.get("decoders", [])]

    def decode(tokens):
        for step in steps:
            tokens = step(tokens)
        return tokens
    return decode


_BUILDERS = {"ByteLevel": _byte_level, "Metaspace": _metaspace, "Replace": _replace, "ByteFallback": _byte_fallback,
             "Fuse": lambda spec: lambda tokens: ["".join(tokens)], "Strip": _strip, "WordPiece": _wordpiece,
             "BPEDecoder": _bpe_decoder, "Sequence": _sequence}


def build(spec):
    """The decoder a tokenizer.json "decoder" object describes (None: tokens joined by spaces)."""
    if spec is None:
        return lambda tokens: [" ".join(tokens)]
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in _BUILDERS:
        raise ValueError(f"unsupported decoder {kind!r} (supported: {', '.join(_BUILDERS)})")
    return _BUILDERS[kind](spec)
