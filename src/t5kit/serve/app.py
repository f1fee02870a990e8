"""The HTTP API and playground: ``create_app(engine, limits)`` returns a FastAPI app.

Endpoints: ``POST /v1/generate`` (JSON answer, or server-sent events with ``"stream": true``),
``GET /health``, ``GET /v1/models``, ``GET /metrics`` (Prometheus text format), the playground at ``/``,
and FastAPI's ``/docs``, ``/redoc`` and ``/openapi.json``.

Every error is JSON of one shape, ``{"error": {"code", "message", ...}}``; a broken limit also names the
limit and its value (``"limit": "max_new_tokens", "value": 256``), so a client can adjust without
reading server logs. The request body is parsed by hand (not by a FastAPI body parameter) so that its size
is bounded before it is read whole and malformed JSON gets the same readable error shape; the schema is
still published in OpenAPI.

The model runs on the batcher's single worker thread; handlers only tokenize, queue rows and wait on an
asyncio queue fed from that thread, so the event loop stays free to accept and stream.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from t5kit.errors import T5kitError, closest_names
from t5kit.serve.batching import Batcher, BatcherClosed, Row, RowEvent, Ticket
from t5kit.serve.engine import DecodingSettings, Engine

STATIC = Path(__file__).resolve().parent / "static"


# ------------------------------------------------------------------------------------------------ limits
@dataclass
class Limits:
    """What one request may ask for; each is enforced with a 4xx answer naming it."""

    max_input_tokens: int = 512  # per input, counting the task prefix and EOS
    max_new_tokens: int = 256  # the most a request may ask for
    default_max_new_tokens: int = 64  # used when a request does not say
    max_inputs_per_request: int = 32
    max_body_bytes: int = 1_000_000
    request_timeout_s: float = 60.0


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "message": message, **extra}


def limit_error(status: int, limit: str, value: Any, message: str) -> APIError:
    return APIError(status, "limit_exceeded", f"{message} (limit {limit}={value})", limit=limit, value=value)


# ------------------------------------------------------------------------------------------------ schema
class GenerateParameters(BaseModel):
    """Decoding options (the names of ``t5kit.generate``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_new_tokens: int | None = Field(None, ge=1, description="new tokens at most (default: server's)")
    min_new_tokens: int = Field(0, ge=0)
    num_beams: int = Field(1, ge=1, le=16)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    no_repeat_ngram_size: int = Field(0, ge=0)
    length_penalty: float = 1.0
    seed: int | None = Field(None, ge=0, description="sampling seed; a seeded request is batched alone")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: str | list[str] = Field(..., description="one text or a list of texts")
    task: str | None = Field(None, description="a task preset whose prefix is prepended (see /v1/models)")
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = Field(False, description="answer as server-sent events: token, end (per input), done")


class Output(BaseModel):
    text: str
    token_ids: list[int]
    input_tokens: int
    output_tokens: int
    stop_reason: str


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int


class GenerateResponse(BaseModel):
    model: str
    outputs: list[Output]
    usage: Usage
    latency_s: float


# ------------------------------------------------------------------------------------------------ metrics
class Histogram:
    def __init__(self, buckets: Iterable[float]):
        self.buckets = sorted(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{_num(b)}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{le="+Inf"}} {self.total}')
        out += [f"{name}_sum {_num(self.sum)}", f"{name}_count {self.total}"]
        return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters and histograms in Prometheus' text exposition format (no client library needed)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.rejections: dict[str, int] = {}
        self.inputs = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.batch_size = Histogram([1, 2, 4, 8, 16, 32, 64, 128])
        self.batch_seconds = Histogram([0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30])
        self.latency = Histogram([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60])

    def request(self, mode: str, status: int, seconds: float | None = None) -> None:
        with self.lock:
            self.requests[(mode, status)] = self.requests.get((mode, status), 0) + 1
            if seconds is not None:
                self.latency.observe(seconds)

    def rejected(self, limit: str) -> None:
        with self.lock:
            self.rejections[limit] = self.rejections.get(limit, 0) + 1

    def tokens(self, inputs: int, input_tokens: int, output_tokens: int) -> None:
        with self.lock:
            self.inputs += inputs
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens

    def batch(self, size: int, seconds: float) -> None:
        with self.lock:
            self.batch_size.observe(size)
            self.batch_seconds.observe(seconds)

    def render(self, model: str, queue_depth: int, in_flight: int, rows_running: int) -> str:
        m = _label(model)
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, lines: list[str]) -> None:
            out.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *lines])

        with self.lock:
            metric("t5kit_model_info", "gauge", "The loaded model.", [f't5kit_model_info{{model="{m}"}} 1'])
            metric(
                "t5kit_requests_total",
                "counter",
                "Generate requests answered, by mode and HTTP status.",
                [
                    f't5kit_requests_total{{mode="{mode}",status="{status}"}} {n}'
                    for (mode, status), n in sorted(self.requests.items())
                ]
                or ["t5kit_requests_total 0"],
            )
            metric(
                "t5kit_limit_rejections_total",
                "counter",
                "Requests refused by a limit, by limit.",
                [
                    f't5kit_limit_rejections_total{{limit="{k}"}} {n}'
                    for k, n in sorted(self.rejections.items())
                ]
                or ["t5kit_limit_rejections_total 0"],
            )
            metric(
                "t5kit_inputs_total", "counter", "Input texts decoded.", [f"t5kit_inputs_total {self.inputs}"]
            )
            metric(
                "t5kit_input_tokens_total",
                "counter",
                "Input tokens (with task prefix and EOS).",
                [f"t5kit_input_tokens_total {self.input_tokens}"],
            )
            metric(
                "t5kit_output_tokens_total",
                "counter",
                "Generated tokens.",
                [f"t5kit_output_tokens_total {self.output_tokens}"],
            )
            metric(
                "t5kit_batch_size",
                "histogram",
                "Rows decoded together per batch.",
                self.batch_size.lines("t5kit_batch_size"),
            )
            metric(
                "t5kit_batch_duration_seconds",
                "histogram",
                "Wall time of one batch.",
                self.batch_seconds.lines("t5kit_batch_duration_seconds"),
            )
            metric(
                "t5kit_request_duration_seconds",
                "histogram",
                "Latency of successful generate requests.",
                self.latency.lines("t5kit_request_duration_seconds"),
            )
        metric(
            "t5kit_queue_depth", "gauge", "Rows waiting for a batch.", [f"t5kit_queue_depth {queue_depth}"]
        )
        metric(
            "t5kit_rows_running",
            "gauge",
            "Rows in the batch being decoded.",
            [f"t5kit_rows_running {rows_running}"],
        )
        metric(
            "t5kit_requests_in_flight",
            "gauge",
            "Generate requests being handled.",
            [f"t5kit_requests_in_flight {in_flight}"],
        )
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ helpers
class TextStream:
    """Incremental detokenization: the text each new token adds, never a half character.

    SentencePiece joins pieces with context (leading spaces, byte fallback), so each step decodes the
    whole sequence and emits what was appended; a tail that is still an incomplete character waits.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.engine.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent) :], text
        return piece


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse({"error": err.body}, status_code=err.status)


def _readable(err: ValidationError) -> tuple[str, list[dict[str, Any]]]:
    """One line per problem: 'parameters.temperature: Input should be greater than 0 (got -1)'."""
    details = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in ("str", "list[str]")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            known = (
                GenerateParameters.model_fields
                if loc.startswith("parameters.")
                else GenerateRequest.model_fields
            )
            msg = f"unknown field.{closest_names(str(e['loc'][-1]), known)} Known: {', '.join(known)}"
        if loc == "inputs" and e["type"] in ("string_type", "list_type"):
            msg = "should be a string or a list of strings"
        detail = {"field": loc or "(body)", "message": msg, "got": e.get("input")}
        if detail not in details:
            details.append(detail)
    text = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return text, details


# ------------------------------------------------------------------------------------------------ app
def create_app(
    engine: Engine,
    limits: Limits | None = None,
    max_batch_size: int = 32,
    batch_wait_ms: float = 5.0,
    shutdown_timeout_s: float | None = None,
) -> FastAPI:
    """The server around ``engine``: a batcher (started with the app, drained on shutdown) and the routes.

    ``max_batch_size=1`` serves without batching. On shutdown (SIGINT/SIGTERM under uvicorn) new
    connections are refused, requests in flight finish, then the worker drains the queue and stops.
    """
    limits = limits or Limits()
    metrics = Metrics()
    batcher = Batcher(
        engine, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, on_batch=metrics.batch
    )
    state = {"in_flight": 0, "serial": 0}
    drain_timeout = shutdown_timeout_s if shutdown_timeout_s is not None else limits.request_timeout_s + 5

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await asyncio.to_thread(batcher.close, drain_timeout)

    app = FastAPI(
        title="t5kit",
        version=_version(),
        summary="T5 text-to-text generation with dynamic batching",
        description="Send texts to `POST /v1/generate`; try it at `/` (the playground).",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.limits = limits

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return _error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return JSONResponse(
            {"error": {"code": code, "message": f"{err.detail}: {request.method} {request.url.path}"}},
            status_code=err.status_code,
            headers=getattr(err, "headers", None),
        )

    # -------------------------------------------------------------------------------- parsing
    async def read_request(request: Request) -> GenerateRequest:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise limit_error(
                413, "max_body_bytes", limits.max_body_bytes, f"the request body is {declared} bytes"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise limit_error(
                    413, "max_body_bytes", limits.max_body_bytes, "the request body is too large"
                )
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body.strip():
            raise APIError(400, "invalid_json", 'the request body is empty; send JSON like {"inputs": "..."}')
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            where = (
                f" at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
            )
            raise APIError(400, "invalid_json", f"the request body is not valid JSON{where}: {err}") from None
        if not isinstance(data, dict):
            raise APIError(
                422,
                "invalid_request",
                f'the request body must be a JSON object like {{"inputs": "..."}}, not {type(data).__name__}',
            )
        try:
            return GenerateRequest.model_validate(data)
        except ValidationError as err:
            text, details = _readable(err)
            raise APIError(422, "invalid_request", text, details=details) from None

    def check_limits(req: GenerateRequest) -> tuple[list[str], int, DecodingSettings]:
        texts = [req.inputs] if isinstance(req.inputs, str) else list(req.inputs)
        if not texts:
            raise APIError(422, "invalid_request", "inputs: the list is empty; send at least one text")
        if len(texts) > limits.max_inputs_per_request:
            raise limit_error(
                422,
                "max_inputs_per_request",
                limits.max_inputs_per_request,
                f"the request has {len(texts)} inputs",
            )
        p = req.parameters
        new = (
            p.max_new_tokens
            if p.max_new_tokens is not None
            else min(limits.default_max_new_tokens, limits.max_new_tokens)
        )
        if new > limits.max_new_tokens:
            raise limit_error(
                422,
                "max_new_tokens",
                limits.max_new_tokens,
                f"parameters.max_new_tokens={new} asks for too many tokens",
            )
        if p.num_beams > 1 and req.stream:
            raise APIError(
                422,
                "invalid_request",
                "stream: beam search (num_beams > 1) cannot stream tokens; use num_beams=1 or stream=false",
            )
        if p.num_beams > 1 and p.do_sample:
            raise APIError(422, "invalid_request", "parameters: beam search with do_sample is not supported")
        sampled = p.do_sample
        settings = DecodingSettings(
            num_beams=p.num_beams,
            do_sample=sampled,
            temperature=p.temperature if sampled else 1.0,
            top_k=p.top_k if sampled else None,
            top_p=p.top_p if sampled else None,
            repetition_penalty=p.repetition_penalty,
            no_repeat_ngram_size=p.no_repeat_ngram_size,
            length_penalty=p.length_penalty if p.num_beams > 1 else 1.0,
            min_new_tokens=p.min_new_tokens,
            seed=p.seed if sampled else None,
            # Rows of a batch run until its longest limit: group limits by power of two (waste < 2x); beam
            # search is cut only at the end, so there the limit must be exact.
            length_group=new if p.num_beams > 1 else 1 << (new - 1).bit_length(),
        )
        if settings.seed is not None:  # reproducible only when no other request shares the batch
            state["serial"] += 1
            settings = DecodingSettings(**{**settings.as_dict(), "group": state["serial"]})
        return texts, new, settings

    def encode(texts: list[str], task: str | None) -> list[list[int]]:
        try:
            ids = engine.encode(texts, task)
        except T5kitError as err:
            raise APIError(422, "invalid_request", f"task: {err}" if task else str(err)) from None
        for i, row in enumerate(ids):
            if len(row) > limits.max_input_tokens:
                raise limit_error(
                    422,
                    "max_input_tokens",
                    limits.max_input_tokens,
                    f"inputs[{i}] is {len(row)} tokens long (with task prefix and EOS)",
                )
        return ids

    # -------------------------------------------------------------------------------- routes
    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        summary="Generate text for one or more inputs",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerateRequest"}}},
            }
        },
        responses={
            400: {"description": "malformed JSON"},
            408: {"description": "request_timeout_s exceeded"},
            413: {"description": "max_body_bytes exceeded"},
            422: {"description": "wrong types, unknown fields or a broken limit"},
            503: {"description": "shutting down"},
        },
    )
    async def generate(request: Request):  # noqa: ANN202 - JSON or an event stream
        start = time.perf_counter()
        mode = "unknown"
        try:
            req = await read_request(request)
            mode = "stream" if req.stream else "json"
            texts, new_tokens, settings = check_limits(req)
            ids = encode(texts, req.task)
        except APIError as err:
            if err.body.get("limit"):
                metrics.rejected(err.body["limit"])
            metrics.request(mode, err.status)
            raise
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RowEvent] = asyncio.Queue()
        ticket = Ticket()

        def sink(event: RowEvent) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        rows = [
            Row(ids=r, max_new_tokens=new_tokens, settings=settings, sink=sink, index=i, ticket=ticket)
            for i, r in enumerate(ids)
        ]
        try:
            batcher.submit(rows)
        except BatcherClosed:
            metrics.request(mode, 503)
            raise APIError(503, "shutting_down", "the server is shutting down; retry elsewhere") from None
        state["in_flight"] += 1
        deadline = loop.time() + limits.request_timeout_s
        if req.stream:
            return StreamingResponse(
                stream_events(texts, ids, rows, queue, ticket, deadline, start),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            outputs = await collect(ids, queue, deadline)
        except APIError as err:
            ticket.cancel()
            metrics.request(mode, err.status)
            if err.body.get("limit"):
                metrics.rejected(err.body["limit"])
            raise
        finally:
            state["in_flight"] -= 1
        elapsed = time.perf_counter() - start
        usage = Usage(
            input_tokens=sum(o.input_tokens for o in outputs),
            output_tokens=sum(o.output_tokens for o in outputs),
        )
        metrics.tokens(len(outputs), usage.input_tokens, usage.output_tokens)
        metrics.request(mode, 200, elapsed)
        return GenerateResponse(model=engine.name, outputs=outputs, usage=usage, latency_s=round(elapsed, 4))

    def timeout_error() -> APIError:
        return limit_error(
            408, "request_timeout_s", limits.request_timeout_s, "the request did not finish in time"
        )

    async def next_event(queue: asyncio.Queue[RowEvent], deadline: float) -> RowEvent:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise timeout_error()
        try:
            return await asyncio.wait_for(queue.get(), remaining)
        except asyncio.TimeoutError:
            raise timeout_error() from None

    async def collect(ids: list[list[int]], queue: asyncio.Queue[RowEvent], deadline: float) -> list[Output]:
        tokens: list[list[int]] = [[] for _ in ids]
        outputs: list[Output | None] = [None] * len(ids)
        pending = len(ids)
        while pending:
            event = await next_event(queue, deadline)
            if event.kind == "error":
                raise APIError(500, "generation_failed", event.error or "generation failed")
            if event.kind == "token":
                tokens[event.index].append(int(event.token_id))
                continue
            i = event.index
            outputs[i] = Output(
                text=engine.decode(tokens[i]),
                token_ids=tokens[i],
                input_tokens=len(ids[i]),
                output_tokens=len(tokens[i]),
                stop_reason=event.stop_reason or "unknown",
            )
            pending -= 1
        return [o for o in outputs if o is not None]

    async def stream_events(texts, ids, rows, queue, ticket, deadline, start) -> AsyncIterator[bytes]:
        streams = [TextStream(engine) for _ in ids]
        pending = len(ids)
        total_out = 0
        status = 200
        try:
            yield b": t5kit stream\n\n"  # headers and a first byte at once: the client knows it is queued
            while pending:
                try:
                    event = await next_event(queue, deadline)
                except APIError as err:
                    status = err.status
                    metrics.rejected("request_timeout_s")
                    yield _sse("error", {"error": err.body})
                    return
                i = event.index
                if event.kind == "error":
                    status = 500
                    yield _sse("error", {"error": {"code": "generation_failed", "message": event.error}})
                    return
                if event.kind == "token":
                    piece = streams[i].push(int(event.token_id))
                    yield _sse("token", {"index": i, "token_id": event.token_id, "text": piece})
                    continue
                pending -= 1
                s = streams[i]
                total_out += len(s.ids)
                yield _sse(
                    "end",
                    {
                        "index": i,
                        "text": engine.decode(s.ids),
                        "input_tokens": len(ids[i]),
                        "output_tokens": len(s.ids),
                        "stop_reason": event.stop_reason,
                    },
                )
            elapsed = time.perf_counter() - start
            usage = {"input_tokens": sum(len(r) for r in ids), "output_tokens": total_out}
            metrics.tokens(len(ids), usage["input_tokens"], total_out)
            yield _sse("done", {"model": engine.name, "usage": usage, "latency_s": round(elapsed, 4)})
        finally:
            ticket.cancel()  # a no-op when finished; stops the rows when the client went away
            state["in_flight"] -= 1
            metrics.request("stream", status, time.perf_counter() - start if status == 200 else None)

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus the request body models (the body is parsed by hand, see the docstring)."""
        if app.openapi_schema is None:
            schema = default_openapi()
            body = GenerateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(body.pop("$defs", {}))
            components["GenerateRequest"] = body
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/health", summary="Liveness: the model is loaded and the worker is running")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": engine.name,
            "queue_depth": batcher.queue_depth,
            "in_flight": state["in_flight"],
        }

    @app.get("/v1/models", summary="What is loaded, the limits and the batching settings")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [engine.describe()],
            "limits": asdict(limits),
            "batching": {
                "max_batch_size": batcher.max_batch_size,
                "batch_wait_ms": batcher.batch_wait * 1000,
                "enabled": batcher.max_batch_size > 1,
            },
        }

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        text = metrics.render(engine.name, batcher.queue_depth, state["in_flight"], batcher.rows_running)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _version() -> str:
    try:
        from t5kit import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "0"


__all__ = ["APIError", "GenerateRequest", "GenerateResponse", "Limits", "Metrics", "create_app"]
