"""The layers of T5, each with one plain eager path (T5_SPEC.md is the reference).

RMS norm computed in float32, relative position buckets instead of absolute positions, attention without
biases and without the 1/sqrt(d_kv) scale (folded into the initialisation), relu or gated-GELU
feed-forward. Nothing here is tuned for a device: the CPU fast paths live in :mod:`t5kit.kernels`, which
swaps these classes for subclasses after construction and falls back to the computation written here
whenever its own conditions do not hold.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t5kit.config import T5Config
from t5kit.model.cache import DecoderCache

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
        # Zeros, not torch.empty: a layer built on its own (tests, adapters) must not read uninitialised memory
        # (an empty table held NaN in ~3% of constructions here); T5Model.reset_parameters draws the paper's init.
        self.weight = nn.Parameter(torch.zeros(config.relative_attention_num_buckets, config.num_heads))

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
        decoding step instead of a bucket computation (the decoder cache keeps it).
        """
        distance = torch.arange(max_length - 1, -1, -1, device=self.weight.device)
        bucket = relative_position_bucket(-distance, self.bidirectional, self.num_buckets, self.max_distance)
        return F.embedding(bucket, self.weight).t().contiguous()


# ---------------------------------------------------------------------------------------------- small parts


def check_dropout_rate(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")


class Dropout(nn.Dropout):
    """``nn.Dropout`` plus :meth:`add_to`, the residual connection every sublayer ends with.

    Outside training it is the identity, returned without a call into torch: a t5-small decoding step makes
    26 such calls, and going through ``F.dropout`` cost ~3% of a greedy batch-1 step (cProfile, Intel Xeon).
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        check_dropout_rate(self.p)
        return super().forward(x)

    def add_to(self, residual: Tensor, x: Tensor) -> Tensor:
        """``residual + dropout(x)``."""
        return residual + self.forward(x)


def clamp_fp16(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Keep fp16 activations finite, as the reference does (v1.1/mT5 FFN outputs exceed 65504)."""
    if dtype == torch.float16:
        limit = torch.finfo(torch.float16).max - 1000
        x = x.clamp(-limit, limit)
    return x.to(dtype)


def linear_dtype(device: str, default: torch.dtype) -> torch.dtype:
    """The dtype autocast would run a linear layer in on ``device``; ``default`` when autocast is off."""
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else default


def int8_row_scales(weight: Tensor) -> Tensor:
    """Symmetric per-output-row int8 scales of ``weight`` [out, in]: ``max |w_row| / 127``, 1 for a zero row
    (float32). The one rule of t5kit's int8 inference copies and of a frozen base stored in int8."""
    scale = weight.detach().float().abs().amax(1) / 127
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def weight_dtype(linear: nn.Module, default: torch.dtype) -> torch.dtype:
    """The dtype a linear layer takes; int8 dynamically quantized layers (no weight tensor) take float32, and
    a layer that stores its weight compactly and widens it per call names that dtype (``compute_dtype``)."""
    compute = getattr(linear, "compute_dtype", None)
    if isinstance(compute, torch.dtype):
        return compute
    weight = getattr(linear, "weight", None)
    if isinstance(weight, Tensor):
        return weight.dtype
    return torch.float32 if weight is not None else default


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
        return F.rms_norm(x.to(self.weight.dtype), (x.shape[-1],), self.weight, self.eps)  # float32 (or float64)


# ---------------------------------------------------------------------------------------------- attention


class Attention(nn.Module):
    """Multi-head attention without biases and without the 1/sqrt(d_kv) scale (folded into the init).

    ``cross=True`` is the decoder's attention over the encoder output. With a :class:`DecoderCache`, self
    attention appends this call's keys/values to the cache and attends over everything written so far;
    cross attention reads the keys/values the cache computed once from the encoder output.
    """

    def __init__(self, config: T5Config, has_relative_bias: bool = False, bidirectional: bool = True,
                 cross: bool = False):
        super().__init__()
        self.num_heads, self.d_kv, self.cross = config.num_heads, config.d_kv, cross
        inner = config.inner_dim
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.dropout = Dropout(config.dropout_rate)  # on the attention probabilities
        self.relative_bias = RelativePositionBias(config, bidirectional) if has_relative_bias else None

    def heads(self, x: Tensor) -> Tensor:
        """[batch, length, heads * d_kv] -> [batch, heads, length, d_kv]"""
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.d_kv).transpose(1, 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, step: bool = False) -> Tensor:
        """softmax(q k^T + bias) v over heads [batch, heads, length, d_kv], then the output projection.

        ``step``: this is a decoding step (a forward with a cache). The computation is the same either way;
        an inference subclass may attend through a kernel made for that case."""
        p = self.dropout.p if self.training else 0.0
        if p:
            check_dropout_rate(p)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, scale=1.0)
        out = out.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.num_heads * self.d_kv)
        return self.o(out)

    def forward(self, x: Tensor, bias: Tensor, memory: Tensor | None = None, cache: DecoderCache | None = None,
                layer: int = 0) -> Tensor:
        """Attention of ``x`` over itself, or (cross) over ``memory`` / the cache's encoder keys and values."""
        q = self.q(x)
        if cache is None:
            source = x if memory is None else memory
            return self.attend(self.heads(q), self.heads(self.k(source)), self.heads(self.v(source)), bias)
        if not self.cross:
            k, v = cache.update(layer, self.heads(self.k(x)), self.heads(self.v(x)))
            return self.attend(self.heads(q), k, v, bias, step=True)
        k, v = cache.cross_k[layer], cache.cross_v[layer]
        if cache.beams == 1:
            return self.attend(self.heads(q), k, v, cache.cross_bias, step=True)
        # The beams of an item are the queries of one attention over that item's encoder output: the cross
        # keys/values are stored once per item, never copied per beam.
        rows, new = q.shape[0], q.shape[1]
        q = q.view(rows // cache.beams, cache.beams * new, self.num_heads, self.d_kv).transpose(1, 2)
        return self.attend(q, k, v, cache.cross_bias, step=True).view(rows, new, -1)


# ---------------------------------------------------------------------------------------------- feed-forward


def gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": gelu_tanh, "silu": F.silu}


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
        self.act = ACTIVATIONS[config.activation]

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            h = self.dropout(self.act(self.wi_0(x)) * self.wi_1(x))
        else:
            h = self.dropout(self.act(self.wi(x)))
        wo_dtype = weight_dtype(self.wo, h.dtype)
        out = self.wo(h.to(wo_dtype))
        if h.dtype != wo_dtype:  # fp16 models keep wo in fp32: its output overflows fp16
            return clamp_fp16(out, x.dtype)
        return out
