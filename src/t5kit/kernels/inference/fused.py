"""Several linear layers that read the same input, computed by one call of a concatenated inference copy
(self-attention's q, k, v; a gated feed-forward's wi_0, wi_1).

What that saves is the calls, not the bytes: on a 2-core AMD EPYC (AVX2) a oneDNN or fbgemm linear call costs
~30-40 us before any arithmetic (a 64 x 512 weight at one row: int8 42 us, fp16 40 us, oneDNN 41 us, against
7 us for F.linear; 1 thread, cache-hot), and an int8 call quantizes its input each time.

The copy is not a parameter: it is built from the layers' stored weights in the same formats (fp32 / bf16
concatenated; fp16 copies concatenated; int8 per-channel weights concatenated with their scales, which is exact
because each output row keeps its own scale), rebuilt when any of them changes, and its kernel is chosen like
any other linear's (:mod:`t5kit.kernels.inference.linear`). It is used at a row bucket only where its chosen
kernel was timed faster than the separate calls by the backend's margin (:func:`fused_pays`), the rule for a
kernel that holds another copy of a weight. Adapter-wrapped, biased or otherwise non-plain layers are never
fused. The copy lives in its owner's ``__dict__`` (not a child: the state dict and the checkpoint layout do not
change); :func:`inference_linears` lists it for backend reports.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from t5kit.kernels.inference.linear import BUCKETS, MARGIN, BackendLinear, bucket, timed_us

# The weight formats whose layers are fused: fbgemm's fp16 and int8 calls convert or quantize their input each
# time and cost 30-40 us before any arithmetic. Float layers are not: their calls are cheap to start, and fusing
# them was measured slower as often as faster (2-core AMD EPYC, in-process A/B, fused against apart: fp32
# greedy b1 0.94-0.98x, greedy b16 0.91x, beam 4 1.03-1.07x), which the chooser's timings did not predict.
FORMATS = ("fp16", "int8")
PREFIX = "_t5kit_fused_"  # owner.__dict__ slots: (weight versions, fused BackendLinear or None, {bucket: pays})


def _versions(layers: tuple[BackendLinear, ...]) -> tuple:
    return tuple((t.data_ptr(), t._version) for layer in layers
                 for t in (layer.stored_weight(storage) for storage in layer.storages()))


def _concatenated(layers: tuple[BackendLinear, ...], storage: str) -> Tensor:
    weights = [layer.stored_weight(storage).detach() for layer in layers]
    if storage != "int8":
        return torch.cat(weights)
    return torch._make_per_channel_quantized_tensor(
        torch.cat([w.int_repr() for w in weights]),
        torch.cat([w.q_per_channel_scales() for w in weights]),
        torch.cat([w.q_per_channel_zero_points() for w in weights]), 0)


def fusable(layers: tuple[nn.Module, ...]) -> bool:
    """Inference-kernel layers without bias, in one weight format of :data:`FORMATS`, over one input width."""
    if not all(isinstance(layer, BackendLinear) for layer in layers):
        return False
    storages = layers[0].storages()
    same = all(layer.storages() == storages and layer.bias is None for layer in layers)
    return bool(storages) and storages[0] in FORMATS and same and len({layer.in_features for layer in layers}) == 1


def fuse_linears(layers: tuple[BackendLinear, ...]) -> BackendLinear:
    """One :class:`BackendLinear` whose outputs are ``layers``' outputs side by side, in their weight formats."""
    storages = layers[0].storages()
    fused = torch.nn.utils.skip_init(nn.Linear, layers[0].in_features, sum(layer.out_features for layer in layers),
                                     bias=False, device=layers[0].weight.device)
    plain = any(storage in ("fp32", "bf16") for storage in storages)  # else the layers hold an empty weight
    weight = torch.cat([layer.weight.detach() for layer in layers]) if plain else torch.empty(0)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    for storage in storages:
        if storage in ("fp16", "int8"):
            fused.register_buffer(f"weight_{storage}", _concatenated(layers, storage), persistent=False)
    if "_t5kit_storages" in layers[0].__dict__:  # inference copies (fp16w, int8) name their formats
        fused.__dict__["_t5kit_storages"] = storages
    fused.__class__ = BackendLinear
    return fused


def fused_pays(fused: BackendLinear, layers: tuple[BackendLinear, ...], rows: int) -> bool:
    """Whether one call of ``fused`` beats the calls of ``layers`` by :data:`MARGIN` at ``rows``' bucket, by
    their chosen kernels' timings. Measured on a 2-core AMD EPYC
    (AVX2), in-process A/B, fused against apart, greedy b1: t5-small int8 1.07x (12 pairs; the fused q/k/v call
    timed 64 us against 3 x 38), fp16w 1.11x; t5 v1.1-small (q/k/v and wi_0/wi_1) int8 1.09x, fp16w 1.04x."""
    fused_us = timed_us(fused, rows)
    apart = [timed_us(layer, rows) for layer in layers]
    if fused_us is None or any(us is None for us in apart):  # a forced kernel: nothing measured, nothing fused
        return False
    return fused_us < (1 - MARGIN) * sum(apart)


def fused_copy(owner: nn.Module, name: str, layers: tuple[nn.Module, ...]) -> tuple | None:
    """``owner``'s fused copy of ``layers`` under ``name`` (built, or rebuilt after a weight change), as
    (versions, fused layer, decisions per bucket); None where the layers cannot be fused."""
    if not fusable(layers):
        return None
    versions = _versions(layers)
    held = owner.__dict__.get(PREFIX + name)
    if held is None or held[0] != versions:
        # not an inference tensor even when built inside inference_mode: its version counter tells changes
        with torch.inference_mode(False), torch.no_grad():
            held = (versions, fuse_linears(layers), {})
        owner.__dict__[PREFIX + name] = held
    return held


def fused_for(owner: nn.Module, name: str, layers: tuple[nn.Module, ...], rows: int) -> BackendLinear | None:
    """The fused copy of ``layers`` where it pays for a call of ``rows`` rows (:func:`fused_pays`), else None."""
    held = fused_copy(owner, name, layers)
    if held is None:
        return None
    key = bucket(min(rows, BUCKETS[-1]))
    pays = held[2].get(key)
    if pays is None:
        pays = held[2][key] = fused_pays(held[1], layers, key)
    return held[1] if pays else None


def held_copies(owner: nn.Module) -> list[BackendLinear]:
    """The fused copies ``owner`` holds now."""
    return [v[1] for k, v in owner.__dict__.items() if k.startswith(PREFIX)]


def without_copies(state: dict) -> dict:
    """A module's ``__dict__`` for pickling: fused copies are rebuilt on first use."""
    return {k: v for k, v in state.items() if not k.startswith(PREFIX)}


def forget_fused(module: nn.Module) -> None:
    """Drop a module's fused copies (``t5kit.kernels.uninstall`` calls it)."""
    for key in [k for k in module.__dict__ if k.startswith(PREFIX)]:
        del module.__dict__[key]
