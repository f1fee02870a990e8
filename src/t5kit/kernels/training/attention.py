"""Attention with dropout in training as one autograd Function (44 autograd nodes become 1).

Measured in session 5 (interleaved A/B of one attention block forward + backward, t5-small shapes, CPU):
the mask scale as the matmuls' alpha, the mask applied in place on the probabilities' gradient and the
q/k/v input gradients summed inside the matmuls made the fp32 training step faster (see benchmarks/README).
Replaces :class:`t5kit.model.layers.Attention` in training; every other call runs the plain forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from t5kit.kernels.training import gemm
from t5kit.kernels.training.common import (
    Projection,
    autocast_input,
    linear_dtype,
    projections,
    training_pass,
    widen,
)
from t5kit.kernels.training.dropout import dropout_drop_mask
from t5kit.model.cache import DecoderCache
from t5kit.model.layers import Attention, check_dropout_rate, weight_dtype


def _heads_of(rows: Tensor, batch: int, heads: int, out: Tensor) -> Tensor:
    """[batch * length, heads * d_kv] into ``out``, [batch * heads, length, d_kv] (the batched matmuls' layout)."""
    d_kv = out.shape[-1]
    out.view(batch, heads, -1, d_kv).copy_(rows.view(batch, -1, heads, d_kv).transpose(1, 2))
    return out


def _rows_of(by_head: Tensor, batch: int, heads: int) -> Tensor:
    """[batch * heads, length, d_kv] -> contiguous [batch * length, heads * d_kv]."""
    _, length, d_kv = by_head.shape
    return by_head.view(batch, heads, length, d_kv).transpose(1, 2).reshape(batch * length, heads * d_kv)


def _project(rows: Tensor, weight: Tensor, lora_A: Tensor | None, lora_B: Tensor | None, scale: float,
             lora_dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """``rows W^T`` plus, for an adapted projection, ``scale * (rows A^T) B^T`` added in place; also returns
    ``rows A^T`` (the adapter's [N, r] intermediate, which B's gradient reads), else None."""
    out = gemm.mm(rows, weight.t())
    if lora_A is None or lora_B is None:
        return out, None
    mid = torch.mm(rows.to(lora_dtype), lora_A.to(lora_dtype).t())
    if out.dtype == lora_dtype:
        out.addmm_(mid, lora_B.to(lora_dtype).t(), alpha=scale)
    else:  # a bf16 model's float32 adapter: the term in float32, as the adapter's own forward computes it
        out.add_(torch.mm(mid, lora_B.to(lora_dtype).t()).mul_(scale).to(out.dtype))
    return out, mid


def _low_rank_backward(grad_out: Tensor, rows: Tensor | None, mid: Tensor, lora_A: Tensor, lora_B: Tensor,
                       scale: float, grad_rows: Tensor | None, needs: tuple[bool, bool]) -> tuple[Tensor | None, ...]:
    """The gradients of an adapted projection's ``A`` and ``B`` (where ``needs`` says); adds the term's share of
    the input's gradient into ``grad_rows`` in place (when given)."""
    dtype = mid.dtype
    grad_out = grad_out.to(dtype)
    zero = mid.new_zeros(())
    grad_B = torch.addmm(zero, grad_out.t(), mid, beta=0, alpha=scale).to(lora_B.dtype) if needs[1] else None
    grad_mid = torch.addmm(zero, grad_out, lora_B.to(dtype), beta=0, alpha=scale)
    grad_A = torch.mm(grad_mid.t(), rows.to(dtype)).to(lora_A.dtype) if needs[0] and rows is not None else None
    if grad_rows is not None:
        grad_rows.addmm_(grad_mid.to(grad_rows.dtype), lora_A.to(grad_rows.dtype))
    return grad_A, grad_B


class _TrainingAttention(torch.autograd.Function):
    """Attention with dropout for training, as one Function that owns its layouts and its intermediates.

    - The dropout scale 1/(1-p) is the alpha of the two matmuls that read the mask, never a pass of its own.
      The mask is kept as one byte an element (True where dropped) and the dropped probabilities are made
      again in backward from it and the probabilities (which the softmax gradient keeps anyway): 5 bytes an
      element kept instead of 12 in float32 (float mask, probabilities, dropped probabilities).
    - The input's gradient is one matmul and accumulating ones (beta = 1), not three products and two sums.
    - A projection may be frozen and stored compactly (its weight a ``widened`` method, widened again in
      backward) and may carry a LoRA term (``scale * B A x``, ``common.projections``): computed beside its
      base matmul, its [N, r] intermediate kept. An input is kept only where a weight or an adapter's ``A``
      reads it for a gradient, the attention output only where ``o`` trains or is adapted.
    - Numerics as the module path: bias added to the scores (promoted to float32 under autocast), softmax
      in the scores' dtype, the same mask drawn at the same point, matmuls in autocast's dtype.
    """

    @staticmethod
    def forward(ctx, x: Tensor, memory: Tensor | None, bias: Tensor,  # type: ignore[override]
                wq: Tensor | Callable, wk: Tensor | Callable, wv: Tensor | Callable, wo: Tensor | Callable,
                aq: Tensor | None, bq: Tensor | None, ak: Tensor | None, bk: Tensor | None,
                av: Tensor | None, bv: Tensor | None, ao: Tensor | None, bo: Tensor | None,
                heads: int, p: float, scales: tuple[float, float, float, float]) -> Tensor:
        device = x.device.type
        dtype = linear_dtype(device, wo.dtype if isinstance(wo, Tensor) else x.dtype)
        adapters = ((aq, bq), (ak, bk), (av, bv), (ao, bo))
        lora_dtypes = [linear_dtype(device, a.dtype) if a is not None else dtype for a, _ in adapters]
        batch, q_len, d_model = x.shape
        scale = 1.0 / (1.0 - p)
        x_rows = x.reshape(-1, d_model).to(dtype)
        m_rows = x_rows if memory is None else memory.reshape(-1, d_model).to(dtype)
        k_len = m_rows.shape[0] // batch
        sources = (wq, wk, wv, wo)
        weights = [widen(w, dtype) for w in sources]
        d_kv = weights[0].shape[0] // heads
        projected = []
        with torch.autocast(device, enabled=False):
            for i, rows in enumerate((x_rows, m_rows, m_rows)):
                projected.append(_project(rows, weights[i], *adapters[i], scales[i], lora_dtypes[i]))
            (q_rows, mid_q), (k_rows, mid_k), (v_rows, mid_v) = projected
            q = _heads_of(q_rows, batch, heads, x_rows.new_empty(batch * heads, q_len, d_kv))
            k = _heads_of(k_rows, batch, heads, x_rows.new_empty(batch * heads, k_len, d_kv))
            v = _heads_of(v_rows, batch, heads, x_rows.new_empty(batch * heads, k_len, d_kv))
            del projected, q_rows, k_rows, v_rows
            scores = torch.bmm(q, k.transpose(1, 2)).view(batch, heads, q_len, k_len)
            scores = scores.add_(bias) if scores.dtype == bias.dtype else scores + bias
            probs = scores.softmax(-1)
            drop = dropout_drop_mask(probs.shape, p, probs.device)
            dropped = probs.masked_fill(drop, 0).to(dtype).view(batch * heads, q_len, k_len)
            attended_rows = _rows_of(torch.baddbmm(dropped.new_zeros(()), dropped, v, beta=0, alpha=scale),
                                     batch, heads)
            out, mid_o = _project(attended_rows, weights[3], *adapters[3], scales[3], lora_dtypes[3])
        needs = ctx.needs_input_grad
        reads_input = [needs[3 + i] or (adapters[i][0] is not None and needs[7 + 2 * i]) for i in range(4)]
        keep_x = reads_input[0] or (memory is None and (reads_input[1] or reads_input[2]))
        keep_m = memory is not None and (reads_input[1] or reads_input[2])
        ctx.sources = [None if isinstance(w, Tensor) else w for w in sources]  # re-widened in backward
        ctx.save_for_backward(
            x_rows if keep_x else None, m_rows if keep_m else None,
            *(w if source is None else None for w, source in zip(weights, ctx.sources)),
            q, k, v, probs, drop, attended_rows if reads_input[3] else None,
            mid_q, mid_k, mid_v, mid_o, *(t for pair in adapters for t in pair))
        ctx.scale, ctx.scales, ctx.bias_shape, ctx.dtype = scale, scales, bias.shape, dtype
        ctx.dtypes = (x.dtype, *(w.dtype if isinstance(w, Tensor) else dtype for w in sources))
        ctx.memory_dtype = None if memory is None else memory.dtype
        ctx.self_attention = memory is None
        return out.view(batch, q_len, weights[3].shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (x_rows, m_rows, wq, wk, wv, wo, q, k, v, probs, drop, attended_rows,
         mid_q, mid_k, mid_v, mid_o, *adapter_tensors) = ctx.saved_tensors
        dtype = ctx.dtype
        wq, wk, wv, wo = (w if source is None else widen(source, dtype)
                          for w, source in zip((wq, wk, wv, wo), ctx.sources))
        adapters = [(adapter_tensors[2 * i], adapter_tensors[2 * i + 1]) for i in range(4)]
        mids = (mid_q, mid_k, mid_v, mid_o)
        batch, heads, q_len, k_len = probs.shape
        x_dtype, wq_dtype, wk_dtype, wv_dtype, wo_dtype = ctx.dtypes
        needs = ctx.needs_input_grad
        adapter_needs = [(needs[7 + 2 * i], needs[8 + 2 * i]) for i in range(4)]
        adapter_grads: list[Tensor | None] = [None] * 8
        if ctx.self_attention:
            m_rows = x_rows
        grad_rows = grad.reshape(-1, grad.shape[-1]).to(dtype)
        grad_wo = gemm.mm(grad_rows.t(), attended_rows).to(wo_dtype) if needs[6] else None
        grad_attended_rows = gemm.mm(grad_rows, wo)
        if mid_o is not None:
            adapter_grads[6:8] = _low_rank_backward(grad_rows, attended_rows, mid_o, *adapters[3], ctx.scales[3],
                                                    grad_attended_rows, adapter_needs[3])
        grad_attended = _heads_of(grad_attended_rows, batch, heads, torch.empty_like(q))
        del grad_attended_rows
        zero = q.new_zeros(())
        dropped = probs.masked_fill(drop, 0).to(dtype).view(batch * heads, q_len, k_len)
        grad_v = torch.baddbmm(zero, dropped.transpose(1, 2), grad_attended, beta=0, alpha=ctx.scale)
        del dropped
        grad_probs = torch.baddbmm(zero, grad_attended, v.transpose(1, 2), beta=0, alpha=ctx.scale)
        grad_probs = grad_probs.view(probs.shape).to(probs.dtype).masked_fill_(drop, 0)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        grad_bias = grad_scores.sum_to_size(ctx.bias_shape) if needs[2] else None
        grad_scores = grad_scores.to(q.dtype).view(batch * heads, q_len, k_len)
        grad_q = _rows_of(torch.bmm(grad_scores, k), batch, heads)
        grad_k = _rows_of(torch.bmm(grad_scores.transpose(1, 2), q), batch, heads)
        grad_v = _rows_of(grad_v, batch, heads)
        # the input gradients: each projection's base product, then its adapter's share, summed in place
        grad_x = gemm.mm(grad_q, wq) if needs[0] else None
        if ctx.self_attention:
            if grad_x is not None:
                grad_x = gemm.add_mm(gemm.add_mm(grad_x, grad_k, wk), grad_v, wv)
            grad_memory = None
        else:
            grad_memory = gemm.add_mm(gemm.mm(grad_k, wk), grad_v, wv) if needs[1] else None
        into = (grad_x, grad_x if ctx.self_attention else grad_memory)
        for i, (grad_i, rows) in enumerate(((grad_q, x_rows), (grad_k, m_rows), (grad_v, m_rows))):
            if mids[i] is not None:
                adapter_grads[2 * i:2 * i + 2] = _low_rank_backward(
                    grad_i, rows, mids[i], *adapters[i], ctx.scales[i], into[min(i, 1)], adapter_needs[i])
        if grad_x is not None:
            grad_x = grad_x.view(batch, q_len, -1).to(x_dtype)
        if grad_memory is not None:
            grad_memory = grad_memory.view(batch, k_len, -1).to(ctx.memory_dtype)
        grad_wq = gemm.mm(grad_q.t(), x_rows).to(wq_dtype) if needs[3] else None
        grad_wk = gemm.mm(grad_k.t(), m_rows).to(wk_dtype) if needs[4] else None
        grad_wv = gemm.mm(grad_v.t(), m_rows).to(wv_dtype) if needs[5] else None
        return (grad_x, grad_memory, grad_bias, grad_wq, grad_wk, grad_wv, grad_wo, *adapter_grads,
                None, None, None)


class TrainingAttention(Attention):
    """:class:`Attention` whose training pass with dropout is :class:`_TrainingAttention`."""

    def fused(self) -> bool:
        """Training with dropout over four projections the Function can read (``common.projections``: plain
        ``nn.Linear`` layers, frozen ones stored compactly, either with a LoRA term) whose weights share one
        dtype, fp32 or bf16 (not fp16, not quantized, sharded or otherwise wrapped layers)."""
        return self._fused_projections() is not None

    def _fused_projections(self) -> list[Projection] | None:
        """The four projections when :meth:`fused` holds, else None (read once per call)."""
        if not training_pass(self) or self.dropout.p == 0.0:
            return None
        check_dropout_rate(self.dropout.p)
        layers = (self.q, self.k, self.v, self.o)
        found = projections(*layers)
        if found is None:
            return None
        dtypes = {w.weight.dtype if isinstance(w.weight, Tensor) else weight_dtype(layer, torch.float32)
                  for w, layer in zip(found, layers)}
        return found if len(dtypes) == 1 and dtypes <= {torch.float32, torch.bfloat16} else None

    def forward(self, x: Tensor, bias: Tensor, memory: Tensor | None = None, cache: DecoderCache | None = None,
                layer: int = 0) -> Tensor:
        found = self._fused_projections() if cache is None else None
        if found is not None:
            return _TrainingAttention.apply(
                x, memory, bias, *(w.weight for w in found), *(t for w in found for t in (w.lora_A, w.lora_B)),
                self.num_heads, self.dropout.p, tuple(w.scale for w in found))
        x = autocast_input(x)  # a no-op unless autocast is on
        memory = None if memory is None else autocast_input(memory)
        return super().forward(x, bias, memory, cache, layer)
