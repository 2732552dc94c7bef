"""`pytransformer serve MODEL`: the OpenAI HTTP API over a model the engine runs (Starlette + uvicorn, the optional
`serve` extra: `pip install "pytransformer[serve]"`).

    POST /v1/chat/completions   messages through the model's chat template; "stream": true -> server-sent events
    POST /v1/completions        a prompt continued; "logprobs": k -> the chosen tokens' log-probabilities, top k
    POST /v1/embeddings         sentence embeddings (MiniLM or another BERT-family encoder), floats or base64
    GET  /v1/models, GET /health, GET /metrics (Prometheus)

Chat takes response_format (JSON, JSON of a schema) and tools (tool_choice auto / none / required / a named
function; parallel_tool_calls), the reply constrained by the grammar they give (pytransformer.constrain), its tool
calls streamed as delta.tool_calls chunks; chat and completions take logprobs, n, seed, stop lists, max_tokens
(chat: max_completion_tokens) and stream_options.include_usage (a last chunk with the usage). A field or value the
server does not support is a 400 naming it, never silently ignored; a model name other than the served one and
its aliases is a 404 model_not_found. A request whose constraint cannot go on ends alone: a 400 naming the field
before its first token, an error event after.

The model runs on one worker thread (the event loop never waits on a kernel; tokenising runs on a thread pool).
Requests join the worker's running set as they arrive and leave as they finish, one token each per round
(continuous batching at the request level); a client that disconnects frees its place at once. Bad requests get
a 4xx with an OpenAI-style error object naming the field; bodies are bounded in size (413) and in the time they
take to arrive (408); the queue of waiting requests is bounded (503 with Retry-After beyond it); --api-key asks
for a bearer token. One access-log line per request goes to stderr.

    engine.py      Engine, Job and the protocols a model and a tokenizer meet (Decoder, BatchDecoder, Tokenizer)
    slots.py       the batched rows: slots of shared caches, one decode_batch per round, the prefix store
    sequential.py  the fallback for a model without decode_batch
    checks.py      a request body checked field by field (RequestError)
    structured.py  response_format and tools: the grammar, the tools' prompt
    calls.py       a reply read into content and tool_calls, whole or as it streams (delta.tool_calls chunks)
    reply.py       a reply in OpenAI's shapes, whole or streamed;  metrics.py: GET /metrics
    app.py         the routes and create_app;  server.py: serve() on uvicorn

Starlette and uvicorn are imported only when an application is made or served.
"""

from .app import Limits, create_app
from .checks import RequestError
from .engine import BatchDecoder, Busy, Decoder, Engine, Job, Tokenizer
from .server import serve

__all__ = ["BatchDecoder", "Busy", "Decoder", "Engine", "Job", "Limits", "RequestError", "Tokenizer", "create_app",
           "serve"]
