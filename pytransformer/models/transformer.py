"""The encoder-decoder Transformer of "Attention Is All You Need" (2017): sinusoidal positions, post-LN
blocks, ReLU feed-forward, embeddings scaled by sqrt(d_model), the encoder output feeding every decoder
block's cross-attention, and the output projection tied to the target embedding. Greedy and beam search."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .. import ops
from ..nn import (DecoderBlock, Dropout, Embedding, EncoderBlock, FeedForward, LayerNorm, MultiHeadAttention,
                  SinusoidalPositions, TiedLMHead)
from ..cuda import DeviceArray, to_host
from ..generate import KVCache
from .base import CrossEntropyHead, Model, check_ids, count_parameters


@dataclass
class TransformerConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 512
    n_head: int = 8
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    max_len: int = 512
    share_embeddings: bool = False  # one table for source and target (needs equal vocabularies)
    layer_norm_eps: float = 1e-5
    label_smoothing: float = 0.0    # the paper trained with 0.1 (section 5.4)

    def to_dict(self):
        return asdict(self)

    def num_params(self) -> int:
        """The parameter count of Transformer(self), from the config alone (nothing allocated)."""
        return count_parameters(Transformer, self)


def _scaled(x, scale):
    """x * scale: a new array on the CPU; on a device, x (an embedding's fresh output or gradient) in place."""
    return ops.scale_(x, float(scale)) if type(x) is DeviceArray else x * scale


class Transformer(Model):
    runs_on_cuda = True

    """forward(src (B, S), tgt_in (B, T), src_mask (B, S) or None) -> logits (B, T, V_tgt)."""

    def __init__(self, config: TransformerConfig, seed: int = 0):
        c = self.config = config
        std = c.d_model ** -0.5  # so that embedding * sqrt(d_model) has unit scale
        self.src_emb = Embedding(c.src_vocab_size, c.d_model, std)
        if c.share_embeddings:
            if c.src_vocab_size != c.tgt_vocab_size:
                raise ValueError("share_embeddings needs equal source and target vocabularies")
            self.tgt_emb = Embedding(c.tgt_vocab_size, c.d_model, std)
            self.tgt_emb.weight = self.src_emb.weight  # one table, two lookups (each keeps its own ids)
        else:
            self.tgt_emb = Embedding(c.tgt_vocab_size, c.d_model, std)
        self.src_pos = SinusoidalPositions(c.max_len, c.d_model)
        self.tgt_pos = SinusoidalPositions(c.max_len, c.d_model)
        self.src_drop, self.tgt_drop = Dropout(c.dropout), Dropout(c.dropout)
        C = c.d_model
        norm = lambda: LayerNorm(C, c.layer_norm_eps)  # noqa: E731
        self.encoder = [EncoderBlock(attn=MultiHeadAttention(C, c.n_head), ffn=FeedForward(C, c.d_ff, "relu"),
                                     norm=norm, placement="post", dropout=c.dropout)
                        for _ in range(c.n_encoder_layers)]
        self.decoder = [DecoderBlock(attn=MultiHeadAttention(C, c.n_head, causal=True),
                                     ffn=FeedForward(C, c.d_ff, "relu"),
                                     norm=norm, placement="post", dropout=c.dropout,
                                     cross=MultiHeadAttention(C, c.n_head))
                        for _ in range(c.n_decoder_layers)]
        self.out = TiedLMHead(self.tgt_emb.weight)  # the output projection shares the target embedding
        self.head = CrossEntropyHead(c.label_smoothing)
        self.scale = np.float32(math.sqrt(c.d_model))
        self._build(seed)

    def encode(self, src, src_mask=None):
        """-> memory (B, S, C)."""
        src = check_ids(src, "src", self.config.max_len)
        mask = None if src_mask is None else np.ascontiguousarray(np.asarray(src_mask) != 0)
        self._begin_forward()
        x = _scaled(self.src_emb.forward(src), self.scale)
        x = self.src_drop.forward(self.src_pos.forward(x))
        for block in self.encoder:
            x = block.forward(x, mask)
        return x

    def decode(self, tgt_in, memory, src_mask=None):
        """-> logits (B, T, V_tgt) for target inputs (shifted right, starting with BOS)."""
        tgt_in = check_ids(tgt_in, "tgt", self.config.max_len)
        mask = None if src_mask is None else np.ascontiguousarray(np.asarray(src_mask) != 0)
        self._begin_forward()
        y = _scaled(self.tgt_emb.forward(tgt_in), self.scale)
        y = self.tgt_drop.forward(self.tgt_pos.forward(y))
        for block in self.decoder:
            y = block.forward(y, memory, mask)
        return self.out.forward(y)

    def forward(self, src, tgt_in, src_mask=None):
        return self.decode(tgt_in, self.encode(src, src_mask), src_mask)

    __call__ = forward

    def loss(self, src, tgt_in, tgt_out, src_mask=None, ignore_index=-100):
        """Mean cross-entropy of predicting tgt_out (B, T) from tgt_in (teacher forcing)."""
        loss = self.head.loss(self.forward(src, tgt_in, src_mask), tgt_out, ignore_index, self.keeps_state)
        self._loss_computed()
        return loss

    def backward(self, dloss=1.0):
        self._begin_backward()
        dy = self.out.backward(self.head.backward(dloss))
        dmemory = None
        for block in reversed(self.decoder):
            dy, dm = block.backward(dy)
            dmemory = dm if dmemory is None else ops.add_into(dmemory, dm)
        self.tgt_emb.backward(_scaled(self.tgt_pos.backward(self.tgt_drop.backward(dy)), self.scale))
        dx = dmemory
        for block in reversed(self.encoder):
            dx = block.backward(dx)
        self.src_emb.backward(_scaled(self.src_pos.backward(self.src_drop.backward(dx)), self.scale))

    # --- decoding ------------------------------------------------------------------------------------------

    def greedy_decode(self, src, bos_id, eos_id, max_len, src_mask=None):
        """-> (B, <= max_len + 1) ids starting with BOS; a finished row is padded with EOS. The decoder runs one
        position per step over a KV cache, and cross-attention's keys and values are computed once."""
        if max_len + 1 > self.config.max_len:
            raise ValueError(f"max_len {max_len} + BOS exceeds the model's {self.config.max_len} positions")
        with self.evaluating():
            memory = self.encode(src, src_mask)
            mask = None if src_mask is None else np.ascontiguousarray(np.asarray(src_mask) != 0)
            memory_kv = [block.cross.sublayer.memory_kv(memory) for block in self.decoder]
            B = memory.shape[0]
            cache = KVCache.for_blocks(self.decoder, B, max_len + 1, self.device)
            out = np.full((B, 1), bos_id, np.int64)
            done = np.zeros(B, bool)
            for step in range(max_len):
                last = np.ascontiguousarray(out[:, -1:])
                nxt = to_host(self._decode_step(last, cache, memory_kv, mask, step))[:, -1].argmax(-1)
                nxt = np.where(done, eos_id, nxt)
                out = np.concatenate([out, nxt[:, None]], axis=1)
                done |= nxt == eos_id
                if done.all():
                    break
        return out

    def _decode_step(self, tokens, cache, memory_kv, mask, position):
        """tokens (B, 1) at `position` -> logits (B, 1, V), the decoder's keys and values appended to the cache."""
        y = _scaled(self.tgt_emb.forward(tokens), self.scale)
        y = self.tgt_drop.forward(self.tgt_pos.forward(y, np.full(tokens.shape, position)))
        for i, block in enumerate(self.decoder):
            y = block.forward(y, None, mask, cache=cache.layer(i), memory_kv=memory_kv[i])
        cache.length += tokens.shape[1]
        return self.out.forward(y)

    def beam_search(self, src, bos_id, eos_id, max_len, beam_size=4, length_penalty=0.6, src_mask=None):
        """One source sequence src (1, S) -> the best (1, T) ids, scored by log-prob / ((5 + len) / 6)^alpha
        (Wu et al., 2016, as the 2017 paper uses). The beams are the rows of one KV cache, reordered after each
        step to follow their parents; cross-attention's keys and values are computed once."""
        src = check_ids(src, "src")
        if self.device != "cpu":
            raise NotImplementedError("beam_search runs on the CPU for now (greedy_decode runs on the device): "
                                      "model.to('cpu')")
        if src.shape[0] != 1:
            raise ValueError("beam_search decodes one sequence at a time: src must be (1, S)")
        if max_len + 1 > self.config.max_len:
            raise ValueError(f"max_len {max_len} + BOS exceeds the model's {self.config.max_len} positions")
        with self.evaluating():
            memory = self.encode(src, src_mask)
            mask = None if src_mask is None else np.repeat(np.asarray(src_mask) != 0, beam_size, axis=0)
            memory_kv = [tuple(np.ascontiguousarray(np.repeat(a, beam_size, axis=0))
                               for a in block.cross.sublayer.memory_kv(memory)) for block in self.decoder]
            cache = KVCache.for_blocks(self.decoder, beam_size, max_len + 1)
            beams = [(0.0, [bos_id])]
            finished = []
            for step in range(max_len):
                nb = len(beams)
                rows = _CacheRows(cache, nb)
                last = np.array([[b[1][-1]] for b in beams], np.int64)
                kv = [(k[:nb], v[:nb]) for k, v in memory_kv]
                logits = self._decode_step(last, rows, kv, None if mask is None else mask[:nb], step)
                cache.length = rows.length
                logp = logits[:, -1].astype(np.float64)
                logp = logp - logp.max(-1, keepdims=True)
                logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
                candidates = []
                for parent, ((score, seq), row) in enumerate(zip(beams, logp)):
                    for tok in np.argsort(row)[-beam_size:]:
                        candidates.append((score + row[tok], seq + [int(tok)], parent))
                candidates.sort(key=lambda c: c[0], reverse=True)
                beams, parents = [], []
                for score, seq, parent in candidates:
                    if seq[-1] == eos_id:
                        finished.append((score, seq))
                    else:
                        beams.append((score, seq))
                        parents.append(parent)
                    if len(beams) == beam_size:
                        break
                if not beams or len(finished) >= beam_size:
                    break
                for k, v in zip(cache.k, cache.v):  # each surviving beam takes its parent's keys and values
                    k[:len(parents), :cache.length] = k[parents, :cache.length]
                    v[:len(parents), :cache.length] = v[parents, :cache.length]
            pool = finished or beams
            best = max(pool, key=lambda c: c[0] / (((5 + len(c[1])) / 6) ** length_penalty))
        return np.array([best[1]], np.int64)


class _CacheRows:
    """The first `rows` sequences of a KVCache, as a cache of its own (the live beams of beam search)."""

    def __init__(self, cache, rows):
        self.cache, self.rows, self.length = cache, rows, cache.length

    def layer(self, i):
        return self.cache.k[i][:self.rows], self.cache.v[i][:self.rows], self.length
