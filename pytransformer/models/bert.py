"""BERT: a post-LN encoder with token, position and segment (token type) embeddings, and its heads:
masked-LM (tied to the token embedding), next-sentence prediction and [CLS] sequence classification (through the
tanh pooler), and token classification; pre-training sums masked-LM and next-sentence losses. One loss per call;
backward() follows whichever head (or pair) computed it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import ops
from ..nn import (Activation, Dropout, Embedding, EncoderBlock, FeedForward, LayerNorm, LearnedPositions, Linear,
                  MultiHeadAttention, Parameter, TiedLMHead)
from ..nn.module import zeros
from .base import CrossEntropyHead, Model, check_ids, row_at, row_at_backward
from .config import ModelConfig


@dataclass
class BertConfig(ModelConfig):
    vocab_size: int = 30522
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    intermediate_size: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    dropout: float = 0.1
    activation: str = "gelu_exact"  # nn.Activation's name
    num_labels: int = 2            # [CLS] classification head (0: none)
    num_token_labels: int = 0      # token classification head (0: none)
    mlm: bool = True               # masked-LM head
    pooler: bool = True
    nsp: bool = False              # next-sentence prediction head (on the pooled [CLS]: is B the sentence after A?)
    pad_token_id: int | None = 0   # its embedding row gets no gradient (transformers' padding_idx)

    SIZES = ("vocab_size", "n_embd", "n_layer", "n_head", "intermediate_size", "max_positions", "type_vocab_size")


@dataclass
class RobertaConfig(BertConfig):
    """A BERT read from a RoBERTa or XLM-RoBERTa checkpoint (io/hf_roberta.py): the same model, saved back as the
    transformers family model_type names ("roberta" or "xlm-roberta")."""
    type_vocab_size: int = 1
    pad_token_id: int | None = 1
    model_type: str = "roberta"


BertConfig.PRESETS = {"bert-base": BertConfig(),
                      "bert-large": BertConfig(n_embd=1024, n_layer=24, n_head=16, intermediate_size=4096),
                      "bert-tiny": BertConfig(n_embd=128, n_layer=2, n_head=2, intermediate_size=512)}


def encoder_inputs(config, input_ids, attention_mask):
    """An encoder's checked inputs: ids (B, T) int64 within the vocabulary and positions, and the attention mask
    (B, T) as bool (True = a real token), or None."""
    ids = check_ids(input_ids, "input_ids", config.max_positions)
    if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
        raise ValueError(f"input_ids must lie in [0, {config.vocab_size})")
    if attention_mask is None:
        return ids, None
    mask = np.ascontiguousarray(np.asarray(attention_mask) != 0)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask {mask.shape} must match input_ids {ids.shape}")
    return ids, mask


class BERT(Model):
    config_class = BertConfig
    runs_on_cuda = True

    def __init__(self, config: BertConfig, seed: int = 0):
        c = self.config = config
        C = c.n_embd
        self.word = Embedding(c.vocab_size, C, padding_idx=c.pad_token_id)
        self.position = LearnedPositions(c.max_positions, C)
        self.token_type = Embedding(c.type_vocab_size, C)
        self.emb_ln = LayerNorm(C, c.norm_eps)
        self.emb_drop = Dropout(c.dropout)
        self.blocks = [EncoderBlock(attn=MultiHeadAttention(C, c.n_head),
                                    ffn=FeedForward(C, c.intermediate_size, c.activation),
                                    norm=lambda: LayerNorm(C, c.norm_eps), placement="post",
                                    dropout=c.dropout) for _ in range(c.n_layer)]
        if c.mlm:
            self.mlm_dense = Linear(C, C)
            self.mlm_act = Activation(c.activation)
            self.mlm_ln = LayerNorm(C, c.norm_eps)
            self.mlm_bias = Parameter((c.vocab_size,), zeros)
            self.mlm_decoder = TiedLMHead(self.word.weight, self.mlm_bias)  # weight tied to the token embedding
        if c.pooler:
            self.pooler = Linear(C, C)
            self.cls_drop = Dropout(c.dropout)
            if c.num_labels:
                self.cls_head = Linear(C, c.num_labels)
        if c.nsp:
            if not c.pooler:
                raise ValueError("the next-sentence head reads the pooled [CLS]: it needs pooler=True")
            self.nsp_head = Linear(C, 2)
        if c.num_token_labels:
            self.tok_drop = Dropout(c.dropout)
            self.token_head = Linear(C, c.num_token_labels)
        self.head = CrossEntropyHead()
        self.nsp_ce = CrossEntropyHead()  # (pre-training sums two losses: each keeps its own state)
        self._build(seed)

    # --- encoder ------------------------------------------------------------------------------------------

    def encode(self, input_ids, attention_mask=None, token_type_ids=None):
        """-> last hidden state (B, T, C). attention_mask (B, T): 1 = real token, 0 = padding."""
        ids, mask = encoder_inputs(self.config, input_ids, attention_mask)
        tt = np.zeros_like(ids) if token_type_ids is None else check_ids(token_type_ids, "token_type_ids")
        if tt.shape != ids.shape:
            raise ValueError(f"token_type_ids {tt.shape} must match input_ids {ids.shape}")
        self._begin_forward()
        x = ops.residual_forward(self.word.forward(ids), self.token_type.forward(tt))
        x = self.emb_drop.forward(self.emb_ln.forward(self.position.forward(x)))
        for block in self.blocks:
            x = block.forward(x, mask)
        if self.keeps_state:
            self._hidden_shape = x.shape
        return x

    def _encoder_backward(self, dhidden):
        d = dhidden
        for block in reversed(self.blocks):
            d = block.backward(d)
        d = self.position.backward(self.emb_ln.backward(self.emb_drop.backward(d)))
        self.word.backward(d)
        self.token_type.backward(d)

    # --- heads --------------------------------------------------------------------------------------------

    def mlm_logits(self, input_ids, attention_mask=None, token_type_ids=None):
        """Masked-LM logits (B, T, V)."""
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        return self.mlm_decoder.forward(self.mlm_ln.forward(self.mlm_act.forward(self.mlm_dense.forward(hidden))))

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        """As transformers: MLM logits with the masked-LM head, else [CLS] classification logits with that head,
        else the last hidden state."""
        if self.config.mlm:
            return self.mlm_logits(input_ids, attention_mask, token_type_ids)
        if self.config.nsp:
            return self.nsp_logits(input_ids, attention_mask, token_type_ids)
        if self.config.pooler and self.config.num_labels:
            return self.classify_logits(input_ids, attention_mask, token_type_ids)
        if self.config.num_token_labels:
            return self.token_logits(input_ids, attention_mask, token_type_ids)
        return self.encode(input_ids, attention_mask, token_type_ids)

    def loss(self, input_ids, labels, attention_mask=None, token_type_ids=None, next_sentence_label=None):
        """The loss transformers computes for this model's head: pre-training (masked-LM + next-sentence, with
        next_sentence_label (B,)), masked-LM (labels (B, T), -100 ignored, no shift), next-sentence prediction
        (labels (B,): 0 = B follows A), sequence classification (labels (B,)), token classification (labels
        (B, T))."""
        if self.config.mlm and self.config.nsp and next_sentence_label is not None:
            return self.pretraining_loss(input_ids, labels, next_sentence_label, attention_mask, token_type_ids)
        if self.config.mlm:
            return self.mlm_loss(input_ids, labels, attention_mask, token_type_ids)
        if self.config.nsp:
            return self._head_loss(self.nsp_logits(input_ids, attention_mask, token_type_ids), labels,
                                   self._nsp_backward)
        if self.config.pooler and self.config.num_labels:
            return self.classify_loss(input_ids, labels, attention_mask, token_type_ids)
        if self.config.num_token_labels:
            return self.token_loss(input_ids, labels, attention_mask, token_type_ids)
        raise ValueError("this BERT has no head to compute a loss with")

    def mlm_loss(self, input_ids, labels, attention_mask=None, token_type_ids=None):
        """Mean cross-entropy over positions whose label != -100 (the masked ones)."""
        return self._head_loss(self.mlm_logits(input_ids, attention_mask, token_type_ids), labels, self._mlm_backward)

    def _head_loss(self, logits, labels, head_backward):
        loss = self.head.loss(logits, labels, keep=self.keeps_state)
        if self.keeps_state:
            self._backward_head = head_backward
        self._loss_computed()
        return loss

    def _mlm_backward(self, dlogits):
        return self.mlm_dense.backward(self.mlm_act.backward(self.mlm_ln.backward(self.mlm_decoder.backward(dlogits))))

    def pooled(self, input_ids, attention_mask=None, token_type_ids=None):
        """tanh(W h[CLS] + b): (B, C)."""
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        pooled = ops.tanh_forward(self.pooler.forward(row_at(hidden, 0)))
        if self.keeps_state:
            self._pooled = pooled
        return pooled

    def classify_logits(self, input_ids, attention_mask=None, token_type_ids=None):
        """[CLS] sequence classification logits (B, num_labels)."""
        return self.cls_head.forward(self.cls_drop.forward(self.pooled(input_ids, attention_mask, token_type_ids)))

    def classify_loss(self, input_ids, labels, attention_mask=None, token_type_ids=None):
        return self._head_loss(self.classify_logits(input_ids, attention_mask, token_type_ids), labels,
                               self._classify_backward)

    def _classify_backward(self, dlogits):
        return self._pooled_backward(self.cls_drop.backward(self.cls_head.backward(dlogits)))

    def nsp_logits(self, input_ids, attention_mask=None, token_type_ids=None):
        """Next-sentence prediction logits (B, 2) from the pooled [CLS] (index 0: sentence B follows A)."""
        return self.nsp_head.forward(self.pooled(input_ids, attention_mask, token_type_ids))

    def _pooled_backward(self, dpooled):
        dcls = self.pooler.backward(ops.tanh_backward(dpooled, self._pooled))
        return row_at_backward(dcls, self._hidden_shape, 0)

    def _nsp_backward(self, dlogits):
        return self._pooled_backward(self.nsp_head.backward(dlogits))

    def pretraining_logits(self, input_ids, attention_mask=None, token_type_ids=None):
        """(masked-LM logits (B, T, V), next-sentence logits (B, 2)) of one encoder pass (BertForPreTraining)."""
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        mlm = self.mlm_decoder.forward(self.mlm_ln.forward(self.mlm_act.forward(self.mlm_dense.forward(hidden))))
        pooled = ops.tanh_forward(self.pooler.forward(row_at(hidden, 0)))
        if self.keeps_state:
            self._pooled = pooled
        return mlm, self.nsp_head.forward(pooled)

    def pretraining_loss(self, input_ids, labels, next_sentence_label, attention_mask=None, token_type_ids=None):
        """BERT's pre-training loss as transformers' BertForPreTraining: masked-LM + next-sentence prediction."""
        mlm, nsp = self.pretraining_logits(input_ids, attention_mask, token_type_ids)
        keep = self.keeps_state
        loss = self.head.loss(mlm, labels, keep=keep) + self.nsp_ce.loss(nsp, next_sentence_label, keep=keep)
        if keep:
            self._backward_head = None  # backward() sees both losses
        self._loss_computed()
        return loss

    def token_logits(self, input_ids, attention_mask=None, token_type_ids=None):
        """Token classification logits (B, T, num_token_labels)."""
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        return self.token_head.forward(self.tok_drop.forward(hidden))

    def token_loss(self, input_ids, labels, attention_mask=None, token_type_ids=None):
        return self._head_loss(self.token_logits(input_ids, attention_mask, token_type_ids), labels,
                               lambda d: self.tok_drop.backward(self.token_head.backward(d)))

    def _attention_forward(self, *inputs, **kwargs):
        return self.encode(*inputs, **kwargs)

    def backward(self, dloss=1.0):
        """After one of the *_loss calls: accumulate every parameter's gradient."""
        self._begin_backward()
        if self._backward_head is None:  # pre-training: both heads' gradients into the hidden state
            dhidden = self._mlm_backward(self.head.backward(dloss))
            ops.add_into(dhidden, self._nsp_backward(self.nsp_ce.backward(dloss)))
            return self._encoder_backward(dhidden)
        self._encoder_backward(self._backward_head(self.head.backward(dloss)))


class Roberta(BERT):
    """BERT with RoBERTa's checkpoint face: its own config, so save_pretrained writes a RoBERTa folder."""
    config_class = RobertaConfig


def mask_tokens(ids, rng, vocab_size, mask_id, special_ids=(), prob=0.15):
    """BERT's masking: select `prob` of the non-special positions; of those 80% become [MASK], 10% a random
    token, 10% stay. -> (inputs, labels) with labels = -100 where not selected."""
    ids = np.asarray(ids, np.int64)
    special = np.isin(ids, np.asarray(list(special_ids), np.int64))
    selected = (rng.random(ids.shape) < prob) & ~special
    labels = np.where(selected, ids, -100)
    roll = rng.random(ids.shape)
    inputs = ids.copy()
    inputs[selected & (roll < 0.8)] = mask_id
    randomised = selected & (roll >= 0.8) & (roll < 0.9)
    inputs[randomised] = rng.integers(0, vocab_size, randomised.sum())
    return inputs, labels
