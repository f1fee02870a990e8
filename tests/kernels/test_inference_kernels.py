"""The inference fast paths against the plain computations they replace."""

from __future__ import annotations

import pytest
import torch

from t5kit.kernels.inference.norm import InferenceRMSNorm
from t5kit.model import RMSNorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_inference_rms_norm_is_bit_identical_to_the_plain_norm(dtype):
    """Same arithmetic in the same order, so no tolerance: every bit equal, for rows of many magnitudes."""
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 1, 512), (16, 1, 512), (3, 7, 768), (2, 5, 100)]:
        plain = RMSNorm(shape[-1], eps=1e-6)
        with torch.no_grad():
            plain.weight.copy_(torch.randn(shape[-1], generator=g) * 2)
        plain = plain.to(dtype)
        fast = RMSNorm(shape[-1], eps=1e-6).to(dtype)
        fast.load_state_dict(plain.state_dict())
        fast.__class__ = InferenceRMSNorm
        scale = torch.logspace(-3, 3, shape[0])[:, None, None]  # tiny to large rows
        x = (torch.randn(shape, generator=g) * scale).to(dtype)
        with torch.no_grad():
            expected, got = plain(x), fast(x)
        assert got.dtype == expected.dtype == dtype
        assert torch.equal(got, expected), (dtype, shape)
    with torch.inference_mode():
        assert torch.equal(fast(x), plain(x))


def test_inference_rms_norm_leaves_autograd_and_mixed_dtypes_to_the_plain_norm():
    fast = RMSNorm(8)
    fast.__class__ = InferenceRMSNorm
    x = torch.randn(2, 8, requires_grad=True)
    out = fast(x)
    out.sum().backward()  # the plain path: differentiable, the weight gets its gradient
    assert x.grad is not None and fast.weight.grad is not None
    half = RMSNorm(8).to(torch.bfloat16)
    plain_out = half(x.detach())  # float32 input, bf16 weight: the plain path's own mixed rule
    half.__class__ = InferenceRMSNorm
    with torch.no_grad():
        assert torch.equal(half(x.detach()), plain_out)
