"""Added tokens (tokenizer.json "added_tokens", a GGUF file's control and user-defined tokens) and finding them in
text as Hugging Face's `tokenizers` does: leftmost, then longest; lstrip / rstrip take the whitespace beside a
match, single_word refuses a match inside a word. Candidates are indexed by first character and length, so a
vocabulary of thousands of added tokens (Gemma's 6k) costs a dict lookup per length at the few places they can
start."""

from __future__ import annotations

import re


class AddedToken:
    """A token matched whole in the text before anything else."""

    __slots__ = ("content", "id", "lstrip", "normalized", "rstrip", "single_word", "special")

    def __init__(self, id, content, special=False, normalized=None, lstrip=False, rstrip=False, single_word=False):
        if isinstance(id, bool) or not isinstance(id, int) or id < 0 or not isinstance(content, str) or not content:
            raise ValueError(f"an added token needs an integer id >= 0 and non-empty content, got {id!r}, {content!r}")
        self.id, self.content, self.special = id, content, bool(special)
        self.normalized = (not special) if normalized is None else bool(normalized)
        self.lstrip, self.rstrip, self.single_word = bool(lstrip), bool(rstrip), bool(single_word)


def _is_word(c):
    return c.isalnum() or c == "_"


class AddedMatcher:
    """Splits text at the given added tokens (their content passed through normalize first, when given)."""

    def __init__(self, tokens, normalize=None):
        tables: dict = {}  # first character -> {length: {content: token}}
        for t in tokens:
            content = normalize(t.content) if normalize else t.content
            if content:
                tables.setdefault(content[0], {}).setdefault(len(content), {}).setdefault(content, t)
        self.tables = {c: sorted(by_len.items(), reverse=True) for c, by_len in tables.items()}  # longest first
        self.starts = re.compile("[" + "".join(re.escape(c) for c in tables) + "]") if tables else None

    def _match_at(self, text, i):
        for length, table in self.tables[text[i]]:
            t = table.get(text[i:i + length])
            if t is not None and not (t.single_word and ((i > 0 and _is_word(text[i - 1])) or (
                    i + length < len(text) and _is_word(text[i + length])))):
                return t, i + length
        return None, i

    def split(self, text) -> list:
        """-> [(piece, id or None)]: the added tokens found in text, and the text between them."""
        if self.starts is None:
            return [(text, None)]
        out, prev, n = [], 0, len(text)
        m = self.starts.search(text)
        while m is not None:
            i = m.start()
            t, end = self._match_at(text, i)
            if t is None:
                m = self.starts.search(text, i + 1)
                continue
            start = i
            if t.lstrip:
                while start > prev and text[start - 1].isspace():
                    start -= 1
            if t.rstrip:
                while end < n and text[end].isspace():
                    end += 1
            if start > prev:
                out.append((text[prev:start], None))
            out.append((text[start:end], t.id))
            prev = end
            m = self.starts.search(text, end)
        if prev < n:
            out.append((text[prev:], None))
        return out
