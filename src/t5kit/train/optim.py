"""Optimisers for T5: AdamW (torch's fused/foreach kernels), Adafactor as in the paper, AdamW with
RMS-scaled updates (the "AdamWScale" of the modern efficient recipe), and plain SGD.

Why plain SGD is offered: its step is the gradient times the learning rate, so a run compared with another
(N ranks against one, packed against unpacked) shows a gradient that is off by a constant factor; AdamW and
Adafactor divide that factor out, and gradient clipping hides it too.

Why our own Adafactor: the paper's optimiser (Shazeer & Stern 2018 as configured by Mesh TensorFlow)
is factored second moments, ``beta2_t = 1 - t^-0.8``, update clipping at RMS 1.0, no momentum, the step
multiplied by the parameter's RMS, and the learning rate from the schedule (the "relative step"
``min(1e-2, 1/sqrt(t))`` only when no rate is given). Every line below maps to one of those choices, so
the optimiser can be checked against a hand computation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from t5kit.errors import ConfigError, closest_names


def _rms(x: Tensor) -> Tensor:
    return x.norm(2) / (x.numel() ** 0.5)


class Adafactor(torch.optim.Optimizer):
    """Adafactor (no momentum) with factored second moments for matrices.

    ``lr=None`` turns on the relative step ``min(1e-2, 1/sqrt(t))``; with a schedule, pass its rate as
    ``lr`` (the loop rewrites ``group["lr"]`` every step). ``scale_parameter`` multiplies the rate by
    ``max(eps2, RMS(param))``. Updates are divided by ``max(1, RMS(update) / clip_threshold)``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | None = None,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        weight_decay: float = 0.0,
        scale_parameter: bool = True,
    ) -> None:
        if lr is not None and lr <= 0:
            raise ConfigError(f"Adafactor lr must be > 0 (or None for the relative step), got {lr}")
        defaults = dict(
            lr=lr,
            eps=eps,
            clip_threshold=clip_threshold,
            decay_rate=decay_rate,
            weight_decay=weight_decay,
            scale_parameter=scale_parameter,
            relative_step=lr is None,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            eps1, eps2 = group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                state = self.state[p]
                factored = grad.dim() >= 2
                if not state:
                    state["step"] = 0
                    if factored:
                        state["row"] = torch.zeros(grad.shape[:-1], dtype=torch.float32, device=grad.device)
                        state["col"] = torch.zeros(
                            grad.shape[:-2] + grad.shape[-1:], dtype=torch.float32, device=grad.device
                        )
                    else:
                        state["v"] = torch.zeros_like(grad)
                state["step"] += 1
                t = state["step"]
                beta2 = 1.0 - t ** group["decay_rate"]
                sq = grad * grad + eps1
                if factored:
                    row, col = state["row"], state["col"]
                    row.mul_(beta2).add_(sq.mean(-1), alpha=1 - beta2)
                    col.mul_(beta2).add_(sq.mean(-2), alpha=1 - beta2)
                    # v_hat = row col^T / sum(row): its inverse square root, without forming v_hat
                    r = (row / row.mean(-1, keepdim=True)).rsqrt().unsqueeze(-1)
                    update = grad * r * col.rsqrt().unsqueeze(-2)
                else:
                    v = state["v"]
                    v.mul_(beta2).add_(sq, alpha=1 - beta2)
                    update = grad * v.rsqrt()
                update.div_((_rms(update) / group["clip_threshold"]).clamp(min=1.0))
                lr = min(1e-2, t**-0.5) if group["relative_step"] else group["lr"]
                param = p.float() if p.dtype != torch.float32 else p
                if group["scale_parameter"]:
                    lr = lr * max(eps2, float(_rms(param)))
                if group["weight_decay"]:
                    param.mul_(1 - group["weight_decay"] * lr)
                param.add_(update, alpha=-lr)
                if param is not p:
                    p.copy_(param)
        return loss


class AdamWScale(torch.optim.Optimizer):
    """AdamW whose step is multiplied by ``max(1e-3, RMS(param))`` (Adafactor's parameter scaling).

    With it, one learning rate (2e-2 in the efficient recipe) suits matrices of every size, as with
    Adafactor, while keeping Adam's momentum. Weight decay is decoupled (``p *= 1 - lr * wd``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 2e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = group["lr"] * (1 - beta2**t) ** 0.5 / (1 - beta1**t)
                step_size *= max(1e-3, float(_rms(p.float())))
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-step_size)
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: matrices (decayed) and vectors such as norm scales (never decayed)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _adamw_kernel(implementation: str, device: torch.device) -> dict[str, bool]:
    """fused (one kernel for all parameters) where torch supports it on this device, else foreach."""
    if implementation == "single":
        return {"foreach": False}
    if implementation == "foreach":
        return {"foreach": True}
    if implementation == "fused" or implementation == "auto":
        try:  # probe: fused AdamW exists for CUDA, and for CPU since torch 2.4
            probe = nn.Parameter(torch.zeros(1, device=device))
            torch.optim.AdamW([probe], fused=True)
            return {"fused": True}
        except (RuntimeError, TypeError, ValueError):
            if implementation == "fused":
                raise ConfigError(
                    f"fused AdamW is not available on {device.type} with torch {torch.__version__}; "
                    "set optim.implementation to auto or foreach"
                ) from None
    return {"foreach": True}


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    scale_parameter: bool = True,
    implementation: str = "auto",
) -> torch.optim.Optimizer:
    """The optimiser named in the config (``adamw``, ``adafactor``, ``adamw_rms``, ``sgd``) over the parameters."""
    if lr <= 0:
        raise ConfigError(f"learning rate must be > 0, got {lr}")
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        device = next(model.parameters()).device
        return torch.optim.AdamW(
            groups, lr=lr, betas=tuple(betas), eps=eps, **_adamw_kernel(implementation, device)
        )
    if name == "adafactor":
        return Adafactor(groups, lr=lr, scale_parameter=scale_parameter)
    if name == "adamw_rms":
        return AdamWScale(groups, lr=lr, betas=tuple(betas), eps=eps)
    if name == "sgd":  # no momentum; each group's weight decay is coupled, which for plain SGD is the same step
        return torch.optim.SGD(groups, lr=lr)
    names = ["adamw", "adafactor", "adamw_rms", "sgd"]
    raise ConfigError(f"unknown optimiser {name!r}.{closest_names(name, names)}")
