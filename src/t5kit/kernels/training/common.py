"""When a training Function may run in place of a module's own forward: the checks they all share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from t5kit.kernels.inference.linear import plain_linear
from t5kit.model.layers import linear_dtype as linear_dtype  # the training Functions' autocast rule


def training_pass(module: nn.Module) -> bool:
    """A training step in plain eager mode: the module trains, autograd records, torch.compile is not tracing
    (a compiled model traces the modules' own plain path instead)."""
    return module.training and torch.is_grad_enabled() and not torch.compiler.is_compiling()


def plain_weights(*layers: nn.Module) -> list[nn.Parameter] | None:
    """The weights of ``layers`` when the training Functions may read them directly, else None.

    Only plain ``nn.Linear`` layers (or their inference-backend class over their own weight) and
    ``nn.Embedding`` layers whose weight is a plain Parameter qualify: a wrapped layer (an adapter) must run
    its own forward, a quantized layer has no such weight, FSDP's sharded parameters are not Parameters.
    """
    if not all(type(layer) is nn.Embedding or plain_linear(layer) for layer in layers):
        return None
    weights = [layer.weight for layer in layers]
    return weights if all(type(w) is nn.Parameter for w in weights) else None


def weight_sources(*layers: nn.Module) -> list[Tensor | Callable[[torch.dtype], Tensor]] | None:
    """Each layer's weight for a training Function, else None: a plain layer's Parameter (as
    :func:`plain_weights`), or, for a frozen layer that stores its weight compactly and widens it per call (a
    ``widened(dtype)`` method and nothing to train: ``t5kit.adapters.frozen.FrozenLinear``), that method, which
    the Function calls in forward and again in backward instead of keeping a wide copy between the two."""
    sources: list[Tensor | Callable[[torch.dtype], Tensor]] = []
    for layer in layers:
        plain = plain_weights(layer)
        if plain is not None:
            sources.append(plain[0])
        elif callable(getattr(layer, "widened", None)) and not any(p.requires_grad for p in layer.parameters()) \
                and getattr(layer, "bias", None) is None:
            sources.append(layer.widened)
        else:
            return None
    return sources


@dataclass(frozen=True)
class Projection:
    """A projection as a training Function reads it: its base weight (a Parameter, or a frozen layer's
    ``widened`` method: :func:`weight_sources`) and, for a layer that adds a trainable low-rank term
    ``scale * B A x`` (``t5kit.adapters.lora.LoRALinear``), that term's ``A`` [r, in], ``B`` [out, r], ``scale``."""

    weight: Tensor | Callable[[torch.dtype], Tensor]
    lora_A: Tensor | None = None
    lora_B: Tensor | None = None
    scale: float = 0.0


def projections(*layers: nn.Module) -> list[Projection] | None:
    """Each layer as a :class:`Projection`, else None (the module path runs).

    A layer with a low-rank term qualifies when it says the term may be fused: its ``low_rank_term()`` gives
    ``(A, B, scale)`` (plain Parameters; None while its own dropout is active, which only its forward draws),
    and its ``base`` qualifies for :func:`weight_sources`. Any other wrapped layer runs its own forward.
    """
    found: list[Projection] = []
    for layer in layers:
        term = layer.low_rank_term() if callable(getattr(layer, "low_rank_term", None)) else None
        source = weight_sources(layer if term is None else layer.base)
        if source is None:
            return None
        if term is None:
            found.append(Projection(source[0]))
            continue
        lora_A, lora_B, scale = term
        if type(lora_A) is not nn.Parameter or type(lora_B) is not nn.Parameter:
            return None
        found.append(Projection(source[0], lora_A, lora_B, float(scale)))
    return found


def widen(weight: Tensor | Callable[[torch.dtype], Tensor], dtype: torch.dtype) -> Tensor:
    """A weight source of :func:`weight_sources` as ``dtype``."""
    return weight.to(dtype) if isinstance(weight, Tensor) else weight(dtype)


def autocast_input(x: Tensor) -> Tensor:
    """Under autocast, cast an activation once where several linear layers read it (q/k/v, wi_0/wi_1):
    autocast would otherwise cast it again for each, and sum as many float32 gradients in backward."""
    return x.to(linear_dtype(x.device.type, x.dtype))
