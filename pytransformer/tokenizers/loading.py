"""Where tokenizers come from: a folder (tokenizer.json, else GPT-2's vocab.json + merges.txt, else BERT's vocab.txt;
with tokenizer_config.json's special tokens, chat template and clean-up, and every eos_token_id of config.json and
generation_config.json), a tokenizer.json alone, or a GGUF file's metadata (SentencePiece "llama" vocabularies, and
byte-level "gpt2" ones with the pre-tokenizer the file names)."""

from __future__ import annotations

import json
import os

from . import decoders, normalizers, pre_tokenizers, processors
from .added import AddedToken
from .bpe import PRE_TOKENIZERS, ByteLevelBPETokenizer
from .models import BPEModel, UnigramModel, WordPieceModel
from .pipeline import Tokenizer
from .sentencepiece import from_gguf_metadata as sentencepiece_from_gguf
from .splitters import LLAMA3, QWEN2


def _read_json(path, default=None):
    if not os.path.exists(path):
        return default
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None


def _token_text(v):
    """A special token of tokenizer_config.json: a string, or an object with "content"."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _ids(v):
    """eos_token_id of a config: an int, a list of ints, or absent."""
    if isinstance(v, bool):
        return []
    if isinstance(v, int):
        return [v]
    return [i for i in v if isinstance(i, int) and not isinstance(i, bool)] if isinstance(v, list) else []


def _chat_template(folder, config):
    """(template, source) from chat_template.jinja, else tokenizer_config.json's chat_template (a string, or a list
    of {name, template}: the "default" one)."""
    path = os.path.join(folder, "chat_template.jinja")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    source = f"{os.path.join(folder, 'tokenizer_config.json')} (chat_template)"
    return (template if isinstance(template, str) else None), source


def _model_and_pre_tokenizer(spec, pre_spec, path):
    """(model, pre-tokenizer, kind); a BPE model after a ByteLevel pre-tokenizer spells the bytes itself."""
    kind = spec.get("type")
    if kind is None:  # files from old versions of `tokenizers` leave the type out
        kind = "BPE" if "merges" in spec else "Unigram" if isinstance(spec.get("vocab"), list) else "WordPiece"
    builders = {"BPE": BPEModel, "WordPiece": WordPieceModel, "Unigram": UnigramModel}
    if kind not in builders:
        raise ValueError(f"{path}: unsupported model {kind!r} (supported: BPE, WordPiece, Unigram)")
    if kind == "BPE" and pre_tokenizers.ends_in_byte_level(pre_spec):
        return BPEModel.from_json(spec, byte_level=True), pre_tokenizers.build(pre_spec, spell_bytes=False), kind
    return builders[kind].from_json(spec), pre_tokenizers.build(pre_spec), kind


def from_tokenizer_json(path, config=None, eos_ids=(), chat_template=None, source=None) -> Tokenizer:
    """A tokenizer.json file as a Tokenizer; config: tokenizer_config.json's dict (special tokens, clean-up)."""
    spec = _read_json(path)
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise ValueError(f"{path}: not a tokenizer.json (no model object)")
    config = config or {}
    try:
        model, pre_tokenizer, kind = _model_and_pre_tokenizer(spec["model"], spec.get("pre_tokenizer"), path)
        normalizer = normalizers.build(spec.get("normalizer"))
        added = [AddedToken(t.get("id"), t.get("content"), t.get("special", False), t.get("normalized"),
                            t.get("lstrip", False), t.get("rstrip", False), t.get("single_word", False))
                 for t in spec.get("added_tokens") or []]
        tok = Tokenizer(model, model.vocab, added, normalizer, pre_tokenizer,
                        decoders.build(spec.get("decoder")), processors.post_processor(spec.get("post_processor")),
                        chat_template=chat_template, source=source or path,
                        clean_up=bool(config.get("clean_up_tokenization_spaces", False)), kind=kind)
    except (TypeError, AttributeError, KeyError) as e:
        raise ValueError(f"{path}: malformed tokenizer.json ({type(e).__name__}: {e})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    _special_from_config(tok, config, eos_ids)
    return tok


def _special_from_config(tok, config, eos_ids):
    """bos_id and eos_ids from tokenizer_config.json's tokens and the configs' eos_token_id."""
    bos = _token_text(config.get("bos_token"))
    eos = _token_text(config.get("eos_token"))
    tok.bos_id = tok.vocab.get(bos) if bos else (tok.post_before[0] if tok.post_before else None)
    ids = list(eos_ids) + ([tok.vocab[eos]] if eos in tok.vocab else [])
    tok.eos_ids = sorted(set(ids), key=ids.index)


def _specials_in(config, vocab):
    """tokenizer_config.json's special tokens (bos, eos, unk, pad, ... and added_tokens_decoder) that vocab has."""
    names = [_token_text(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token",
                                                 "cls_token", "mask_token")]
    decoder = config.get("added_tokens_decoder") or {}
    names += [_token_text(v) for v in decoder.values() if isinstance(v, dict) and v.get("special", True)]
    return [AddedToken(vocab[t], t, special=True, normalized=False) for t in dict.fromkeys(names) if t in vocab]


def from_vocab_merges(vocab_json, merges_txt, config=None, eos_ids=(), chat_template=None, source=None):
    """GPT-2's vocab.json (or encoder.json) + merges.txt (or vocab.bpe): byte-level BPE, GPT-2's split."""
    vocab = _read_json(vocab_json)
    with open(merges_txt, encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [line for line in lines if line and not line.startswith("#version")]
    config = config or {}
    try:
        model = BPEModel.from_json({"vocab": vocab, "merges": merges}, byte_level=True)
    except ValueError as e:
        raise ValueError(f"{merges_txt}: {e}") from None
    tok = Tokenizer(model, model.vocab, _specials_in(config, model.vocab), None,
                    pre_tokenizers.build({"type": "ByteLevel", "add_prefix_space": False}, spell_bytes=False),
                    decoders.build({"type": "ByteLevel"}), chat_template=chat_template,
                    source=source or vocab_json, kind="BPE")
    _special_from_config(tok, config, eos_ids)
    return tok


def from_vocab_txt(vocab_txt, config=None, eos_ids=(), chat_template=None, source=None):
    """BERT's vocab.txt: WordPiece with BERT's normalizer (do_lower_case from the config), [CLS] ... [SEP]."""
    config = config or {}
    with open(vocab_txt, encoding="utf-8") as f:
        vocab = {}
        for i, line in enumerate(f):
            vocab.setdefault(line.rstrip("\n"), i)
    lowercase = bool(config.get("do_lower_case", True))
    cls_, sep = _token_text(config.get("cls_token")) or "[CLS]", _token_text(config.get("sep_token")) or "[SEP]"
    unk = _token_text(config.get("unk_token")) or "[UNK]"
    if cls_ not in vocab or sep not in vocab or unk not in vocab:
        raise ValueError(f"{vocab_txt}: the vocabulary needs {cls_}, {sep} and {unk}")
    added = _specials_in({"unk_token": unk, "cls_token": cls_, "sep_token": sep, "pad_token": "[PAD]",
                          "mask_token": "[MASK]"} | config, vocab)
    tok = Tokenizer(WordPieceModel(vocab, unk), vocab, added,
                    normalizers.build({"type": "BertNormalizer", "lowercase": lowercase,
                                       "strip_accents": config.get("strip_accents")}),
                    pre_tokenizers.build({"type": "BertPreTokenizer"}), decoders.build({"type": "WordPiece"}),
                    ([vocab[cls_]], [vocab[sep]]), chat_template=chat_template, source=source or vocab_txt,
                    clean_up=bool(config.get("clean_up_tokenization_spaces", False)), kind="WordPiece")
    _special_from_config(tok, config, eos_ids)
    return tok


def from_folder(path) -> Tokenizer:
    """The tokenizer of a Hugging Face folder: tokenizer.json, else vocab.json + merges.txt, else vocab.txt
    (ValueError when it has none of them, naming the folder)."""
    path = os.fspath(path)
    config = _read_json(os.path.join(path, "tokenizer_config.json"), {})
    if not isinstance(config, dict):
        raise ValueError(f"{path}/tokenizer_config.json: expected a JSON object")
    eos_ids = []
    for name in ("generation_config.json", "config.json"):
        cfg = _read_json(os.path.join(path, name), {})
        eos_ids += _ids(cfg.get("eos_token_id")) if isinstance(cfg, dict) else []
    template, source = _chat_template(path, config)
    common = dict(config=config, eos_ids=eos_ids, chat_template=template, source=source)
    files = [os.path.join(path, f) for f in ("tokenizer.json", "vocab.json", "merges.txt", "vocab.txt")]
    if os.path.exists(files[0]):
        return from_tokenizer_json(files[0], **common)
    if os.path.exists(files[1]) and os.path.exists(files[2]):
        return from_vocab_merges(files[1], files[2], **common)
    if os.path.exists(files[3]):
        return from_vocab_txt(files[3], **common)
    raise ValueError(f"{path}: no tokenizer.json, vocab.json + merges.txt, or vocab.txt")


# GGUF byte-level vocabularies whose pre-tokenizer is a regex split (llama.cpp's names; the patterns transformers
# uses for them), beside the ones ByteLevelBPETokenizer spells out by hand (bpe.PRE_TOKENIZERS)
GGUF_SPLITS = {"llama3": LLAMA3, "llama-v3": LLAMA3, "llama-bpe": LLAMA3, "smaug-bpe": LLAMA3, "dbrx": LLAMA3,
               "qwen2": QWEN2, "deepseek-r1-qwen": QWEN2}


def from_gguf_metadata(metadata: dict, source="the GGUF file"):
    """The tokenizer a GGUF file's tokenizer.ggml.* entries describe (ValueError says why not)."""
    model = metadata.get("tokenizer.ggml.model")
    if model == "llama":
        return sentencepiece_from_gguf(metadata, source)
    if model != "gpt2":
        raise ValueError(f"{source}: tokenizer model {model!r} is not supported (byte-level BPE 'gpt2' and "
                         f"SentencePiece 'llama' are)")
    pre = metadata.get("tokenizer.ggml.pre", "gpt2")
    if not isinstance(pre, str):
        raise ValueError(f"{source}: tokenizer.ggml.pre must be a string, got {type(pre).__name__}")
    if pre in GGUF_SPLITS:
        tok = ByteLevelBPETokenizer.from_gguf_metadata(dict(metadata, **{"tokenizer.ggml.pre": "gpt2"}), source)
        special = [AddedToken(i, t, special=True, normalized=False) for t, i in tok.special.items()]
        pre_tok = pre_tokenizers.build({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": GGUF_SPLITS[pre]}, "behavior": "Isolated"},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}, spell_bytes=False)
        model = tok.model
        return Tokenizer(model, tok.encoder, special, None, pre_tok, decoders.build({"type": "ByteLevel"}),
                         ([tok.bos_id] if tok.add_bos and tok.bos_id is not None else [], []), tok.bos_id,
                         [tok.eos_id, tok.eot_id], tok.chat_template, f"{source} (tokenizer.chat_template)",
                         kind=f"BPE ({pre})")
    if pre not in PRE_TOKENIZERS + ("default", "gpt-2"):
        raise ValueError(f"{source}: pre-tokenizer {pre!r} is not supported (supported: "
                         f"{', '.join(PRE_TOKENIZERS + tuple(GGUF_SPLITS))})")
    return ByteLevelBPETokenizer.from_gguf_metadata(metadata, source)
