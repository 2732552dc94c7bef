"""The HTTP routes (Starlette): each handler reads its server's state from request.app.state.server.

Before any work starts a request's body is bounded in size and in the time it takes to arrive, its fields are
checked (serve/checks.py), and its prompt is bounded in characters; tokenising (and the chat template) runs off
the event loop, then the prompt is bounded in tokens by the engine's context. So /health answers whatever the
other requests are doing."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from ..generate import Sampler
from . import checks
from .checks import RequestError
from .engine import Busy, Engine, Job, Tokenizer

log = logging.getLogger("pytransformer.serve")


@dataclass
class Limits:
    """What a request may ask for."""

    max_body: int = 1 << 20          # bytes (413 beyond)
    body_timeout: float = 30.0       # seconds for a body to arrive (408 beyond)
    chars_per_token: int = 16        # a prompt's characters at most, per token of the engine's context
    max_inputs: int = 64             # texts in one embeddings request


@dataclass
class Server:
    """Everything the handlers share."""

    engine: Engine
    tokenizer: Tokenizer
    model_name: str
    encoder: object = None  # (a SentenceEncoder, for /v1/embeddings)
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    created: int = field(default_factory=lambda: int(time.time()))
    # tokenising and embedding, off the event loop
    pool: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="pytransformer-http"))

    @property
    def max_chars(self):
        return self.limits.chars_per_token * self.engine.context

    async def off_loop(self, f, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, f, *args)


def error(e: RequestError):
    from starlette.responses import JSONResponse

    return JSONResponse(e.body(), status_code=e.status, headers={"Retry-After": "1"} if e.status == 503 else None)


def _authorize(request):
    key = request.app.state.server.api_key
    if key is not None and request.headers.get("authorization") != f"Bearer {key}":
        raise RequestError("invalid or missing API key", status=401, kind="authentication_error")


async def _body(request, limits: Limits) -> bytes:
    """The body's bytes: at most limits.max_body of them (413), arrived within limits.body_timeout (408)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_body:
        raise RequestError(f"the body has {length} bytes; this server takes {limits.max_body} at most", status=413)
    chunks, size = [], 0

    async def read():
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body:
                raise RequestError(f"the body is over {limits.max_body} bytes, the most this server takes",
                                   status=413)
            chunks.append(chunk)
    try:
        await asyncio.wait_for(read(), limits.body_timeout)
    except asyncio.TimeoutError:
        raise RequestError(f"the body did not arrive within {limits.body_timeout:g} s", status=408) from None
    return b"".join(chunks)


async def read(request) -> dict:
    """The checked JSON body of an authorized request."""
    _authorize(request)
    return checks.parse(await _body(request, request.app.state.server.limits))


def handler(f):
    """A route whose RequestErrors become their error responses."""
    async def route(request):
        try:
            return await f(request)
        except RequestError as e:
            return error(e)
    route.__name__ = f.__name__
    return route


@handler
async def chat(request):
    server = request.app.state.server
    body = await read(request)
    messages = checks.chat_messages(body, server.max_chars)
    sampling = checks.sampling(body, server.engine.context)
    tok = server.tokenizer

    def tokenize():
        try:
            text = tok.apply_chat_template(messages)
        except ValueError as e:  # (a template may refuse a conversation: roles out of order, say)
            raise RequestError(str(e), "messages") from None
        return tok.encode(text)
    ids = await server.off_loop(tokenize)
    return await _complete(request, server, body, sampling, ids, "chat")


@handler
async def completions(request):
    server = request.app.state.server
    body = await read(request)
    prompt = checks.prompt_text(body, server.max_chars)
    sampling = checks.sampling(body, server.engine.context)
    ids = await server.off_loop(server.tokenizer.encode, prompt)
    return await _complete(request, server, body, sampling, ids, "completion")


@handler
async def embeddings(request):
    server = request.app.state.server
    body = await read(request)
    encoder = server.encoder
    if encoder is None:
        raise RequestError("this server has no embedding model (start it with --embedding-model)",
                           status=404, kind="not_found_error")
    texts = checks.embedding_inputs(body, server.max_chars, server.limits.max_inputs)
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise RequestError("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    emb, count = await server.off_loop(lambda: (encoder.encode(texts),
                                                sum(len(encoder.tokenizer.encode(t)) for t in texts)))
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(np.ascontiguousarray(e, "<f4").tobytes()).decode()
             if fmt == "base64" else [float(v) for v in e]} for i, e in enumerate(emb)]
    return _json({"object": "list", "data": data, "model": body.get("model") or "embedding",
                  "usage": {"prompt_tokens": count, "total_tokens": count}})


@handler
async def models(request):
    _authorize(request)
    server = request.app.state.server
    names = [server.model_name] + (["embedding"] if server.encoder is not None else [])
    return _json({"object": "list", "data": [{"id": name, "object": "model", "created": server.created,
                                              "owned_by": "pytransformer"} for name in names]})


async def health(request):
    engine = request.app.state.server.engine
    return _json({"status": "ok", "running": len(engine.running), "waiting": len(engine.waiting)})


def _json(obj, status=200):
    from starlette.responses import JSONResponse

    return JSONResponse(obj, status_code=status)


# --- completions: jobs for the engine, their items as an OpenAI response -------------------------------------------


def _jobs(server, body, sampling, ids, out):
    """The request's jobs (one per choice), its prompt bounded by the engine's context."""
    max_tokens = checks.max_tokens_for(sampling, len(ids), server.engine.context,
                                       "messages" if "messages" in body else "prompt")
    sampler = Sampler(sampling.temperature, None, sampling.top_p if sampling.top_p < 1.0 else None)
    return Job.choices(sampling.n, ids, max_tokens, sampler, sampling.seed, sampling.stop, sampling.logprobs,
                       asyncio.get_running_loop(), out)


async def _complete(request, server, body, sampling, ids, kind):
    out = asyncio.Queue()
    jobs = _jobs(server, body, sampling, ids, out)
    try:
        server.engine.submit(jobs)
    except Busy as e:
        raise RequestError(f"the server is busy: {e}", status=503, kind="server_busy") from None
    reply = _Reply(kind, body.get("model") or server.model_name, len(ids))
    if body.get("stream"):
        from starlette.responses import StreamingResponse

        return StreamingResponse(_events(server.engine, jobs, out, reply), media_type="text/event-stream")
    collect = asyncio.ensure_future(_collect(jobs, out, reply))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        collect.cancel()
        server.engine.cancel(jobs)  # (a client gone frees its places at the next round)
    return collect.result() if collect.done() and not collect.cancelled() else _json({}, 499)


async def _disconnected(request):
    """Returns once the client has gone (the body was read: what comes next is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Reply:
    """The OpenAI shapes of one request's reply: chunks while streaming, the whole object otherwise."""

    def __init__(self, kind, model, prompt_tokens):
        self.kind, self.model, self.prompt_tokens = kind, model, prompt_tokens
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"

    def usage(self, usages):
        completion = sum(u["completion_tokens"] for u in usages)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def chunk(self, index, delta=None, finish=None, usage=None):
        """One server-sent event: a choice's delta ({"content": text}, chat's first one with its role)."""
        if self.kind == "chat":
            choice = {"index": index, "delta": delta or {}, "finish_reason": finish}
        else:
            choice = {"index": index, "text": (delta or {}).get("content", ""), "finish_reason": finish,
                      "logprobs": None}
        obj = {"id": self.id, "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
               "created": int(time.time()), "model": self.model, "choices": [choice]}
        if usage:
            obj["usage"] = usage
        return "data: " + json.dumps(obj) + "\n\n"

    def whole(self, pieces, finishes, usages, jobs):
        choices = []
        for i, job in enumerate(jobs):
            text = "".join(t for t, _ in pieces[i])
            if self.kind == "chat":
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "finish_reason": finishes[i], "logprobs": None})
            else:
                choices.append({"index": i, "text": text, "finish_reason": finishes[i],
                                "logprobs": None if job.logprobs is None else _logprobs(pieces[i])})
        return {"id": self.id, "object": "chat.completion" if self.kind == "chat" else "text_completion",
                "created": int(time.time()), "model": self.model, "choices": choices, "usage": self.usage(usages)}


def _logprobs(pieces):
    """A completion choice's logprobs object from its (text, (logprob, [(token, logprob)])) items."""
    offsets = np.cumsum([0] + [len(t) for t, _ in pieces[:-1]]).tolist() if pieces else []
    return {"tokens": [t for t, _ in pieces], "token_logprobs": [info[0] for _, info in pieces],
            "top_logprobs": [dict(info[1]) for _, info in pieces], "text_offset": offsets}


def _server_error(message):
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


async def _collect(jobs, out, reply):
    pieces = [[] for _ in jobs]
    finishes, usages, left = [None] * len(jobs), [], len(jobs)
    while left:
        index, item = await out.get()
        if item[0] == "token":
            pieces[index].append((item[1], item[2]))
        elif item[0] == "done":
            finishes[index] = item[1]
            usages.append(item[2])
            left -= 1
        else:
            return _json(_server_error(item[1]), 500)
    return _json(reply.whole(pieces, finishes, usages, jobs))


async def _events(engine, jobs, out, reply):
    try:
        if reply.kind == "chat":
            for i in range(len(jobs)):
                yield reply.chunk(i, {"role": "assistant", "content": ""})
        usages, left = [], len(jobs)
        while left:
            index, item = await out.get()
            if item[0] == "token":
                if item[1]:
                    yield reply.chunk(index, {"content": item[1]})
            elif item[0] == "done":
                usages.append(item[2])
                left -= 1
                yield reply.chunk(index, finish=item[1], usage=reply.usage(usages) if not left else None)
            else:
                yield "data: " + json.dumps(_server_error(item[1])) + "\n\n"
                return
        yield "data: [DONE]\n\n"
    finally:
        engine.cancel(jobs)  # (a client gone mid-stream frees its places at the next round)


# --- the application -----------------------------------------------------------------------------------------------


class AccessLog:
    """ASGI middleware: one log line per request when its response ends: client, method, path, status,
    seconds."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), None

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info("%s %s %s %s %.3fs", client[0], scope["method"], scope["path"], status or "-",
                     time.perf_counter() - start)


def create_app(model, tokenizer, model_name, encoder=None, api_key=None, max_queue=64, limits=None):
    """The Starlette application over a model its engine runs (started here, on its own thread)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                            Route("/v1/completions", completions, methods=["POST"]),
                            Route("/v1/embeddings", embeddings, methods=["POST"]),
                            Route("/v1/models", models, methods=["GET"]),
                            Route("/health", health, methods=["GET"])],
                    middleware=[Middleware(AccessLog)])
    app.state.server = Server(Engine(model, tokenizer, max_queue), tokenizer, model_name, encoder, api_key,
                              limits or Limits())
    app.state.engine = app.state.server.engine
    return app
