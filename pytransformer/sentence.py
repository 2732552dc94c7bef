"""Sentence embeddings without torch, from any sentence-transformers folder: modules.json read in order --
Transformer (a BERT-family encoder), Pooling (cls / max / mean / mean_sqrt_len_tokens / weightedmean / lasttoken,
several concatenated), Dense (a linear layer and its activation), Normalize -- with the prompts and the maximum
sequence length its configs name, computed as sentence-transformers computes them. A folder without modules.json
is read as sentence-transformers reads one: the encoder, then mean pooling."""

from __future__ import annotations

import json
import os

import numpy as np

from .encoders import Batcher, check_batch_size, load_encoder, model_folder, optional_json
from .io.hf_common import read_json
from .io.safetensors import load_file

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")  # the legacy order
LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                       "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                       "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
ACTIVATIONS = {"torch.nn.modules.activation.Tanh": np.tanh, "torch.nn.modules.linear.Identity": lambda x: x,
               "torch.nn.modules.activation.Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
               "torch.nn.modules.activation.ReLU": lambda x: np.maximum(x, 0)}


def read_modules(folder):
    """modules.json's list of modules, or None when the folder has none."""
    path = os.path.join(folder, "modules.json")
    if not os.path.isfile(path):
        return None
    if os.path.getsize(path) > 1 << 20:
        raise ValueError(f"{path}: over 1 MiB, far more than a list of modules")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"{path} must be a list of modules (objects), got {type(value).__name__}")
    return value


def _module_kind(entry, path):
    kind = str(entry.get("type", "")).rpartition(".")[2]
    if kind not in ("Transformer", "Pooling", "Dense", "Normalize"):
        raise NotImplementedError(f"{path}/modules.json: module {entry.get('type')!r} is not supported (Transformer, "
                                  f"Pooling, Dense and Normalize are)")
    return kind


def pooling_modes(cfg, path):
    """The pooling modes of a Pooling config, in the order their outputs are concatenated: 'pooling_mode' as
    listed, or the legacy pooling_mode_* flags in POOLING_MODES order."""
    modes = cfg.get("pooling_mode")
    if modes is None:
        modes = [m for key, m in LEGACY_POOLING_KEYS.items() if cfg.get(key)]
    modes = [modes] if isinstance(modes, str) else list(modes)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad or not modes:
        raise ValueError(f"{path}: pooling modes must be among {POOLING_MODES}, got {modes}")
    return modes


def pool(hidden, mask, modes):
    """hidden (B, T, C) float32, mask (B, T) of 0/1 (padding on the right) -> (B, C * len(modes)): each mode as
    sentence-transformers' Pooling computes it, concatenated in the order given."""
    m = mask[:, :, None].astype(np.float32)
    count = np.maximum(m.sum(1), 1e-9)
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(hidden[np.arange(len(hidden)), mask.argmax(1)])
        elif mode == "max":
            out.append(np.where(m > 0, hidden, -np.inf).max(1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            out.append((hidden * m).sum(1) / (count if mode == "mean" else np.sqrt(count)))
        elif mode == "weightedmean":
            w = m * np.arange(1, hidden.shape[1] + 1, dtype=np.float32)[None, :, None]
            out.append((hidden * w).sum(1) / np.maximum(w.sum(1), 1e-9))
        else:  # lasttoken: the last real position
            out.append(hidden[np.arange(len(hidden)), mask.shape[1] - 1 - mask[:, ::-1].argmax(1)])
    return np.concatenate(out, 1).astype(np.float32)


class Dense:
    """A sentence-transformers Dense module: activation(x @ W.T + b) from its folder (config.json +
    model.safetensors)."""

    def __init__(self, folder):
        cfg = read_json(os.path.join(folder, "config.json"))
        name = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
        if name not in ACTIVATIONS:
            raise NotImplementedError(f"{folder}: activation {name!r} is not supported ({', '.join(ACTIVATIONS)})")
        weights = os.path.join(folder, "model.safetensors")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{folder}: no model.safetensors (a pytorch_model.bin needs torch to read)")
        t = load_file(weights)
        self.weight = np.asarray(t["linear.weight"], np.float32)
        self.bias = np.asarray(t["linear.bias"], np.float32) if "linear.bias" in t else None
        self.activation = ACTIVATIONS[name]

    def __call__(self, x):
        """x (B, in) -> (B, out)."""
        y = x @ self.weight.T
        return self.activation(y + self.bias if self.bias is not None else y).astype(np.float32)


def normalize_rows(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class SentenceEncoder:
    """SentenceEncoder(name_or_path=None, dtype="float32", activation_dtype=None): a sentence-transformers model.
    name_or_path: a folder, a packaged name ('minilm') or a repo id in the local Hugging Face cache; None: the
    packaged all-MiniLM-L6-v2. dtype: the weights the products read ("float32", or "bfloat16" / "int8" for speed);
    activation_dtype: what the int8 weights' products round their input to ("int8": integer dot products, only with
    dtype="int8"; "float32"; None: nn.weights.default_activations), as Model.set_activation_dtype."""

    def __init__(self, path=None, dtype="float32", activation_dtype=None):
        if activation_dtype == "int8" and dtype != "int8":  # (only int8 weights have int8-activation products)
            raise ValueError(f"activation_dtype='int8' needs dtype='int8' (the CLI's --dtype int8): {dtype!r} "
                             "weights take float32 activations")
        self.path = path = model_folder(None if path is None else os.fspath(path))
        entries = read_modules(path) or [{"type": "Transformer", "path": ""}, {"type": "Pooling"}]
        self.steps = []  # after the encoder: ("pool", modes) / ("dense", Dense) / ("normalize", None)
        include_prompt = True
        for entry in entries:
            kind = _module_kind(entry, path)
            folder = os.path.join(path, str(entry.get("path") or ""))
            if kind == "Transformer":
                self.model = load_encoder(folder).set_weight_dtype(dtype)
                if activation_dtype is not None:
                    self.model.set_activation_dtype(activation_dtype)
                self.batcher = Batcher(folder, self.model.config.max_positions,
                                       self.model.config.pad_token_id or 0)
                self.max_seq_length = self.batcher.max_length
            elif kind == "Pooling":
                cfg = optional_json(folder, "config.json", {}) if entry.get("path") else {}
                self.steps.append(("pool", pooling_modes(cfg, folder) if cfg else ["mean"]))
                include_prompt = cfg.get("include_prompt", True)
            elif kind == "Dense":
                self.steps.append(("dense", Dense(folder)))
            else:
                self.steps.append(("normalize", None))
        st = optional_json(path, "config_sentence_transformers.json", {})
        self.prompts = dict(st.get("prompts") or {})
        self.default_prompt_name = st.get("default_prompt_name")
        self.include_prompt = include_prompt
        self.dim = self._dim()

    @property
    def tokenizer(self):
        """The tokenizer (tokenizer.json); its encode gives a text's ids without the special tokens."""
        return self.batcher.tokenizer

    def token_ids(self, text: str) -> list[int]:
        """The ids of text as the model reads them: special tokens added, cut at max_seq_length."""
        return self.batcher.token_ids(text)

    def _dim(self):
        C = self.model.config.n_embd
        for kind, step in self.steps:
            C = C * len(step) if kind == "pool" else step.weight.shape[0] if kind == "dense" else C
        return C

    def _prompt(self, prompt_name, prompt):
        if prompt is not None:
            return prompt
        name = prompt_name or self.default_prompt_name
        if name is None:
            return ""
        if name not in self.prompts:
            raise ValueError(f"prompt_name must be one of {sorted(self.prompts)} (this model's prompts), got {name!r}")
        return self.prompts[name]

    def encode(self, sentences, batch_size: int = 32, normalize: bool | None = None, show_progress: bool = False,
               prompt_name: str | None = None, prompt: str | None = None):
        """A string -> its embedding (dim,); a list of strings -> (N, dim) float32.

        Texts are batched by length (padding is masked, so batching never changes a result). prompt_name: one of
        the model's prompts (config_sentence_transformers.json, e.g. "query"), or prompt: the text itself, put
        before every sentence. normalize: None as the model's modules say, False skips its Normalize, True makes
        every row unit length. show_progress: a progress bar on stderr (tqdm when installed, else a counter)."""
        single = isinstance(sentences, str)
        sentences = [sentences] if single else list(sentences)
        bad = next((i for i, s in enumerate(sentences) if not isinstance(s, str)), None)
        if bad is not None:
            raise TypeError(f"sentences[{bad}] must be a str, got {type(sentences[bad]).__name__}")
        batch_size = check_batch_size(batch_size)
        text = self._prompt(prompt_name, prompt)
        skip = len(self.batcher.token_ids(text)) - len(self.batcher.after) if text and not self.include_prompt else 0
        rows = [self.batcher.token_ids(text + s) for s in sentences]
        out = np.zeros((len(sentences), self.dim), np.float32)
        order = np.argsort([len(r) for r in rows], kind="stable")
        progress = progress_counter(len(sentences)) if show_progress else None
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            ids, mask, _ = self.batcher.pad([rows[j] for j in idx])
            with self.model.evaluating():  # inference: nothing kept, safe to share across threads
                x = self.model.encode(ids, mask)
            pool_mask = mask.copy()
            pool_mask[:, :skip] = 0
            for kind, step in self.steps:
                if kind == "pool":
                    x = pool(x, pool_mask, step)
                elif kind == "dense":
                    x = step(x)
                elif normalize is not False:
                    x = normalize_rows(x)
            out[idx] = normalize_rows(x) if normalize else x
            if progress:
                progress(len(idx))
        if progress:
            progress(0, done=True)
        return out[0] if single else out

    def similarity(self, a, b=None) -> np.ndarray:
        """Cosine similarity matrix of the embeddings of a (and b, default a)."""
        ea = normalize_rows(np.atleast_2d(self.encode(a)))
        eb = ea if b is None else normalize_rows(np.atleast_2d(self.encode(b)))
        return ea @ eb.T


def progress_counter(total, unit="sentence"):
    """update(n, done=False): tqdm's bar when tqdm is installed, else a counter rewritten in place on stderr."""
    import sys

    try:
        from tqdm import tqdm

        bar = tqdm(total=total, unit=unit, file=sys.stderr)

        def update(n, done=False):
            bar.update(n)
            if done:
                bar.close()
        return update
    except ImportError:
        seen = [0]

        def update(n, done=False):
            seen[0] += n
            sys.stderr.write(f"\rembedded {seen[0]:,} of {total:,} {unit}s" + ("\n" if done else ""))
            sys.stderr.flush()
        return update
