"""A gated feed-forward's two input projections (wi_0, wi_1) from one linear call in inference, where that
pays (replaces :meth:`t5kit.model.layers.FeedForward.forward` for gated models outside autograd; see
:mod:`t5kit.kernels.inference.fused`): T5 v1.1, Flan-T5, mT5, UMT5 and ByT5 make one linear call fewer per
layer and step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.compiler import is_compiling as compiling

from t5kit.kernels.inference.fused import fused_copy, fused_for, held_copies, without_copies
from t5kit.model.layers import FeedForward, clamp_fp16, weight_dtype


class InferenceFeedForward(FeedForward):
    """:class:`FeedForward` whose gated input projections, when autograd does not record, run as one call."""

    def inference_linears(self) -> list[nn.Module]:
        """The linear layers this module runs in inference beside its children (for backend reports)."""
        if self.gated:
            fused_copy(self, "wi", (self.wi_0, self.wi_1))
        return held_copies(self)

    def forward(self, x: Tensor) -> Tensor:
        if not self.gated or torch.is_grad_enabled() or compiling():
            return super().forward(x)
        fused = fused_for(self, "wi", (self.wi_0, self.wi_1), x.numel() // x.shape[-1])
        if fused is None:
            return super().forward(x)
        gate, linear = fused(x).split(self.wi_0.out_features, dim=-1)
        h = self.dropout(self.act(gate) * linear)
        # as the plain forward: fp16 models keep wo in fp32, its output overflows fp16
        wo_dtype = weight_dtype(self.wo, h.dtype)
        out = self.wo(h.to(wo_dtype))
        return clamp_fp16(out, x.dtype) if h.dtype != wo_dtype else out

    def __getstate__(self) -> dict:
        return without_copies(self.__dict__)
