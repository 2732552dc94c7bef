"""Training checkpoints: one safetensors file with the parameters (model names), the optimizer state
(`optim.*`), and in its metadata the step, the model family and config, the tokenizer and every RNG state
(data sampling, dropout) as JSON, so that a resumed run continues with exactly the same losses. Written
atomically (temporary file + fsync + rename): a crash mid-write leaves the previous checkpoint intact."""

from __future__ import annotations

import json

import numpy as np

from .io.families import FAMILIES, family_named
from .io.families import family_of as _family_of
from .io.resolve import CHECKPOINT_FORMAT
from .io.safetensors import load_file, read_metadata, save_file


def family_of(model) -> str:
    return _family_of(model).name


def save_checkpoint(path, model, optimizer=None, step=0, rngs=None, tokenizer=None, extra=None) -> None:
    tensors = {f"model.{name}": p.data for name, p in model.trainable}  # (an adapter's A and B alone, when attached)
    if optimizer is not None:
        for key, value in optimizer.state_dict().items():
            tensors[f"optim.{key}"] = np.asarray(value)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "family": family_of(model),
        "config": json.dumps(model.config.to_dict()),
        "step": str(int(step)),
        "rngs": json.dumps({name: rng.bit_generator.state for name, rng in (rngs or {}).items()}),
        "dropout_rng": json.dumps(model.dropout_rng.bit_generator.state),
    }
    if tokenizer is not None:
        meta["tokenizer"] = tokenizer_to_json(tokenizer)
    if extra:
        meta["extra"] = json.dumps(extra)
    save_file(tensors, path, meta)


def load_checkpoint(path, optimizer_factory=None):
    """-> dict(model, optimizer or None, step, rngs {name: Generator}, tokenizer json or None, extra)."""
    meta = read_metadata(path)
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("family") not in {f.name for f in FAMILIES}:
        raise ValueError(f"{path}: not a pytransformer checkpoint (format {meta.get('format')!r})")
    family = family_named(meta["family"])
    model = family.model_class(family.config_class.from_dict(json.loads(meta["config"])))
    optimizer = optimizer_factory(model) if optimizer_factory is not None else None
    step, rngs = restore_checkpoint(path, model, optimizer)
    return {"model": model, "optimizer": optimizer, "step": step, "rngs": rngs,
            "tokenizer": meta.get("tokenizer"), "extra": json.loads(meta.get("extra", "null"))}


def restore_checkpoint(path, model, optimizer=None):
    """Load a checkpoint's state into an existing model (and optimizer) -> (step, rngs {name: Generator})."""
    meta = read_metadata(path)
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("family") != family_of(model):
        raise ValueError(f"{path}: not a {family_of(model)} checkpoint of pytransformer")
    # compared through the config class, so fields added (or renamed) since the checkpoint was written are read
    if type(model.config).from_dict(json.loads(meta["config"])) != model.config:
        raise ValueError(f"{path}: its model config differs from the model being trained")
    tensors = load_file(path)
    model.load_params({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    model.dropout_rng.bit_generator.state = json.loads(meta["dropout_rng"])
    if optimizer is not None:
        optimizer.load_state_dict({k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")})
    rngs = {}
    for name, state in json.loads(meta.get("rngs", "{}")).items():
        rngs[name] = np.random.default_rng()
        rngs[name].bit_generator.state = state
    return int(meta["step"]), rngs


def load_trained(path, dtype=None):
    """The model of a checkpoint (eval mode), its tokenizer as `model.tokenizer` (None when it carries none), for
    inference: what `pytransformer.from_pretrained` gives for a `train` run."""
    loaded = load_checkpoint(path)
    model = loaded["model"].eval()
    model.tokenizer = tokenizer_from_json(loaded["tokenizer"]) if loaded["tokenizer"] else None
    return model if dtype is None else model.set_weight_dtype(dtype)


def tokenizer_to_json(tokenizer) -> str:
    """A checkpoint's tokenizer as JSON: a CharTokenizer (its characters) or a GPT2Tokenizer (GPT-2's byte-level BPE:
    vocabulary and merges, as in vocab.json and merges.txt, so the checkpoint needs no other file)."""
    from .tokenizers import CharTokenizer, GPT2Tokenizer

    if isinstance(tokenizer, CharTokenizer):
        return tokenizer.to_json()
    if type(tokenizer) is GPT2Tokenizer:
        merges = sorted(tokenizer.ranks, key=tokenizer.ranks.get)
        return json.dumps({"type": "gpt2-bpe", "encoder": tokenizer.encoder, "merges": [" ".join(m) for m in merges]})
    raise TypeError(f"a checkpoint keeps a CharTokenizer or a GPT2Tokenizer, not a {type(tokenizer).__name__}")


def tokenizer_from_json(text):
    """The tokenizer tokenizer_to_json wrote."""
    from .tokenizers import CharTokenizer, GPT2Tokenizer

    data = json.loads(text)
    if data.get("type") == "gpt2-bpe":
        return GPT2Tokenizer(data["encoder"], [tuple(m.split(" ")) for m in data["merges"]])
    return CharTokenizer.from_json(text)
