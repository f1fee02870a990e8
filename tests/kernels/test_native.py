"""t5kit's native kernels (t5kit.kernels.inference.native: gemv.c, attention.c): built once per source and
compiler, refused with the reason where they cannot be built, and exact about layout (3-D and strided inputs,
tails of rows and columns). Their accuracy against float64 is checked with every other kernel in
test_linear_backend.py (gemv) and in test_attention_kernel.py."""

from __future__ import annotations

import shutil

import pytest
import torch

from t5kit.kernels.inference import native
from t5kit.kernels.inference.cpu import cpu_flags
from t5kit.kernels.inference.linear import store_int8

CAN_BUILD = all(flag in cpu_flags() for flag in native.NEEDED_FLAGS) and native._compiler() is not None


def test_the_kernels_are_available_wherever_a_compiler_and_avx2_are():
    reason = native.unavailable()
    if CAN_BUILD:
        assert reason is None
        assert native.library() is not None
    else:  # the reason names what is missing
        assert reason and ("CPU lacks" in reason or "compiler" in reason)


@pytest.mark.skipif(not CAN_BUILD, reason="needs AVX2/FMA/F16C and a C compiler (the other kernels serve then)")
def test_a_build_is_reused_and_a_bad_compiler_is_reported(tmp_path, monkeypatch):
    first = native.build(tmp_path / "k")
    stamp = first.stat().st_mtime_ns
    assert native.build(tmp_path / "k") == first and first.stat().st_mtime_ns == stamp  # not compiled again
    assert [p.name for p in (tmp_path / "k").iterdir()] == [first.name]  # no partial files left
    monkeypatch.setenv("CC", shutil.which("false"))  # a "compiler" that fails: a clear error, nothing left
    monkeypatch.setattr(native, "_compiler_version", lambda compiler: "a different compiler")
    with pytest.raises(RuntimeError, match="failed to build t5kit's kernels"):
        native.build(tmp_path / "k2")
    assert list((tmp_path / "k2").iterdir()) == []


@pytest.mark.skipif(not CAN_BUILD, reason="needs AVX2/FMA/F16C and a C compiler (the other kernels serve then)")
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 7, 16])  # 7: one 6-row micro-tile and a remainder
def test_layouts_tails_and_formats_against_float64(rows):
    lib = native.library()
    torch.manual_seed(rows)
    n, k = 37, 83  # neither a multiple of the 4-row tile nor of 8 or 16 lanes: every tail runs
    weight = torch.randn(n, k)
    base = torch.randn(rows, 2 * k)[:, ::2]  # strided: the kernel must read a contiguous copy
    assert not base.is_contiguous()
    layer = torch.nn.Linear(k, n, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    store_int8(layer)
    cases = {
        "f32": (native.gemm(lib, base, weight), weight.double()),
        "f16": (native.gemm(lib, base, weight.half()), weight.half().double()),
        "i8": (native.gemm_i8(lib, base, native.pack_int8(layer.weight_int8)), layer.weight_int8.dequantize().double()),
        # the blocked kernel: 37 columns are two full blocks of 16 and a partial one
        "packed f32": (native.gemm_packed(lib, base, native.pack_blocks(weight)), weight.double()),
        "packed f16": (native.gemm_packed(lib, base, native.pack_blocks(weight.half())), weight.half().double()),
    }
    for name, (y, w64) in cases.items():
        exact = base.double() @ w64.T
        # float32 accumulation of k terms: |error| <= k u sum |x||w| (plus the int8 scale's rounding)
        bound = (k + 2) * 2.0**-24 * (base.double().abs() @ w64.abs().T)
        assert y.shape == (rows, n) and y.dtype == torch.float32
        assert ((y.double() - exact).abs() <= bound).all(), name
    y3 = native.gemm(lib, base.contiguous().reshape(1, rows, k), weight)
    assert y3.shape == (1, rows, n) and torch.equal(y3[0], cases["f32"][0])
