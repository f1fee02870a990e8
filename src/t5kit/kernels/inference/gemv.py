"""t5kit's own small-row kernels (``gemv.c``): fp32, fp16-weight and int8-weight products for 1-16 rows.

Why (issue #17): at one row a decoding step streams its weights from DRAM, and on a 2-core AMD EPYC (Zen 3,
AVX2) every kernel PyTorch offers streams t5-small's 49 one-row products at 6-12 GB/s; these read them at
11-13 GB/s in fp32 (a ``torch.sum`` over the same tensors: 15-18 GB/s) and half / a quarter of the bytes in
fp16 / int8 (see ``benchmarks/README.md``). They are candidates of :mod:`t5kit.kernels.inference.linear` like
any other kernel: timed against the rest on the layer's own weight and checked against its rounding-error bound,
used only where they win.

The C source is compiled at first use with the system's C compiler (``$CC``, else ``cc`` / ``gcc``) into
``<cache dir>/kernels/gemv-<hash>.so`` (the hash covers the source, the flags and the compiler's version, so an
edit or a new compiler builds anew), written atomically, and loaded with ``ctypes``: a plain C library, no
Python headers, ~5 s to build once per machine. Where there is no compiler or the CPU lacks AVX2 / FMA / F16C,
:func:`unavailable` says why and the other kernels serve. ``gemv.c`` uses OpenMP; the library needs libgomp by
its soname, which the process already has from PyTorch, so its threads are PyTorch's own pool.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from t5kit.kernels.inference.cpu import cpu_flags

SOURCE = Path(__file__).with_name("gemv.c")
FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC")
NEEDED_FLAGS = ("avx2", "fma", "f16c")
ABI = 1  # t5kit_gemv_abi() of the source this module's signatures match
COMPILE_TIMEOUT_S = 300
_PTR, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def build(directory: Path) -> Path:
    """Compile ``gemv.c`` into ``directory`` (unless that exact build is there) and return the library's path;
    :class:`RuntimeError` naming the cause where it cannot be built here."""
    missing = [flag for flag in NEEDED_FLAGS if flag not in cpu_flags()]
    if missing:
        raise RuntimeError(f"this CPU lacks {', '.join(missing)}")
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (install gcc, or set CC)")
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(FLAGS).encode() + _compiler_version(compiler).encode()).hexdigest()
    target = directory / f"gemv-{digest[:16]}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=directory, prefix=".gemv-", suffix=".so")  # other processes may build too
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", partial, str(SOURCE)], capture_output=True, text=True,
                              timeout=COMPILE_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed to build {SOURCE.name}: {done.stderr.strip()[-500:]}")
        os.replace(partial, target)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"{compiler} took over {COMPILE_TIMEOUT_S} s to build {SOURCE.name}") from err
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


class _Library:
    """The loaded kernels, with their C signatures declared once."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        if lib.t5kit_gemv_abi() != ABI:
            raise RuntimeError(f"{path} is not the kernel library this t5kit expects (ABI {ABI})")
        for name in ("t5kit_gemm_f32", "t5kit_gemm_f16", "t5kit_gemm_i8"):
            getattr(lib, name).argtypes = [_PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _INT]
            getattr(lib, name).restype = None
        self.f32, self.f16, self.i8 = lib.t5kit_gemm_f32, lib.t5kit_gemm_f16, lib.t5kit_gemm_i8
        self.path = path


_LOADED: list[_Library | str] = []  # one library per process: the first build's, or why there is none


def library(directory: Path) -> _Library | None:
    """The kernels, built into ``directory`` at this process's first call (None where they cannot be). Later
    calls return that same library whatever their directory: a build is keyed by its content, not its place."""
    if not _LOADED:
        try:
            _LOADED.append(_Library(build(directory)))
        except (OSError, RuntimeError) as err:
            _LOADED.append(str(err))
    found = _LOADED[0]
    return found if isinstance(found, _Library) else None


def unavailable(directory: Path) -> str | None:
    """Why the kernels cannot run here (None: they can)."""
    library(directory)
    return _LOADED[0] if isinstance(_LOADED[0], str) else None


# ------------------------------------------------------------------------------------------------ the calls
# Each takes x (..., k) float32 and a weight prepared by the matching pack function; the caller (the backend)
# guarantees a CPU, float32 input and an unbiased layer.


def _out(x: Tensor, n: int) -> tuple[Tensor, Tensor, int]:
    x2 = x.reshape(-1, x.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    return x2, torch.empty(*x.shape[:-1], n, dtype=torch.float32), x2.shape[0]


def gemm_f32(lib: _Library, x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight.T`` with a contiguous float32 weight."""
    n, k = weight.shape
    x2, y, rows = _out(x, n)
    lib.f32(x2.data_ptr(), weight.data_ptr(), None, y.data_ptr(), rows, n, k, torch.get_num_threads())
    return y


def gemm_f16(lib: _Library, x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight.T`` with a contiguous float16 weight, widened in registers; float32 accumulation."""
    n, k = weight.shape
    x2, y, rows = _out(x, n)
    lib.f16(x2.data_ptr(), weight.data_ptr(), None, y.data_ptr(), rows, n, k, torch.get_num_threads())
    return y


def pack_int8(qweight: Tensor) -> tuple[Tensor, Tensor]:
    """A per-channel quantized weight as (int8 values, float32 scale per row), both contiguous."""
    return qweight.int_repr().contiguous(), qweight.q_per_channel_scales().float().contiguous()


def gemm_i8(lib: _Library, x: Tensor, packed: tuple[Tensor, Tensor]) -> Tensor:
    """``x @ (values * scale[:, None]).T``: int8 weights widened in registers, float32 activations."""
    values, scale = packed
    n, k = values.shape
    x2, y, rows = _out(x, n)
    lib.i8(x2.data_ptr(), values.data_ptr(), scale.data_ptr(), y.data_ptr(), rows, n, k, torch.get_num_threads())
    return y
