"""t5kit's attention kernel for decoding steps (attention.c through InferenceAttention.attend) against float64,
within a rounding-error bound derived below, and the plain path wherever its conditions do not hold."""

from __future__ import annotations

import pytest
import torch

from t5kit import T5Config
from t5kit.kernels import install
from t5kit.kernels.inference import native
from t5kit.kernels.inference.attention import SMALL_QUERIES, InferenceAttention
from t5kit.model import Attention

U = 2.0**-24
needs_kernels = pytest.mark.skipif(native.library() is None, reason=f"kernels not built: {native.unavailable()}")


def reference_and_bound(q, k, v, bias):
    """The float64 result [B, Q, H*D] and an elementwise bound on a float32 computation's error.

    Scores q.k: float32 sums of d products, error <= gamma_(d+1) sum |q||k| (Higham 3.1; +1 for the bias add);
    e^(s - max) then moves by that error relatively, twice (s and the max), plus ~2 ulps for exp and 1 for the
    normalising product; the weighted sum of L values adds gamma_L relatively to sum p |v|. Doubled for slack in
    exp's polynomial (Cephes's, ~1 ulp)."""
    q64, k64, v64 = q.double(), k.double(), v.double()
    b64 = 0 if bias is None else bias.double()
    d, keys = q.shape[-1], k.shape[2]
    p = torch.softmax(q64 @ k64.transpose(-1, -2) + b64, dim=-1)
    exact = p @ v64
    gamma = lambda n: n * U / (1 - n * U)  # noqa: E731
    score_error = gamma(d + 1) * (q64.abs() @ k64.abs().transpose(-1, -2)).amax(-1, keepdim=True)
    relative = 2 * score_error + 3 * U
    bound = 2 * ((relative + gamma(keys + 1)) * (p @ v64.abs()) + U * exact.abs())
    flat = lambda t: t.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)  # noqa: E731
    return flat(exact), flat(bound)


@needs_kernels
@pytest.mark.parametrize("batch,heads,queries,keys,d", [
    (1, 8, 1, 64, 64), (3, 4, 1, 17, 72), (2, 3, 4, 9, 12), (16, 2, 1, 130, 8), (1, 2, 16, 5, 3)])
@pytest.mark.parametrize("bias_kind", ["position", "padding", "none"])
def test_the_kernel_is_within_its_bound_for_cache_views_and_broadcast_biases(batch, heads, queries, keys, d,
                                                                            bias_kind):
    torch.manual_seed(keys * 31 + d)
    q = torch.randn(batch, heads, queries, d)
    buffer = torch.randn(2, batch, heads, keys + 7, d) * 2  # a cache: keys and values are views of a longer buffer
    k, v = buffer[0, :, :, :keys], buffer[1, :, :, :keys]
    if bias_kind == "position":  # [1, H, 1, L]: a slice of the table by distance, broadcast over rows and queries
        bias = torch.randn(heads, keys + 20)[None, :, None, -keys:] * 3
    elif bias_kind == "padding":  # [B, 1, 1, L]: the dtype's min over padded keys, as t5kit's masks do
        bias = torch.zeros(batch, 1, 1, keys)
        bias[0, ..., keys // 2:] = torch.finfo(torch.float32).min
    else:
        bias = None
    out = native.attention(native.library(), q, k, v, bias)
    exact, bound = reference_and_bound(q, k, v, bias)
    assert out.shape == (batch, queries, heads * d)
    assert ((out.double() - exact).abs() <= bound).all(), (out.double() - exact).abs().max().item()


@needs_kernels
def test_the_bound_is_tight_enough_to_fail_a_wrong_kernel():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 1, 32), torch.randn(1, 4, 20, 32), torch.randn(1, 4, 20, 32)
    bias = torch.randn(1, 4, 1, 20)
    exact, bound = reference_and_bound(q, k, v, bias)
    rounded = native.attention(native.library(), q.bfloat16().float(), k, v, bias)  # q rounded to bf16
    assert not ((rounded.double() - exact).abs() <= bound).all()
    no_bias = native.attention(native.library(), q, k, v, None)
    assert not ((no_bias.double() - exact).abs() <= bound).all()


def attention_layer(cross: bool) -> Attention:
    config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    torch.manual_seed(1)
    layer = Attention(config, has_relative_bias=not cross, bidirectional=False, cross=cross)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return install(layer, "inference").eval()  # training with dropout takes the plain path


@needs_kernels
def test_decoding_queries_take_the_kernel_and_the_rest_the_plain_path(monkeypatch):
    layer = attention_layer(cross=False)
    assert isinstance(layer, InferenceAttention)
    calls = []
    real = native.attention
    monkeypatch.setattr(native, "attention", lambda *a: calls.append(a[1].shape) or real(*a))
    q, k, v = torch.randn(2, 4, 1, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    bias = torch.randn(1, 4, 1, 6)
    plain = Attention.attend(layer, q, k, v, bias)
    with torch.no_grad():
        layer.attend(q, k, v, bias)  # not a decoding step (a forward without a cache): the plain path
        assert calls == []
        fast = layer.attend(q, k, v, bias, step=True)  # as forward() with a cache calls it
    assert calls == [(2, 4, 1, 8)]
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    calls.clear()
    many = torch.randn(2, 4, SMALL_QUERIES + 1, 8)  # a prompt: scaled_dot_product_attention
    with torch.no_grad():
        layer.attend(many, k, v, bias, step=True)
        long = native.library().max_keys + 1  # more keys than the kernel's score buffer
        layer.attend(q, torch.randn(2, 4, long, 8), torch.randn(2, 4, long, 8), None, step=True)
    grad_q = q.clone().requires_grad_()
    layer.attend(grad_q, k, v, bias, step=True).sum().backward()  # autograd records: the plain path, with gradients
    assert calls == [] and grad_q.grad is not None
