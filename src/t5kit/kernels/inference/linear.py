"""The linear layers' GEMM backend: per weight shape and row count, the fastest kernel this CPU has.

PyTorch sends every float32 ``nn.Linear`` to MKL's sgemm. That is fast on Intel and slow on AMD at the
shapes of decoding (issue #17, measured on a 2-core AMD EPYC: 512 x 2048 at 16 rows 1067 us with MKL against
583 us with oneDNN and a prepacked weight; the 512 x 32128 head 28.4 ms against 9.7 ms), and even on an
Intel Xeon with AMX the best kernel changes with the row count (2 threads, this module's own timings: the
head at 1 row 1.4 ms with MKL, 1.5 ms with oneDNN; at 4 rows 2.8 ms against 1.5 ms). So nothing is assumed:

- :class:`BackendLinear` replaces ``nn.Linear`` in inference (``t5kit.kernels.install(model, "inference")``).
  Under ``torch.no_grad`` / ``inference_mode`` it sends each call to the kernel chosen for its weight shape,
  its weight format and the call's row bucket (:data:`BUCKETS`); with autograd recording it is the plain
  ``nn.Linear``.
- The choice is made by timing the candidates (:data:`CANDIDATES`) once, on the layer's own weight, the first
  time a shape and bucket is met, and kept in a small per-machine cache keyed by the CPU model and the torch
  version (``$T5KIT_CACHE_DIR/linear-backends.json``, default ``~/.cache/t5kit``), timed at the thread count
  of that first use.
  A candidate is used only if its output on the timing input lies within the rounding-error bound of its
  weight format against a float64 reference (:func:`error_bound`); one that does not is reported and skipped.
  A non-default kernel that holds its own packed copy of the weight must beat the format's default (MKL for
  fp32) by :data:`MARGIN`, for the memory the copy takes; one that reads the layer's weight as it is stored
  (``holds_copy=False``) wins on time alone.
- ``T5KIT_LINEAR_BACKEND=<kernel>`` forces one kernel wherever it applies (``mkl``: PyTorch's plain path for
  fp32, what an unconfigured PyTorch does); ``auto`` (the default) chooses by timing.

The candidates are PyTorch's own kernels (MKL, oneDNN, fbgemm) and, where the CPU has AVX2 and a C compiler is
present, t5kit's native kernels (:mod:`t5kit.kernels.inference.native`: ``gemv.c`` for few rows, ``gemm_packed.c``
on packed weights for more).

Weight formats: ``fp32`` and ``bf16`` use the layer's own ``weight``; the inference copies of
:mod:`t5kit.kernels.inference.precision` add ``fp16`` (fp16 storage, fp32 compute: half the bytes a batch-1
step reads) and ``int8`` (per-channel symmetric int8 weights, activations quantized per call) as buffers, and
drop the fp32 weight where no chosen kernel needs it (the tied output head keeps it: the embedding is it).
"""

from __future__ import annotations

import copy
import json
import math
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t5kit.errors import T5kitError
from t5kit.io import write_json
from t5kit.kernels.inference import native
from t5kit.kernels.inference.cpu import cpu_line, cpu_model, isa
from t5kit.model.layers import int8_row_scales

BUCKETS = (1, 4, 16, 64, 256)  # a call of r rows runs the kernel of the smallest bucket >= r (above 256: 256)
BACKEND_ENV = "T5KIT_LINEAR_BACKEND"
CACHE_ENV = native.CACHE_ENV
CACHE_FILE = "linear-backends.json"
# A non-default kernel must be this much faster than the format's default to be chosen: each one holds another
# copy of the weight (t5-small fp32: 1213 MiB peak with oneDNN taken at 5-7% gains, 607 with MKL alone), and
# timings of one kernel moved by up to ~30% between runs on the shared 2-core VMs (512x512, 16 rows: 85-117 us).
MARGIN = 0.10
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "bf16": 2.0**-8, "fp16": 2.0**-11}
CANDIDATES_VERSION = 6  # bumped when CANDIDATES gains a kernel or the choosing rule changes (cache key: _machine_key)


class BackendError(T5kitError, ValueError):
    """An unknown kernel name in ``T5KIT_LINEAR_BACKEND``."""


class BackendWarning(UserWarning):
    """A kernel failed its accuracy check, or the backend cache could not be read or written."""


# ------------------------------------------------------------------------------------------------ the kernels


def _dense(x: Tensor, weight: Tensor) -> Tensor:
    return F.linear(x, weight)


def _same(weight: Tensor) -> Tensor:
    return weight.detach()


def _onednn_pack(weight: Tensor) -> Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def _onednn(x: Tensor, packed: Tensor) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def _mkl_packed_pack(weight: Tensor) -> tuple[Tensor, Tensor]:
    # MKL's packed sgemm (cblas_sgemm_pack) for one-row calls; the plain weight rides along because
    # torch's _mkl_linear runs the unpacked GEMM for any other row count
    weight = weight.detach()
    return torch.ops.mkl._mkl_reorder_linear_weight(weight, 1), weight


def _mkl_packed(x: Tensor, packed: tuple[Tensor, Tensor]) -> Tensor:
    return torch.ops.mkl._mkl_linear(x, packed[0], packed[1], None, 1)


def _mkl_packed_available() -> bool:
    try:
        return torch.backends.mkl.is_available() and torch.ops.mkl._mkl_linear is not None
    except (AttributeError, RuntimeError):  # a build without MKL has no such operator
        return False


def _fp16_pack(weight: Tensor) -> Any:
    return torch.ops.quantized.linear_prepack_fp16(weight.float(), None)


def _fp16(x: Tensor, packed: Any) -> Tensor:
    return torch.ops.quantized.linear_dynamic_fp16(x, packed)


def _int8_packer(engine: str) -> Callable[[Tensor], Any]:
    def pack(qweight: Tensor) -> Any:
        before = torch.backends.quantized.engine
        torch.backends.quantized.engine = engine  # the packed object keeps its engine's implementation
        try:
            return torch.ops.quantized.linear_prepack(qweight, None)
        finally:
            torch.backends.quantized.engine = before
    return pack


def _fbgemm_int8(x: Tensor, packed: Any) -> Tensor:
    # reduce_range: 7-bit activations, so AVX2's saturating u8 x s8 pair sums cannot overflow (fbgemm's rule)
    return torch.ops.quantized.linear_dynamic(x, packed, True)


def _onednn_int8(x: Tensor, packed: Any) -> Tensor:
    return torch.ops.quantized.linear_dynamic(x, packed, False)


def _native_available() -> bool:
    return native.library() is not None


def _native(prepare: Callable[[Tensor], Any], call: Callable[..., Tensor]) -> tuple[Callable, Callable]:
    """(pack, run) of a native kernel: the pack holds the library beside the weight ``prepare`` made for it."""
    return (lambda weight: (native.library(), prepare(weight)),
            lambda x, packed: call(packed[0], x, packed[1]))


def _contiguous(weight: Tensor) -> Tensor:
    return weight.detach().contiguous()


def _onednn_bf16_available() -> bool:
    # oneDNN's bf16 linear refuses CPUs without AVX512-BW/VL/DQ or AVX-NE-CONVERT (AVX2-only EPYCs)
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _onednn_int8_available() -> bool:
    # Without VNNI, u8 x s8 pair sums saturate at int16 unless activations use 7 bits, which oneDNN's dynamic
    # linear does not (torch's own x86 qconfig sets reduce_range = not VNNI for the same reason); random test
    # inputs rarely saturate, a model's outlier activations do.
    return "onednn" in torch.backends.quantized.supported_engines and bool(
        {"avx512_vnni", "avx_vnni", "amx_int8"} & set(isa()))


def _engine(name: str) -> Callable[[], bool]:
    return lambda: name in torch.backends.quantized.supported_engines


@dataclass(frozen=True)
class Candidate:
    """One kernel: the weight format it reads, how it packs that weight once, and how it runs a call."""

    name: str
    storage: str  # fp32, bf16, fp16 or int8
    pack: Callable[[Tensor], Any]
    run: Callable[[Tensor, Any], Tensor]
    available: Callable[[], bool]
    about: str
    buckets: tuple[int, ...] | None = None  # the row buckets it may serve (None: all)
    holds_copy: bool = True  # False: it reads the stored weight itself (no margin to beat, see choose())

    def serves(self, rows: int) -> bool:
        """Whether this kernel is a candidate for calls of row bucket ``rows``."""
        return self.buckets is None or rows in self.buckets


# The first candidate of each format is its default (what PyTorch does unconfigured).
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("mkl", "fp32", _same, _dense, lambda: True, "PyTorch's F.linear: MKL sgemm on x86", holds_copy=False),
    Candidate("onednn", "fp32", _onednn_pack, _onednn, torch.backends.mkldnn.is_available,
              "oneDNN with a prepacked weight"),
    # oneDNN's inner product on the layer's own row-major weight: no packed copy to hold, and on a 2-core AMD EPYC
    # (AVX2) at one row the fastest fp32 kernel there, weights streaming from DRAM: t5-small's 48 decoder
    # weights 8.5 ms against 9.2 (prepacked) and 10.9 (MKL); the head 3.5 against 4.1 and 7.9 ms.
    Candidate("onednn-plain", "fp32", _same, _onednn, torch.backends.mkldnn.is_available,
              "oneDNN on the unpacked weight (no copy)", holds_copy=False),
    # 2-core AMD EPYC (AVX2), 2 threads: the 32128 x 512 head at one row 3.0 ms against oneDNN's 4.1 and MKL's
    # 6.1 (21.7 GB/s from DRAM, near the 23 GB/s read bound); at 4 and 16 rows 2.5x and 1.7x oneDNN's time.
    Candidate("mkl-packed", "fp32", _mkl_packed_pack, _mkl_packed, _mkl_packed_available,
              "MKL's packed sgemm, the weight packed for one-row calls", buckets=(1,)),
    # t5kit's own AVX2 kernels for few rows (gemv.c): on a 2-core AMD EPYC (Zen 3), t5-small's 49 decoder
    # weights and head at one row 12.1-13.7 ms against oneDNN's 18.6 and MKL's 25.3 (fp32, no copy of the
    # weight), 5.9 ms against fbgemm's 8.4 (fp16), 3.2-3.4 ms (int8 weights, float32 activations)
    Candidate("avx2-gemv", "fp32", *_native(_contiguous, native.gemm), _native_available,
              "t5kit's AVX2 kernel for 1-16 rows (gemv.c)", buckets=(1, 4, 16), holds_copy=False),
    # t5kit's register-blocked kernel on a weight packed in blocks of 16 columns (gemm_packed.c): t5-small's
    # weights at 16 rows 16.3 ms a pass against oneDNN's 26.2 and avx2-gemv's 22.0 (76 against 47 GFLOP/s,
    # 2-core AMD EPYC); it holds a packed copy of the weight, so the 10% margin applies
    Candidate("avx2-packed", "fp32", *_native(native.pack_blocks, native.gemm_packed), _native_available,
              "t5kit's AVX2 kernel on a weight packed in 16-column blocks (gemm_packed.c)",
              buckets=(4, 16, 64, 256)),
    Candidate("aten-bf16", "bf16", _same, _dense, lambda: True, "PyTorch's bf16 F.linear", holds_copy=False),
    Candidate("onednn-bf16", "bf16", _onednn_pack, _onednn, _onednn_bf16_available,
              "oneDNN with a prepacked bf16 weight"),
    Candidate("fbgemm-fp16", "fp16", _fp16_pack, _fp16, _engine("fbgemm"),
              "fbgemm: fp16 weights, fp32 activations and accumulation"),
    Candidate("avx2-gemv-fp16", "fp16", *_native(_contiguous, native.gemm), _native_available,
              "t5kit's AVX2 kernel: fp16 weights widened in registers, fp32 activations", buckets=(1, 4, 16),
              holds_copy=False),
    # 4 / 16 rows: 6.6 / 12.9 ms a pass over t5-small's weights against fbgemm's 9.5 / 15.8 (2-core AMD EPYC)
    Candidate("avx2-packed-fp16", "fp16", *_native(native.pack_blocks, native.gemm_packed), _native_available,
              "t5kit's AVX2 kernel on fp16 weights packed in 16-column blocks", buckets=(4, 16, 64, 256)),
    Candidate("fbgemm-int8", "int8", _int8_packer("fbgemm"), _fbgemm_int8, _engine("fbgemm"),
              "fbgemm: int8 weights, activations quantized per call (7-bit)"),
    Candidate("onednn-int8", "int8", _int8_packer("onednn"), _onednn_int8, _onednn_int8_available,
              "oneDNN: int8 weights, activations quantized per call"),
    Candidate("avx2-gemv-int8", "int8", *_native(native.pack_int8, native.gemm_i8), _native_available,
              "t5kit's AVX2 kernel: int8 weights widened in registers, fp32 activations", buckets=(1, 4, 16)),
)
_BY_NAME = {c.name: c for c in CANDIDATES}


def candidates(storages: Iterable[str], rows: int | None = None) -> list[Candidate]:
    """The available kernels that read one of ``storages`` (and serve row bucket ``rows``), defaults first."""
    storages = tuple(storages)
    found = [c for c in CANDIDATES
             if c.storage in storages and (rows is None or c.serves(rows)) and c.available()]
    return sorted(found, key=lambda c: (storages.index(c.storage), CANDIDATES.index(c)))


def forced_choice(env: str, allowed: Iterable[str], what: str) -> str | None:
    """The value of environment variable ``env`` if one of ``allowed``, None for ``auto`` (or unset), else a
    BackendError naming the choices (``what``: what a value names, for the message)."""
    allowed = tuple(allowed)
    value = os.environ.get(env, "auto").strip() or "auto"
    if value == "auto":
        return None
    if value not in allowed:
        raise BackendError(f"{env}={value!r} is not {what}: use auto or one of {', '.join(allowed)}")
    return value


def forced_kernel() -> str | None:
    """``T5KIT_LINEAR_BACKEND``'s kernel, or None for ``auto``."""
    return forced_choice(BACKEND_ENV, _BY_NAME, "a kernel")


def bucket(rows: int) -> int:
    """The row bucket a call of ``rows`` rows belongs to."""
    for b in BUCKETS:
        if rows <= b:
            return b
    return BUCKETS[-1]


_BUCKET_OF = [bucket(r) for r in range(BUCKETS[-1] + 1)]  # rows -> bucket, a list lookup on the hot path


# ------------------------------------------------------------------------------------------ accuracy check


def error_bound(storage: str, x: Tensor, weight: Tensor) -> Tensor:
    """Elementwise worst-case error of ``x @ weight.T`` computed in ``storage``'s kernels, against the float64
    product of the same stored weight (``weight``: float64, exactly what the kernel reads).

    fp32 accumulation over K terms in any order: ``gamma_K * sum |x||w|`` with ``gamma_K = K u / (1 - K u)``,
    ``u = 2^-24`` (Higham, Accuracy and Stability, 3.1). bf16 adds rounding the input and the output to
    bf16 (``u = 2^-8``). int8 adds the per-call activation quantization: each input moves by at most half a
    step of ``(max(x, 0) - min(x, 0)) / 127`` (7-bit: fbgemm's reduce_range; 8-bit steps are smaller).
    """
    x64 = x.double()
    k = x64.shape[-1]
    u = UNIT_ROUNDOFF["fp32"]
    gamma = (k + 2) * u / (1 - (k + 2) * u)  # two extra roundings: the scale multiply and the output
    magnitude = x64.abs() @ weight.abs().T
    bound = gamma * magnitude
    if storage == "bf16":
        bound = bound + 2 * UNIT_ROUNDOFF["bf16"] * magnitude  # input and output rounded to bf16
    if storage == "int8":
        half_step = (x64.clamp(min=0).amax() - x64.clamp(max=0).amin()) / 127 / 2
        bound = bound + half_step * weight.abs().sum(1) + gamma * half_step * weight.abs().sum(1)
    return bound


def stored_weight64(module: nn.Linear, storage: str) -> Tensor:
    """The weight ``storage``'s kernels read, in float64."""
    if storage == "int8":
        return module.weight_int8.dequantize().double()
    if storage == "fp16":
        return module.weight_fp16.double()
    return module.weight.detach().double()


def _input_for(storage: str, rows: int, features: int) -> Tensor:
    g = torch.Generator().manual_seed(rows * 7919 + features)
    x = torch.randn(rows, features, generator=g)
    return x.bfloat16() if storage == "bf16" else x


# ------------------------------------------------------------------------------------------ choices + cache


_LOCK = threading.Lock()
_CHOICES: dict[str, dict[str, Any]] | None = None  # key -> {"kernel": name, "us": {name: microseconds}}
_GENERATION = 0  # counts reset()s: what is built on the choices (a native decoder step's plan) is rebuilt after one


def cache_path() -> Path:
    """Where the per-machine choices are kept."""
    return native.cache_root() / CACHE_FILE


def _machine_key() -> str:
    # the ISA too: VMs of different hosts share names such as "Intel(R) Xeon(R) Processor"
    # CANDIDATES_VERSION too: choices made before a kernel was added are timed again, with it
    return f"{cpu_model()} [{' '.join(isa())}] | torch {torch.__version__} | candidates {CANDIDATES_VERSION}"


def _read_cache() -> dict[str, Any]:
    path = cache_path()
    try:
        data = json.loads(path.read_text())
        machines = data["machines"]
        if not isinstance(machines, dict):
            raise TypeError("machines is not an object")
        return machines
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError) as err:
        warnings.warn(f"ignoring the linear-backend cache {path} ({err}); it will be rewritten", BackendWarning,
                      stacklevel=3)
        return {}


def _choices() -> dict[str, dict[str, Any]]:
    global _CHOICES
    if _CHOICES is None:
        _CHOICES = dict(_read_cache().get(_machine_key(), {}))
    return _CHOICES


def _save(key: str, entry: dict[str, Any]) -> None:
    _choices()[key] = entry
    with _LOCK:
        machines = _read_cache()  # another process may have added its own choices meanwhile
        machines.setdefault(_machine_key(), {})[key] = entry
        try:
            write_json(cache_path(), {"version": 1, "machines": machines})
        except OSError as err:
            warnings.warn(f"cannot write the linear-backend cache {cache_path()} ({err}); choices are kept in "
                          f"memory only (set {CACHE_ENV} to a writable directory)", BackendWarning, stacklevel=3)


def cached_choice(key: str, from_disk: bool = False) -> dict[str, Any] | None:
    """This machine's cached entry under ``key`` (another chooser's, such as the training products' backend);
    ``from_disk`` reads the file again (another process may have written it since this one first read it)."""
    if from_disk:
        entry = _read_cache().get(_machine_key(), {}).get(key)
        if entry is not None:
            _choices()[key] = entry
        return entry
    return _choices().get(key)


def remember_choice(key: str, entry: dict[str, Any]) -> None:
    """Keep ``entry`` under ``key`` for this machine, in memory and in the disk cache."""
    _save(key, entry)


def forget_machine() -> None:
    """Drop this machine's cached choices from the disk cache (other machines' stay), so they are timed again."""
    reset()
    with _LOCK:
        machines = _read_cache()
        if machines.pop(_machine_key(), None) is not None:
            try:
                write_json(cache_path(), {"version": 1, "machines": machines})
            except OSError as err:
                warnings.warn(f"cannot rewrite the linear-backend cache {cache_path()} ({err})", BackendWarning,
                              stacklevel=2)


def reset() -> None:
    """Forget every in-memory choice and plan (the disk cache stays): for tests and after changing the env."""
    global _CHOICES, _GENERATION
    _CHOICES = None
    _GENERATION += 1
    for module in list(_STATEFUL):
        forget_plans(module)


def _time_all(runs: dict[str, tuple[Callable, Any]], x: Tensor, rounds: int = 5) -> dict[str, float]:
    """Best microseconds per call of each kernel; the candidates take turns, so a slow moment hits all."""
    per_call = {}
    for name, (run, packed) in runs.items():
        run(x, packed)
        start = time.perf_counter()
        run(x, packed)
        per_call[name] = max(time.perf_counter() - start, 1e-7)
    calls = {name: max(1, min(200, int(1e-3 / t))) for name, t in per_call.items()}  # ~1 ms per turn
    best = dict.fromkeys(runs, math.inf)
    for _ in range(rounds):
        for name, (run, packed) in runs.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                run(x, packed)
            best[name] = min(best[name], (time.perf_counter() - start) / calls[name])
    return {name: round(t * 1e6, 2) for name, t in best.items()}


def _choice_key(storages: tuple[str, ...], shape: tuple[int, int], rows: int) -> str:
    # Not per thread count: a decoding call runs on fewer threads while a neighbour is busy (t5kit.threads),
    # and timing the kernels again at that moment would measure the contention, not the kernels.
    return f"{'+'.join(storages)} {shape[0]}x{shape[1]} rows {rows}"


def choose(module: BackendLinear, rows: int) -> str:
    """The kernel for ``module``'s weight shape and format at row bucket ``rows``: forced, cached, or timed now."""
    storages = module.storages()
    options = candidates(storages, rows)
    forced = forced_kernel()
    if forced is not None:
        return forced if forced in {c.name for c in options} else options[0].name
    key = _choice_key(storages, (module.out_features, module.in_features), rows)
    entry = _choices().get(key)
    if entry is not None and entry.get("kernel") in {c.name for c in options}:
        return entry["kernel"]
    with torch.inference_mode():
        runs, accurate = {}, {}
        for c in options:
            x = _input_for(c.storage, rows, module.in_features)
            try:
                packed = c.pack(module.stored_weight(c.storage))
                y = c.run(x, packed).double()
            except RuntimeError as err:  # a kernel this CPU or build refuses: not a candidate here
                warnings.warn(f"linear kernel {c.name} does not run on this machine ({str(err).splitlines()[0]}); "
                              "not used", BackendWarning, stacklevel=2)
                accurate[c.name] = False
                continue
            weight64 = stored_weight64(module, c.storage)  # the head's: 130 MB, built once per candidate
            within = bool(((y - x.double() @ weight64.T).abs() <= error_bound(c.storage, x, weight64)).all())
            accurate[c.name] = within
            if within:
                runs[c.name] = (c.run, packed)
            else:
                warnings.warn(f"linear kernel {c.name} is outside its rounding-error bound for a "
                              f"{module.out_features}x{module.in_features} weight on this machine; not used",
                              BackendWarning, stacklevel=2)
        if not runs:  # not even the default: run it anyway (it is what PyTorch does), uncached, and say so
            warnings.warn(f"no linear kernel for {'+'.join(storages)} weights passed its accuracy check on this "
                          f"machine; using {options[0].name}", BackendWarning, stacklevel=2)
            return options[0].name
        timings = {}
        for storage in storages:  # each format is timed on its own input dtype
            group = {n: r for n, r in runs.items() if _BY_NAME[n].storage == storage}
            if group:
                timings.update(_time_all(group, _input_for(storage, rows, module.in_features)))
    default = next(c.name for c in options if c.name in timings)
    kernel = min(timings, key=timings.get)
    # A kernel that keeps a copy of the weight must pay for its memory with MARGIN; one that reads the stored
    # weight wins on time alone. (At one row the timing is cache-hot while a decoding step streams its weights
    # from DRAM, where gemv.c's lead is larger: a tie there, settled by noise, cost the AMD EPYC's fp32 greedy b1
    # the 72 one-row 512 x 512 products in one benchmark run, 52.4 us MKL against 50.4 avx2-gemv.)
    if kernel != default and _BY_NAME[kernel].holds_copy and timings[kernel] > (1 - MARGIN) * timings[default]:
        kernel = default
    module._remember_pack(kernel, runs[kernel][1])  # the others' packs are freed here
    _save(key, {"kernel": kernel, "us": timings, "rejected": sorted(n for n, ok in accurate.items() if not ok)})
    return kernel


def choices_generation() -> int:
    """How many times :func:`reset` has run: a plan built on the choices is stale once this has changed."""
    return _GENERATION


def timed_us(module: BackendLinear, rows: int) -> float | None:
    """Microseconds per call of the kernel chosen for ``module`` at ``rows``' bucket, as it was timed (choosing
    it now if needed); None where nothing was timed (a forced kernel, a plain layer)."""
    storages = module.storages()
    if not storages:
        return None
    rows = bucket(rows)
    kernel = choose(module, rows)
    entry = _choices().get(_choice_key(storages, (module.out_features, module.in_features), rows))
    return None if entry is None or forced_kernel() is not None else entry.get("us", {}).get(kernel)


_GEMV_OF = {"fp32": "avx2-gemv", "fp16": "avx2-gemv-fp16", "int8": "avx2-gemv-int8"}


def native_kernel(module: nn.Module, rows: int) -> tuple[str, Any, bool] | None:
    """The native kernel that computes ``module`` at ``rows``' bucket inside a native decoder step, with its
    pack and whether it stands in for another: the kernel chosen for it where that is one the step calls
    (``native.PRODUCT_KERNELS``; False); else the gemv kernel of its weight format (True), which reads the stored
    weight (no copy), where it was timed at all: whether the step then pays is timed as a whole
    (:mod:`t5kit.kernels.inference.decoder`). None for a plain or adapter layer, a forced kernel the step does
    not call, or a format without native kernels."""
    if not isinstance(module, BackendLinear) or not _native_available():
        return None
    storages = module.storages()
    if not storages or storages[0] not in _GEMV_OF:
        return None
    rows = bucket(rows)
    plan = module._plan(rows)
    if plan.run is None:
        return None
    if plan.kernel in native.PRODUCT_KERNELS:
        return plan.kernel, plan.packed, False
    gemv = _GEMV_OF[storages[0]]
    entry = _choices().get(_choice_key(storages, (module.out_features, module.in_features), rows), {})
    if forced_kernel() is not None or gemv not in entry.get("us", {}):
        return None
    return gemv, _BY_NAME[gemv].pack(module.stored_weight(storages[0])), True


# ------------------------------------------------------------------------------------------------ the module

_STATEFUL: weakref.WeakSet = weakref.WeakSet()  # layers holding plans, so that reset() reaches them
_STATE_KEYS = ("_t5kit_plans", "_t5kit_packs")  # in the layer's __dict__; never deep-copied (__deepcopy__)


@dataclass
class _Plan:
    kernel: str
    run: Callable[[Tensor, Any], Tensor] | None  # None: the plain nn.Linear forward
    packed: Any
    version: tuple[int, int]


class BackendLinear(nn.Linear):
    """``nn.Linear`` whose no-grad calls run the kernel chosen for this CPU (module docstring)."""

    reads_own_weight = True  # without fp16 / int8 copies it computes from its own weight (plain_linear)

    def storages(self) -> tuple[str, ...]:
        """The weight formats this layer holds, the one it computes in first (empty: plain layer only)."""
        formats = self.__dict__.get("_t5kit_storages")
        if formats is not None:
            return formats
        if self.bias is not None or self.weight.device.type != "cpu":  # the kernels take no bias; CPU only
            return ()
        if self.weight.dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
            return ()  # the user asked PyTorch for reduced-precision fp32 matmuls: its own path gives them
        return {torch.float32: ("fp32",), torch.bfloat16: ("bf16",)}.get(self.weight.dtype, ())

    def stored_weight(self, storage: str) -> Tensor:
        if storage == "int8":
            return self.weight_int8
        if storage == "fp16":
            return self.weight_fp16
        return self.weight

    def _version(self) -> tuple[int, int]:
        weight = self.weight
        return (weight.data_ptr(), weight._version)

    def _remember_pack(self, name: str, packed: Any) -> None:
        self.__dict__.setdefault("_t5kit_packs", {})[name] = (self._version(), packed)
        _STATEFUL.add(self)

    def _plan(self, key: int) -> _Plan:  # key: the row bucket
        version = self._version()
        plans = {k: p for k, p in self.__dict__.get("_t5kit_plans", {}).items() if p.version == version}
        if not self.storages():
            plan = _Plan("plain", None, None, version)
        else:
            kernel = choose(self, key)
            packs = self.__dict__.get("_t5kit_packs", {})
            held = packs.get(kernel)
            if held is None or held[0] != version:
                candidate = _BY_NAME[kernel]
                with torch.inference_mode():
                    held = (version, candidate.pack(self.stored_weight(candidate.storage)))
            plan = _Plan(kernel, _BY_NAME[kernel].run, held[1], version)
            in_use = {p.kernel for p in plans.values()} | {kernel}  # a pack no plan uses is freed
            self.__dict__["_t5kit_packs"] = {n: h for n, h in packs.items() if n in in_use and h[0] == version} | {
                kernel: held}
        plans[key] = plan
        self.__dict__["_t5kit_plans"] = plans
        _STATEFUL.add(self)
        return plan

    def forward(self, x: Tensor) -> Tensor:
        # Lean on purpose: ~49 calls per t5-small decoding step, each 10-100 us of matrix work.
        weight = self.weight
        if (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)
                and "_t5kit_storages" not in self.__dict__) or torch.is_autocast_enabled("cpu"):
            return F.linear(x, weight, self.bias)  # autograd (the kernels have none) or autocast: the plain layer
        plans = self.__dict__.get("_t5kit_plans")
        rows = x.numel() // self.in_features if self.in_features else 0
        key = _BUCKET_OF[rows] if rows < len(_BUCKET_OF) else BUCKETS[-1]
        plan = plans.get(key) if plans is not None else None
        if plan is None or plan.version != (weight.data_ptr(), weight._version):
            plan = self._plan(key)
        if plan.run is None:
            return F.linear(x, weight, self.bias)
        return plan.run(x, plan.packed)

    def __getstate__(self) -> dict:  # pickling: oneDNN's packed tensors cannot be pickled; rebuilt on first call
        return {k: v for k, v in self.__dict__.items() if k not in _STATE_KEYS}

    def __deepcopy__(self, memo: dict) -> BackendLinear:
        return copy_without(self, _STATE_KEYS, memo)  # packed weights are rebuilt on the copy's first call


def copy_without(module: nn.Module, keys: Iterable[str], memo: dict) -> nn.Module:
    """A deep copy of ``module`` without the ``keys`` of its ``__dict__`` (what a kernel builds from the
    weights, addresses included: rebuilt on the copy's first use)."""
    keys = set(keys)
    clone = module.__class__.__new__(module.__class__)
    memo[id(module)] = clone
    for name, value in module.__dict__.items():
        if name not in keys:
            clone.__dict__[name] = copy.deepcopy(value, memo)
    return clone


def forget_plans(module: nn.Module) -> None:
    """Drop a layer's plans and packed weights (``t5kit.kernels.uninstall`` calls it)."""
    for name in _STATE_KEYS:
        module.__dict__.pop(name, None)


def plain_linear(layer: nn.Module) -> bool:
    """``layer`` is an ``nn.Linear`` computing from its own float weight (plain, or :class:`BackendLinear`
    without fp16 / int8 copies): what the training kernels may read directly."""
    # A kernel class (this one, the training one, or the two combined by t5kit.kernels.install) says so with
    # ``reads_own_weight``; any other subclass of nn.Linear (an adapter, a user's layer) runs its own forward.
    return type(layer) is nn.Linear or (getattr(type(layer), "reads_own_weight", False)
                                        and "_t5kit_storages" not in layer.__dict__)


# ------------------------------------------------------------------------------------------ weight formats


def store_fp16(module: nn.Linear) -> None:
    """Give ``module`` an fp16 copy of its weight (a non-persistent buffer: the checkpoint layout is unchanged)."""
    module.register_buffer("weight_fp16", module.weight.detach().half(), persistent=False)


def store_int8(module: nn.Linear) -> None:
    """Per-output-channel symmetric int8 weights: ``scale = max |w_row| / 127`` (a zero row gets scale 1)."""
    weight = module.weight.detach().float()
    scale = int8_row_scales(weight).double()
    zero = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch's notice that quantized tensors will move to torchao; 2.13 has them
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
    module.register_buffer("weight_int8", quantized, persistent=False)


def set_storages(module: nn.Linear, storages: tuple[str, ...], keep_plain: bool) -> None:
    """Make ``module`` compute from ``storages`` (adding the fp16 / int8 copies); without ``keep_plain`` the
    float weight is dropped (an inference copy only: the layer can then no longer train)."""
    for storage in storages:
        if storage == "fp16":
            store_fp16(module)
        elif storage == "int8":
            store_int8(module)
    module.__dict__["_t5kit_storages"] = tuple(storages)
    if not keep_plain:
        module.weight = nn.Parameter(torch.empty(0, dtype=torch.float32), requires_grad=False)


# ------------------------------------------------------------------------------------------------ reports


@dataclass(frozen=True)
class LinearChoice:
    """One weight shape and row bucket: the kernel chosen and what each candidate measured (us per call)."""

    shape: tuple[int, int]  # out_features, in_features
    storage: str
    modules: int
    rows: int
    kernel: str
    timings_us: dict[str, float]


def inference_linears(model: nn.Module) -> list[nn.Module]:
    """``model``'s modules, plus the linear layers a module runs beside its children (a fused q/k/v copy:
    ``inference_linears()`` on that module), in order."""
    found = []
    for module in model.modules():
        found.append(module)
        extra = getattr(module, "inference_linears", None)
        if callable(extra):
            found.extend(extra())
    return found


def report(model: nn.Module, rows: Iterable[int] = BUCKETS) -> list[LinearChoice]:
    """The choice for every linear weight shape of ``model`` at every bucket of ``rows`` (timing the missing)."""
    groups: dict[tuple, list[BackendLinear]] = {}
    for module in inference_linears(model):
        if isinstance(module, BackendLinear) and module.storages():
            groups.setdefault((module.storages(), module.out_features, module.in_features), []).append(module)
    choices = []
    for (storages, out_features, in_features), modules in groups.items():
        for r in rows:
            kernel = choose(modules[0], bucket(r))
            key = _choice_key(storages, (out_features, in_features), bucket(r))
            timings = dict(_choices().get(key, {}).get("us", {})) if forced_kernel() is None else {}
            choices.append(LinearChoice((out_features, in_features), "+".join(storages), len(modules), bucket(r),
                                        kernel, timings))
    return choices


def bucket_spans(items: Iterable[tuple[int, str]]) -> str:
    """``rows 1 a, rows 4-16 b``: (row bucket, what serves it) in bucket order, consecutive buckets merged."""
    spans: list[list] = []  # [first rows, last rows, what]
    for rows, what in items:
        if spans and spans[-1][2] == what:
            spans[-1][1] = rows
        else:
            spans.append([rows, rows, what])
    return ", ".join(f"rows {a}{'' if a == b else f'-{b}'} {what}" for a, b, what in spans)


def summary(model: nn.Module) -> str:
    """A few lines for logs, like CTranslate2's: the CPU, then each weight shape's kernel per row bucket."""
    forced = forced_kernel()
    how = f"forced {forced}" if forced else f"auto (timed once, cached in {cache_path()})"
    lines = [f"{cpu_line()}; linear backend: {how}"]
    why_not = native.unavailable()
    if why_not:
        lines.append(f"  t5kit's own AVX2 kernels are not used: {why_not}")
    by_shape: dict[tuple, list[LinearChoice]] = {}
    for choice in report(model):
        by_shape.setdefault((choice.storage, choice.shape, choice.modules), []).append(choice)
    for (storage, (out_features, in_features), count), items in by_shape.items():
        lines.append(f"  {storage} {out_features}x{in_features} (x{count}): "
                     f"{bucket_spans([(c.rows, c.kernel) for c in items])}")
    steps: dict[str, int] = {}  # modules that report a path of their own (a decoder layer's native step)
    for module in model.modules():
        describe = getattr(module, "step_paths", None)
        if callable(describe):
            text = describe()
            steps[text] = steps.get(text, 0) + 1
    lines += [f"  decoder layer step (x{count}): {text}" for text, count in steps.items()]
    return "\n".join(lines)
