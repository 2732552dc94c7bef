"""GET /metrics: the server's counters in Prometheus' text format (prometheus-client, in the serve extra), in a
registry of its own per application (two servers in one process count apart).

    pytransformer_requests_total{endpoint, status}      requests answered (endpoint: a route's path, else "other")
    pytransformer_prompt_tokens_total                    prompt tokens of completed requests
    pytransformer_generated_tokens_total                 tokens generated
    pytransformer_time_to_first_token_seconds            histogram: a request's arrival at the engine to its first token
    pytransformer_request_latency_seconds{endpoint}     histogram: a request's arrival to its response's end
    pytransformer_queue_depth                            requests waiting for a place in the running batch
    pytransformer_running_batch_size                     requests in the running batch
    pytransformer_cache_slots_in_use                     KV cache slots held by running requests"""

from __future__ import annotations

_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self, engine, endpoints):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.endpoints = frozenset(endpoints)
        self.registry = r = CollectorRegistry()
        self.requests = Counter("pytransformer_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("pytransformer_prompt_tokens", "prompt tokens of completed requests",
                                     registry=r)
        self.generated_tokens = Counter("pytransformer_generated_tokens", "tokens generated", registry=r)
        self.ttft = Histogram("pytransformer_time_to_first_token_seconds", "time to a request's first token",
                              buckets=_BUCKETS, registry=r)
        self.latency = Histogram("pytransformer_request_latency_seconds", "time to a response's end, by endpoint",
                                 ["endpoint"], buckets=_BUCKETS, registry=r)
        Gauge("pytransformer_queue_depth", "requests waiting", registry=r).set_function(lambda: len(engine.waiting))
        Gauge("pytransformer_running_batch_size", "requests in the running batch",
              registry=r).set_function(lambda: len(engine.running))
        Gauge("pytransformer_cache_slots_in_use", "KV cache slots held by running requests",
              registry=r).set_function(lambda: sum(j.slot is not None or j.cache is not None
                                                   for j in list(engine.running)))

    def request(self, path, status, seconds):
        endpoint = path if path in self.endpoints else "other"
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def usage(self, usage):
        self.prompt_tokens.inc(usage["prompt_tokens"])
        self.generated_tokens.inc(usage["completion_tokens"])

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def create(engine, endpoints):
    """The application's Metrics, or None without prometheus-client (GET /metrics then says what to install)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return None
    return Metrics(engine, endpoints)
