"""`pytransformer serve MODEL`: the OpenAI HTTP API over a model the engine runs (Starlette + uvicorn, the optional
`serve` extra: `pip install "pytransformer[serve]"`).

    POST /v1/chat/completions   messages through the model's chat template; "stream": true -> server-sent events
    POST /v1/completions        a prompt continued; "logprobs": k -> the chosen tokens' log-probabilities, top k
    POST /v1/embeddings         sentence embeddings (MiniLM or another BERT-family encoder), floats or base64
    GET  /v1/models, GET /health

The model runs on one worker thread (the event loop never waits on a kernel). Requests join the worker's running
set as they arrive and leave as they finish, one token each per round (continuous batching at the request level);
a client that disconnects frees its place at once. Bad requests get a 4xx with an OpenAI-style error object; the
queue of waiting requests is bounded (503 with Retry-After beyond it); --api-key asks for a bearer token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import threading
import time
import uuid

import numpy as np

from . import _core
from .generate import KVCache, Sampler


class RequestError(Exception):
    """A client's mistake: an HTTP status and an OpenAI-style error object."""

    def __init__(self, message, param=None, status=400, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind

    def body(self):
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": None}}


# --- request parameters, checked --------------------------------------------------------------------------------


def _number(body, name, lo, hi, default, kind=float):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise RequestError(f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {value!r}", name)
    if not lo <= value <= hi:
        raise RequestError(f"'{name}' must be in [{lo}, {hi}], got {value}", name)
    return kind(value)


def _stops(body):
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("'stop' must be a non-empty string or a list of at most 4 of them", "stop")
    return stop


# fields a client may send with the type each must have (values are checked where they are used)
_FIELD_TYPES = {"model": str, "stream": bool, "user": str, "echo": bool, "stream_options": dict,
                "presence_penalty": (int, float), "frequency_penalty": (int, float), "logit_bias": dict}


def _check_types(body):
    for name, kind in _FIELD_TYPES.items():
        value = body.get(name)
        if value is None:
            continue
        wrong = isinstance(value, bool) and kind == (int, float) or not isinstance(value, kind)
        if wrong:
            raise RequestError(f"'{name}' must be {getattr(kind, '__name__', 'a number')}, got {value!r}", name)
    for name in ("presence_penalty", "frequency_penalty"):  # accepted at 0 (the default) only: not implemented
        if body.get(name) not in (None, 0, 0.0):
            raise RequestError(f"'{name}' is not supported (use 0)", name)
    if body.get("logit_bias"):
        raise RequestError("'logit_bias' is not supported", "logit_bias")
    if body.get("echo"):
        raise RequestError("'echo' is not supported", "echo")


class _Tagged:
    """A job's view of its request's queue: every item it puts goes in as (choice index, item)."""

    def __init__(self, out, index):
        self.out, self.index = out, index

    def put_nowait(self, item):
        self.out.put_nowait((self.index, item))


class Job:
    """One completion being generated: its prompt, sampling settings, cache and where its tokens go."""

    def __init__(self, ids, max_tokens, sampler, seed, stop, logprobs, loop, out):
        self.ids, self.max_tokens, self.sampler, self.stop, self.logprobs = ids, max_tokens, sampler, stop, logprobs
        self.rng = np.random.default_rng(seed)
        self.loop, self.out = loop, out
        self.cancelled = False
        self.generated, self.text = [], ""
        self.cache = self.logits = self.slot = self.best = None  # (best: the logits' argmax, when the step has it)
        self.pending, self.fed, self.reused = [], 0, 0  # prompt tokens not yet in the cache, those that are
        self.window = self.window_chars = 0  # generated[window:] is decoded per token; its first window_chars are out
        self.sink = None  # the engine's list of items to deliver (None: each item on its own)

    def emit(self, item):
        if self.sink is None:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        else:
            self.sink.append((self, item))


def _deliver(items):
    """On the event loop: a round's items, each into its job's queue."""
    for out, item in items:
        out.put_nowait(item)


def _zeros(shape):
    """float32 zeros whose pages cost memory only once written, and in 4 KiB pages: with transparent huge pages
    a request's first rows in a fresh slot each faulted in (and zeroed) 2 MiB, 200-300 ms per prompt on this
    machine (anonymous mmap + MADV_NOHUGEPAGE: 1.5 ms)."""
    import mmap

    n = int(np.prod(shape)) * 4
    m = mmap.mmap(-1, max(n, 1))
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        m.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(m, np.float32, int(np.prod(shape))).reshape(shape)


class PrefixStore:
    """The keys and values of recent prompts, so that a prompt sharing a prefix with one of them (a chat
    template's system prompt, a few-shot preamble, an earlier turn of the conversation) prefills only the rest:
    the shared rows are copied into its cache slot (as vLLM's prefix caching and llama.cpp's prompt cache do).
    The copied rows are the ones the earlier prefill computed, so a reply can differ from a cold one by float
    rounding only."""

    min_tokens = 16  # shorter shared prefixes are not worth a copy
    entries = 8      # prompts kept (least recently used dropped)

    def __init__(self):
        self.items = []  # (token ids, [k per layer (T, NKV, HS)], [v per layer]), most recently used last

    def restore(self, ids, slot, k, v) -> int:
        """Copy the longest stored prefix of ids (at most len(ids) - 1 tokens: the last one is prefilled for its
        logits) into slot's rows of the caches k, v -> its length (0: none)."""
        best, best_len = None, 0
        for item in self.items:
            n = min(len(item[0]), len(ids) - 1)
            same = np.flatnonzero(np.asarray(item[0][:n]) != np.asarray(ids[:n]))
            length = int(same[0]) if same.size else n
            if length > best_len:
                best, best_len = item, length
        if best is None or best_len < self.min_tokens:
            return 0
        self.items.remove(best)
        self.items.append(best)
        for dst, src in zip(k, best[1]):
            dst[slot, :best_len] = src[:best_len]
        for dst, src in zip(v, best[2]):
            dst[slot, :best_len] = src[:best_len]
        return best_len

    def keep(self, ids, slot, k, v) -> None:
        """Store the prompt ids whose keys and values fill slot's first len(ids) rows."""
        n = len(ids)
        self.items.append((list(ids), [a[slot, :n].copy() for a in k], [a[slot, :n].copy() for a in v]))
        del self.items[:-self.entries]


class Engine:
    """The model on one worker thread. submit() from the event loop; results come back on each job's queue as
    ("token", text, logprob info) items and one ("done", finish_reason, usage) or ("error", message).

    Each round admits waiting jobs (their prompts prefilled into free slots of the shared KV caches), samples one
    token for every running job and, for Llama-family models, advances all of them in one batched step (each
    weight read once for the whole batch: throughput grows with concurrency); other models step one by one."""

    def __init__(self, model, tokenizer, max_queue=64, max_running=16, context=2048):
        self.model, self.tok = model, tokenizer
        self.waiting = queue.Queue(maxsize=max_queue)
        self.max_running = max_running
        self.running: list[Job] = []
        self.outbox: list = []  # (job, item) emitted this round, delivered by _flush
        self.context = min(model.max_positions, context)
        self.batched = hasattr(model, "decode_batch")
        if self.batched:  # one cache slot per running job, allocated once (pages cost memory only once written)
            attn = model.blocks[0].attn.sublayer
            shape = (max_running, self.context, attn.NKV, attn.HS)
            self.k = [_zeros(shape) for _ in model.blocks]
            self.v = [_zeros(shape) for _ in model.blocks]
            self.free = list(range(max_running))
            self.prefixes = PrefixStore()
        self.thread = threading.Thread(target=self._work, name="pytransformer-engine", daemon=True)
        self.thread.start()

    def submit(self, job):
        job.sink = self.outbox
        if len(job.ids) + job.max_tokens > self.context:
            raise RequestError(f"the prompt ({len(job.ids)} tokens) and max_tokens ({job.max_tokens}) exceed the "
                               f"server's context of {self.context}", "max_tokens")
        try:
            self.waiting.put_nowait(job)
        except queue.Full:
            raise RequestError("the server is busy: too many requests waiting", status=503,
                               kind="server_busy") from None

    def close(self, timeout=10.0):
        """Stop the worker once the running jobs are done (waiting ones are dropped) and wait for it."""
        self._closing = True
        try:
            self.waiting.put_nowait(None)
        except queue.Full:
            pass
        self.thread.join(timeout)

    _closing = False

    def _work(self):
        with self.model.evaluating():  # (for the worker's lifetime: entering it walks every module, ~2 ms)
            self._serve()

    def _serve(self):
        while True:
            if not self.running:
                job = self.waiting.get()  # (idle: wait for work)
                if job is None or self._closing:
                    return
                self._admit(job)
            while len(self.running) < self.max_running:
                try:
                    job = self.waiting.get_nowait()
                except queue.Empty:
                    break
                if job is not None and not self._closing:
                    self._admit(job)
            try:
                self._round()
            except Exception as e:  # a failure ends the round's jobs, never the worker
                for job in self.running:
                    job.emit(("error", f"{type(e).__name__}: {e}"))
                    self._release(job)
                self.running = []
            self._flush()

    def _flush(self):
        """Deliver the items the jobs emitted since the last flush: one wake-up of each event loop per round
        (one per item cost the loop a wake-up and a pipe write for every token of every stream)."""
        by_loop = {}
        for job, item in self.outbox:
            by_loop.setdefault(job.loop, []).append((job.out, item))
        self.outbox.clear()
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)

    def _admit(self, job):
        if job.cancelled:
            return
        try:
            if self.batched:  # the prompt is fed to the next rounds' steps, beside the other jobs' tokens
                job.slot = self.free.pop()
                job.fed = job.reused = self.prefixes.restore(job.ids, job.slot, self.k, self.v)
                job.pending = list(job.ids[job.fed:])
            else:
                job.cache = self.model.new_cache(1, self.context)
                job.logits = self.model(np.array([job.ids], np.int64), cache=job.cache, last_only=True)[0, -1]
            self.running.append(job)
        except Exception as e:
            job.emit(("error", f"{type(e).__name__}: {e}"))
            self._release(job)

    def _release(self, job):
        if self.batched and getattr(job, "slot", None) is not None:
            self.free.append(job.slot)
            job.slot = None

    prompt_rows = 128  # prompt tokens fed per step at most (a long prompt over several steps: others keep going)
    batch_rows = _core.small_batch_rows  # rows the batched products take in one pass: beyond it a step costs twice

    def _round(self):
        going = []
        for job in list(self.running):
            finish = None if job.cancelled or job.pending else self._sample(job)
            if job.cancelled or finish is not None:
                if finish is not None:
                    job.emit(("done", finish, {"prompt_tokens": len(job.ids),
                                               "completion_tokens": len(job.generated),
                                               "total_tokens": len(job.ids) + len(job.generated)}))
                self.running.remove(job)
                self._release(job)
            else:
                going.append(job)
        if not going:
            return
        if self.batched:
            self._step(going)
        else:
            for j in going:
                j.logits = self.model(np.array([[j.generated[-1]]], np.int64), cache=j.cache)[0, -1]

    def _step(self, going):
        """One batched step: every decoding job's last token, and prompt tokens of the jobs still prefilling (rows
        of one slot in increasing positions); logits for the rows whose next token is wanted."""
        ids, slots, positions, wanted, owners, complete = [], [], [], [], [], []
        # prompt rows fill the step up to batch_rows beside the decoding jobs' (a few more would double its cost
        # for them); a backlog of prompts (many arriving at once) goes in wide steps, as a prefill would
        decoding = sum(1 for j in going if not j.pending)
        backlog = sum(len(j.pending) for j in going)
        budget = self.prompt_rows if backlog >= self.prompt_rows // 2 else max(1, self.batch_rows - decoding)
        for j in going:
            if j.pending:
                take = j.pending[:budget]  # (at least one prompt row per step: the first waiting job's)
                if not take:
                    continue
                budget -= len(take)
                ids += take
                slots += [j.slot] * len(take)
                positions += range(j.fed, j.fed + len(take))
                j.fed += len(take)
                j.pending = j.pending[len(take):]
                if j.pending:
                    continue
                complete.append(j)
            else:
                ids.append(j.generated[-1])
                slots.append(j.slot)
                positions.append(len(j.ids) + len(j.generated) - 1)
            wanted.append(len(ids) - 1)
            owners.append(j)
        ids, slots, positions = (np.array(a, np.int64) for a in (ids, slots, positions))
        self._flush()  # (the event loop streams the last round's tokens while this step runs without the GIL)
        logits = self.model.decode_batch(ids, slots, positions, self.k, self.v,
                                         logit_rows=np.array(wanted, np.int64))
        best = logits.argmax(-1)  # (every row's greedy token in one call)
        for j, row, b in zip(owners, logits, best.tolist()):
            j.logits, j.best = row, b
        for j in complete:  # (after the step wrote their rows) prompts with something new to share
            if j.reused < len(j.ids) - PrefixStore.min_tokens:
                self.prefixes.keep(j.ids, j.slot, self.k, self.v)

    context_tokens = 4  # tokens decoded before the new ones (a decoder may treat a text's first token apart)

    def _slide(self, job):
        """Move the job's decoding window up to its last context_tokens tokens (each token decodes only a few
        tokens instead of all of them), unless that would start it inside a character."""
        start = len(job.generated) - self.context_tokens
        text = self.tok.decode(job.generated[start:])
        if not text.startswith("\ufffd"):
            job.window, job.window_chars = start, len(text)

    def _sample(self, job):
        """The job's next token from its logits, emitted -> the finish reason, or None to go on."""
        logits = job.logits
        if job.best is not None and job.sampler.temperature == 0.0 and job.sampler.repetition_penalty == 1.0:
            tok = job.best  # (greedy: the step's argmax, the Sampler's own rule)
        else:
            seen = None
            if job.sampler.repetition_penalty != 1.0:
                seen = np.zeros((1, logits.shape[-1]), bool)
                seen[0, job.ids + job.generated] = True
            tok = int(job.sampler(logits[None], seen, job.rng)[0])
        info = None
        if job.logprobs is not None:
            x = logits.astype(np.float64)
            lp = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
            top = np.argsort(-lp)[:job.logprobs]
            info = (float(lp[tok]), [(self.tok.decode([int(i)]), float(lp[i])) for i in top])
        job.generated.append(tok)
        if tok in self.tok.stop_ids:
            return "stop"
        window = self.tok.decode(job.generated[job.window:])
        piece = window[job.window_chars:]
        if not piece.endswith("\ufffd"):  # (a character still arriving: wait for its last byte)
            job.text += piece
            job.window_chars = len(window)
            if len(job.generated) - job.window > 2 * self.context_tokens:
                self._slide(job)
            cut = min((job.text.find(s) for s in job.stop if s in job.text), default=-1)
            if cut >= 0:
                piece = piece[:max(0, len(piece) - (len(job.text) - cut))]
                job.text = job.text[:cut]
                if piece:
                    job.emit(("token", piece, info))
                return "stop"
            if piece:
                job.emit(("token", piece, info))
        if len(job.generated) >= job.max_tokens or len(job.ids) + len(job.generated) >= self.context:
            return "length"
        return None


# --- the HTTP application ------------------------------------------------------------------------------------------


def create_app(model, tokenizer, model_name, encoder=None, api_key=None, max_queue=64):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    engine = Engine(model, tokenizer, max_queue)
    created = int(time.time())

    def error(e: RequestError):
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    async def read(request):
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            raise RequestError("invalid or missing API key", status=401, kind="authentication_error")
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise RequestError("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError("the body must be a JSON object")
        _check_types(body)
        return body

    def jobs_for(body, ids, loop, out):
        """One job per requested choice (n), each with its own seed; their items reach `out` tagged by index."""
        if len(ids) == 0:
            raise RequestError("the prompt is empty", "prompt")
        room = model.max_positions - len(ids)
        if room < 1:
            raise RequestError(f"the prompt has {len(ids)} tokens; the model's context is {model.max_positions}",
                               "messages" if "messages" in body else "prompt")
        max_tokens = _number(body, "max_tokens", 1, room, min(256, room), int)
        n = _number(body, "n", 1, 8, 1, int)
        temperature = _number(body, "temperature", 0.0, 2.0, 1.0)
        top_p = _number(body, "top_p", 0.0, 1.0, 1.0)
        seed = _number(body, "seed", 0, 2**63 - 9, None, int) if body.get("seed") is not None else None
        logprobs = body.get("logprobs")
        if logprobs is not None:
            if isinstance(logprobs, bool):  # chat: logprobs true + top_logprobs k
                logprobs = _number(body, "top_logprobs", 0, 20, 0, int) if logprobs else None
            else:
                logprobs = _number(body, "logprobs", 0, 20, 0, int)
        stops = _stops(body)
        jobs = []
        for i in range(n):
            tagged = _Tagged(out, i)
            sampler = Sampler(temperature, None, top_p if top_p < 1.0 else None)
            jobs.append(Job(list(ids), max_tokens, sampler, None if seed is None else seed + i, stops, logprobs, loop,
                            tagged))
        return jobs

    async def run_job(request, body, ids, kind):
        loop = asyncio.get_running_loop()
        out = asyncio.Queue()
        jobs = jobs_for(body, ids, loop, out)
        for job in jobs:
            engine.submit(job)
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        name = body.get("model") or model_name

        def chunk(index, delta=None, finish=None, usage=None):
            if kind == "chat":
                choice = {"index": index, "delta": delta or {}, "finish_reason": finish}
                obj = "chat.completion.chunk"
            else:
                choice = {"index": index, "text": (delta or {}).get("content", ""), "finish_reason": finish,
                          "logprobs": None}
                obj = "text_completion"
            out_ = {"id": rid, "object": obj, "created": int(time.time()), "model": name, "choices": [choice]}
            if usage:
                out_["usage"] = usage
            return "data: " + json.dumps(out_) + "\n\n"

        def total(usages):
            return {"prompt_tokens": len(ids), "completion_tokens": sum(u["completion_tokens"] for u in usages),
                    "total_tokens": len(ids) + sum(u["completion_tokens"] for u in usages)}

        if body.get("stream"):
            async def events():
                try:
                    if kind == "chat":
                        for i in range(len(jobs)):
                            yield chunk(i, {"role": "assistant", "content": ""})
                    usages, left = [], len(jobs)
                    while left:
                        index, item = await out.get()
                        if item[0] == "token":
                            yield chunk(index, {"content": item[1]})
                        elif item[0] == "done":
                            usages.append(item[2])
                            left -= 1
                            yield chunk(index, finish=item[1], usage=total(usages) if not left else None)
                        else:
                            yield "data: " + json.dumps({"error": {"message": item[1], "type": "server_error"}}) + \
                                  "\n\n"
                            return
                    yield "data: [DONE]\n\n"
                finally:
                    for job in jobs:  # (a client gone mid-stream frees its places at the next round)
                        job.cancelled = True
            return StreamingResponse(events(), media_type="text/event-stream")

        pieces = [[] for _ in jobs]
        finishes, usages = [None] * len(jobs), []
        try:
            left = len(jobs)
            while left:
                index, item = await out.get()
                if item[0] == "token":
                    pieces[index].append((item[1], item[2]))
                elif item[0] == "done":
                    finishes[index] = item[1]
                    usages.append(item[2])
                    left -= 1
                else:
                    return JSONResponse({"error": {"message": item[1], "type": "server_error", "param": None,
                                                   "code": None}}, status_code=500)
        finally:
            for job in jobs:
                job.cancelled = True
        choices = []
        for i, job in enumerate(jobs):
            text = "".join(t for t, _ in pieces[i])
            if kind == "chat":
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "finish_reason": finishes[i], "logprobs": None})
                continue
            lp = None
            if job.logprobs is not None:
                lp = {"tokens": [t for t, _ in pieces[i]], "token_logprobs": [info[0] for _, info in pieces[i]],
                      "top_logprobs": [dict(info[1]) for _, info in pieces[i]], "text_offset": []}
                offset = 0
                for t, _ in pieces[i]:
                    lp["text_offset"].append(offset)
                    offset += len(t)
            choices.append({"index": i, "text": text, "finish_reason": finishes[i], "logprobs": lp})
        return JSONResponse({"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
                             "created": int(time.time()), "model": name, "choices": choices, "usage": total(usages)})

    async def chat(request):
        try:
            body = await read(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in messages):
                raise RequestError("'messages' must be a non-empty list of {role, content} strings", "messages")
            ids = tokenizer.encode(tokenizer.apply_chat_template(
                [{"role": m["role"], "content": m["content"]} for m in messages]))
            return await run_job(request, body, ids, "chat")
        except RequestError as e:
            return error(e)

    async def completions(request):
        try:
            body = await read(request)
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise RequestError("'prompt' must be a string", "prompt")
            return await run_job(request, body, tokenizer.encode(prompt), "completion")
        except RequestError as e:
            return error(e)

    async def embeddings(request):
        try:
            body = await read(request)
            if encoder is None:
                raise RequestError("this server has no embedding model (start it with --embedding-model)",
                                   status=404, kind="not_found_error")
            texts = body.get("input")
            texts = [texts] if isinstance(texts, str) else texts
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                raise RequestError("'input' must be a string or a non-empty list of strings", "input")
            fmt = body.get("encoding_format", "float")
            if fmt not in ("float", "base64"):
                raise RequestError("'encoding_format' must be 'float' or 'base64'", "encoding_format")
            emb = await asyncio.get_running_loop().run_in_executor(None, encoder.encode, texts)
            data = [{"object": "embedding", "index": i,
                     "embedding": base64.b64encode(np.ascontiguousarray(e, "<f4").tobytes()).decode()
                     if fmt == "base64" else [float(v) for v in e]} for i, e in enumerate(emb)]
            count = sum(len(encoder.tokenizer.encode(t)) for t in texts)
            return JSONResponse({"object": "list", "data": data, "model": body.get("model") or "embedding",
                                 "usage": {"prompt_tokens": count, "total_tokens": count}})
        except RequestError as e:
            return error(e)

    async def models(request):
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            return error(RequestError("invalid or missing API key", status=401, kind="authentication_error"))
        data = [{"id": model_name, "object": "model", "created": created, "owned_by": "pytransformer"}]
        if encoder is not None:
            data.append({"id": "embedding", "object": "model", "created": created, "owned_by": "pytransformer"})
        return JSONResponse({"object": "list", "data": data})

    async def health(request):
        return JSONResponse({"status": "ok", "running": len(engine.running), "waiting": engine.waiting.qsize()})

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                            Route("/v1/completions", completions, methods=["POST"]),
                            Route("/v1/embeddings", embeddings, methods=["POST"]),
                            Route("/v1/models", models, methods=["GET"]),
                            Route("/health", health, methods=["GET"])])
    app.state.engine = engine
    return app


def serve(model, tokenizer, name, host="127.0.0.1", port=8000, embedding_model=None, api_key=None, max_queue=64):
    """Serve a loaded model (and an encoder from embedding_model, 'minilm' for the packaged one) until
    interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise RuntimeError('serving needs the serve extra: pip install "pytransformer[serve]"') from None
    encoder = None
    if embedding_model:
        from .sentence import SentenceEncoder

        encoder = SentenceEncoder(None if embedding_model == "minilm" else embedding_model)
    app = create_app(model, tokenizer, name, encoder, api_key, max_queue)
    print(f"serving {name} on http://{host}:{port}/v1 (OpenAI API)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
