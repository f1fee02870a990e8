"""Attention with dropout in training as one autograd Function (44 autograd nodes become 1).

Measured in session 5 (interleaved A/B of one attention block forward + backward, t5-small shapes, CPU):
the mask scale as the matmuls' alpha, the mask applied in place on the probabilities' gradient and the
q/k/v input gradients summed inside the matmuls made the fp32 training step faster (see benchmarks/README).
Replaces :class:`t5kit.model.layers.Attention` in training; every other call runs the plain forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from t5kit.kernels.training.common import autocast_input, linear_dtype, plain_weights, training_pass
from t5kit.kernels.training.dropout import dropout_keep_mask
from t5kit.model.cache import DecoderCache
from t5kit.model.layers import Attention, check_dropout_rate


def _heads_of(rows: Tensor, batch: int, heads: int, out: Tensor) -> Tensor:
    """[batch * length, heads * d_kv] into ``out``, [batch * heads, length, d_kv] (the batched matmuls' layout)."""
    d_kv = out.shape[-1]
    out.view(batch, heads, -1, d_kv).copy_(rows.view(batch, -1, heads, d_kv).transpose(1, 2))
    return out


def _rows_of(by_head: Tensor, batch: int, heads: int) -> Tensor:
    """[batch * heads, length, d_kv] -> contiguous [batch * length, heads * d_kv]."""
    _, length, d_kv = by_head.shape
    return by_head.view(batch, heads, length, d_kv).transpose(1, 2).reshape(batch * length, heads * d_kv)


class _TrainingAttention(torch.autograd.Function):
    """Attention with dropout for training, as one Function that owns its layouts and its intermediates.

    - The dropout scale 1/(1-p) is the alpha of the two matmuls that read the mask, never a pass of its own;
      the mask multiplies the probabilities' gradient in place.
    - The input's gradient is one matmul and two accumulating ones (beta = 1), not three products and two sums.
    - Numerics as the module path: bias added to the scores (promoted to float32 under autocast), softmax
      in the scores' dtype, the same mask drawn at the same point, matmuls in autocast's dtype.
    """

    @staticmethod
    def forward(ctx, x: Tensor, memory: Tensor | None, bias: Tensor, wq: Tensor, wk: Tensor, wv: Tensor,  # type: ignore[override]
                wo: Tensor, heads: int, p: float) -> Tensor:
        device = x.device.type
        dtype = linear_dtype(device, wo.dtype)
        batch, q_len, d_model = x.shape
        scale = 1.0 / (1.0 - p)
        x_rows = x.reshape(-1, d_model).to(dtype)
        m_rows = x_rows if memory is None else memory.reshape(-1, d_model).to(dtype)
        k_len = m_rows.shape[0] // batch
        wq_, wk_, wv_, wo_ = (w.to(dtype) for w in (wq, wk, wv, wo))
        d_kv = wq.shape[0] // heads
        with torch.autocast(device, enabled=False):
            q = _heads_of(torch.mm(x_rows, wq_.t()), batch, heads, x_rows.new_empty(batch * heads, q_len, d_kv))
            k = _heads_of(torch.mm(m_rows, wk_.t()), batch, heads, x_rows.new_empty(batch * heads, k_len, d_kv))
            v = _heads_of(torch.mm(m_rows, wv_.t()), batch, heads, x_rows.new_empty(batch * heads, k_len, d_kv))
            scores = torch.bmm(q, k.transpose(1, 2)).view(batch, heads, q_len, k_len)
            scores = scores.add_(bias) if scores.dtype == bias.dtype else scores + bias
            probs = scores.softmax(-1)
            keep = dropout_keep_mask(probs.shape, p, probs.dtype, probs.device)
            dropped = (probs * keep).to(dtype).view(batch * heads, q_len, k_len)
            attended_rows = _rows_of(torch.baddbmm(dropped.new_zeros(()), dropped, v, beta=0, alpha=scale),
                                     batch, heads)
            out = torch.mm(attended_rows, wo_.t())
        ctx.save_for_backward(x_rows, None if memory is None else m_rows, wq_, wk_, wv_, wo_, q, k, v, probs, keep,
                              dropped, attended_rows)
        ctx.scale, ctx.bias_shape, ctx.dtypes = scale, bias.shape, (x.dtype, wq.dtype, wo.dtype)
        ctx.memory_dtype = None if memory is None else memory.dtype
        return out.view(batch, q_len, wo.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x_rows, m_rows, wq, wk, wv, wo, q, k, v, probs, keep, dropped, attended_rows = ctx.saved_tensors
        batch, heads, q_len, k_len = probs.shape
        x_dtype, w_dtype, wo_dtype = ctx.dtypes
        needs = ctx.needs_input_grad
        self_attention = m_rows is None
        if self_attention:
            m_rows = x_rows
        grad_rows = grad.reshape(-1, grad.shape[-1]).to(wo.dtype)
        grad_wo = torch.mm(grad_rows.t(), attended_rows).to(wo_dtype) if needs[6] else None
        grad_attended = _heads_of(torch.mm(grad_rows, wo), batch, heads, torch.empty_like(q))
        zero = q.new_zeros(())
        grad_v = torch.baddbmm(zero, dropped.transpose(1, 2), grad_attended, beta=0, alpha=ctx.scale)
        grad_probs = torch.baddbmm(zero, grad_attended, v.transpose(1, 2), beta=0, alpha=ctx.scale)
        grad_probs = grad_probs.view(probs.shape).to(probs.dtype).mul_(keep)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        grad_bias = grad_scores.sum_to_size(ctx.bias_shape) if needs[2] else None
        grad_scores = grad_scores.to(q.dtype).view(batch * heads, q_len, k_len)
        grad_q = _rows_of(torch.bmm(grad_scores, k), batch, heads)
        grad_k = _rows_of(torch.bmm(grad_scores.transpose(1, 2), q), batch, heads)
        grad_v = _rows_of(grad_v, batch, heads)
        grad_x = grad_memory = None
        if needs[0]:
            grad_x = torch.mm(grad_q, wq)
            if self_attention:  # the three projections' gradients summed inside the matmuls
                grad_x.addmm_(grad_k, wk).addmm_(grad_v, wv)
            grad_x = grad_x.view(batch, q_len, -1).to(x_dtype)
        if needs[1]:
            grad_memory = torch.mm(grad_k, wk).addmm_(grad_v, wv).view(batch, k_len, -1).to(ctx.memory_dtype)
        grad_wq = torch.mm(grad_q.t(), x_rows).to(w_dtype) if needs[3] else None
        grad_wk = torch.mm(grad_k.t(), m_rows).to(w_dtype) if needs[4] else None
        grad_wv = torch.mm(grad_v.t(), m_rows).to(w_dtype) if needs[5] else None
        return grad_x, grad_memory, grad_bias, grad_wq, grad_wk, grad_wv, grad_wo, None, None


class TrainingAttention(Attention):
    """:class:`Attention` whose training pass with dropout is :class:`_TrainingAttention`."""

    def fused(self) -> bool:
        """Training with dropout over four plain ``nn.Linear`` layers whose parameters share one dtype (fp32 or
        bf16; not fp16, not quantized, sharded or wrapped layers)."""
        if not training_pass(self) or self.dropout.p == 0.0:
            return False
        check_dropout_rate(self.dropout.p)
        weights = plain_weights(self.q, self.k, self.v, self.o)
        return (
            weights is not None
            and len({w.dtype for w in weights}) == 1
            and weights[0].dtype in (torch.float32, torch.bfloat16)
        )

    def forward(self, x: Tensor, bias: Tensor, memory: Tensor | None = None, cache: DecoderCache | None = None,
                layer: int = 0) -> Tensor:
        if cache is None and self.fused():
            weights = (self.q.weight, self.k.weight, self.v.weight, self.o.weight)
            return _TrainingAttention.apply(x, memory, bias, *weights, self.num_heads, self.dropout.p)
        x = autocast_input(x)  # a no-op unless autocast is on
        memory = None if memory is None else autocast_input(memory)
        return super().forward(x, bias, memory, cache, layer)
