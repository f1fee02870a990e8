"""The server's metrics: prometheus_client collectors in a registry per app, under the documented names."""

from __future__ import annotations

import pytest

pytest.importorskip("prometheus_client")
pytest.importorskip("fastapi")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from serve_helpers import save_tiny_checkpoint  # noqa: E402

from t5kit.serve import Engine, create_app  # noqa: E402
from t5kit.serve.metrics import Metrics  # noqa: E402

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


def test_two_apps_count_apart(tmp_path):
    engine = Engine.load(str(save_tiny_checkpoint(tmp_path / "tiny")))
    one, two = create_app(engine), create_app(engine)
    one.state.metrics.batch(2, 0.1)
    assert one.state.metrics.value("t5kit_batch_size_count") == 1
    assert two.state.metrics.value("t5kit_batch_size_count") == 0
