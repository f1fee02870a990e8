"""The T5 encoder-decoder, top to bottom in one file.

Faithful to the published checkpoints (see shared/T5_SPEC.md): RMS norm computed in float32, pre-norm
residual sublayers, relative position buckets instead of absolute positions, no 1/sqrt(d_kv) in the
attention scores, relu or gated-GELU feed-forward, a tied head that rescales the decoder output by
d_model^-0.5 and an untied head that does not.

Parameter names are t5kit's own; ``checkpoint.py`` maps them to and from the Hugging Face layout, so
this file never knows about another library's key names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t5kit.cache import DecoderCache
from t5kit.config import T5Config

# ---------------------------------------------------------------------------------------------- positions


def relative_position_bucket(
    relative_position: Tensor, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
) -> Tensor:
    """Map ``key_position - query_position`` to a bucket index (the one definition in t5kit).

    Half the buckets are exact small distances, the rest grow logarithmically up to ``max_distance``;
    the encoder splits the buckets between the two directions, the decoder only looks back. The float32
    arithmetic below reproduces the reference's bucket boundaries exactly.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).to(relative_position.dtype) * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    large = max_exact + (
        torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).to(distance.dtype)
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """A learned [num_buckets, heads] table turned into an additive attention bias."""

    def __init__(self, config: T5Config, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.weight = nn.Parameter(torch.empty(config.relative_attention_num_buckets, config.num_heads))

    def forward(self, query_length: int, key_length: int, query_offset: int = 0) -> Tensor:
        """Bias of shape [1, heads, query_length, key_length]; queries sit at ``query_offset + i``."""
        device = self.weight.device
        query = torch.arange(query_offset, query_offset + query_length, device=device)[:, None]
        key = torch.arange(key_length, device=device)[None, :]
        bucket = relative_position_bucket(key - query, self.bidirectional, self.num_buckets, self.max_distance)
        return F.embedding(bucket, self.weight).permute(2, 0, 1).unsqueeze(0)

    def between(self, query_positions: Tensor, key_positions: Tensor) -> Tensor:
        """Bias [batch, heads, queries, keys] for explicit positions (packed rows restart at each example)."""
        relative = key_positions[:, None, :] - query_positions[:, :, None]
        bucket = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        return F.embedding(bucket, self.weight).permute(0, 3, 1, 2)

    def by_distance(self, max_length: int) -> Tensor:
        """Causal bias for distances max_length-1 ... 0, shape [heads, max_length].

        For a query at position p over keys 0..p the bias row is ``result[:, -(p + 1):]``: one slice per
        decoding step instead of a bucket computation.
        """
        distance = torch.arange(max_length - 1, -1, -1, device=self.weight.device)
        bucket = relative_position_bucket(-distance, self.bidirectional, self.num_buckets, self.max_distance)
        return F.embedding(bucket, self.weight).t().contiguous()


# ---------------------------------------------------------------------------------------------- dropout

# Dropout masks from 16-bit slices of 64-bit random integers. torch's CPU dropout draws one random number
# per element through the Bernoulli sampler (~13-16 ms for 2M elements on one core here, 8-13% of a t5-small
# training step); one 64-bit draw gives four masks. The comparison writes the 0/1 mask straight in the
# activation's dtype and addcmul applies mask and scale in one pass (multiplying by a bool mask takes a
# type-promotion path about 4x slower on CPU). The whole dropout costs about a third of torch's; the rate is
# exact to 2^-16.
_SLICES = 4


def _random_words(count: int, device: torch.device | str) -> Tensor:
    """``count`` uniformly random 64-bit words (int64).

    On CPU numpy's SFC64 generator fills them: 1.4 ns a word here against 4.5 for ``torch.randint`` (torch's
    Mersenne Twister, plus a modulo for the full range); in a t5-small training step the random words took
    ~21 ms instead of 33.7. It is seeded by one draw from torch's generator, so ``torch.manual_seed``, saved
    RNG states and activation checkpointing's replay govern the masks exactly as they govern torch's dropout.
    """
    if torch.device(device).type == "cpu" and not torch.compiler.is_compiling():
        seed = int(torch.empty((), dtype=torch.int64).random_())
        return torch.from_numpy(np.random.SFC64(seed).random_raw(count).view(np.int64))
    return torch.empty(count, dtype=torch.int64, device=device).random_(-(2**63), None)


def _random_int16(n: int, device: torch.device | str) -> Tensor:
    return _random_words((n + _SLICES - 1) // _SLICES, device).view(torch.int16)[:n]


def _keep_from(random16: Tensor, p: float, dtype: torch.dtype) -> Tensor:
    threshold = -(2**15) + round(p * 2**16)
    return torch.ge(random16, threshold, out=torch.empty(random16.shape, dtype=dtype, device=random16.device))


def dropout_keep_mask(
    shape: torch.Size | tuple[int, ...],
    p: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Tensor of ``shape`` in ``dtype``: 1 where an element is KEPT (probability 1 - ``p``, to within 2^-16), else 0."""
    return _keep_from(_random_int16(math.prod(shape), device), p, dtype).view(shape)


class _DropoutAdd(torch.autograd.Function):
    """residual + dropout(x) in one ``addcmul``; plain dropout is the case of a zero residual.

    The residual's gradient passes through untouched. Backward keeps the mask in x's dtype: comparing the
    2-byte random words again would halve a float32 mask's memory but costs two more passes (the comparison
    writes a bool temporary, then converts it), ~1% of a t5-small float32 step.
    """

    @staticmethod
    def forward(ctx, residual: Tensor, x: Tensor, p: float) -> Tensor:  # type: ignore[override]
        keep = dropout_keep_mask(x.shape, p, x.dtype, x.device)
        ctx.scale, ctx.x_dtype = 1.0 / (1.0 - p), x.dtype
        ctx.save_for_backward(keep)
        return torch.addcmul(residual, x, keep, value=ctx.scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor, None]:  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        grad_x = torch.addcmul(grad.new_zeros(()), grad, keep, value=ctx.scale).to(ctx.x_dtype)
        return (grad if ctx.needs_input_grad[0] else None), grad_x, None


def _check_rate(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout (kept elements scaled by 1/(1-p)); the identity outside training or at p = 0."""
    if not training or p == 0.0:
        return x
    _check_rate(p)
    return _DropoutAdd.apply(x.new_zeros(()), x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with t5kit's faster mask (same rate, same train/eval switch, no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def add_to(self, residual: Tensor, x: Tensor) -> Tensor:
        """``residual + self(x)`` in one pass over memory (addcmul with the mask) instead of two."""
        if not self.training or self.p == 0.0:
            return residual + x
        _check_rate(self.p)
        return _DropoutAdd.apply(residual, x, self.p)


class _ReluDropoutFeedForward(torch.autograd.Function):
    """wo(dropout(relu(wi x))) for training, in one Function that owns its intermediate.

    - relu and the dropout mask are applied in place on the ``wi`` output, WITHOUT the 1/(1-p) scale; the
      scale rides on the ``wo`` matmuls as their alpha (free) instead of a pass over the output.
    - The activation is > 0 exactly where relu passed and dropout kept, so the backward of both is one
      threshold on it, done in place on the gradient this backward has just made: no mask is stored, no
      random numbers are drawn again, and no third d_ff-wide tensor is allocated.
    - Under autocast the inputs are cast as autocast would cast them for two linear layers.
    """

    @staticmethod
    def forward(ctx, x: Tensor, wi: Tensor, wo: Tensor, p: float) -> Tensor:  # type: ignore[override]
        device = x.device.type
        dtype = _linear_dtype(device, wo.dtype)
        rows, wi_, wo_ = x.reshape(-1, x.shape[-1]).to(dtype), wi.to(dtype), wo.to(dtype)
        scale = 1.0 / (1.0 - p)
        with torch.autocast(device, enabled=False):
            h = torch.mm(rows, wi_.t())
            h.relu_().mul_(dropout_keep_mask(h.shape, p, h.dtype, h.device))
            out = torch.addmm(h.new_zeros(()), h, wo_.t(), beta=0, alpha=scale)
        ctx.save_for_backward(rows, h, wi_, wo_)
        ctx.scale, ctx.dtypes = scale, (x.dtype, wi.dtype, wo.dtype)
        return out.view(*x.shape[:-1], wo.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:  # type: ignore[override]
        rows, h, wi, wo = ctx.saved_tensors
        x_dtype, wi_dtype, wo_dtype = ctx.dtypes
        grad_out = grad.reshape(-1, grad.shape[-1]).to(h.dtype)
        zero = h.new_zeros(())
        grad_wo = None
        if ctx.needs_input_grad[2]:
            grad_wo = torch.addmm(zero, grad_out.t(), h, beta=0, alpha=ctx.scale).to(wo_dtype)
        grad_h = torch.addmm(zero, grad_out, wo, beta=0, alpha=ctx.scale)
        torch.ops.aten.threshold_backward.grad_input(grad_h, h, 0, grad_input=grad_h)  # relu + mask, in place
        grad_x = grad_wi = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad_h, wi).view(*grad.shape[:-1], wi.shape[1]).to(x_dtype)
        if ctx.needs_input_grad[1]:
            grad_wi = torch.mm(grad_h.t(), rows).to(wi_dtype)
        return grad_x, grad_wi, grad_wo, None


def _plain_weights(*layers: nn.Module) -> list[nn.Parameter] | None:
    """The weights of ``layers`` when the training Functions may read them directly, else None.

    Only plain ``nn.Linear`` / ``nn.Embedding`` layers whose weight is a plain Parameter qualify: a wrapped
    layer (an adapter) must run its own forward, a quantized layer has no such weight, FSDP's sharded
    parameters are not Parameters, and torch.compile traces the modules' own path.
    """
    if torch.compiler.is_compiling() or any(type(layer) not in (nn.Linear, nn.Embedding) for layer in layers):
        return None
    weights = [layer.weight for layer in layers]
    return weights if all(type(w) is nn.Parameter for w in weights) else None


def _autocast_input(x: Tensor) -> Tensor:
    """Under autocast, cast an activation once where several linear layers read it (q/k/v, wi_0/wi_1):
    autocast would otherwise cast it again for each, and sum as many float32 gradients in backward."""
    return x.to(_linear_dtype(x.device.type, x.dtype))


def _linear_dtype(device: str, default: torch.dtype) -> torch.dtype:
    """The dtype autocast would run a linear layer in on ``device``; ``default`` when autocast is off."""
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else default


# ---------------------------------------------------------------------------------------------- blocks


class _RMSNorm(torch.autograd.Function):
    """float32 RMS norm for training, with a hand-written backward.

    torch's CPU ``rms_norm`` is a composite (pow, mean, add, rsqrt, two products) and differentiates through
    it. Here the statistic is one ``vector_norm`` (a single read of x, no x**2 temporary), the normalised x
    is kept for backward instead of x, and backward is five passes.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        rstd = norm.square_().div_(x.shape[-1]).add_(eps).rsqrt_()  # 1 / sqrt(mean(x^2) + eps)
        normalized = x * rstd
        ctx.save_for_backward(normalized, weight, rstd)
        return normalized * weight

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        normalized, weight, rstd = ctx.saved_tensors
        grad_normalized = grad * normalized
        grad_weight = grad_normalized.reshape(-1, normalized.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            # d/dx of w * x * rstd: rstd * (w * g - normalized * mean(w * g * normalized))
            correction = torch.matmul(grad_normalized, weight).unsqueeze(-1).mul_(rstd / normalized.shape[-1])
            grad_x = (grad * weight).mul_(rstd).addcmul_(normalized, correction, value=-1)
        return grad_x, grad_weight, None


class RMSNorm(nn.Module):
    """T5's "layer norm": scale only, no mean subtraction, no bias; the statistic in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # torch's fused kernel computes the statistic in float32 for half inputs and rounds the normalised
        # value to the input dtype before the weight multiplies it: bit-identical to the reference's
        # x * rsqrt(mean(x^2) + eps), cast back, times the weight, in fewer passes over memory.
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            if x.dtype == self.weight.dtype:
                return self.weight * F.rms_norm(x, (x.shape[-1],), None, self.eps)
            variance = x.float().pow(2).mean(-1, keepdim=True)
            return self.weight * (x * torch.rsqrt(variance + self.eps)).to(self.weight.dtype)
        if x.dtype == torch.float32 and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return _RMSNorm.apply(x, self.weight, self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight, self.eps)


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
        dtype = _linear_dtype(device, wo.dtype)
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


class Attention(nn.Module):
    """Multi-head attention without biases and without the 1/sqrt(d_kv) scale (folded into the init)."""

    def __init__(self, config: T5Config, has_relative_bias: bool = False, bidirectional: bool = True):
        super().__init__()
        self.num_heads, self.d_kv = config.num_heads, config.d_kv
        inner = config.inner_dim
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.dropout = config.dropout_rate
        self.relative_bias = RelativePositionBias(config, bidirectional) if has_relative_bias else None

    def heads(self, x: Tensor) -> Tensor:
        """[batch, length, heads * d_kv] -> [batch, heads, length, d_kv]"""
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.d_kv).transpose(1, 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        if q.shape[2] == 1 and q.shape[0] <= 4 and not self.training:
            # One query per row (a decoding step, small batch): two small matmuls beat the fused kernel's
            # fixed cost on CPU; the softmax is in float32 as in the fused path.
            scores = torch.matmul(q, k.transpose(-1, -2)) + bias
            out = torch.matmul(scores.float().softmax(-1).to(v.dtype), v)
        elif self.training and self.dropout > 0.0:
            # SDPA's CPU kernels have no dropout, so it falls back to this same sequence, only with the
            # slower Bernoulli mask. The bias is added in place: the matmul's output is fresh and its
            # backward does not need it.
            scores = torch.matmul(q, k.transpose(-1, -2))
            scores = scores.add_(bias) if scores.dtype == bias.dtype else scores + bias
            # torch's bfloat16 softmax accumulates in float32 and rounds once: bit-identical to a float32
            # softmax cast back, without the two casts. float16 keeps the explicit float32 pass.
            probs = scores.softmax(-1) if scores.dtype != torch.float16 else scores.float().softmax(-1).to(v.dtype)
            probs = dropout(probs, self.dropout, True)
            out = torch.matmul(probs, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        out = out.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.num_heads * self.d_kv)
        return self.o(out)

    def _fused_training(self) -> bool:
        """Training with dropout takes :class:`_TrainingAttention`: four plain ``nn.Linear`` layers whose
        parameters share one dtype (not fp16; not quantized, sharded or wrapped layers), not under torch.compile."""
        if not self.training or self.dropout == 0.0 or not torch.is_grad_enabled():
            return False
        _check_rate(self.dropout)
        weights = _plain_weights(self.q, self.k, self.v, self.o)
        return (
            weights is not None
            and len({w.dtype for w in weights}) == 1
            and weights[0].dtype in (torch.float32, torch.bfloat16)
        )

    def forward(self, x: Tensor, bias: Tensor, memory: Tensor | None = None) -> Tensor:
        """Full (uncached) attention of ``x`` over itself, or over ``memory`` for cross-attention."""
        if self._fused_training():
            weights = (self.q.weight, self.k.weight, self.v.weight, self.o.weight)
            return _TrainingAttention.apply(x, memory, bias, *weights, self.num_heads, self.dropout)
        x = _autocast_input(x)
        source = x if memory is None else _autocast_input(memory)
        return self.attend(self.heads(self.q(x)), self.heads(self.k(source)), self.heads(self.v(source)), bias)


class FeedForward(nn.Module):
    """relu: wo(relu(wi x)); gated: wo(act(wi_0 x) * wi_1 x). Dropout after the activation."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.gated = config.is_gated
        if self.gated:
            self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
            self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        else:
            self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = Dropout(config.dropout_rate)
        self.act = _ACTIVATION_FUNCTIONS[config.activation]

    def _fused_relu_dropout(self) -> bool:
        """The relu feed-forward in training takes :class:`_ReluDropoutFeedForward`: plain ``nn.Linear`` layers
        with parameters of one dtype (not fp16's float32 wo; not quantized, sharded or wrapped layers), and not
        under torch.compile."""
        if self.gated or self.act is not F.relu or not self.dropout.training or self.dropout.p == 0.0:
            return False
        _check_rate(self.dropout.p)
        weights = _plain_weights(self.wi, self.wo)
        return weights is not None and weights[0].dtype == weights[1].dtype

    def forward(self, x: Tensor) -> Tensor:
        if self._fused_relu_dropout():
            return _ReluDropoutFeedForward.apply(x, self.wi.weight, self.wo.weight, self.dropout.p)
        if self.gated:
            x = _autocast_input(x)
            h = self.dropout(self.act(self.wi_0(x)) * self.wi_1(x))
        else:
            h = self.dropout(self.act(self.wi(x)))
        wo_dtype = _weight_dtype(self.wo, h.dtype)
        out = self.wo(h.to(wo_dtype))
        if h.dtype != wo_dtype:  # fp16 models keep wo in fp32: its output overflows fp16
            return _clamp_fp16(out, x.dtype)
        return out


def _weight_dtype(linear: nn.Module, default: torch.dtype) -> torch.dtype:
    """The dtype a linear layer takes; int8 dynamically quantized layers (t5kit.quantize) take float32."""
    weight = getattr(linear, "weight", None)
    if isinstance(weight, Tensor):
        return weight.dtype
    return torch.float32 if weight is not None else default


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


_ACTIVATION_FUNCTIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": _gelu_tanh, "silu": F.silu}


def _clamp_fp16(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Keep fp16 activations finite, as the reference does (v1.1/mT5 FFN outputs exceed 65504)."""
    if dtype == torch.float16:
        limit = torch.finfo(torch.float16).max - 1000
        x = x.clamp(-limit, limit)
    return x.to(dtype)


class EncoderLayer(nn.Module):
    def __init__(self, config: T5Config, has_relative_bias: bool):
        super().__init__()
        self.self_attn_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.self_attn = Attention(config, has_relative_bias, bidirectional=True)
        self.ffn_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.ffn = FeedForward(config)
        self.dropout = Dropout(config.dropout_rate)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = _clamp_fp16(self.dropout.add_to(x, self.self_attn(self.self_attn_norm(x), bias)), x.dtype)
        return _clamp_fp16(self.dropout.add_to(x, self.ffn(self.ffn_norm(x))), x.dtype)


class DecoderLayer(nn.Module):
    def __init__(self, config: T5Config, has_relative_bias: bool):
        super().__init__()
        self.self_attn_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.self_attn = Attention(config, has_relative_bias, bidirectional=False)
        self.cross_attn_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.cross_attn = Attention(config)
        self.ffn_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.ffn = FeedForward(config)
        self.dropout = Dropout(config.dropout_rate)

    def forward(self, x: Tensor, self_bias: Tensor, memory: Tensor, cross_bias: Tensor) -> Tensor:
        x = _clamp_fp16(self.dropout.add_to(x, self.self_attn(self.self_attn_norm(x), self_bias)), x.dtype)
        x = _clamp_fp16(self.dropout.add_to(x, self.cross_attn(self.cross_attn_norm(x), cross_bias, memory)), x.dtype)
        return _clamp_fp16(self.dropout.add_to(x, self.ffn(self.ffn_norm(x))), x.dtype)

    def step(self, x: Tensor, cache: DecoderCache, index: int, self_bias: Tensor) -> Tensor:
        """Cached decoding of new positions ``cache.length ..``: writes their keys/values into the cache."""
        attn = self.self_attn
        h = self.self_attn_norm(x)
        start, new = cache.length, x.shape[1]
        k_buf, v_buf = cache.self_k[index], cache.self_v[index]
        k_buf[:, :, start : start + new] = attn.heads(attn.k(h))
        v_buf[:, :, start : start + new] = attn.heads(attn.v(h))
        end = start + new
        out = attn.attend(attn.heads(attn.q(h)), k_buf[:, :, :end], v_buf[:, :, :end], self_bias)
        x = _clamp_fp16(x + self.dropout(out), x.dtype)
        cross = self.cross_attn
        h = self.cross_attn_norm(x)
        q = cross.q(h)
        if cache.beams == 1:
            out = cross.attend(cross.heads(q), cache.cross_k[index], cache.cross_v[index], cache.cross_bias)
        else:  # the beams of an item are the queries of one attention over that item's encoder output
            rows, beams = q.shape[0], cache.beams
            q = q.view(rows // beams, beams * new, cross.num_heads, cross.d_kv).transpose(1, 2)
            out = cross.attend(q, cache.cross_k[index], cache.cross_v[index], cache.cross_bias)
            out = out.view(rows, new, -1)
        x = _clamp_fp16(x + self.dropout(out), x.dtype)
        return _clamp_fp16(x + self.dropout(self.ffn(self.ffn_norm(x))), x.dtype)


# ---------------------------------------------------------------------------------------------- reused memory


def _storage_use_count(storage: torch.UntypedStorage) -> int | None:
    count = getattr(torch._C, "_storage_Use_Count", None)  # private: without it nothing is reused
    return None if count is None else count(storage._cdata)


class RecycledBuffers:
    """The largest tensors of a training step (logits, their gradient, the head's weight gradient) reuse the
    previous step's memory instead of fresh allocations.

    torch's CPU allocator hands blocks of this size straight back to the operating system, and the next
    step faults them in again page by page: a fresh 64 MB matmul output (t5-small's vocab x d_model weight
    gradient) costs ~14 ms more than a reused one here, and these three tensors were ~32k of the ~40k page
    faults of a t5-small step. Measured on the whole step: ~1.5% together with the faster dropout words.

    A buffer is handed out again only when nothing but this pool refers to its storage (its use count is 1):
    a tensor that a caller kept (``output.logits``, a ``.grad`` not yet zeroed to None) is never written
    over; a new buffer is allocated instead. One pool per model; not for two forward passes running at
    once in two threads.
    """

    def __init__(self) -> None:
        self._storages: dict[str, torch.UntypedStorage] = {}

    def empty(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor for ``name``: last step's memory when it is free and the right size."""
        storage = self._storages.get(name)
        nbytes = math.prod(shape) * dtype.itemsize
        if (
            storage is not None
            and storage.device == device
            and storage.nbytes() == nbytes
            and _storage_use_count(storage) == 1
        ):
            return torch.empty(0, dtype=dtype, device=device).set_(storage, 0, shape)
        tensor = torch.empty(shape, dtype=dtype, device=device)
        self._storages[name] = tensor.untyped_storage()
        return tensor

    def clear(self) -> None:
        self._storages.clear()

    def __deepcopy__(self, memo: dict) -> RecycledBuffers:  # a copied model starts with its own, empty pool
        return RecycledBuffers()

    def __getstate__(self) -> dict:
        return {"_storages": {}}


# ---------------------------------------------------------------------------------------------- the loss

_LOSS_ROWS = 16  # rows of logits per pass: 16 x 32128 float32 is 2 MB, which stays in cache


class _CrossEntropy(torch.autograd.Function):
    """Token-mean cross entropy over rows of logits, label -100 ignored, in float32 whatever the logits' dtype.

    ``F.cross_entropy`` writes a log-softmax as large as the logits in forward, and in backward a zero-filled
    one-hot gradient plus a third such tensor (each a fresh 33 MB for t5-small's batch, page faults
    included, and a float32 copy of bf16 logits first). Here the forward keeps one log-sum-exp per row and
    the backward writes the gradient once, softmax minus one-hot, a few cache-sized rows at a time.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, buffers: RecycledBuffers | None) -> Tensor:  # type: ignore[override]
        ctx.buffers = buffers
        valid = labels != -100
        targets = torch.where(valid, labels, 0)
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], _LOSS_ROWS):
            lse[start : start + _LOSS_ROWS] = torch.logsumexp(logits[start : start + _LOSS_ROWS].float(), -1)
        target_logits = logits.gather(1, targets[:, None]).squeeze(1).float()
        count = valid.sum()
        ctx.save_for_backward(logits, lse, targets, valid, count)
        return ((lse - target_logits) * valid).sum() / count  # no valid label: 0 / 0 = nan, as torch gives

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        logits, lse, targets, valid, count = ctx.saved_tensors
        row_scale = valid * (grad_loss.float() / count)  # d loss / d (per-row loss); 0 on ignored rows
        if ctx.buffers is not None and logits.is_contiguous():
            grad = ctx.buffers.empty("logits_grad", tuple(logits.shape), logits.dtype, logits.device)
        else:
            grad = torch.empty_like(logits)
        rows = torch.arange(logits.shape[0], device=logits.device)
        for start in range(0, logits.shape[0], _LOSS_ROWS):
            end = min(start + _LOSS_ROWS, logits.shape[0])
            out = grad[start:end]
            work = out if out.dtype == torch.float32 else torch.empty(out.shape, device=out.device)
            torch.sub(logits[start:end], lse[start:end, None], out=work)
            work.exp_().mul_(row_scale[start:end, None])  # softmax x scale
            work[rows[: end - start], targets[start:end]] -= row_scale[start:end]  # minus one-hot x scale
            if work is not out:
                out.copy_(work)
        return grad, None, None


def cross_entropy(logits: Tensor, labels: Tensor, buffers: RecycledBuffers | None = None) -> Tensor:
    """Mean cross entropy of ``logits`` [N, vocab] against ``labels`` [N] (-100 = ignore), float32.

    With ``buffers`` the gradient of the logits reuses the previous step's memory (:class:`RecycledBuffers`).
    """
    if torch.compiler.is_compiling():
        return F.cross_entropy(logits.float(), labels, ignore_index=-100)
    return _CrossEntropy.apply(logits, labels, buffers)


# ---------------------------------------------------------------------------------------------- the model


class TiedGradient:
    """Hands the tied head's dense weight gradient to the embedding's backward, which adds its rows in place.

    Without it the tied weight gets two gradients that autograd sums out of place: a dense vocab x d_model
    matrix from the head and another, zero-filled and scattered into, from the lookup (64 MB each for
    t5-small, plus the sum's 64 MB). The head's backward always runs before the lookup's (the lookup's
    output feeds everything the head reads), so the lookup finds the head's gradient ready; when the loss
    never reaches the head (say, a loss on the encoder output alone) it starts from zeros, as usual. One
    per forward pass.
    """

    def __init__(self) -> None:
        self.dense: Tensor | None = None

    def take(self) -> Tensor | None:
        dense, self.dense = self.dense, None
        return dense


class _Head(torch.autograd.Function):
    """``hidden @ weight.T`` in training: logits and weight gradient in :class:`RecycledBuffers`, and a tied
    weight's gradient handed to a :class:`TiedGradient` instead of autograd."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, tied: TiedGradient | None, buffers: RecycledBuffers) -> Tensor:  # type: ignore[override]
        device = hidden.device.type
        dtype = _linear_dtype(device, weight.dtype)
        h, w = hidden.to(dtype), weight.to(dtype)  # what autocast would do to a linear layer's inputs
        ctx.save_for_backward(h, w)
        ctx.tied, ctx.buffers, ctx.hidden_dtype, ctx.weight_dtype = tied, buffers, hidden.dtype, weight.dtype
        rows = h.reshape(-1, h.shape[-1])
        logits = buffers.empty("logits", (rows.shape[0], w.shape[0]), dtype, h.device)
        with torch.autocast(device, enabled=False):
            torch.mm(rows, w.t(), out=logits)
        return logits.view(*h.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        h, w = ctx.saved_tensors
        grad = grad.to(w.dtype).reshape(-1, w.shape[0])
        grad_hidden = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (grad @ w).view(h.shape).to(ctx.hidden_dtype)
        if ctx.needs_input_grad[1]:
            rows = h.reshape(-1, h.shape[-1])
            weight_grad = ctx.buffers.empty("head_weight_grad", tuple(w.shape), ctx.weight_dtype, w.device)
            if w.dtype == ctx.weight_dtype:
                torch.mm(grad.t(), rows, out=weight_grad)
            else:  # autocast: the product in the low precision, the gradient in the weight's
                weight_grad.copy_(grad.t().mm(rows))
            if ctx.tied is not None:
                ctx.tied.dense = weight_grad
            else:
                grad_weight = weight_grad
        return grad_hidden, grad_weight, None, None


class _TiedEmbedding(torch.autograd.Function):
    """Embedding lookup whose backward adds its rows into the head's gradient (see :class:`TiedGradient`)."""

    @staticmethod
    def forward(ctx, ids: Tensor, weight: Tensor, tied: TiedGradient) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(ids)
        ctx.tied, ctx.weight_shape, ctx.weight_dtype = tied, weight.shape, weight.dtype
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:  # type: ignore[override]
        (ids,) = ctx.saved_tensors
        dense = ctx.tied.take()
        if dense is None:
            dense = torch.zeros(ctx.weight_shape, dtype=ctx.weight_dtype, device=grad.device)
        dense.index_add_(0, ids.reshape(-1), grad.reshape(-1, dense.shape[1]).to(dense.dtype))
        return None, dense, None


@dataclass
class Seq2SeqOutput:
    logits: Tensor
    loss: Tensor | None = None
    encoder_hidden_states: Tensor | None = None


def padding_bias(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[batch, length] 1/0 mask -> [batch, 1, 1, length] additive bias (0 where kept, dtype's min where masked)."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def segment_bias(query_segments: Tensor, key_segments: Tensor, causal: bool = False) -> Tensor:
    """[batch, 1, q, k] additive mask for packed rows: attend only within the same example (segment id > 0)."""
    allowed = (query_segments[:, :, None] == key_segments[:, None, :]) & (key_segments[:, None, :] > 0)
    if causal:
        q, k = query_segments.shape[1], key_segments.shape[1]
        allowed = allowed & torch.ones(q, k, dtype=torch.bool, device=allowed.device).tril()
    return (~allowed)[:, None].to(torch.float32) * torch.finfo(torch.float32).min


class Packing(NamedTuple):
    """Segment ids (1, 2, ... per packed example, 0 = padding) and positions within each example."""

    encoder_segment_ids: Tensor
    encoder_positions: Tensor
    decoder_segment_ids: Tensor
    decoder_positions: Tensor


def bias_in(bias: Tensor, dtype: torch.dtype) -> Tensor:
    """An additive bias built in float32, in the activations' dtype (masked entries stay finite in fp16)."""
    if dtype == torch.float16:
        bias = bias.clamp(min=torch.finfo(torch.float16).min)
    return bias.to(dtype)


def shift_right(labels: Tensor, decoder_start_token_id: int = 0, pad_token_id: int = 0) -> Tensor:
    """Decoder inputs from labels: start token in front, last label dropped, -100 replaced by pad."""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


class Encoder(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        per_layer = config.per_layer_position_bias
        self.layers = nn.ModuleList(EncoderLayer(config, per_layer or i == 0) for i in range(config.num_layers))
        self.final_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = Dropout(config.dropout_rate)

    def forward(self, embeddings: Tensor, attention_mask: Tensor, packing: Packing | None = None) -> Tensor:
        x = self.dropout(embeddings)
        length = x.shape[1]
        if packing is None:
            mask = padding_bias(attention_mask, torch.float32)
        else:
            segments, positions = packing.encoder_segment_ids, packing.encoder_positions
            mask = segment_bias(segments, segments)
        bias = None
        for layer in self.layers:
            table = layer.self_attn.relative_bias
            if table is not None:  # first layer (T5) or every layer (UMT5)
                position_bias = table(length, length) if packing is None else table.between(positions, positions)
                bias = bias_in(position_bias + mask, x.dtype)
            x = layer(x, bias)
        return self.dropout(self.final_norm(x))


class Decoder(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        per_layer = config.per_layer_position_bias
        self.layers = nn.ModuleList(
            DecoderLayer(config, per_layer or i == 0) for i in range(config.num_decoder_layers)
        )
        self.final_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = Dropout(config.dropout_rate)

    def forward(
        self, embeddings: Tensor, memory: Tensor, memory_mask: Tensor, attention_mask: Tensor | None = None,
        packing: Packing | None = None,
    ) -> Tensor:
        x = self.dropout(embeddings)
        length = x.shape[1]
        if packing is None:
            causal = torch.full((length, length), torch.finfo(torch.float32).min, device=x.device).triu(1)
            mask = causal[None, None]
            if attention_mask is not None:
                mask = mask + padding_bias(attention_mask, torch.float32)
            cross_bias = bias_in(padding_bias(memory_mask, torch.float32), x.dtype)
        else:
            segments, positions = packing.decoder_segment_ids, packing.decoder_positions
            mask = segment_bias(segments, segments, causal=True)
            cross_bias = bias_in(segment_bias(segments, packing.encoder_segment_ids), x.dtype)
        bias = None
        for layer in self.layers:
            table = layer.self_attn.relative_bias
            if table is not None:
                position_bias = table(length, length) if packing is None else table.between(positions, positions)
                bias = bias_in(position_bias + mask, x.dtype)
            x = layer(x, bias, memory, cross_bias)
        return self.dropout(self.final_norm(x))

    def step(self, embeddings: Tensor, cache: DecoderCache) -> Tensor:
        """Decode new positions with the cache (advances ``cache.length``)."""
        x = self.dropout(embeddings)
        start, new = cache.length, x.shape[1]
        end = start + new
        if end > cache.max_length:
            raise ValueError(f"decoder cache holds {cache.max_length} positions; step would reach {end}")
        if new > 1:  # several positions at once: causal mask among them
            causal = torch.full((new, end), torch.finfo(torch.float32).min, device=x.device).triu(start + 1)
        bias = None
        per_layer = len(cache.self_bias_by_distance) > 1
        for i, layer in enumerate(self.layers):
            if i == 0 or per_layer:
                if new == 1:
                    bias = cache.self_bias_by_distance[i if per_layer else 0][None, :, None, -end:]
                else:
                    bias = bias_in(layer.self_attn.relative_bias(new, end, query_offset=start) + causal, x.dtype)
            x = layer.step(x, cache, i, bias)
        cache.length = end
        return self.dropout(self.final_norm(x))


class T5Model(nn.Module):
    """T5 encoder-decoder with a language-model head.

    ``forward`` is the teacher-forced pass used in training; ``encode`` gives the encoder's hidden states
    (useful as text embeddings); ``new_cache`` + ``decode_step`` are the incremental path that generation
    builds on.
    """

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight
        self._recycled = RecycledBuffers()  # training's largest per-step tensors, reused from step to step
        self.reset_parameters()

    def train(self, mode: bool = True) -> T5Model:
        if not mode:  # evaluation and generation do not use the pool: give its memory back
            self._recycled.clear()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):  # .to(), .half(), ...: buffers of the old device or dtype go
        self._recycled.clear()
        return super()._apply(fn, recurse)

    # --------------------------------------------------------------------------------- construction
    @classmethod
    def from_preset(cls, name: str, **overrides) -> T5Model:
        return cls(T5Config.from_preset(name, **overrides))

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str, dtype: torch.dtype | str | None = None, **kwargs) -> T5Model:
        """Load a Hugging Face layout checkpoint (directory or hub repo id); see ``t5kit.checkpoint``."""
        from t5kit.checkpoint import load_model

        return load_model(path_or_repo_id, dtype=dtype, **kwargs)

    def save_pretrained(self, directory: str, max_shard_size: int | str | None = None) -> None:
        """Write config.json and model.safetensors (sharded above ``max_shard_size``) atomically."""
        from t5kit.checkpoint import save_model

        save_model(self, directory, max_shard_size=max_shard_size)

    @property
    def tied(self) -> bool:
        return self.lm_head.weight is self.shared.weight

    def untie(self) -> None:
        """Give the head its own copy of the embedding matrix."""
        if self.tied:
            self.lm_head.weight = nn.Parameter(self.shared.weight.detach().clone())
            self.config.tie_word_embeddings = False
            if self.config.scale_decoder_outputs is None:
                self.config.scale_decoder_outputs = True

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's initialisation (Mesh TensorFlow's), scaled by ``initializer_factor``."""
        c = self.config
        f = c.initializer_factor
        nn.init.normal_(self.shared.weight, std=f * 1.0)
        if not self.tied:
            nn.init.normal_(self.lm_head.weight, std=f * 1.0)
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.weight.fill_(f * 1.0)
            elif isinstance(module, Attention):
                nn.init.normal_(module.q.weight, std=f * (c.d_model * c.d_kv) ** -0.5)
                nn.init.normal_(module.k.weight, std=f * c.d_model**-0.5)
                nn.init.normal_(module.v.weight, std=f * c.d_model**-0.5)
                nn.init.normal_(module.o.weight, std=f * c.inner_dim**-0.5)
                if module.relative_bias is not None:
                    nn.init.normal_(module.relative_bias.weight, std=f * c.d_model**-0.5)
            elif isinstance(module, FeedForward):
                for name in ("wi", "wi_0", "wi_1"):
                    if hasattr(module, name):
                        nn.init.normal_(getattr(module, name).weight, std=f * c.d_model**-0.5)
                nn.init.normal_(module.wo.weight, std=f * c.d_ff**-0.5)

    def set_dtype(self, dtype: torch.dtype) -> T5Model:
        """Cast to ``dtype``; in float16 the feed-forward output projections stay float32 (overflow)."""
        self.to(dtype)
        if dtype == torch.float16:
            for module in self.modules():
                if isinstance(module, FeedForward):
                    module.wo.float()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.shared.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.shared.weight.device

    def num_parameters(self, unique: bool = True) -> int:
        params = self.parameters() if unique else (p for _, p in self.named_parameters(remove_duplicate=False))
        return sum(p.numel() for p in params)

    # --------------------------------------------------------------------------------- passes
    def _check_ids(self, ids: Tensor, name: str) -> None:
        if ids.dim() != 2:
            raise ValueError(f"{name} must have shape [batch, length], got {tuple(ids.shape)}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(
                f"{name} holds ids outside [0, {self.config.vocab_size}): min {int(ids.min())}, max {int(ids.max())}; "
                "was the text encoded with this model's tokenizer?"
            )

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Encoder hidden states [batch, length, d_model] (after the final norm)."""
        self._check_ids(input_ids, "input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.encoder(self.shared(input_ids), attention_mask)

    def _trains_in_eager(self, *layers: nn.Module) -> bool:
        """Whether the weights of ``layers`` get a gradient from this pass in plain eager training: the head and
        the tied lookup then take the hand-written paths above (see :func:`_plain_weights`)."""
        if not self.training or not torch.is_grad_enabled():
            return False
        weights = _plain_weights(*layers)
        return weights is not None and all(w.requires_grad for w in weights)

    def _tied_gradient(self) -> TiedGradient | None:
        """A :class:`TiedGradient` when training a tied model in plain eager mode, else None."""
        return TiedGradient() if self.tied and self._trains_in_eager(self.shared, self.lm_head) else None

    def _embed(self, ids: Tensor, tied: TiedGradient | None) -> Tensor:
        return self.shared(ids) if tied is None else _TiedEmbedding.apply(ids, self.shared.weight, tied)

    def lm_logits(self, decoder_hidden: Tensor, tied: TiedGradient | None = None) -> Tensor:
        if self.config.rescale_decoder_output:
            decoder_hidden = decoder_hidden * (self.config.d_model**-0.5)
        if tied is not None or self._trains_in_eager(self.lm_head):
            return _Head.apply(decoder_hidden, self.lm_head.weight, tied, self._recycled)
        return self.lm_head(decoder_hidden.to(_weight_dtype(self.lm_head, decoder_hidden.dtype)))

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        labels: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_segment_ids: Tensor | None = None,
        encoder_positions: Tensor | None = None,
        decoder_segment_ids: Tensor | None = None,
        decoder_positions: Tensor | None = None,
    ) -> Seq2SeqOutput:
        """Teacher-forced pass. With ``labels`` and no decoder inputs, the labels are shifted right.

        Returns logits [batch, target_length, vocab] and, with labels, the token-mean cross entropy
        (label -100 ignored), computed in float32.

        Packed rows (several short examples per row, as ``t5kit.data.Collator(pack=True)`` makes them) pass
        the four ``*_segment_ids`` / ``*_positions`` tensors and their own ``decoder_input_ids``: attention
        then stays within each example and relative positions restart at each, so a packed example gets
        the same outputs as it would alone.
        """
        packing = None
        packed = (encoder_segment_ids, encoder_positions, decoder_segment_ids, decoder_positions)
        given = [t is not None for t in packed]
        if any(given):
            if not all(given) or decoder_input_ids is None:
                raise ValueError("packed batches need encoder_segment_ids, encoder_positions, decoder_segment_ids, "
                                 "decoder_positions and decoder_input_ids together")
            packing = Packing(encoder_segment_ids, encoder_positions, decoder_segment_ids, decoder_positions)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("forward needs decoder_input_ids or labels")
            decoder_input_ids = shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)
        self._check_ids(decoder_input_ids, "decoder_input_ids")
        decoder_embeddings = None
        tied = self._tied_gradient()
        if encoder_hidden_states is None:
            if input_ids is None:
                raise ValueError("forward needs input_ids (or encoder_hidden_states)")
            self._check_ids(input_ids, "input_ids")
            if packing is not None:
                attention_mask = (encoder_segment_ids > 0).long()
            elif attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            # One lookup for both sides: the embedding's backward then fills and scatters into one dense
            # vocab x d_model gradient instead of two that autograd must add up.
            n = input_ids.numel()
            both = self._embed(torch.cat((input_ids.reshape(-1), decoder_input_ids.reshape(-1))), tied)
            encoder_embeddings = both[:n].view(*input_ids.shape, -1)
            decoder_embeddings = both[n:].view(*decoder_input_ids.shape, -1)
            encoder_hidden_states = self.encoder(encoder_embeddings, attention_mask, packing)
        if attention_mask is None:
            attention_mask = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.long,
                                        device=encoder_hidden_states.device)
        if decoder_embeddings is None:
            decoder_embeddings = self._embed(decoder_input_ids, tied)
        hidden = self.decoder(decoder_embeddings, encoder_hidden_states, attention_mask,
                              decoder_attention_mask, packing)
        logits = self.lm_logits(hidden, tied)
        loss = None
        if labels is not None:
            buffers = self._recycled if self.training and torch.is_grad_enabled() else None
            loss = cross_entropy(logits.flatten(0, 1), labels.flatten(), buffers)
        return Seq2SeqOutput(logits=logits, loss=loss, encoder_hidden_states=encoder_hidden_states)

    # --------------------------------------------------------------------------------- incremental decoding
    def new_cache(
        self, encoder_hidden_states: Tensor, attention_mask: Tensor | None = None, max_length: int = 512
    ) -> DecoderCache:
        """A cache for decoding up to ``max_length`` decoder positions against these encoder states.

        Cross-attention keys/values are computed here, once.
        """
        batch, source_length, _ = encoder_hidden_states.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, source_length, dtype=torch.long, device=encoder_hidden_states.device)
        c = self.config
        dtype = self.dtype
        shape = (batch, c.num_heads, max_length, c.d_kv)
        layers = self.decoder.layers
        cross_k, cross_v = [], []
        for layer in layers:
            cross = layer.cross_attn
            cross_k.append(cross.heads(cross.k(encoder_hidden_states)))
            cross_v.append(cross.heads(cross.v(encoder_hidden_states)))
        tables = [layer.self_attn.relative_bias for layer in layers if layer.self_attn.relative_bias is not None]
        return DecoderCache(
            self_k=[torch.empty(shape, dtype=dtype, device=self.device) for _ in layers],
            self_v=[torch.empty(shape, dtype=dtype, device=self.device) for _ in layers],
            cross_k=cross_k,
            cross_v=cross_v,
            cross_bias=bias_in(padding_bias(attention_mask, torch.float32), dtype),
            self_bias_by_distance=[t.by_distance(max_length).to(dtype) for t in tables],
        )

    def decode_step(self, decoder_input_ids: Tensor, cache: DecoderCache) -> Tensor:
        """Logits [batch, new, vocab] for the new decoder positions; the cache grows by ``new``."""
        hidden = self.decoder.step(self.shared(decoder_input_ids), cache)
        return self.lm_logits(hidden)

    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, **options):
        """Greedy, sampled or beam-search generation: see :func:`t5kit.generate.generate` for the options.

        Imported lazily: the layering is config -> model -> generate, and the model never needs it.
        """
        from t5kit.generate import generate

        return generate(self, input_ids, attention_mask, **options)
