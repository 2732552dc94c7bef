# Included by _fast.pyx (one extension module): the common pre-tokenizer regexes spelled out by hand over code
# points; splitters.py holds the regexes, the spec the tests hold Splitter to.

# Splitter's character classes: bits of unicode_regex.class_table()'s byte per code point
cdef enum:
    LETTER = 1  # \p{L}
    NUMBER = 2  # \p{N}
    SPACE = 4  # \s (White_Space)
    PUNCT = 8  # \p{P}
SPLITS = ("gpt2", "llama3", "qwen2", "bert")


cdef inline cbool _contraction_letter(uint32_t c, uint32_t lower, cbool fold) noexcept:
    """c is the ASCII letter lower, or (fold: case-insensitive, as Python's re folds) its capital or U+017F for s."""
    return c == lower or (fold and (c == lower - 32 or (lower == 115 and c == 0x17F)))


@cython.final
cdef class Splitter:
    """The pieces a pre-tokenizer regex cuts a text into, by hand (splitters.py has the regexes, the spec):
    "gpt2" (GPT-2's pattern), "llama3" / "qwen2" (their Split patterns: digits in threes / alone), "bert"
    (whitespace removed, BERT's punctuation isolated). table: one byte of class bits per code point."""

    cdef bytes table_bytes
    cdef const uint8_t* table
    cdef int kind

    def __init__(self, str split, bytes table):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if len(table) != 0x110000:
            raise ValueError(f"table must have one byte per code point (1114112), got {len(table)}")
        self.kind, self.table_bytes = SPLITS.index(split), table
        self.table = <const uint8_t*>self.table_bytes

    def split(self, str text) -> list:
        cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text), i = 0, j
        cdef int kind = PyUnicode_KIND(text)
        cdef void* data = PyUnicode_DATA(text)
        out = []
        while i < n:
            j = self._bert(kind, data, i, n) if self.kind == 3 else self._regex(kind, data, i, n)
            if j > i:
                out.append(PyUnicode_Substring(text, i, j))
                i = j
            else:  # (bert: a removed space)
                i += 1
        return out

    cdef inline uint8_t _cls(self, int kind, void* data, Py_ssize_t i) noexcept:
        return self.table[PyUnicode_READ(kind, data, i)]

    cdef inline Py_ssize_t _run(self, int kind, void* data, Py_ssize_t i, Py_ssize_t n, uint8_t bits,
                                cbool inside) noexcept:
        """The end of the run from i of characters with (inside) or without (not inside) any of bits."""
        while i < n and ((self._cls(kind, data, i) & bits) != 0) == inside:
            i += 1
        return i

    cdef Py_ssize_t _bert(self, int kind, void* data, Py_ssize_t i, Py_ssize_t n) noexcept:
        """-> the end of the piece at i: a punctuation character, a run of neither, or i for a space."""
        cdef uint32_t c = PyUnicode_READ(kind, data, i)
        if self.table[c] & SPACE:
            return i
        if self._bert_punct(c):
            return i + 1
        i += 1
        while i < n:
            c = PyUnicode_READ(kind, data, i)
            if self.table[c] & SPACE or self._bert_punct(c):
                break
            i += 1
        return i

    cdef inline cbool _bert_punct(self, uint32_t c) noexcept:
        return (33 <= c <= 47 or 58 <= c <= 64 or 91 <= c <= 96 or 123 <= c <= 126) or (self.table[c] & PUNCT) != 0

    cdef Py_ssize_t _regex(self, int kind, void* data, Py_ssize_t i, Py_ssize_t n) noexcept:
        """-> the end of the match at i of the pattern's alternatives, tried in order (splitters.py spells them)."""
        cdef cbool llama = self.kind != 0
        cdef uint32_t c = PyUnicode_READ(kind, data, i), d, e
        cdef uint8_t cls = self.table[c], nxt = self._cls(kind, data, i + 1) if i + 1 < n else SPACE
        cdef Py_ssize_t j, k
        # 's|'t|'re|'ve|'m|'ll|'d (case-insensitive for llama3 / qwen2)
        if c == 39 and i + 1 < n:
            d = PyUnicode_READ(kind, data, i + 1)
            if (_contraction_letter(d, 115, llama) or _contraction_letter(d, 116, llama)
                    or _contraction_letter(d, 109, llama) or _contraction_letter(d, 100, llama)):
                return i + 2
            e = PyUnicode_READ(kind, data, i + 2) if i + 2 < n else 0
            if ((_contraction_letter(d, 114, llama) and _contraction_letter(e, 101, llama))
                    or (_contraction_letter(d, 118, llama) and _contraction_letter(e, 101, llama))
                    or (_contraction_letter(d, 108, llama) and _contraction_letter(e, 108, llama))):
                return i + 3
        if llama:
            # [^\r\n\p{L}\p{N}]?\p{L}+
            if cls & LETTER:
                return self._run(kind, data, i + 1, n, LETTER, True)
            if c != 13 and c != 10 and not (cls & NUMBER) and nxt & LETTER:
                return self._run(kind, data, i + 2, n, LETTER, True)
            # \p{N}{1,3} | \p{N}
            if cls & NUMBER:
                j = i + 1
                while self.kind == 1 and j < n and j < i + 3 and self._cls(kind, data, j) & NUMBER:
                    j += 1
                return j
        else:
            # ' ?\p{L}+| ?\p{N}+'
            if cls & LETTER:
                return self._run(kind, data, i + 1, n, LETTER, True)
            if c == 32 and nxt & LETTER:
                return self._run(kind, data, i + 2, n, LETTER, True)
            if cls & NUMBER:
                return self._run(kind, data, i + 1, n, NUMBER, True)
            if c == 32 and nxt & NUMBER:
                return self._run(kind, data, i + 2, n, NUMBER, True)
        # ' ?[^\s\p{L}\p{N}]+' (llama3 / qwen2: then [\r\n]*)
        j = -1
        if not (cls & (SPACE | LETTER | NUMBER)):
            j = self._run(kind, data, i + 1, n, SPACE | LETTER | NUMBER, False)
        elif c == 32 and not (nxt & (SPACE | LETTER | NUMBER)):
            j = self._run(kind, data, i + 2, n, SPACE | LETTER | NUMBER, False)
        if j >= 0:
            while llama and j < n and (PyUnicode_READ(kind, data, j) == 13 or PyUnicode_READ(kind, data, j) == 10):
                j += 1
            return j
        # the rest is whitespace: cls & SPACE
        j = self._run(kind, data, i, n, SPACE, True)
        if llama:  # \s*[\r\n]+: through the last line break of the run
            k = j - 1
            while k >= i:
                d = PyUnicode_READ(kind, data, k)
                if d == 13 or d == 10:
                    return k + 1
                k -= 1
        # \s+(?!\S): all of a run that ends the text, else all but its last space; \s+ otherwise
        if j == n or j - 1 == i:
            return j
        return j - 1
