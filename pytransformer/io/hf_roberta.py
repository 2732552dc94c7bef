"""Hugging Face RoBERTa and XLM-RoBERTa (RobertaModel, RobertaForSequenceClassification and the XLMRoberta
equivalents) <-> pytransformer's Roberta (a BERT), as the differences from BERT:

- positions start after the padding index: a real token at index i reads row pad_token_id + 1 + i of the table,
  so the rows before it (read only by padding, which attention masks) are dropped on load and the model's table
  starts at that row (max_positions = max_position_embeddings - pad_token_id - 1); saving writes them back as
  zeros (transformers keeps the padding row zero, and no token reads the rows before it);
- one token type; the classification head (classifier.dense + tanh, then classifier.out_proj on <s>) is BERT's
  pooler and classifier under other names."""

from __future__ import annotations

import numpy as np

from ..models.bert import Roberta, RobertaConfig
from . import hf_bert
from .hf_common import HFLayout, NameMap, detect_prefix, encoder_layer_rules, int_field, load, rule, weight_and_bias

PREFIX = "roberta."
CLASS_NAMES = {"roberta": "Roberta", "xlm-roberta": "XLMRoberta"}  # model_type -> transformers' class prefix
TASKS = {"Model": "BertModel", "ForSequenceClassification": "BertForSequenceClassification"}  # -> BERT's
ARCHITECTURES = tuple(name + task for name in CLASS_NAMES.values() for task in TASKS)


class LaterRows:
    """Ours is the Hugging Face table without its first `skip` rows (written back as zeros)."""

    def __init__(self, skip):
        self.skip = skip

    def hf_shape_of(self, shapes):
        return (shapes[0][0] + self.skip,) + tuple(shapes[0][1:])

    def to_ours(self, value, shapes):
        return [value[self.skip:]]

    def to_hf(self, values):
        table = np.asarray(values[0])
        return np.concatenate([np.zeros((self.skip,) + table.shape[1:], table.dtype), table])


def bert_task(arch: str) -> str:
    """The BERT architecture whose heads a RoBERTa-family architecture has."""
    return next(bert for task, bert in TASKS.items() if arch.endswith(task))


def from_hf(cfg: dict, tensors: dict):
    arch = (cfg.get("architectures") or ["RobertaModel"])[0]
    prefix = detect_prefix(tensors, PREFIX)
    classify = bert_task(arch) == "BertForSequenceClassification"
    pad = int_field(cfg, "pad_token_id", 0, default=1)
    positions = int_field(cfg, "max_position_embeddings", pad + 2)
    config = hf_bert.bert_config(cfg, bert_task(arch), classify or any(k.startswith(prefix + "pooler.") for k in tensors),
                                 RobertaConfig, max_positions=positions - pad - 1, pad_token_id=pad,
                                 type_vocab_size=int_field(cfg, "type_vocab_size", default=1),
                                 model_type="xlm-roberta" if arch.startswith("XLM") else "roberta")
    return config, prefix


def names(c: RobertaConfig, prefix: str = PREFIX) -> NameMap:
    p = prefix
    rules = [rule(f"{p}embeddings.word_embeddings.weight", "word.weight"),
             rule(f"{p}embeddings.position_embeddings.weight", "position.weight",
                  layout=LaterRows(c.pad_token_id + 1)),
             rule(f"{p}embeddings.token_type_embeddings.weight", "token_type.weight"),
             *weight_and_bias(f"{p}embeddings.LayerNorm", "emb_ln")]
    rules += encoder_layer_rules(p, c.n_layer, hf_bert.LAYER_PARTS)
    if c.num_labels:
        rules += [*weight_and_bias("classifier.dense", "pooler"), *weight_and_bias("classifier.out_proj", "cls_head")]
    else:
        rules += weight_and_bias(f"{p}pooler.dense", "pooler")
    return NameMap(rules, ignore=("position_ids",))


def to_hf(c: RobertaConfig):
    config, _ = hf_bert.to_hf(c)
    task = next((task for task, bert in TASKS.items() if bert == config["architectures"][0]), None)
    if task is None or c.model_type not in CLASS_NAMES:
        raise ValueError(f"a {c.model_type} checkpoint holds an encoder or a sequence classifier; this model is a "
                         f"{config['architectures'][0]}")
    config.update(model_type=c.model_type, architectures=[CLASS_NAMES[c.model_type] + task],
                  max_position_embeddings=c.max_positions + c.pad_token_id + 1, bos_token_id=0, eos_token_id=2)
    return config, "" if task == "Model" else PREFIX


LAYOUT = HFLayout("roberta", ARCHITECTURES, from_hf, names, to_hf)
XLM_LAYOUT = HFLayout("xlm-roberta", ARCHITECTURES, from_hf, names, to_hf)


def load_roberta(path, mmap=True) -> Roberta:
    """A Roberta from a Hugging Face RoBERTa or XLM-RoBERTa folder, in eval mode."""
    return load(LAYOUT, Roberta, path, mmap)
