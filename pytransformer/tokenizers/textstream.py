"""Text of a token sequence as its tokens arrive: incremental detokenisation and stop strings, for every tokenizer
(it needs only `decode(ids) -> str`). The one copy of the rule that the server's engine, generate.stream's stop
strings and the tokenizers' stream_text use."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence


class TextStream:
    """push(token) -> the new text that is safe to show ("" while it waits), flush() -> what was held back, once
    the sequence has ended.

    Text is held back while a character's bytes are still arriving (the decoding ends in U+FFFD) and while the end
    of the text could be the start of a stop string. Once a stop string appears, `stopped` is set and the text
    given out ends just before it: a stop string never leaks, whichever tokens it spans.

    (Bytes that never make a character are held until a character follows them or the sequence ends.)
    Each push decodes only the last few tokens (a window that slides forward, never into a character: decoding
    the whole text per token would cost its length every token)."""

    context = 4  # tokens decoded before the new ones (a decoder may treat a text's first token apart)

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Iterable[str] = ()):
        self.decode = decode
        self.stop = list(stop)
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        self.longest, self.firsts = max(map(len, self.stop), default=0), {s[0] for s in self.stop}
        self.window: list[int] = []  # the tokens decoded per push
        self.taken = 0               # characters of the window's decoding given out or held already
        self.held = ""               # decoded text kept back: it may begin a stop string
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.window.append(int(token))
        decoded = self.decode(self.window)
        piece = decoded[self.taken:]
        if piece.endswith("\ufffd"):  # (a character still arriving: wait for its last byte)
            return ""
        self.taken = len(decoded)
        if len(self.window) > 2 * self.context:
            self._slide()
        return self._release(piece, final=False)

    def flush(self) -> str:
        """At the end of the sequence: the text held back (an unfinished character shows as U+FFFD)."""
        if self.stopped:
            return ""
        piece = self.decode(self.window)[self.taken:]
        self.window, self.taken = [], 0
        return self._release(piece, final=True)

    def _slide(self):
        """Keep the last `context` tokens (or up to 3 more, back to the start of a character) as the window."""
        for n in range(self.context, min(len(self.window), self.context + 4)):
            decoded = self.decode(self.window[-n:])
            if not decoded.startswith("\ufffd"):
                self.window, self.taken = self.window[-n:], len(decoded)
                return

    def _release(self, piece: str, final: bool) -> str:
        text = self.held + piece
        cut = min((text.find(s) for s in self.stop if s in text), default=-1)
        if cut >= 0:
            self.stopped, self.held = True, ""
            return text[:cut]
        keep = 0 if final else self._stop_prefix(text)
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep]

    def _stop_prefix(self, text: str) -> int:
        """Length of the longest end of text that is the beginning of a stop string (0: none)."""
        for n in range(min(len(text), self.longest - 1), 0, -1):
            if text[-n] in self.firsts and any(s.startswith(text[-n:]) for s in self.stop):
                return n
        return 0


def text_pieces(tokens: Iterable, decode: Callable[[Sequence[int]], str], stop: Iterable[str] = (),
                end_ids: Iterable[int] = ()) -> Iterator[str]:
    """Text pieces as tokens arrive from a generation stream (ints, or arrays (1,) of one row): an end id ends it
    unseen, a stop string ends it before the stop string."""
    text, end = TextStream(decode, stop), set(end_ids)
    for token in tokens:
        i = int(token[0]) if hasattr(token, "__len__") else int(token)
        if i in end:
            break
        piece = text.push(i)
        if piece:
            yield piece
        if text.stopped:
            return
    tail = text.flush()
    if tail:
        yield tail
