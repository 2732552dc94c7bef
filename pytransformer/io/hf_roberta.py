"""Hugging Face RoBERTa and XLM-RoBERTa (RobertaModel, RobertaForSequenceClassification and the XLMRoberta
equivalents) -> pytransformer's BERT, as the differences from BERT:

- positions start after the padding index: a real token at index i reads row pad_token_id + 1 + i of the table,
  so the rows before it (read only by padding, which attention masks) are dropped on load and the model's table
  starts at that row (max_positions = max_position_embeddings - pad_token_id - 1);
- one token type; the classification head (classifier.dense + tanh, then classifier.out_proj on <s>) is BERT's
  pooler and classifier under other names.
Loading only: a RoBERTa is not written back (the dropped rows would be lost)."""

from __future__ import annotations

from ..models.bert import BERT, BertConfig
from .hf_bert import LAYER_PARTS, bert_config
from .hf_common import HFLayout, NameMap, detect_prefix, encoder_layer_rules, int_field, load, rule, weight_and_bias

PREFIX = "roberta."
TASKS = {"RobertaModel": "BertModel", "RobertaForSequenceClassification": "BertForSequenceClassification",
         "XLMRobertaModel": "BertModel", "XLMRobertaForSequenceClassification": "BertForSequenceClassification"}


class LaterRows:
    """Ours is the Hugging Face table without its first `skip` rows."""

    def __init__(self, skip):
        self.skip = skip

    def hf_shape_of(self, shapes):
        return (shapes[0][0] + self.skip,) + tuple(shapes[0][1:])

    def to_ours(self, value, shapes):
        return [value[self.skip:]]


def from_hf(cfg: dict, tensors: dict):
    arch = (cfg.get("architectures") or ["RobertaModel"])[0]
    prefix = detect_prefix(tensors, PREFIX)
    classify = TASKS.get(arch) == "BertForSequenceClassification"
    pad = int_field(cfg, "pad_token_id", 0, default=1)
    positions = int_field(cfg, "max_position_embeddings", pad + 2)
    config = bert_config(cfg, TASKS.get(arch, "BertModel"),
                         classify or any(k.startswith(prefix + "pooler.") for k in tensors),
                         max_positions=positions - pad - 1, pad_token_id=pad,
                         type_vocab_size=int_field(cfg, "type_vocab_size", default=1))
    return config, prefix


def names(c: BertConfig, prefix: str = PREFIX) -> NameMap:
    p = prefix
    rules = [rule(f"{p}embeddings.word_embeddings.weight", "word.weight"),
             rule(f"{p}embeddings.position_embeddings.weight", "position.weight",
                  layout=LaterRows(c.pad_token_id + 1)),
             rule(f"{p}embeddings.token_type_embeddings.weight", "token_type.weight"),
             *weight_and_bias(f"{p}embeddings.LayerNorm", "emb_ln")]
    rules += encoder_layer_rules(p, c.n_layer, LAYER_PARTS)
    if c.num_labels:
        rules += [*weight_and_bias("classifier.dense", "pooler"), *weight_and_bias("classifier.out_proj", "cls_head")]
    else:
        rules += weight_and_bias(f"{p}pooler.dense", "pooler")
    return NameMap(rules, ignore=("position_ids",))


def to_hf(c: BertConfig):
    raise NotImplementedError("RoBERTa checkpoints are read, not written (save a BERT instead)")


LAYOUT = HFLayout("roberta", tuple(TASKS), from_hf, names, to_hf)


def load_roberta(path, mmap=True) -> BERT:
    """A BERT from a Hugging Face RoBERTa or XLM-RoBERTa folder, in eval mode."""
    return load(LAYOUT, BERT, path, mmap)
