"""Llama: decoder-only, pre-norm blocks with RMSNorm, rotary positions inside attention, grouped-query attention
(n_kv_head key/value heads shared by n_head query heads), a SwiGLU feed-forward, no biases; the LM head tied to
the token embedding or its own (SmolLM2, Llama 2/3, TinyLlama, Mistral-style configs without sliding windows)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .. import _core
from ..nn import (DecoderBlock, Embedding, GatedFeedForward, Linear, MultiHeadAttention, RMSNorm, Rotary,
                  TiedLMHead)
from ..nn import weights
from ..nn.layers import FusedProduct
from .base import CausalLM, CrossEntropyHead, check_ids, count_parameters, last_rows


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    n_layer: int = 2
    n_embd: int = 64                 # hidden_size
    n_head: int = 4
    n_kv_head: int = 2               # num_key_value_heads (grouped-query attention; n_head for plain MHA)
    intermediate_size: int = 172     # the SwiGLU hidden width
    max_positions: int = 2048        # max_position_embeddings (rotary: the longest context it was trained for)
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    head_dim: int | None = None      # None: n_embd // n_head
    rope_interleaved: bool = False   # q and k projection rows in llama.cpp's order (GGUF): rotary pairs (2i, 2i + 1)

    def __post_init__(self):
        hs = self.head_size
        if self.n_head < 1 or self.n_kv_head < 1 or self.n_head % self.n_kv_head:
            raise ValueError(f"key/value heads {self.n_kv_head} must divide query heads {self.n_head}")
        if hs < 2 or hs % 2:
            raise ValueError(f"rotary attention needs an even head size, got {hs}")

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.n_embd // max(self.n_head, 1)

    def to_dict(self):
        return asdict(self)

    def num_params(self) -> int:
        return count_parameters(Llama, self)


# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M-Instruct's config.json)
SMOLLM2_135M = LlamaConfig(vocab_size=49152, n_layer=30, n_embd=576, n_head=9, n_kv_head=3, intermediate_size=1536,
                           max_positions=8192, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)


class Llama(CausalLM):
    """forward(idx (B, T) int) -> logits (B, T, V); loss(idx, targets or labels); backward(). Parameters under
    the names: embed.weight, blocks.i.attn.ln.weight (input RMSNorm), blocks.i.attn.sublayer.{q,k,v,o}.weight,
    blocks.i.ffn.ln.weight, blocks.i.ffn.sublayer.{gate,up,down}.weight, norm.weight, lm_head.weight (untied)."""

    def __init__(self, config: LlamaConfig, seed: int = 0, device: str = "cpu"):
        c = self.config = config
        C, std = c.n_embd, 0.02
        self.embed = Embedding(c.vocab_size, C, std)
        rope = Rotary(c.head_size, c.rope_theta, 256, c.rope_interleaved)  # one table for every layer, grown on demand
        self.blocks = [DecoderBlock(attn=MultiHeadAttention(C, c.n_head, causal=True, bias=False, std=std,
                                                            n_kv_head=c.n_kv_head, head_dim=c.head_dim, rope=rope),
                                    ffn=GatedFeedForward(C, c.intermediate_size, bias=False, std=std),
                                    norm=lambda: RMSNorm(C, c.rms_norm_eps), placement="pre")
                       for _ in range(c.n_layer)]
        self.norm = RMSNorm(C, c.rms_norm_eps)
        self.lm_head = TiedLMHead(self.embed.weight) if c.tie_word_embeddings else Linear(C, c.vocab_size, False, std)
        self.head = CrossEntropyHead()
        self.tokenizer = None  # set by the loaders that know one (GGUF metadata)
        self.rope = rope
        self._plan = None      # the C++ decoding step (_core.DecodePlan), made on first use
        self._build(seed)
        if device != "cpu":
            self.to(device)

    decode_in_cpp = True  # one new token of one sequence: the C++ plan (False: the layers' Python path)

    @property
    def max_positions(self) -> int:
        return self.config.max_positions

    def forward(self, idx, cache=None, position_ids=None, key_mask=None, last_only=False):
        """idx (B, T) -> logits (B, T, V). cache: a KVCache whose `length` positions come before idx;
        position_ids (B, T): each token's rotary position (default: counting on from the cache); key_mask
        (B, cache.length + T), 0 for padding. last_only: logits of the last position only (B, 1, V)."""
        idx = check_ids(idx, "idx")
        if idx.size and (idx.min() < 0 or idx.max() >= self.config.vocab_size):
            raise ValueError(f"idx values must lie in [0, {self.config.vocab_size})")
        if self.decode_in_cpp and self.device == "cpu" and cache is not None and idx.shape == (1, 1) and \
                key_mask is None and \
                not self.keeps_state and (
                position_ids is None or int(np.asarray(position_ids).reshape(-1)[0]) == cache.length):
            return self._decode_step(idx, cache)
        self._begin_forward()
        if position_ids is not None:
            position_ids = np.ascontiguousarray(position_ids, np.int64)
            if position_ids.shape != idx.shape:
                raise ValueError(f"position_ids must have the shape of idx {idx.shape}, got {position_ids.shape}")
        x = self.embed.forward(idx)
        start = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = np.ascontiguousarray(
                np.broadcast_to(np.arange(start, start + idx.shape[1], dtype=np.int64), idx.shape))
        for i, block in enumerate(self.blocks):
            x = block.forward(x, cache=None if cache is None else cache.layer(i), key_mask=key_mask,
                              positions=position_ids)
        if cache is not None:
            cache.length += idx.shape[1]
        if last_only:  # (generation's prefill: only the last position's next token is wanted)
            x = last_rows(x)
        return self.lm_head.forward(self.norm.forward(x))

    def _decode_step(self, idx, cache):
        """One new token of one sequence at position cache.length, run by the C++ plan (one call for every layer;
        the same kernels in the same order as the layers' cached path, so the same numbers)."""
        if self._plan is None:
            self._plan = self._make_plan()
        pos = cache.length
        if pos >= cache.capacity:
            raise ValueError(f"the KV cache holds {cache.capacity} positions; {pos + 1} were asked for")
        cos, sin = self.rope.tables(pos)
        x = self.embed.forward(idx)
        logits = np.empty((1, 1, self.config.vocab_size), np.float32)
        self._plan.step(x.reshape(-1), logits.reshape(-1), pos, cache.k, cache.v, cos, sin)
        cache.length += 1
        return logits

    def decode_batch(self, ids, slots, positions, k, v, logit_rows=None):
        """One token for each of B rows held in slots of shared caches (continuous batching): ids, slots,
        positions int64 (B,), k and v per layer (S, T_max, NKV, HS) -> logits (B, V), or (R, V) for the rows
        logit_rows (R,) only. Row b's token sits at positions[b] of slot slots[b] and attends to that slot's
        positions up to its own, which must be filled before it or by earlier rows of the same slot: rows may share
        a slot in increasing positions, so a prompt is prefilled within a decode step. One C++ call for every
        layer; the products read each weight once for all rows."""
        if self._plan is None:
            self._plan = self._make_plan()
        ids = np.ascontiguousarray(ids, np.int64)
        cos, sin = self.rope.tables(int(np.max(positions)) if len(positions) else 0)
        x = np.ascontiguousarray(self.embed.forward(ids.reshape(-1, 1)).reshape(len(ids), -1))
        if logit_rows is not None:
            logit_rows = np.ascontiguousarray(logit_rows, np.int64)
        logits = np.empty((len(ids) if logit_rows is None else len(logit_rows), self.config.vocab_size), np.float32)
        self._plan.step_batch(x, logits, np.ascontiguousarray(slots, np.int64),
                              np.ascontiguousarray(positions, np.int64), k, v, cos, sin, logit_rows)
        return logits

    def _make_plan(self):
        c = self.config
        layers = []
        for block in self.blocks:
            attn, ffn = block.attn.sublayer, block.ffn.sublayer
            if attn._qkv is None:
                attn._qkv = FusedProduct((attn.q, attn.k, attn.v))
            if ffn._gate_up is None:
                ffn._gate_up = FusedProduct((ffn.gate, ffn.up))
            layers.append((block.attn.ln.weight.data, attn._qkv.specs(), _spec(attn.o), block.ffn.ln.weight.data,
                           ffn._gate_up.specs(), _spec(ffn.down)))
        return _core.DecodePlan((c.n_embd, c.n_head, c.n_kv_head, c.head_size, c.intermediate_size, c.vocab_size),
                                c.rms_norm_eps, layers, self.norm.weight.data, _spec(self.lm_head),
                                c.rope_interleaved)

    def set_weight_dtype(self, dtype: str) -> "Llama":
        self._plan = None  # (it points at the weights of the old dtype)
        return super().set_weight_dtype(dtype)

    def load_params(self, state: dict, strict: bool = True) -> None:
        self._plan = None
        super().load_params(state, strict)

    def backward(self, dloss=1.0):
        """After loss(): accumulate every parameter's gradient into the flat gradient buffer."""
        self._begin_backward()
        dx = self.norm.backward(self.lm_head.backward(self.head.backward(dloss)))
        for i in reversed(range(len(self.blocks))):
            dx = self.blocks[i].backward(dx)
            if self.on_block_done is not None:
                self.on_block_done(i)
        self.embed.backward(dx)

    # --- chat ------------------------------------------------------------------------------------------------

    def chat(self, messages, max_new_tokens=256, temperature=0.0, **kw) -> str:
        """The assistant's reply to messages ([{"role": ..., "content": ...}, ...]) through the tokenizer's chat
        template; generation stops at the end-of-turn token. Sampling options as generate()."""
        return "".join(self.chat_stream(messages, max_new_tokens, temperature=temperature, **kw))

    def chat_stream(self, messages, max_new_tokens=256, temperature=0.0, **kw):
        """Yields the reply's text piece by piece as it is generated."""
        tok = self._require_tokenizer()
        ids = np.array([tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))], np.int64)
        yield from tok.stream_text(self.stream(ids, max_new_tokens, temperature=temperature,
                                               stop=tok.stop_ids, **kw))

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer (load it from a GGUF file, or set model.tokenizer)")
        return self.tokenizer


def _spec(layer):
    return layer.stored.spec()
