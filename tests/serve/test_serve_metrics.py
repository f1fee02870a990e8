"""The server's metrics: prometheus_client collectors in a registry per app, under the documented names."""

from __future__ import annotations

import pytest

pytest.importorskip("prometheus_client")
pytest.importorskip("fastapi")

import httpx  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from serve_helpers import BOUND_S, LiveServer, cli_app, metric_values, save_tiny_checkpoint, sse_events  # noqa: E402

from t5kit.serve import Engine, create_app  # noqa: E402
from t5kit.serve.metrics import RATE_WINDOW_S, Metrics  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-t5"))

DOCUMENTED = {  # name -> type, as the module docstring, the README and benchmarks/serve.py use them
    "t5kit_model_info": "gauge",  # an Info, written as a gauge of 1 in the text format
    "t5kit_requests": "counter",
    "t5kit_limit_rejections": "counter",
    "t5kit_inputs": "counter",
    "t5kit_input_tokens": "counter",
    "t5kit_output_tokens": "counter",
    "t5kit_batch_size": "histogram",
    "t5kit_batch_duration_seconds": "histogram",
    "t5kit_request_duration_seconds": "histogram",
    "t5kit_time_to_first_token_seconds": "histogram",
    "t5kit_time_per_output_token_seconds": "histogram",
    "t5kit_queue_depth": "gauge",
    "t5kit_rows_running": "gauge",
    "t5kit_requests_in_flight": "gauge",
}


def families(metrics: Metrics) -> dict:
    """The metric families scraped, without prometheus_client's ``*_created`` timestamps of counters."""
    found = text_string_to_metric_families(metrics.render().decode())
    return {f.name: f for f in found if not f.name.endswith("_created")}


def test_names_types_and_exposition():
    m = Metrics("tiny")
    m.request("json", 200, 0.3)
    m.request("stream", 422)
    m.rejected("max_new_tokens")
    m.tokens(inputs=2, input_tokens=11, output_tokens=7)
    m.batch(3, 0.02)
    found = families(m)
    assert {name: f.type for name, f in found.items()} == DOCUMENTED
    assert m.content_type.startswith("text/plain")
    assert m.value("t5kit_model_info", model="tiny") == 1
    assert m.value("t5kit_requests_total", mode="json", status="200") == 1
    assert m.value("t5kit_requests_total", mode="stream", status="422") == 1
    assert m.value("t5kit_limit_rejections_total", limit="max_new_tokens") == 1
    assert (m.value("t5kit_inputs_total"), m.value("t5kit_input_tokens_total"),
            m.value("t5kit_output_tokens_total")) == (2, 11, 7)
    assert m.value("t5kit_request_duration_seconds_count") == 1  # only successful requests have a latency
    assert m.value("t5kit_batch_size_sum") == 3 and m.value("t5kit_batch_size_bucket", le="2.0") == 0
    assert m.value("t5kit_batch_size_bucket", le="4.0") == 1
    text = m.render().decode()
    assert 't5kit_requests_total{mode="json",status="200"} 1.0' in text
    assert 't5kit_batch_size_bucket{le="+Inf"} 1.0' in text


def test_gauges_are_read_when_scraped():
    depth = [0]
    m = Metrics("tiny", queue_depth=lambda: depth[0], rows_running=lambda: 5)
    assert m.value("t5kit_queue_depth") == 0 and m.value("t5kit_rows_running") == 5
    depth[0] = 3
    m.started()
    m.started()
    m.finished()
    assert m.value("t5kit_queue_depth") == 3
    assert m.in_flight == 1 and m.value("t5kit_requests_in_flight") == 1


def test_each_metrics_has_its_own_registry():
    a, b = Metrics("a"), Metrics("b")
    a.request("json", 200, 0.1)
    a.batch(4, 0.1)
    assert a.value("t5kit_requests_total", mode="json", status="200") == 1
    assert b.value("t5kit_requests_total", mode="json", status="200") == 0
    assert b.value("t5kit_batch_size_count") == 0
    assert a.registry is not b.registry
    # a new registry each time: building a second app in one process does not collide on the names
    assert Metrics("a").value("t5kit_batch_size_count") == 0


def test_rows_per_second_over_the_recent_window():
    m = Metrics("tiny")
    assert m.rows_per_second(now=100.0) is None  # nothing ended yet
    for at in (90.0, 95.0, 95.0, 99.0):
        m.row_done(at)
    assert m.rows_per_second(now=100.0) == pytest.approx(4 / 10)
    assert m.rows_per_second(now=95.0 + RATE_WINDOW_S) == pytest.approx(3 / RATE_WINDOW_S)  # 90 left the window
    m2 = Metrics("tiny")
    for _ in range(8):  # a batch whose rows end together reads as 8 rows in (at least) one second
        m2.row_done(50.0)
    assert m2.rows_per_second(now=50.0) == 8.0
    assert m2.rows_per_second(now=50.0 + RATE_WINDOW_S + 1) is None


def test_time_to_first_token_and_per_output_token_from_served_requests(checkpoint):
    """Served requests, json and streamed, each row made to produce exactly its max_new_tokens (min_new_tokens):
    one TTFT per request, one TPOT per greedy row, none for beam search (its tokens all arrive at the end)."""
    s = LiveServer(cli_app(checkpoint))
    try:
        fixed = {"max_new_tokens": 5, "min_new_tokens": 5}
        with httpx.Client(base_url=s.url, timeout=BOUND_S) as c:
            latencies = []
            for body in ({"inputs": "Hello"}, {"inputs": ["The house.", "A cat"]},
                         {"inputs": "Hi", "parameters": {**fixed, "num_beams": 2}}):
                r = c.post("/v1/generate", json={"parameters": fixed, **body})
                assert r.status_code == 200, r.text
                assert all(o["output_tokens"] == 5 for o in r.json()["outputs"])
                latencies.append(r.json()["latency_s"])
            streamed = {"inputs": "Stream it", "stream": True, "parameters": fixed}
            with c.stream("POST", "/v1/generate", json=streamed) as r:
                events = sse_events(r.read().decode())
            assert [k for k, _ in events].count("token") == 5
            latencies.append(events[-1][1]["latency_s"])
            text = c.get("/metrics").text
    finally:
        s.stop()
    ttft = metric_values(text, "t5kit_time_to_first_token_seconds_count")[""]
    ttft_sum = metric_values(text, "t5kit_time_to_first_token_seconds_sum")[""]
    served = {k: v for k, v in metric_values(text, "t5kit_requests_total").items() if 'status="200"' in k}
    assert served == {'{mode="json",status="200"}': 3, '{mode="stream",status="200"}': 1}
    assert ttft == sum(served.values())
    assert 0 < ttft_sum <= sum(latencies)  # each first token came before its request's answer
    tpot = metric_values(text, "t5kit_time_per_output_token_seconds_count")[""]
    tpot_sum = metric_values(text, "t5kit_time_per_output_token_seconds_sum")[""]
    assert tpot == 4  # rows: 1 + 2 + (beam: none) + 1 streamed
    assert 0 < tpot_sum and tpot_sum / tpot < max(latencies)
    buckets = metric_values(text, "t5kit_time_per_output_token_seconds_bucket")
    assert buckets['{le="+Inf"}'] == tpot
    assert metric_values(text, "t5kit_output_tokens_total")[""] == 5 * 5  # rate() of it: new tokens/s


def test_two_apps_count_apart(checkpoint):
    engine = Engine.load(str(checkpoint))
    one, two = create_app(engine), create_app(engine)
    one.state.metrics.batch(2, 0.1)
    assert one.state.metrics.value("t5kit_batch_size_count") == 1
    assert two.state.metrics.value("t5kit_batch_size_count") == 0
