"""The dynamic batcher, driven by its own events rather than by time.

A fake engine (no model) holds the worker wherever a test needs it, so "these rows were all queued when
the batch started" is a fact of the test, not a hope about thread scheduling inside a millisecond window.
Then the same two properties through HTTP, with the real model behind a gate: concurrent requests share a
batch, and a row that ends early is answered while its batch goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from serve_helpers import BOUND_S, LiveServer, cli_app, save_tiny_checkpoint, wait_until

from t5kit.errors import T5kitError
from t5kit.serve.batcher import Batcher, BatcherClosed, Row, RowEvent, Ticket

NEVER_MS = 600_000.0  # a batch window no test waits out: a batch that starts anyway started for another reason


class FakeEngine:
    """Yields ``max_new_tokens`` tokens per row (token ids 100 + step), then the row's end ("length").

    While ``gate`` is clear, a batch waits for it before its first token; ``batches`` records each batch's
    rows (their first ids) and ``started`` is set when one begins.
    """

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.settings: list[object] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        self.after_first_end: threading.Event | None = None  # a batch of several rows waits for it after
        # its first row ended

    def run_batch(self, rows, max_new_tokens, settings, is_cancelled) -> Iterator:  # noqa: ANN001
        self.batches.append([r[0] for r in rows])
        self.settings.append(settings)
        self.started.set()
        assert self.gate.wait(BOUND_S)
        if self.fail:
            raise RuntimeError("the model fell over")
        ended = False
        for step in range(max(max_new_tokens)):
            for i, limit in enumerate(max_new_tokens):
                if step < limit:
                    yield i, 100 + step, None
                if step + 1 == limit:
                    yield i, None, "length"
                    if not ended and self.after_first_end is not None and len(rows) > 1:
                        ended = True
                        assert self.after_first_end.wait(BOUND_S)


class Collector:
    """The sink of one request's rows: its events, and an event set when all ``n`` rows have ended."""

    def __init__(self, n: int = 1):
        self.events: list[RowEvent] = []
        self.n = n
        self.done = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, event: RowEvent) -> None:
        with self.lock:
            self.events.append(event)
            if sum(e.kind != "token" for e in self.events) == self.n:
                self.done.set()

    def ended(self, index: int = 0) -> RowEvent | None:
        return next((e for e in self.events if e.kind != "token" and e.index == index), None)

    def tokens(self, index: int = 0) -> list[int]:
        return [e.token_id for e in self.events if e.kind == "token" and e.index == index]


def rows(first_id: int, n: int = 1, new: int = 3, settings: object = "greedy", sink=None, ticket=None):  # noqa: ANN001
    sink = sink or Collector(n)
    ticket = ticket or Ticket()
    made = [Row(ids=[first_id + i, 1], max_new_tokens=new, settings=settings, sink=sink, index=i, ticket=ticket)
            for i in range(n)]
    return made, sink


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def make(engine):
    made: list[Batcher] = []

    def build(**kw) -> Batcher:
        b = Batcher(engine, **kw)
        b.start()
        made.append(b)
        return b

    yield build
    engine.gate.set()
    for b in made:
        assert b.close(BOUND_S), "the worker did not stop"


def hold_worker(engine: FakeEngine, batcher: Batcher, n: int = 1) -> Collector:
    """Run a batch of ``n`` rows (ids 0, 1, ...) and keep the worker inside it (gate shut) until the test
    opens the gate. A full batch (``n`` = max_batch_size) starts whatever the window."""
    engine.gate.clear()
    engine.started.clear()
    blocker, sink = rows(0, n=n)
    batcher.submit(blocker)
    assert engine.started.wait(BOUND_S)
    return sink


# ------------------------------------------------------------------------------------------------ batching
def test_rows_queued_while_the_worker_is_busy_share_one_batch(engine, make):
    b = make(max_batch_size=16, batch_wait_ms=5)
    blocker = hold_worker(engine, b)
    sinks = []
    for i in range(6):
        made, sink = rows(10 * (i + 1))
        b.submit(made)
        sinks.append(sink)
    assert b.queue_depth == 6 and b.rows_running == 1
    engine.gate.set()
    for sink in [blocker, *sinks]:
        assert sink.done.wait(BOUND_S)
        assert sink.tokens() == [100, 101, 102] and sink.ended().stop_reason == "length"
    assert engine.batches == [[0], [10, 20, 30, 40, 50, 60]]


def test_a_full_batch_starts_without_waiting_for_the_window(engine, make):
    b = make(max_batch_size=3, batch_wait_ms=NEVER_MS)
    made, sink = rows(10, n=3)
    b.submit(made)
    assert sink.done.wait(BOUND_S)  # only "a full batch starts at once" can have started it
    assert engine.batches == [[10, 11, 12]]


def test_max_batch_size_splits_and_one_disables_batching(engine, make):
    b = make(max_batch_size=2, batch_wait_ms=NEVER_MS)
    made, sink = rows(10, n=5)
    hold_worker(engine, b, n=2)
    b.submit(made)
    engine.gate.set()
    wait_until(lambda: len(engine.batches) == 3, "two full batches")  # the fifth row waits for company
    assert engine.batches == [[0, 1], [10, 11], [12, 13]] and b.queue_depth == 1
    assert b.close(BOUND_S) and sink.done.is_set()  # closing runs it without company
    assert engine.batches[3:] == [[14]]
    engine.batches.clear()
    single = make(max_batch_size=1, batch_wait_ms=NEVER_MS)
    blocker = hold_worker(engine, single)
    made, sink = rows(20, n=3)
    single.submit(made)
    engine.gate.set()
    assert blocker.done.wait(BOUND_S) and sink.done.wait(BOUND_S)
    assert engine.batches == [[0], [20], [21], [22]]


def test_only_equal_settings_share_a_batch_and_the_oldest_goes_first(engine, make):
    b = make(max_batch_size=16, batch_wait_ms=0)
    hold_worker(engine, b)
    a1, sa1 = rows(10, settings="greedy")
    s1, ss1 = rows(20, settings="sampled")
    a2, sa2 = rows(30, settings="greedy")
    for made in (a1, s1, a2):
        b.submit(made)
    engine.gate.set()
    for sink in (sa1, ss1, sa2):
        assert sink.done.wait(BOUND_S)
    assert engine.batches[1:] == [[10, 30], [20]]
    assert engine.settings[1:] == ["greedy", "sampled"]


def test_a_row_that_ends_early_is_answered_before_its_batch_ends(engine, make):
    b = make(max_batch_size=16, batch_wait_ms=0)
    hold_worker(engine, b)
    short, short_sink = rows(10, new=2)
    long, long_sink = rows(20, new=50)
    b.submit(short)
    b.submit(long)
    engine.after_first_end = threading.Event()
    engine.gate.set()
    assert short_sink.done.wait(BOUND_S)  # the fake engine is parked right after the short row's end
    assert not long_sink.done.is_set() and b.rows_running == 2
    engine.after_first_end.set()
    assert long_sink.done.wait(BOUND_S) and len(long_sink.tokens()) == 50
    assert engine.batches[1:] == [[10, 20]]


# ------------------------------------------------------------------------------------------------ lifecycle
def test_cancelled_rows_never_reach_the_model(engine, make):
    b = make(max_batch_size=16, batch_wait_ms=0)
    hold_worker(engine, b)
    cancelled, gone = rows(10)
    kept, sink = rows(20)
    b.submit(cancelled)
    b.submit(kept)
    cancelled[0].ticket.cancel()
    engine.gate.set()
    assert sink.done.wait(BOUND_S)
    assert engine.batches[1:] == [[20]] and gone.events == []


def test_a_failing_batch_answers_every_row_and_the_worker_survives(engine, make):
    b = make(max_batch_size=16, batch_wait_ms=0)
    engine.fail = True
    made, sink = rows(10, n=2)
    b.submit(made)
    assert sink.done.wait(BOUND_S)
    assert [e.kind for e in sink.events] == ["error", "error"]
    assert "the model fell over" in sink.events[0].error
    engine.fail = False
    made, sink = rows(20)
    b.submit(made)
    assert sink.done.wait(BOUND_S) and sink.ended().kind == "end"


def test_close_runs_queued_rows_then_refuses_new_ones(engine, make):
    reported: list[tuple[int, float]] = []
    b = make(max_batch_size=16, batch_wait_ms=NEVER_MS)
    b.on_batch = lambda size, seconds: reported.append((size, seconds))
    made, sink = rows(10, n=2)
    b.submit(made)
    assert b.queue_depth == 2  # waiting for company: the window is never over
    assert b.close(BOUND_S)
    assert sink.done.is_set() and engine.batches == [[10, 11]]
    assert [size for size, _ in reported] == [2]
    with pytest.raises(BatcherClosed):
        b.submit(rows(20)[0])


@pytest.mark.parametrize("kw", [{"max_batch_size": 0}, {"batch_wait_ms": -1}], ids=["size", "wait"])
def test_bad_settings_name_the_flag(engine, kw):
    with pytest.raises(T5kitError, match="--max-batch-size|--batch-wait-ms"):
        Batcher(engine, **kw)


# ------------------------------------------------------------------------------------------------ over HTTP
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture
def live(checkpoint):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    s = LiveServer(cli_app(checkpoint, "--batching", "static", "--max-batch-size", "16", "--batch-wait-ms", "60"))
    yield s
    s.stop()


def test_concurrent_requests_share_a_batch(live):
    s = live
    s.gate.shut()
    blocker, first = s.post_in_thread({"inputs": "First.", "parameters": {"max_new_tokens": 16}})
    wait_until(s.gate.held.is_set, "the first batch reaching the gate")
    sent = [s.post_in_thread({"inputs": f"Request number {i}.", "parameters": {"max_new_tokens": 16}})
            for i in range(6)]
    wait_until(lambda: s.metrics.value("t5kit_queue_depth") == 6, "six rows queued behind the held batch")
    s.gate.open()
    for thread, result in [(blocker, first), *sent]:
        thread.join(BOUND_S)
        assert result.get("status") == 200 and len(result["body"]["outputs"]) == 1, result
    # the held batch, then one batch of all six (counted by the app's own registry, once each batch is over:
    # its rows are answered before that)
    assert s.gate.sizes == [1, 6]
    wait_until(lambda: s.metrics.value("t5kit_batch_size_count") == 2, "both batches counted")
    assert s.metrics.value("t5kit_batch_size_sum") == 7
    assert s.metrics.value("t5kit_batch_size_bucket", le="4.0") == 1  # the blocker's
    assert s.metrics.value("t5kit_batch_size_bucket", le="8.0") == 2


def test_early_finished_request_returns_before_the_long_one(live):
    """Two requests in one batch (lengths 129 and 256 share a length group): the short one is answered
    while the long one's batch is provably still decoding (parked by the gate after the short row ended)."""
    s = live
    s.gate.shut()
    blocker, _ = s.post_in_thread({"inputs": "First.", "parameters": {"max_new_tokens": 2}})
    wait_until(s.gate.held.is_set, "the first batch reaching the gate")
    long_thread, long_out = s.post_in_thread(
        {"inputs": "A long story about a house.", "parameters": {"max_new_tokens": 256}})
    short_thread, short_out = s.post_in_thread({"inputs": "Short.", "parameters": {"max_new_tokens": 129}})
    wait_until(lambda: s.metrics.value("t5kit_queue_depth") == 2, "both rows queued behind the held batch")
    s.gate.pause_after_first_end()
    s.gate.open()
    short_thread.join(BOUND_S)
    assert short_out.get("status") == 200, short_out
    assert s.gate.paused.is_set() and "status" not in long_out  # answered while its batch was parked
    s.gate.resume()
    long_thread.join(BOUND_S)
    blocker.join(BOUND_S)
    assert long_out.get("status") == 200, long_out
    assert s.gate.sizes == [1, 2]  # one batch of two, not two batches of one
    n_long = long_out["body"]["outputs"][0]["output_tokens"]
    n_short = short_out["body"]["outputs"][0]["output_tokens"]
    assert n_long > n_short, (n_long, n_short)
    assert httpx.get(s.url + "/health", timeout=10).json()["in_flight"] == 0
