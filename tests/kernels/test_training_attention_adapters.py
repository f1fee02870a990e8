"""The fused training attention (t5kit.kernels.training.attention) over LoRA-adapted and compactly stored frozen
projections, against the same attention written out with the adapters' own forward and the same dropout mask.

Tolerances come from a float64 run of the same written-out computation: the fused float32 result may be off the
float64 one by at most 4x what the written-out float32 computation is off it (they round in a different order),
or 16 float32 ulps of the tensor's largest value where that is larger (a gradient that is exactly computable).
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_training_kernels import written_out_attention

from t5kit import T5Config
from t5kit.adapters import LoRAConfig, add_lora
from t5kit.adapters.frozen import store_frozen_base
from t5kit.kernels import install
from t5kit.model import Attention, padding_bias

EPS32 = torch.finfo(torch.float32).eps
P = 0.1


class _Holder(torch.nn.Module):
    """store_frozen_base looks for the encoder / decoder stacks: a one-attention "encoder"."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.encoder = torch.nn.ModuleDict({"attn": attn})


def _adapted_attention(cross: bool, targets: tuple[str, ...], storage: str, lora_dropout: float = 0.0) -> Attention:
    config = T5Config.from_preset("tiny", feed_forward_proj="relu", dropout_rate=P, d_model=32, d_kv=8, num_heads=4)
    torch.manual_seed(0)
    attn = Attention(config, has_relative_bias=not cross, cross=cross)
    holder = _Holder(attn)
    add_lora(holder, LoRAConfig(r=4, alpha=8, targets=targets, dropout=lora_dropout))
    for module in attn.modules():  # B starts at zero; a non-zero B makes every term count
        if hasattr(module, "lora_B"):
            with torch.no_grad():
                module.lora_B.normal_(0, 0.3)
    store_frozen_base(holder, storage)
    return attn


def _run(attn: Attention, explicit: bool, cross: bool, dtype: torch.dtype,
         input_grad: bool = True) -> tuple[torch.Tensor, ...]:
    """Output and gradients of (x, memory where ``input_grad``, every trainable parameter) for a fixed input and
    upstream gradient."""
    torch.manual_seed(1)
    x = torch.randn(2, 6, 32).to(dtype).requires_grad_(input_grad)  # the same values in float32 and float64
    memory = torch.randn(2, 9, 32).to(dtype).requires_grad_(input_grad) if cross else None
    upstream = torch.randn(2, 6, 32).to(dtype)
    padding = torch.ones(2, 9)
    padding[1, 6:] = 0
    bias = padding_bias(padding, dtype) if cross else attn.relative_bias(6, 6)
    params = [p for p in attn.parameters() if p.requires_grad]
    torch.manual_seed(3)
    out = attn(x, bias, memory) if not explicit else written_out_attention(attn, x, bias, memory, P)
    inputs = ([x] + ([memory] if cross else [])) if input_grad else []
    return (out, *torch.autograd.grad(out, inputs + params, upstream))


def _assert_within_float64_bound(fused, written, reference) -> None:
    for ours, theirs, exact in zip(fused, written, reference):
        assert ours.dtype == theirs.dtype == torch.float32 and float(exact.detach().abs().max()) > 0
        ours, theirs, exact = ours.detach(), theirs.detach(), exact.detach()
        error = float((ours.double() - exact).abs().max())
        bound = max(4 * float((theirs.double() - exact).abs().max()), 16 * EPS32 * float(exact.abs().max()))
        assert error <= bound, (error, bound)


@pytest.mark.parametrize("storage", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("targets", [("q", "v"), ("q", "k", "v", "o")])
@pytest.mark.parametrize("kind", ["self", "cross"])
def test_adapted_attention_takes_the_fused_path_and_matches_the_adapters_own_forward(kind, targets, storage):
    """LoRA on q/v (peft's T5 default) or on all four projections, over a float32, bf16 or int8 frozen base:
    the fused Function's output and the gradients of the input, the encoder output (cross), the relative-bias
    table (self) and every adapter's A and B, against the written-out computation through the adapters' own
    forward with the same mask, both measured against float64."""
    cross = kind == "cross"
    attn = install(_adapted_attention(cross, targets, storage)).train()
    assert attn.fused()
    written = copy.deepcopy(attn)
    reference = copy.deepcopy(attn).double()
    fused = _run(attn, explicit=False, cross=cross, dtype=torch.float32)
    trained = [n for n, p in attn.named_parameters() if p.requires_grad]
    assert sum(".lora_" in n for n in trained) == 2 * len(targets)  # every adapter's A and B got a gradient
    _assert_within_float64_bound(fused, _run(written, True, cross, torch.float32),
                                 _run(reference, True, cross, torch.float64))


@pytest.mark.parametrize("kind", ["self", "cross"])
def test_adapters_of_a_layer_whose_input_needs_no_gradient(kind):
    """The first layer of a LoRA run: its input (embeddings of a frozen table) and the encoder output seen by a
    frozen cross attention need no gradient; the adapters still get theirs, within the float64 bound."""
    cross = kind == "cross"
    attn = install(_adapted_attention(cross, ("q", "v"), "bf16")).train()
    assert attn.fused()
    written, reference = copy.deepcopy(attn), copy.deepcopy(attn).double()
    fused = _run(attn, False, cross, torch.float32, input_grad=False)
    assert len(fused) == 1 + 4  # the output, then A and B of q and v
    _assert_within_float64_bound(fused, _run(written, True, cross, torch.float32, input_grad=False),
                                 _run(reference, True, cross, torch.float64, input_grad=False))


def test_adapted_attention_under_bf16_autocast_matches_the_module_path():
    """Under bf16 autocast: the fused output and gradients against the written-out computation with the same
    mask within 2 bf16 ulps of each tensor's largest value and 1% in norm (the two round in another order)."""
    attn = install(_adapted_attention(False, ("q", "v"), "fp32")).train()
    assert attn.fused()
    written = copy.deepcopy(attn)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _run(attn, False, False, torch.float32)
        theirs = _run(written, True, False, torch.float32)
    for a, b in zip(ours, theirs):
        a, b = a.detach(), b.detach()
        assert a.dtype == b.dtype and float(b.abs().max()) > 0
        assert float((a.float() - b.float()).norm() / b.float().norm()) < 1e-2
        torch.testing.assert_close(a.float(), b.float(), atol=float(b.abs().max()) * 2**-6, rtol=0)


def test_adapter_dropout_keeps_the_module_path():
    """An adapter with its own dropout draws its mask in its own forward: the Function is not taken, and the
    adapters still train."""
    attn = install(_adapted_attention(False, ("q", "v"), "fp32", lora_dropout=0.1)).train()
    assert not attn.fused()
    out = _run(attn, False, False, torch.float32)
    assert all(float(g.abs().max()) > 0 for g in out[2:])


def _saved_bytes(attn: Attention) -> int:
    """Bytes of the tensors autograd keeps for backward in one training forward, not counting the inputs and
    parameters (which live anyway)."""
    torch.manual_seed(1)
    x = torch.randn(2, 16, 32, requires_grad=True)
    bias = attn.relative_bias(16, 16)
    known = {t.untyped_storage().data_ptr() for t in [x, *attn.parameters(), *attn.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in known:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attn(x, bias).sum().backward()
    return sum(seen.values())


def test_fused_adapted_attention_keeps_less_for_backward_than_the_module_path():
    """What the Function keeps for a q/v adapter over a frozen float32 base: q, k, v and the probabilities in
    float32, a one-byte dropout mask and the adapters' [N, r] intermediates (the input is the caller's); no float
    mask, no dropped probabilities, no attention output (o is frozen). And less than the module path keeps."""
    attn = install(_adapted_attention(False, ("q", "v"), "fp32")).train()
    assert attn.fused()
    fused = _saved_bytes(attn)
    rows, heads, length, r = 2 * 16, 4, 16, 4
    expected = 4 * (3 * rows * 32 + 2 * heads * length * length + 2 * rows * r) + 2 * heads * length * length
    assert fused <= expected
    plain = copy.deepcopy(attn)
    plain._fused_projections = lambda: None  # the module path of the same layer
    assert fused < _saved_bytes(plain)
