"""The chat CLI's sampling default, measured: how often SmolLM2 answers the README's own example question
("Name three primary colors.") correctly at each candidate setting, over seeds 0-19, through the same path as
`pytransformer chat smollm2` (its chat template, its stop ids; 96 tokens, where every answer has named its colours).

A reply is correct when it names red, blue and yellow (the painter's primaries) or red, green and blue (light's).

    python bench/chat_defaults.py
"""

from __future__ import annotations

import re

import pytransformer

QUESTION = [{"role": "user", "content": "Name three primary colors."}]
SETTINGS = [dict(temperature=0.0), dict(temperature=0.2, top_p=0.9), dict(temperature=0.7, top_p=0.9),
            dict(temperature=1.0)]
SEEDS = range(20)


def correct(text):
    words = set(re.findall(r"[a-z]+", text.lower()))
    return {"red", "blue", "yellow"} <= words or {"red", "green", "blue"} <= words


def main():
    model = pytransformer.from_pretrained("smollm2")
    for setting in SETTINGS:
        seeds = [0] if setting["temperature"] == 0.0 else SEEDS
        right = sum(correct(model.chat(QUESTION, max_new_tokens=96, seed=s, **setting)) for s in seeds)
        print(f"{setting}: {right}/{len(seeds)} correct", flush=True)


if __name__ == "__main__":
    main()
