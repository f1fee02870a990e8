"""The continuous batcher (t5kit.serve.continuous) on a real engine: no head-of-line blocking, results equal
to the same request served alone, cancelled rows leave at once, budgets, failures confined to a request."""

from __future__ import annotations

import threading
import time

import pytest
from serve_helpers import BOUND_S, save_tiny_checkpoint, wait_until

from t5kit.serve.batcher import Row, RowEvent, Ticket
from t5kit.serve.continuous import ContinuousBatcher
from t5kit.serve.engine import DecodingSettings, Engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return Engine.load(str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-t5"))), name="tiny")


class Request:
    """One request's rows and what their sinks received (tokens, end reason, the batcher's step at the end)."""

    def __init__(self, batcher: ContinuousBatcher, ids: list[list[int]], max_new_tokens: int, **options):
        seed = options.pop("seed", None)
        self.settings = DecodingSettings.of(options, max_new_tokens, seed=seed)
        self.ticket = Ticket()
        self.tokens: dict[int, list[int]] = {i: [] for i in range(len(ids))}
        self.reasons: dict[int, str | None] = {}
        self.errors: list[str] = []
        self.batcher = batcher
        self.done = threading.Event()
        self.first_token_at: float | None = None
        self.rows = [Row(ids=r, max_new_tokens=max_new_tokens, settings=self.settings, sink=self.sink, index=i,
                         ticket=self.ticket) for i, r in enumerate(ids)]

    def sink(self, event: RowEvent) -> None:
        if event.kind == "token":
            assert event.index not in self.reasons, "a token after the row's end"
            self.tokens[event.index].append(event.token_id)
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
        else:
            if event.kind == "error":
                self.errors.append(event.error)
            self.reasons[event.index] = event.stop_reason
            if len(self.reasons) == len(self.rows):
                self.end_step = self.batcher.steps
                self.ended_at = time.perf_counter()
                self.done.set()

    def submit(self) -> Request:
        self.start_step = self.batcher.steps
        self.started_at = time.perf_counter()
        self.batcher.submit(self.rows)
        return self

    def wait(self) -> Request:
        assert self.done.wait(BOUND_S), "the request was not answered"
        return self


@pytest.fixture
def batcher(engine):
    b = ContinuousBatcher(engine, max_batch_size=32, max_new_tokens=256)
    b.start()
    yield b
    assert b.close(BOUND_S)


def served_alone(engine: Engine, ids: list[list[int]], max_new_tokens: int, **options) -> dict[int, list[int]]:
    b = ContinuousBatcher(engine, max_batch_size=32, max_new_tokens=256)
    b.start()
    try:
        return Request(b, ids, max_new_tokens, **options).submit().wait().tokens
    finally:
        b.close(BOUND_S)


def test_a_short_request_is_not_blocked_behind_a_long_batch(engine, batcher):
    """Issue 18's head-of-line case: 8 inputs x 200 forced tokens, then a 4-token request while they decode."""
    long_ids = engine.encode([f"A long input sentence number {i} about houses." for i in range(8)])
    long = Request(batcher, long_ids, 200, min_new_tokens=200).submit()
    wait_until(lambda: sum(map(len, long.tokens.values())) >= 8 * 5, "the long batch decoding")
    short = Request(batcher, engine.encode(["Hi"]), 4, min_new_tokens=4).submit().wait()
    long.wait()
    assert not long.errors and not short.errors
    assert [len(t) for t in long.tokens.values()] == [200] * 8 and short.tokens[0] and len(short.tokens[0]) == 4
    short_steps, long_steps = short.end_step - short.start_step, long.end_step - long.start_step
    assert short_steps <= 6, f"the short request took {short_steps} steps for 4 tokens"
    ratio = (short.ended_at - short.started_at) / (long.ended_at - long.started_at)
    assert ratio <= 0.2, f"short / long latency {ratio:.2f} (steps {short_steps} / {long_steps})"


def test_results_under_load_equal_the_request_served_alone(engine, batcher):
    """Greedy, beam, seeded sampling and penalties in one running batch, joining at different moments."""
    texts = ["The house is wonderful.", "Hi", "A much longer input sentence with many tokens in it.", "Yes"]
    cases = [
        (texts[:2], 12, {}),
        (texts[2:3], 30, dict(num_beams=4, length_penalty=0.6)),
        (texts[1:4], 20, dict(do_sample=True, top_k=20, seed=3)),
        (texts[3:4], 8, dict(no_repeat_ngram_size=2, repetition_penalty=1.2)),
        (texts[:1], 40, dict(min_new_tokens=40)),
    ]
    expected = [served_alone(engine, engine.encode(t), n, **dict(o)) for t, n, o in cases]
    widths: list[int] = []
    batcher.on_batch = lambda rows, seconds: widths.append(rows)
    requests = []
    for t, n, o in cases:
        requests.append(Request(batcher, engine.encode(t), n, **dict(o)).submit())
        time.sleep(0.01)  # they join a batch already decoding, at different steps
    for request, want in zip(requests, expected):
        request.wait()
        assert not request.errors
        assert request.tokens == want
    assert any(len(t) > 3 for want in expected for t in want.values()), "the outputs are trivially short"
    assert max(widths) >= 6, f"the requests never shared a step (rows per step: {sorted(set(widths))})"


def test_a_cancelled_request_leaves_the_running_batch_within_two_steps(engine, batcher):
    widths: list[int] = []  # rows of every step, in order (the batcher reports each step)
    batcher.on_batch = lambda rows, seconds: widths.append(rows)
    ids = engine.encode(["one", "two", "three"])
    kept = Request(batcher, engine.encode(["four"]), 150, min_new_tokens=150).submit()
    gone = Request(batcher, ids, 150, min_new_tokens=150).submit()
    wait_until(lambda: len(gone.tokens[0]) >= 3 and batcher.rows_running == 4, "both requests decoding")
    cancelled_at = len(widths)
    gone.ticket.cancel()
    kept.wait()
    after = widths[cancelled_at:]
    assert 4 not in after[2:], f"the cancelled rows were still decoded {after.count(4)} steps later"
    assert after[2:] and set(after[2:]) == {1}
    assert len(kept.tokens[0]) == 150 and len(gone.tokens[0]) < 150


def test_admission_keeps_to_the_row_budget_and_takes_the_oldest_first(engine):
    b = ContinuousBatcher(engine, max_batch_size=4, max_new_tokens=64)
    widths = []
    b.on_batch = lambda rows, seconds: widths.append(rows)
    b.start()
    try:
        first = Request(b, engine.encode(["a", "b", "c"]), 30, min_new_tokens=30).submit()
        second = Request(b, engine.encode(["d", "e"]), 5, min_new_tokens=5).submit()  # does not fit beside first
        third = Request(b, engine.encode(["f"]), 5, min_new_tokens=5).submit()  # fits, but waits its turn
        for r in (first, second, third):
            r.wait()
        assert max(widths) <= 4
        assert second.end_step >= first.end_step and third.end_step >= second.end_step - 5
    finally:
        assert b.close(BOUND_S)


def test_a_request_over_the_encoder_budget_joins_a_running_batch_as_the_first_of_its_step(engine):
    """Its sources are longer than the per-step budget: it joins at the next step (alone in that step's
    admission), not after the running batch drained; the request behind it joins one step later."""
    b = ContinuousBatcher(engine, max_batch_size=32, max_new_tokens=64, max_encoder_tokens=8)
    b.start()
    try:
        running = Request(b, engine.encode(["a"]), 60, min_new_tokens=60).submit()
        wait_until(lambda: len(running.tokens[0]) >= 2, "the first request decoding")
        long_text = ["A source sentence much longer than eight tokens, twice over."] * 2
        big = Request(b, engine.encode(long_text), 3, min_new_tokens=3).submit()
        small = Request(b, engine.encode(["b"]), 3, min_new_tokens=3).submit()
        for r in (big, small, running):
            r.wait()
        assert sum(len(ids) for ids in engine.encode(long_text)) > 8
        assert big.end_step < running.end_step and small.end_step < running.end_step, \
            "the long prompt (or the request behind it) waited for the running batch to drain"
    finally:
        assert b.close(BOUND_S)


def test_a_request_that_cannot_start_fails_alone(engine, batcher):
    ok = Request(batcher, engine.encode(["fine"]), 20, min_new_tokens=20).submit()
    bad = Request(batcher, [[engine.model.config.vocab_size + 5, 1]], 5).submit().wait()
    ok.wait()
    assert bad.errors and "outside the vocabulary" in bad.errors[0]
    assert not ok.errors and len(ok.tokens[0]) == 20


def test_close_finishes_what_is_queued_and_refuses_new_rows(engine):
    b = ContinuousBatcher(engine, max_batch_size=2, max_new_tokens=64)
    b.start()
    requests = [Request(b, engine.encode([f"text {i}"]), 10, min_new_tokens=10).submit() for i in range(5)]
    assert b.close(BOUND_S)
    assert all(r.done.is_set() and len(r.tokens[0]) == 10 for r in requests)
    from t5kit.serve.batcher import BatcherClosed

    with pytest.raises(BatcherClosed):
        Request(b, engine.encode(["late"]), 5).submit()


def test_a_client_gone_mid_stream_stops_its_rows(tmp_path):
    """Over real HTTP: a streaming client that hangs up leaves the running batch (the running-rows gauge falls
    to the other request's row) while the other request decodes on to its end."""
    import httpx
    from serve_helpers import LiveServer, cli_app

    s = LiveServer(cli_app(save_tiny_checkpoint(tmp_path / "tiny"), "--max-new-tokens", "1500"))
    try:
        long = {"max_new_tokens": 1500, "min_new_tokens": 1500}  # outlives the hang-up by far
        other, result = s.post_in_thread({"inputs": "stay", "parameters": long})
        wait_until(lambda: s.metrics.value("t5kit_rows_running") == 1, "the other request decoding")
        body = {"inputs": ["one", "two", "three"], "stream": True, "parameters": long}
        with httpx.stream("POST", s.url + "/v1/generate", json=body, timeout=BOUND_S) as r:
            tokens = 0
            for line in r.iter_lines():
                tokens += line.startswith("event: token")
                if tokens >= 6:
                    assert s.metrics.value("t5kit_rows_running") == 4
                    break  # leaving the block closes the connection mid-stream
        wait_until(lambda: s.metrics.value("t5kit_rows_running") == 1, "the hung-up client's rows leaving")
        assert other.is_alive(), "the other request ended first: the test proves nothing"
        other.join(BOUND_S)
        assert result["status"] == 200 and result["body"]["outputs"][0]["output_tokens"] == 1500
    finally:
        s.stop()
