# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The tokenizers' hot loops, compiled: a word's ids for BPE (byte-level or with byte fallback, ranked or implied
merges), Unigram (Viterbi) and WordPiece (greedy longest match), over integer ids and a byte trie, each behind a
piece cache (`encode(pieces, out)` runs a whole pre-tokenized text in one call), and the common pre-tokenizer
regexes spelled out by hand (Splitter). models.py and splitters.py keep the pure-Python twin of every loop here
(used when this module is not built, and by the tests as the second opinion).

The models read text as UTF-8 (Python's own copy of a str; positions are byte offsets at character boundaries);
the splitters read code points."""

from cpython.unicode cimport (PyUnicode_AsUTF8AndSize, PyUnicode_DATA, PyUnicode_GET_LENGTH, PyUnicode_KIND,
                              PyUnicode_READ, PyUnicode_Substring)
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libcpp cimport bool as cbool
from libcpp.pair cimport pair
from libcpp.queue cimport priority_queue
from libcpp.string cimport string
from libcpp.unordered_map cimport unordered_map
from libcpp.vector cimport vector

cimport cython
from cython.operator cimport dereference as deref

ctypedef pair[int64_t, int32_t] Merge  # a pair's (rank, the token it makes); rank -1: the pair does not merge
ctypedef pair[int64_t, pair[int64_t, int32_t]] Entry  # (-rank, (-position, made token)) in a max-heap

cdef struct Symbol:
    int32_t id
    int32_t prev
    int32_t next
    cbool alive  # false once merged into its left neighbour


cdef inline int _width(uint8_t lead) noexcept nogil:
    """Bytes of the UTF-8 character that starts with lead."""
    return 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


cdef inline int32_t _code_point(const uint8_t* s, int w) noexcept nogil:
    if w == 1:
        return s[0]
    if w == 2:
        return ((s[0] & 0x1F) << 6) | (s[1] & 0x3F)
    if w == 3:
        return ((s[0] & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F)
    return ((s[0] & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F)


cdef inline int _utf8(int32_t cp, uint8_t* out) noexcept nogil:
    """Writes cp's UTF-8 bytes to out; -> their count."""
    if cp < 0x80:
        out[0] = cp
        return 1
    if cp < 0x800:
        out[0], out[1] = 0xC0 | (cp >> 6), 0x80 | (cp & 0x3F)
        return 2
    if cp < 0x10000:
        out[0], out[1], out[2] = 0xE0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3F), 0x80 | (cp & 0x3F)
        return 3
    out[0], out[1] = 0xF0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3F)
    out[2], out[3] = 0x80 | ((cp >> 6) & 0x3F), 0x80 | (cp & 0x3F)
    return 4


cdef inline string _bytes_of(str s):
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(s, &n)
    return string(p, n)


cdef class PieceCache:
    """piece (str) -> its ids (a list), remembered for up to capacity pieces of at most max_chars characters
    (a piece's ids never change). Subclasses give _tokenize; .cache is the dict (clear() it for a cold start)."""

    cdef public dict cache
    cdef Py_ssize_t capacity, max_chars

    def __init__(self, Py_ssize_t capacity, Py_ssize_t max_chars):
        self.cache, self.capacity, self.max_chars = {}, capacity, max_chars

    cdef list _tokenize(self, str piece):
        raise NotImplementedError

    def encode(self, list pieces, list out):
        """Appends the ids of every piece (a list of str) to out."""
        cdef dict cache = self.cache
        cdef str piece
        for piece in pieces:
            ids = cache.get(piece)
            if ids is None:
                ids = self._tokenize(piece)
                if len(piece) <= self.max_chars and len(cache) < self.capacity:
                    cache[piece] = ids
            out.extend(<list>ids)

    def tokenize(self, str piece) -> list:
        """The ids of one piece (a new list)."""
        out = []
        self.encode([piece], out)
        return out


cdef struct Slot:
    uint64_t key  # the key + 1; 0: an empty slot
    Merge merge  # the value ((-1, -1) in an empty slot)

cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing's multiplier, 2^64 / golden ratio


@cython.final
cdef class HashTable:
    """uint64 -> Merge (a pair of tokens -> its merge; a trie edge -> (child, 0)), open addressing with linear
    probing in a power-of-two table kept at most half full: one multiply and (mostly) one cache line per lookup,
    where std::unordered_map divides and chases a node."""

    cdef vector[Slot] slots
    cdef int shift  # 64 - log2(len(slots))
    cdef size_t used

    def __init__(self):
        self.clear()

    cdef void clear(self):
        self.slots.assign(16, Slot(0, Merge(-1, -1)))
        self.shift, self.used = 60, 0

    cdef inline Slot* find(self, uint64_t key) noexcept:
        """The slot holding key, else the empty slot where it goes."""
        cdef size_t mask = self.slots.size() - 1, i = (key * GOLDEN) >> self.shift
        while self.slots[i].key != 0 and self.slots[i].key != key + 1:
            i = (i + 1) & mask
        return &self.slots[i]

    cdef void put(self, uint64_t key, Merge merge):
        cdef Slot* slot = self.find(key)
        if slot.key == 0:
            if 2 * (self.used + 1) > self.slots.size():
                self._grow()
                slot = self.find(key)
            self.used += 1
        slot.key, slot.merge = key + 1, merge

    cdef void _grow(self):
        cdef vector[Slot] old
        old.swap(self.slots)
        self.slots.assign(2 * old.size(), Slot(0, Merge(-1, -1)))
        self.shift -= 1
        for k in range(old.size()):
            if old[k].key != 0:
                self.find(old[k].key - 1)[0] = old[k]


cdef list _id_list(vector[int32_t]& ids):
    return [ids[k] for k in range(<Py_ssize_t>ids.size())]


@cython.final
cdef class BPECore(PieceCache):
    """Byte-pair encoding of one piece over token ids, as Hugging Face's `tokenizers` (word.rs merge_all): a heap
    of (rank, position) over linked symbols, the lowest rank then the leftmost first; a popped pair that no longer
    makes the token it was pushed for is stale. A character outside the vocabulary becomes its <0xNN> byte tokens
    (byte_fallback) or unk (consecutive ones fused when fuse_unk; dropped when there is no unk); the runs between
    unknowns merge apart. byte_level: the piece's UTF-8 bytes are first spelled in GPT-2's byte alphabet.

    vocab: token -> id. ranks: a dict (left, right) -> rank, or a sentencepiece.ScoreRanks (pairs ranked by the
    joined token's score: head, M, V), ranked here when first asked and remembered (at most ScoreRanks.MEMORY)."""

    cdef HashTable merges  # (left << 32 | right) -> Merge
    cdef unordered_map[string, int32_t] ids  # token (UTF-8) -> id
    cdef unordered_map[int32_t, int32_t] char_ids  # code point -> id of the token of that one character
    cdef int32_t byte_ids[256]  # <0xNN> -> id, -1 when absent
    cdef int32_t alphabet[256]  # byte -> its code point in GPT-2's byte alphabet
    cdef cbool byte_level, byte_fallback, fuse_unk, ignore_merges, implied
    cdef int32_t unk_id
    # implied ranks: rank of (a, b) = head[a + b] + ((M - 1 - chars[a]) * M + (M - 1 - chars[b])) * V
    cdef vector[string] tokens  # id -> UTF-8
    cdef vector[int64_t] head  # id -> the joined token's head (-1: not ranked)
    cdef vector[int64_t] chars  # id -> length in characters
    cdef int64_t M, V
    cdef size_t memory

    def __init__(self, dict vocab, ranks, unk_id, bint byte_level, bint byte_fallback, bint fuse_unk,
                 bint ignore_merges, dict alphabet, Py_ssize_t capacity, Py_ssize_t max_chars):
        PieceCache.__init__(self, capacity, max_chars)
        cdef str t
        cdef int32_t i, size = max(vocab.values(), default=-1) + 1
        self.unk_id = -1 if unk_id is None else unk_id
        self.byte_level, self.byte_fallback, self.fuse_unk = byte_level, byte_fallback, fuse_unk
        self.ignore_merges, self.implied = ignore_merges, type(ranks) is not dict
        self.merges = HashTable()
        if self.implied:  # (ids are positions in a GGUF file's token list)
            self.tokens.resize(size)
            self.chars.resize(size)
        cdef string utf8
        self.ids.reserve(len(vocab))
        for t, i in vocab.items():
            utf8 = _bytes_of(t)
            self.ids[utf8] = i
            if self.implied:
                self.tokens[i], self.chars[i] = utf8, len(t)
            if len(t) == 1:
                self.char_ids[ord(t)] = i
        for b in range(256):
            self.byte_ids[b] = vocab.get(f"<0x{b:02X}>", -1)
            self.alphabet[b] = ord(alphabet[b])
        if self.implied:
            self.M, self.V, self.memory = ranks.M, ranks.V, ranks.MEMORY
            self.head.assign(size, -1)
            for t, h in ranks.head.items():
                self.head[vocab[t]] = h
            return
        for (a, b), r in ranks.items():
            left, right, made = vocab.get(a), vocab.get(b), vocab.get(a + b)
            if left is not None and right is not None and made is not None:
                self.merges.put((<uint64_t>left << 32) | <uint32_t>right, Merge(r, made))

    cdef Merge _pair(self, int32_t a, int32_t b):
        cdef uint64_t key = (<uint64_t>a << 32) | <uint32_t>b
        cdef Slot* slot = self.merges.find(key)
        if slot.key != 0 or not self.implied:
            return slot.merge  # (an empty slot's: no merge)
        cdef Merge m = Merge(-1, -1)
        cdef unordered_map[string, int32_t].iterator made = self.ids.find(self.tokens[a] + self.tokens[b])
        if made != self.ids.end() and self.head[deref(made).second] >= 0:
            m = Merge(self.head[deref(made).second]
                      + ((self.M - 1 - self.chars[a]) * self.M + (self.M - 1 - self.chars[b])) * self.V,
                      deref(made).second)
        if self.merges.used >= self.memory:
            self.merges.clear()
        self.merges.put(key, m)
        return m

    cdef void _merge(self, vector[Symbol]& sym, vector[int32_t]& out):
        """Merges the run sym, appends its tokens to out and empties it."""
        cdef Py_ssize_t n = sym.size(), i, j, k
        cdef priority_queue[Entry] heap
        cdef Entry top
        cdef Merge m
        for i in range(n):
            sym[i].prev, sym[i].next, sym[i].alive = i - 1, (i + 1 if i + 1 < n else -1), True
        for i in range(n - 1):
            m = self._pair(sym[i].id, sym[i + 1].id)
            if m.first >= 0:
                heap.push(Entry(-m.first, pair[int64_t, int32_t](-i, m.second)))
        while not heap.empty():
            top = heap.top()
            heap.pop()
            i = -top.second.first
            j = sym[i].next
            if not sym[i].alive or j < 0 or self._pair(sym[i].id, sym[j].id).second != top.second.second:
                continue
            sym[i].id = top.second.second
            sym[j].alive = False
            k = sym[i].next = sym[j].next
            if k >= 0:
                sym[k].prev = i
                m = self._pair(sym[i].id, sym[k].id)
                if m.first >= 0:
                    heap.push(Entry(-m.first, pair[int64_t, int32_t](-i, m.second)))
            k = sym[i].prev
            if k >= 0:
                m = self._pair(sym[k].id, sym[i].id)
                if m.first >= 0:
                    heap.push(Entry(-m.first, pair[int64_t, int32_t](-k, m.second)))
        for i in range(n):
            if sym[i].alive:
                out.push_back(sym[i].id)
        sym.clear()

    cdef cbool _symbol(self, int32_t cp, const uint8_t* utf8, int w, cbool after_unk, vector[Symbol]& run,
                       vector[int32_t]& out):
        """Adds the symbols of character cp (UTF-8 utf8[:w]) to run; -> whether it is an unknown."""
        cdef unordered_map[int32_t, int32_t].iterator it = self.char_ids.find(cp)
        if it != self.char_ids.end():
            run.push_back(Symbol(deref(it).second, 0, 0, True))
            return False
        cdef int k
        if self.byte_fallback:
            for k in range(w):
                if self.byte_ids[utf8[k]] < 0:
                    break
            else:
                for k in range(w):
                    run.push_back(Symbol(self.byte_ids[utf8[k]], 0, 0, True))
                return False
        if self.unk_id < 0:
            return after_unk
        if not (self.fuse_unk and after_unk):
            self._merge(run, out)
            out.push_back(self.unk_id)
        return True

    cdef list _tokenize(self, str piece):
        cdef Py_ssize_t n, i = 0, k
        cdef const uint8_t* s = <const uint8_t*>PyUnicode_AsUTF8AndSize(piece, &n)
        cdef vector[Symbol] run
        cdef vector[int32_t] out
        cdef uint8_t spelled[4]
        cdef int w, ws
        cdef cbool after_unk = False
        cdef string whole
        cdef unordered_map[string, int32_t].iterator found
        if self.ignore_merges:
            whole = self._spelled(s, n)
            found = self.ids.find(whole)
            if found != self.ids.end():
                return [deref(found).second]
        while i < n:
            w = _width(s[i])
            if self.byte_level:
                for k in range(w):
                    ws = _utf8(self.alphabet[s[i + k]], spelled)
                    after_unk = self._symbol(self.alphabet[s[i + k]], spelled, ws, after_unk, run, out)
            else:
                after_unk = self._symbol(_code_point(s + i, w), s + i, w, after_unk, run, out)
            i += w
        self._merge(run, out)
        return _id_list(out)

    cdef string _spelled(self, const uint8_t* s, Py_ssize_t n):
        """The piece as the vocabulary spells it (in the byte alphabet when byte_level)."""
        if not self.byte_level:
            return string(<const char*>s, n)
        cdef string out
        cdef uint8_t c[4]
        for i in range(n):
            out.append(<const char*>c, _utf8(self.alphabet[s[i]], c))
        return out


@cython.final
cdef class Trie:
    """Tokens (UTF-8) in a byte trie: node 0 is the root; token[node] the id that ends there (-1: none), the first
    given when a token repeats."""

    cdef HashTable edges  # node << 8 | byte -> (child, 0)
    cdef vector[int32_t] token

    def __init__(self, tokens):
        """tokens: (token, id) pairs."""
        self.edges = HashTable()
        self.token.push_back(-1)
        cdef str t
        for t, i in tokens:
            node = self.walk(0, _bytes_of(t), True)
            if self.token[node] < 0:
                self.token[node] = i

    cdef inline int32_t child(self, int32_t node, uint8_t b) noexcept:
        """-1: none."""
        return self.edges.find((<uint64_t>node << 8) | b).merge.first

    cdef int32_t walk(self, int32_t node, string s, cbool grow):
        """The node s leads to from node (-1: none), adding the missing nodes when grow."""
        cdef int32_t nxt
        for b in s:
            nxt = self.child(node, b)
            if nxt < 0:
                if not grow:
                    return -1
                nxt = self.token.size()
                self.token.push_back(-1)
                self.edges.put((<uint64_t>node << 8) | <uint8_t>b, Merge(nxt, 0))
            node = nxt
        return node

    cdef int32_t find(self, const uint8_t* s, Py_ssize_t n):
        """The id of the token s[:n], -1 when it is not one."""
        cdef int32_t node = self.walk(0, string(<const char*>s, n), False)
        return -1 if node < 0 else self.token[node]


@cython.final
cdef class UnigramCore(PieceCache):
    """SentencePiece's unigram model: the segmentation of highest total score, Viterbi over the characters
    (models.UnigramModel._tokenize_python's loop over a trie: ties keep the first path found); an unknown character
    scores unk_score; consecutive unknowns fuse; byte fallback optional."""

    cdef Trie trie
    cdef vector[double] scores
    cdef double unk_score
    cdef int32_t unk_id
    cdef cbool byte_fallback
    cdef int32_t byte_ids[256]

    def __init__(self, dict vocab, list scores, unk_id, double unk_score, bint byte_fallback, Py_ssize_t capacity,
                 Py_ssize_t max_chars):
        PieceCache.__init__(self, capacity, max_chars)
        self.trie = Trie(vocab.items())
        self.scores = scores
        self.unk_id, self.unk_score, self.byte_fallback = (-1 if unk_id is None else unk_id), unk_score, byte_fallback
        for b in range(256):
            self.byte_ids[b] = vocab.get(f"<0x{b:02X}>", -1)

    cdef list _tokenize(self, str piece):
        cdef Py_ssize_t n, start, end, w
        cdef const uint8_t* s = <const uint8_t*>PyUnicode_AsUTF8AndSize(piece, &n)
        cdef vector[double] score = vector[double](n + 1)
        cdef vector[Py_ssize_t] origin = vector[Py_ssize_t](n + 1, -2)  # -2: no path ends here yet
        cdef vector[int32_t] made = vector[int32_t](n + 1, -1)  # -1: an unknown
        cdef int32_t node, tok
        cdef double cand
        cdef cbool single
        origin[0] = -1
        start = 0
        while start < n:
            w = _width(s[start])
            if origin[start] != -2:
                single, node, end = False, 0, start
                while end < n:
                    node = self.trie.child(node, s[end])
                    end += 1
                    if node < 0:
                        break
                    tok = self.trie.token[node]
                    if tok < 0:
                        continue
                    cand = score[start] + self.scores[tok]
                    if origin[end] == -2 or cand > score[end]:
                        score[end], origin[end], made[end] = cand, start, tok
                    single = single or end == start + w
                if not single:
                    cand = score[start] + self.unk_score
                    if origin[start + w] == -2 or cand > score[start + w]:
                        score[start + w], origin[start + w], made[start + w] = cand, start, -1
            start += w
        cdef vector[Py_ssize_t] cuts  # the best path's piece ends, last first, then its unknowns fused
        end = n
        while end > 0:
            cuts.push_back(end)
            end = origin[end]
        cdef vector[int32_t] out
        cdef Py_ssize_t p = cuts.size() - 1, e, fused_start = -1, fused_end = 0
        while p >= 0:
            e = cuts[p]
            start = origin[e]
            tok = made[e]
            if (tok < 0 or tok == self.unk_id) and fused_start >= 0:
                fused_end = e
            else:
                if fused_start >= 0:
                    self._emit(s + fused_start, fused_end - fused_start, out)
                    fused_start = -1
                if tok < 0 or tok == self.unk_id:
                    fused_start, fused_end = start, e
                else:
                    out.push_back(tok)
            p -= 1
        if fused_start >= 0:
            self._emit(s + fused_start, fused_end - fused_start, out)
        return _id_list(out)

    cdef int _emit(self, const uint8_t* s, Py_ssize_t n, vector[int32_t]& out) except -1:
        """Appends an unknown piece s[:n]: its token if it is one, else its bytes (byte_fallback), else unk."""
        cdef int32_t tok = self.trie.find(s, n)
        if tok < 0 and self.byte_fallback:
            for k in range(n):
                if self.byte_ids[s[k]] < 0:
                    break
            else:
                for k in range(n):
                    out.push_back(self.byte_ids[s[k]])
                return 0
        if tok < 0:
            if self.unk_id < 0:
                raise ValueError(f"Unigram: {(<bytes>s[:n]).decode('utf-8')!r} is not in the vocabulary and there "
                                 f"is no unk_id")
            tok = self.unk_id
        out.push_back(tok)
        return 0


@cython.final
cdef class WordPieceCore(PieceCache):
    """Greedy longest-match-first WordPiece over a trie: the longest token at the start, then the longest
    continuation (prefix + text) after it; a word with no split, or longer than max_word characters, is unk."""

    cdef Trie trie
    cdef int32_t unk_id, continuation  # the node after the prefix (-1: no token continues a word)
    cdef Py_ssize_t max_word

    def __init__(self, dict vocab, int unk_id, str prefix, Py_ssize_t max_word, Py_ssize_t capacity,
                 Py_ssize_t max_chars):
        PieceCache.__init__(self, capacity, max_chars)
        self.trie = Trie(vocab.items())
        self.unk_id, self.max_word = unk_id, max_word
        self.continuation = self.trie.walk(0, _bytes_of(prefix), False)

    cdef list _tokenize(self, str word):
        if len(word) > self.max_word:
            return [self.unk_id]
        cdef Py_ssize_t n, start = 0, end, best
        cdef const uint8_t* s = <const uint8_t*>PyUnicode_AsUTF8AndSize(word, &n)
        cdef int32_t node, found
        out = []
        while start < n:
            node, end, best, found = (0 if start == 0 else self.continuation), start, -1, -1
            while node >= 0 and end < n:
                node = self.trie.child(node, s[end])
                end += 1
                if node >= 0 and self.trie.token[node] >= 0:
                    best, found = end, self.trie.token[node]
            if found < 0:
                return [self.unk_id]
            out.append(found)
            start = best
        return out


include "_splitter.pxi"  # Splitter: the pre-tokenizer regexes by hand
