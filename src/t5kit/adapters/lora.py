"""LoRA (Hu et al. 2021): a frozen linear layer plus a trainable low-rank term, ``W x + (alpha / r) B A x``.

:class:`LoRALinear` HOLDS the base ``nn.Linear`` as a child (``.base``) instead of subclassing it, so

- :func:`t5kit.kernels.install` still swaps the base for its inference kernel (it matches ``type(m) is
  nn.Linear``), and ``uninstall`` swaps it back;
- the training kernels see a projection that is not a plain ``nn.Linear``: the fused attention computes the
  low-rank term itself where :meth:`LoRALinear.low_rank_term` offers it (no adapter dropout), every other
  kernel runs the module path, where the adapter's own forward (and gradient) runs
  (``t5kit.kernels.training.common.projections``);
- :func:`merge_lora` hands back the base itself, a plain ``nn.Linear`` again, with the product added.

The adapter matrices are bare Parameters, not ``nn.Linear`` children, so neither the inference kernels
nor int8 quantization ever touch them. Initialisation follows peft: ``A`` kaiming-uniform (a = sqrt(5)),
``B`` zeros, so a fresh adapter leaves the model's output unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t5kit.errors import ConfigError, closest_names

# The projections an adapter can target, by their module name in both t5kit and Hugging Face T5:
# attention (self and cross) q/k/v/o, feed-forward wi (relu models) or wi_0/wi_1 (gated models) and wo.
TARGETS: tuple[str, ...] = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")
KINDS: tuple[str, ...] = ("lora",)


@dataclass(frozen=True)
class LoRAConfig:
    """What to adapt and how: ``r`` the rank, ``alpha`` the scale numerator (the term is scaled by
    ``alpha / r``), ``dropout`` on the adapter's input, ``targets`` the projection names (peft's T5 default
    is ``("q", "v")``). Defaults are peft's."""

    kind: str = "lora"
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] = field(default=("q", "v"))

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"adapter kind {self.kind!r} is not supported: use kind 'lora'")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"LoRA rank r must be a whole number >= 1, got {self.r!r} (typical: 8-32)")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ConfigError(f"LoRA alpha must be a number > 0, got {self.alpha!r} (peft's default: alpha = r)")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets:
            raise ConfigError(f"LoRA targets are empty: name the projections to adapt, e.g. ['q', 'v'] "
                              f"(choose from {', '.join(TARGETS)})")
        for name in targets:
            if name not in TARGETS:
                raise ConfigError(f"unknown LoRA target {name!r}: choose from {', '.join(TARGETS)}."
                                  f"{closest_names(str(name), TARGETS)}")
        if len(set(targets)) != len(targets):
            raise ConfigError(f"LoRA targets {list(targets)} name a projection twice: list each once")
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))

    @property
    def scale(self) -> float:
        return self.alpha / self.r


class AdaptedLinear(nn.Module):
    """A projection that wraps its frozen linear layer as ``.base``: what model code reads of a projection
    (weight, compute dtype, widths) is the base's. Shared by :class:`LoRALinear` and the multi-adapter layer."""

    base: nn.Module

    @property
    def weight(self) -> Tensor:
        """The base weight (for code that reads a projection's dtype or shape)."""
        return self.base.weight

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the base computes in (``t5kit.model.layers.weight_dtype`` reads it without widening a
        compactly stored base: ``t5kit.adapters.frozen``)."""
        compute = getattr(self.base, "compute_dtype", None)
        return compute if isinstance(compute, torch.dtype) else self.base.weight.dtype

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features


class LoRALinear(AdaptedLinear):
    """``base(x) + scale * B(A(dropout(x)))``: a frozen ``nn.Linear`` (``.base``) and its adapter."""

    def __init__(self, base: nn.Linear, config: LoRAConfig, name: str = "default"):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRA wraps an nn.Linear, got {type(base).__name__}")
        self.base = base
        self.config, self.name = config, name
        self.scale = config.scale
        weight = base.weight
        # Adapters of a half-precision base are kept in float32, as peft does by default (autocast_adapter_dtype):
        # bf16 updates of a rank-r product lose most of a small learning rate's step.
        dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        self.lora_A = nn.Parameter(torch.empty(config.r, base.in_features, device=weight.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, config.r, device=weight.device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's (and nn.Linear's) init
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        base.requires_grad_(False)
        self.train(base.training)  # a model put in eval mode before add_lora keeps its adapters' dropout off

    def delta_weight(self) -> Tensor:
        """``scale * B @ A``, [out, in], in the adapter's dtype."""
        return (self.lora_B @ self.lora_A) * self.scale

    def low_rank_term(self) -> tuple[Tensor, Tensor, float] | None:
        """``(A, B, scale)`` for a training kernel that computes this layer inside a fused Function
        (``t5kit.kernels.training.common.projections``), or None when the adapter's own dropout is on: its
        mask is drawn by this forward, which must then run."""
        return (self.lora_A, self.lora_B, self.scale) if isinstance(self.dropout, nn.Identity) else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        low = F.linear(F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A), self.lora_B)
        return out + (low * self.scale).to(out.dtype)

    def merged(self) -> nn.Linear:
        """The base with ``scale * B @ A`` added to its weight (in place); the adapter is then spent."""
        base = self.base
        if not isinstance(base, nn.Linear):  # a compactly stored frozen base (t5kit.adapters.frozen)
            raise ConfigError(f"cannot merge into a base stored as {type(base).__name__}: merge the saved adapter into "
                              f"the float32 base checkpoint (t5kit adapter merge BASE ADAPTER OUT)")
        # The copies' buffer names are those of t5kit.kernels.inference.linear.store_int8 / store_fp16 (a sibling
        # layer, not imported): a merge would change the weight but not the copies the layer computes with.
        if "weight_int8" in base._buffers or "weight_fp16" in base._buffers:
            raise ConfigError("cannot merge a LoRA adapter into a layer that holds fp16 / int8 inference copies: "
                              "merge first, then choose the precision")
        with torch.no_grad():  # in place through autograd's view: bumps the version the kernels' plans check
            base.weight.add_(self.delta_weight().to(base.weight.dtype))
        return base

    def extra_repr(self) -> str:
        return f"name={self.name!r}, r={self.config.r}, alpha={self.config.alpha:g}, scale={self.scale:g}"


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Module name -> :class:`LoRALinear` of every adapted projection of ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def add_lora(model: nn.Module, config: LoRAConfig, name: str = "default", freeze: bool = True) -> nn.Module:
    """Wrap every targeted ``nn.Linear`` of ``model`` in a :class:`LoRALinear`, in place; returns ``model``.

    ``freeze`` (default, as peft does) makes every other parameter untrainable, so an optimiser over
    ``model.parameters()`` with ``requires_grad`` trains only the adapters. A target that matches no layer
    (``wi`` on a gated model ...) and a model that already holds adapters are refused.
    """
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"add_lora takes a LoRAConfig, got {type(config).__name__}")
    if lora_layers(model):
        raise ConfigError("this model already holds LoRA adapters: merge_lora(model) or remove_lora(model) first "
                          "(one adapter per model)")
    chosen = [(n, m) for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and n.rpartition(".")[2] in config.targets]
    found = {n.rpartition(".")[2] for n, _ in chosen}
    missing = [t for t in config.targets if t not in found]
    if missing:
        present = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
                         & set(TARGETS))
        raise ConfigError(f"LoRA target(s) {', '.join(map(repr, missing))} match no layer of this model: its "
                          f"projections are {', '.join(present)} (gated models have wi_0 / wi_1, relu models wi)")
    if freeze:
        model.requires_grad_(False)
    for module_name, linear in chosen:
        _replace(model, module_name, LoRALinear(linear, config, name))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (``W += scale * B @ A``) and put the plain layer back."""
    for module_name, layer in lora_layers(model).items():
        _replace(model, module_name, layer.merged())
    return model


def remove_lora(model: nn.Module) -> nn.Module:
    """Drop every adapter, putting the untouched base layers back (their ``requires_grad`` as add_lora left it)."""
    for module_name, layer in lora_layers(model).items():
        _replace(model, module_name, layer.base)
    return model


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapters' parameters by their t5kit name (``...self_attn.q.lora_A`` ...): what an optimiser trains."""
    return {f"{module_name}.{p}": getattr(layer, p) for module_name, layer in lora_layers(model).items()
            for p in ("lora_A", "lora_B")}


def trainable_parameters(model: nn.Module) -> int:
    """The number of parameter values of ``model`` that require a gradient."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_config(model: nn.Module) -> LoRAConfig:
    """The one config all of ``model``'s adapters share (an error if there are none)."""
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("this model holds no LoRA adapter: add_lora(model, LoRAConfig(...)) or load_adapter first")
    configs = {layer.config for layer in layers.values()}
    if len(configs) > 1:  # pragma: no cover - add_lora applies one config
        raise ConfigError("this model's adapters were made with different configs; t5kit saves one config per adapter")
    return configs.pop()
