"""``t5kit serve`` against a real server process on a loopback port (not a test client).

A tiny random T5 with the real T5 vocabulary is saved once; its outputs are arbitrary text, which is all
an API test needs. Three server processes: the main one (dynamic batching, small limits), one without
batching and with a short request timeout, and one that is shut down while a request is in flight.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import T5_VOCAB

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

VOCAB = T5_VOCAB
METRIC_LINE = r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.e+-]+|\+Inf'
# uvicorn shuts down gracefully on SIGTERM, then re-raises the signal: exit status 0 or "killed by SIGTERM".
CLEAN_EXIT = (0, -signal.SIGTERM)
LIMITS = {"max_input_tokens": 40, "max_new_tokens": 256, "max_inputs_per_request": 8, "max_body_bytes": 4000}


# ------------------------------------------------------------------------------------------------ helpers
def save_tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A random ``tiny`` T5 with the T5 SentencePiece vocabulary beside it."""
    import torch

    from t5kit import T5Model

    assert (VOCAB / "spiece.model").is_file(), f"the T5 vocabulary is missing from {VOCAB}"
    torch.manual_seed(seed)
    T5Model.from_preset("tiny").save_pretrained(str(directory))
    shutil.copy(VOCAB / "spiece.model", directory / "spiece.model")
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m t5kit serve`` as a subprocess on 127.0.0.1; waits (bounded) until /health answers."""

    def __init__(self, model: Path, log: Path, *args: str, startup_s: float = 90.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "t5kit",
                "serve",
                "--model",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--threads",
                "1",
                "--log-level",
                "warning",
                *args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not answer /health within {startup_s} s:\n{self.output()}")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode


def metric_values(text: str, name: str) -> dict[str, float]:
    """{labels: value} of one metric from Prometheus text ('' for no labels)."""
    found = {}
    for line in text.splitlines():
        m = re.fullmatch(rf"{re.escape(name)}(\{{[^}}]*\}})? (\S+)", line)
        if m:
            found[m.group(1) or ""] = float(m.group(2))
    return found


def sse_events(body: str) -> list[tuple[str, dict]]:
    events = []
    for block in body.split("\n\n"):
        kind, data = "message", []
        for line in block.splitlines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((kind, json.loads("\n".join(data))))
    return events


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
    assert models["batching"] == {"max_batch_size": 16, "batch_wait_ms": 60.0, "enabled": True}
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body_schema = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert {"inputs", "task", "parameters", "stream"} <= set(body_schema["properties"])
    assert "temperature" in schema["components"]["schemas"]["GenerateParameters"]["properties"]
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
    r = client.post("/v1/generate", json={"inputs": "x", "stream": True, "parameters": {"num_beams": 2}})
    assert r.status_code == 422 and "beam" in r.json()["error"]["message"]


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
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_wrong_types_are_readable_422s(client, body, field):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    assert field in error["message"] if field != "body" else "JSON object" in error["message"]


# ------------------------------------------------------------------------------------------------ batching
def _concurrently(client_url: str, bodies: list[dict], stagger_s: float = 0.0) -> list[tuple[float, dict]]:
    """POST each body from its own thread; (seconds until answered, JSON) per body, in order."""
    results: list = [None] * len(bodies)
    start = time.perf_counter()

    def send(i: int) -> None:
        with httpx.Client(base_url=client_url, timeout=60) as c:
            r = c.post("/v1/generate", json=bodies[i])
            results[i] = (time.perf_counter() - start, r.status_code, r.json())

    threads = []
    for i in range(len(bodies)):
        threads.append(threading.Thread(target=send, args=(i,)))
        threads[-1].start()
        time.sleep(stagger_s)
    for t in threads:
        t.join(120)
    assert all(r is not None and r[1] == 200 for r in results), results
    return [(t, body) for t, _, body in results]


def test_concurrent_requests_share_a_batch(server, client):
    before = metric_values(client.get("/metrics").text, "t5kit_batch_size_bucket")
    bodies = [{"inputs": f"Request number {i}.", "parameters": {"max_new_tokens": 16}} for i in range(6)]
    results = _concurrently(server.url, bodies)
    assert all(len(b["outputs"]) == 1 for _, b in results)
    after = metric_values(client.get("/metrics").text, "t5kit_batch_size_bucket")
    batches = after['{le="+Inf"}'] - before.get('{le="+Inf"}', 0)
    single = after['{le="1"}'] - before.get('{le="1"}', 0)
    assert 1 <= batches < 6 and single < batches, (before, after)  # some batch held more than one row


def test_early_finished_request_returns_before_the_long_one(server, client):
    """Two requests in one batch (lengths 129 and 256 share a length group): the short one is answered
    while the long one is still decoding."""
    before = metric_values(client.get("/metrics").text, "t5kit_batch_size_sum")[""]
    long_body = {"inputs": "A long story about a house.", "parameters": {"max_new_tokens": 256}}
    short_body = {"inputs": "Short.", "parameters": {"max_new_tokens": 129}}
    (t_long, long_out), (t_short, short_out) = _concurrently(
        server.url, [long_body, short_body], stagger_s=0.005
    )
    n_long = long_out["outputs"][0]["output_tokens"]
    n_short = short_out["outputs"][0]["output_tokens"]
    after = metric_values(client.get("/metrics").text, "t5kit_batch_size_sum")[""]
    assert after - before == 2  # both rows were decoded in one batch of two... or two batches of one:
    sizes = metric_values(client.get("/metrics").text, "t5kit_batch_size_bucket")
    assert sizes['{le="2"}'] > sizes['{le="1"}']
    assert n_long > n_short + 50, (n_long, n_short)
    assert t_short < t_long, (t_short, t_long)


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


# ---------------------------------------------------------------------------------------------- other servers
def test_no_batching_and_request_timeout(checkpoint, tmp_path):
    s = Server(checkpoint, tmp_path / "unbatched.log", "--no-batching", "--request-timeout", "1.0")
    try:
        bodies = [{"inputs": f"Input {i}", "parameters": {"max_new_tokens": 4}} for i in range(4)]
        _concurrently(s.url, bodies)
        text = httpx.get(s.url + "/metrics", timeout=10).text
        sizes = metric_values(text, "t5kit_batch_size_bucket")
        assert sizes['{le="1"}'] == sizes['{le="+Inf"}'] >= 4  # every batch held one row
        assert httpx.get(s.url + "/v1/models", timeout=10).json()["batching"]["enabled"] is False
        # 8 inputs x 256 tokens, one row at a time, cannot finish in 1 s
        r = httpx.post(
            s.url + "/v1/generate",
            json={"inputs": ["go on"] * 8, "parameters": {"max_new_tokens": 256}},
            timeout=30,
        )
        assert r.status_code == 408, r.text
        assert r.json()["error"]["limit"] == "request_timeout_s" and r.json()["error"]["value"] == 1.0
        with httpx.stream(
            "POST",
            s.url + "/v1/generate",
            timeout=30,
            json={"inputs": ["go on"] * 8, "stream": True, "parameters": {"max_new_tokens": 256}},
        ) as r:
            events = sse_events(r.read().decode())
        assert events[-1][0] == "error" and events[-1][1]["error"]["limit"] == "request_timeout_s"
        assert httpx.get(s.url + "/health", timeout=10).status_code == 200  # still serving
    finally:
        assert s.stop() in CLEAN_EXIT, s.output()


def test_graceful_shutdown_finishes_requests_in_flight(checkpoint, tmp_path):
    s = Server(checkpoint, tmp_path / "shutdown.log")
    result: dict = {}

    def send() -> None:
        r = httpx.post(
            s.url + "/v1/generate",
            timeout=60,
            json={"inputs": ["one", "two", "three"], "parameters": {"max_new_tokens": 256}},
        )
        result["status"], result["body"] = r.status_code, r.json()

    thread = threading.Thread(target=send)
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # wait until the request is being decoded
        text = httpx.get(s.url + "/metrics", timeout=10).text
        if metric_values(text, "t5kit_requests_in_flight")[""] >= 1:
            break
        time.sleep(0.02)
    s.proc.send_signal(signal.SIGTERM)
    thread.join(60)
    code = s.stop()
    assert result.get("status") == 200, (result, s.output())
    assert len(result["body"]["outputs"]) == 3
    assert code in CLEAN_EXIT, s.output()
    with pytest.raises(httpx.TransportError):
        httpx.get(s.url + "/health", timeout=2)
