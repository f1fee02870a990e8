"""The training kernels' float32 products (t5kit.kernels.training.gemm) on each backend, against float64.

The bound is the inference chooser's (``linear.error_bound``): float32 accumulation over K terms in any order,
``gamma_K * |a| |b|`` (Higham 3.1). Both backends must meet it for every form a training step uses (plain and
transposed operands, scaled, accumulated, into a recycled buffer); the choice is forced, cached and timed.
"""

from __future__ import annotations

import pytest
import torch

from t5kit.kernels.inference import linear
from t5kit.kernels.inference.linear import BackendError, error_bound
from t5kit.kernels.training import gemm


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("T5KIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(gemm.GEMM_ENV, raising=False)
    linear.reset()
    gemm.reset()
    yield tmp_path
    linear.reset()
    gemm.reset()


def _within_bound(result: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0,
                  acc: torch.Tensor | None = None) -> None:
    exact = alpha * (a.double() @ b.double()) + (0 if acc is None else acc.double())
    bound = abs(alpha) * error_bound("fp32", a, b.t().double())
    if acc is not None:  # one more rounding: the sum with the accumulator
        bound = bound + torch.finfo(torch.float32).eps * exact.abs()
    assert result.dtype == torch.float32
    assert bool(((result.double() - exact).abs() <= bound).all())


@pytest.mark.parametrize("backend", gemm.BACKENDS)
def test_every_product_form_meets_the_float32_bound_on_each_backend(backend, cache_dir, monkeypatch):
    monkeypatch.setenv(gemm.GEMM_ENV, backend)
    assert gemm.backend() == backend or not torch.backends.mkldnn.is_available()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 24, generator=g)
    w = torch.randn(19, 24, generator=g)
    grad = torch.randn(37, 19, generator=g)
    for a, b in [(x, w.t()), (grad, w), (grad.t(), x)]:  # x W^T, g W, g^T x: a linear layer's three products
        _within_bound(gemm.mm(a, b), a, b)
        _within_bound(gemm.scaled_mm(a, b, 1 / 0.9), a, b, alpha=1 / 0.9)
        out = torch.full((a.shape[0], b.shape[1]), float("nan"))
        assert gemm.mm_into(out, a, b) is out
        _within_bound(out, a, b)
        acc = torch.randn(a.shape[0], b.shape[1], generator=g)
        _within_bound(gemm.add_mm(acc.clone(), a, b), a, b, acc=acc)


def test_other_dtypes_and_shapes_take_torch_s_own_call(cache_dir, monkeypatch):
    monkeypatch.setenv(gemm.GEMM_ENV, "onednn")
    a, b = torch.randn(5, 8, dtype=torch.bfloat16), torch.randn(8, 3, dtype=torch.bfloat16)
    assert torch.equal(gemm.mm(a, b), torch.mm(a, b))
    a64, b64 = a.double(), b.double()
    assert torch.equal(gemm.mm(a64, b64), torch.mm(a64, b64))


def test_the_choice_is_timed_once_cached_per_machine_and_forced_by_the_environment(cache_dir, monkeypatch):
    chosen = gemm.backend()
    assert chosen in gemm.BACKENDS
    entry = linear.cached_choice("training gemm fp32")
    assert entry is not None and entry["kernel"] == chosen and set(entry["us"]) <= set(gemm.BACKENDS)
    assert entry["us"]["mkl"] > 0
    assert "training gemm fp32" in (cache_dir / linear.CACHE_FILE).read_text()
    # a new process (here: the in-memory choice forgotten) reads the cached choice instead of timing again
    gemm.reset()
    linear.reset()
    monkeypatch.setattr(gemm, "choose", lambda: pytest.fail("timed again despite the cache"))
    assert gemm.backend() == chosen
    monkeypatch.setenv(gemm.GEMM_ENV, "mkl")
    assert gemm.backend() == "mkl"
    monkeypatch.setenv(gemm.GEMM_ENV, "fastest")
    with pytest.raises(BackendError, match="T5KIT_TRAINING_GEMM='fastest'.*auto, mkl or onednn"):
        gemm.backend()


def test_onednn_is_chosen_only_when_clearly_faster_and_accurate(cache_dir, monkeypatch):
    times = {"mkl": 1.0, "onednn": 0.95}
    monkeypatch.setattr(gemm, "_time", lambda products, backend, rounds=5: times[backend])
    assert gemm.choose()[0] == "mkl"  # within the margin: the reference path stays
    times["onednn"] = 0.5
    assert gemm.choose()[0] == ("onednn" if torch.backends.mkldnn.is_available() else "mkl")
    monkeypatch.setattr(gemm, "_onednn_accurate", lambda products: False)
    assert gemm.choose()[0] == "mkl"
