"""t5kit's native kernels: ``gemv.c`` (fp32, fp16-weight and int8-weight products for 1-16 rows),
``gemm_packed.c`` (fp32 / fp16 weights packed in 16-column blocks, for 4-256 rows), ``attention.c`` (attention
for a few queries), ``norm.c`` (a decoding step's residual add and RMS norm) and ``decoder_step.c`` (a whole
decoder layer's decoding step from those kernels, :mod:`.decoder`), one C library built here.

Why (issue #17): at one row a decoding step streams its weights from DRAM, and on a 2-core AMD EPYC (Zen 3,
AVX2) every kernel PyTorch offers streams t5-small's 49 one-row products at 6-12 GB/s; these read them at
11-13 GB/s in fp32 (a ``torch.sum`` over the same tensors: 15-18 GB/s) and half / a quarter of the bytes in
fp16 / int8 (see ``benchmarks/README.md``). They are candidates of :mod:`t5kit.kernels.inference.linear` like
any other kernel: timed against the rest on the layer's own weight and checked against its rounding-error bound,
used only where they win.

The C sources (and ``simd.h``, what they share) are compiled at first use with the system's C compiler (``$CC``,
else ``cc`` / ``gcc``) into ``<cache dir>/kernels/t5kit-kernels-<hash>.so`` (the hash covers the sources, the
flags and the compiler's version, so an edit or a new compiler builds anew), written atomically, and loaded with
``ctypes``: a plain C library, no Python headers, ~5 s to build once per machine. Where there is no compiler or
the CPU lacks AVX2 / FMA / F16C, :func:`unavailable` says why and the other kernels serve. The kernels use
OpenMP; the library needs libgomp by its soname, which the process already has from PyTorch, so its threads are
PyTorch's own pool.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from t5kit.kernels.inference.cpu import cpu_flags

CACHE_ENV = "T5KIT_CACHE_DIR"
SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("gemv.c", "gemm_packed.c", "attention.c", "norm.c", "decoder_step.c"))
HEADERS = (Path(__file__).with_name("simd.h"),)  # included by the sources: part of a build's hash
FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC")
NEEDED_FLAGS = ("avx2", "fma", "f16c")
ABI = 4  # t5kit_gemv_abi() of the source this module's signatures match
COMPILE_TIMEOUT_S = 300
_GEMM_ARGS = struct.Struct("8q").pack
_ATTENTION_ARGS = struct.Struct("24q").pack
_NORM_ARGS = struct.Struct("7qd").pack


def cache_root() -> Path:
    """t5kit's per-machine cache directory: ``$T5KIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/t5kit`` or
    ``~/.cache/t5kit`` (the linear backend's choices and the compiled kernels live there)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "t5kit")
    return Path(root)


def kernel_dir() -> Path:
    """Where the compiled kernel library is kept."""
    return cache_root() / "kernels"


def _compiler() -> str | None:
    found = (shutil.which(name) for name in (os.environ.get("CC"), "cc", "gcc") if name)
    return next((path for path in found if path), None)


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def build(directory: Path) -> Path:
    """Compile the kernels (:data:`SOURCES`) into ``directory`` (unless that exact build is there) and return
    the library's path; :class:`RuntimeError` naming the cause where it cannot be built here."""
    missing = [flag for flag in NEEDED_FLAGS if flag not in cpu_flags()]
    if missing:
        raise RuntimeError(f"this CPU lacks {', '.join(missing)}")
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (install gcc, or set CC)")
    source = b"".join(path.read_bytes() for path in (*SOURCES, *HEADERS))
    digest = hashlib.sha256(source + " ".join(FLAGS).encode() + _compiler_version(compiler).encode()).hexdigest()
    target = directory / f"t5kit-kernels-{digest[:16]}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    # another process may be building too: each writes its own file and renames it into place
    fd, partial = tempfile.mkstemp(dir=directory, prefix=".t5kit-kernels-", suffix=".so")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", partial, *map(str, SOURCES), "-lm"], capture_output=True,
                              text=True, timeout=COMPILE_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed to build t5kit's kernels: {done.stderr.strip()[-500:]}")
        os.replace(partial, target)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"{compiler} took over {COMPILE_TIMEOUT_S} s to build t5kit's kernels") from err
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
        # every entry point takes its arguments packed into one int64 array (struct.pack): see gemv.c
        for name in ("t5kit_gemm_f32", "t5kit_gemm_f16", "t5kit_gemm_i8", "t5kit_gemm_packed_f32",
                     "t5kit_gemm_packed_f16"):
            getattr(lib, name).argtypes = [ctypes.c_char_p]
            getattr(lib, name).restype = None
        self.i8 = lib.t5kit_gemm_i8
        self.float = {torch.float32: lib.t5kit_gemm_f32, torch.float16: lib.t5kit_gemm_f16}  # by weight dtype
        self.packed = {torch.float32: lib.t5kit_gemm_packed_f32, torch.float16: lib.t5kit_gemm_packed_f16}
        lib.t5kit_attention.argtypes = [ctypes.c_char_p]
        lib.t5kit_attention.restype = ctypes.c_int
        self.attention = lib.t5kit_attention
        self.max_keys = lib.t5kit_attention_max_keys()
        lib.t5kit_add_rms_norm.argtypes = [ctypes.c_char_p]
        lib.t5kit_add_rms_norm.restype = None
        self.add_rms_norm = lib.t5kit_add_rms_norm
        lib.t5kit_decoder_layer.argtypes = [ctypes.c_char_p]
        lib.t5kit_decoder_layer.restype = ctypes.c_int
        self.decoder_layer = lib.t5kit_decoder_layer
        self.path = path


_LOADED: list[_Library | str] = []  # one library per process: the first build's, or why there is none


def library() -> _Library | None:
    """The kernels, built into :func:`kernel_dir` at this process's first call (None where they cannot be).
    Later calls return that same library even if the directory changed: a build is keyed by its content."""
    if not _LOADED:
        try:
            _LOADED.append(_Library(build(kernel_dir())))
        except (OSError, RuntimeError) as err:
            _LOADED.append(str(err))
    found = _LOADED[0]
    return found if isinstance(found, _Library) else None


def unavailable() -> str | None:
    """Why the kernels cannot run here (None: they can)."""
    library()
    return _LOADED[0] if isinstance(_LOADED[0], str) else None


# ------------------------------------------------------------------------------------------------ the calls
# Each takes x (..., k) float32 and a weight prepared by the matching pack function; the caller (the backend)
# guarantees a CPU, float32 input and an unbiased layer.


def _out(x: Tensor, n: int) -> tuple[Tensor, Tensor, int]:
    x2 = x.reshape(-1, x.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    return x2, torch.empty(*x.shape[:-1], n, dtype=torch.float32), x2.shape[0]


def gemm(lib: _Library, x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight.T`` with a contiguous float32 or float16 weight (widened in registers; float32 accumulation)."""
    n, k = weight.shape
    x2, y, rows = _out(x, n)
    lib.float[weight.dtype](_GEMM_ARGS(x2.data_ptr(), weight.data_ptr(), 0, y.data_ptr(), rows, n, k,
                                       torch.get_num_threads()))
    return y


PACK_BLOCK = 16  # output columns per block of gemm_packed.c's packed layout


def pack_blocks(weight: Tensor) -> tuple[Tensor, int]:
    """``weight`` [n, k] (float32 or float16) in gemm_packed.c's layout [ceil(n / 16), k, 16], zero-padded, with n."""
    n, k = weight.shape
    blocks = -(-n // PACK_BLOCK)
    padded = weight.detach().new_zeros(blocks * PACK_BLOCK, k)
    padded[:n] = weight.detach()
    return padded.view(blocks, PACK_BLOCK, k).transpose(1, 2).contiguous(), n


def gemm_packed(lib: _Library, x: Tensor, packed: tuple[Tensor, int]) -> Tensor:
    """``x @ weight.T`` from :func:`pack_blocks`' layout (float32 accumulation; float16 blocks widened)."""
    blocks, n = packed
    k = blocks.shape[1]
    x2, y, rows = _out(x, n)
    lib.packed[blocks.dtype](_GEMM_ARGS(x2.data_ptr(), blocks.data_ptr(), 0, y.data_ptr(), rows, n, k,
                                        torch.get_num_threads()))
    return y


def pack_int8(qweight: Tensor) -> tuple[Tensor, Tensor]:
    """A per-channel quantized weight as (int8 values, float32 scale per row), both contiguous."""
    return qweight.int_repr().contiguous(), qweight.q_per_channel_scales().float().contiguous()


def gemm_i8(lib: _Library, x: Tensor, packed: tuple[Tensor, Tensor]) -> Tensor:
    """``x @ (values * scale[:, None]).T``: int8 weights widened in registers, float32 activations."""
    values, scale = packed
    n, k = values.shape
    x2, y, rows = _out(x, n)
    lib.i8(_GEMM_ARGS(x2.data_ptr(), values.data_ptr(), scale.data_ptr(), y.data_ptr(), rows, n, k,
                      torch.get_num_threads()))
    return y


def attention(lib: _Library, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """``softmax(q k^T + bias) v`` (no scale, T5's rule) for float32 q [B, H, Q, D], k / v [B, H, L, D] and an
    additive 4-D ``bias`` broadcastable to [B, H, Q, L], returned as [B, Q, H * D]. The caller guarantees float32
    CPU tensors whose last dimension is contiguous and L <= ``lib.max_keys``."""
    batch, heads, queries, d = q.shape
    keys = k.shape[2]
    out = torch.empty(batch, queries, heads * d, dtype=torch.float32)
    if bias is None:
        bias_ptr, bias_strides = 0, (0, 0, 0, 0)
    else:  # a dimension of size 1 is broadcast: stride 0 (what expand() would give, without its call)
        bias_ptr = bias.data_ptr()
        bias_strides = tuple(0 if size == 1 else stride for size, stride in zip(bias.shape, bias.stride()))
    qs, ks, vs = q.stride(), k.stride(), v.stride()
    status = lib.attention(_ATTENTION_ARGS(
        q.data_ptr(), qs[0], qs[1], qs[2], k.data_ptr(), ks[0], ks[1], ks[2], v.data_ptr(), vs[0], vs[1], vs[2],
        bias_ptr, *bias_strides, out.data_ptr(), batch, heads, queries, keys, d, torch.get_num_threads()))
    if status != 0:
        raise ValueError(f"{keys} keys: t5kit's attention kernel takes at most {lib.max_keys}")
    return out


def add_rms_norm(lib: _Library, x: Tensor, h: Tensor | None, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(s, norm(s))`` with ``s = x + h`` (``x`` itself when ``h`` is None) and T5's RMS norm with ``weight``,
    in one call. The caller guarantees contiguous float32 CPU tensors of one shape (..., n) and an [n] weight."""
    n = x.shape[-1]
    rows = x.numel() // n
    y = torch.empty_like(x)
    s = x if h is None else torch.empty_like(x)
    lib.add_rms_norm(_NORM_ARGS(x.data_ptr(), 0 if h is None else h.data_ptr(), weight.data_ptr(),
                                0 if h is None else s.data_ptr(), y.data_ptr(), rows, n, float(eps)))
    return s, y


DECODER_LAYER_ARGS = 88  # decoder_step.c's argument array
_DECODER_LAYER_ARGS = struct.Struct(f"{DECODER_LAYER_ARGS}q").pack
# decoder_step.c's code for each product kernel it calls (gemv.c, gemm_packed.c): the linear kernels that a
# native decoder step can run
PRODUCT_KERNELS = {"avx2-gemv": 0, "avx2-gemv-fp16": 1, "avx2-gemv-int8": 2, "avx2-packed": 3, "avx2-packed-fp16": 4}


def decoder_layer(lib: _Library, args: list[int]) -> None:
    """One decoder layer's decoding step (``decoder_step.c``; :mod:`t5kit.kernels.inference.decoder` fills
    ``args`` and guarantees every condition the kernel relies on)."""
    status = lib.decoder_layer(_DECODER_LAYER_ARGS(*args))
    if status == -2:
        raise MemoryError("t5kit's decoder step could not allocate its working memory")
    if status != 0:
        raise ValueError(f"t5kit's decoder step refused its keys (more than {lib.max_keys})")
