"""The one rule for which token ids end a generated turn, shared by every tokenizer."""

from __future__ import annotations

# Qwen / ChatML, Gemma, Llama 3 (and 3.1's end of a tool call), Phi-3
END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|end|>")


def stop_ids(token_id, eos_ids) -> list[int]:
    """Every end-of-sequence id of the file or config (eos_ids: ints or None), and the end-of-turn tokens of
    END_OF_TURN that the vocabulary has (token_id: str -> id or None)."""
    ids = {int(i) for i in eos_ids if i is not None}
    ids.update(i for i in map(token_id, END_OF_TURN) if i is not None)
    return sorted(ids)
