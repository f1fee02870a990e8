"""The inference fast paths against the plain computations they replace."""

from __future__ import annotations

import copy

import pytest
import torch
from hf_models import assert_as_accurate_as_reference
from torch import nn

from t5kit import T5Config, T5Model
from t5kit.adapters import LoRAConfig, add_lora
from t5kit.generate import generate
from t5kit.kernels import install, uninstall
from t5kit.kernels.inference import fused as fused_linears
from t5kit.kernels.inference.attention import InferenceAttention
from t5kit.kernels.inference.feedforward import InferenceFeedForward
from t5kit.kernels.inference.linear import error_bound, set_storages, stored_weight64
from t5kit.kernels.inference.norm import InferenceRMSNorm
from t5kit.kernels.inference.precision import inference_model
from t5kit.model import Attention, FeedForward, RMSNorm


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


# ---------------------------------------------------------------------------------------------- fused q/k/v


def _attention_layers(storage: str):
    """A self-attention and a cross-attention of a small config, their projections in ``storage``'s format."""
    config = T5Config.from_preset("tiny")
    torch.manual_seed(0)
    block = nn.ModuleDict({"self": Attention(config, has_relative_bias=False, bidirectional=False),
                           "cross": Attention(config, cross=True)})
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    if storage != "fp32":
        for attention in block.values():
            for layer in (attention.q, attention.k, attention.v, attention.o):
                set_storages(layer, (storage,), keep_plain=False)
    return install(block, "inference"), config


def test_float_layers_are_not_fused():
    """fp32 / bf16 calls are cheap to start; fusing them measured slower as often as faster (fused.FORMATS)."""
    block, _ = _attention_layers("fp32")
    assert block["self"].fused_projection() is None and not fused_linears.held_copies(block["self"])


@pytest.mark.parametrize("storage", ["fp16", "int8"])
def test_the_fused_projection_computes_q_k_v_within_their_formats_bound(storage):
    block, config = _attention_layers(storage)
    attention = block["self"]
    fused = attention.fused_projection()
    assert fused is not None and block["cross"].fused_projection() is None  # cross k/v come from the cache
    if storage == "int8":  # per-channel weights and their scales concatenated: exactly the three layers'
        expected = torch.cat([layer.weight_int8.dequantize() for layer in (attention.q, attention.k, attention.v)])
        assert torch.equal(fused.weight_int8.dequantize(), expected)
    x = torch.randn(5, config.d_model) * 2
    with torch.no_grad():
        parts = fused(x).double().split(attention.q.out_features, dim=-1)
    for layer, part in zip((attention.q, attention.k, attention.v), parts):
        weight = stored_weight64(layer, storage)
        assert ((part - x.double() @ weight.T).abs() <= error_bound(storage, x, weight)).all(), storage


def test_the_fused_call_is_used_only_where_its_timing_beats_the_three_by_the_margin(monkeypatch):
    block, _ = _attention_layers("int8")
    attention = block["self"]
    fused = attention.fused_projection()
    timings = {}
    monkeypatch.setattr(fused_linears, "timed_us", lambda module, rows: timings[module is fused])
    layers = (attention.q, attention.k, attention.v)

    def fused_for(rows):
        return fused_linears.fused_for(attention, "qkv", layers, rows)

    timings.update({True: 64.0, False: 38.0})  # int8 at one row on the AMD VM: fused
    assert fused_linears.fused_pays(fused, layers, 1)
    timings.update({True: 145.0, False: 49.0})  # within the 10% margin: kept apart
    assert not fused_linears.fused_pays(fused, layers, 1)
    timings.update({True: None, False: 38.0})  # a forced kernel times nothing: nothing fused
    assert not fused_linears.fused_pays(fused, layers, 1)
    timings.update({True: 64.0, False: 38.0})
    assert fused_for(3) is fused  # decided once per row bucket, kept with the fused copy
    timings.update({True: 1e9})
    assert fused_for(2) is fused and fused_for(16) is None


@pytest.mark.parametrize("preset, precision", [("tiny", "int8"), ("t5-small", "fp16w")])
def test_decoding_with_fused_projections_is_as_accurate_as_the_plain_modules(monkeypatch, preset, precision):
    """Greedy decoding of a random model (cached steps): the same tokens with and without the fused copies
    (q/k/v; wi_0/wi_1 of the gated ``tiny``); teacher-forced logits (every self-attention and feed-forward
    fused) no further from a float64 run than the same precision's logits without them (hf_models' rule)."""


    monkeypatch.setattr(fused_linears, "fused_pays", lambda *args: True)  # whatever this machine's timings say
    torch.manual_seed(0)
    overrides = {} if preset == "tiny" else {"num_layers": 2, "num_decoder_layers": 2, "vocab_size": 512}
    plain = T5Model.from_preset(preset, **overrides).eval()
    exact = copy.deepcopy(plain).double()
    fused = install(inference_model(copy.deepcopy(plain), precision), "inference")
    assert sum(isinstance(m, InferenceAttention) for m in fused.modules()) == 2 * len(fused.decoder.layers) + len(
        fused.encoder.layers)
    unfused = install(inference_model(copy.deepcopy(plain), precision), "inference")
    for module in unfused.modules():
        if isinstance(module, InferenceAttention):
            module.__class__ = Attention  # the same kernels for every other layer
        elif isinstance(module, InferenceFeedForward):
            module.__class__ = FeedForward
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, plain.config.vocab_size, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    tokens = generate(fused, ids, mask, max_new_tokens=8, suppress_tokens=[1]).sequences
    assert torch.equal(tokens, generate(unfused, ids, mask, max_new_tokens=8, suppress_tokens=[1]).sequences)
    with torch.no_grad():
        logits, plain_logits, exact_logits = (
            m(input_ids=ids, attention_mask=mask, decoder_input_ids=tokens).logits for m in (fused, unfused, exact))
    assert_as_accurate_as_reference(logits, plain_logits, exact_logits, "fused q/k/v")
    used = [copy_ for m in fused.modules() for copy_ in fused_linears.held_copies(m)]
    layers = len(fused.encoder.layers) + len(fused.decoder.layers)
    assert len(used) == (2 * layers if plain.config.is_gated else layers)
    assert all("_t5kit_plans" in f.__dict__ for f in used)  # every fused copy ran


def test_the_fused_copy_follows_weight_changes_and_adapters_keep_their_own_path(monkeypatch):
    monkeypatch.setattr(fused_linears, "fused_pays", lambda *args: True)
    block, config = _attention_layers("fp16")
    attention = block["self"]
    x = torch.randn(1, 4, config.d_model)
    bias = torch.zeros(1, 1, 4, 4)
    with torch.no_grad():
        before = attention(x, bias)
        attention.v.weight_fp16.mul_(2)  # in place: the fused copy is rebuilt from the new weight
        after = attention(x, bias)
        expected = attention.attend(*(attention.heads(layer(x)) for layer in (attention.q, attention.k, attention.v)),
                                    bias)
    # the change moves the output by O(1) of its size, rounding by O(1e-7): the fused copy saw the new weight
    assert (after - expected).abs().max() < 1e-3 * (before - expected).abs().max()
    uninstall(block)
    assert not any(key.startswith(fused_linears.PREFIX) for key in attention.__dict__)
    block, config = _attention_layers("fp16")
    add_lora(block["self"], LoRAConfig(r=2, targets=("q", "v")))
    assert block["self"].fused_projection() is None  # a wrapped projection runs its own forward
