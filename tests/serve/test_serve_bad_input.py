"""Odd and malformed bodies against the app ``t5kit serve`` runs: every one answered 4xx with the error shape
naming the problem, never a 500 (the few odd-but-valid ones are answered 200, and say why in their row).

One table; each row is the raw bytes sent, its Content-Type, and what must come back: the status, the
error code and a piece of the message that names the problem. Rows are sent over real HTTP to one server
(uvicorn on a loopback port in this process), so what is checked is what a client gets.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import BOUND_S, LiveServer, cli_app, metric_values, save_tiny_checkpoint  # noqa: E402

from t5kit.serve.schema import MAX_JSON_DEPTH  # noqa: E402

LIMITS = {"max_input_tokens": 40, "max_new_tokens": 64, "max_inputs_per_request": 4, "max_body_bytes": 1_000_000}
JSON = "application/json"
DEEP = 100_000  # levels of nesting: far past the JSON parser's recursion limit (about 1000)


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def params(**parameters: object) -> bytes:
    return body({"inputs": "Hello", "parameters": {"max_new_tokens": 2, **parameters}})


def raw_params(text: str) -> bytes:
    """A parameters object written by hand (for what json.dumps would not write: NaN, 1e999, 5000 digits)."""
    return b'{"inputs": "Hello", "parameters": {' + text.encode() + b"}}"


def nested(levels: int) -> list:
    value: list = [1]
    for _ in range(levels - 1):
        value = [value]
    return value


OK = None  # the code of a row answered 200


def row(name: str, raw: bytes, status: int, code: str | None, names: str, content_type: str | None = JSON):
    """One row: ``raw`` sent with ``content_type`` (None: no header) -> ``status``, ``code``, and
    ``names`` in the message."""
    return pytest.param(raw, content_type, status, code, names, id=name)


ROWS = [
    # -- text that is not Unicode, or that the model's vocabulary cannot represent
    row(
        "surrogate-high", rb'{"inputs": "\ud800"}',
        422, "invalid_request", r"inputs: holds a lone UTF-16 surrogate \ud800",
    ),
    row(
        "surrogate-low", rb'{"inputs": ["fine", "x\udfff"]}',
        422, "invalid_request", r"inputs[1]: holds a lone UTF-16 surrogate \udfff at character 1",
    ),
    row("surrogate-pair-reversed", rb'{"inputs": "\udc00\ud800"}', 422, "invalid_request", r"surrogate \udc00"),
    row(
        "surrogate-in-task", rb'{"inputs": "a", "task": "translate\ud800"}',
        422, "invalid_request", r"task: holds a lone UTF-16 surrogate \ud800",
    ),
    row(
        "surrogate-in-key", rb'{"inputs": "a", "parameters": {"\udc01": 1}}',
        422, "invalid_request", r"parameters: the key",
    ),
    row("surrogate-pair-ok", rb'{"inputs": "smile \ud83d\ude00", "parameters": {"max_new_tokens": 2}}', 200, OK, ""),
    row(
        "nul", rb'{"inputs": ["fine", "a\u0000b"]}',
        422, "invalid_request", "inputs[1] holds a NUL character (U+0000) at character 1",
    ),
    # -- bytes that are not UTF-8 JSON
    row("latin-1", '{"inputs": "café"}'.encode("latin-1"), 400, "invalid_json", "not UTF-8 (byte 0xe9 at offset 15"),
    row("utf-16", '{"inputs": "a"}'.encode("utf-16"), 400, "invalid_json", "not UTF-8 (byte 0xff at offset 0"),
    row("utf-8-encoded-surrogate", b'{"inputs": "\xed\xa0\x80"}', 400, "invalid_json", "not UTF-8"),
    # RFC 8259 section 8.1: a reader may ignore a BOM; Windows editors write one
    row("utf-8-bom", b"\xef\xbb\xbf" + params(), 200, OK, ""),
    row("bom-only", b"\xef\xbb\xbf", 400, "invalid_json", "the request body is empty"),
    row("empty", b"", 400, "invalid_json", "the request body is empty"),
    row("whitespace", b" \r\n\t ", 400, "invalid_json", "the request body is empty"),
    row(
        "truncated", b'{"inputs": "a", "parameters": {"max_new_',
        400, "invalid_json", "not valid JSON at line 1 column 32",
    ),
    row("trailing-comma", b'{"inputs": "a",}', 400, "invalid_json", "not valid JSON at line 1 column 16"),
    row("two-values", b'{"inputs": "a"} {}', 400, "invalid_json", "Extra data"),
    # -- nesting: the parser's RecursionError, and nesting it survives but no request has
    row("deep-arrays", b"[" * DEEP + b"]" * DEEP, 400, "invalid_json", f"more than {MAX_JSON_DEPTH} levels deep"),
    row(
        "deep-objects", b'{"a":' * DEEP + b"1" + b"}" * DEEP,
        400, "invalid_json", f"more than {MAX_JSON_DEPTH} levels",
    ),
    row("deep-unclosed", b'{"inputs": ' + b"[" * DEEP, 400, "invalid_json", f"more than {MAX_JSON_DEPTH} levels"),
    row(  # parsed, but no request nests like this: MAX_JSON_DEPTH levels of arrays in the body object
        "nested-past-limit", body({"inputs": "a", "x": nested(MAX_JSON_DEPTH)}),
        400, "invalid_json", f"more than {MAX_JSON_DEPTH} levels",
    ),
    row(  # one level less: read, and refused for what it says
        "nested-to-limit", body({"inputs": "a", "x": nested(MAX_JSON_DEPTH - 1)}),
        422, "invalid_request", "x: unknown field",
    ),
    # -- JSON, but not an object
    row("top-array", b'["Hello"]', 422, "invalid_request", "must be a JSON object like"),
    row("top-string", b'"Hello"', 422, "invalid_request", "not a string"),
    row("top-number", b"42", 422, "invalid_request", "not a number"),
    row("top-null", b"null", 422, "invalid_request", "not null"),
    row("top-bool", b"true", 422, "invalid_request", "not a boolean"),
    # -- numbers Python's json reads but JSON does not have, or that fit nothing
    row("nan", raw_params('"temperature": NaN'), 400, "invalid_json", "parameters.temperature: NaN is not JSON"),
    row(
        "infinity", raw_params('"temperature": Infinity'),
        400, "invalid_json", "parameters.temperature: Infinity is not JSON",
    ),
    row(
        "minus-infinity", raw_params('"top_p": -Infinity'),
        400, "invalid_json", "parameters.top_p: -Infinity is not JSON",
    ),
    row(
        "1e999", raw_params('"temperature": 1e999'),
        422, "invalid_request", "parameters.temperature: the number 1e999 is out of range",
    ),
    row(
        "huge-int",
        raw_params('"max_new_tokens": ' + "9" * 5000),
        422,
        "invalid_request",
        "parameters.max_new_tokens: the integer 99999999999999999999...(5000 digits) is out of range",
    ),
    row(
        "int-over-64-bits",
        params(max_new_tokens=10**30),
        422,
        "invalid_request",
        "parameters.max_new_tokens: the integer 1000000000000000000000000000000 is out of range",
    ),
    row(
        "int64-over-limit", params(max_new_tokens=2**63 - 1),
        422, "limit_exceeded", "asks for too many tokens (limit max_new_tokens=64)",
    ),
    row(
        "seed-over-64-bits", params(do_sample=True, seed=2**64),
        422, "invalid_request", "parameters.seed: the integer",
    ),
    row("float-for-int", params(max_new_tokens=2.0), 422, "invalid_request", "parameters.max_new_tokens"),
    row(
        "negative-max-new-tokens", params(max_new_tokens=-1),
        422, "invalid_request", "parameters.max_new_tokens must be an integer >= 1, got -1",
    ),
    row("negative-num-beams", params(num_beams=-2), 422, "invalid_request", "parameters.num_beams"),
    row("negative-temperature", params(temperature=-0.5), 422, "invalid_request", "parameters.temperature"),
    row("negative-seed", params(do_sample=True, seed=-1), 422, "invalid_request", "parameters.seed"),
    row(
        "bool-for-int", params(max_new_tokens=True),
        422, "invalid_request", "parameters.max_new_tokens must be an integer >= 1, got True",
    ),
    row("bool-for-num-beams", params(num_beams=False), 422, "invalid_request", "parameters.num_beams"),
    # -- keys: given twice (json keeps the last, other parsers the first: refused), unknown
    row(
        "duplicate-key", b'{"inputs": "a", "inputs": "b"}',
        422, "invalid_request", 'the key "inputs" is given more than once',
    ),
    row(
        "duplicate-parameter", raw_params('"max_new_tokens": 2, "max_new_tokens": 300'),
        422, "invalid_request", 'parameters: the key "max_new_tokens" is given more than once',
    ),
    row("unknown-field", body({"inputs": "a", "prompt": "b"}), 422, "invalid_request", "prompt: unknown field"),
    row(
        "unknown-parameter", params(temprature=0.5),
        422, "invalid_request", "parameters.temprature: unknown field. Did you mean",
    ),
    # -- wrong types
    row(
        "inputs-number", body({"inputs": 5}),
        422, "invalid_request", "inputs: should be a string or a list of strings",
    ),
    row("inputs-item-number", body({"inputs": ["a", 2]}), 422, "invalid_request", "inputs.1"),
    row(
        "inputs-object", body({"inputs": {"text": "a"}}),
        422, "invalid_request", "inputs: should be a string or a list",
    ),
    row("no-inputs", body({"parameters": {}}), 422, "invalid_request", "inputs: Field required"),
    row("temperature-string", params(temperature="hot"), 422, "invalid_request", "parameters.temperature"),
    row("stream-string", body({"inputs": "a", "stream": "yes"}), 422, "invalid_request", "stream"),
    row("parameters-list", body({"inputs": "a", "parameters": [1]}), 422, "invalid_request", "parameters"),
    row("task-number", body({"inputs": "a", "task": 3}), 422, "invalid_request", "task"),
    # -- inputs the limits or the model refuse
    row("empty-list", body({"inputs": []}), 422, "invalid_request", "inputs: the list is empty"),
    row("empty-string", body({"inputs": ""}), 422, "invalid_request", "inputs[0] is empty"),
    row("blank-string", body({"inputs": ["a", " \n "]}), 422, "invalid_request", "inputs[1] is only whitespace"),
    row(
        "too-many-inputs", body({"inputs": ["a"] * 5}),
        422, "limit_exceeded", "the request has 5 inputs (limit max_inputs_per_request=4)",
    ),
    row("over-long-input", body({"inputs": ["a", "word " * 60]}), 422, "limit_exceeded", "inputs[1] is 61 tokens long"),
    row(
        "body-over-limit", body({"inputs": "y" * LIMITS["max_body_bytes"]}),
        413, "limit_exceeded", "(limit max_body_bytes=1000000)",
    ),
    # -- Content-Type: JSON only (415), so that a web page cannot make a browser post here without CORS
    row("text-plain", params(), 415, "unsupported_media_type", "the request has Content-Type 'text/plain'",
        content_type="text/plain"),
    row("form", params(), 415, "unsupported_media_type", "Content-Type: application/json",
        content_type="application/x-www-form-urlencoded"),
    row("no-content-type", params(), 415, "unsupported_media_type", "the request has no Content-Type",
        content_type=None),
    row("json-latin-1", params(), 415, "unsupported_media_type", "UTF-8 JSON",
        content_type="application/json; charset=latin-1"),
    row("json-utf-8", params(), 200, OK, "", content_type="Application/JSON; charset=UTF-8"),
    row("json-suffix", params(), 200, OK, "", content_type="application/vnd.api+json"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint: Path = save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-t5"))
    s = LiveServer(cli_app(checkpoint, *(f"--{k.replace('_', '-')}={v}" for k, v in LIMITS.items())))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=BOUND_S) as c:
        yield c


@pytest.mark.parametrize("raw, content_type, status, code, names", ROWS)
def test_bad_input_is_a_4xx_naming_the_problem(client, raw, content_type, status, code, names):
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/v1/generate", content=raw, headers=headers)
    assert r.status_code == status, r.text
    if code is OK:
        outputs = r.json()["outputs"]
        assert outputs and outputs[0]["input_tokens"] > 1
        return
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) >= {"code", "message"} and error["code"] == code
    assert names in error["message"], error["message"]


def test_the_server_still_serves_after_the_table(client, server):
    """No row left the worker or the metrics in a bad state: a plain request still works, and the refused
    rows were counted by status (none as a 500)."""
    r = client.post("/v1/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    assert r.status_code == 200, r.text
    answered = metric_values(client.get("/metrics").text, "t5kit_requests_total")
    statuses = {re.search(r'status="(\d+)"', labels).group(1) for labels in answered}
    assert {"200", "400", "413", "415", "422"} <= statuses and not any(s.startswith("5") for s in statuses)
