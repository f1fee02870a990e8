"""The HTTP routes: ``create_app(engine, limits)`` returns a FastAPI app.

Endpoints: ``POST /v1/generate`` (JSON answer, or server-sent events with ``"stream": true``),
``GET /health``, ``GET /v1/models``, ``GET /metrics`` (Prometheus text format), the playground at ``/``,
and FastAPI's ``/docs``, ``/redoc`` and ``/openapi.json``. What a request may say and the error shape are
in ``t5kit.serve.schema``, the counters in ``t5kit.serve.metrics``.

The model runs on the batcher's single worker thread; handlers only tokenize, queue rows and wait on an
asyncio queue fed from that thread, so the event loop stays free to accept and stream. Which batcher is
``BATCHERS[batching]``; each has ``start()``, ``submit(rows)`` (``BatcherClosed`` once closing),
``close(timeout) -> bool``, ``queue_depth``, ``rows_running``, ``max_batch_size``, ``batch_wait`` (seconds)
``on_batch`` and ``streams_beams``. The default, ``continuous`` (:mod:`t5kit.serve.continuous`), lets
rows join and leave the running batch at every step; ``static`` (:mod:`t5kit.serve.batcher`) decodes a batch
to its end, and is kept for comparison (``benchmarks/serve.py``) and for ``--no-batching``.

``POST /v1/generate`` takes ``Content-Type: application/json`` (or ``+json``) only, else 415: a browser
sends a cross-site POST without asking first (no CORS preflight) only with a form or ``text/plain`` type or
none, so a web page cannot make a visitor's browser spend this server's model time. Over
``max_queue_rows`` rows waiting, a request is answered 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from t5kit import __version__
from t5kit.errors import T5kitError
from t5kit.generate.options import GenerationError
from t5kit.pipeline import TextStream, with_choices
from t5kit.serve.batcher import Batcher, BatcherClosed, BatcherError, Row, RowEvent, ScoreWork, Ticket
from t5kit.serve.continuous import DEFAULT_MAX_ENCODER_TOKENS, ContinuousBatcher
from t5kit.serve.engine import DecodingSettings, Engine
from t5kit.serve.metrics import Metrics
from t5kit.serve.schema import (
    APIError,
    ChoiceScores,
    GenerateRequest,
    GenerateResponse,
    Limits,
    Output,
    ScoreRequest,
    ScoreResponse,
    TargetScore,
    Usage,
    check_request,
    check_score_request,
    limit_error,
    parse_request,
)

STATIC = Path(__file__).resolve().parent / "static"
# name -> batcher class, for create_app(batching=...) and `t5kit serve --batching` (its choices)
BATCHERS: dict[str, type] = {"continuous": ContinuousBatcher, "static": Batcher}
RETRY_AFTER_MAX_S = 60  # a client told to wait longer would rather try another server; it can ask again
JSON_TYPE = "application/json"


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def check_content_type(value: str | None) -> None:
    """``application/json`` or a ``+json`` type, in UTF-8 if a charset is named; else a 415 (see the module
    docstring for why a missing type is refused too)."""
    media, _, params = (value or "").partition(";")
    media = media.strip().lower()
    charset = next(
        (v.strip().strip('"').lower() for k, _, v in (p.partition("=") for p in params.split(";"))
         if k.strip().lower() == "charset"),
        None,
    )
    if (media == JSON_TYPE or (media.startswith("application/") and media.endswith("+json"))) and charset in (
        None, "utf-8", "utf8"
    ):
        return
    got = f"Content-Type {value!r}" if value else "no Content-Type"
    raise APIError(
        415,
        "unsupported_media_type",
        f"the request has {got}; send the body as UTF-8 JSON with the header 'Content-Type: {JSON_TYPE}' "
        "(curl: -H 'content-type: application/json')",
    )


def retry_after(excess: int, rows_per_second: float | None) -> int:
    """Seconds until ``excess`` rows have left the queue at ``rows_per_second``, the rate rows were answered
    lately (the queue drains as fast as rows finish); 1 when none finished lately, at most
    ``RETRY_AFTER_MAX_S``."""
    seconds = math.ceil(excess / rows_per_second) if rows_per_second else 1
    return max(1, min(RETRY_AFTER_MAX_S, seconds))


class RowClock:
    """Time to first token and time per output token of one request, from when its sink saw each event.

    TTFT: from queued to the request's first token (its first end, when no row produced a token). TPOT per
    row: (end - first token) / (tokens - 1), for rows of two tokens or more and not for beam search, whose
    tokens all arrive at the end.
    """

    def __init__(self, metrics: Metrics, rows: int, queued: float, per_token: bool):
        self.metrics, self.queued, self.per_token = metrics, queued, per_token
        self.started = False
        self.first: list[float | None] = [None] * rows
        self.tokens = [0] * rows

    def saw(self, at: float, event: RowEvent) -> None:
        if event.kind == "error":
            return
        if not self.started:
            self.started = True
            self.metrics.first_token(at - self.queued)
        i = event.index
        if event.kind == "token":
            self.tokens[i] += 1
            if self.first[i] is None:
                self.first[i] = at
            return
        first = self.first[i]
        self.metrics.row_done(at)
        if self.per_token and first is not None and self.tokens[i] > 1:
            self.metrics.per_token((at - first) / (self.tokens[i] - 1))


# ------------------------------------------------------------------------------------------------ app
def create_app(
    engine: Engine,
    limits: Limits | None = None,
    max_batch_size: int = 32,
    batch_wait_ms: float = 5.0,
    shutdown_timeout_s: float | None = None,
    batching: str = "continuous",
    max_encoder_tokens: int = DEFAULT_MAX_ENCODER_TOKENS,
) -> FastAPI:
    """The server around ``engine``: a batcher (started with the app, drained on shutdown) and the routes.

    ``batching`` names the batcher class in ``BATCHERS``. ``max_batch_size=1`` serves without batching.
    On shutdown (SIGINT/SIGTERM under uvicorn) new connections are refused, requests in flight finish, then
    the worker drains the queue and stops.
    """
    limits = limits or Limits()
    if batching not in BATCHERS:
        raise BatcherError(f"batching (--batching) must be one of {', '.join(BATCHERS)}, got {batching!r}")
    extra = {}
    if BATCHERS[batching] is ContinuousBatcher:  # rows join the running batch: its cache holds the longest output
        extra = {"max_new_tokens": limits.max_new_tokens, "max_encoder_tokens": max_encoder_tokens}
    batcher = BATCHERS[batching](engine, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, **extra)
    metrics = Metrics(engine.name, queue_depth=lambda: batcher.queue_depth, rows_running=lambda: batcher.rows_running)
    batcher.on_batch = metrics.batch
    state = {"serial": 0}
    drain_timeout = shutdown_timeout_s if shutdown_timeout_s is not None else limits.request_timeout_s + 5

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await asyncio.to_thread(batcher.close, drain_timeout)

    app = FastAPI(
        title="t5kit",
        version=__version__,
        summary="T5 text-to-text generation with dynamic batching",
        description="Send texts to `POST /v1/generate`; try it at `/` (the playground).",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.limits = limits
    app.state.batching = batching

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return JSONResponse({"error": err.body}, status_code=err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return JSONResponse(
            {"error": {"code": code, "message": f"{err.detail}: {request.method} {request.url.path}"}},
            status_code=err.status_code,
            headers=getattr(err, "headers", None),
        )

    # -------------------------------------------------------------------------------- parsing
    async def read_body(request: Request) -> bytes:
        """The body, refused with a 415 unless it is JSON and with a 413 as soon as it is known to be over
        ``max_body_bytes``."""
        check_content_type(request.headers.get("content-type"))
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
        return b"".join(chunks)

    def check_adapter(name: str | None) -> str | None:
        """The adapter a request names, if the server holds it; else a 422 that lists the ones it holds."""
        try:
            engine.adapter_index(name)
        except T5kitError as err:
            raise APIError(422, "unknown_adapter", f"adapter: {err}") from None
        return name

    def settings_of(options: dict[str, Any], max_new_tokens: int, seed: int | None,
                    adapter: str | None = None) -> DecodingSettings:
        settings = DecodingSettings.of(options, max_new_tokens, seed=seed, adapter=adapter)
        if seed is not None:  # reproducible only when no other request shares the batch
            state["serial"] += 1
            settings = replace(settings, group=state["serial"])
        return settings

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

    def check_queue(rows: int) -> None:
        """503 + Retry-After when ``rows`` more would put more than ``max_queue_rows`` in the queue; a 422 when
        the request alone is over it (waiting would not help)."""
        limit = limits.max_queue_rows
        if rows > limit:
            raise limit_error(422, "max_queue_rows", limit, f"the request has {rows} rows, more than can ever queue")
        waiting = batcher.queue_depth
        if waiting + rows <= limit:
            return
        retry = retry_after(waiting + rows - limit, metrics.rows_per_second())
        raise limit_error(
            503,
            "max_queue_rows",
            limit,
            f"the server is busy: {waiting} rows are waiting and this request adds {rows}; retry in {retry} s",
            code="overloaded",
            headers={"Retry-After": str(retry)},
            retry_after_s=retry,
        )

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
            415: {"description": "the body is not sent as application/json"},
            422: {"description": "wrong types, unknown fields, odd text or a broken limit"},
            503: {"description": "max_queue_rows exceeded (with Retry-After), or shutting down"},
        },
    )
    async def generate(request: Request):  # noqa: ANN202 - JSON or an event stream
        start = time.perf_counter()
        mode = "unknown"
        try:
            req = parse_request(await read_body(request))
            mode = "stream" if req.stream else "json"
            checked = check_request(req, limits, stream_beams=batcher.streams_beams)
            texts, new_tokens = checked.texts, checked.max_new_tokens
            options = checked.options
            try:
                if req.choices is not None:  # "one of these strings": their token ids, the pipeline's way
                    if len(req.choices) > limits.max_choices:
                        raise limit_error(422, "max_choices", limits.max_choices,
                                          f"choices has {len(req.choices)} strings")
                    if not options.get("allowed_sequences"):  # the default (none) is not a second set
                        options = {k: v for k, v in options.items() if k != "allowed_sequences"}
                    given = {"max_new_tokens"} if req.parameters.max_new_tokens is not None else set()
                    options = with_choices(engine.tokenizer, options, req.choices, given=given)
                    if not given:  # unsaid: as long as the longest choice (the pipeline's rule)
                        new_tokens = options["max_new_tokens"]
                        if new_tokens > limits.max_new_tokens:
                            raise limit_error(422, "max_new_tokens", limits.max_new_tokens,
                                              f"the longest choice is {new_tokens} tokens long (with EOS)")
                engine.check_options(dict(options, max_new_tokens=new_tokens))
            except GenerationError as err:
                raise APIError(422, "invalid_request", f"parameters: {err}") from None
            settings = settings_of(options, new_tokens, checked.seed, check_adapter(req.adapter))
            ids = encode(texts, req.task)
            check_queue(len(ids))
        except APIError as err:
            if err.body.get("limit"):
                metrics.rejected(err.body["limit"])
            metrics.request(mode, err.status)
            raise
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, RowEvent]] = asyncio.Queue()
        ticket = Ticket()

        def sink(event: RowEvent) -> None:  # on the worker thread: the time is when the model produced it
            loop.call_soon_threadsafe(queue.put_nowait, (time.perf_counter(), event))

        rows = [
            Row(ids=r, max_new_tokens=new_tokens, settings=settings, sink=sink, index=i, ticket=ticket)
            for i, r in enumerate(ids)
        ]
        clock = RowClock(metrics, len(rows), time.perf_counter(), per_token=checked.options["num_beams"] == 1)
        try:
            batcher.submit(rows)
        except BatcherClosed:
            metrics.request(mode, 503)
            raise APIError(503, "shutting_down", "the server is shutting down; retry elsewhere") from None
        metrics.started()
        deadline = loop.time() + limits.request_timeout_s
        if req.stream:
            return StreamingResponse(
                stream_events(ids, queue, ticket, deadline, start, clock),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            outputs = await collect(ids, queue, deadline, clock)
        except APIError as err:
            ticket.cancel()
            metrics.request(mode, err.status)
            if err.body.get("limit"):
                metrics.rejected(err.body["limit"])
            raise
        finally:
            metrics.finished()
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

    async def next_event(
        queue: asyncio.Queue[tuple[float, RowEvent]], deadline: float, clock: RowClock
    ) -> RowEvent:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise timeout_error()
        try:
            at, event = await asyncio.wait_for(queue.get(), remaining)
        except asyncio.TimeoutError:
            raise timeout_error() from None
        clock.saw(at, event)
        return event

    async def collect(
        ids: list[list[int]], queue: asyncio.Queue[tuple[float, RowEvent]], deadline: float, clock: RowClock
    ) -> list[Output]:
        tokens: list[list[int]] = [[] for _ in ids]
        outputs: list[Output | None] = [None] * len(ids)
        pending = len(ids)
        while pending:
            event = await next_event(queue, deadline, clock)
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

    async def stream_events(ids, queue, ticket, deadline, start, clock) -> AsyncIterator[bytes]:
        streams = [TextStream(engine.decode) for _ in ids]
        pending = len(ids)
        total_out = 0
        status = 200
        try:
            yield b": t5kit stream\n\n"  # headers and a first byte at once: the client knows it is queued
            while pending:
                try:
                    event = await next_event(queue, deadline, clock)
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
            metrics.finished()
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
            score_body = ScoreRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(score_body.pop("$defs", {}))
            components["ScoreRequest"] = score_body
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        summary="Log-likelihood of given targets, or rank classification over candidates",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}}},
            }
        },
        responses={
            400: {"description": "malformed JSON"},
            408: {"description": "request_timeout_s exceeded"},
            413: {"description": "max_body_bytes exceeded"},
            422: {"description": "wrong types, unknown fields, empty or repeated candidates, or a broken limit"},
            503: {"description": "max_queue_rows exceeded (with Retry-After), or shutting down"},
        },
    )
    async def score(request: Request) -> ScoreResponse:
        """Scored with the batcher's other work: between two decoding steps (continuous batching), every
        candidate of an input in one decoder pass over that input's single encoder pass."""
        start = time.perf_counter()
        try:
            req = parse_request(await read_body(request), ScoreRequest)
            checked = check_score_request(req, limits)
            adapter = check_adapter(req.adapter)
            ids = encode(checked.texts, req.task)
            candidates = [engine.tokenizer.batch_encode(group) for group in checked.candidates]
            eos = engine.model.config.eos_token_id
            for i, group in enumerate(candidates):
                where = f"choices of input {i}" if checked.classify else f"targets[{i}]"
                for j, target in enumerate(group):
                    if target == [eos]:
                        raise APIError(422, "invalid_request", f"{where}: {checked.candidates[i][j]!r} tokenizes to "
                                       "nothing (EOS alone); every candidate needs text the vocabulary holds")
                    if target in group[:j]:
                        raise APIError(422, "invalid_request", f"{where}: {checked.candidates[i][j]!r} tokenizes "
                                       f"like {checked.candidates[i][group.index(target)]!r}; they would score the "
                                       "same: send one of them")
                for j, target in enumerate(group):
                    if len(target) > limits.max_new_tokens:
                        where = f"choices of input {i}, [{j}]" if checked.classify else f"targets[{i}]"
                        raise limit_error(422, "max_new_tokens", limits.max_new_tokens,
                                          f"{where} is {len(target)} tokens long (with EOS)")
            check_queue(sum(len(g) for g in candidates))
        except APIError as err:
            if err.body.get("limit"):
                metrics.rejected(err.body["limit"])
            metrics.request("score", err.status)
            raise
        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()

        def done(result: Any, error: str | None) -> None:  # on the worker thread
            def settle() -> None:
                if not answer.done():
                    answer.set_result((result, error))
            loop.call_soon_threadsafe(settle)

        work = ScoreWork(ids, candidates, done, adapter=adapter)
        try:
            batcher.submit_score(work)
        except BatcherClosed:
            metrics.request("score", 503)
            raise APIError(503, "shutting_down", "the server is shutting down; retry elsewhere") from None
        metrics.started()
        try:
            result, error = await asyncio.wait_for(answer, limits.request_timeout_s)
        except asyncio.TimeoutError:
            work.ticket.cancel()
            metrics.rejected("request_timeout_s")
            metrics.request("score", 408)
            raise limit_error(408, "request_timeout_s", limits.request_timeout_s,
                              "the request did not finish in time") from None
        finally:
            metrics.finished()
        if error is not None:
            metrics.request("score", 500)
            raise APIError(500, "scoring_failed", error)
        elapsed = time.perf_counter() - start
        metrics.request("score", 200, elapsed)
        if not checked.classify:
            scores = [TargetScore(target=checked.candidates[i][0], token_ids=candidates[i][0],
                                  token_logprobs=r.token_logprobs[0], sum=r.sums[0], mean=r.means[0])
                      for i, r in enumerate(result)]
            return ScoreResponse(model=engine.name, scores=scores, latency_s=round(elapsed, 4))
        classifications = []
        for i, r in enumerate(result):
            ranked = r.means if checked.normalize == "mean" else r.sums
            best = max(range(len(ranked)), key=ranked.__getitem__)
            top = ranked[best]
            weights = [math.exp(v - top) for v in ranked]
            total = sum(weights)
            classifications.append(ChoiceScores(label=checked.candidates[i][best], index=best,
                                                scores=[w / total for w in weights], logprobs=list(r.sums)))
        return ScoreResponse(model=engine.name, classifications=classifications, latency_s=round(elapsed, 4))

    @app.get("/health", summary="Liveness: the model is loaded and the worker is running")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": engine.name,
            "queue_depth": batcher.queue_depth,
            "in_flight": metrics.in_flight,
        }

    @app.get("/v1/models", summary="What is loaded, the limits and the batching settings")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [engine.describe()],
            "limits": asdict(limits),
            "batching": {
                "mode": batching,
                "max_batch_size": batcher.max_batch_size,
                "batch_wait_ms": batcher.batch_wait * 1000,
                "enabled": batcher.max_batch_size > 1,
            },
        }

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


__all__ = ["BATCHERS", "APIError", "GenerateRequest", "GenerateResponse", "Limits", "create_app"]
