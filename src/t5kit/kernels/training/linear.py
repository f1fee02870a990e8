"""A linear layer's training pass on the float32 product backend chosen for this CPU (:mod:`.gemm`).

The fused Functions (attention with dropout, the relu feed-forward, the head) make their own products through
:mod:`.gemm`; every other linear layer of a training step runs here: a gated feed-forward's ``wi_0`` / ``wi_1`` /
``wo`` (T5 v1.1, Flan-T5), attention without dropout, a user's own layers. Where the chosen backend is torch's own
(MKL), or the call is not a float32 training pass on the CPU (autocast, inference, another device, fp16 / int8
copies), the layer runs its plain forward, unchanged. Replaces ``nn.Linear`` in training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from t5kit.kernels.training import gemm
from t5kit.kernels.training.common import training_pass


class _Linear(torch.autograd.Function):
    """``x W^T + b`` with its three products on :mod:`.gemm`; the input is kept only where W's gradient reads it."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        rows = x.reshape(-1, x.shape[-1])
        out = gemm.mm(rows, weight.t())
        if bias is not None:
            out.add_(bias)
        ctx.save_for_backward(rows if ctx.needs_input_grad[1] else None, weight)
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # type: ignore[override]
        rows, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])
        needs = ctx.needs_input_grad
        grad_x = gemm.mm(grad_rows, weight).view(*grad.shape[:-1], weight.shape[1]) if needs[0] else None
        grad_weight = gemm.mm(grad_rows.t(), rows) if needs[1] else None
        grad_bias = grad_rows.sum(0) if needs[2] else None
        return grad_x, grad_weight, grad_bias


class TrainingLinear(nn.Linear):
    """:class:`nn.Linear` whose float32 training pass on the CPU makes its products on :mod:`.gemm`'s backend."""

    reads_own_weight = True  # computes from its own float weight: the training Functions may read it directly

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight
        if (training_pass(self) and x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu"
                and "_t5kit_storages" not in self.__dict__ and not torch.is_autocast_enabled("cpu")
                and (weight.requires_grad or x.requires_grad) and gemm.backend() == "onednn"):
            return _Linear.apply(x, weight, self.bias)
        return super().forward(x)
