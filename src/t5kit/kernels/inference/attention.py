"""Self-attention's q, k and v from one linear call in inference (replaces
:meth:`t5kit.model.layers.Attention.forward` for self-attention outside autograd).

The three projections read the same input, so one weight of 3 x inner rows computes them in one call. What
that saves is the calls, not the bytes: on a 2-core AMD EPYC (AVX2) a oneDNN or fbgemm linear call costs
~30-40 us before any arithmetic (a 64 x 512 weight at one row: int8 42 us, fp16 40 us, oneDNN 41 us, against
7 us for F.linear; 1 thread, cache-hot), and an int8 call quantizes its input each time. A t5-small decoding
step makes 12 such calls fewer (49 -> 37).

The fused weight is an inference copy, not a parameter: it is built from the three layers' stored weights in
the same formats (fp32 / bf16 concatenated; fp16 copies concatenated; int8 per-channel weights concatenated
with their scales, which is exact because each output row keeps its own scale), rebuilt when any of them
changes, and its kernel is chosen like any other linear's (:mod:`t5kit.kernels.inference.linear`). It costs
the memory of one more copy of q, k and v (t5-small fp32: 18 MB). It is used at a row bucket only where its
chosen kernel was timed faster than the three layers' by the backend's margin (:func:`fused_pays`).
Adapter-wrapped, biased or otherwise non-plain projections keep the module's own path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.compiler import is_compiling as compiling

from t5kit.kernels.inference.linear import BUCKETS, MARGIN, BackendLinear, bucket, timed_us
from t5kit.model.cache import DecoderCache
from t5kit.model.layers import Attention

_FUSED = "_t5kit_qkv"  # in the module's __dict__: (versions, fused BackendLinear); not a registered child


def _stored(layer: BackendLinear) -> list[Tensor]:
    return [layer.stored_weight(storage) for storage in layer.storages()]


def _versions(layers: tuple[BackendLinear, ...]) -> tuple:
    return tuple((t.data_ptr(), t._version) for layer in layers for t in _stored(layer))


def _concatenated(layers: tuple[BackendLinear, ...], storage: str) -> Tensor:
    weights = [layer.stored_weight(storage).detach() for layer in layers]
    if storage != "int8":
        return torch.cat(weights)
    return torch._make_per_channel_quantized_tensor(
        torch.cat([w.int_repr() for w in weights]),
        torch.cat([w.q_per_channel_scales() for w in weights]),
        torch.cat([w.q_per_channel_zero_points() for w in weights]), 0)


def fused_pays(fused: BackendLinear, layers: tuple[BackendLinear, ...], rows: int) -> bool:
    """Whether one call of ``fused`` beats the calls of ``layers`` by :data:`MARGIN` at ``rows``' bucket, by
    their chosen kernels' timings; the margin is the linear backend's rule for a kernel that holds another
    copy of a weight. Measured on a 2-core AMD EPYC (AVX2), t5-small, in-process A/B over 12-16 paired runs:
    int8 greedy b1 1.07x with the fused call (64 us against 3 x 38 us timed), fp32 beam 4 1.07x, but fp32
    greedy b1 0.96-0.98x, where the fused 1536 x 512 call (145 us with MKL) was timed no faster than three."""
    fused_us = timed_us(fused, rows)
    apart = [timed_us(layer, rows) for layer in layers]
    if fused_us is None or any(us is None for us in apart):  # a forced kernel: nothing measured, nothing fused
        return False
    return fused_us < (1 - MARGIN) * sum(apart)


def fuse_linears(layers: tuple[nn.Module, ...]) -> BackendLinear | None:
    """One :class:`BackendLinear` whose output rows are ``layers``' outputs side by side, in their weight
    formats; None where they are not all inference-kernel layers without bias in one format."""
    if not all(type(layer) is BackendLinear for layer in layers):
        return None
    storages = layers[0].storages()
    if not storages or any(layer.storages() != storages or layer.bias is not None for layer in layers) or \
            len({layer.in_features for layer in layers}) != 1:
        return None
    explicit = "_t5kit_storages" in layers[0].__dict__  # inference copies (fp16w, int8) name their formats
    fused = torch.nn.utils.skip_init(nn.Linear, layers[0].in_features, sum(layer.out_features for layer in layers),
                                     bias=False, device=layers[0].weight.device)
    plain = any(storage in ("fp32", "bf16") for storage in storages)  # else the layers hold an empty weight
    weight = torch.cat([layer.weight.detach() for layer in layers]) if plain else torch.empty(0)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    for storage in storages:
        if storage in ("fp16", "int8"):
            fused.register_buffer(f"weight_{storage}", _concatenated(layers, storage), persistent=False)
    if explicit:
        fused.__dict__["_t5kit_storages"] = storages
    fused.__class__ = BackendLinear
    return fused


class InferenceAttention(Attention):
    """:class:`Attention` whose self-attention, when autograd does not record, projects q, k, v in one call."""

    def _held(self) -> tuple | None:
        layers = (self.q, self.k, self.v)
        if self.cross or not all(type(layer) is BackendLinear for layer in layers):
            return None
        versions = _versions(layers)
        held = self.__dict__.get(_FUSED)
        if held is None or held[0] != versions:
            # not an inference tensor even when built inside inference_mode: its version counter tells changes
            with torch.inference_mode(False), torch.no_grad():
                held = (versions, fuse_linears(layers), {})  # the last: per row bucket, whether fusing pays
            self.__dict__[_FUSED] = held
        return held

    def fused_projection(self) -> BackendLinear | None:
        """The q/k/v linear of this self-attention (built or rebuilt as its weights require), or None."""
        held = self._held()
        return None if held is None else held[1]

    def fused_for(self, rows: int) -> BackendLinear | None:
        """The fused q/k/v linear where it pays for a call of ``rows`` rows (:func:`fused_pays`), else None."""
        held = self._held()
        if held is None or held[1] is None:
            return None
        key = bucket(min(rows, BUCKETS[-1]))
        pays = held[2].get(key)
        if pays is None:
            pays = held[2][key] = fused_pays(held[1], (self.q, self.k, self.v), key)
        return held[1] if pays else None

    def inference_linears(self) -> list[nn.Module]:
        """The linear layers this module runs in inference beside its children (for backend reports)."""
        fused = self.fused_projection()
        return [] if fused is None else [fused]

    def forward(self, x: Tensor, bias: Tensor, memory: Tensor | None = None, cache: DecoderCache | None = None,
                layer: int = 0) -> Tensor:
        if self.cross or memory is not None or torch.is_grad_enabled() or compiling():
            return super().forward(x, bias, memory, cache, layer)
        fused = self.fused_for(x.numel() // x.shape[-1])
        if fused is None:
            return super().forward(x, bias, memory, cache, layer)
        q, k, v = fused(x).split(self.q.out_features, dim=-1)
        if cache is None:
            return self.attend(self.heads(q), self.heads(k), self.heads(v), bias)
        k, v = cache.update(layer, self.heads(k), self.heads(v))
        return self.attend(self.heads(q), k, v, bias)

    def __getstate__(self) -> dict:  # the fused copy is rebuilt on first use (its packed weights do not pickle)
        return {k: v for k, v in self.__dict__.items() if k != _FUSED}


def forget_fused(module: nn.Module) -> None:
    """Drop a module's fused q/k/v copy (``t5kit.kernels.uninstall`` calls it)."""
    module.__dict__.pop(_FUSED, None)
