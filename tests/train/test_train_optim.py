"""Optimisers against hand computations, and the schedules' values at chosen steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from t5kit.train.optim import Adafactor, AdamWScale, build_optimizer
from t5kit.train.schedule import learning_rate, lr_factor


def _adafactor_reference(p: np.ndarray, grads: list[np.ndarray], lr: float, scale: bool) -> np.ndarray:
    """The paper's Adafactor written out element by element (no momentum, factored, clipped at 1.0)."""
    p = p.astype(np.float64).copy()
    factored = p.ndim == 2
    row = np.zeros(p.shape[0]) if factored else None
    col = np.zeros(p.shape[1]) if factored else None
    v = np.zeros(p.shape)
    for t, g in enumerate(grads, start=1):
        beta2 = 1 - t**-0.8
        sq = g.astype(np.float64) ** 2 + 1e-30
        if factored:
            row = beta2 * row + (1 - beta2) * sq.mean(axis=1)
            col = beta2 * col + (1 - beta2) * sq.mean(axis=0)
            vhat = np.empty(p.shape)
            for i in range(p.shape[0]):
                for j in range(p.shape[1]):
                    vhat[i, j] = row[i] * col[j] / row.mean()
        else:
            v = beta2 * v + (1 - beta2) * sq
            vhat = v
        u = g / np.sqrt(vhat)
        rms_u = math.sqrt((u**2).mean())
        u = u / max(1.0, rms_u / 1.0)
        step = lr * (max(1e-3, math.sqrt((p**2).mean())) if scale else 1.0)
        p = p - step * u
    return p


@pytest.mark.parametrize("shape, scale", [((3, 4), True), ((3, 4), False), ((5,), True)])
def test_adafactor_matches_hand_computation(shape: tuple[int, ...], scale: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(shape, generator=gen, dtype=torch.float64).float()
    grads = [torch.randn(shape, generator=gen) * (0.1 if k else 10.0) for k in range(3)]  # step 1 is clipped
    param = torch.nn.Parameter(p0.clone())
    opt = Adafactor([param], lr=0.01, scale_parameter=scale)
    for g in grads:
        param.grad = g.clone()
        opt.step()
    expected = _adafactor_reference(p0.numpy(), [g.numpy() for g in grads], 0.01, scale)
    # Against float64: three float32 steps round each parameter (|p| ~ 1) three times, half an ulp (6e-8 relative)
    # each, and the update (~1e-2) carries a few ulps of its own; rtol 1e-5 is ~80 ulps relative, atol 1e-7 covers
    # parameters near 0 where the update's rounding (~1e-9) is all there is. Measured: 8e-8 relative at most;
    # a beta2 decay of -0.7 instead of -0.8 is 5e-5 away, update clipping switched off 2e-4 (for the matrices).
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-5, atol=1e-7)
    state = opt.state[param]
    assert ("row" in state) == (len(shape) == 2)  # factored: O(n + m) memory, no full second moment


def test_adafactor_relative_step_without_lr() -> None:
    param = torch.nn.Parameter(torch.zeros(4))
    param.grad = torch.ones(4)
    Adafactor([param], lr=None, scale_parameter=False).step()
    # step 1: update sign(g) (RMS 1, not clipped), rate min(1e-2, 1/sqrt(1)) = 1e-2
    torch.testing.assert_close(param.detach(), torch.full((4,), -1e-2))  # float32 defaults: 0 - 1e-2 is one rounding


def test_adamw_rms_is_adamw_scaled_by_parameter_rms() -> None:
    gen = torch.Generator().manual_seed(1)
    p0 = torch.randn(6, 5, generator=gen) * 0.2
    grad = torch.randn(6, 5, generator=gen)
    a, b = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0.clone())
    a.grad, b.grad = grad.clone(), grad.clone()
    AdamWScale([a], lr=2e-2, eps=1e-12).step()
    rms = float(p0.pow(2).mean().sqrt())
    torch.optim.AdamW([b], lr=2e-2 * rms, eps=1e-12, weight_decay=0.0).step()
    # one float32 step each, the same formula with the rate folded in at another point: a few ulps apart (1e-5 is
    # ~80 ulps relative; an update without the RMS factor is off by 1/rms - 1 ~ 4x)
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-7)


def test_build_optimizer_adamw_uses_a_fast_kernel_and_no_decay_on_norms() -> None:
    from t5kit import T5Model

    model = T5Model.from_preset("tiny", d_model=16, d_ff=32, num_heads=2, d_kv=8, vocab_size=64)
    opt = build_optimizer(model, "adamw", 1e-3, weight_decay=0.1)
    assert opt.defaults.get("fused") or opt.defaults.get("foreach")
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model.encoder.final_norm.weight)] == 0.0 and decays[id(model.shared.weight)] == 0.1
    assert isinstance(build_optimizer(model, "adafactor", 1e-3), Adafactor)


def test_schedules_at_chosen_steps() -> None:
    # float64 arithmetic on closed forms: pytest.approx's relative 1e-6 is far above its rounding (~1e-16)
    # inverse square root, the paper's pre-training rate with lr = 1 and 10^4 warm-up steps
    assert lr_factor("inverse_sqrt", 1, 100, warmup_steps=10_000) == pytest.approx(0.01)
    assert lr_factor("inverse_sqrt", 10_000, 100, warmup_steps=10_000) == pytest.approx(0.01)
    assert lr_factor("inverse_sqrt", 40_000, 100, warmup_steps=10_000) == pytest.approx(0.005)
    assert lr_factor("constant", 7, 100) == 1.0
    assert lr_factor("constant", 5, 100, warmup_steps=10) == pytest.approx(0.5)
    # linear: ramp over 10 steps, then down to 0 at step 110
    assert lr_factor("linear", 5, 110, warmup_steps=10) == pytest.approx(0.5)
    assert lr_factor("linear", 10, 110, warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor("linear", 60, 110, warmup_steps=10) == pytest.approx(0.5)
    assert lr_factor("linear", 110, 110, warmup_steps=10) == pytest.approx(0.0)
    # cosine: half-way through the decay = the midpoint between 1 and final_lr_ratio
    assert lr_factor("cosine", 60, 110, warmup_steps=10) == pytest.approx(0.5)
    assert lr_factor("cosine", 60, 110, warmup_steps=10, final_lr_ratio=0.1) == pytest.approx(0.55)
    assert lr_factor("cosine", 35, 110, warmup_steps=10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor("cosine", 110, 110, warmup_steps=10, final_lr_ratio=0.1) == pytest.approx(0.1)
    assert learning_rate(2e-2, "cosine", 10, 110, 10) == pytest.approx(2e-2)
