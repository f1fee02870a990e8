"""Several LoRA adapters over one frozen base, chosen per row: one batch decodes rows of different adapters.

A server that holds adapters ``a`` and ``b`` over one base answers a request for ``a`` and one for ``b`` in the
same decoding step: every adapted projection computes the base matmul once for all rows, then adds each row
group's own low-rank term ``(alpha / r) B A x`` (rows of the base alone add nothing). What runs for a row is
the unmerged adapter's arithmetic, so its output is the one the adapter gives alone (in float32, bf16 and fp16w;
under the int8 precision a row's output depends on its batch mates with or without adapters, because the int8
kernels quantize each call's activations with one scale).

The row groups are set from outside before each model call (:meth:`AdapterSet.route`, one adapter index per
input row: the encoder pass sees one row per source, a decoding step one row per cache row) and are shared by
every layer, so routing costs one small computation per call, not per layer. The decoding layer knows nothing
of adapters: the server hands :class:`t5kit.generate.continuous.ContinuousDecoder` the route callback.

Each adapter's matrices are read through :func:`t5kit.adapters.load_adapter` (its checks: peft's names,
shapes, the options t5kit runs) and kept with the scale folded into ``B``, so no call multiplies by it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from t5kit.adapters.lora import AdaptedLinear, _replace, lora_layers, remove_lora
from t5kit.adapters.peft_io import load_adapter
from t5kit.errors import ConfigError, T5kitError

BASE = 0  # the route index of rows that use no adapter


class Routing:
    """The row groups of the next model call, shared by every :class:`MultiLoRALinear` of one model.

    ``single`` is the adapter index when every row uses the same one (the plain, unindexed path); otherwise
    ``groups`` lists (adapter index, row indices) for each adapter present, the base's rows left out.
    """

    def __init__(self) -> None:
        self.rows = 0
        self.single: int | None = BASE
        self.groups: list[tuple[int, Tensor]] = []
        self._key: tuple[int, ...] | None = ()

    def set(self, indices: Sequence[int], device: torch.device | str = "cpu") -> None:
        key = tuple(indices)
        if key == self._key:  # a decoding step of the same rows as the last: nothing to recompute
            return
        distinct = set(key)
        if len(distinct) <= 1:
            single, groups = (distinct.pop() if distinct else BASE), []
        else:
            where = torch.tensor(key, device=device)
            single, groups = None, [(g, (where == g).nonzero().flatten()) for g in sorted(distinct) if g != BASE]
        # The key last: a failure above leaves the previous routing whole, and the next call recomputes.
        self.single, self.groups, self.rows, self._key = single, groups, len(key), key


class MultiLoRALinear(AdaptedLinear):
    """A frozen ``nn.Linear`` (``.base``) plus the low-rank terms of several adapters, applied per row group."""

    def __init__(self, base: nn.Linear, routing: Routing):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.routing = routing
        self.indices: set[int] = set()  # the adapters that target this layer

    def add(self, index: int, a: Tensor, scaled_b: Tensor) -> None:
        """Adapter ``index``'s ``A`` [r, in] and ``scale * B`` [out, r], held as non-persistent buffers (they move
        with the model; nothing trains them; the checkpoint layout stays the base's)."""
        self.register_buffer(f"lora_A_{index}", a, persistent=False)
        self.register_buffer(f"lora_B_{index}", scaled_b, persistent=False)
        self.indices.add(index)

    def pair(self, index: int) -> tuple[Tensor, Tensor] | None:
        """(A, scale * B) of adapter ``index``; None where it does not target this layer."""
        if index not in self.indices:
            return None
        return self._buffers[f"lora_A_{index}"], self._buffers[f"lora_B_{index}"]

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's signature
        # .to(device) moves the adapters with the base; a cast of the model to bf16 / fp16 leaves them float32,
        # as peft keeps adapters over a half-precision base (the low-rank term in float32, added in the base's).
        super()._apply(fn, recurse)
        for name, buffer in list(self._buffers.items()):
            if name.startswith("lora_") and buffer is not None and buffer.dtype in (torch.float16, torch.bfloat16):
                self._buffers[name] = buffer.float()
        return self

    def _delta(self, x: Tensor, index: int) -> Tensor | None:
        """``scale * B A x`` of one adapter as [rows * positions, out], computed in the adapter's dtype (float32
        over a half-precision base, as peft does); None where that adapter does not target this layer."""
        pair = self.pair(index)
        if pair is None:
            return None
        a, b = pair
        return (x.reshape(-1, x.shape[-1]).to(a.dtype) @ a.t()) @ b.t()

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        routing = self.routing
        if routing.single is not None:
            pair = None if routing.single == BASE else self.pair(routing.single)
            if pair is None:
                return out
            a, b = pair
            # A half-precision base (the term in float32, added in the base's dtype) or an output addmm_ could not
            # write through a view of: a matmul and an add.
            if out.dtype != a.dtype or not out.is_contiguous():
                return out.add_(self._delta(x, routing.single).view(out.shape).to(out.dtype))
            # One addmm_ into the base's output instead of a matmul and an add: 31 against 54 us per layer at
            # 16 rows, 10 against 15 us at one (r 8, 512 wide, 2-core AMD EPYC, 2 threads).
            out.view(-1, out.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]) @ a.t(), b.t())
            return out
        if x.shape[0] != routing.rows:
            raise ConfigError(f"adapter routing names {routing.rows} rows but the layer got {x.shape[0]}: route "
                              f"each model call's rows (AdapterSet.route) before it")
        for index, rows in routing.groups:  # each group's low-rank term, as the single path computes it
            delta = self._delta(x.index_select(0, rows), index)
            if delta is not None:
                out.index_add_(0, rows, delta.view(len(rows), *out.shape[1:]).to(out.dtype))
        return out

    def extra_repr(self) -> str:
        return f"adapters={sorted(self.indices)}"


class AdapterSet:
    """Named LoRA adapters attached to one model (:func:`attach_adapters`); ``route`` picks them per row."""

    def __init__(self, model: nn.Module, names: Sequence[str], routing: Routing):
        self.model = model
        self.names = tuple(names)
        self.routing = routing
        self.index = {name: i + 1 for i, name in enumerate(self.names)}

    def index_of(self, name: str | None) -> int:
        """The route index of adapter ``name`` (None: the base model alone); an unknown name is a clear error."""
        if name is None:
            return BASE
        if name not in self.index:
            held = ", ".join(self.names) if self.names else "none"
            raise ConfigError(f"no adapter named {name!r} is loaded (loaded: {held}); leave it out for the base "
                              f"model")
        return self.index[name]

    def route(self, indices: Sequence[int]) -> None:
        """Set the adapter of each input row of the next model call (indices from :meth:`index_of`)."""
        self.routing.set(indices, getattr(self.model, "device", "cpu"))

    def use(self, name: str | None) -> None:
        """Route every row of the next calls to adapter ``name`` (None: the base)."""
        self.routing.set((self.index_of(name),))

    def bound_to(self, model: nn.Module) -> AdapterSet:
        """This set over ``model``, a copy of the model it was attached to (a precision conversion deep-copies
        the model, and with it the layers' shared :class:`Routing`)."""
        routings = {id(m.routing): m.routing for m in multi_lora_layers(model).values()}
        if len(routings) != 1:
            raise ConfigError(f"this model holds {len(routings)} adapter routings, not the one attach_adapters "
                              f"gives: attach the adapters to this model")
        return AdapterSet(model, self.names, routings.popitem()[1])


def attach_adapters(model: nn.Module, adapters: Mapping[str, str | os.PathLike]) -> AdapterSet:
    """Load each adapter directory of ``adapters`` (name -> directory, peft's layout) over ``model``, unmerged,
    in place; returns the :class:`AdapterSet` that routes rows to them. ``model`` must hold no adapter yet."""
    if lora_layers(model) or any(isinstance(m, MultiLoRALinear) for m in model.modules()):
        raise ConfigError("this model already holds adapters: attach every adapter in one attach_adapters call")
    for name in adapters:
        if not isinstance(name, str) or not name or name != name.strip() or "=" in name:
            raise ConfigError(f"adapter name {name!r} is not usable: a non-empty name without '=' or surrounding "
                              f"spaces")
    routing = Routing()
    wrapped: dict[str, MultiLoRALinear] = {}
    for position, (name, directory) in enumerate(adapters.items()):
        index = position + 1
        try:
            load_adapter(model, Path(directory), name=name)
        except T5kitError as err:  # the model is left as it was: each adapter is unwrapped once read
            raise type(err)(f"adapter {name!r} ({directory}): {err}") from None
        for module_name, layer in lora_layers(model).items():
            with torch.no_grad():
                pair = (layer.lora_A.detach().clone(), (layer.lora_B * layer.scale).detach().clone())
            multi = wrapped.get(module_name)
            if multi is None:
                multi = wrapped[module_name] = MultiLoRALinear(layer.base, routing)
            multi.add(index, *pair)
        remove_lora(model)
    for module_name, multi in wrapped.items():
        _replace(model, module_name, multi)
    return AdapterSet(model, list(adapters), routing)


def multi_lora_layers(model: nn.Module) -> dict[str, MultiLoRALinear]:
    """Module name -> :class:`MultiLoRALinear` of every projection with attached adapters."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MultiLoRALinear)}


def parse_adapter_specs(specs: Sequence[str]) -> dict[str, str]:
    """``NAME=DIR`` (or ``DIR``, named by its last path part) command-line values -> name -> directory. A value
    that is an existing directory, or whose part before the first ``=`` holds a path separator
    (``runs/lr=1e-4/best``), is a bare DIR."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if sep and (Path(spec).is_dir() or "/" in name or os.sep in name):
            sep = ""
        if not sep:
            directory = spec
            name = Path(spec.rstrip("/\\")).name
        if not name or not directory:
            raise ConfigError(f"--adapter {spec!r}: give NAME=DIR or DIR (an adapter directory)")
        if name in out:
            raise ConfigError(f"--adapter: two adapters are named {name!r}; name them apart with NAME=DIR")
        out[name] = directory
    return out


__all__ = ["BASE", "AdapterSet", "MultiLoRALinear", "Routing", "attach_adapters", "multi_lora_layers",
           "parse_adapter_specs"]
