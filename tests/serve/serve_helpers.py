"""What the serve tests share: a tiny checkpoint, a server process, an in-process server, and a gate.

Two ways to run the server. ``Server`` is ``python -m t5kit serve`` as a subprocess on a loopback port
(the CLI, its flags, uvicorn and signals, as a user runs them). ``LiveServer`` runs the app the CLI
builds (``t5kit.cli.serve.make_app``) under uvicorn on a thread of the test process, with its engine
wrapped in a ``GatedEngine``: the test then decides when the model worker may go on, so what is checked
(which rows shared a batch, what was in flight when shutdown began) follows from the order of events,
not from how fast a shared machine happens to be.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from conftest import T5_VOCAB

VOCAB = T5_VOCAB
# uvicorn shuts down gracefully on SIGTERM, then re-raises the signal: exit status 0 or "killed by SIGTERM".
CLEAN_EXIT = (0, -signal.SIGTERM)
BOUND_S = 60.0  # the longest any wait in these tests may take before it counts as a failure


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


def wait_until(condition: Callable[[], Any], what: str, timeout: float = BOUND_S) -> Any:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` (a bound, not a window)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"{what} did not happen within {timeout} s")


# ------------------------------------------------------------------------------------------------ processes
class Server:
    """``python -m t5kit serve`` as a subprocess on 127.0.0.1; waits (bounded) until /health answers."""

    def __init__(self, model: Path, log: Path, *args: str, startup_s: float = 90.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "t5kit", "serve", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(self.port), "--threads", "1", "--log-level", "warning", *args],
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


# ------------------------------------------------------------------------------------------------ in process
class GatedEngine:
    """An engine whose batches the test lets through: everything else is the wrapped engine's.

    While the gate is shut (``shut()``), a batch that starts waits at it (``held`` is set then) until
    ``open()``. ``pause_after_first_end()`` makes the next batch of several rows stop right after its first
    row ended, until ``resume()``: whatever the server does for that row meanwhile, it did before its batch
    was over. ``sizes`` lists the rows of every batch, in order.
    """

    def __init__(self, engine: Any):
        self._engine = engine
        self.sizes: list[int] = []
        self.held = threading.Event()
        self.paused = threading.Event()
        self._gate = threading.Event()
        self._gate.set()
        self._resume = threading.Event()
        self._pause = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def shut(self) -> None:
        self._gate.clear()

    def open(self) -> None:
        self._gate.set()

    def pause_after_first_end(self) -> None:
        self._resume.clear()
        self._pause = True

    def resume(self) -> None:
        self._resume.set()

    def run_batch(self, rows, max_new_tokens, settings, is_cancelled) -> Iterator:  # noqa: ANN001
        self.sizes.append(len(rows))
        if not self._gate.is_set():
            self.held.set()
            assert self._gate.wait(BOUND_S), "the test never opened the gate"
            self.held.clear()
        pause = self._pause and len(rows) > 1
        if pause:
            self._pause = False
        for event in self._engine.run_batch(rows, max_new_tokens, settings, is_cancelled):
            yield event
            if pause and event[2] is not None:  # a row ended; the batcher has answered it already
                pause = False
                self.paused.set()
                assert self._resume.wait(BOUND_S), "the test never resumed the batch"
                self.paused.clear()


    def continuous_decoder(self, max_new_tokens: int, max_rows: int = 32) -> GatedDecoder:
        """The continuous batcher's decoder, held at the same gate before each step."""
        return GatedDecoder(self, self._engine.continuous_decoder(max_new_tokens, max_rows))


class GatedDecoder:
    """A ``ContinuousDecoder`` whose steps wait at its ``GatedEngine``'s gate. ``sizes`` gets the rows let in
    by each ``admit``; after ``pause_after_first_end()`` the step that follows the first step in which a row
    of several ended waits for ``resume()`` (the batcher has answered that row in between)."""

    def __init__(self, gate: GatedEngine, decoder: Any):
        self._gate, self._decoder = gate, decoder
        self._pause_next = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._decoder, name)

    def admit(self, jobs: list) -> None:  # noqa: ANN001
        self._gate.sizes.append(sum(job.rows for job in jobs))
        self._decoder.admit(jobs)

    def step(self) -> list:
        gate = self._gate
        if not gate._gate.is_set():
            gate.held.set()
            assert gate._gate.wait(BOUND_S), "the test never opened the gate"
            gate.held.clear()
        if self._pause_next:
            self._pause_next = False
            gate.paused.set()
            assert gate._resume.wait(BOUND_S), "the test never resumed the batch"
            gate.paused.clear()
        rows = self._decoder.rows
        events = self._decoder.step()
        if gate._pause and rows > 1 and any(e.token_id is None for e in events):
            gate._pause = False
            self._pause_next = True
        return events


def cli_app(checkpoint: Path, *flags: str) -> Any:
    """The app ``t5kit serve --model checkpoint *flags`` would run, with its engine gated."""
    from t5kit.cli import build_parser
    from t5kit.cli.serve import make_app

    app = make_app(build_parser().parse_args(["serve", "--model", str(checkpoint), *flags]))
    app.state.batcher.engine = GatedEngine(app.state.batcher.engine)
    return app


class LiveServer:
    """``app`` under uvicorn on a thread of this process, on a loopback port (real HTTP, real sockets)."""

    def __init__(self, app: Any, graceful_s: int = 30):
        import uvicorn

        self.app = app
        self.gate: GatedEngine = app.state.batcher.engine
        self.metrics = app.state.metrics
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=graceful_s)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), "uvicorn starting")
        assert self.server.started, "uvicorn did not start"

    def post_in_thread(self, body: dict) -> tuple[threading.Thread, dict]:
        """POST ``/v1/generate`` from a new thread; the dict gets ``status`` and ``body`` when answered."""
        result: dict = {}

        def send() -> None:
            r = httpx.post(self.url + "/v1/generate", json=body, timeout=BOUND_S)
            result["status"], result["body"] = r.status_code, r.json()

        thread = threading.Thread(target=send)
        thread.start()
        return thread, result

    def begin_shutdown(self) -> None:
        """What uvicorn does on SIGTERM (its signal handler calls exactly this)."""
        self.server.handle_exit(signal.SIGTERM, None)

    def stop(self) -> None:
        self.gate.open()
        self.gate.resume()
        self.begin_shutdown()
        self.thread.join(BOUND_S)
        assert not self.thread.is_alive(), "uvicorn did not stop"


# ------------------------------------------------------------------------------------------------ reading
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
