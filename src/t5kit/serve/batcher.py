"""Dynamic batching: many concurrent requests, one model worker thread, one batch at a time.

Why: a CPU (or GPU) spends about as long on one decoding step for 32 rows as for a handful, so decoding
concurrent requests together multiplies throughput. Requests that arrive within a short wait window
(opened by the oldest waiting row, or by the end of the previous batch if that is later) are decoded as
one batch of up to ``max_batch_size`` rows; a full batch starts at once.

The unit of batching is a *row* (one input text); a request with several inputs contributes several rows
and is answered when all of them have finished. Only rows whose decoding settings are equal share a batch
(greedy and sampled rows, or different temperatures, cannot run in one call); the oldest waiting row
picks the settings of the next batch, so no setting starves. The engine reports each row's tokens and its
end as they happen, and a row that ends early is answered at once while the rest of its batch continues.

All model calls happen on the one worker thread: torch is never called concurrently, and the event loop
that serves HTTP never blocks on the model. Results go back through each row's ``sink`` (called on the
worker thread; the app forwards them to the event loop with ``call_soon_threadsafe``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from t5kit.errors import T5kitError


@dataclass
class RowEvent:
    """What the worker tells a row's sink: a new token, the end of the row, or a failure."""

    kind: str  # "token" | "end" | "error"
    index: int  # the row's position within its request
    token_id: int | None = None
    stop_reason: str | None = None
    error: str | None = None


@dataclass
class Ticket:
    """Shared by the rows of one request; set ``cancelled`` when nobody waits for the answer any more."""

    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Row:
    """One input sequence waiting for (or in) a batch."""

    ids: list[int]
    max_new_tokens: int
    settings: Hashable  # rows share a batch only when these compare equal
    sink: Callable[[RowEvent], None]
    index: int = 0
    ticket: Ticket = field(default_factory=Ticket)
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class ScoreWork:
    """One ``POST /v1/score`` request for the model worker: token ids of each input and of its candidates
    (its target alone, or its choices); ``done(result, error)`` is called on the worker thread with the
    engine's per-input results (``Engine.score_works``) or an error message."""

    input_ids: list[list[int]]
    candidates: list[list[list[int]]]
    done: Callable[[Any, str | None], None]
    ticket: Ticket = field(default_factory=Ticket)
    adapter: str | None = None  # the LoRA adapter to score with (None: the base model)

    @property
    def rows(self) -> int:
        """Decoder rows of its scoring pass: one per candidate."""
        return sum(len(c) for c in self.candidates)

    @property
    def source_tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)

    def cancelled(self) -> bool:
        return self.ticket.cancelled


class BatchEngine(Protocol):
    """The model side of the batcher (``t5kit.serve.engine.Engine`` implements it)."""

    def run_batch(
        self,
        rows: Sequence[list[int]],
        max_new_tokens: Sequence[int],
        settings: Hashable,
        is_cancelled: Callable[[int], bool],
    ) -> Iterator[tuple[int, int | None, str | None]]:
        """Decode the rows together; yield ``(row, token_id, None)`` per new token and ``(row, None,
        stop_reason)`` once per row when it ends. Rows for which ``is_cancelled(row)`` turns true may be
        dropped early (they then need no end event)."""
        ...


class BatcherError(T5kitError, ValueError):
    """A batching setting that cannot work (the CLI reports it as one line)."""


class BatcherClosed(RuntimeError):
    """Raised by :meth:`Batcher.submit` once shutdown has begun."""


class ModelWorker:
    """The one model worker thread a batcher runs its ``_loop`` on: started with the app, drained on
    shutdown (both batchers share this). Subclasses set ``_cond``, ``_closing`` and ``_thread`` (None)."""

    _cond: threading.Condition
    _closing: bool
    _thread: threading.Thread | None

    def _loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="t5kit-model-worker", daemon=True)
            self._thread.start()

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking rows, finish every row already queued or running; True if done within ``timeout``."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()


class Batcher(ModelWorker):
    """Groups rows into batches and runs them on a single worker thread (see the module docstring).

    ``max_batch_size=1`` turns batching off (each row decoded alone), for comparison.
    ``on_batch(size, seconds)`` is called after every batch (metrics).
    """

    mode = "static"
    streams_beams = False  # beam search answers at the end of its batch

    def __init__(
        self,
        engine: BatchEngine,
        max_batch_size: int = 32,
        batch_wait_ms: float = 5.0,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        if max_batch_size < 1:
            raise BatcherError(f"max_batch_size (--max-batch-size) must be at least 1, got {max_batch_size}")
        if batch_wait_ms < 0:
            raise BatcherError(f"batch_wait_ms (--batch-wait-ms) must be >= 0, got {batch_wait_ms}")
        self.engine = engine
        self.max_batch_size = int(max_batch_size)
        self.batch_wait = float(batch_wait_ms) / 1000.0
        self.on_batch = on_batch
        self._waiting: list[Row] = []
        self._cond = threading.Condition()
        self._closing = False
        self._running = 0  # rows in the batch being decoded
        self._free_since = 0.0  # when the worker finished its last batch
        self._thread: threading.Thread | None = None
        self._scoring_rows = 0  # candidates of POST /v1/score requests not answered yet

    # ------------------------------------------------------------------------------------ public
    def submit(self, rows: Sequence[Row]) -> None:
        """Queue rows for decoding (all rows of one request at once, so they tend to share a batch)."""
        with self._cond:
            if self._closing:
                raise BatcherClosed("the server is shutting down")
            now = time.monotonic()
            for row in rows:
                row.enqueued = now
            self._waiting.extend(rows)
            self._cond.notify()

    def submit_score(self, work: ScoreWork) -> None:
        """Score on a thread of its own: the engine's lock runs it between two batches (this batcher has no
        steps to run it between, and a scoring pass is one short model call)."""
        if self._closing:
            raise BatcherClosed("the server is shutting down")
        with self._cond:
            self._scoring_rows += work.rows  # counted in queue_depth: the queue limit covers scoring too

        def run() -> None:
            result, error = None, None
            try:
                if not work.cancelled():  # timed out while waiting for the engine: nobody to answer
                    result = self.engine.score_works([work])[0]
            except Exception as err:  # noqa: BLE001 - reported to the request
                error = f"{type(err).__name__}: {err}"
            finally:
                with self._cond:
                    self._scoring_rows -= work.rows
            try:
                work.done(result, error)
            except RuntimeError:  # the app's event loop is gone (shutdown)
                pass

        threading.Thread(target=run, name="t5kit-score", daemon=True).start()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting) + self._scoring_rows

    @property
    def rows_running(self) -> int:
        return self._running

    # ------------------------------------------------------------------------------------ worker
    def _next_batch(self) -> list[Row] | None:
        """Block until a batch is due; None when closing and nothing is left."""
        with self._cond:
            while True:
                self._waiting = [r for r in self._waiting if not r.ticket.cancelled]
                if not self._waiting:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                first = self._waiting[0]
                compatible = [r for r in self._waiting if r.settings == first.settings][: self.max_batch_size]
                # The window opens when the oldest row arrived or when the worker became free, whichever is
                # later: clients answered by the last batch come straight back, and waiting a moment for
                # them merges them with the rows that queued meanwhile instead of leaving two half batches.
                remaining = max(first.enqueued, self._free_since) + self.batch_wait - time.monotonic()
                if len(compatible) >= self.max_batch_size or remaining <= 0 or self._closing:
                    chosen = {id(r) for r in compatible}
                    self._waiting = [r for r in self._waiting if id(r) not in chosen]
                    self._running = len(compatible)
                    return compatible
                self._cond.wait(remaining)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            start = time.perf_counter()
            self._run(batch)
            self._running = 0
            self._free_since = time.monotonic()
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - start)

    def _run(self, batch: list[Row]) -> None:
        ended = [False] * len(batch)
        try:
            events = self.engine.run_batch(
                [r.ids for r in batch],
                [r.max_new_tokens for r in batch],
                batch[0].settings,
                lambda i: batch[i].ticket.cancelled,
            )
            for i, token_id, stop_reason in events:
                row = batch[i]
                if ended[i]:
                    continue
                if stop_reason is not None:
                    ended[i] = True
                    row.sink(RowEvent("end", row.index, stop_reason=stop_reason))
                else:
                    row.sink(RowEvent("token", row.index, token_id=token_id))
        except Exception as err:  # noqa: BLE001 - one bad batch must not kill the worker thread
            message = f"{type(err).__name__}: {err}"
            for i, row in enumerate(batch):
                if not ended[i]:
                    ended[i] = True
                    row.sink(RowEvent("error", row.index, error=message))
        for i, row in enumerate(batch):  # an engine that dropped cancelled rows, or forgot one
            if not ended[i]:
                row.sink(
                    RowEvent(
                        "error" if not row.ticket.cancelled else "end",
                        row.index,
                        stop_reason="cancelled",
                        error="the row ended without a result",
                    )
                )
