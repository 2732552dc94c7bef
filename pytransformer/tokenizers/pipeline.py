"""One tokenizer for every vocabulary: added tokens, normalizer, pre-tokenizer, model, post-processor and decoder,
the stages of Hugging Face's `tokenizers` (and of a tokenizer.json), each a function built by its module.

encode(text) -> list[int]: added tokens (special or not) are found first -- those marked normalized=False in the
raw text, the others in the normalized text -- and the text between them is normalized, pre-tokenized and run
through the model; add_special_tokens=True wraps the ids as the post-processor says (BOS, CLS ... SEP).
decode(ids) -> str: tokens through the decoder (skip_special_tokens drops the special added ones)."""

from __future__ import annotations

import re

from .added import AddedMatcher
from .chat import render_chat, untemplated
from .decoders import cleanup
from .stops import stop_ids

_SURROGATE = re.compile("[\ud800-\udfff]")


class Tokenizer:
    """A tokenizer assembled from stages (see the module docstring): from_folder / from_gguf_metadata build one.

    vocab: token -> id of the model; added: [AddedToken]; normalizer: str -> str or None; pre_tokenizer:
    (pieces, at_start) -> pieces or None; model: .encode(pieces, out) appends ids; decoder: tokens -> pieces;
    post: (ids before, ids after) added by add_special_tokens. bos_id / eos_ids / chat_template / source: from
    the file or its config; clean_up: transformers' clean_up_tokenization_spaces on decode."""

    def __init__(self, model, vocab: dict, added=(), normalizer=None, pre_tokenizer=None, decoder=None,
                 post=((), ()), bos_id=None, eos_ids=(), chat_template=None, source="the tokenizer",
                 clean_up=False, kind=""):
        self.model, self.normalizer, self.pre_tokenizer, self.decoder = model, normalizer, pre_tokenizer, decoder
        self.vocab = dict(vocab)
        self.added = list(added)
        for t in self.added:
            self.vocab[t.content] = t.id
        self.id_to_token = {i: t for t, i in vocab.items()} | {t.id: t.content for t in self.added}
        self._vocab_size = max(self.id_to_token, default=-1) + 1
        self.special_ids = {t.id for t in self.added if t.special}
        self._raw = AddedMatcher([t for t in self.added if not t.normalized])
        self._normalized = AddedMatcher([t for t in self.added if t.normalized], normalizer)
        self.post_before, self.post_after = list(post[0]), list(post[1])
        self.bos_id, self.eos_ids = bos_id, [int(i) for i in eos_ids if i is not None]
        self.chat_template, self.source, self.clean_up, self.kind = chat_template, source, clean_up, kind

    # --- what the rest of the package reads ---------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_id(self):
        return self.eos_ids[0] if self.eos_ids else None

    @property
    def stop_ids(self) -> list[int]:
        return stop_ids(self.vocab.get, self.eos_ids)

    def clear_cache(self):
        """Forget the pieces the model remembers (their memory; a benchmark's cold start)."""
        self.model.cache.clear()

    def token_to_id(self, token: str):
        return self.vocab.get(token)

    # --- encode ---------------------------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of text (a list of int); add_special_tokens: the post-processor's BOS/CLS/SEP around them."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        bad = None if text.isascii() else _SURROGATE.search(text)  # (the compiled models read UTF-8)
        if bad:
            raise ValueError(f"text must be valid Unicode, got a lone surrogate {bad[0]!r} at character {bad.start()}")
        ids = list(self.post_before) if add_special_tokens else []
        at_start = True
        for raw, added_id in self._raw.split(text):
            if added_id is not None:
                ids.append(added_id)
                at_start = False
                continue
            normalized = self.normalizer(raw) if self.normalizer else raw
            for piece, norm_id in self._normalized.split(normalized):
                if norm_id is not None:
                    ids.append(norm_id)
                else:
                    self.model.encode(self.pre_tokenizer([piece], at_start) if self.pre_tokenizer else [piece], ids)
                at_start = False
        if add_special_tokens:
            ids.extend(self.post_after)
        return ids

    def encode_batch(self, texts, add_special_tokens: bool = False) -> list[list[int]]:
        """encode of each text, on this thread (the compiled models hold the GIL: their piece cache is a dict)."""
        return [self.encode(text, add_special_tokens) for text in texts]

    # --- decode ---------------------------------------------------------------------------------------------------

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if skip_special_tokens and i in self.special_ids:
                continue
            token = self.id_to_token.get(i)
            if token is None:
                raise ValueError(f"token id {i} is outside the vocabulary of {self.vocab_size}")
            out.append(token)
        return out

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        text = "".join(self.decoder(self.convert_ids_to_tokens(ids, skip_special_tokens)))
        return cleanup(text) if self.clean_up else text

    def stream_text(self, token_stream, skip_special_tokens=True):
        """Text pieces as tokens arrive from a generation stream (arrays (1,) or ints), a character held back until
        it is complete (no U+FFFD at the end of a piece); stop tokens end it and are not shown. Each step decodes
        a short window: the tokens since the last piece, after the few before them (so that a decoder's rule for
        the first token, or a space between tokens, comes out as in the whole text)."""
        stops, ids, prefix, read = set(self.stop_ids), [], 0, 0
        for tok in token_stream:
            i = int(tok[0]) if hasattr(tok, "__len__") else int(tok)
            if i in stops:
                break
            ids.append(i)
            before = self.decode(ids[prefix:read], skip_special_tokens)
            text = self.decode(ids[prefix:], skip_special_tokens)
            if len(text) > len(before) and not text.endswith("\ufffd"):
                yield text[len(before):]
                prefix, read = read, len(ids)
        before, text = self.decode(ids[prefix:read], skip_special_tokens), self.decode(ids[prefix:], skip_special_tokens)
        if len(text) > len(before):
            yield text[len(before):]

    # --- chat -----------------------------------------------------------------------------------------------------

    def apply_chat_template(self, messages, add_generation_prompt=True, **extra) -> str:
        """The conversation as the model was trained to see it, through the file's chat template (chat.py: a
        limited sandbox; without one, the turns its special tokens name: chat.untemplated)."""
        return render_chat(self.chat_template, messages, add_generation_prompt, source=self.source,
                           untemplated=untemplated(lambda t: t in self.vocab),
                           bos_token=self._token(self.bos_id), eos_token=self._token(self.eos_id), **extra)

    def _token(self, i):
        return "" if i is None else self.id_to_token.get(i, "")

    def __repr__(self):
        return f"Tokenizer({self.kind}, {self.vocab_size:,} tokens)"
