"""Continuous batching: requests join the running batch at the next decoding step and leave the moment they end.

The static batcher (:mod:`t5kit.serve.batcher`) decodes a batch to its end while new requests wait; here
the model worker runs one loop of steps over a :class:`t5kit.generate.continuous.ContinuousDecoder`:

1. cancelled requests (timed out, client gone) leave the batch: their rows stop computing at once;
2. waiting requests join, oldest first, while the batch has room (``max_batch_size`` rows) and within the
   per-step encoder budget (``max_encoder_tokens`` source tokens), so a burst of long prompts is spread
   over several steps instead of stalling the tokens of the rows already decoding (the first request of a
   step is always let in, however long, so nothing starves);
3. one decoding step for every running row; each row's new token and end go to its sink at once.

Rows with different options (greedy, sampled, beam search, other lengths) share the steps: each request is
one job with its own processors and its own seeded generator. The interface is the static batcher's
(``start``, ``submit``, ``close``, ``queue_depth``, ``rows_running``), so the app takes either.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from t5kit.errors import T5kitError
from t5kit.generate.continuous import DEFAULT_MAX_ENCODER_TOKENS, ContinuousDecoder, Job
from t5kit.serve.batcher import BatcherClosed, BatcherError, ModelWorker, Row, RowEvent, ScoreWork, Ticket
from t5kit.threads import decoding_threads, tick


@dataclass(eq=False)
class _Request:
    rows: list[Row]
    ticket: Ticket
    job: Job | None = None
    ended: list[bool] | None = None

    @property
    def size(self) -> int:
        """Decoder rows it takes once running."""
        options = self.rows[0].settings.generate_options()
        return len(self.rows) * max(1, int(options.get("num_beams", 1)))

    @property
    def source_tokens(self) -> int:
        return sum(len(r.ids) for r in self.rows)


class ContinuousBatcher(ModelWorker):
    """In-flight batching on one model worker thread (see the module docstring).

    ``engine`` is a ``t5kit.serve.engine.Engine``: it turns a request's rows into a
    :class:`~t5kit.generate.continuous.Job` (``engine.job``) and makes the decoder
    (``engine.continuous_decoder``). ``on_batch(rows, seconds)`` is called after every step (metrics).
    """

    mode = "continuous"
    streams_beams = True  # each beam request streams the prefix its hypotheses share (BeamState.settled)

    def __init__(
        self,
        engine: Any,
        max_batch_size: int = 32,
        batch_wait_ms: float = 0.0,
        on_batch: Callable[[int, float], None] | None = None,
        max_encoder_tokens: int = DEFAULT_MAX_ENCODER_TOKENS,
        max_new_tokens: int = 256,
    ):
        if max_batch_size < 1:
            raise BatcherError(f"max_batch_size (--max-batch-size) must be at least 1, got {max_batch_size}")
        if max_encoder_tokens < 1:
            raise BatcherError(f"max_encoder_tokens (--max-encoder-tokens) must be at least 1, got "
                               f"{max_encoder_tokens}")
        self.engine = engine
        self.max_batch_size = int(max_batch_size)
        self.batch_wait = float(batch_wait_ms) / 1000.0  # unused: a request joins at the next step
        self.max_encoder_tokens = int(max_encoder_tokens)
        self.on_batch = on_batch
        self.max_new_tokens = int(max_new_tokens)  # the longest output a request may ask for (Limits)
        self._waiting: deque[_Request] = deque()
        self._waiting_rows = 0
        self._running: list[_Request] = []
        self._running_rows = 0
        self._scoring: deque[ScoreWork] = deque()  # POST /v1/score work, run between two decoding steps
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    # ------------------------------------------------------------------------------------ public
    def submit(self, rows: Sequence[Row]) -> None:
        """Queue one request's rows (they share a ticket and settings); they join at the next step."""
        if not rows:
            return
        groups: dict[int, _Request] = {}
        for row in rows:  # one job per ticket: the rows of one request
            groups.setdefault(id(row.ticket), _Request([], row.ticket)).rows.append(row)
        with self._cond:
            if self._closing:
                raise BatcherClosed("the server is shutting down")
            now = time.monotonic()
            for request in groups.values():
                for row in request.rows:
                    row.enqueued = now
                self._waiting.append(request)
                self._waiting_rows += len(request.rows)
            self._cond.notify()

    def submit_score(self, work: ScoreWork) -> None:
        """Queue a scoring request; the worker runs it between two decoding steps, with the other scoring
        requests waiting then in one model call (within the step's encoder budget)."""
        with self._cond:
            if self._closing:
                raise BatcherClosed("the server is shutting down")
            self._scoring.append(work)
            self._waiting_rows += work.rows
            self._cond.notify()

    @property
    def queue_depth(self) -> int:
        """Rows waiting to join."""
        return self._waiting_rows

    @property
    def rows_running(self) -> int:
        """Decoder rows in the running batch."""
        return self._running_rows

    # ------------------------------------------------------------------------------------ worker
    def _take(self, running_rows: int) -> list[_Request]:
        """The waiting requests that join now, oldest first; blocks while there is nothing to do (returns an
        empty list when closing with nothing left).

        Budgets: the rows of the batch stay within ``max_batch_size`` (a request larger than that joins an
        empty batch alone), and the sources let in by one step within ``max_encoder_tokens``, except the
        step's first request, which joins however long its sources are, so a long prompt never waits for
        the batch to drain. The queue is first come, first served: a request that does not fit yet keeps
        the ones behind it waiting until rows free up, so no large request starves."""
        with self._cond:
            while not self._waiting and not self._running and not self._scoring and not self._closing:
                self._cond.wait()
            if any(r.ticket.cancelled for r in self._waiting):  # nobody waits for them: not in the queue depth
                for request in [r for r in self._waiting if r.ticket.cancelled]:
                    self._waiting.remove(request)
                    self._waiting_rows -= len(request.rows)
                    self._end(request, "cancelled")
            taken: list[_Request] = []
            rows, tokens = running_rows, 0
            while self._waiting:
                request = self._waiting[0]
                rows_fit = rows + request.size <= self.max_batch_size or rows == 0
                tokens_fit = not taken or tokens + request.source_tokens <= self.max_encoder_tokens
                if not (rows_fit and tokens_fit):
                    break
                self._waiting.popleft()
                self._waiting_rows -= len(request.rows)
                taken.append(request)
                rows += request.size
                tokens += request.source_tokens
            return taken

    def _loop(self) -> None:
        decoder = self.engine.continuous_decoder(self.max_new_tokens, self.max_batch_size)
        with decoding_threads():  # t5kit.threads: T5KIT_THREADS, following a neighbour's load each step
            while True:
                joining = self._take(decoder.rows)
                self._score()
                if not joining and not self._running:
                    if self._closing and not self._waiting and not self._scoring:
                        return
                    continue
                try:
                    self._step(decoder, joining)
                except Exception as err:  # noqa: BLE001 - the worker must outlive any failure (a hung server
                    # would answer every later request 408): the requests of this step fail, the rest go on
                    message = f"{type(err).__name__}: {err}"
                    decoder.clear()
                    for request in {id(r): r for r in [*self._running, *joining]}.values():
                        self._fail(request, message)
                    self._running = []
                    self._running_rows = 0

    def _step(self, decoder: ContinuousDecoder, joining: list[_Request]) -> None:
        """Drop the cancelled, admit ``joining``, decode one step and hand each row its events."""
        start = time.perf_counter()
        tick()
        for request in [r for r in self._running if r.ticket.cancelled]:  # stop computing for nobody
            decoder.drop(request.job)
            self._running.remove(request)
            self._end(request, "cancelled")
        self._admit(decoder, joining)
        if not self._running:
            self._running_rows = 0
            return
        self._running_rows = stepped = decoder.rows
        events = decoder.step()
        for event in events:
            request = event.job.tag
            row = request.rows[event.index]
            if event.token_id is not None:
                row.sink(RowEvent("token", row.index, token_id=event.token_id))
            elif not request.ended[event.index]:
                request.ended[event.index] = True
                if event.error is not None:
                    row.sink(RowEvent("error", row.index, error=event.error))
                else:
                    row.sink(RowEvent("end", row.index, stop_reason=event.stop_reason))
        self._running = [r for r in self._running if not r.job.done]
        self._running_rows = decoder.rows
        self.steps += 1
        if self.on_batch is not None:
            self.on_batch(stepped, time.perf_counter() - start)

    def _score(self) -> None:
        """Run the waiting scoring requests (oldest first, within the encoder budget, at least one) in one
        model call; each gets its results or its error."""
        with self._cond:
            works: list[ScoreWork] = []
            tokens = 0
            while self._scoring:
                work = self._scoring[0]
                if works and tokens + work.source_tokens > self.max_encoder_tokens:
                    break
                self._scoring.popleft()
                self._waiting_rows -= work.rows
                if work.cancelled():
                    continue
                works.append(work)
                tokens += work.source_tokens
        if not works:
            return
        try:
            results = self.engine.score_works(works)
        except Exception as err:  # noqa: BLE001 - a failed scoring call fails its requests, not the worker
            results, error = [None] * len(works), f"{type(err).__name__}: {err}"
        else:
            error = None
        for work, result in zip(works, results):
            try:
                work.done(result, error)
            except RuntimeError:  # the app's event loop is gone (shutdown): nobody to answer
                pass

    def _admit(self, decoder: ContinuousDecoder, joining: list[_Request]) -> None:
        jobs = []
        for request in joining:
            request.ended = [False] * len(request.rows)
            try:
                request.job = decoder.prepare(self.engine.job(request.rows, tag=request))
            except T5kitError as err:
                self._fail(request, str(err))
                continue
            except Exception as err:  # noqa: BLE001 - a request that cannot even be prepared fails alone
                self._fail(request, f"{type(err).__name__}: {err}")
                continue
            jobs.append(request.job)
        if not jobs:
            return
        try:
            decoder.admit(jobs)
        except Exception as err:  # noqa: BLE001 - a request that cannot start fails alone
            message = f"{type(err).__name__}: {err}"
            for job in jobs:
                self._fail(job.tag, message)
            return
        self._running.extend(job.tag for job in jobs)

    @staticmethod
    def _end(request: _Request, reason: str) -> None:
        """Each row of ``request`` not ended yet ends with ``reason`` ("cancelled")."""
        ContinuousBatcher._finish(request, lambda row: RowEvent("end", row.index, stop_reason=reason))

    @staticmethod
    def _fail(request: _Request, message: str) -> None:
        """Each row of ``request`` not ended yet gets an error event with ``message``."""
        ContinuousBatcher._finish(request, lambda row: RowEvent("error", row.index, error=message))

    @staticmethod
    def _finish(request: _Request, event: Callable[[Row], RowEvent]) -> None:
        for i, row in enumerate(request.rows):
            if request.ended is None or not request.ended[i]:
                row.sink(event(row))
        request.ended = [True] * len(request.rows)


__all__ = ["DEFAULT_MAX_ENCODER_TOKENS", "ContinuousBatcher"]
