"""A decoder-only transformer described as data, and the one model built from it.

`DecoderConfig` says everything that tells one decoder family from another: the norm (LayerNorm or RMSNorm, its
`1 + w` variant) and where it sits, q/k norms, biases, key/value heads and head_dim, positions (learned, or rotary
with a base per layer type, a layout, a partial width and a scaling rule), the attention window per layer, the
feed-forward (gated or plain) and its activation, the embedding scale, a tied head and logit soft-capping.
GPT-2 and Llama are instances (`GPTConfig.decoder()`, `LlamaConfig.decoder()`); so is every later family: its
description plus its name map (io/).

`Decoder` builds the layers from the description, trains by their hand-written backward, generates over a KV cache
(pytransformer.generate), and decodes through the C++ plan (cpp/decode.cpp, which reads the same description and
the weights' own specs): one sequence's next token is one row of `decode_batch`, the continuous-batching step the
server drives. Parameter names stay each family's own (NAMES), as checkpoints record them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import ops
from ..nn import (DecoderBlock, Dropout, Embedding, FeedForward, GatedFeedForward, LayerNorm, LearnedPositions, Linear,
                  MultiHeadAttention, RMSNorm, Rotary, Scale, SoftCap, TiedLMHead, rope_scaling, weights)
from ..nn.layers import FusedProduct
from .base import CausalLM, ChunkedCrossEntropy, check_ids, count_parameters, last_rows
from .config import ModelConfig

NORMS = ("layernorm", "rmsnorm")
PLACEMENTS = ("pre", "post", "sandwich")
POSITIONS = ("learned", "rotary")
FFNS = ("plain", "gated")
LAYER_TYPES = ("full", "sliding")
GATED_ACTIVATIONS = ("silu", "gelu_tanh")  # SwiGLU, GeGLU
ACTIVATIONS = ("silu", "gelu_tanh", "gelu", "relu")  # gelu: the exact (erf) form
_PLAN_ACTIVATION = {"silu": 0, "gelu_tanh": 1, "gelu": 2, "relu": 3}  # cpp/decode.h DecodePlan::Activation
_LAYER_ACTIVATION = {"gelu_tanh": "gelu", "gelu": "gelu_exact", "relu": "relu"}  # nn.Activation's names


@dataclass
class DecoderConfig(ModelConfig):
    """One decoder-only transformer. Sizes: C = n_embd, NH = n_head, NKV = n_kv_head, HS = head_dim, F =
    intermediate_size, V = vocab_size."""

    vocab_size: int
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int | None = None           # None: n_head (grouped-query attention when fewer)
    head_dim: int | None = None            # None: n_embd // n_head
    intermediate_size: int | None = None   # None: 4 * n_embd
    max_positions: int = 2048
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    norm_offset: float = 0.0               # 1.0: the norm scales by (1 + weight) (Gemma)
    norm_placement: str = "pre"            # pre (GPT-2, Llama), post (BERT-like), sandwich (pre and post: Gemma)
    qk_norm: bool = False                  # RMSNorm of each query and key head (Qwen3, Gemma 3)
    qkv_bias: bool = False                 # q, k, v biases (GPT-2, Qwen2)
    o_bias: bool = False                   # the attention output's bias (GPT-2)
    mlp_bias: bool = False                 # the feed-forward's biases (GPT-2)
    positions: str = "rotary"
    rope_theta: float = 10000.0
    rope_local_theta: float | None = None  # the sliding layers' base when it differs (Gemma 3)
    rope_interleaved: bool = False         # q/k rows in llama.cpp's order (GGUF): rotary pairs (2i, 2i + 1)
    partial_rotary_factor: float = 1.0     # the rotated share of each head (Phi-style)
    rope_scaling: dict | None = None       # a Hugging Face rope_scaling dict (linear, llama3, longrope, ...)
    sliding_window: int | None = None      # the window of the layers layer_types marks "sliding"
    layer_types: tuple | None = None       # per layer "full" or "sliding"; None: every layer full
    ffn: str = "gated"
    activation: str = "silu"
    embed_scale: bool = False              # embeddings times sqrt(n_embd) (Gemma)
    tie_word_embeddings: bool = True
    final_logit_softcapping: float | None = None
    query_pre_attn_scalar: float | None = None  # attention scale query_pre_attn_scalar ** -0.5 (default head_dim)
    dropout: float = 0.0
    init_std: float = 0.02
    scaled_out_init: bool = False          # GPT-2: projections into the residual stream at std / sqrt(2 n_layer)
    positions_std: float = 0.01            # learned positions' init

    def __post_init__(self):
        for name, value, allowed in (("norm", self.norm, NORMS), ("norm_placement", self.norm_placement, PLACEMENTS),
                                     ("positions", self.positions, POSITIONS), ("ffn", self.ffn, FFNS),
                                     ("activation", self.activation, ACTIVATIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        for name in ("vocab_size", "n_layer", "n_embd", "n_head", "max_positions"):
            if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_kv_head_ < 1 or self.n_head % self.n_kv_head_:
            raise ValueError(f"key/value heads {self.n_kv_head_} must divide query heads {self.n_head}")
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} must be divisible by n_head {self.n_head} (or give head_dim)")
        if self.positions == "rotary" and self.head_size % 2:
            raise ValueError(f"rotary attention needs an even head size, got {self.head_size}")
        if self.ffn == "gated" and self.activation not in GATED_ACTIVATIONS:
            raise NotImplementedError(f"a gated feed-forward with {self.activation} is not implemented yet (SwiGLU and "
                                      f"GeGLU are)")
        if self.layer_types is not None:
            self.layer_types = tuple(self.layer_types)
            if len(self.layer_types) != self.n_layer or not set(self.layer_types) <= set(LAYER_TYPES):
                raise ValueError(f"layer_types must be {self.n_layer} entries of {', '.join(LAYER_TYPES)}, got "
                                 f"{self.layer_types!r}")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, (int, np.integer))
                                                or self.sliding_window < 1):
            raise ValueError(f"sliding_window must be a positive integer or None, got {self.sliding_window!r}")
        if self.norm_offset and self.norm != "rmsnorm":
            raise ValueError(f"norm_offset needs norm 'rmsnorm', got {self.norm!r}")
        for name in ("final_logit_softcapping", "query_pre_attn_scalar"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number or None, got {value!r}")

    @property
    def n_kv_head_(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.n_embd // self.n_head

    @property
    def ffn_size(self) -> int:
        return 4 * self.n_embd if self.intermediate_size is None else self.intermediate_size

    def num_params(self) -> int:
        return count_parameters(Decoder, self)

    def layer_type(self, i: int) -> str:
        return "full" if self.layer_types is None else self.layer_types[i]

    def window(self, i: int) -> int:
        """Layer i's attention window (0: none): sliding_window on the layers layer_types marks "sliding"."""
        return self.sliding_window if self.sliding_window and self.layer_type(i) == "sliding" else 0

    def rope_local(self, i: int) -> bool:
        """Whether layer i rotates by the local table (rope_local_theta, never scaled): Gemma 3's sliding layers."""
        return self.layer_type(i) == "sliding" and self.rope_local_theta is not None

    @property
    def attn_scale(self) -> float:
        return (self.head_size if self.query_pre_attn_scalar is None else self.query_pre_attn_scalar) ** -0.5

    def unsupported(self) -> list:
        """The parts of this description the engine does not run yet (each raises when a model is built)."""
        gaps = []
        if self.partial_rotary_factor != 1.0:
            gaps.append("partial rotary")
        if rope_scaling.rope_type(self.rope_scaling) not in rope_scaling.TYPES:
            gaps.append(f"rope scaling {rope_scaling.rope_type(self.rope_scaling)!r}")
        return gaps

    def plan_unsupported(self) -> list:
        """The parts the layers run but the C++ decoding plan does not: such a model generates through the layers'
        cached path. (Norms after each residual only: no decoder family has them.)"""
        return ["post norms"] if self.norm_placement == "post" else []


class Decoder(CausalLM):
    """forward(idx (B, T) int) -> logits (B, T, V); loss(idx, targets or labels); backward(); generation
    (CausalLM) and decode_batch (the server's continuous batching). `config` is a DecoderConfig or a family config
    with `.decoder()` (GPTConfig, LlamaConfig)."""

    # attribute names of the embedding, learned positions and final norm: the parameter names checkpoints use
    NAMES = {"embed": "embed", "positions": "pos", "final_norm": "norm"}

    def __init__(self, config, seed: int = 0, device: str = "cpu"):
        self.config = config
        d = self.description = config.decoder() if hasattr(config, "decoder") else config
        gaps = d.unsupported()
        if gaps:
            raise NotImplementedError(f"this decoder needs {', '.join(gaps)}, which pytransformer does not run yet")
        C, std = d.n_embd, d.init_std
        out_std = std / math.sqrt(2 * d.n_layer) if d.scaled_out_init else std
        setattr(self, self.NAMES["embed"], Embedding(d.vocab_size, C, std))
        if d.positions == "learned":
            setattr(self, self.NAMES["positions"], LearnedPositions(d.max_positions, C, d.positions_std))
        if d.embed_scale:
            self.embed_scale = Scale(math.sqrt(C))
        self.drop = Dropout(d.dropout)
        # the global rotary table (rope_theta, rope_scaling) and Gemma 3's local one for its sliding layers (its own
        # base, never scaled, as in transformers and llama.cpp), keyed by whether a layer is local
        ropes = {False: Rotary(d.head_size, d.rope_theta, 256, d.rope_interleaved, d.rope_scaling, d.max_positions)} \
            if d.positions == "rotary" else {}
        if ropes and any(d.rope_local(i) for i in range(d.n_layer)):
            ropes[True] = Rotary(d.head_size, d.rope_local_theta, 256, d.rope_interleaved, None, d.max_positions)
        rope = ropes.get(False)
        qk_norm = (lambda: RMSNorm(d.head_size, d.norm_eps, d.norm_offset)) if d.qk_norm else None
        scale = None if d.query_pre_attn_scalar is None else d.attn_scale
        self.blocks = [DecoderBlock(attn=MultiHeadAttention(C, d.n_head, causal=True, bias=d.qkv_bias, std=std,
                                                            out_std=out_std, n_kv_head=d.n_kv_head_,
                                                            head_dim=d.head_dim, rope=ropes.get(d.rope_local(i)),
                                                            o_bias=d.o_bias, qk_norm=qk_norm, window=d.window(i),
                                                            scale=scale),
                                    ffn=self._feed_forward(d, out_std), norm=self._norm_factory(d),
                                    placement=d.norm_placement, dropout=d.dropout)
                       for i in range(d.n_layer)]
        setattr(self, self.NAMES["final_norm"], self._norm_factory(d)())
        self.lm_head = TiedLMHead(self.embedding.weight) if d.tie_word_embeddings else \
            Linear(C, d.vocab_size, False, std)
        if d.final_logit_softcapping:
            self.softcap = SoftCap(d.final_logit_softcapping)
        self.head = ChunkedCrossEntropy()
        self.tokenizer = None  # set by the loaders that know one
        self.rope = rope
        self._plan = None      # (generation, the C++ decoding plan), made on first use
        self._build(seed)
        if device != "cpu":
            self.to(device)

    @staticmethod
    def _norm_factory(d):
        if d.norm == "layernorm":
            return lambda: LayerNorm(d.n_embd, d.norm_eps)
        return lambda: RMSNorm(d.n_embd, d.norm_eps, d.norm_offset)

    embed_scale = softcap = None  # (Gemma's parts, when the description has them)

    @staticmethod
    def _feed_forward(d, out_std):
        if d.ffn == "gated":
            return GatedFeedForward(d.n_embd, d.ffn_size, bias=d.mlp_bias, std=d.init_std, out_std=out_std,
                                    activation=d.activation)
        return FeedForward(d.n_embd, d.ffn_size, _LAYER_ACTIVATION[d.activation], d.mlp_bias, d.init_std,
                           out_std)

    @property
    def embedding(self) -> Embedding:
        return getattr(self, self.NAMES["embed"])

    @property
    def positions_table(self) -> LearnedPositions | None:
        return getattr(self, self.NAMES["positions"], None)

    @property
    def final_norm(self):
        return getattr(self, self.NAMES["final_norm"])

    @property
    def max_positions(self) -> int:
        return self.description.max_positions

    decode_in_cpp = True  # one new token of one sequence through the C++ plan (False: the layers' Python path)

    # --- forward / backward -----------------------------------------------------------------------------------

    def forward(self, idx, cache=None, position_ids=None, key_mask=None, last_only=False, hidden=False):
        """idx (B, T) -> logits (B, T, V). cache: a KVCache whose `length` positions come before idx;
        position_ids (B, T): each token's position (default: counting on from the cache); key_mask
        (B, cache.length + T), 0 for padding. last_only: logits of the last position only (B, 1, V). hidden:
        the final norm's output (B, T, C) instead of logits."""
        d = self.description
        idx = check_ids(idx, "idx", d.max_positions if d.positions == "learned" else None)
        if idx.size and (idx.min() < 0 or idx.max() >= d.vocab_size):
            raise ValueError(f"idx values must lie in [0, {d.vocab_size})")
        if cache is not None and idx.shape == (1, 1) and key_mask is None and self._plan_applies() and (
                position_ids is None or int(np.asarray(position_ids).reshape(-1)[0]) == cache.length):
            return self._decode_step(idx, cache)
        self._begin_forward()
        start = cache.length if cache is not None else 0
        if position_ids is not None:
            position_ids = np.ascontiguousarray(position_ids, np.int64)
            if position_ids.shape != idx.shape:
                raise ValueError(f"position_ids must have the shape of idx {idx.shape}, got {position_ids.shape}")
        elif d.positions == "rotary" or cache is not None:
            position_ids = np.ascontiguousarray(
                np.broadcast_to(np.arange(start, start + idx.shape[1], dtype=np.int64), idx.shape))
        x = self.drop.forward(self._embed(idx, position_ids))
        rotary = position_ids if d.positions == "rotary" else None
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else cache.layer(i)
            if layer_cache is None and key_mask is None and rotary is None:
                x = block.forward(x)
            else:
                x = block.forward(x, cache=layer_cache, key_mask=key_mask, positions=rotary)
        if cache is not None:
            cache.length += idx.shape[1]
        if last_only:  # (generation's prefill: only the last position's next token is wanted)
            x = last_rows(x)
        x = self.final_norm.forward(x)
        return x if hidden else ChunkedCrossEntropy._logits(x, self.output_layers())

    def hidden(self, idx):
        """idx (B, T) -> the final norm's output (B, T, C): what the output layers make logits of."""
        return self.forward(idx, hidden=True)

    def output_layers(self) -> list:
        """The hidden rows' way to logits: the head product, then soft-capping when the description has it."""
        return [self.lm_head] if self.softcap is None else [self.lm_head, self.softcap]

    def backward(self, dloss=1.0):
        """After loss(): accumulate every parameter's gradient into the flat gradient buffer."""
        self._begin_backward()
        dx = self.final_norm.backward(self.head.backward(dloss))  # (through the output layers)
        for i in reversed(range(len(self.blocks))):
            dx = self.blocks[i].backward(dx)
            if self.on_block_done is not None:
                self.on_block_done(i)
        dx = self.drop.backward(dx)
        if self.positions_table is not None:
            dx = self.positions_table.backward(dx)
        if self.embed_scale is not None:
            dx = self.embed_scale.backward(dx)
        if self.adapter is None:  # (an adapter trains: the frozen table takes no gradient)
            self.embedding.backward(dx)

    # --- decoding through the C++ plan ------------------------------------------------------------------------

    def _plan_applies(self) -> bool:
        return self.decode_in_cpp and self.device == "cpu" and not self.keeps_state and self.adapter is None and \
            not self.description.plan_unsupported()

    def _embed(self, idx, positions):
        """idx (B, T), positions (B, T) or None -> the layers' input (B, T, C): embeddings (times the embedding
        scale), plus learned positions."""
        x = self.embedding.forward(idx)
        if self.embed_scale is not None:
            x = self.embed_scale.forward(x)
        if self.positions_table is not None:
            x = self.positions_table.forward(x, positions)
        return x

    def _rotaries(self) -> list:
        """The rotary tables' owners the layers use, the model's own (rope_theta) first: the plan's tables 0 and 1."""
        return list(dict.fromkeys(r for r in [self.rope] + [b.attn.sublayer.rope for b in self.blocks]
                                  if r is not None))

    def _decode_step(self, idx, cache):
        """One new token of one sequence at position cache.length: one row of decode_batch over a cache of one slot
        (the same kernels in the same order as the layers' cached path, so the same numbers)."""
        pos = cache.length
        if pos >= cache.capacity:
            raise ValueError(f"the KV cache holds {cache.capacity} positions; {pos + 1} were asked for")
        logits = self.decode_batch(idx.reshape(1), np.zeros(1, np.int64), np.array([pos], np.int64), cache.k, cache.v)
        cache.length += 1
        return logits.reshape(1, 1, -1)

    def decode_batch(self, ids, slots, positions, k, v, logit_rows=None):
        """One token for each of B rows held in slots of shared caches (continuous batching): ids, slots,
        positions int64 (B,), k and v per layer (S, T_max, NKV, HS) -> logits (B, V), or (R, V) for the rows
        logit_rows (R,) only. Row b's token sits at positions[b] of slot slots[b] and attends to that slot's
        positions up to its own, which must be filled before it or by earlier rows of the same slot: rows may share
        a slot in increasing positions, so a prompt is prefilled within a decode step. One C++ call for every
        layer; the products read each weight once for all rows."""
        plan = self.plan()
        ids = np.ascontiguousarray(ids, np.int64).reshape(-1)
        positions = np.ascontiguousarray(positions, np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.description.vocab_size):
            raise ValueError(f"ids must lie in [0, {self.description.vocab_size})")
        if positions.size and (positions.min() < 0 or positions.max() >= self.max_positions):
            raise ValueError(f"positions must lie in [0, {self.max_positions})")
        # (cos, sin) of each rotary base, as many rows each
        tables = [r.tables(int(positions.max()) if positions.size else 0) for r in self._rotaries()] + [(None, None)] * 2
        x = np.ascontiguousarray(self._embed(ids.reshape(-1, 1), positions.reshape(-1, 1)).reshape(len(ids), -1))
        if logit_rows is not None:
            logit_rows = np.ascontiguousarray(logit_rows, np.int64)
        rows = len(ids) if logit_rows is None else len(logit_rows)
        logits = np.empty((rows, self.description.vocab_size), np.float32)
        plan.step(x, logits, np.ascontiguousarray(slots, np.int64), positions, k, v, *tables[0], logit_rows,
                  *tables[1])
        return logits if self.softcap is None else self.softcap.forward(logits)

    def new_slots(self, S, T_max):
        """Empty caches for S sequences of up to T_max positions: (k, v), per layer (S, T_max, NKV, HS)."""
        cache = self.new_cache(S, T_max)
        return cache.k, cache.v

    def plan(self):
        """The C++ decoding plan over the current weights (remade when any weight was swapped or moved)."""
        gaps = self.description.plan_unsupported()
        if gaps:
            raise NotImplementedError(f"the C++ decoding plan does not run {', '.join(gaps)} yet (generate() runs "
                                      f"this model through its layers)")
        if self.adapter is not None:
            raise NotImplementedError("the C++ decoding plan does not run an unmerged LoRA adapter (generate() runs "
                                      "the layers; merge_adapter() folds it in)")
        if self._plan is None or self._plan[0] != weights.generation():
            self._plan = (weights.generation(), self._make_plan())
        return self._plan[1]

    def _make_plan(self):
        d = self.description
        if self.device != "cpu":
            raise RuntimeError(f"the decoding plan runs on the CPU; this model is on {self.device}")

        def spec(layer):
            return layer.stored.spec() + (None if layer.bias is None else layer.bias.data,)

        def fused(product):
            weight = product.weight()
            if weight is not None and all((m.bias is None) == (product.layers[0].bias is None)
                                          for m in product.layers):
                return [weight.spec() + (product.bias(),)]
            return [spec(m) for m in product.layers]

        def norm(ln):
            return (ln.weight.data, ln.bias.data if isinstance(ln, LayerNorm) else None)

        rotaries = self._rotaries()
        layers = []
        for i, block in enumerate(self.blocks):
            attn, ffn = block.attn.sublayer, block.ffn.sublayer
            if attn._qkv is None:
                attn._qkv = FusedProduct((attn.q, attn.k, attn.v))
            if d.ffn == "gated":
                if ffn._gate_up is None:
                    ffn._gate_up = FusedProduct((ffn.gate, ffn.up))
                up, down = fused(ffn._gate_up), spec(ffn.down)
            else:
                up, down = [spec(ffn.fc1)], spec(ffn.fc2)
            layer = {"attn_norm": norm(block.attn.ln), "qkv": fused(attn._qkv), "o": spec(attn.o),
                     "ffn_norm": norm(block.ffn.ln), "up": up, "down": down, "window": d.window(i),
                     "rotary_table": rotaries.index(attn.rope) if attn.rope is not None else 0}
            if d.norm_placement == "sandwich":
                layer.update(post_attn_norm=norm(block.attn.post_ln), post_ffn_norm=norm(block.ffn.post_ln))
            if d.qk_norm:
                layer.update(q_norm=norm(attn.q_norm), k_norm=norm(attn.k_norm))
            layers.append(layer)
        scale = self.blocks[0].attn.sublayer.scale if self.blocks else None
        description = {"C": d.n_embd, "NH": d.n_head, "NKV": d.n_kv_head_, "HS": d.head_size, "F": d.ffn_size,
                       "V": d.vocab_size, "eps": d.norm_eps, "layernorm": d.norm == "layernorm",
                       "attn_scale": 1.0 / math.sqrt(d.head_size) if scale is None else scale,  # (ops' default)
                       "norm_offset": d.norm_offset, "sandwich": d.norm_placement == "sandwich",
                       "qk_norm": d.qk_norm, "rotary": d.positions == "rotary", "rotary_tables": max(1, len(rotaries)),
                       "interleaved": d.rope_interleaved, "gated": d.ffn == "gated",
                       "activation": _PLAN_ACTIVATION[d.activation]}
        return ops.decode_plan(description, layers, norm(self.final_norm), spec(self.lm_head))

    # --- chat -------------------------------------------------------------------------------------------------

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
            raise ValueError("this model has no tokenizer (load it from a GGUF file or a folder with tokenizer "
                             "files, or set model.tokenizer)")
        return self.tokenizer
