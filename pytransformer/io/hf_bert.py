"""Hugging Face BERT (BertModel, BertForMaskedLM, BertForPreTraining, BertForNextSentencePrediction,
BertForSequenceClassification, BertForTokenClassification) <-> pytransformer's BERT.
One table of rules; the masked-LM decoder weight is tied to the word embedding (not stored twice)."""

from __future__ import annotations

from ..models.bert import BERT, BertConfig
from .hf_common import (MAX_LAYERS, HFLayout, NameMap, check_activation, detect_prefix, divisible, float_field,
                        encoder_layer_rules, int_field, label_count, labels, load, rule, weight_and_bias)

PREFIX = "bert."
ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForPreTraining", "BertForNextSentencePrediction",
                 "BertForSequenceClassification", "BertForTokenClassification")

# (Hugging Face part of encoder layer i, ours under blocks.i), each a Linear or LayerNorm (weight and bias)
LAYER_PARTS = (("attention.self.query", "attn.sublayer.q"), ("attention.self.key", "attn.sublayer.k"),
               ("attention.self.value", "attn.sublayer.v"), ("attention.output.dense", "attn.sublayer.o"),
               ("attention.output.LayerNorm", "attn.ln"), ("intermediate.dense", "ffn.sublayer.fc1"),
               ("output.dense", "ffn.sublayer.fc2"), ("output.LayerNorm", "ffn.ln"))


def from_hf(cfg: dict, tensors: dict):
    arch = (cfg.get("architectures") or ["BertModel"])[0]
    prefix = detect_prefix(tensors, PREFIX)
    return bert_config(cfg, arch, any(k.startswith(prefix + "pooler.") for k in tensors)), prefix


def bert_config(cfg: dict, arch: str, pooler: bool, config_class=BertConfig, **overrides) -> BertConfig:
    """The BertConfig (or a relative's config_class) of a transformers config.json of a BERT-shaped encoder; arch:
    the BERT architecture its heads are those of; overrides: fields a relative (RoBERTa) sets otherwise."""
    check_activation(cfg, "hidden_act", ("gelu",), "gelu")
    num_labels = label_count(cfg) if arch == "BertForSequenceClassification" else 0
    token_labels = label_count(cfg) if arch == "BertForTokenClassification" else 0
    fields = dict(vocab_size=int_field(cfg, "vocab_size"), n_embd=int_field(cfg, "hidden_size"),
                  n_layer=int_field(cfg, "num_hidden_layers", hi=MAX_LAYERS),
                  n_head=int_field(cfg, "num_attention_heads"),
                  intermediate_size=int_field(cfg, "intermediate_size"),
                  max_positions=int_field(cfg, "max_position_embeddings"),
                  type_vocab_size=int_field(cfg, "type_vocab_size", default=2),
                  norm_eps=float_field(cfg, "layer_norm_eps", 0.0, 1.0, 1e-12),
                  dropout=0.0, num_labels=num_labels, num_token_labels=token_labels,
                  mlm=arch in ("BertForMaskedLM", "BertForPreTraining"),
                  nsp=arch in ("BertForPreTraining", "BertForNextSentencePrediction"), pooler=pooler,
                  pad_token_id=None if cfg.get("pad_token_id", 0) is None else int_field(cfg, "pad_token_id", 0,
                                                                                        default=0))
    divisible(cfg, "hidden_size", "num_attention_heads")
    return config_class(**(fields | overrides))


def names(c: BertConfig, prefix: str = PREFIX) -> NameMap:
    """Every rule a BERT can need; those of heads the model lacks are skipped by the NameMap."""
    p = prefix
    rules = [rule(f"{p}embeddings.word_embeddings.weight", "word.weight"),
             rule(f"{p}embeddings.position_embeddings.weight", "position.weight"),
             rule(f"{p}embeddings.token_type_embeddings.weight", "token_type.weight"),
             *weight_and_bias(f"{p}embeddings.LayerNorm", "emb_ln")]
    rules += encoder_layer_rules(p, c.n_layer, LAYER_PARTS)
    rules += [*weight_and_bias(f"{p}pooler.dense", "pooler"),
              *weight_and_bias("cls.predictions.transform.dense", "mlm_dense"),
              *weight_and_bias("cls.predictions.transform.LayerNorm", "mlm_ln"),
              rule("cls.predictions.bias", "mlm_bias"),
              *weight_and_bias("cls.seq_relationship", "nsp_head"),
              *weight_and_bias("classifier", "cls_head"),
              *weight_and_bias("classifier", "token_head")]  # (a model has one of the two)
    return NameMap(rules, ignore=("position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"))


def to_hf(c: BertConfig):
    cls = c.pooler and c.num_labels > 0
    arch = ("BertForPreTraining" if c.mlm and c.nsp else "BertForMaskedLM" if c.mlm else
            "BertForNextSentencePrediction" if c.nsp else "BertForSequenceClassification" if cls else
            "BertForTokenClassification" if c.num_token_labels else "BertModel")
    config = {"model_type": "bert", "architectures": [arch], "vocab_size": c.vocab_size,
              "hidden_size": c.n_embd, "num_hidden_layers": c.n_layer,
              "num_attention_heads": c.n_head, "intermediate_size": c.intermediate_size,
              "max_position_embeddings": c.max_positions, "type_vocab_size": c.type_vocab_size,
              "layer_norm_eps": c.norm_eps, "hidden_act": "gelu", "hidden_dropout_prob": c.dropout,
              "attention_probs_dropout_prob": 0.0, "pad_token_id": c.pad_token_id, "tie_word_embeddings": True}
    if cls or c.num_token_labels:
        config.update(labels(c.num_labels if cls else c.num_token_labels))
    return config, "" if arch == "BertModel" else PREFIX


LAYOUT = HFLayout("bert", ARCHITECTURES, from_hf, names, to_hf)


def load_bert(path, mmap=True) -> BERT:
    """A BERT from a Hugging Face folder (BertModel, BertForMaskedLM or BertForSequenceClassification)."""
    return load(LAYOUT, BERT, path, mmap)
