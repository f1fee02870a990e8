"""Helpers shared by the benchmarks: same random weights for every engine, timing, memory, machine facts."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


# The instruction-set extensions that decide which CPU kernels are fast here: AVX2 is all an AMD EPYC of
# #17 had; AVX-512 / VNNI / AMX / AVX512_FP16 are what oneDNN, MKL and fbgemm dispatch on for fp32, int8,
# bf16 and fp16 (lscpu's flag names).
from t5kit.kernels.inference.cpu import ISA_FLAGS  # noqa: E402  # the one list of flags that decide a kernel


def _lscpu() -> dict[str, str]:
    """lscpu's fields ("Model name" -> ...), empty where lscpu is missing (then /proc/cpuinfo is read)."""
    try:
        done = subprocess.run(["lscpu"], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"},
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def cpu_facts() -> dict:
    """The CPU's model name, vendor, L3 size (bytes, 0 if unknown), usable cores and which of
    :data:`ISA_FLAGS` it has, from ``lscpu`` (``/proc/cpuinfo`` where lscpu is missing)."""
    fields = _lscpu()
    name, vendor, flags = fields.get("Model name", ""), fields.get("Vendor ID", ""), fields.get("Flags", "").split()
    if not (name and flags):
        try:
            info = Path("/proc/cpuinfo").read_text()
        except OSError:
            info = ""
        for line in info.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not name:
                name = value.strip()
            elif key == "vendor_id" and not vendor:
                vendor = value.strip()
            elif key == "flags" and not flags:
                flags = value.split()
    l3 = 0
    size = re.match(r"([\d.]+)\s*([KMG])i?B?", fields.get("L3 cache", ""))
    if size:
        l3 = int(float(size.group(1)) * 1024 ** " KMG".index(size.group(2)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"model_name": name or platform.processor() or platform.machine(), "vendor": vendor, "l3_bytes": l3,
            "cores": cores, "isa": {flag: flag in flags for flag in ISA_FLAGS}}


def machine_line(threads: int) -> str:
    """One line: CPU model, vendor, cores, L3, ISA (lscpu), torch and its BLAS libraries, threads."""
    cpu = cpu_facts()
    has = [flag for flag, present in cpu["isa"].items() if present]
    lacks = [flag for flag, present in cpu["isa"].items() if not present]
    isa = " ".join(has) or "none of " + " ".join(ISA_FLAGS)
    if has and lacks:
        isa += f" (no {' '.join(lacks)})"
    l3 = f", L3 {cpu['l3_bytes'] / 2**20:.0f} MiB" if cpu["l3_bytes"] else ""
    return (f"machine: {cpu['model_name']} ({cpu['vendor'] or 'vendor unknown'}), {cpu['cores']} cores{l3}; "
            f"ISA: {isa}; torch {torch.__version__} (MKL {torch.backends.mkl.is_available()}, oneDNN "
            f"{torch.backends.mkldnn.is_available()}); {threads} threads")


def time_it(fn: Callable[[], object], warmup: int = 2, repeat: int = 5, min_seconds: float = 0.0) -> float:
    """Median seconds per call over ``repeat`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    start_all = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start_all < min_seconds:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_random_hf_checkpoint(preset: str, seed: int = 0, directory: str | None = None) -> Path:
    """A randomly initialised `transformers` checkpoint with the preset's shapes, saved once for all engines."""
    import transformers

    from t5kit import T5Config

    config = T5Config.from_preset(preset)
    data = config.to_dict()
    for key in ("scale_decoder_outputs", "dense_act_fn", "is_gated_act", "architectures", "model_type"):
        data.pop(key, None)
    torch.manual_seed(seed)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**data)).eval()
    if not config.tie_word_embeddings:
        with torch.no_grad():
            hf.lm_head.weight = torch.nn.Parameter(torch.randn_like(hf.shared.weight))
    directory = Path(directory or tempfile.mkdtemp(prefix=f"t5kit-bench-{preset}-"))
    transformers.utils.logging.disable_progress_bar()  # its "Writing model shards" bar, amid the figures
    hf.save_pretrained(directory)
    return directory


class TurnTaker:
    """A benchmark's child process kept alive to take turns with another engine's: each request is a line on its
    stdin, each answer a JSON object on its stdout (other lines, a library's prints, are skipped); its stderr is
    kept for the message if it stops."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None = None):
        self.name = name
        self.errors = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors,
                                        text=True, env=env)

    def answer(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.errors.seek(0)
        raise RuntimeError(f"{self.name} stopped:\n{self.errors.read()[-2000:]}")

    def ask(self, request: str) -> dict:
        self.process.stdin.write(f"{request}\n")
        self.process.stdin.flush()
        return self.answer()

    def close(self, last_answer: bool = False) -> dict | None:
        """End its input; with ``last_answer`` read the answer it gives at the end (a summary)."""
        self.process.stdin.close()
        summary = self.answer() if last_answer else None
        self.process.wait(timeout=60)
        self.errors.close()
        return summary

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
