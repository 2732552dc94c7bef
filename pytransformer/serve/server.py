"""serve(): the application on uvicorn, on a socket bound first (a port in use is an OSError naming host:port,
before anything else starts), with timeouts for connections that say nothing and an access log on stderr."""

from __future__ import annotations

import logging
import os
import socket
import sys

from .app import Limits, create_app, log


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; OSError with a one-line message naming them when it cannot be."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        error = OSError(f"cannot listen on {host}:{port}: {os.strerror(e.errno) if e.errno else e}")
        error.errno = e.errno
        raise error from None


def _protocol():
    """uvicorn's h11 protocol, except that a connection's keep-alive timer also runs from the moment it opens and
    until a whole request head has arrived: a connection that says nothing, or trickles its head, is closed after
    timeout_keep_alive seconds (uvicorn's own runs only between requests). Bodies: Limits.body_timeout."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

        def data_received(self, data):  # (uvicorn's, less cancelling the timer: a request head does that)
            self.conn.receive_data(data)
            self.handle_events()

    return Protocol


def serve(model, tokenizer, name, host="127.0.0.1", port=8000, embedding_model=None, api_key=None, max_queue=64,
          limits: Limits | None = None, timeout_keep_alive=5.0, aliases=(), rerank_model=None):
    """Serve a loaded model (and an encoder from embedding_model for /v1/embeddings, a cross-encoder from
    rerank_model for /v1/rerank: each a folder, a packaged name or a cached repo id) until interrupted; aliases:
    other names requests may give as their model. OSError (one line, naming host:port) when the port cannot be
    had."""
    try:
        import uvicorn
    except ImportError:
        raise RuntimeError('serving needs the serve extra: pip install "pytransformer[serve]"') from None
    sock = listen(host, port)
    encoder = None
    if embedding_model:
        from ..sentence import SentenceEncoder

        encoder = SentenceEncoder(embedding_model)
    app = create_app(model, tokenizer, name, encoder, api_key, max_queue, limits, aliases)
    if rerank_model:
        from ..crossencoder import CrossEncoder
        from .retrieval import register

        register(app, CrossEncoder(rerank_model))
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    print(f"serving {name} on http://{host}:{port}/v1 (OpenAI API)", flush=True)
    uvicorn.Server(config(app, timeout_keep_alive)).run(sockets=[sock])


def config(app, timeout_keep_alive=5.0):
    """uvicorn's settings for the application: its own logs at warnings only (the access log is ours), and
    connections that say nothing closed after timeout_keep_alive seconds."""
    import uvicorn

    return uvicorn.Config(app, log_level="warning", http=_protocol(), timeout_keep_alive=timeout_keep_alive)
