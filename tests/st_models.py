"""Tiny random sentence-transformers models, made with sentence-transformers itself (test-only dependency), for
the encoder tests to compare against: a BERT of 2 layers and 32 channels over a 30-word WordPiece vocabulary."""

from __future__ import annotations

import warnings

WORDS = "the a cat dog sat on mat rug bread bake loaf stock market fell price query passage is".split()
TEXTS = ["the cat sat on the mat", "a dog", "bake bread loaf loaf loaf the market fell fell price price stock a a a a",
         "Stock MARKET"]


def bert_folder(folder, max_seq_length=20, num_labels=None):
    """A random Hugging Face BERT (BertModel, or BertForSequenceClassification with num_labels) and its
    tokenizer in folder."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":"] + WORDS + ["##s", "##ing"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast(str(folder / "vocab.txt"), model_max_length=max_seq_length)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                     num_labels=num_labels or 2)
    model = (transformers.BertForSequenceClassification(config) if num_labels else transformers.BertModel(config))
    model.save_pretrained(folder)
    return folder


def sentence_model(folder, pooling=("mean",), dense=0, normalize=True, prompts=None, include_prompt=True):
    """A SentenceTransformer (Transformer, Pooling, optional Dense to `dense` dims with tanh, optional Normalize)
    saved in folder/st; returns the model."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

    transformer = Transformer(str(bert_folder(folder / "hf")))
    modules = [transformer, Pooling(32, pooling_mode=list(pooling), include_prompt=include_prompt)]
    if dense:
        modules.append(Dense(32 * len(pooling), dense, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(Normalize())
    st = SentenceTransformer(modules=modules, prompts=prompts, device="cpu")
    st.save(str(folder / "st"))
    return st
