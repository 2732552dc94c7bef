"""The compiled pre-tokenizer splits (_fast.Splitter: GPT-2's, Llama 3's and Qwen2's regexes, BERT's whitespace +
punctuation) give exactly the regexes' matches (splitters.py, the spec): on the torture set and on random text
drawn from the characters where the alternatives meet."""

from __future__ import annotations

import pytest
from tokenizer_data import TORTURE

from pytransformer.tokenizers import splitters
from pytransformer.tokenizers.unicode_regex import compile_pattern

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

if splitters._fast is None:
    pytest.skip("the Cython module is not built", allow_module_level=True)

# letters (with ſ and capitals for the case-folded contractions), digits of three scripts, every kind of space,
# line breaks, punctuation and symbols, a combining mark, CJK, an emoji, the information separators \x1c..\x1f
ALPHABET = list("aAsStTrReEvVmMlLdD\u017fzé日本") + list("019١٢Ⅻ①") + list(" \t\n\r\x0b\x0c\x85\xa0\u2028\u3000") \
    + list("'’.,!?-_()[]{}\"#$%&*+/<=>@\\^`|~«»…") + ["\u0301", "\U0001F917", "\x1c", "\x1f", "\x00"]
SPLITS = {"gpt2": splitters.GPT2, "llama3": splitters.LLAMA3, "qwen2": splitters.QWEN2, "bert": "bert"}
MORE = ["it's IT'S it'S it\u017fs 'll 'LL 'Re 're", "a'", "'", "x 's", "  \n\n  \r\n\t end", "1234567 12 ١٢٣٤",
        "(hello) [world] \"quoted\"", "a\n\n\nb", " \n", "\n ", "   a", "a   ", "?!\n\nok", "\u3000\u3000x"]


def spec(pattern):
    return splitters.bert_regex().findall if pattern == "bert" else compile_pattern(pattern).findall


@pytest.mark.parametrize("name", list(SPLITS))
def test_the_splitter_equals_its_regex_on_the_torture_set(name):
    compiled, regex = splitters.findall(SPLITS[name]), spec(SPLITS[name])
    for text in TORTURE + MORE:
        assert compiled(text) == regex(text), repr(text)


@pytest.mark.parametrize("name", list(SPLITS))
@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.sampled_from(ALPHABET), max_size=24).map("".join))
def test_the_splitter_equals_its_regex_on_random_text(name, text):
    assert splitters.findall(SPLITS[name])(text) == spec(SPLITS[name])(text)


def test_a_splitter_names_a_bad_split_or_table():
    with pytest.raises(ValueError, match="split must be one of"):
        splitters._fast.Splitter("gpt3", bytes(0x110000))
    with pytest.raises(ValueError, match="one byte per code point"):
        splitters._fast.Splitter("gpt2", b"")
