"""The encoder-decoder Transformer of "Attention Is All You Need" (2017): sinusoidal positions, post-LN
blocks, ReLU feed-forward, embeddings scaled by sqrt(d_model), the encoder output feeding every decoder
block's cross-attention, and the output projection tied to the target embedding. Greedy decoding and beam search
are pytransformer.generate's, over the decoder of a batch of sources (`decoder_for`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import ops
from ..nn import (DecoderBlock, Dropout, Embedding, EncoderBlock, FeedForward, LayerNorm, MultiHeadAttention,
                  SinusoidalPositions, TiedLMHead)
from ..generate import KVCache, beam_search, generate
from .base import CrossEntropyHead, Model, check_ids, last_rows
from .config import ModelConfig


@dataclass
class TransformerConfig(ModelConfig):
    src_vocab_size: int
    tgt_vocab_size: int
    n_embd: int = 512
    n_head: int = 8
    n_encoder_layer: int = 6
    n_decoder_layer: int = 6
    intermediate_size: int = 2048
    dropout: float = 0.1
    max_positions: int = 512
    share_embeddings: bool = False  # one table for source and target (needs equal vocabularies)
    norm_eps: float = 1e-5
    label_smoothing: float = 0.0    # the paper trained with 0.1 (section 5.4)

    SIZES = ("src_vocab_size", "tgt_vocab_size", "n_embd", "n_head", "n_encoder_layer", "n_decoder_layer",
             "intermediate_size", "max_positions")


def _key_mask(src_mask):
    """src_mask (B, S), nonzero = a real source token -> the attention kernels' bool key mask, or None."""
    return None if src_mask is None else np.ascontiguousarray(np.asarray(src_mask) != 0)


def _scaled(x, scale):
    """x * scale, in place: x is an embedding's fresh output or gradient."""
    return ops.scale_(x, float(scale))


class Transformer(Model):
    config_class = TransformerConfig
    runs_on_cuda = True

    """forward(src (B, S), tgt_in (B, T), src_mask (B, S) or None) -> logits (B, T, V_tgt)."""

    def __init__(self, config: TransformerConfig, seed: int = 0):
        c = self.config = config
        std = c.n_embd ** -0.5  # so that embedding * sqrt(n_embd) has unit scale
        self.src_emb = Embedding(c.src_vocab_size, c.n_embd, std)
        if c.share_embeddings:
            if c.src_vocab_size != c.tgt_vocab_size:
                raise ValueError("share_embeddings needs equal source and target vocabularies")
            self.tgt_emb = Embedding(c.tgt_vocab_size, c.n_embd, std)
            self.tgt_emb.weight = self.src_emb.weight  # one table, two lookups (each keeps its own ids)
        else:
            self.tgt_emb = Embedding(c.tgt_vocab_size, c.n_embd, std)
        self.src_pos = SinusoidalPositions(c.max_positions, c.n_embd)
        self.tgt_pos = SinusoidalPositions(c.max_positions, c.n_embd)
        self.src_drop, self.tgt_drop = Dropout(c.dropout), Dropout(c.dropout)
        C = c.n_embd
        norm = lambda: LayerNorm(C, c.norm_eps)  # noqa: E731
        self.encoder = [EncoderBlock(attn=MultiHeadAttention(C, c.n_head), ffn=FeedForward(C, c.intermediate_size, "relu"),
                                     norm=norm, placement="post", dropout=c.dropout)
                        for _ in range(c.n_encoder_layer)]
        self.decoder = [DecoderBlock(attn=MultiHeadAttention(C, c.n_head, causal=True),
                                     ffn=FeedForward(C, c.intermediate_size, "relu"),
                                     norm=norm, placement="post", dropout=c.dropout,
                                     cross=MultiHeadAttention(C, c.n_head))
                        for _ in range(c.n_decoder_layer)]
        self.out = TiedLMHead(self.tgt_emb.weight)  # the output projection shares the target embedding
        self.head = CrossEntropyHead(c.label_smoothing)
        self.scale = np.float32(math.sqrt(c.n_embd))
        self._build(seed)

    def encode(self, src, src_mask=None):
        """-> memory (B, S, C)."""
        src = check_ids(src, "src", self.config.max_positions)
        mask = _key_mask(src_mask)
        self._begin_forward()
        x = self._embed(self.src_emb, self.src_pos, self.src_drop, src)
        for block in self.encoder:
            x = block.forward(x, mask)
        return x

    def decode(self, tgt_in, memory, src_mask=None):
        """-> logits (B, T, V_tgt) for target inputs (shifted right, starting with BOS)."""
        tgt_in = check_ids(tgt_in, "tgt", self.config.max_positions)
        mask = _key_mask(src_mask)
        self._begin_forward()
        y = self._embed(self.tgt_emb, self.tgt_pos, self.tgt_drop, tgt_in)
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
        self._embed_backward(self.tgt_emb, self.tgt_pos, self.tgt_drop, dy)
        dx = dmemory
        for block in reversed(self.encoder):
            dx = block.backward(dx)
        self._embed_backward(self.src_emb, self.src_pos, self.src_drop, dx)

    def _embed(self, emb, pos, drop, ids, position_ids=None):
        """ids (B, T) -> dropout(embedding * sqrt(C) + positions) (B, T, C), for the source or the target side."""
        return drop.forward(pos.forward(_scaled(emb.forward(ids), self.scale), position_ids))

    def _embed_backward(self, emb, pos, drop, dout):
        """dout (B, T, C) -> the embedding's gradient (of the side _embed ran)."""
        emb.backward(_scaled(pos.backward(drop.backward(dout)), self.scale))

    # --- decoding: pytransformer.generate drives the decoder of a batch of sources ---------------------------

    def decoder_for(self, src, src_mask=None, copies=1):
        """The decoder of these sources (B, S) as generation drives any decoder (pytransformer.generate): the
        sources encoded once and each decoder layer's cross-attention keys and values computed once; each source
        row repeated `copies` times (the beams of beam search)."""
        with self.evaluating():
            memory = self.encode(src, src_mask)
            memory_kv = [block.cross.sublayer.memory_kv(memory) for block in self.decoder]
        mask = _key_mask(src_mask)
        if copies != 1:
            memory_kv = [tuple(np.ascontiguousarray(np.repeat(a, copies, axis=0)) for a in kv) for kv in memory_kv]
            mask = None if mask is None else np.repeat(mask, copies, axis=0)
        return _SourceDecoder(self, memory_kv, mask, memory.shape[0] * copies)

    def greedy_decode(self, src, bos_id, eos_id, max_len, src_mask=None):
        """-> (B, <= max_len + 1) ids starting with BOS; a finished row is padded with EOS. The decoder runs one
        position per step over a KV cache, and cross-attention's keys and values are computed once."""
        self._check_target_length(max_len)
        decoder = self.decoder_for(src, src_mask)
        bos = np.full((decoder.rows, 1), bos_id, np.int64)
        return generate(decoder, bos, max_len, temperature=0.0, stop=eos_id)

    def beam_search(self, src, bos_id, eos_id, max_len, beam_size=4, length_penalty=0.6, src_mask=None):
        """One source sequence src (1, S) -> the best (1, T) ids starting with BOS, scored by
        log-prob / ((5 + len) / 6)^alpha (Wu et al., 2016, as the 2017 paper uses): pytransformer.generate's
        beam_search over this source's decoder."""
        src = check_ids(src, "src")
        if src.shape[0] != 1:
            raise ValueError("beam_search decodes one sequence at a time: src must be (1, S)")
        if self.device != "cpu":  # (before encoding: the beams' copies of the memory are CPU arrays)
            raise NotImplementedError("beam_search runs on the CPU for now (greedy_decode runs on the device): "
                                      "model.to('cpu')")
        self._check_target_length(max_len)
        decoder = self.decoder_for(src, src_mask, copies=beam_size)
        return beam_search(decoder, np.array([[bos_id]], np.int64), max_len, beam_size=beam_size,
                           length_penalty=length_penalty, stop=eos_id)

    def _check_target_length(self, max_len):
        if max_len + 1 > self.config.max_positions:
            raise ValueError(f"max_len {max_len} + BOS exceeds the model's {self.config.max_positions} positions")


class _SourceDecoder:
    """A Transformer's decoder over fixed encoder memory: the decoder protocol of pytransformer.generate
    (new_cache, max_positions, device, evaluating, forward with a cache). The memory's rows are the sources; a
    forward of fewer rows (the live beams of one source) reads the first ones."""

    def __init__(self, model, memory_kv, mask, rows):
        self.model, self.memory_kv, self.mask, self.rows = model, memory_kv, mask, rows
        self.max_positions, self.device = model.config.max_positions, model.device

    def new_cache(self, B, T_max):
        return KVCache.for_blocks(self.model.decoder, B, T_max, self.device)

    def evaluating(self):
        return self.model.evaluating()

    def forward(self, tokens, cache, position_ids, key_mask=None, last_only=False):
        """tokens (N, T) at position_ids (N, T) after the cache's positions -> logits (N, T, V), or (N, 1, V)
        with last_only; the decoder's keys and values appended to the cache."""
        m, N = self.model, tokens.shape[0]
        memory_kv = self.memory_kv if N == self.rows else [(k[:N], v[:N]) for k, v in self.memory_kv]
        mask = None if self.mask is None else self.mask[:N]
        y = m._embed(m.tgt_emb, m.tgt_pos, m.tgt_drop, check_ids(tokens, "tokens"), position_ids)
        for i, block in enumerate(m.decoder):
            y = block.forward(y, None, mask, cache=cache.layer(i), key_mask=key_mask, memory_kv=memory_kv[i])
        cache.length += tokens.shape[1]
        return m.out.forward(last_rows(y) if last_only else y)
