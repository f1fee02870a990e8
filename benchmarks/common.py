"""Helpers shared by the benchmarks: same random weights for every engine, timing, memory, machine facts."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def machine_line(threads: int) -> str:
    return (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, "
            f"{threads} threads")


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
    hf.save_pretrained(directory)
    return directory
