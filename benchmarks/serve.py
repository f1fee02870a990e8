"""Serving: the static batcher against the continuous one, side by side, 32 clients with a mixed load.

Each server is its own subprocess (``python -m t5kit serve --batching MODE``) on 127.0.0.1 with the same
random t5-small-shaped model (or ``--model``), the same ``--threads`` and the same batching limits; only
one server runs at a time, and the modes alternate A/B/A/B over ``--rounds`` (a fresh server each round),
so a drift in the machine's load hits both alike. The kernel choices of the linear backend are made once
(at the first server start, into a cache directory of this run) and read by every later server, so both
modes run the same kernels.

The load: ``--clients`` threads in this process, closed loop (each sends its next request when the last
one is answered), ``--requests-per-client`` requests each. Every request is drawn from an RNG seeded by
(``--seed``, round, client), so in one round both modes get the identical request sequence per client:

- kind: greedy (50%), beam search with 4 beams (20%), sampling (30%: temperature 0.8, top-k 50, its own
  seed);
- length: short (65%, 4-16 new tokens) or long (35%, 64-128); every request forces its length
  (``min_new_tokens = max_new_tokens``) so both modes do exactly the same work and tokens/s compares it;
- 1 input (80%) or 2-4 inputs (20%), each input 1-3 sentences (15-60 source tokens);
- 40% of the greedy and sampled requests stream (server-sent events); beam search does not (the static
  server refuses it, and the two modes must get the same load).

Reported per mode (all rounds pooled): requests answered, errors (non-200, an SSE error event, a stream
cut before ``done``, or an answer with the wrong number of outputs or tokens), lost (sent but never
answered), requests/s and new tokens/s (output tokens of all inputs / wall time of the load, its tail
included), p50/p99 of the total latency (all requests) and of the time to first token. Time to first token
is measured on the streamed requests only, from sending the request to the first ``token`` event (a
non-streamed answer has no earlier byte than the whole answer; its latency is in the latency columns).

Then, per mode and round, on an idle server:

- head-of-line blocking: a long request (8 inputs x 200 forced new tokens) and, 0.5 s later, a short one
  (1 input, 4 new tokens); the short one's latency / the long one's;
- results under load: a few greedy requests (and seeded sampled ones) answered during the load are sent
  again alone to the same server; the token ids must be identical.

Targets (issue 18): continuous/static throughput >= 1.5x, p99 time to first token <= 0.3x, head-of-line
ratio <= 0.2 for the continuous batcher, 0 errors and 0 lost in both modes, 0 mismatches.

    python benchmarks/serve.py                          # 32 clients x 6 requests, 2 rounds A/B/A/B
    python benchmarks/serve.py --rounds 3 --threads 2 --json serve.json
    python benchmarks/serve.py --quick                  # smoke run of the harness: a tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from t5kit.kernels.inference import linear
from t5kit.tokenizer import t5_vocabulary_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_facts, machine_line  # noqa: E402

VOCAB = t5_vocabulary_path()  # the T5 vocabulary shipped in the package
TASK = "translate_en_de"
MODES = ("static", "continuous")  # A, B: the ratios are continuous / static
SENTENCES = [
    "The house is wonderful and the garden is full of flowers in the spring.",
    "Our meeting has been moved to Thursday afternoon because of the holiday.",
    "She bought three apples, a loaf of bread and some cheese at the market.",
    "The committee will publish its report on the new railway line next month.",
    "Please send me the documents before the end of the week.",
    "The weather tomorrow will be cloudy with a chance of rain in the evening.",
    "He has been learning to play the piano for almost five years now.",
    "The museum is closed on Mondays but open late on Fridays.",
]
# The mix (fractions of requests); see the module docstring.
KINDS = (("greedy", 0.5), ("beam", 0.2), ("sampled", 0.3))
LONG_FRACTION = 0.35
MULTI_FRACTION = 0.2
STREAM_FRACTION = 0.4  # of the greedy and sampled requests
SAMPLING = {"do_sample": True, "temperature": 0.8, "top_k": 50}
BEAMS = 4
WARM_UP = (("greedy", 1, False), ("greedy", 4, True), ("beam", 2, False), ("sampled", 1, True))  # untimed
# The targets.
THROUGHPUT_TARGET = 1.5  # continuous / static, at least
TTFT_P99_TARGET = 0.3  # continuous / static, at most
HOL_TARGET = 0.2  # short latency / long latency, continuous, at most

FULL = {"preset": "t5-small", "requests_per_client": 6, "rounds": 2, "checks": 6}
QUICK = {"preset": "tiny", "requests_per_client": 1, "rounds": 1, "checks": 2}


# ------------------------------------------------------------------------------------------------ load
@dataclass(frozen=True)
class Spec:
    """One request of the load: what a client sends, and how many tokens each input must get back."""

    client: int
    seq: int
    kind: str  # greedy | beam | sampled
    texts: tuple[str, ...]
    new_tokens: int
    stream: bool
    seed: int | None = None

    def body(self) -> dict[str, Any]:
        parameters: dict[str, Any] = {"max_new_tokens": self.new_tokens, "min_new_tokens": self.new_tokens}
        if self.kind == "beam":
            parameters["num_beams"] = BEAMS
        elif self.kind == "sampled":
            parameters.update(SAMPLING, seed=self.seed)
        inputs: str | list[str] = self.texts[0] if len(self.texts) == 1 else list(self.texts)
        return {"inputs": inputs, "task": TASK, "parameters": parameters, "stream": self.stream}


def parse_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        lo, hi = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a range like 4-16, got {text!r}") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 1 <= low <= high, got {text!r}")
    return lo, hi


def draw_load(seed: int, round_: int, clients: int, per_client: int, short: tuple[int, int],
              long: tuple[int, int]) -> list[list[Spec]]:
    """Each client's request sequence, from an RNG seeded by (seed, round, client) alone."""
    kinds, weights = zip(*KINDS)
    load = []
    for client in range(clients):
        rng = random.Random(f"serve-bench/{seed}/{round_}/{client}")
        specs = []
        for seq in range(per_client):
            kind = rng.choices(kinds, weights)[0]
            lo, hi = long if rng.random() < LONG_FRACTION else short
            inputs = rng.randint(2, 4) if rng.random() < MULTI_FRACTION else 1
            texts = tuple(" ".join(rng.sample(SENTENCES, rng.randint(1, 3))) for _ in range(inputs))
            stream = kind != "beam" and rng.random() < STREAM_FRACTION
            specs.append(Spec(client, seq, kind, texts, rng.randint(lo, hi), stream,
                              rng.randrange(2**31) if kind == "sampled" else None))
        load.append(specs)
    return load


# ------------------------------------------------------------------------------------------------ server
def save_model(preset: str, directory: Path, seed: int = 0) -> Path:
    from t5kit import T5Model

    torch.manual_seed(seed)
    T5Model.from_preset(preset).save_pretrained(str(directory))
    shutil.copy(VOCAB / "spiece.model", directory / "spiece.model")
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(mode: str, model: Path, port: int, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "t5kit", "serve", "--batching", mode, "--model", str(model),
            "--host", "127.0.0.1", "--port", str(port), "--threads", str(args.threads),
            "--max-batch-size", str(args.max_batch_size), "--batch-wait-ms", f"{args.batch_wait_ms:g}",
            "--request-timeout", f"{args.timeout:g}", "--log-level", "warning", *shlex.split(args.server_args)]


def start_server(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    url = f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}"
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300  # the first start times the linear kernels
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {shlex.join(cmd)}\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"server did not start within 300 s: {shlex.join(cmd)}\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# ------------------------------------------------------------------------------------------------ requests
@dataclass
class Result:
    """What one request got: its status, times (from sending it) and the token ids of each input."""

    ok: bool = False
    error: str = ""
    start: float = 0.0  # perf_counter at send
    latency: float = float("nan")
    ttft: float | None = None  # streamed requests: the first token event
    tokens: int = 0
    token_ids: list[list[int]] = field(default_factory=list)


def check_answer(spec: Spec, token_ids: list[list[int]]) -> str:
    """'' when every input got exactly its forced number of tokens, else what is wrong."""
    if len(token_ids) != len(spec.texts):
        return f"{len(token_ids)} outputs for {len(spec.texts)} inputs"
    lengths = [len(t) for t in token_ids]
    if any(n != spec.new_tokens for n in lengths):
        return f"output lengths {lengths}, forced {spec.new_tokens}"
    return ""


def send(http: httpx.Client, spec: Spec) -> Result:
    """Send ``spec`` and wait for the whole answer (JSON, or the event stream to its ``done`` event)."""
    res = Result(start=time.perf_counter())
    try:
        if spec.stream:
            res.token_ids = [[] for _ in spec.texts]
            done, event = False, ""
            with http.stream("POST", "/v1/generate", json=spec.body()) as r:
                if r.status_code != 200:
                    r.read()
                    res.error = f"{r.status_code} {r.text[:200]}"
                    return res
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data = json.loads(line[5:])
                        if event == "token":
                            if res.ttft is None:
                                res.ttft = time.perf_counter() - res.start
                            res.token_ids[data["index"]].append(int(data["token_id"]))
                        elif event == "error":
                            res.error = f"error event: {json.dumps(data)[:200]}"
                            return res
                        elif event == "done":
                            done = True
            if not done:
                res.error = "the stream ended before its done event"
                return res
        else:
            r = http.post("/v1/generate", json=spec.body())
            if r.status_code != 200:
                res.error = f"{r.status_code} {r.text[:200]}"
                return res
            res.token_ids = [o["token_ids"] for o in r.json()["outputs"]]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as err:
        res.error = f"{type(err).__name__}: {err}"
        return res
    finally:
        res.latency = time.perf_counter() - res.start
    res.error = check_answer(spec, res.token_ids)
    res.ok = not res.error
    res.tokens = sum(len(t) for t in res.token_ids)
    return res


# ------------------------------------------------------------------------------------------------ one round
@dataclass
class Round:
    mode: str
    round: int
    sent: int = 0
    answered: int = 0  # ok or error: the client got something back
    started: float = 0.0  # perf_counter when the load began
    seconds: float = 0.0
    unsent: int = 0  # cut by --seconds
    rows_running: list[float] = field(default_factory=list)  # the gauge, sampled while the load runs
    queue_depth: list[float] = field(default_factory=list)
    records: list[tuple[Spec, Result]] = field(default_factory=list)

    @property
    def ok(self) -> list[tuple[Spec, Result]]:
        return [(s, r) for s, r in self.records if r.ok]

    @property
    def errors(self) -> int:
        return sum(1 for _, r in self.records if not r.ok)

    @property
    def lost(self) -> int:
        return self.sent - self.answered


def gauge(text: str, name: str) -> float | None:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def run_load(url: str, mode: str, round_: int, load: list[list[Spec]], args: argparse.Namespace) -> Round:
    run = Round(mode, round_)
    lock = threading.Lock()
    stop = threading.Event()
    deadline = time.monotonic() + args.seconds

    def client(specs: list[Spec]) -> None:
        with httpx.Client(base_url=url, timeout=args.timeout + 30) as http:
            for i, spec in enumerate(specs):
                if time.monotonic() >= deadline:
                    with lock:
                        run.unsent += len(specs) - i
                    return
                with lock:
                    run.sent += 1
                res = send(http, spec)
                with lock:
                    run.answered += 1
                    run.records.append((spec, res))

    def sampler() -> None:  # twice a second: the running rows and the queue, as the server reports them
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.wait(0.5):
                try:
                    text = http.get("/metrics").text
                except httpx.HTTPError:
                    continue
                for name, values in (("t5kit_rows_running", run.rows_running),
                                     ("t5kit_queue_depth", run.queue_depth)):
                    value = gauge(text, name)
                    if value is not None:
                        values.append(value)

    threads = [threading.Thread(target=client, args=(specs,), daemon=True) for specs in load]
    watcher = threading.Thread(target=sampler, daemon=True)
    start = run.started = time.perf_counter()
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:  # a request still running past the client timeout is lost
        t.join(max(0.0, deadline - time.monotonic()) + args.timeout + 60)
    run.seconds = time.perf_counter() - start
    stop.set()
    watcher.join(15)
    with lock:  # a thread still blocked would append later: freeze the records now
        run.records = list(run.records)
    return run


def head_of_line(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """A long request, then ``--hol-delay`` s later a short one, on an idle server: their latencies."""
    texts = tuple(" ".join(SENTENCES[i:i + 2]) for i in range(8))
    long = Spec(-1, 0, "greedy", texts, args.hol_long_tokens, False)
    short = Spec(-1, 1, "greedy", (SENTENCES[0],), args.hol_short_tokens, False)
    results: dict[str, Result] = {}

    def go(name: str, spec: Spec) -> None:
        with httpx.Client(base_url=url, timeout=args.timeout + 30) as http:
            results[name] = send(http, spec)

    first = threading.Thread(target=go, args=("long", long))
    first.start()
    time.sleep(args.hol_delay)
    go("short", short)
    first.join(args.timeout + 60)
    out: dict[str, Any] = {"long_inputs": len(texts), "long_new_tokens": args.hol_long_tokens,
                           "short_new_tokens": args.hol_short_tokens, "delay_s": args.hol_delay}
    for name in ("long", "short"):
        res = results.get(name)
        out[f"{name}_s"] = res.latency if res and res.ok else None
        out[f"{name}_error"] = "" if res and res.ok else (res.error if res else "lost")
    if out["long_s"] and out["short_s"]:
        out["ratio"] = out["short_s"] / out["long_s"]
        # The short one was sent hol_delay after the long one: if the long one was already done, nothing blocked.
        out["long_done_before_short"] = out["long_s"] <= args.hol_delay
    else:
        out["ratio"] = None
    return out


def alone_checks(url: str, run: Round, kind: str, count: int, timeout: float) -> dict[str, Any]:
    """``count`` answered requests of ``kind`` from the load, spread over it, sent again one at a time."""
    answered = sorted((r.start, i, s, r) for i, (s, r) in enumerate(run.ok) if s.kind == kind)
    if count <= 0 or not answered:
        return {"checked": 0, "mismatches": 0, "errors": 0, "samples": []}
    picks = [answered[round(j * (len(answered) - 1) / max(1, count - 1))] for j in range(min(count, len(answered)))]
    picks = list({id(p[2]): p for p in picks}.values())  # a short list can pick one twice
    out: dict[str, Any] = {"checked": 0, "mismatches": 0, "errors": 0, "samples": []}
    with httpx.Client(base_url=url, timeout=timeout + 30) as http:
        for _, _, spec, under_load in picks:
            alone = send(http, Spec(spec.client, spec.seq, spec.kind, spec.texts, spec.new_tokens, False, spec.seed))
            out["checked"] += 1
            if not alone.ok:
                out["errors"] += 1
                out["samples"].append(f"client {spec.client} #{spec.seq}: alone: {alone.error}")
            elif alone.token_ids != under_load.token_ids:
                out["mismatches"] += 1
                first = next(i for i, (a, b) in enumerate(zip(alone.token_ids, under_load.token_ids)) if a != b)
                out["samples"].append(f"client {spec.client} #{spec.seq} input {first}: alone "
                                      f"{alone.token_ids[first][:8]}... vs under load "
                                      f"{under_load.token_ids[first][:8]}...")
    return out


# ------------------------------------------------------------------------------------------------ figures
def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (nan for no values)."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def summarize(rounds: list[Round]) -> dict[str, Any]:
    """One mode's figures, its rounds pooled (throughput: all answers over all load seconds)."""
    ok = [pair for r in rounds for pair in r.ok]
    seconds = sum(r.seconds for r in rounds)
    latencies = [res.latency for _, res in ok]
    ttfts = [res.ttft for spec, res in ok if spec.stream and res.ttft is not None]
    ttft_all = [res.ttft if spec.stream and res.ttft is not None else res.latency for spec, res in ok]
    rows = [v for r in rounds for v in r.rows_running]
    by_kind = {}
    for kind, _ in KINDS:
        lat = [res.latency for spec, res in ok if spec.kind == kind]
        by_kind[kind] = {"requests": len(lat), "latency_p50_s": percentile(lat, 0.5),
                         "latency_p99_s": percentile(lat, 0.99)}
    return {
        "requests": len(ok), "sent": sum(r.sent for r in rounds), "errors": sum(r.errors for r in rounds),
        "lost": sum(r.lost for r in rounds), "unsent": sum(r.unsent for r in rounds), "seconds": seconds,
        "requests_per_s": len(ok) / seconds if seconds else float("nan"),
        "new_tokens": sum(res.tokens for _, res in ok),
        "new_tokens_per_s": sum(res.tokens for _, res in ok) / seconds if seconds else float("nan"),
        "latency_p50_s": percentile(latencies, 0.5), "latency_p99_s": percentile(latencies, 0.99),
        "streamed": len(ttfts), "ttft_p50_s": percentile(ttfts, 0.5), "ttft_p99_s": percentile(ttfts, 0.99),
        "ttft_all_p50_s": percentile(ttft_all, 0.5), "ttft_all_p99_s": percentile(ttft_all, 0.99),
        "rows_running_mean": sum(rows) / len(rows) if rows else None,
        "rows_running_max": max(rows) if rows else None,
        "by_kind": by_kind,
        "per_round": [{"round": r.round, "requests": len(r.ok), "errors": r.errors, "lost": r.lost,
                       "seconds": r.seconds, "requests_per_s": len(r.ok) / r.seconds if r.seconds else None,
                       "new_tokens_per_s": sum(res.tokens for _, res in r.ok) / r.seconds if r.seconds else None}
                      for r in rounds],
        "error_samples": [res.error for r in rounds for _, res in r.records if not res.ok][:5],
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b != b or a != a or b == 0:
        return None
    return a / b


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None or value != value else format(value, spec)


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: a random model of --preset's shape)")
    parser.add_argument("--preset", help="shape of the random model (default t5-small; tiny with --quick)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int,
                        help=f"requests each client sends per round (default {FULL['requests_per_client']})")
    parser.add_argument("--rounds", type=int, help=f"A/B rounds, a fresh server each (default {FULL['rounds']})")
    parser.add_argument("--seconds", type=float, default=900.0,
                        help="cap on one mode's load per round: no new request after it (default 900)")
    parser.add_argument("--seed", type=int, default=0, help="the load's RNG seed (and the model's)")
    parser.add_argument("--short", type=parse_range, default=(4, 16), help="short max_new_tokens (4-16)")
    parser.add_argument("--long", type=parse_range, default=(64, 128), help="long max_new_tokens (64-128)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in each server (default 1: the clients need a core too)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="passed to both servers (32)")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0, help="passed to both servers (10)")
    parser.add_argument("--server-args", default="", help="more `t5kit serve` arguments for both, one string")
    parser.add_argument("--timeout", type=float, default=300.0, help="server request timeout, s (300)")
    parser.add_argument("--hol-long-tokens", type=int, default=200)
    parser.add_argument("--hol-short-tokens", type=int, default=4)
    parser.add_argument("--hol-delay", type=float, default=0.5, help="s between the long and the short request")
    parser.add_argument("--checks", type=int,
                        help=f"greedy and seeded sampled requests re-sent alone per round (default {FULL['checks']})")
    parser.add_argument("--backend-cache", choices=["fresh", "user"], default="fresh",
                        help="linear kernel choices: made at the first server start of this run (fresh), or "
                             "the user's cache")
    parser.add_argument("--json", type=Path, help="write every figure of the run to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run of the harness: tiny model, 1 request per client, 1 round")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="t5kit-serve-bench-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if args.backend_cache == "fresh":
        env[linear.CACHE_ENV] = str(work / "cache")
    try:
        model = Path(args.model) if args.model else save_model(args.preset, work / args.preset, args.seed)
        print(machine_line(args.threads))
        print(f"torch {torch.__version__}; server threads {args.threads}; python {sys.version.split()[0]}")
        print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
        template = shlex.join(["python", *server_command("MODE", model, 0, args)[1:]]).replace(" --port 0", " --port P")
        print(f"servers: {template}"
              f" (MODE: {' then '.join(MODES)}, {args.rounds} round(s), a fresh server each)")
        print(f"model: {args.model or 'random ' + args.preset} (seed {args.seed}); kernel choices: "
              f"{env.get(linear.CACHE_ENV, linear.cache_path().parent)} ({args.backend_cache})")
        print(f"load: {args.clients} clients, closed loop, {args.requests_per_client} requests each per round "
              f"(cap {args.seconds:g} s); greedy/beam {BEAMS}/sampled {'/'.join(f'{w:.0%}' for _, w in KINDS)}; "
              f"short {args.short[0]}-{args.short[1]} / long {args.long[0]}-{args.long[1]} forced new tokens "
              f"({1 - LONG_FRACTION:.0%}/{LONG_FRACTION:.0%}); {MULTI_FRACTION:.0%} with 2-4 inputs; "
              f"{STREAM_FRACTION:.0%} of greedy+sampled streamed; seed {args.seed}")
        if args.quick:
            print("NOTE: --quick: a smoke run of the harness, not figures")
        print(flush=True)

        rounds: dict[str, list[Round]] = {m: [] for m in MODES}
        hol: dict[str, list[dict]] = {m: [] for m in MODES}
        checks: dict[str, dict[str, list[dict]]] = {m: {"greedy": [], "sampled": []} for m in MODES}
        commands: dict[str, str] = {}
        for round_ in range(args.rounds):
            load = draw_load(args.seed, round_, args.clients, args.requests_per_client, args.short, args.long)
            for mode in MODES:
                cmd = server_command(mode, model, free_port(), args)
                commands[mode] = shlex.join(cmd)
                t0 = time.perf_counter()
                proc = start_server(cmd, env, work / f"{mode}-{round_}.log")
                url = f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}"
                try:
                    boot = time.perf_counter() - t0
                    with httpx.Client(base_url=url, timeout=args.timeout) as http:  # warm-up, not timed
                        for kind, inputs, stream in WARM_UP:
                            send(http, Spec(-1, 0, kind, (SENTENCES[0],) * inputs, 4, stream,
                                            1 if kind == "sampled" else None))
                    run = run_load(url, mode, round_, load, args)
                    rounds[mode].append(run)
                    hol[mode].append(head_of_line(url, args))
                    for kind in ("greedy", "sampled"):
                        checks[mode][kind].append(alone_checks(url, run, kind, args.checks, args.timeout))
                finally:
                    stop_server(proc)
                h = hol[mode][-1]
                note = " (the long one ended before the short one was sent)" if h.get("long_done_before_short") else ""
                if h["ratio"] is None:
                    note = f" (long: {h['long_error'] or 'ok'}; short: {h['short_error'] or 'ok'})"
                print(f"round {round_ + 1} {mode:<10}: {len(run.ok)}/{run.sent} answered ok in {run.seconds:.1f} s "
                      f"({len(run.ok) / run.seconds:.2f} req/s), {run.errors} errors, {run.lost} lost; "
                      f"head-of-line {fmt(h['short_s'])} s / {fmt(h['long_s'])} s = {fmt(h['ratio'])}"
                      f"{note}; "
                      f"server start {boot:.1f} s", flush=True)

        figures = {m: summarize(rounds[m]) for m in MODES}
        for m in MODES:
            hols = [h["ratio"] for h in hol[m] if h["ratio"] is not None]
            figures[m]["hol_ratio_median"] = percentile(hols, 0.5) if hols else None
            figures[m]["hol"] = hol[m]
            for kind in ("greedy", "sampled"):
                c = checks[m][kind]
                figures[m][f"{kind}_alone"] = {
                    "checked": sum(x["checked"] for x in c), "mismatches": sum(x["mismatches"] for x in c),
                    "errors": sum(x["errors"] for x in c), "samples": [s for x in c for s in x["samples"]][:5]}

        print()
        header = (f"| {'mode':<10} | {'requests':>8} | {'errors':>6} | {'lost':>4} | {'req/s':>6} | "
                  f"{'new tok/s':>9} | {'TTFT p50':>8} | {'TTFT p99':>8} | {'lat p50':>7} | {'lat p99':>7} | "
                  f"{'rows run':>8} | {'HoL':>5} | {'greedy !=':>9} | {'seeded !=':>9} |")
        print(header)
        print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
        for m in MODES:
            f = figures[m]
            g, s = f["greedy_alone"], f["sampled_alone"]
            print(f"| {m:<10} | {f['requests']:>8} | {f['errors']:>6} | {f['lost']:>4} | "
                  f"{fmt(f['requests_per_s']):>6} | {fmt(f['new_tokens_per_s'], '.1f'):>9} | "
                  f"{fmt(f['ttft_p50_s']):>8} | {fmt(f['ttft_p99_s']):>8} | {fmt(f['latency_p50_s']):>7} | "
                  f"{fmt(f['latency_p99_s']):>7} | {fmt(f['rows_running_mean'], '.1f'):>8} | "
                  f"{fmt(f['hol_ratio_median']):>5} | {g['mismatches']:>4}/{g['checked']:<4} | "
                  f"{s['mismatches']:>4}/{s['checked']:<4} |")
        print("times in s; TTFT: streamed requests only (sent -> first token event; "
              + ", ".join(f"{m} {figures[m]['streamed']}" for m in MODES)
              + "); lat: all requests, sent -> whole answer; rows run: t5kit_rows_running sampled 2/s during the"
              " load; HoL: short/long latency (median of rounds); != : answers under load that differ from the "
              "same request sent alone / checked")
        for m in MODES:
            f = figures[m]
            rates = ", ".join(f"{fmt(r['new_tokens_per_s'], '.1f')}" for r in f["per_round"])
            print(f"  {m}: new tok/s per round {rates}; latency p50/p99 by kind: "
                  + ", ".join(f"{k} {fmt(v['latency_p50_s'])}/{fmt(v['latency_p99_s'])} ({v['requests']})"
                              for k, v in f["by_kind"].items())
                  + (f"; unsent (cap) {f['unsent']}" if f["unsent"] else ""))
            for sample in f["error_samples"]:
                print(f"  {m} error: {sample}")
            for kind in ("greedy", "sampled"):
                for sample in f[f"{kind}_alone"]["samples"]:
                    print(f"  {m} {kind} alone vs under load: {sample}")

        st, co = figures["static"], figures["continuous"]
        ratios = {
            "requests_per_s": ratio(co["requests_per_s"], st["requests_per_s"]),
            "new_tokens_per_s": ratio(co["new_tokens_per_s"], st["new_tokens_per_s"]),
            "ttft_p50": ratio(co["ttft_p50_s"], st["ttft_p50_s"]),
            "ttft_p99": ratio(co["ttft_p99_s"], st["ttft_p99_s"]),
            "latency_p50": ratio(co["latency_p50_s"], st["latency_p50_s"]),
            "latency_p99": ratio(co["latency_p99_s"], st["latency_p99_s"]),
        }
        clean = all(figures[m]["errors"] == 0 and figures[m]["lost"] == 0 for m in MODES)
        same = all(figures[m][f"{k}_alone"]["mismatches"] == 0 and figures[m][f"{k}_alone"]["errors"] == 0
                   for m in MODES for k in ("greedy", "sampled"))
        targets = {
            "throughput": ratios["new_tokens_per_s"] is not None and ratios["new_tokens_per_s"] >= THROUGHPUT_TARGET,
            "ttft_p99": ratios["ttft_p99"] is not None and ratios["ttft_p99"] <= TTFT_P99_TARGET,
            "head_of_line": co["hol_ratio_median"] is not None and co["hol_ratio_median"] <= HOL_TARGET,
            "no_errors_none_lost": clean,
            "results_unchanged": same,
        }
        print(f"\ncontinuous / static: requests/s {fmt(ratios['requests_per_s'])}x, new tokens/s "
              f"{fmt(ratios['new_tokens_per_s'])}x; TTFT p50 {fmt(ratios['ttft_p50'])}x, p99 "
              f"{fmt(ratios['ttft_p99'])}x; latency p50 {fmt(ratios['latency_p50'])}x, p99 "
              f"{fmt(ratios['latency_p99'])}x")
        print(f"head-of-line (short/long latency, median of rounds): static {fmt(st['hol_ratio_median'])}, "
              f"continuous {fmt(co['hol_ratio_median'])}")
        print(f"targets: throughput >= {THROUGHPUT_TARGET}x static: {verdict(targets['throughput'])}; "
              f"p99 TTFT <= {TTFT_P99_TARGET}x static: {verdict(targets['ttft_p99'])}; head-of-line <= "
              f"{HOL_TARGET} (continuous): {verdict(targets['head_of_line'])}; 0 errors and 0 lost (both): "
              f"{verdict(clean)}; outputs under load == alone (both): {verdict(same)}")
        print(f"total {time.perf_counter() - started:.0f} s")

        if args.json:
            dump = {
                "command": sys.argv, "quick": args.quick,
                "machine": {**cpu_facts(), "line": machine_line(args.threads), "torch": torch.__version__,
                            "threads": args.threads},
                "servers": commands,
                "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                             if k != "json"},
                "mix": {"kinds": dict(KINDS), "beams": BEAMS, "sampling": SAMPLING, "long_fraction": LONG_FRACTION,
                        "multi_input_fraction": MULTI_FRACTION, "stream_fraction": STREAM_FRACTION,
                        "forced_length": "min_new_tokens = max_new_tokens for every request",
                        "ttft": "streamed requests only: sent -> first token event; ttft_all_*: non-streamed "
                                "requests count their whole latency"},
                "modes": figures, "ratios_continuous_over_static": ratios, "targets_met": targets,
                "requests": {m: [{**asdict(spec), "round": r.round, "ok": res.ok, "error": res.error,
                                  "latency_s": res.latency, "ttft_s": res.ttft, "output_tokens": res.tokens,
                                  "sent_at_s": res.start - r.started}
                                 for r in rounds[m] for spec, res in r.records] for m in MODES},
            }
            args.json.write_text(json.dumps(dump, indent=1, default=str))
            print(f"figures written to {args.json}")
        if args.quick:  # the targets mean nothing on a tiny model: the smoke run checks the harness
            return 0 if clean and same else 1
        return 0 if all(targets.values()) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
