"""Inference attention (replaces :meth:`t5kit.model.layers.Attention.forward` and ``attend`` outside autograd):
self-attention's q, k and v from one linear call where that pays (see :mod:`t5kit.kernels.inference.fused`; a
t5-small decoding step then makes 12 linear calls fewer, 49 -> 37), and a decoding step's attention through
t5kit's native kernel (``attention.c``, :mod:`t5kit.kernels.inference.native`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.compiler import is_compiling as compiling

from t5kit.kernels.inference import native
from t5kit.kernels.inference.fused import fused_copy, fused_for, held_copies, without_copies
from t5kit.kernels.inference.linear import BackendLinear
from t5kit.model.cache import DecoderCache
from t5kit.model.layers import Attention

# Decoding steps attend with 1 query per row (beam search's cross attention: the item's beams); a prompt of
# many queries goes to PyTorch's scaled_dot_product_attention, which is blocked for that.
SMALL_QUERIES = 16


class InferenceAttention(Attention):
    """:class:`Attention` whose self-attention, when autograd does not record, projects q, k, v in one call, and
    whose decoding steps attend through the native kernel."""

    def fused_projection(self) -> BackendLinear | None:
        """The q/k/v copy of this self-attention (built or rebuilt as its weights require), or None."""
        held = None if self.cross else fused_copy(self, "qkv", (self.q, self.k, self.v))
        return None if held is None else held[1]

    def inference_linears(self) -> list[nn.Module]:
        """The linear layers this module runs in inference beside its children (for backend reports)."""
        self.fused_projection()
        return held_copies(self)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, step: bool = False) -> Tensor:
        """The plain ``attend`` (softmax(q k^T + bias) v, then ``o``), through t5kit's attention kernel in a
        decoding step (``step``: a call with a cache, a few float32 queries) when autograd does not record. A
        forward without a cache (training, scoring, the encoder) keeps PyTorch's attention and its rounding."""
        if (not step or q.shape[2] > SMALL_QUERIES or q.dtype != torch.float32 or q.device.type != "cpu"
                or torch.is_grad_enabled() or (self.training and self.dropout.p) or compiling()):
            return super().attend(q, k, v, bias, step)
        lib = native.library()
        if (lib is None or k.shape[2] > lib.max_keys or k.dtype != q.dtype or v.dtype != q.dtype
                or (bias is not None and (bias.dtype != q.dtype or bias.dim() != 4))):
            return super().attend(q, k, v, bias, step)
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        return self.o(native.attention(lib, q, k, v, bias))

    def forward(self, x: Tensor, bias: Tensor, memory: Tensor | None = None, cache: DecoderCache | None = None,
                layer: int = 0) -> Tensor:
        if self.cross or memory is not None or torch.is_grad_enabled() or compiling():
            return super().forward(x, bias, memory, cache, layer)
        fused = fused_for(self, "qkv", (self.q, self.k, self.v), x.numel() // x.shape[-1])
        if fused is None:
            return super().forward(x, bias, memory, cache, layer)
        q, k, v = fused(x).split(self.q.out_features, dim=-1)
        if cache is None:
            return self.attend(self.heads(q), self.heads(k), self.heads(v), bias)
        k, v = cache.update(layer, self.heads(k), self.heads(v))
        return self.attend(self.heads(q), k, v, bias, step=True)

    def __getstate__(self) -> dict:
        return without_copies(self.__dict__)
