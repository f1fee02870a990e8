"""The decoding step's residual add + RMS norm in one native call (t5kit.kernels.inference.decoder, norm.c)
against float64, and which forwards take it."""

from __future__ import annotations

import copy

import pytest
import torch

from t5kit import T5Model
from t5kit.generate import generate
from t5kit.kernels import install
from t5kit.kernels.inference import native
from t5kit.kernels.inference.decoder import SMALL_ROWS, InferenceDecoderLayer
from t5kit.kernels.inference.linear import UNIT_ROUNDOFF
from t5kit.model import DecoderLayer

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"no native kernels here: {native.unavailable()}")

U = UNIT_ROUNDOFF["fp32"]
EPS = 1e-6


def float64_norm(s: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    s64 = s.double()
    return s64 * torch.rsqrt(s64.pow(2).mean(-1, keepdim=True) + EPS) * weight.double()


def bound(reference: torch.Tensor) -> torch.Tensor:
    """rstd is computed in double and rounded once to float32 (relative error <= u, plus the double sum's
    ~n * 2^-53, negligible); x * rstd and that times the weight are each rounded to float32 (<= u each). So the
    result is within (1 + u)^3 - 1 < 3.0001 u of the float64 value, relative to it."""
    return 3.0001 * U * reference.abs()


@pytest.mark.parametrize(("rows", "n"), [(1, 512), (SMALL_ROWS, 512), (3, 100), (2, 7), (5, 1024)])
def test_add_and_norm_are_within_three_roundings_of_float64(rows, n):
    g = torch.Generator().manual_seed(rows * n)
    scale = torch.logspace(-3, 3, rows)[:, None, None]  # tiny to large rows
    x = torch.randn(rows, 1, n, generator=g) * scale
    h = torch.randn(rows, 1, n, generator=g) * scale
    weight = torch.randn(n, generator=g) * 2
    lib = native.library()
    s, y = native.add_rms_norm(lib, x, h, weight, EPS)
    assert torch.equal(s, x + h)  # the residual: float32 additions, as torch rounds them
    reference = float64_norm(s, weight)
    assert ((y.double() - reference).abs() <= bound(reference)).all()
    same, alone = native.add_rms_norm(lib, x, None, weight, EPS)  # no residual: the norm of x
    assert same is x
    reference = float64_norm(x, weight)
    assert ((alone.double() - reference).abs() <= bound(reference)).all()


def test_the_bound_fails_a_norm_that_rounds_more():
    """The bound is tight enough to catch one more rounding than the kernel makes: a bfloat16 rstd fails it."""
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(4, 1, 512, generator=g), torch.randn(512, generator=g)
    rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS).bfloat16().float()
    reference = float64_norm(x, weight)
    assert not ((x * rstd * weight).double() - reference).abs().le(bound(reference)).all()


def tiny_model() -> T5Model:
    torch.manual_seed(0)
    return T5Model.from_preset("tiny", num_decoder_layers=2, vocab_size=512).eval()


def test_decoding_steps_take_the_native_path_and_the_rest_the_plain_layer(monkeypatch):
    # the per-norm path: the whole-layer step (test_decoder_layer_step.py) is taken first where it can be
    monkeypatch.setattr(InferenceDecoderLayer, "_step_plan", lambda *args: None)
    plain = tiny_model()
    fast = install(copy.deepcopy(plain), "inference")
    assert sum(isinstance(m, InferenceDecoderLayer) for m in fast.modules()) == 2
    calls = []
    real = native.add_rms_norm
    monkeypatch.setattr(native, "add_rms_norm", lambda *a: calls.append(a[1].shape) or real(*a))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 512, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    new = 8
    tokens = generate(fast, ids, mask, max_new_tokens=new, suppress_tokens=[1]).sequences
    steps = tokens.shape[1] - 1
    assert len(calls) == 3 * 2 * steps and all(shape == (3, 1, plain.config.d_model) for shape in calls)
    unswapped = install(copy.deepcopy(plain), "inference")
    for module in unswapped.modules():
        if isinstance(module, InferenceDecoderLayer):
            module.__class__ = DecoderLayer  # every other kernel the same
    assert torch.equal(tokens, generate(unswapped, ids, mask, max_new_tokens=new, suppress_tokens=[1]).sequences)
    calls.clear()
    with torch.no_grad():  # no cache (scoring, the encoder, a forward with labels): the plain layer
        fast(input_ids=ids, attention_mask=mask, decoder_input_ids=tokens)
    fast(input_ids=ids, attention_mask=mask, labels=tokens[:, 1:]).loss.backward()  # autograd: plain
    many = torch.randint(3, 512, (SMALL_ROWS + 1, 5), generator=g)  # more rows than a decoding step's
    generate(fast, many, torch.ones_like(many), max_new_tokens=2, suppress_tokens=[1])
    assert calls == []
    bf16 = install(copy.deepcopy(plain).to(torch.bfloat16), "inference")  # bfloat16 activations: plain
    generate(bf16, ids, mask, max_new_tokens=2, suppress_tokens=[1])
    assert calls == []
