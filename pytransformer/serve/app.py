"""The HTTP routes (Starlette): each handler reads its server's state from request.app.state.server.

Before any work starts a request's body is bounded in size and in the time it takes to arrive, its fields are
checked (serve/checks.py), and its prompt is bounded in characters; tokenising (and the chat template) runs off
the event loop, then the prompt is bounded in tokens by the engine's context. So /health answers whatever the
other requests are doing."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..constrain import ConstraintError
from ..generate import PROMPT_CHARS_PER_POSITION, Sampler
from . import checks, metrics, structured
from .checks import RequestError
from .engine import Busy, Engine, Job, Tokenizer
from .reply import Reply, collect, events

log = logging.getLogger("pytransformer.serve")


@dataclass
class Limits:
    """What a request may ask for."""

    max_body: int = 1 << 20          # bytes (413 beyond)
    body_timeout: float = 30.0       # seconds for a body to arrive (408 beyond)
    chars_per_token: int = PROMPT_CHARS_PER_POSITION  # a prompt's characters at most, per token of the context
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
    aliases: tuple = ()     # other names a request's "model" may give
    metrics: object = None  # (serve/metrics.py's, None without prometheus-client)
    created: int = field(default_factory=lambda: int(time.time()))
    # tokenising and embedding, off the event loop
    pool: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="pytransformer-http"))

    @property
    def names(self):
        """The language model's names a request may give (listed by /v1/models)."""
        return [self.model_name, *self.aliases]

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
    checks.known_fields(body, "chat")
    checks.model(body, server.names)
    messages = checks.chat_messages(body, server.max_chars)
    sampling = checks.sampling(body, server.engine.context)
    form = structured.plan(body)

    def prepare():
        try:
            text = structured.render(server.tokenizer, messages, form)
        except ValueError as e:  # (a template may refuse a conversation: roles out of order, say)
            raise RequestError(str(e), "messages") from None
        return server.tokenizer.encode(text), structured.grammar(server.tokenizer, form)
    ids, grammar = await server.off_loop(prepare)
    return await _complete(request, server, body, sampling, ids, Reply("chat", _name(body, server), len(ids), form,
                                                                       server.metrics), grammar)


@handler
async def completions(request):
    server = request.app.state.server
    body = await read(request)
    checks.known_fields(body, "completion")
    checks.model(body, server.names)
    prompt = checks.prompt_text(body, server.max_chars)
    sampling = checks.sampling(body, server.engine.context)
    ids = await server.off_loop(server.tokenizer.encode, prompt)
    return await _complete(request, server, body, sampling, ids,
                           Reply("completion", _name(body, server), len(ids), metrics=server.metrics))


def _name(body, server):
    return body.get("model") or server.model_name


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
    names = server.names + (["embedding"] if server.encoder is not None else [])
    return _json({"object": "list", "data": [{"id": name, "object": "model", "created": server.created,
                                              "owned_by": "pytransformer"} for name in names]})


async def health(request):
    engine = request.app.state.server.engine
    return _json({"status": "ok", "running": len(engine.running), "waiting": len(engine.waiting)})


async def metrics_text(request):
    server = request.app.state.server
    from starlette.responses import Response

    if server.metrics is None:
        return error(RequestError('/metrics needs prometheus-client: pip install "pytransformer[serve]"',
                                  status=404, kind="not_found_error"))
    data, media = server.metrics.exposition()
    return Response(data, media_type=media)


async def not_found(request, exc):
    """Starlette's own errors (no such route, a method the route does not take) as OpenAI error objects."""
    return error(RequestError(f"{request.method} {request.url.path}: {exc.detail}", status=exc.status_code,
                              kind="not_found_error" if exc.status_code == 404 else "invalid_request_error"))


def _json(obj, status=200):
    from starlette.responses import JSONResponse

    return JSONResponse(obj, status_code=status)


# --- completions: jobs for the engine, their items as an OpenAI response -------------------------------------------


def _jobs(server, body, sampling, ids, out, reply, grammar):
    """The request's jobs (one per choice), its prompt bounded by the engine's context; a 400 naming the field when
    its grammar cannot start."""
    max_tokens = checks.max_tokens_for(sampling, len(ids), server.engine.context,
                                       "messages" if "messages" in body else "prompt")
    sampler = Sampler(sampling.temperature, None, sampling.top_p if sampling.top_p < 1.0 else None)
    try:
        return Job.choices(sampling.n, ids, max_tokens, sampler, sampling.seed, sampling.stop, sampling.logprobs,
                           asyncio.get_running_loop(), out, grammar, sampling.ignore_eos)
    except ConstraintError as e:
        raise reply.constraint_error(str(e)) from None


async def _complete(request, server, body, sampling, ids, reply, grammar=None):
    """The reply, whole or streamed. A job that fails before the request's first token makes the response its
    error (a 400 for its constraint); one that fails later ends its stream with an error event."""
    out = asyncio.Queue()
    jobs = _jobs(server, body, sampling, ids, out, reply, grammar)
    try:
        server.engine.submit(jobs)
    except Busy as e:
        raise RequestError(f"the server is busy: {e}", status=503, kind="server_busy") from None
    began = False
    try:
        if not body.get("stream"):
            return _json(*await _unless_gone(request, collect(jobs, out, reply)))
        first = await _unless_gone(request, out.get())
        if first[1][0] == "error":
            return _json(*reply.error(*first[1][1:]))
        began = True
    except _Gone:
        return _json({}, 499)
    finally:
        if not began:  # (a reply whole or failed, or its client gone: its places free at the next round)
            server.engine.cancel(jobs)
    from starlette.responses import StreamingResponse

    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return StreamingResponse(events(server.engine, jobs, out, reply, first, usage), media_type="text/event-stream")


class _Gone(Exception):
    """The client left before its response began."""


async def _unless_gone(request, awaitable):
    """The awaitable's result; _Gone (it cancelled) when the client leaves first."""
    task, gone = asyncio.ensure_future(awaitable), asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        task.cancel()
    if task.cancelled():
        raise _Gone
    return task.result()


async def _disconnected(request):
    """Returns once the client has gone (the body was read: what comes next is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
            client, seconds = scope.get("client") or ("-", 0), time.perf_counter() - start
            log.info("%s %s %s %s %.3fs", client[0], scope["method"], scope["path"], status or "-", seconds)
            counts = scope["app"].state.server.metrics if "app" in scope else None
            if counts is not None:
                counts.request(scope["path"], status or 499, seconds)


def create_app(model, tokenizer, model_name, encoder=None, api_key=None, max_queue=64, limits=None, aliases=()):
    """The Starlette application over a model its engine runs (started here, on its own thread). aliases: other
    names a request's "model" may give."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.routing import Route

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/embeddings", embeddings, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/metrics", metrics_text, methods=["GET"]),
              Route("/health", health, methods=["GET"])]
    app = Starlette(routes=routes, middleware=[Middleware(AccessLog)], exception_handlers={HTTPException: not_found})
    engine = Engine(model, tokenizer, max_queue)
    app.state.server = Server(engine, tokenizer, model_name, encoder, api_key, limits or Limits(), tuple(aliases),
                              metrics.create(engine, [r.path for r in routes]))
    app.state.engine = engine
    return app
