"""Prometheus metrics of the server (`GET /metrics`), one registry per app.

    tfx_gpt2_requests_total{route, status}          requests answered
    tfx_gpt2_request_seconds{route}                 latency, received to last byte
    tfx_gpt2_time_to_first_token_seconds{route}     received to the first generated text
    tfx_gpt2_prompt_tokens_total, tfx_gpt2_generated_tokens_total
    tfx_gpt2_batch_size                             rows per decode call
    tfx_gpt2_queue_depth                            prompts waiting for a batch
    tfx_gpt2_compiled_programs                      XLA programs the engine has compiled
    tfx_gpt2_model_info{name, version, source}      1 for the model being served
    tfx_gpt2_model_swaps_total                      times a new registry version was switched in
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServerMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("tfx_gpt2_requests", "Requests answered, by route and HTTP status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("tfx_gpt2_request_seconds", "Request latency, received to last byte",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tfx_gpt2_time_to_first_token_seconds", "Request received to first generated text",
                              ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("tfx_gpt2_prompt_tokens", "Prompt tokens received", registry=r)
        self.generated_tokens = Counter("tfx_gpt2_generated_tokens", "Tokens generated", registry=r)
        self.batch_size = Histogram("tfx_gpt2_batch_size", "Rows per decode call", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.queue_depth = Gauge("tfx_gpt2_queue_depth", "Prompts waiting for a batch", registry=r)
        self.compiled = Gauge("tfx_gpt2_compiled_programs", "XLA programs compiled by the engine", registry=r)
        self.model_info = Gauge("tfx_gpt2_model_info", "1 for the model being served", ["name", "version", "source"],
                                registry=r)
        self.feedback = Counter("tfx_gpt2_feedback", "Feedback answered, by outcome (recorded, already recorded, "
                                "accepted: spooled while the store is down)", ["outcome"], registry=r)
        self.swaps = Counter("tfx_gpt2_model_swaps", "Registry versions switched in while serving", registry=r)

    def serving(self, name: str, version: str, source: str) -> None:
        """Names the served model (the old one's series is removed)."""
        self.model_info.clear()
        self.model_info.labels(name=name, version=version, source=source).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


CONTENT_TYPE = CONTENT_TYPE_LATEST
