"""Where tokenizers come from: from_folder's order of preference, tokenizer_config.json's special tokens and chat
template, every eos_token_id as a stop id (plus the end-of-turn tokens the vocabulary has), the hooks that set
model.tokenizer, and bad files as one-line ValueErrors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from tokenizer_data import gpt2_files, minilm_folder

import pytransformer.tokenizers as T
from pytransformer.tokenizers.stops import stop_ids

hf = pytest.importorskip("tokenizers")


def tiny_tokenizer_json(folder, extra_specials=()):
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = hf.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["hello world, the quick brown fox"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", *extra_specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(folder / "tokenizer.json"))
    return tok


def test_stop_ids_take_every_eos_id_and_the_end_of_turn_tokens_in_the_vocabulary():
    vocab = {"<|im_end|>": 7, "<end_of_turn>": 9, "<|eot_id|>": 11, "<|eom_id|>": 12, "<|end|>": 13, "x": 1}
    assert stop_ids(vocab.get, [2, None, 5, 2]) == [2, 5, 7, 9, 11, 12, 13]
    assert stop_ids({}.get, []) == []


def test_from_folder_reads_eos_ids_from_every_config_and_tokenizer_config(tmp_path):
    tiny_tokenizer_json(tmp_path, ["<|eot_id|>"])
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [0, 3]}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|im_end|>"},
                                                                "chat_template": "{{ messages[0].content }}!"}))
    tok = T.from_folder(tmp_path)
    assert tok.stop_ids == [0, 1, 2, 3]  # <|eot_id|> is id 3 too
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi!"


def test_a_chat_template_jinja_file_is_preferred_and_named_in_errors(tmp_path):
    tiny_tokenizer_json(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{{ 1 / 0 }}")
    with pytest.raises(ValueError, match=r"chat_template\.jinja: the chat template failed: ZeroDivisionError"):
        T.from_folder(tmp_path).apply_chat_template([{"role": "user", "content": "hi"}])


def test_from_folder_prefers_tokenizer_json_then_vocab_merges_then_vocab_txt(tmp_path):
    enc, merges = gpt2_files()
    shutil.copy(enc, tmp_path / "vocab.json")
    shutil.copy(merges, tmp_path / "merges.txt")
    shutil.copy(f"{minilm_folder()}/vocab.txt", tmp_path / "vocab.txt")
    assert T.from_folder(tmp_path).vocab_size == 50257
    theirs = tiny_tokenizer_json(tmp_path)
    assert T.from_folder(tmp_path).vocab_size == theirs.get_vocab_size() < 1000
    for name in ("tokenizer.json", "vocab.json"):
        (tmp_path / name).unlink()
    assert T.from_folder(tmp_path).kind == "WordPiece"


@pytest.mark.parametrize("content, message", [
    ("{", "not readable JSON"), ("[]", "not a tokenizer.json"),
    ('{"model": {"type": "Fancy"}}', "unsupported model 'Fancy'"),
    ('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a a"]}}', "not in the vocabulary"),
    ('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "normalizer": {"type": "Precompiled"}}',
     "unsupported normalizer 'Precompiled'"),
    ('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Split", '
     '"pattern": {"Regex": "(unclosed"}}}', "does not compile"),
    ('{"model": {"type": "WordPiece", "vocab": {"a": 0}}}', "unk_token"),
    ('{"model": {"type": "Unigram", "vocab": [["a", "x"]]}}', "list of \\[piece, score\\]"),
    ('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "added_tokens": [{"id": -1, "content": "x"}]}',
     "added token"),
])
def test_a_bad_tokenizer_json_is_one_value_error_naming_the_file(tmp_path, content, message):
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(ValueError, match=message) as e:
        T.from_folder(tmp_path)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_a_folder_without_a_tokenizer_says_so(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer.json, vocab.json \\+ merges.txt, or vocab.txt"):
        T.from_folder(tmp_path)


def test_from_pretrained_sets_model_tokenizer(tmp_path):
    from pytransformer import from_pretrained
    from pytransformer.models import GPT, GPTConfig

    GPT(GPTConfig(vocab_size=300, max_positions=16, n_layer=1, n_head=2, n_embd=8)).save_pretrained(tmp_path)
    assert from_pretrained(tmp_path).tokenizer is None  # no tokenizer files: None, and why
    theirs = tiny_tokenizer_json(tmp_path)
    model = from_pretrained(tmp_path)
    assert model.tokenizer.encode("hello world") == theirs.encode("hello world").ids


def test_a_sentencepiece_gguf_loads_with_its_tokenizer(tmp_path):
    """A tiny Llama GGUF whose vocabulary is SentencePiece ("llama"): model.tokenizer is the SentencePiece one, and
    generation stops at the file's eos and end-of-turn ids."""
    gguf = pytest.importorskip("gguf")
    from pytransformer import from_pretrained

    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581", "h", "i", "hi", "\u2581hi"]
    n = len(pieces)
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_block_count(1), w.add_context_length(16), w.add_embedding_length(8), w.add_feed_forward_length(16)
    w.add_head_count(2), w.add_head_count_kv(2), w.add_layer_norm_rms_eps(1e-5), w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("llama"), w.add_token_list(pieces)
    w.add_token_scores([0.0] * 259 + [-1.0, -2.0, -3.0, -0.5, -0.1])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * 5)
    w.add_bos_token_id(1), w.add_eos_token_id(2), w.add_eot_token_id(n - 2)  # (an end of turn of its own)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (n, 8), "output_norm.weight": (8,), "output.weight": (n, 8),
              "blk.0.attn_norm.weight": (8,), "blk.0.ffn_norm.weight": (8,), "blk.0.attn_q.weight": (8, 8),
              "blk.0.attn_k.weight": (8, 8), "blk.0.attn_v.weight": (8, 8), "blk.0.attn_output.weight": (8, 8),
              "blk.0.ffn_gate.weight": (16, 8), "blk.0.ffn_up.weight": (16, 8), "blk.0.ffn_down.weight": (8, 16)}
    for name, shape in shapes.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    tok = from_pretrained(tmp_path / "m.gguf").tokenizer
    assert tok.kind.startswith("SentencePiece")
    assert tok.encode("hi hi", add_special_tokens=True) == [1, n - 1, n - 1]
    assert tok.decode([1, n - 1, n - 1, 2], skip_special_tokens=True) == "hi hi"
    assert tok.stop_ids == [2, n - 2] and tok.eos_id == 2


def test_a_gguf_byte_level_vocabulary_with_a_regex_pre_tokenizer_splits_as_its_pattern():
    """tokenizer.ggml.pre "qwen2": the vocabulary and merges of a Qwen2-style BPE, split by Qwen2's pattern."""
    from test_tokenizer_json import QWEN2_SPLIT, byte_level_bpe
    from tokenizer_data import TORTURE

    theirs = byte_level_bpe(QWEN2_SPLIT, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_start|>",
                            ignore_merges=False)
    spec = json.loads(theirs.to_str())
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    specials = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
    ours = T.from_gguf_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
                                 "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
                                 "tokenizer.ggml.token_type": [3 if t in specials else 1 for t in tokens],
                                 "tokenizer.ggml.eos_token_id": vocab["<|endoftext|>"]})
    for text in TORTURE + ["<|im_start|>user\nhi<|im_end|>\n", "12345 67"]:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False).ids, repr(text)
    assert ours.stop_ids == sorted({vocab["<|endoftext|>"], vocab["<|im_end|>"]})
