"""The relu feed-forward with dropout in training as one autograd Function.

Replaces :class:`t5kit.model.layers.FeedForward` in training (relu models with dropout); a gated model's
input is cast once for its two input projections under autocast. Every other call runs the plain forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from t5kit.kernels.training import gemm
from t5kit.kernels.training.common import autocast_input, linear_dtype, training_pass, weight_sources, widen
from t5kit.kernels.training.dropout import dropout_keep_mask
from t5kit.model.layers import FeedForward, check_dropout_rate


class _ReluDropoutFeedForward(torch.autograd.Function):
    """wo(dropout(relu(wi x))) for training, in one Function that owns its intermediate.

    - relu and the dropout mask are applied in place on the ``wi`` output, WITHOUT the 1/(1-p) scale; the
      scale rides on the ``wo`` matmuls as their alpha (free) instead of a pass over the output.
    - The activation is > 0 exactly where relu passed and dropout kept, so the backward of both is one
      threshold on it, done in place on the gradient this backward has just made: no mask is stored, no
      random numbers are drawn again, and no third d_ff-wide tensor is allocated.
    - Under autocast the inputs are cast as autocast would cast them for two linear layers.
    - A weight may be a frozen layer's ``widened`` method (``common.weight_sources``): widened here and again in
      backward, never kept wide; the input is kept only where ``wi`` trains (its gradient reads it).
    """

    @staticmethod
    def forward(ctx, x: Tensor, wi: Tensor | Callable, wo: Tensor | Callable, p: float) -> Tensor:  # type: ignore[override]
        device = x.device.type
        dtype = linear_dtype(device, wo.dtype if isinstance(wo, Tensor) else x.dtype)
        rows, wi_, wo_ = x.reshape(-1, x.shape[-1]).to(dtype), widen(wi, dtype), widen(wo, dtype)
        scale = 1.0 / (1.0 - p)
        with torch.autocast(device, enabled=False):
            h = gemm.mm(rows, wi_.t())
            h.relu_().mul_(dropout_keep_mask(h.shape, p, h.dtype, h.device))
            out = gemm.scaled_mm(h, wo_.t(), scale)
        ctx.sources = [None if isinstance(w, Tensor) else w for w in (wi, wo)]  # re-widened in backward
        ctx.save_for_backward(rows if ctx.needs_input_grad[1] else None, h,
                              wi_ if ctx.sources[0] is None else None, wo_ if ctx.sources[1] is None else None)
        ctx.scale = scale
        ctx.dtypes = (x.dtype, wi.dtype if isinstance(wi, Tensor) else dtype,
                      wo.dtype if isinstance(wo, Tensor) else dtype)
        return out.view(*x.shape[:-1], wo_.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:  # type: ignore[override]
        rows, h, wi, wo = ctx.saved_tensors
        wi = wi if ctx.sources[0] is None else widen(ctx.sources[0], h.dtype)
        wo = wo if ctx.sources[1] is None else widen(ctx.sources[1], h.dtype)
        x_dtype, wi_dtype, wo_dtype = ctx.dtypes
        grad_out = grad.reshape(-1, grad.shape[-1]).to(h.dtype)
        grad_wo = None
        if ctx.needs_input_grad[2]:
            grad_wo = gemm.scaled_mm(grad_out.t(), h, ctx.scale).to(wo_dtype)
        grad_h = gemm.scaled_mm(grad_out, wo, ctx.scale)
        torch.ops.aten.threshold_backward.grad_input(grad_h, h, 0, grad_input=grad_h)  # relu + mask, in place
        grad_x = grad_wi = None
        if ctx.needs_input_grad[0]:
            grad_x = gemm.mm(grad_h, wi).view(*grad.shape[:-1], wi.shape[1]).to(x_dtype)
        if ctx.needs_input_grad[1]:
            grad_wi = gemm.mm(grad_h.t(), rows).to(wi_dtype)
        return grad_x, grad_wi, grad_wo, None


class TrainingFeedForward(FeedForward):
    """:class:`FeedForward` whose relu training pass with dropout is :class:`_ReluDropoutFeedForward`."""

    def fused(self) -> bool:
        """Relu with dropout over plain ``nn.Linear`` layers with parameters of one dtype (not fp16's float32
        wo; not quantized, sharded or wrapped layers)."""
        if self.gated or self.act is not F.relu or not training_pass(self) or self.dropout.p == 0.0:
            return False
        check_dropout_rate(self.dropout.p)
        weights = weight_sources(self.wi, self.wo)
        return weights is not None and len({w.dtype for w in weights if isinstance(w, Tensor)}) <= 1

    def forward(self, x: Tensor) -> Tensor:
        if self.fused():
            return _ReluDropoutFeedForward.apply(x, *weight_sources(self.wi, self.wo), self.dropout.p)
        if self.gated:
            x = autocast_input(x)  # a no-op unless autocast is on
        return super().forward(x)
