"""The server's Prometheus metrics, through ``prometheus_client``, in a registry of their own per app.

A registry per :class:`Metrics` (not the library's global one) keeps two apps in one process, and the
tests, from adding to each other's counters. The names are the server's public interface (dashboards
and ``benchmarks/serve.py`` read them): ``t5kit_requests_total{mode,status}``,
``t5kit_limit_rejections_total{limit}``, ``t5kit_inputs_total``, ``t5kit_input_tokens_total``,
``t5kit_output_tokens_total``, the histograms ``t5kit_batch_size``, ``t5kit_batch_duration_seconds``,
``t5kit_request_duration_seconds``, ``t5kit_time_to_first_token_seconds`` and
``t5kit_time_per_output_token_seconds``, the gauges ``t5kit_queue_depth``, ``t5kit_rows_running`` and
``t5kit_requests_in_flight``, and ``t5kit_model_info{model}``.

In PromQL: new tokens/s ``rate(t5kit_output_tokens_total[1m])`` (counted when a request is answered);
p99 time to first token ``histogram_quantile(0.99, rate(t5kit_time_to_first_token_seconds_bucket[5m]))``;
mean time per output token ``rate(t5kit_time_per_output_token_seconds_sum[5m]) /
rate(t5kit_time_per_output_token_seconds_count[5m])``; refusals by limit
``sum by (limit) (rate(t5kit_limit_rejections_total[5m]))``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
BATCH_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LATENCY_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
RATE_WINDOW_S = 60.0  # rows_per_second() looks this far back
RATE_ROWS = 4096  # ...and at this many row ends at most (a bound on memory under any load)


class Metrics:
    """Counters, histograms and gauges of one server; ``render()`` is the ``GET /metrics`` body.

    ``queue_depth`` and ``rows_running`` are read from the batcher when scraped. Requests in flight are
    counted here (``started``/``finished``), since the health check reports them too, and so are the
    recent row ends, from which :meth:`rows_per_second` estimates how fast the queue drains.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        model: str,
        queue_depth: Callable[[], int] = lambda: 0,
        rows_running: Callable[[], int] = lambda: 0,
    ):
        self.registry = CollectorRegistry()
        r = self.registry
        self._lock = threading.Lock()
        self._in_flight = 0
        self._row_ends: deque[float] = deque(maxlen=RATE_ROWS)
        Info("t5kit_model", "The loaded model.", registry=r).info({"model": model})
        self._requests = Counter(
            "t5kit_requests", "Generate requests answered, by mode and HTTP status.", ["mode", "status"], registry=r
        )
        self._rejections = Counter("t5kit_limit_rejections", "Requests refused by a limit, by limit.", ["limit"],
                                   registry=r)
        self._inputs = Counter("t5kit_inputs", "Input texts decoded.", registry=r)
        self._input_tokens = Counter("t5kit_input_tokens", "Input tokens (with task prefix and EOS).", registry=r)
        self._output_tokens = Counter("t5kit_output_tokens", "Generated tokens.", registry=r)
        self._batch_size = Histogram("t5kit_batch_size", "Rows decoded together per batch.", buckets=BATCH_SIZES,
                                     registry=r)
        self._batch_seconds = Histogram("t5kit_batch_duration_seconds", "Wall time of one batch.",
                                        buckets=BATCH_SECONDS, registry=r)
        self._latency = Histogram("t5kit_request_duration_seconds", "Latency of successful generate requests.",
                                  buckets=LATENCY_SECONDS, registry=r)
        self._ttft = Histogram(
            "t5kit_time_to_first_token_seconds",
            "Per request, from queued to its first output token (to its end when it produced none).",
            buckets=LATENCY_SECONDS, registry=r,
        )
        self._tpot = Histogram(
            "t5kit_time_per_output_token_seconds",
            "Per row of two tokens or more, (end - first token) / (tokens - 1); not beam search.",
            buckets=TOKEN_SECONDS, registry=r,
        )
        Gauge("t5kit_queue_depth", "Rows waiting for a batch.", registry=r).set_function(queue_depth)
        Gauge("t5kit_rows_running", "Rows in the batch being decoded.", registry=r).set_function(rows_running)
        Gauge("t5kit_requests_in_flight", "Generate requests being handled.", registry=r).set_function(
            lambda: self._in_flight
        )

    # ------------------------------------------------------------------------------------ events
    def request(self, mode: str, status: int, seconds: float | None = None) -> None:
        """A generate request was answered (``seconds``: its latency, for successful ones)."""
        self._requests.labels(mode=mode, status=str(status)).inc()
        if seconds is not None:
            self._latency.observe(seconds)

    def rejected(self, limit: str) -> None:
        self._rejections.labels(limit=limit).inc()

    def tokens(self, inputs: int, input_tokens: int, output_tokens: int) -> None:
        self._inputs.inc(inputs)
        self._input_tokens.inc(input_tokens)
        self._output_tokens.inc(output_tokens)

    def batch(self, size: int, seconds: float) -> None:
        """One batch of ``size`` rows took ``seconds`` (the batcher's ``on_batch``)."""
        self._batch_size.observe(size)
        self._batch_seconds.observe(seconds)

    def first_token(self, seconds: float) -> None:
        """A request's first token came ``seconds`` after it was queued."""
        self._ttft.observe(seconds)

    def per_token(self, seconds: float) -> None:
        """A row produced its tokens after the first at ``seconds`` each."""
        self._tpot.observe(seconds)

    def row_done(self, at: float) -> None:
        """A row ended at ``at`` (``time.perf_counter()``)."""
        with self._lock:
            self._row_ends.append(at)

    def rows_per_second(self, now: float | None = None) -> float | None:
        """Rows ended per second over the last ``RATE_WINDOW_S`` (at least over one second, so that a batch
        whose rows all end at once does not read as infinitely fast); None when none ended in the window."""
        now = time.perf_counter() if now is None else now
        with self._lock:
            while self._row_ends and self._row_ends[0] < now - RATE_WINDOW_S:
                self._row_ends.popleft()
            if not self._row_ends:
                return None
            return len(self._row_ends) / max(1.0, now - self._row_ends[0])

    def started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def finished(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # ------------------------------------------------------------------------------------ reading
    def value(self, name: str, **labels: str) -> float:
        """One sample's value (0 when it has not been observed yet), e.g. ``value("t5kit_batch_size_count")``."""
        found = self.registry.get_sample_value(name, labels or None)
        return 0.0 if found is None else found

    def render(self) -> bytes:
        """Prometheus' text exposition format."""
        return generate_latest(self.registry)


__all__ = ["Metrics"]
