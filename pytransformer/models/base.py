"""What every model shares: the flat parameter buffer, the dropout RNG, cross-entropy heads, checks."""

from __future__ import annotations

import functools
import itertools
import math
import threading

import numpy as np

from .. import ops
from ..generate import KVCache, beam_search, check_cache_dtype, generate, score, stream
from ..nn import Dropout, FlatParameters, Module, MultiHeadAttention, lora, weights
from ..nn.layers import HoldsWeight


# How each family looks in Hugging Face transformers: model class -> a function of a built model giving its
# format (to_hf / to_ours name conversion, save). Filled by the family registry (pytransformer.io.families) when
# the package loads: models never import io, and state_dict() and friends delegate through this table.
_HF_FORMATS: dict = {}


def register_hf_format(model_class, make_format) -> None:
    _HF_FORMATS[model_class] = make_format


_PEFT_FORMAT: list = []  # io.peft.PeftFormat (names, model) -> a model's peft face, registered as the package loads


def register_peft_format(make_format) -> None:
    _PEFT_FORMAT[:] = [make_format]


_STEPS = itertools.count(1)  # thread-safe in CPython: each training-mode forward takes a fresh number
_OWNERS = threading.Lock()   # makes a model's step owner (Model._owner) a check-and-set


class _ShapesOnly(threading.local):
    active = False


_shapes_only = _ShapesOnly()


class _Unwritten(threading.local):
    active = False


_unwritten = _Unwritten()


class unwritten_parameters:
    """`with unwritten_parameters(): model = Family(config)` builds the model with its flat buffers allocated but
    never written (no initial values drawn): pages the loader then fills cost memory, the others (weights kept
    quantised elsewhere, e.g. in a mapped GGUF file) cost none."""

    def __enter__(self):
        _unwritten.active = True

    def __exit__(self, *exc):
        _unwritten.active = False


def parameter_shapes(model_class, config) -> dict:
    """{name: shape} of model_class(config)'s parameters, from its module tree alone: nothing is allocated (a
    175B-parameter config is described in milliseconds). Tied parameters appear once, as in the built model."""
    _shapes_only.active = True
    try:
        model = model_class(config)
    finally:
        _shapes_only.active = False
    return {name: p.shape for name, p in model.named_parameters()}


def count_parameters(model_class, config) -> int:
    """The parameter count of model_class(config), without allocating it."""
    return sum(math.prod(shape) for shape in parameter_shapes(model_class, config).values())


class Model(Module):
    """A module tree that owns its parameters: call `_build(seed)` at the end of __init__."""

    def _build(self, seed: int) -> None:
        if _shapes_only.active:
            return  # counting parameters (config.num_params()): the tree's shapes are all that is wanted
        rng = np.random.default_rng(seed)
        self.params = FlatParameters(self, rng, initialise=not _unwritten.active)
        self.dropout_rng = np.random.default_rng(rng.integers(0, 2**63))
        for m in self.modules():
            if isinstance(m, Dropout):
                m.rng = self.dropout_rng

    # --- one training step at a time: loss() in training mode, then exactly one backward() --------------------
    # A forward saves activations in the layers; another one before backward() (a second loss(), another thread's
    # call) would replace them, and a second backward() would read dlogits that the first one wrote over the
    # logits. A forward that keeps state opens a step owned by its thread until that thread's backward() returns:
    # the same thread may start afresh (its next forward replaces the state), another thread's forward or
    # backward meanwhile raises RuntimeError before it touches anything (saved state, dropout RNG), and a
    # backward() after a replaced forward raises too. Forwards under `with model.evaluating():` (generate,
    # evaluation, attention maps) keep nothing and are never in the way; eval mode alone (dropout off) still keeps
    # state, so gradients of an eval-mode model work.
    on_block_done = None  # called with each block's index as backward finishes it (distributed.GradientSync)
    _step = None       # the forward whose saved state the layers hold
    _loss_step = None  # the forward a pending loss() was computed from; None when no backward() is due
    _owner = None      # the thread whose step is open (from a forward that keeps state to its backward's end)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "config_class" in vars(cls):  # the family's config counts its parameters with this class
            cls.config_class.model_class = cls
        if "backward" in vars(cls):  # each family's backward() closes the step it finishes
            cls.backward = _closes_step(vars(cls)["backward"])

    def _begin_forward(self) -> None:
        """Called by each family at the start of a forward; one that keeps state owns the layers' saved state."""
        if self.keeps_state:
            with _OWNERS:
                self._check_owner("a forward that keeps state")
                self._owner = threading.current_thread()
                self._step = next(_STEPS)

    def _check_owner(self, what) -> None:
        owner, me = self._owner, threading.current_thread()
        if owner is not None and owner is not me and owner.is_alive():
            raise RuntimeError(f"{what} from thread {me.name!r} while thread {owner.name!r} has a training step "
                               f"open on this {type(self).__name__} (a forward that keeps state, until its "
                               "backward() returns): it would replace that step's saved activations. Run inference "
                               "under `with model.evaluating():`; train one model from one thread")

    def _loss_computed(self) -> None:
        if self.keeps_state:
            self._loss_step = self._step

    def _begin_backward(self) -> None:
        with _OWNERS:
            self._check_owner("backward()")
        if self._loss_step is None:
            raise RuntimeError("backward() needs a loss() first, once per backward() (a second backward(), or one "
                               "after a loss() under evaluating(), has nothing to use)")
        if self._loss_step != self._step:
            raise RuntimeError("another forward ran between loss() and backward() (another thread, or a second "
                               "call): its activations replaced the ones this backward() needs; run inference "
                               "under `with model.evaluating():`, or call loss() again")
        self._loss_step = None

    def _end_step(self) -> None:
        with _OWNERS:
            if self._owner is threading.current_thread():
                self._owner = None

    def zero_grad(self) -> None:
        self.trainable.zero_grad()

    # --- LoRA adapters (nn.lora; peft's names and files: io/peft.py) -------------------------------------------
    adapter = None  # the attached nn.lora.Adapter (add_adapter), else None

    @property
    def trainable(self) -> FlatParameters:
        """The parameters training steps: the adapter's A and B while one is attached, else the model's own."""
        return self.params if self.adapter is None else self.adapter.params

    def add_adapter(self, rank=8, alpha=16, dropout=0.0, targets=None, seed=0) -> "Model":
        """Attach a LoRA adapter (peft's LoraConfig: r, lora_alpha, lora_dropout, target_modules): every weight
        stays frozen in its own format and each targeted projection adds alpha / rank * dropout(x) A^T B^T, A
        (rank, in) seeded, B (out, rank) zero. targets: module names as peft takes them (default: every attention
        and MLP projection, q_proj ... down_proj) or one pattern. Training then steps `model.trainable`. -> self"""
        if self.adapter is not None:
            raise ValueError("this model has an adapter attached already; merge_adapter() or remove_adapter() first")
        peft = self._peft()
        layers = peft.select(targets)
        kinds = sorted({peft.modules[n][0].rsplit(".", 1)[-1] for n in layers})
        self.adapter = lora.attach(self, layers, rank, alpha, dropout, kinds, seed, peft.adapted(layers).values())
        return self

    def remove_adapter(self) -> "Model":
        """Detach the adapter: the base model as it was. -> self"""
        self._require_adapter().detach(self)
        self.adapter = None
        return self

    def save_adapter(self, folder) -> None:
        """adapter_config.json + adapter_model.safetensors, as peft saves them (PeftModel.from_pretrained loads it)."""
        self._peft().save(self._require_adapter(), folder)

    def merge_adapter(self) -> "Model":
        """Fold the adapter into float32 weights (W + alpha / rank B A; a narrow or quantised model is widened to
        float32 first) and detach it: the model then trains, saves (save_pretrained) and decodes as any other.
        -> self"""
        adapter = self._require_adapter()
        self.remove_adapter()
        self.set_weight_dtype("float32")
        for layer, weight in adapter.layers.values():
            ops.add_into(layer.weight.data, weight.delta())
        weights.changed()
        return self

    def _require_adapter(self):
        if self.adapter is None:
            raise ValueError("this model has no adapter (add_adapter, or from_pretrained(..., adapter=DIR))")
        return self.adapter

    def _peft(self):
        fmt = self._hf()
        if fmt is None:
            raise ValueError(f"{type(self).__name__} has no Hugging Face counterpart, so no peft adapter")
        return _PEFT_FORMAT[0](fmt.names, self)

    device = "cpu"
    runs_on_cuda = False  # the families whose layers run on device arrays (GPT, Llama, BERT, ViT, Transformer)

    def to(self, device: str) -> "Model":
        """Move the parameters and gradients to "cuda" (pytransformer.cuda: forward, backward, the optimizer
        step and generation then run there, inputs and targets given as NumPy arrays as before) or back to
        "cpu". GGUF-quantised weights move as blocks (the CUDA products decode them); bfloat16 / int8 copies
        (set_weight_dtype) are dropped for the float32 weights. -> self"""
        if device == "cuda" and not self.runs_on_cuda:
            raise NotImplementedError(f"{type(self).__name__} runs on the CPU only")
        if self.adapter is not None:
            lora.check_device(device)  # (before anything moves)
        ops.check_device(device)  # (a clear error when there is no CUDA module or device)
        self.params.to(device)  # (float32 weights read their Parameters, so they follow)
        for m in self.modules():
            if hasattr(m, "to_device"):  # weights in other formats move (or change format) as each class decides
                m.to_device(device)
        weights.changed()  # fused products and decode plans made over the old buffers are stale
        self.device = device
        return self

    def set_weight_dtype(self, dtype: str) -> "Model":
        """"bfloat16" or "int8": every Linear and tied output layer multiplies with a narrow copy of its weight
        (inference: half or a quarter of the bytes a decoded token reads; int8 symmetric per output row; sums in
        float32; embeddings, norms and activations stay float32). "float32" goes back (training needs it). -> self"""
        weights.check_dtype(dtype)  # (before any layer changes)
        if self.adapter is not None:
            raise ValueError("set the weight dtype before add_adapter (or merge_adapter() first): an attached adapter "
                             "keeps its base's format")
        for m in self.modules():
            if hasattr(m, "set_weight_dtype") and not isinstance(m, Model):
                m.set_weight_dtype(dtype)
        return self

    def set_activation_dtype(self, dtype: str) -> "Model":
        """"int8": the products with GGUF integer blocks quantise their input to int8 blocks (llama.cpp's Q8_0 /
        Q8_K) and sum in integers; "float32": they widen the blocks and sum in float32 (the exact path). Other
        weights keep float32 activations. The default: nn.weights.default_activations. -> self"""
        weights.check_activations(dtype)
        for m in self.modules():
            if isinstance(m, HoldsWeight):
                m.stored = m.stored.with_activations(dtype)
        return self

    def activation_dtypes(self) -> set:
        """The activation dtypes its products run now ({"float32"}, {"int8"}, or both)."""
        return {m.stored.activations for m in self.modules() if isinstance(m, HoldsWeight)}

    def num_parameters(self) -> int:
        return self.params.size

    def named_parameters_dict(self) -> dict:
        return {name: p for name, p in self.params}

    def params_dict(self) -> dict:
        """Our parameter name -> float32 array (views into the flat buffer)."""
        return {name: p.data for name, p in self.params}

    def _hf(self):
        """This model's Hugging Face format, or None for a family transformers does not have."""
        for cls in type(self).__mro__:
            if cls in _HF_FORMATS:
                return _HF_FORMATS[cls](self)
        return None

    def state_dict(self) -> dict:
        """Parameter values under the Hugging Face names (ours for a family transformers does not have); with an
        adapter attached, its A and B under peft's names."""
        if self.adapter is not None:
            return self._peft().to_peft({name: p.data for name, p in self.adapter.params})
        fmt = self._hf()
        return fmt.to_hf(self.params_dict()) if fmt else self.params_dict()

    def grad_dict(self) -> dict:
        """Gradients (after backward) under the same names as state_dict(); with an adapter attached, its A and B
        gradients under peft's names."""
        if self.adapter is not None:  # (the adapter's, under peft's names)
            return self._peft().to_peft({name: p.grad for name, p in self.adapter.params})
        grads = {name: p.grad for name, p in self.params}
        fmt = self._hf()
        return fmt.to_hf(grads) if fmt else grads

    def load_state_dict(self, state: dict) -> None:
        """Values under the names state_dict() uses (an attached adapter's under peft's); missing, extra or
        mis-shaped tensors raise ValueError."""
        if self.adapter is not None:
            self.load_params(self._peft().from_peft(state, self.adapter, "the state dict"))
            return
        fmt = self._hf()
        self.load_params(fmt.to_ours(state) if fmt else state)

    def save_pretrained(self, folder) -> None:
        """config.json + model.safetensors, as transformers writes them (GPT-2, BERT, ViT)."""
        fmt = self._hf()
        if fmt is None:
            raise ValueError(f"{type(self).__name__} has no Hugging Face counterpart; use checkpoint.save_checkpoint")
        fmt.save(self, folder)

    def attention_maps(self, *inputs, **kwargs) -> np.ndarray:
        """Softmax attention weights (L, NH, Tq, Tk) of every self-attention layer for the first input of the
        batch, recomputed on request (the fused kernel never materialises them)."""
        layers = [m for m in self.modules() if isinstance(m, MultiHeadAttention)]
        for m in layers:
            m.keep_probs = True
        try:
            with self.evaluating():
                self._attention_forward(*inputs, **kwargs)
        finally:
            for m in layers:
                m.keep_probs = False
        return np.stack([m.attention_probs()[0] for m in layers if not m._saved[6]])  # self-attention only

    def _attention_forward(self, *inputs, **kwargs):
        return self.forward(*inputs, **kwargs)

    def load_params(self, state: dict, strict: bool = True) -> None:
        """Copy arrays (our names) into the parameters (an attached adapter's, when there is one); a missing, extra or
        mis-shaped tensor raises ValueError."""
        named = {name: p for name, p in self.trainable}
        missing = [n for n in named if n not in state]
        extra = [n for n in state if n not in named]
        if strict and (missing or extra):
            raise ValueError(f"state dict does not match the model: missing {missing}, unexpected {extra}")
        for name, p in named.items():
            if name in state:
                value = np.asarray(state[name])
                if value.shape != p.shape:
                    raise ValueError(f"{name}: expected shape {p.shape}, got {value.shape}")
                p.data[...] = value


def _rows_at(x, B, T, t):
    """int64 (B,): the flat row of position t of each sequence, where x lives."""
    return ops.like(np.arange(B, dtype=np.int64) * T + t % T, x)


def _closes_step(backward):
    """A family's backward(), which then ends the step its thread owns, whether it returns or raises."""
    @functools.wraps(backward)
    def run(self, *args, **kwargs):
        try:
            return backward(self, *args, **kwargs)
        finally:
            self._end_step()
    return run


def row_at(x, t):
    """x (B, T, C) -> (B, C), every sequence's position t (a [CLS] token, the last position), where x lives."""
    B, T, C = x.shape
    return ops.embedding_forward(_rows_at(x, B, T, t), x.reshape(B * T, C))  # (gathered as embedding rows)


def row_at_backward(drow, shape, t):
    """row_at's gradient: zeros of shape (B, T, C) with drow (B, C) at position t, where drow lives."""
    B, T, C = shape
    return ops.embedding_backward(drow, _rows_at(drow, B, T, t), B * T).reshape(B, T, C)


def last_rows(x):
    """x (B, T, C) -> (B, 1, C), each sequence's last position (generation's prefill), where x lives."""
    return row_at(x, -1).reshape(x.shape[0], 1, x.shape[2])


def check_ids(ids, name, max_T=None):
    if not isinstance(ids, np.ndarray) or ids.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer numpy array (B, T), got "
                        f"{getattr(ids, 'dtype', type(ids).__name__)}")
    if ids.ndim != 2:
        raise ValueError(f"{name} must be (B, T), got shape {ids.shape}")
    if max_T is not None and ids.shape[1] > max_T:
        raise ValueError(f"{name} has {ids.shape[1]} positions; the model takes at most {max_T}")
    return np.ascontiguousarray(ids, dtype=np.int64)


def check_targets(targets, shape) -> None:
    """targets must be integers of shape (one per position)."""
    if not isinstance(targets, np.ndarray) or targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be an integer numpy array {tuple(shape)}, got "
                        f"{getattr(targets, 'dtype', type(targets).__name__)}")
    if targets.shape != shape:
        raise ValueError(f"targets must have shape {tuple(shape)} (one per position), got {tuple(targets.shape)}")


class CrossEntropyHead:
    """Mean cross-entropy over logits (..., V) with integer targets (...), -100 ignored, optionally label-smoothed
    (the target distribution (1 - eps) onehot + eps / V). With keep (the model's keeps_state) it keeps what the
    backward needs and writes dlogits in place over the logits."""

    _saved = None

    def __init__(self, label_smoothing: float = 0.0):
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def loss(self, logits, targets, ignore_index=-100, keep=True):
        V = logits.shape[-1]
        check_targets(targets, logits.shape[:-1])
        flat_logits = logits.reshape(-1, V)
        flat_targets = np.ascontiguousarray(targets, np.int64).reshape(-1)
        flat_targets = ops.like(flat_targets, logits)
        loss, _, lse = ops.crossentropy_forward(flat_logits, flat_targets, ignore_index,
                                                label_smoothing=self.label_smoothing)
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss is {loss}: non-finite logits, or every target is ignore_index")
        if keep:  # (a loss under evaluating() leaves a pending training step's state alone)
            self._saved = (flat_logits, flat_targets, lse, ignore_index, logits.shape)
        return loss

    def backward(self, dloss=1.0):
        """dlogits, in the logits' shape (the logits buffer is overwritten)."""
        if self._saved is None:
            raise RuntimeError("backward() needs a loss() first, once per backward()")
        logits, targets, lse, ignore, shape = self._saved
        self._saved = None  # dlogits now sit where the logits were: a second backward() has nothing to use
        ops.crossentropy_backward(logits, targets, lse, dloss, ignore, label_smoothing=self.label_smoothing,
                                  dlogits=logits)
        return logits.reshape(shape)


def takes_no_gradient(layer) -> bool:
    """Whether a layer's backward leaves every Parameter alone: frozen with a plain weight (an adapter's own
    matrices do take gradients), or without Parameters."""
    own = getattr(layer, "stored", None) if getattr(layer, "frozen", False) else layer
    return not isinstance(own, Module) or next(own.named_parameters(), None) is None


class ChunkedCrossEntropy(CrossEntropyHead):
    """The next-token loss of a language model from its last hidden rows x (..., C) through its output layers
    (the head product, soft-capping: modules with forward / backward), ROWS rows at a time: the (N, V) logits and
    their gradient are never held whole (8 x 256 rows of a 49,152-token vocabulary would be 403 MB each).

    When the output layers take no gradient of their own (frozen under an adapter, or parameter-free), the forward
    takes each block on through the cross-entropy's and the layers' backward while its logits are at hand and keeps
    dx (N, C) for dloss = 1 (backward scales it): no head product is computed twice. Otherwise the forward keeps
    x's rows and each row's log-sum-exp, and backward recomputes each block's logits (the weight's gradient then
    accumulates in backward, for the dloss it is given)."""

    ROWS = 256  # a block's logits: ROWS x V float32 (48 MiB at V = 49,152)

    def loss(self, x, targets, ignore_index=-100, keep=True, layers=()):
        """x (..., C), targets (...) -> the mean cross-entropy over the targets that are not ignore_index."""
        C = x.shape[-1]
        check_targets(targets, x.shape[:-1])
        rows = x.reshape(-1, C)
        host_targets = np.ascontiguousarray(targets, np.int64).reshape(-1)
        flat_targets = ops.like(host_targets, x)
        starts = range(0, len(rows), self.ROWS)
        counts = [int(np.count_nonzero(host_targets[s:s + self.ROWS] != ignore_index)) for s in starts]
        fused = keep and all(map(takes_no_gradient, layers))
        dx = ops.zeros(rows.shape, ops.device_of(x)) if fused else None
        total, lse = 0.0, ops.zeros((len(rows),), ops.device_of(x))
        for s, count in zip(starts, counts):
            if count:
                block = slice(s, s + self.ROWS)
                logits = self._logits(rows[block], layers)
                block_loss, _, _ = ops.crossentropy_forward(logits, flat_targets[block], ignore_index,
                                                            label_smoothing=self.label_smoothing, lse=lse[block])
                total += block_loss * count
                if fused:
                    self._block_backward(dx[block], logits, flat_targets[block], lse[block],
                                         count / sum(counts), ignore_index, layers)
        loss = total / sum(counts) if sum(counts) else float("nan")
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss is {loss}: non-finite logits, or every target is ignore_index")
        if keep:  # (a loss under evaluating() leaves a pending training step's state alone)
            self._saved = (rows, flat_targets, lse, ignore_index, x.shape, counts, layers, dx)
        return loss

    @staticmethod
    def _logits(rows, layers):
        for layer in layers:
            rows = layer.forward(rows)
        return rows

    def _block_backward(self, dx, logits, targets, lse, dloss, ignore, layers):
        """dx (n, C) = one block's gradient at the hidden rows, from its logits (n, V) (overwritten by dlogits)."""
        d = ops.crossentropy_backward(logits, targets, lse, dloss, ignore, label_smoothing=self.label_smoothing,
                                      dlogits=logits)
        for layer in reversed(layers):
            d = layer.backward(d)
        ops.copy_into(dx, d)  # (rows of a device array too)

    def backward(self, dloss=1.0):
        """dx (..., C): the loss's gradient at the hidden rows (the output layers' weight gradients accumulate)."""
        if self._saved is None:
            raise RuntimeError("backward() needs a loss() first, once per backward()")
        rows, targets, lse, ignore, shape, counts, layers, dx = self._saved
        self._saved = None
        if dx is not None:  # (computed by the forward for dloss = 1)
            return (dx if dloss == 1.0 else ops.scale_(dx, dloss)).reshape(shape)
        dx = ops.zeros(rows.shape, ops.device_of(rows))
        for s, count in zip(range(0, len(rows), self.ROWS), counts):
            if count:
                block = slice(s, s + self.ROWS)
                self._block_backward(dx[block], self._logits(rows[block], layers), targets[block], lse[block],
                                     dloss * count / sum(counts), ignore, layers)
        return dx.reshape(shape)


class CausalLM(Model):
    """What every decoder-only language model shares (GPT, Llama): the next-token loss, KV-cache generation,
    streaming and scoring (pytransformer.generate). A family provides forward(idx, cache=, position_ids=,
    key_mask=), hidden(idx) (the last hidden rows, (B, T, C)) and output_layers() (what makes them logits, in
    order; `head` is a ChunkedCrossEntropy over them), backward(), `blocks` (DecoderBlocks) and `max_positions`."""

    runs_on_cuda = True
    kv_cache_dtype = None  # set_kv_cache_dtype's choice; None: cache_dtype() decides

    def new_cache(self, B, T_max):
        """A KV cache for B sequences of up to T_max positions (every layer, on the model's device, cache_dtype())."""
        return KVCache.for_blocks(self.blocks, B, T_max, self.device, self.cache_dtype())

    def cache_dtype(self) -> str:
        """The element type of the KV caches generation and serving make: set_kv_cache_dtype's, else "float16"
        where a product runs int8 activations on the CPU (the approximate fast path: those products round their
        inputs to 8 bits, a half keeps 11; llama.cpp's default cache type) and "float32" otherwise (float32
        activations stay the exact path)."""
        if self.kv_cache_dtype is not None:
            return self.kv_cache_dtype
        return "float16" if self.device == "cpu" and "int8" in self.activation_dtypes() else "float32"

    def set_kv_cache_dtype(self, dtype) -> "CausalLM":
        """"float16" (half the cache's memory and the bytes each decoded token reads of it) or "float32" for the KV
        caches new_cache makes from now on; None goes back to the default (cache_dtype). -> self"""
        self.kv_cache_dtype = None if dtype is None else check_cache_dtype(dtype, self.device).name
        return self

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def loss(self, idx, targets=None, ignore_index=-100, labels=None):
        """Mean next-token cross-entropy. Either targets (B, T), the id each position should predict, or
        labels (B, T) as transformers takes them (aligned with idx, shifted by one inside; -100 ignored)."""
        if (targets is None) == (labels is None):
            raise ValueError("pass exactly one of targets (already shifted) or labels (shifted inside)")
        if labels is not None:
            labels = check_ids(labels, "labels")
            targets = np.full_like(labels, ignore_index)
            targets[:, :-1] = labels[:, 1:]
        loss = self.head.loss(self.hidden(idx), targets, ignore_index, self.keeps_state, self.output_layers())
        self._loss_computed()
        return loss

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, rng=None, **kw):
        """idx (B, T) followed by up to max_new_tokens new ids, with a KV cache; temperature 0 is greedy. More
        options (top_p, repetition_penalty, seed, stop, attention_mask for left-padded batches): see
        pytransformer.generate.stream."""
        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, rng=rng, **kw)

    def beam_search(self, idx, max_new_tokens, beam_size=4, length_penalty=0.6, stop=None):
        """The likeliest continuation of one prompt idx (1, T) by beam search (pytransformer.generate.beam_search)."""
        return beam_search(self, idx, max_new_tokens, beam_size=beam_size, length_penalty=length_penalty, stop=stop)

    def score(self, idx, attention_mask=None):
        """Per-token log-probabilities (B, T - 1) of each next token (pytransformer.generate.score)."""
        return score(self, idx, attention_mask)

    def stream(self, idx, max_new_tokens, temperature=1.0, **kw):
        """Yields each new token (B,) as it is generated (pytransformer.generate.stream)."""
        return stream(self, idx, max_new_tokens, temperature=temperature, **kw)
