"""A frozen base stored in fewer bytes while an adapter trains: bf16 or int8 weights, float32 arithmetic.

With a LoRA adapter only the adapter trains; the base's linear layers are read, never updated. Holding them in
bf16 (2 bytes a weight) or int8 (1 byte plus one float32 scale per output row: symmetric per-channel, as
t5kit's int8 inference copies) instead of float32 takes 88 MB (bf16) or 132 MB (int8) off a t5-small run.
The arithmetic stays float32 (or autocast's dtype): each call widens its own weight into a temporary that is
freed at once, and the backward widens it again instead of keeping the wide copy until then, so no float32
copy of the base lives through a step. That costs a conversion per layer and pass, not a bf16 matmul (which
CPUs without native bf16, the AMD EPYC among them, emulate slowly).

What changes is the base the adapter learns over: bf16 rounds each weight to 8 significant bits and int8 to
one of 255 levels per row (QLoRA's trade, in int8). An adapter trained over such a base is saved as any other
(peft's layout) and merges into the float32 base, which it was not trained on exactly; the closer the storage,
the smaller that gap (bf16 is the closer).

Which layers: every frozen ``nn.Linear`` of the encoder and decoder stacks (attention q/k/v/o, feed-forward),
the adapted ones' bases included. Embeddings, norms, relative position biases and the output head stay as they
are: the head runs t5kit's fused loss kernel, which reads a plain weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t5kit.adapters.lora import LoRALinear, _replace
from t5kit.errors import ConfigError
from t5kit.model.layers import int8_row_scales, linear_dtype

BASE_STORAGES: tuple[str, ...] = ("fp32", "bf16", "int8")  # fp32: as loaded (nothing converted)
COMPACT = BASE_STORAGES[1:]


def check_base_storage(storage: str, where: str = "adapter.base_storage") -> str:
    """``storage`` if it is one of :data:`BASE_STORAGES`, else a ConfigError naming them (the one check)."""
    if storage not in BASE_STORAGES:
        raise ConfigError(f"{where} must be one of {', '.join(BASE_STORAGES)}, got {storage!r} (bf16 / int8 hold "
                          f"the frozen base in fewer bytes)")
    return storage


class _WidenedLinear(torch.autograd.Function):
    """``x W^T + b`` with ``W`` widened from its stored form in forward and again in backward (not saved wide).
    Only ``x`` gets a gradient: the layer is frozen."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: FrozenLinear) -> Tensor:  # type: ignore[override]
        dtype = linear_dtype(x.device.type, x.dtype)
        ctx.layer, ctx.dtypes = layer, (x.dtype, dtype)
        with torch.autocast(x.device.type, enabled=False):
            bias = None if layer.bias is None else layer.bias.to(dtype)
            return F.linear(x.to(dtype), layer.widened(dtype), bias)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None]:  # type: ignore[override]
        x_dtype, dtype = ctx.dtypes
        if not ctx.needs_input_grad[0]:
            return None, None
        return (grad.to(dtype) @ ctx.layer.widened(dtype)).to(x_dtype), None


class FrozenLinear(nn.Module):
    """A frozen linear layer whose weight is stored in ``storage`` ("bf16" or "int8") and computed wide."""

    def __init__(self, linear: nn.Linear, storage: str):
        super().__init__()
        if storage not in COMPACT:
            raise ConfigError(f"a FrozenLinear stores its weight in {' or '.join(COMPACT)}, got {storage!r}")
        self.in_features, self.out_features, self.storage = linear.in_features, linear.out_features, storage
        weight = linear.weight.detach()
        # The dtype the layer took before (float32, float64 under train.precision fp64): what it computes in and
        # what model code reads (t5kit.model.layers.weight_dtype) without widening the weight to learn it.
        self.compute_dtype = weight.dtype
        with torch.no_grad():
            if storage == "bf16":
                self.register_buffer("weight_bf16", weight.to(torch.bfloat16))
            else:
                scale = int8_row_scales(weight)
                codes = torch.round(weight.float() / scale[:, None]).clamp_(-127, 127).to(torch.int8)
                self.register_buffer("weight_int8", codes)
                self.register_buffer("weight_scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def widened(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weight as ``dtype`` ([out, in]): a new tensor each call."""
        if self.storage == "bf16":
            return self.weight_bf16.to(dtype)
        return (self.weight_int8.to(torch.float32) * self.weight_scale[:, None]).to(dtype)

    @property
    def weight(self) -> Tensor:
        """The weight widened to its compute dtype (for code that reads a projection's values; not stored)."""
        return self.widened(self.compute_dtype)

    def forward(self, x: Tensor) -> Tensor:
        return _WidenedLinear.apply(x, self)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, storage={self.storage}"


STACKS = ("encoder", "decoder")  # the modules whose linear layers a frozen base stores compactly


def store_frozen_base(model: nn.Module, storage: str) -> nn.Module:
    """Store every frozen linear layer of ``model``'s encoder and decoder (adapted ones' bases included) in
    ``storage`` (one of :data:`BASE_STORAGES`; "fp32" changes nothing), in place; returns ``model``.

    Refused for a layer that trains: only a frozen base may be stored so (the adapters' own matrices are not
    linear layers and stay float32)."""
    if check_base_storage(storage) == "fp32":
        return model
    chosen = []
    for stack in STACKS:
        root = getattr(model, stack, None)
        if root is None:
            continue
        for name, module in root.named_modules():
            if isinstance(module, nn.Linear):  # the plain layer or its inference-kernel class
                if any(p.requires_grad for p in module.parameters()):
                    raise ConfigError(f"{stack}.{name} trains: only a frozen base can be stored in {storage} "
                                      f"(train an adapter, whose base is frozen)")
                chosen.append((f"{stack}.{name}", module))
    for name, linear in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if isinstance(parent, LoRALinear) and child == "base":
            parent.base = FrozenLinear(linear, storage)
        else:
            _replace(model, name, FrozenLinear(linear, storage))
    # A checkpoint's tensors are views of the mapped safetensors file (``T5Model.from_pretrained`` assigns them),
    # and the mapping lives while any of them does: the float32 pages read for the conversion above would stay
    # resident through the run (measured: 570 instead of 330 MiB for t5-small in bf16). Each remaining tensor
    # gets memory of its own (the Parameter objects stay the same), so the mapping is released.
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    return model


__all__ = ["BASE_STORAGES", "FrozenLinear", "check_base_storage", "store_frozen_base"]
