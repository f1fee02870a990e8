"""Learning-rate schedules as plain functions of the step (1-based: the step about to be taken).

Why not ``torch.optim.lr_scheduler``: the loop sets ``lr`` from the step number itself, so resuming needs
only the step (no scheduler object whose internal counter could drift from the checkpoint's step), and a
schedule is a pure function that a test can evaluate at any step.

``lr`` in the config multiplies the schedule's shape:
- ``constant``: 1 (a linear ramp over ``warmup_steps`` when > 0);
- ``inverse_sqrt``: ``1 / sqrt(max(step, warmup_steps))``, the paper's pre-training schedule when
  ``lr = 1.0`` and ``warmup_steps = 10000`` (0.01 for the first 10^4 steps, then decaying);
- ``linear``: ramp to 1 over ``warmup_steps``, then straight down to ``final_lr_ratio`` at ``total_steps``;
- ``cosine``: ramp to 1, then half a cosine down to ``final_lr_ratio`` at ``total_steps``.
"""

from __future__ import annotations

import math

from t5kit.errors import ConfigError, closest_names

SCHEDULES = ("constant", "inverse_sqrt", "linear", "cosine")


def lr_factor(
    name: str, step: int, total_steps: int, warmup_steps: int = 0, final_lr_ratio: float = 0.0
) -> float:
    """The schedule's multiplier of the base learning rate at ``step`` (1-based)."""
    step = max(int(step), 1)
    if name == "inverse_sqrt":
        return 1.0 / math.sqrt(max(step, warmup_steps, 1))
    if name not in SCHEDULES:
        raise ConfigError(
            f"unknown schedule {name!r}.{closest_names(name, SCHEDULES)} Known: {', '.join(SCHEDULES)}"
        )
    if warmup_steps and step <= warmup_steps:
        return step / warmup_steps
    if name == "constant":
        return 1.0
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    if name == "linear":
        return 1.0 - (1.0 - final_lr_ratio) * progress
    return final_lr_ratio + (1.0 - final_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate(
    lr: float, name: str, step: int, total_steps: int, warmup_steps: int = 0, final_lr_ratio: float = 0.0
) -> float:
    """``lr * lr_factor(...)``: the rate the loop writes into every parameter group before ``step``."""
    return lr * lr_factor(name, step, total_steps, warmup_steps, final_lr_ratio)
