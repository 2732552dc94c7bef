"""tokenizer.json models: one pre-tokenized piece -> token ids, as Hugging Face's `tokenizers` computes them.

BPEModel: merges lowest rank first (the O(n log n) heap of byte_pairs.bpe_merge), with byte fallback (<0xNN> tokens
for a character outside the vocabulary: Llama 2, Gemma), unk fusing, ignore_merges (Llama 3), an end-of-word suffix,
and GPT-2's byte alphabet (byte_level: the piece's bytes spelled as printable characters first).
WordPieceModel: greedy longest match with a continuation prefix (BERT's ##). UnigramModel: the Viterbi path of
highest total score (XLM-R, T5), unknown characters at min score - 10, byte fallback optional.

Each model's encode(pieces, out) runs a whole pre-tokenized text through its compiled twin (_fast.pyx: integer ids,
a byte trie, a piece cache) when that module is built, else through the pure-Python _tokenize here (the spec the
tests hold the compiled one to)."""

from __future__ import annotations

import sys

from .byte_pairs import bpe_merge, bytes_to_unicode

try:  # the compiled models (Cython, built by the same CMake build); the pure-Python loops below otherwise
    from . import _fast
except ImportError:
    _fast = None

CACHE_SIZE = 100_000   # pieces remembered per model (a piece's ids never change)
CACHE_PIECE_CHARS = 256  # longer pieces are not remembered


def byte_token(b: int) -> str:
    return f"<0x{b:02X}>"


def _vocab_dict(vocab, what) -> dict:
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                              and v >= 0 for k, v in vocab.items()):
        raise ValueError(f"{what}: vocab must be an object of token -> non-negative integer id")
    return {sys.intern(k): v for k, v in vocab.items()}


class _Cached:
    """Shared by the models: encode(pieces, out) and tokenize(piece), the ids of each piece remembered (bounded),
    by the compiled model (self.core) when there is one."""

    core = None

    def _compile(self, build):
        """self.core = build(_fast) when the compiled module is built; self.cache: the piece cache either way."""
        self.core = build(_fast) if _fast is not None else None
        self.cache = self.core.cache if self.core is not None else {}

    def encode(self, pieces: list, out: list):
        """Appends the ids of every piece to out."""
        if self.core is not None:
            return self.core.encode(pieces, out)
        for piece in pieces:
            out.extend(self.tokenize(piece))

    def tokenize(self, piece: str) -> list[int]:
        if self.core is not None:
            return self.core.tokenize(piece)
        ids = self.cache.get(piece)
        if ids is None:
            ids = self._tokenize(piece)
            if len(piece) <= CACHE_PIECE_CHARS and len(self.cache) < CACHE_SIZE:
                self.cache[piece] = ids
        return list(ids)


class BPEModel(_Cached):
    """Byte-pair encoding over a vocabulary and ranked merges: a dict (left, right) -> rank, or a dict that ranks
    pairs when asked (sentencepiece.ScoreRanks: SentencePiece vocabularies rank pairs by score, listing none)."""

    def __init__(self, vocab: dict, ranks, unk_token=None, byte_fallback=False, fuse_unk=False,
                 ignore_merges=False, end_of_word_suffix="", byte_level=False):
        self.vocab = vocab
        self.ranks = ranks
        self.unk_id = vocab.get(unk_token) if unk_token is not None else None
        if unk_token is not None and self.unk_id is None:
            raise ValueError(f"BPE: unk_token {unk_token!r} is not in the vocabulary")
        self.byte_fallback, self.fuse_unk = byte_fallback, fuse_unk
        self.ignore_merges, self.suffix = ignore_merges, end_of_word_suffix or ""
        self.byte_level = byte_level
        self._compile(lambda fast: None if self.suffix else fast.BPECore(
            vocab, ranks, self.unk_id, byte_level, byte_fallback, fuse_unk, ignore_merges, bytes_to_unicode(),
            CACHE_SIZE, CACHE_PIECE_CHARS))

    @classmethod
    def from_json(cls, spec, byte_level=False) -> "BPEModel":
        vocab = _vocab_dict(spec.get("vocab"), "BPE")
        if spec.get("continuing_subword_prefix"):
            raise ValueError("BPE: continuing_subword_prefix is not supported")
        if spec.get("dropout"):
            raise ValueError("BPE: dropout is not supported (it is for training)")
        ranks = {}
        for rank, m in enumerate(spec.get("merges") or []):
            pair = tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
            if len(pair) != 2 or not all(isinstance(s, str) for s in pair):
                raise ValueError(f"BPE: merge {m!r} is not two symbols")
            if pair[0] + pair[1] not in vocab:
                raise ValueError(f"BPE: merge {m!r} makes {pair[0] + pair[1]!r}, which is not in the vocabulary")
            ranks.setdefault((sys.intern(pair[0]), sys.intern(pair[1])), rank)
        return cls(vocab, ranks, spec.get("unk_token"), bool(spec.get("byte_fallback")), bool(spec.get("fuse_unk")),
                   bool(spec.get("ignore_merges")), spec.get("end_of_word_suffix"), byte_level)

    def _symbols(self, piece):
        """The piece's characters as vocabulary symbols: a missing one as its <0xNN> bytes or unk (None)."""
        vocab, out = self.vocab, []
        last = len(piece) - 1
        for i, c in enumerate(piece):
            if i == last and self.suffix:
                c += self.suffix
            if c in vocab:
                out.append(c)
                continue
            if self.byte_fallback:
                bs = [byte_token(b) for b in c.encode("utf-8")]
                if all(b in vocab for b in bs):
                    out.extend(bs)
                    continue
            if self.unk_id is not None and not (self.fuse_unk and out and out[-1] is None):
                out.append(None)
        return out

    def _tokenize(self, piece):
        if self.byte_level:
            piece = piece.encode("utf-8").decode("latin-1").translate(bytes_to_unicode())
        if self.ignore_merges and piece in self.vocab:
            return [self.vocab[piece]]
        ids, run = [], []
        for s in self._symbols(piece) + [None]:  # the runs between unknown characters merge apart
            if s is not None:
                run.append(s)
                continue
            if run:
                ids.extend(self.vocab[t] for t in bpe_merge(run, self.ranks))
                run = []
            ids.append(self.unk_id)
        return ids[:-1]  # (the sentinel's)


class WordPieceModel(_Cached):
    """Greedy longest-match-first pieces with a continuation prefix; a word with no split (or longer than
    max_input_chars_per_word) is unk."""

    def __init__(self, vocab: dict, unk_token="[UNK]", prefix="##", max_chars=100):
        if unk_token not in vocab:
            raise ValueError(f"WordPiece: unk_token {unk_token!r} is not in the vocabulary")
        self.vocab, self.unk_id, self.prefix, self.max_chars = vocab, vocab[unk_token], prefix, max_chars
        self._compile(lambda fast: fast.WordPieceCore(vocab, self.unk_id, prefix, max_chars, CACHE_SIZE,
                                                      CACHE_PIECE_CHARS))

    @classmethod
    def from_json(cls, spec) -> "WordPieceModel":
        return cls(_vocab_dict(spec.get("vocab"), "WordPiece"), spec.get("unk_token", "[UNK]"),
                   spec.get("continuing_subword_prefix", "##"), int(spec.get("max_input_chars_per_word", 100)))

    def _tokenize(self, word):
        if len(word) > self.max_chars:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                found = self.vocab.get(word[start:end] if start == 0 else self.prefix + word[start:end])
                if found is not None:
                    break
            else:
                return [self.unk_id]
            ids.append(found)
            start = end
        return ids


class UnigramModel(_Cached):
    """SentencePiece's unigram language model: the segmentation of highest total log-probability (Viterbi over
    the characters, as `tokenizers`' encode_optimized: ties keep the first path found)."""

    UNK_PENALTY = 10.0

    def __init__(self, pieces: list, unk_id=None, byte_fallback=False):
        self.vocab = {}
        self.scores = []
        for i, (piece, score) in enumerate(pieces):
            self.vocab.setdefault(sys.intern(piece), i)
            self.scores.append(float(score))
        if unk_id is not None and not 0 <= unk_id < len(pieces):
            raise ValueError(f"Unigram: unk_id {unk_id} is outside the vocabulary of {len(pieces)}")
        self.unk_id, self.byte_fallback = unk_id, byte_fallback
        self.unk_score = min(self.scores, default=0.0) - self.UNK_PENALTY
        self.max_len = max((len(p) for p in self.vocab), default=1)
        self._compile(lambda fast: fast.UnigramCore(self.vocab, self.scores, unk_id, self.unk_score, byte_fallback,
                                                    CACHE_SIZE, CACHE_PIECE_CHARS))

    @classmethod
    def from_json(cls, spec) -> "UnigramModel":
        pieces = spec.get("vocab")
        if not isinstance(pieces, list) or not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                                                   and isinstance(p[1], (int, float)) for p in pieces):
            raise ValueError("Unigram: vocab must be a list of [piece, score]")
        return cls(pieces, spec.get("unk_id"), bool(spec.get("byte_fallback")))

    def _tokenize(self, text):
        n, vocab, scores = len(text), self.vocab, self.scores
        best = [None] * (n + 1)  # best[end] = (score, start, id) of the best path ending at end
        best[0] = (0.0, -1, -1)
        for start in range(n):
            if best[start] is None:
                continue
            base = best[start][0]
            single = False
            for end in range(start + 1, min(n, start + self.max_len) + 1):
                i = vocab.get(text[start:end])
                if i is None:
                    continue
                cand = base + scores[i]
                if best[end] is None or cand > best[end][0]:
                    best[end] = (cand, start, i)
                single = single or end == start + 1
            if not single:
                cand = base + self.unk_score
                if best[start + 1] is None or cand > best[start + 1][0]:
                    best[start + 1] = (cand, start, None)
        pieces, end = [], n
        while end > 0:
            _, start, i = best[end]
            pieces.append((text[start:end], i))
            end = start
        pieces.reverse()
        fused = []  # consecutive unknowns fuse into one piece
        for piece, i in pieces:
            if (i is None or i == self.unk_id) and fused and fused[-1][1] is None:
                fused[-1] = (fused[-1][0] + piece, None)
            else:
                fused.append((piece, None if i == self.unk_id else i))
        ids = []
        for piece, i in fused:
            if i is None:
                i = vocab.get(piece)
            if i is None and self.byte_fallback:
                bytes_ids = [vocab.get(byte_token(b)) for b in piece.encode("utf-8")]
                if None not in bytes_ids:
                    ids.extend(bytes_ids)
                    continue
            if i is None:
                if self.unk_id is None:
                    raise ValueError(f"Unigram: {piece!r} is not in the vocabulary and there is no unk_id")
                i = self.unk_id
            ids.append(i)
        return ids
