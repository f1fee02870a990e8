"""Serving throughput: 32 concurrent clients against ``t5kit serve`` with dynamic batching and without.

Each server runs as its own subprocess on 127.0.0.1 with the same random t5-small-shaped model (or
``--model``). Clients are threads in this process, each sending one request at a time (closed loop) until
the request budget or the time budget is spent; requests still in flight at the deadline are waited for
(bounded by the client timeout), so every request sent is either answered, an error, or counted lost.
Every request asks for exactly ``--new-tokens`` tokens (``min_new_tokens = max_new_tokens``), so tokens/s
compares equal work.

    python benchmarks/serve.py                      # 32 clients, 32 new tokens, 20 s per mode
    python benchmarks/serve.py --model DIR --clients 32 --seconds 30

Target: batched throughput >= 3x unbatched at 32 clients, with zero errors and no request lost.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from t5kit.tokenizer import t5_vocabulary_path

VOCAB = t5_vocabulary_path()  # the T5 vocabulary shipped in the package
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


def save_model(preset: str, directory: Path, seed: int = 0) -> Path:
    import torch

    from t5kit import T5Model

    torch.manual_seed(seed)
    T5Model.from_preset(preset).save_pretrained(str(directory))
    shutil.copy(VOCAB / "spiece.model", directory / "spiece.model")
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, threads: int, extra: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "t5kit",
        "serve",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--log-level",
        "warning",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError("server did not start within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass
class Run:
    mode: str
    sent: int = 0
    ok: int = 0
    errors: int = 0
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    mean_batch: float = 0.0
    error_samples: list[str] = field(default_factory=list)
    buckets: str = ""

    @property
    def lost(self) -> int:
        return self.sent - self.ok - self.errors


def run_clients(
    url: str, mode: str, clients: int, max_requests: int, seconds: float, new_tokens: int, timeout: float
) -> Run:
    run = Run(mode)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    counter = iter(range(max_requests))

    def client(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=timeout) as http:
            while time.monotonic() < deadline:
                with lock:
                    n = next(counter, None)
                    if n is None:
                        return
                    run.sent += 1
                body = {
                    "inputs": SENTENCES[n % len(SENTENCES)],
                    "task": "translate_en_de",
                    "parameters": {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens},
                }
                start = time.perf_counter()
                try:
                    r = http.post("/v1/generate", json=body)
                    ok = r.status_code == 200
                    detail = "" if ok else f"{r.status_code} {r.text[:200]}"
                    tokens = r.json()["usage"]["output_tokens"] if ok else 0
                except (httpx.HTTPError, ValueError, KeyError) as err:
                    ok, detail, tokens = False, f"{type(err).__name__}: {err}", 0
                elapsed = time.perf_counter() - start
                with lock:
                    if ok:
                        run.ok += 1
                        run.tokens += tokens
                        run.latencies.append(elapsed)
                    else:
                        run.errors += 1
                        if len(run.error_samples) < 3:
                            run.error_samples.append(detail)

    def batch_totals() -> tuple[float, float, str]:
        text = httpx.get(url + "/metrics", timeout=10).text
        total = re.search(r"^t5kit_batch_size_sum (\S+)$", text, re.M)
        count = re.search(r"^t5kit_batch_size_count (\S+)$", text, re.M)
        pairs = re.findall(r'^t5kit_batch_size_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)
        buckets = " ".join(f"<={b}:{int(float(n))}" for b, n in pairs)
        return float(total.group(1)), float(count.group(1)), buckets

    rows_before, batches_before, _ = batch_totals()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + timeout + 30)
    run.seconds = time.perf_counter() - start
    rows_after, batches_after, buckets = batch_totals()
    if batches_after > batches_before:  # this run only (not the warm-up)
        run.mean_batch = (rows_after - rows_before) / (batches_after - batches_before)
    run.buckets = buckets
    return run


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="checkpoint directory (default: a random t5-small-shaped model)")
    parser.add_argument("--preset", default="t5-small", help="shape of the random model (default t5-small)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="time budget per mode (default 20)")
    parser.add_argument(
        "--max-requests", type=int, default=2000, help="request budget per mode (default 2000)"
    )
    parser.add_argument(
        "--new-tokens", type=int, default=32, help="exact new tokens per request (default 32)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in the server (default 1: the clients need a core too)",
    )
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=120.0, help="client timeout per request (s)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="t5kit-serve-bench-"))
    try:
        model = Path(args.model) if args.model else save_model(args.preset, work / args.preset)
        print(
            f"model: {args.model or 'random ' + args.preset}; {args.clients} clients, "
            f"{args.new_tokens} new tokens per request, {args.seconds:g} s or {args.max_requests} requests "
            f"per mode; server threads {args.threads}; machine: {os.cpu_count()} cores",
            flush=True,
        )
        modes = [
            (
                "batched",
                [
                    "--max-batch-size",
                    str(args.max_batch_size),
                    "--batch-wait-ms",
                    str(args.batch_wait_ms),
                    "--request-timeout",
                    str(args.timeout),
                ],
            ),
            ("unbatched", ["--no-batching", "--request-timeout", str(args.timeout)]),
        ]
        runs = []
        for mode, extra in modes:
            proc, url = start_server(model, args.threads, extra, work / f"{mode}.log")
            try:
                for _ in range(3):  # warm-up, not timed
                    httpx.post(
                        url + "/v1/generate",
                        timeout=args.timeout,
                        json={"inputs": SENTENCES[0], "parameters": {"max_new_tokens": 4}},
                    )
                runs.append(
                    run_clients(
                        url,
                        mode,
                        args.clients,
                        args.max_requests,
                        args.seconds,
                        args.new_tokens,
                        args.timeout,
                    )
                )
            finally:
                stop_server(proc)
            r = runs[-1]
            print(f"  {mode}: done in {r.seconds:.1f} s; batch sizes (cumulative) {r.buckets}", flush=True)

        header = (
            f"| {'mode':<10} | {'requests':>8} | {'errors':>6} | {'lost':>4} | {'req/s':>7} | "
            f"{'tokens/s':>8} | {'p50 s':>6} | {'p99 s':>6} | {'mean batch':>10} |"
        )
        print()
        print(header)
        print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
        for r in runs:
            print(
                f"| {r.mode:<10} | {r.ok:>8} | {r.errors:>6} | {r.lost:>4} | {r.ok / r.seconds:>7.2f} | "
                f"{r.tokens / r.seconds:>8.1f} | {percentile(r.latencies, 0.5):>6.2f} | "
                f"{percentile(r.latencies, 0.99):>6.2f} | {r.mean_batch:>10.1f} |"
            )
        for r in runs:
            for sample in r.error_samples:
                print(f"  {r.mode} error: {sample}")
        batched, unbatched = runs
        ratio = (batched.tokens / batched.seconds) / max(unbatched.tokens / unbatched.seconds, 1e-9)
        clean = all(r.errors == 0 and r.lost == 0 for r in runs)
        met = ratio >= 3.0 and clean
        print(
            f"\nbatched / unbatched throughput: {ratio:.2f}x (target >= 3x, zero errors, none lost): "
            f"{'MET' if met else 'NOT MET'}; median latency {statistics.median(batched.latencies):.2f} s vs "
            f"{statistics.median(unbatched.latencies):.2f} s"
        )
        return 0 if met else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
