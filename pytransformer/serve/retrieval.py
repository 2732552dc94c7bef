"""The reranking route, in the shape llama.cpp's server, Jina and Cohere share:

    POST /v1/rerank (also /rerank, /v1/reranking)
    {"query": "...", "documents": ["...", ...] or [{"text": "..."}, ...], "top_n": 3, "return_documents": false}
    -> {"object": "list", "model": ..., "results": [{"index": i, "relevance_score": s(, "document": {"text": ...})},
        ...] best first, "usage": {"prompt_tokens": n, "total_tokens": n}}

register(app, reranker) adds it to an application from app.create_app; scores are the CrossEncoder's (sigmoid of
the logit for a one-label checkpoint), computed off the event loop."""

from __future__ import annotations

from .app import _json, handler, read
from .checks import RequestError

PATHS = ("/v1/rerank", "/rerank", "/v1/reranking")


def rerank_request(body, max_chars, max_documents):
    """-> (query, documents, top_n or None, return_documents), or RequestError naming the field."""
    query = body.get("query")
    if not isinstance(query, str) or not query:
        raise RequestError("'query' must be a non-empty string", "query")
    docs = body.get("documents")
    if not isinstance(docs, list) or not docs or len(docs) > max_documents:
        raise RequestError(f"'documents' must be a non-empty list of at most {max_documents} strings or "
                           f"{{\"text\": string}} objects", "documents")
    docs = [d.get("text") if isinstance(d, dict) else d for d in docs]
    bad = next((i for i, d in enumerate(docs) if not isinstance(d, str)), None)
    if bad is not None:
        raise RequestError(f"'documents[{bad}]' must be a string or a {{\"text\": string}} object", "documents")
    if len(query) + sum(map(len, docs)) > max_chars:
        raise RequestError(f"'query' and 'documents' have more than {max_chars} characters", "documents")
    top_n = body.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise RequestError(f"'top_n' must be an integer >= 1, got {top_n!r:.40}", "top_n")
    return_documents = body.get("return_documents", False)
    if not isinstance(return_documents, bool):
        raise RequestError("'return_documents' must be true or false", "return_documents")
    return query, docs, top_n, return_documents


@handler
async def rerank(request):
    server = request.app.state.server
    body = await read(request)
    reranker = request.app.state.reranker
    if reranker is None:
        raise RequestError("this server has no reranking model (start it with --rerank-model)", status=404,
                           kind="not_found_error")
    query, docs, top_n, return_documents = rerank_request(body, server.max_chars, server.limits.max_inputs)

    def score():
        ranked = reranker.rank(query, docs, top_n)
        count = sum(len(reranker.batcher.pair_ids(query, d)[0]) for d in docs)
        return ranked, count
    ranked, count = await server.off_loop(score)
    results = [{"index": r["corpus_id"], "relevance_score": r["score"],
                **({"document": {"text": docs[r["corpus_id"]]}} if return_documents else {})} for r in ranked]
    return _json({"object": "list", "model": body.get("model") or "rerank", "results": results,
                  "usage": {"prompt_tokens": count, "total_tokens": count}})


def register(app, reranker):
    """Adds the reranking routes to app (create_app's), answering with reranker (a CrossEncoder; None: 404)."""
    from starlette.routing import Route

    app.state.reranker = reranker
    app.router.routes.extend(Route(path, rerank, methods=["POST"]) for path in PATHS)
    return app
