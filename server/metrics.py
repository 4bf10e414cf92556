"""Prometheus metrics for `GET /metrics`: vLLM-style names under `pairserve:`, and beside them the names SGLang's
dashboards use under `sglang:` (sglang:num_running_reqs, num_queue_reqs, num_used_tokens, token_usage,
cache_hit_rate, max_total_num_tokens, prompt_tokens_total, generation_tokens_total, cached_tokens_total,
num_requests_total, time_to_first_token_seconds, inter_token_latency_seconds, e2e_request_latency_seconds), all
labelled model_name. Both families are observed from the same events, so they always agree.

Each app owns a `CollectorRegistry` (never the global one), so several servers or test apps in one process do
not collide. Two sources:
- request timings and token counts, observed by the tokenizer manager as outputs arrive (histograms, counters);
- scheduler state (running / waiting requests, KV usage, prefix-cache counters), taken from the latest stats
  snapshot the scheduler process pushes every ~0.5 s and exported by a collector at scrape time.
"""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "pairserve:"
SGLANG = "sglang:"
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0)


class _SchedulerCollector(Collector):
    """Exports the newest scheduler stats snapshot; before the first one every value reads 0."""

    def __init__(self, metrics: "ServerMetrics"):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        s = self.metrics.scheduler_stats
        labels = [self.metrics.model_name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(PREFIX + name, doc, labels=["model_name"])
            g.add_metric(labels, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(PREFIX + name, doc, labels=["model_name"])
            c.add_metric(labels, value)
            return c

        capacity = s.get("kv_capacity_tokens", 0)
        # vLLM's meaning: slots held by requests (cached-but-evictable slots count as free).
        used = capacity - s.get("kv_free_tokens", 0) - s.get("cache_evictable_tokens", 0)
        yield gauge("num_requests_running", "Requests in the running batch.", s.get("num_running", 0))
        yield gauge("num_requests_waiting", "Requests waiting to be scheduled.", s.get("num_waiting", 0))
        usage = used / capacity if capacity else 0.0
        yield gauge("kv_cache_usage_perc", "Fraction of KV slots held (1 = full).", usage)
        yield gauge("prefix_cache_tokens", "Tokens held by the radix prefix cache.", s.get("cache_tokens", 0))
        yield counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                      s.get("prefix_cache_queries_total", 0))
        yield counter("prefix_cache_hits", "Prompt tokens served from the prefix cache.",
                      s.get("prefix_cache_hits_total", 0))
        yield counter("num_preemptions", "Requests retracted for lack of KV.", s.get("num_retractions_total", 0))
        yield counter("prefill_tokens_computed", "Prompt tokens run through the model.",
                      s.get("prefill_tokens_computed_total", 0))
        # SGLang's names (its scheduler's gauges): token_usage counts the tokens requests hold, like ours.
        queries = s.get("prefix_cache_queries_total", 0)
        for name, doc, value in (
                ("num_running_reqs", "The number of running requests.", s.get("num_running", 0)),
                ("num_queue_reqs", "The number of requests in the waiting queue.", s.get("num_waiting", 0)),
                ("num_used_tokens", "The number of used tokens.", used),
                ("max_total_num_tokens", "Maximum total number of tokens in the KV pool.", capacity),
                ("token_usage", "The token usage.", usage),
                ("cache_hit_rate", "The prefix cache hit rate (cached / looked-up prompt tokens, cumulative).",
                 s.get("prefix_cache_hits_total", 0) / queries if queries else 0.0)):
            g = GaugeMetricFamily(SGLANG + name, doc, labels=["model_name"])
            g.add_metric(labels, value)
            yield g


class ServerMetrics:
    def __init__(self, model_name: str):
        self.model_name = model_name
        self.registry = CollectorRegistry()
        self.scheduler_stats: dict[str, Any] = {}
        reg, lab = self.registry, ["model_name"]
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Time to first token.", lab,
                              buckets=TTFT_BUCKETS, registry=reg).labels(model_name)
        self.itl = Histogram(PREFIX + "inter_token_latency_seconds", "Time between output steps of a request.",
                             lab, buckets=ITL_BUCKETS, registry=reg).labels(model_name)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "Request latency, arrival to finish.", lab,
                             buckets=E2E_BUCKETS, registry=reg).labels(model_name)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens of finished requests.", lab,
                                     registry=reg).labels(model_name)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Generated tokens.", lab,
                                         registry=reg).labels(model_name)
        self._success = Counter(PREFIX + "request_success", "Finished requests by finish reason.",
                                ["model_name", "finished_reason"], registry=reg)
        # SGLang's names for the same observations
        self.sg_ttft = Histogram(SGLANG + "time_to_first_token_seconds", "Histogram of time to first token in "
                                 "seconds.", lab, buckets=TTFT_BUCKETS, registry=reg).labels(model_name)
        self.sg_itl = Histogram(SGLANG + "inter_token_latency_seconds", "Histogram of inter-token latency in "
                                "seconds.", lab, buckets=ITL_BUCKETS, registry=reg).labels(model_name)
        self.sg_e2e = Histogram(SGLANG + "e2e_request_latency_seconds", "Histogram of End-to-end request latency "
                                "in seconds", lab, buckets=E2E_BUCKETS, registry=reg).labels(model_name)
        self.sg_prompt_tokens = Counter(SGLANG + "prompt_tokens", "Number of prefill tokens processed.", lab,
                                        registry=reg).labels(model_name)
        self.sg_generation_tokens = Counter(SGLANG + "generation_tokens", "Number of generation tokens processed.",
                                            lab, registry=reg).labels(model_name)
        self.sg_cached_tokens = Counter(SGLANG + "cached_tokens", "Number of cached prompt tokens.", lab,
                                        registry=reg).labels(model_name)
        self.sg_requests = Counter(SGLANG + "num_requests", "Number of requests processed.", lab,
                                   registry=reg).labels(model_name)
        reg.register(_SchedulerCollector(self))

    def observe_output(self, num_new_tokens: int, since_arrival: float, since_last: float | None) -> None:
        """One output step of a request; `since_last` is None for its first tokens."""
        if num_new_tokens <= 0:
            return
        self.generation_tokens.inc(num_new_tokens)
        self.sg_generation_tokens.inc(num_new_tokens)
        if since_last is None:
            self.ttft.observe(since_arrival)
            self.sg_ttft.observe(since_arrival)
        else:
            self.itl.observe(since_last)
            self.sg_itl.observe(since_last)

    def observe_finished(self, e2e: float, prompt_tokens: int, finished_reason: str, cached_tokens: int = 0) -> None:
        self.e2e.observe(e2e)
        self.sg_e2e.observe(e2e)
        self.prompt_tokens.inc(prompt_tokens)
        self.sg_prompt_tokens.inc(prompt_tokens)
        self.sg_cached_tokens.inc(cached_tokens)
        self.sg_requests.inc()
        self._success.labels(self.model_name, finished_reason).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
