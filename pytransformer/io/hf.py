"""Hugging Face checkpoints: explicit name tables between transformers' tensor names and ours, and
`from_pretrained(folder)` for GPT-2, BERT and ViT (config.json + model.safetensors, or a sharded index)."""

from __future__ import annotations

import json
import os

import numpy as np

from .safetensors import load_file


def read_folder(path):
    """-> (config dict, {name: array}) from config.json and model.safetensors or model.safetensors.index.json."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise ValueError(f"{path}: no config.json")
    with open(cfg_path) as f:
        config = json.load(f)
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(single):
        return config, load_file(single)
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            if os.path.basename(shard) != shard:
                raise ValueError(f"{index}: shard name {shard!r} must be a file in the folder")
            tensors.update(load_file(os.path.join(path, shard)))
        return config, tensors
    raise ValueError(f"{path}: no model.safetensors (or sharded index) found")


class NameMap:
    """Pairs (hf name, our name, shape change): `to_ours` checks that every tensor the model needs is present
    with the right size and names whatever is missing or left over."""

    def __init__(self, pairs, ignore=()):
        self.pairs = pairs  # (hf, ours, reshape-to-ours or None)
        self.ignore = tuple(ignore)

    def to_ours(self, hf: dict, shapes: dict) -> dict:
        out, missing, bad = {}, [], []
        for hf_name, ours, _ in self.pairs:
            if ours not in shapes:
                continue
            if hf_name not in hf:
                missing.append(hf_name)
                continue
            value = np.asarray(hf[hf_name], np.float32)
            if value.size != int(np.prod(shapes[ours])):
                bad.append(f"{hf_name} {value.shape} (expected {shapes[ours]})")
                continue
            out[ours] = value.reshape(shapes[ours])
        used = {hf_name for hf_name, ours, _ in self.pairs if ours in shapes}
        extra = [n for n in hf if n not in used and not n.endswith(self.ignore)]
        if missing or bad:
            raise ValueError(f"checkpoint does not fit the model: missing {missing}, mis-shaped {bad}, "
                             f"unexpected {extra}")
        return out

    def to_hf(self, ours: dict) -> dict:
        out = {}
        for hf_name, name, shape in self.pairs:
            if name in ours:
                out[hf_name] = ours[name] if shape is None else np.asarray(ours[name]).reshape(shape)
        return out


def bert_pairs(n_layer, prefix="bert.", mlm=True, pooler=True, classifier=False):
    p = [(f"{prefix}embeddings.word_embeddings.weight", "word.weight", None),
         (f"{prefix}embeddings.position_embeddings.weight", "position.weight", None),
         (f"{prefix}embeddings.token_type_embeddings.weight", "token_type.weight", None),
         (f"{prefix}embeddings.LayerNorm.weight", "emb_ln.weight", None),
         (f"{prefix}embeddings.LayerNorm.bias", "emb_ln.bias", None)]
    for i in range(n_layer):
        h, o = f"{prefix}encoder.layer.{i}.", f"blocks.{i}."
        for hf_part, ours in (("attention.self.query", "attn.sublayer.q"), ("attention.self.key", "attn.sublayer.k"),
                              ("attention.self.value", "attn.sublayer.v"), ("attention.output.dense", "attn.sublayer.o"),
                              ("attention.output.LayerNorm", "attn.ln"), ("intermediate.dense", "ffn.sublayer.fc1"),
                              ("output.dense", "ffn.sublayer.fc2"), ("output.LayerNorm", "ffn.ln")):
            p += [(f"{h}{hf_part}.weight", f"{o}{ours}.weight", None), (f"{h}{hf_part}.bias", f"{o}{ours}.bias", None)]
    if pooler:
        p += [(f"{prefix}pooler.dense.weight", "pooler.weight", None), (f"{prefix}pooler.dense.bias", "pooler.bias", None)]
    if mlm:
        p += [("cls.predictions.transform.dense.weight", "mlm_dense.weight", None),
              ("cls.predictions.transform.dense.bias", "mlm_dense.bias", None),
              ("cls.predictions.transform.LayerNorm.weight", "mlm_ln.weight", None),
              ("cls.predictions.transform.LayerNorm.bias", "mlm_ln.bias", None),
              ("cls.predictions.bias", "mlm_bias", None)]
    if classifier:
        p += [("classifier.weight", "cls_head.weight", None), ("classifier.bias", "cls_head.bias", None)]
    return p


def vit_pairs(n_layer, C, n_patches, channels, patch, prefix="vit.", classifier=True):
    p = [(f"{prefix}embeddings.cls_token", "patch.cls_token", None),
         (f"{prefix}embeddings.patch_embeddings.projection.weight", "patch.proj.weight", (C, channels, patch, patch)),
         (f"{prefix}embeddings.patch_embeddings.projection.bias", "patch.proj.bias", None),
         (f"{prefix}embeddings.position_embeddings", "pos.weight", (1, n_patches + 1, C))]
    for i in range(n_layer):
        h, o = f"{prefix}encoder.layer.{i}.", f"blocks.{i}."
        for hf_part, ours in (("layernorm_before", "attn.ln"), ("attention.attention.query", "attn.sublayer.q"),
                              ("attention.attention.key", "attn.sublayer.k"), ("attention.attention.value", "attn.sublayer.v"),
                              ("attention.output.dense", "attn.sublayer.o"), ("layernorm_after", "ffn.ln"),
                              ("intermediate.dense", "ffn.sublayer.fc1"), ("output.dense", "ffn.sublayer.fc2")):
            p += [(f"{h}{hf_part}.weight", f"{o}{ours}.weight", None), (f"{h}{hf_part}.bias", f"{o}{ours}.bias", None)]
    p += [(f"{prefix}layernorm.weight", "ln.weight", None), (f"{prefix}layernorm.bias", "ln.bias", None)]
    if classifier:
        p += [("classifier.weight", "classifier.weight", None), ("classifier.bias", "classifier.bias", None)]
    return p


def _act(config, allowed):
    act = config.get("hidden_act", "gelu")
    if act not in allowed:
        raise ValueError(f"hidden_act {act!r} is not supported (expected one of {allowed})")


def load_bert(path):
    from ..models.bert import BERT, BertConfig

    config, hf = read_folder(path)
    arch = (config.get("architectures") or ["BertModel"])[0]
    if arch not in ("BertModel", "BertForMaskedLM", "BertForSequenceClassification"):
        raise ValueError(f"unsupported BERT architecture {arch!r}")
    _act(config, ("gelu",))
    prefix = "bert." if any(k.startswith("bert.") for k in hf) else ""
    mlm = arch == "BertForMaskedLM"
    pooler = any(k.startswith(prefix + "pooler.") for k in hf)
    num_labels = len(config.get("id2label", {})) or 2 if arch == "BertForSequenceClassification" else 0
    cfg = BertConfig(vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
                     num_hidden_layers=config["num_hidden_layers"], num_attention_heads=config["num_attention_heads"],
                     intermediate_size=config["intermediate_size"],
                     max_position_embeddings=config["max_position_embeddings"],
                     type_vocab_size=config.get("type_vocab_size", 2), layer_norm_eps=config.get("layer_norm_eps", 1e-12),
                     hidden_dropout_prob=0.0, num_labels=num_labels, mlm=mlm, pooler=pooler)
    model = BERT(cfg)
    names = NameMap(bert_pairs(cfg.num_hidden_layers, prefix, mlm, pooler, num_labels > 0),
                    ignore=("position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"))
    model.load_params(names.to_ours(hf, {n: p.shape for n, p in model.params}))
    return model.eval()


def load_vit(path):
    from ..models.vit import ViT, ViTConfig

    config, hf = read_folder(path)
    _act(config, ("gelu",))
    n_patches = (config["image_size"] // config["patch_size"]) ** 2
    arch = (config.get("architectures") or ["ViTModel"])[0]
    if arch not in ("ViTModel", "ViTForImageClassification"):
        raise ValueError(f"unsupported ViT architecture {arch!r}")
    has_head = "classifier.weight" in hf
    prefix = "vit." if any(k.startswith("vit.") for k in hf) else ""
    num_labels = (len(config.get("id2label", {})) or config.get("num_labels", 2)) if has_head else 0
    cfg = ViTConfig(image_size=config["image_size"], patch_size=config["patch_size"],
                    num_channels=config.get("num_channels", 3), hidden_size=config["hidden_size"],
                    num_hidden_layers=config["num_hidden_layers"], num_attention_heads=config["num_attention_heads"],
                    intermediate_size=config["intermediate_size"], layer_norm_eps=config.get("layer_norm_eps", 1e-12),
                    num_labels=num_labels)
    model = ViT(cfg)
    names = NameMap(vit_pairs(cfg.num_hidden_layers, cfg.hidden_size, n_patches, cfg.num_channels, cfg.patch_size,
                              prefix, has_head), ignore=("pooler.dense.weight", "pooler.dense.bias"))
    model.load_params(names.to_ours(hf, {n: p.shape for n, p in model.params}))
    return model.eval()


def from_pretrained(path):
    """A pytransformer model from a Hugging Face folder: GPT-2, BERT or ViT, chosen by config.json."""
    with open(os.path.join(path, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    if model_type == "gpt2":
        from .hf_gpt2 import load_gpt2

        return load_gpt2(path).eval()
    if model_type == "bert":
        return load_bert(path)
    if model_type == "vit":
        return load_vit(path)
    raise ValueError(f"{path}: unsupported model_type {model_type!r} (supported: gpt2, bert, vit)")


class HFFormat:
    """How one model's parameters and config look in transformers: to_hf / to_ours convert name dicts."""

    def __init__(self, to_hf, to_ours, config):
        self.to_hf, self.to_ours, self.config = to_hf, to_ours, config


def hf_format(model):
    """The Hugging Face layout of a GPT, BERT or ViT model (None for the encoder-decoder Transformer)."""
    from ..models import BERT, GPT, ViT

    shapes = lambda m: {n: p.shape for n, p in m.params}
    if isinstance(model, GPT):
        from .hf_gpt2 import hf_to_ours, ours_to_hf

        c = model.config
        config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": c.vocab_size,
                  "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
                  "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": c.layer_norm_eps,
                  "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": 0.0, "tie_word_embeddings": True,
                  "scale_attn_weights": True}
        return HFFormat(lambda d: ours_to_hf(d, c.n_layer), lambda d, m: hf_to_ours(d, c.n_layer), config)
    if isinstance(model, BERT):
        c = model.config
        cls = c.pooler and c.num_labels > 0
        arch = "BertForMaskedLM" if c.mlm else "BertForSequenceClassification" if cls else "BertModel"
        prefix = "" if arch == "BertModel" else "bert."
        names = NameMap(bert_pairs(c.num_hidden_layers, prefix, c.mlm, c.pooler, cls),
                        ignore=("position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"))
        config = {"model_type": "bert", "architectures": [arch], "vocab_size": c.vocab_size,
                  "hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers,
                  "num_attention_heads": c.num_attention_heads, "intermediate_size": c.intermediate_size,
                  "max_position_embeddings": c.max_position_embeddings, "type_vocab_size": c.type_vocab_size,
                  "layer_norm_eps": c.layer_norm_eps, "hidden_act": "gelu", "hidden_dropout_prob": c.hidden_dropout_prob,
                  "attention_probs_dropout_prob": 0.0, "pad_token_id": 0, "tie_word_embeddings": True}
        if cls:
            config["id2label"] = {str(i): f"LABEL_{i}" for i in range(c.num_labels)}
            config["label2id"] = {f"LABEL_{i}": i for i in range(c.num_labels)}
        return HFFormat(names.to_hf, lambda d, m: names.to_ours(d, shapes(m)), config)
    if isinstance(model, ViT):
        c = model.config
        n_patches = (c.image_size // c.patch_size) ** 2
        head = c.num_labels > 0
        names = NameMap(vit_pairs(c.num_hidden_layers, c.hidden_size, n_patches, c.num_channels, c.patch_size,
                                  "vit." if head else "", head), ignore=("pooler.dense.weight", "pooler.dense.bias"))
        config = {"model_type": "vit", "architectures": ["ViTForImageClassification" if head else "ViTModel"],
                  "image_size": c.image_size,
                  "patch_size": c.patch_size, "num_channels": c.num_channels, "hidden_size": c.hidden_size,
                  "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
                  "intermediate_size": c.intermediate_size, "layer_norm_eps": c.layer_norm_eps, "hidden_act": "gelu",
                  "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": 0.0, "qkv_bias": True,
                  "id2label": {str(i): f"LABEL_{i}" for i in range(c.num_labels)},
                  "label2id": {f"LABEL_{i}": i for i in range(c.num_labels)}}
        return HFFormat(names.to_hf, lambda d, m: names.to_ours(d, shapes(m)), config)
    return None
