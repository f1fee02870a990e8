"""The HTTP API: ``t5kit serve`` as a real server process on a loopback port (not a test client), and the
app the CLI builds under uvicorn in this process where a test must control the model worker.

A tiny random T5 with the real T5 vocabulary is saved once; its outputs are arbitrary text, which is all
an API test needs.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import (  # noqa: E402
    BOUND_S,
    CLEAN_EXIT,
    LiveServer,
    Server,
    cli_app,
    metric_values,
    save_tiny_checkpoint,
    sse_events,
    wait_until,
)

from t5kit.serve.schema import GenerateParameters  # noqa: E402

METRIC_LINE = r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.e+-]+|\+Inf'
LIMITS = {
    "max_input_tokens": 40,
    "max_new_tokens": 256,
    "max_inputs_per_request": 8,
    "max_body_bytes": 4000,
    "max_num_beams": 4,
}


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    limits = [f"--{k.replace('_', '-')}={v}" for k, v in LIMITS.items()]
    s = Server(
        checkpoint,
        tmp_path_factory.mktemp("logs") / "server.log",
        "--max-batch-size",
        "16",
        "--batch-wait-ms",
        "60",
        *limits,
    )
    yield s
    assert s.stop() in CLEAN_EXIT, s.output()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def generate(client: httpx.Client, **body) -> dict:
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------------------------------------ basics
def test_health_models_openapi_and_playground(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"]
    models = client.get("/v1/models").json()
    model = models["data"][0]
    assert model["config"]["d_model"] == 64 and model["parameters"] > 0
    assert "translate_en_de" in model["tasks"]
    assert models["limits"]["max_new_tokens"] == LIMITS["max_new_tokens"]
    assert models["batching"] == {"mode": "continuous", "max_batch_size": 16, "batch_wait_ms": 60.0, "enabled": True}
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body_schema = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert {"inputs", "task", "parameters", "stream"} <= set(body_schema["properties"])
    parameters = schema["components"]["schemas"]["GenerateParameters"]["properties"]
    assert set(parameters) == set(GenerateParameters.model_fields)  # derived from GenerationConfig
    assert parameters["temperature"]["default"] == 1.0 and model["precision"] is None
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "t5kit" in page.text and "/static/playground.js" in page.text
    assert client.get("/static/playground.js").status_code == 200
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_single_input(client):
    out = generate(client, inputs="The house is wonderful.", parameters={"max_new_tokens": 12})
    assert len(out["outputs"]) == 1
    o = out["outputs"][0]
    assert o["text"] and 1 <= o["output_tokens"] <= 12 and o["output_tokens"] == len(o["token_ids"])
    assert o["stop_reason"] in ("eos", "length") and o["input_tokens"] > 1
    assert out["usage"] == {"input_tokens": o["input_tokens"], "output_tokens": o["output_tokens"]}
    again = generate(client, inputs="The house is wonderful.", parameters={"max_new_tokens": 12})
    assert again["outputs"][0]["token_ids"] == o["token_ids"]  # greedy is deterministic


def test_batch_of_inputs_matches_single_requests(client):
    texts = ["The house is wonderful.", "Hello", "A much longer input sentence with many more tokens in it."]
    batch = generate(client, inputs=texts, parameters={"max_new_tokens": 10})["outputs"]
    assert len(batch) == 3
    for text, out in zip(texts, batch):
        alone = generate(client, inputs=text, parameters={"max_new_tokens": 10})["outputs"][0]
        assert out["token_ids"] == alone["token_ids"] and out["text"] == alone["text"]


def test_task_prefix_and_unknown_task(client):
    plain = generate(client, inputs="The house.", parameters={"max_new_tokens": 2})["outputs"][0]
    tasked = generate(client, inputs="The house.", task="translate_en_de", parameters={"max_new_tokens": 2})[
        "outputs"
    ][0]
    assert tasked["input_tokens"] > plain["input_tokens"] + 3
    r = client.post("/v1/generate", json={"inputs": "x", "task": "translate_en_dee"})
    assert r.status_code == 422
    assert "translate_en_de" in r.json()["error"]["message"]


def test_sampling_with_seed_and_beam_search(client):
    params = {"max_new_tokens": 8, "do_sample": True, "temperature": 0.9, "top_k": 20, "seed": 7}
    a = generate(client, inputs="Hello", parameters=params)["outputs"][0]
    b = generate(client, inputs="Hello", parameters=params)["outputs"][0]
    assert a["token_ids"] == b["token_ids"]
    beam = generate(client, inputs=["Hello", "The house."], parameters={"max_new_tokens": 6, "num_beams": 3})
    assert [len(o["token_ids"]) > 0 for o in beam["outputs"]] == [True, True]
    # the continuous batcher streams beam search: the tokens its hypotheses all share, then the end
    r = client.post("/v1/generate", json={"inputs": ["Hello", "The house."], "stream": True,
                                          "parameters": {"max_new_tokens": 6, "num_beams": 3}})
    assert r.status_code == 200, r.text
    events = sse_events(r.text)
    ends = {e["index"]: e for kind, e in events if kind == "end"}
    assert [ends[i]["text"] for i in (0, 1)] == [o["text"] for o in beam["outputs"]]
    streamed = [[e["token_id"] for kind, e in events if kind == "token" and e["index"] == i] for i in (0, 1)]
    assert streamed == [o["token_ids"] for o in beam["outputs"]]


def test_streaming_server_sent_events(client):
    body = {"inputs": ["The house is wonderful.", "Hi"], "stream": True, "parameters": {"max_new_tokens": 12}}
    with client.stream("POST", "/v1/generate", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and kinds.count("end") == 2 and "error" not in kinds
    plain = generate(client, inputs=body["inputs"], parameters=body["parameters"])["outputs"]
    for i in range(2):
        tokens = [d for k, d in events if k == "token" and d["index"] == i]
        end = next(d for k, d in events if k == "end" and d["index"] == i)
        assert [d["token_id"] for d in tokens] == plain[i]["token_ids"]
        assert "".join(d["text"] for d in tokens) == end["text"] == plain[i]["text"]
        assert end["output_tokens"] == len(tokens) and end["stop_reason"] == plain[i]["stop_reason"]
    done = events[-1][1]
    assert done["usage"]["output_tokens"] == sum(len(p["token_ids"]) for p in plain)


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "body, limit",
    [
        ({"inputs": "word " * 60}, "max_input_tokens"),
        ({"inputs": "x", "parameters": {"max_new_tokens": 257}}, "max_new_tokens"),
        ({"inputs": ["x"] * 9}, "max_inputs_per_request"),
        ({"inputs": "y" * 5000}, "max_body_bytes"),
        ({"inputs": "x", "parameters": {"num_beams": 5}}, "max_num_beams"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_limit_violations_name_the_limit(client, body, limit):
    r = client.post("/v1/generate", json=body)
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert error["code"] == "limit_exceeded" and error["limit"] == limit and error["value"] == LIMITS[limit]
    assert limit in error["message"]


def test_body_limit_without_content_length(client):
    """A chunked body (no Content-Length) is counted while it is read."""
    chunks = (b'{"inputs": "' + b"z" * 1000 for _ in range(5))
    r = client.post("/v1/generate", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["limit"] == "max_body_bytes"


@pytest.mark.parametrize(
    "raw",
    [b'{"inputs": "a"', b"inputs=hello", b"", b'{"inputs": "a",}', b"\xff\xfe{}"],
    ids=["truncated", "form", "empty", "trailing-comma", "bad-utf8"],
)
def test_malformed_json(client, raw):
    r = client.post("/v1/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_json" and "JSON" in error["message"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"inputs": 5}, "inputs"),
        ({"inputs": ["a", 2]}, "inputs.1"),
        ({"inputs": []}, "inputs"),
        ({}, "inputs"),
        ([1, 2], "body"),
        ({"inputs": "a", "parameters": {"temperature": "hot"}}, "parameters.temperature"),
        ({"inputs": "a", "parameters": {"max_new_tokens": 1.5}}, "parameters.max_new_tokens"),
        ({"inputs": "a", "parameters": {"max_new_tokens": 0}}, "parameters.max_new_tokens"),
        ({"inputs": "a", "parameters": {"do_sample": "yes"}}, "parameters.do_sample"),
        ({"inputs": "a", "parameters": {"top_p": 1.5}}, "parameters.top_p"),
        ({"inputs": "a", "parameters": {"tmperature": 1.0}}, "temperature"),
        ({"inputs": "a", "parameters": [1]}, "parameters"),
        ({"inputs": "a", "stream": "true"}, "stream"),
        ({"inputs": "a", "task": 3}, "task"),
        # checked by constructing GenerationConfig: its own message, naming the parameter
        ({"inputs": "a", "parameters": {"temperature": -1}}, "parameters.temperature"),
        ({"inputs": "a", "parameters": {"early_stopping": "sometimes"}}, "parameters.early_stopping"),
        ({"inputs": "a", "parameters": {"length_penalty_style": "long"}}, "parameters.length_penalty_style"),
        # GenerationConfig fields a request may not set: the model's token ids, several outputs per input
        ({"inputs": "a", "parameters": {"eos_token_id": 3}}, "eos_token_id"),
        ({"inputs": "a", "parameters": {"num_return_sequences": 2}}, "num_return_sequences"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_wrong_types_are_readable_422s(client, body, field):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    assert field in error["message"] if field != "body" else "JSON object" in error["message"]


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_prometheus_text(client):
    generate(client, inputs="metrics please", parameters={"max_new_tokens": 3})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in text.splitlines():
        assert line.startswith("# ") or re.fullmatch(METRIC_LINE, line), line
    assert metric_values(text, "t5kit_requests_total")['{mode="json",status="200"}'] >= 1
    assert metric_values(text, "t5kit_requests_total")['{mode="unknown",status="400"}'] >= 1
    assert metric_values(text, "t5kit_output_tokens_total")[""] > 0
    assert metric_values(text, "t5kit_input_tokens_total")[""] > 0
    assert metric_values(text, "t5kit_limit_rejections_total")['{limit="max_new_tokens"}'] >= 1
    latency = metric_values(text, "t5kit_request_duration_seconds_bucket")
    assert latency['{le="+Inf"}'] == metric_values(text, "t5kit_request_duration_seconds_count")[""] > 0
    assert "# TYPE t5kit_batch_size histogram" in text
    assert metric_values(text, "t5kit_model_info") == {f'{{model="{checkpoint_name(client)}"}}': 1.0}
    assert "# TYPE t5kit_rows_running gauge" in text
    for gauge in ("t5kit_queue_depth", "t5kit_requests_in_flight"):  # idle now (rows_running may lag its answer)
        assert metric_values(text, gauge) == {"": 0.0}, gauge


def checkpoint_name(client: httpx.Client) -> str:
    return client.get("/health").json()["model"]


# ---------------------------------------------------------------------------------------------- in process
@pytest.fixture
def live(checkpoint):
    """Start the app ``t5kit serve --model checkpoint *flags`` builds, in this process; stopped after."""
    started: list[LiveServer] = []

    def start(*flags: str) -> LiveServer:
        started.append(LiveServer(cli_app(checkpoint, *flags)))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def test_no_batching_and_request_timeout(live):
    s = live("--no-batching", "--request-timeout", "1.0")
    assert httpx.get(s.url + "/v1/models", timeout=10).json()["batching"]["enabled"] is False
    # Four requests queued behind a held batch would share one batch if batching were on.
    s.gate.shut()
    blocker, _ = s.post_in_thread({"inputs": "first", "parameters": {"max_new_tokens": 4}})
    wait_until(s.gate.held.is_set, "the first batch reaching the gate")
    threads = [s.post_in_thread({"inputs": f"Input {i}", "parameters": {"max_new_tokens": 4}}) for i in range(4)]
    wait_until(lambda: s.metrics.value("t5kit_queue_depth") == 4, "four rows queued")
    s.gate.open()
    for t, result in [(blocker, None), *threads]:
        t.join(BOUND_S)
        assert result is None or result["status"] == 200, result
    assert s.gate.sizes == [1, 1, 1, 1, 1]  # every batch held one row
    wait_until(lambda: s.metrics.value("t5kit_batch_size_count") == 5, "every batch counted")
    text = httpx.get(s.url + "/metrics", timeout=10).text
    sizes = metric_values(text, "t5kit_batch_size_bucket")
    assert sizes['{le="1.0"}'] == sizes['{le="+Inf"}'] == 5
    # A request whose batch is held cannot finish: it is answered 408 after request_timeout_s.
    s.gate.shut()
    r = httpx.post(s.url + "/v1/generate", json={"inputs": ["go on"] * 8, "parameters": {"max_new_tokens": 256}},
                   timeout=30)
    assert r.status_code == 408, r.text
    assert r.json()["error"]["limit"] == "request_timeout_s" and r.json()["error"]["value"] == 1.0
    with httpx.stream("POST", s.url + "/v1/generate", timeout=30,
                      json={"inputs": ["go on"] * 8, "stream": True, "parameters": {"max_new_tokens": 256}}) as r:
        events = sse_events(r.read().decode())
    assert events[-1][0] == "error" and events[-1][1]["error"]["limit"] == "request_timeout_s"
    s.gate.open()
    assert httpx.get(s.url + "/health", timeout=10).status_code == 200  # still serving
    assert s.metrics.value("t5kit_limit_rejections_total", limit="request_timeout_s") == 2


def test_graceful_shutdown_finishes_requests_in_flight(live):
    s = live()
    s.gate.shut()
    thread, result = s.post_in_thread({"inputs": ["one", "two", "three"], "parameters": {"max_new_tokens": 256}})
    wait_until(s.gate.held.is_set, "the request's batch reaching the gate")
    assert s.metrics.in_flight == 1 and s.metrics.value("t5kit_rows_running") == 3
    s.begin_shutdown()  # while the request is provably in flight: its batch is held at the gate

    def refused() -> bool:
        try:
            httpx.get(s.url + "/health", timeout=2)
        except httpx.TransportError:
            return True
        return False

    wait_until(refused, "the server refusing new connections")
    assert "status" not in result and s.thread.is_alive()  # shutting down, and waiting for the request
    s.gate.open()
    thread.join(BOUND_S)
    assert result.get("status") == 200, result
    assert len(result["body"]["outputs"]) == 3
    s.thread.join(BOUND_S)
    assert not s.thread.is_alive(), "the server did not stop after its last request"
    assert s.app.state.batcher.close(0)  # the worker drained and stopped with the app


def test_queue_limit_answers_503_with_retry_after(live):
    s = live("--max-queue-rows", "4")
    s.gate.shut()
    blocker, first = s.post_in_thread({"inputs": "first", "parameters": {"max_new_tokens": 4}})
    wait_until(s.gate.held.is_set, "the first batch reaching the gate")  # the worker holds it: nothing dequeues
    queued = [s.post_in_thread({"inputs": [f"a {i}", f"b {i}"], "parameters": {"max_new_tokens": 4}}) for i in range(2)]
    wait_until(lambda: s.metrics.value("t5kit_queue_depth") == 4, "four rows queued")
    r = httpx.post(s.url + "/v1/generate", json={"inputs": "one more"}, timeout=BOUND_S)
    assert r.status_code == 503, r.text
    retry = r.headers["retry-after"]
    assert retry.isdigit() and int(retry) >= 1
    error = r.json()["error"]
    assert error["code"] == "overloaded" and error["limit"] == "max_queue_rows" and error["value"] == 4
    assert error["retry_after_s"] == int(retry)
    assert "4 rows are waiting and this request adds 1" in error["message"] and "max_queue_rows=4" in error["message"]
    # a request that could never queue is not told to retry
    r = httpx.post(s.url + "/v1/generate", json={"inputs": ["x"] * 5}, timeout=BOUND_S)
    assert r.status_code == 422 and r.json()["error"]["limit"] == "max_queue_rows" and "retry-after" not in r.headers
    assert s.metrics.value("t5kit_limit_rejections_total", limit="max_queue_rows") == 2
    assert s.metrics.value("t5kit_requests_total", mode="json", status="503") == 1
    s.gate.open()
    for thread, result in [(blocker, first), *queued]:
        thread.join(BOUND_S)
        assert result.get("status") == 200, result
    r = httpx.post(s.url + "/v1/generate", json={"inputs": "one more", "parameters": {"max_new_tokens": 4}},
                   timeout=BOUND_S)
    assert r.status_code == 200, r.text  # room again


@pytest.mark.parametrize(
    "excess, rate, seconds",
    [(10, None, 1), (10, 0.0, 1), (10, 20.0, 1), (10, 4.0, 3), (1000, 0.5, 60), (1, 1e-9, 60)],
)
def test_retry_after_is_the_time_to_drain_the_excess(excess, rate, seconds):
    from t5kit.serve.app import retry_after

    assert retry_after(excess, rate) == seconds


def test_batching_mode_choices_come_from_the_batcher_table(live, checkpoint):
    from t5kit.cli import build_parser
    from t5kit.serve import Engine, create_app
    from t5kit.serve.app import BATCHERS
    from t5kit.serve.batcher import BatcherError

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # noqa: SLF001
    flag = next(a for a in serve._actions if "--batching" in a.option_strings)  # noqa: SLF001
    assert tuple(flag.choices) == tuple(BATCHERS) and "static" in flag.choices and "nope" not in flag.choices
    assert ", ".join(BATCHERS) in serve.format_help()
    with pytest.raises(SystemExit):  # argparse: invalid choice
        build_parser().parse_args(["serve", "--batching", "nope"])
    with pytest.raises(BatcherError, match="batching .* must be one of continuous, static"):
        create_app(Engine.load(str(checkpoint)), batching="nope")
    s = live("--batching", "static", "--max-batch-size", "8")
    assert isinstance(s.app.state.batcher, BATCHERS["static"])
    r = httpx.post(s.url + "/v1/generate", json={"inputs": "x", "stream": True, "parameters": {"num_beams": 2}},
                   timeout=BOUND_S)
    assert r.status_code == 422 and "static batcher cannot stream beam search" in r.json()["error"]["message"]
    batching = httpx.get(s.url + "/v1/models", timeout=10).json()["batching"]
    assert batching == {"mode": "static", "max_batch_size": 8, "batch_wait_ms": 5.0, "enabled": True}


def test_precision_choices_are_the_shared_ones(live):
    from t5kit.cli import build_parser
    from t5kit.kernels.inference.precision import PRECISIONS

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # noqa: SLF001
    flag = next(a for a in serve._actions if "--precision" in a.option_strings)  # noqa: SLF001
    assert tuple(flag.choices) == PRECISIONS
    s = live("--precision", "int8")
    model = httpx.get(s.url + "/v1/models", timeout=10).json()["data"][0]
    assert model["precision"] == "int8"
    r = httpx.post(s.url + "/v1/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 4}}, timeout=30)
    assert r.status_code == 200 and r.json()["outputs"][0]["output_tokens"] >= 1


def test_constraints_through_the_api(client):
    """The decoding constraints of GenerationConfig reach the server; "choices" is their text form, and a
    constraint that breaks a rule of this model is a 422 before anything is queued."""
    choices = ["yes", "no", "not at all"]
    for parameters in ({}, {"num_beams": 3}):
        out = generate(client, inputs=["Is it?", "The house is wonderful."], choices=choices, parameters=parameters)
        assert all(o["text"] in choices for o in out["outputs"]), out
    prefixed = generate(client, inputs="Hello", parameters={"decoder_prefix": [71, 72], "max_new_tokens": 6})
    assert prefixed["outputs"][0]["token_ids"][:2] == [71, 72]
    banned = generate(client, inputs="Hello", parameters={"max_new_tokens": 8})["outputs"][0]["token_ids"]
    assert banned, "the unconstrained output is empty: nothing to ban"
    again = generate(client, inputs="Hello", parameters={"max_new_tokens": 8, "bad_words_ids": [[banned[0]]]})
    assert banned[0] not in again["outputs"][0]["token_ids"]
    for body, words in [
        ({"inputs": "x", "parameters": {"decoder_prefix": [1]}}, "EOS"),
        ({"inputs": "x", "parameters": {"bad_words_ids": [[10**6]]}}, "outside the vocabulary"),
        ({"inputs": "x", "choices": []}, "choices"),
        ({"inputs": "x", "choices": ["a"], "parameters": {"allowed_sequences": [[5, 1]]}}, "not both"),
    ]:
        r = client.post("/v1/generate", json=body)
        assert r.status_code == 422, (body, r.text)
        assert words in r.json()["error"]["message"], (body, r.json())


def test_choices_fit_the_length_and_have_a_limit(client):
    long_choice = "a much longer answer than the default limit would ever allow " * 6
    out = generate(client, inputs="x", choices=["short", long_choice], parameters={"num_beams": 2})
    assert out["outputs"][0]["text"] in ("short", long_choice.strip())
    r = client.post("/v1/generate", json={"inputs": "x", "choices": [f"c{i}" for i in range(65)]})
    assert r.status_code == 422 and r.json()["error"]["limit"] == "max_choices"
