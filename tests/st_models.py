"""Tiny random sentence-transformers models, made with sentence-transformers itself (test-only dependency), for
the encoder tests to compare against: encoders of 2 layers and 32 channels (BERT over a 30-word WordPiece
vocabulary, MPNet over the same words with its own special tokens; RoBERTa and XLM-RoBERTa over a byte-level BPE
trained on the same words)."""

from __future__ import annotations

import warnings

WORDS = "the a cat dog sat on mat rug bread bake loaf stock market fell price query passage is".split()
TEXTS = ["the cat sat on the mat", "a dog", "bake bread loaf loaf loaf the market fell fell price price stock a a a a",
         "Stock MARKET"]


def _wordpiece(folder, max_seq_length, mpnet=False):
    """BERT's WordPiece tokenizer, or MPNet's (<s> a </s>, padding id 1, as MPNet's positions need)."""
    import transformers

    specials = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"] if mpnet else ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join(specials + [":"] + WORDS + ["##s", "##ing"]) + "\n")
    cls = transformers.MPNetTokenizerFast if mpnet else transformers.BertTokenizerFast
    return cls(str(folder / "vocab.txt"), model_max_length=max_seq_length)


def _byte_level_bpe(max_seq_length):
    """RoBERTa's kind of tokenizer (byte-level BPE, <s> a </s></s> b </s>), trained on the test words."""
    import transformers
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 3 + TEXTS, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>", model_max_length=max_seq_length)


FAMILIES = {"bert": ("BertConfig", "BertModel", "BertForSequenceClassification"),
            "roberta": ("RobertaConfig", "RobertaModel", "RobertaForSequenceClassification"),
            "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaModel", "XLMRobertaForSequenceClassification"),
            "mpnet": ("MPNetConfig", "MPNetModel", "MPNetForSequenceClassification")}


def bert_folder(folder, max_seq_length=20, num_labels=None, family="bert"):
    """A random Hugging Face encoder of a family in FAMILIES (its base model, or its sequence classifier with
    num_labels) and its tokenizer in folder. RoBERTa-shaped ones number positions after the padding index 1."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    tok = _wordpiece(folder, max_seq_length, family == "mpnet") if family in ("bert", "mpnet") else \
        _byte_level_bpe(max_seq_length)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config_class, base, classifier = (getattr(transformers, n) for n in FAMILIES[family])
    extra = {} if family == "bert" else {"pad_token_id": 1, "type_vocab_size": 1}
    config = config_class(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=64, num_labels=num_labels or 2, **extra)
    model = classifier(config) if num_labels else base(config)
    if family == "mpnet":  # a relative-position bias far larger than its init's, so a wrong bucket shows
        torch.nn.init.normal_(model.base_model.encoder.relative_attention_bias.weight, std=1.0)
    model.eval().save_pretrained(folder)
    return folder


def sentence_model(folder, pooling=("mean",), dense=0, normalize=True, prompts=None, include_prompt=True,
                   family="bert"):
    """A SentenceTransformer (Transformer, Pooling, optional Dense to `dense` dims with tanh, optional Normalize)
    saved in folder/st; returns the model."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

    transformer = Transformer(str(bert_folder(folder / "hf", family=family)))
    modules = [transformer, Pooling(32, pooling_mode=list(pooling), include_prompt=include_prompt)]
    if dense:
        modules.append(Dense(32 * len(pooling), dense, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(Normalize())
    st = SentenceTransformer(modules=modules, prompts=prompts, device="cpu")
    st.save(str(folder / "st"))
    return st
