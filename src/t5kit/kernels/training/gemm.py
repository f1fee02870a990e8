"""The training kernels' float32 matrix products, on MKL or oneDNN: whichever this CPU runs faster, timed once.

``torch.mm`` sends a float32 product on the CPU to MKL, and MKL runs its AVX2 code on AMD processors. Measured
on an AMD EPYC of family 26 (Zen 5, AVX-512, 2 threads, torch 2.13), the three products a linear layer's training
step makes (``x W^T``, ``g W``, ``g^T x``) at t5-small's shapes (1024 or 256 rows, 512-2048 wide, the 32128-row
head): MKL 185-223 GFLOP/s, oneDNN on the same plain tensors (no prepacked copy, so nothing to keep in step with
the optimiser) 394-504 GFLOP/s, within float32's rounding bound of a float64 product. On an Intel CPU MKL runs its
own AVX-512 / AMX code. So neither is the rule: :func:`backend` times both on one linear layer's three products
the first time a process needs it, checks oneDNN's results against the float64 bound the inference chooser uses,
and keeps the choice in the same per-machine cache (``t5kit.kernels.inference.linear``; keyed by CPU model, ISA
and torch version), so that every run on a machine computes with the same one (a resumed run continues with the
numerics it started with). ``T5KIT_TRAINING_GEMM=mkl|onednn|auto`` forces it.

Only float32 CPU tensors take the oneDNN call; every other dtype (bf16 already runs on oneDNN inside torch.mm) and
device runs the torch call it replaces.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from t5kit.kernels.inference import native
from t5kit.kernels.inference.linear import cached_choice, error_bound, forced_choice, remember_choice

BACKENDS = ("mkl", "onednn")  # mkl: torch's own float32 product on the CPU (the reference path)
GEMM_ENV = "T5KIT_TRAINING_GEMM"
_CHOICE_KEY = "training gemm fp32"
# oneDNN must be this much faster in total to replace torch's call: a tie keeps the reference path.
MARGIN = 0.9
_chosen: str | None = None


def forced_backend() -> str | None:
    """``T5KIT_TRAINING_GEMM``'s backend, or None for ``auto``."""
    return forced_choice(GEMM_ENV, BACKENDS, "a training GEMM backend")


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available()


def _onednn_mm(a: Tensor, b: Tensor) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, b.t(), None, "none", [], "")


def _products(rows: int = 1024, d_model: int = 512, width: int = 1024) -> list[tuple[Tensor, Tensor]]:
    """One linear layer's training products: x W^T, g W, g^T x (a, b of each ``a @ b``)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d_model, generator=generator)
    weight = torch.randn(width, d_model, generator=generator) / d_model**0.5
    grad = torch.randn(rows, width, generator=generator)
    return [(x, weight.t()), (grad, weight), (grad.t(), x)]


def _time(products: list[tuple[Tensor, Tensor]], backend: str, rounds: int = 5) -> float:
    run = torch.mm if backend == "mkl" else _onednn_mm
    for a, b in products:
        run(a, b)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for a, b in products:
            run(a, b)
        best = min(best, time.perf_counter() - start)
    return best


def _onednn_accurate(products: list[tuple[Tensor, Tensor]]) -> bool:
    """Each oneDNN product within float32's rounding bound of the float64 product (the inference chooser's)."""
    for a, b in products:
        exact = a.double() @ b.double()
        if not bool(((_onednn_mm(a, b).double() - exact).abs() <= error_bound("fp32", a, b.t().double())).all()):
            return False
    return True


def choose() -> tuple[str, dict[str, float]]:
    """Time both backends now on one linear layer's training products; (the faster, microseconds of each)."""
    products = _products()
    timings: dict[str, float] = {}
    for _ in range(2):  # turns, so that a slow moment of the host hits both
        for backend in BACKENDS:
            if backend == "onednn" and not _onednn_available():
                continue
            t = _time(products, backend)
            timings[backend] = min(timings.get(backend, t), t)
    chosen = "mkl"
    if "onednn" in timings and timings["onednn"] < MARGIN * timings["mkl"] and _onednn_accurate(products):
        chosen = "onednn"
    return chosen, {name: round(t * 1e6, 1) for name, t in timings.items()}


def backend() -> str:
    """The float32 training product backend on this machine: forced, cached, or timed now (and cached)."""
    global _chosen
    forced = forced_backend()
    if forced is not None:
        return forced if forced == "mkl" or _onednn_available() else "mkl"
    if _chosen is None:
        entry = cached_choice(_CHOICE_KEY)
        if not _valid(entry):
            # One process of a machine times, the others wait and read its choice: the ranks of a torchrun job
            # starting together must not time each other's load and choose differently.
            with _machine_lock():
                entry = cached_choice(_CHOICE_KEY, from_disk=True)
                if not _valid(entry):
                    with torch.no_grad():
                        chosen, timings = choose()
                    entry = {"kernel": chosen, "us": timings}
                    remember_choice(_CHOICE_KEY, entry)
        assert entry is not None
        _chosen = entry["kernel"]
    return _chosen


def _valid(entry: Any) -> bool:
    """A cached entry this code wrote (anything else, say a hand-edited file, is timed again)."""
    return isinstance(entry, dict) and entry.get("kernel") in BACKENDS


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """An exclusive lock on this machine's cache directory (none where it cannot be made: then each process
    times for itself)."""
    try:
        root = native.cache_root()
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / "training-gemm.lock", "a+b")  # noqa: SIM115 - held until the choice is written
    except OSError:
        yield
        return
    with handle:  # closing the file releases the lock
        with contextlib.suppress(OSError):  # a file system without locks (some NFS, Lustre, FUSE mounts)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def describe() -> str:
    """One line for ``t5kit info --backend``: the backend and how it was chosen (timing it now if need be)."""
    chosen = backend()
    forced = forced_backend()
    if forced is not None:
        return f"training products (float32): {chosen} (forced by {GEMM_ENV})"
    entry = cached_choice(_CHOICE_KEY)
    timings = entry.get("us") if isinstance(entry, dict) else None
    timed = ", ".join(f"{name} {us / 1000:.1f} ms" for name, us in timings.items()
                      if isinstance(us, (int, float))) if isinstance(timings, dict) else "not recorded"
    return f"training products (float32): {chosen} (auto; one linear layer's three products: {timed})"


def reset() -> None:
    """Forget the in-memory choice (the disk cache stays): for tests and after changing the environment."""
    global _chosen
    _chosen = None


def _onednn(*tensors: Tensor) -> bool:
    """Whether this product takes oneDNN: float32 2-D CPU tensors with no empty dimension and no broadcast
    (zero) stride, which oneDNN refuses or mishandles, and not recorded by autograd: oneDNN's call has no
    derivative, so a backward run with ``create_graph=True`` (a gradient penalty, a Hessian-vector product) must
    make its products with torch's own differentiable call."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return all(t.dtype == torch.float32 and t.device.type == "cpu" and t.dim() == 2 and min(t.shape) > 0
               and min(t.stride()) > 0 for t in tensors) and backend() == "onednn"


def mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for 2-D ``a`` [m, k] and ``b`` [k, n] (either may be a transposed view)."""
    return _onednn_mm(a, b) if _onednn(a, b) else torch.mm(a, b)


def scaled_mm(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """``alpha * (a @ b)``."""
    if _onednn(a, b):
        out = _onednn_mm(a, b)
        return out if alpha == 1.0 else out.mul_(alpha)
    return torch.addmm(a.new_zeros(()), a, b, beta=0, alpha=alpha)


def add_mm(acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``acc + a @ b``: ``acc`` updated in place on torch's path, a new tensor on oneDNN's; use the result."""
    if _onednn(acc, a, b):
        return torch.ops.mkldnn._linear_pointwise.binary(a, acc, b.t(), None, "add")
    return acc.addmm_(a, b)


def mm_into(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` written into ``out`` (a buffer the caller recycles); returns ``out``."""
    if _onednn(out, a, b):
        return out.copy_(_onednn_mm(a, b))
    return torch.mm(a, b, out=out)
