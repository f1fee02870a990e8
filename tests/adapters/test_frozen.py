"""A frozen base stored in bf16 or int8 while an adapter trains (t5kit.adapters.frozen): what it computes, what
it stores, and that the adapter's gradients are those of a float32 base holding the same (rounded) weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from t5kit import T5Config, T5Model
from t5kit.adapters import LoRAConfig, LoRALinear, add_lora, lora_layers, lora_parameters, merge_lora
from t5kit.adapters.frozen import FrozenLinear, store_frozen_base
from t5kit.errors import ConfigError
from t5kit.kernels import install

STORAGES = ("bf16", "int8")


def _linear(seed: int = 0, out: int = 48, inp: int = 40, bias: bool = False) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(inp, out, bias=bias)
    layer.requires_grad_(False)
    return layer


@pytest.mark.parametrize("storage", STORAGES)
def test_the_stored_weight_is_the_rounded_one_and_forward_backward_use_it(storage):
    linear = _linear(bias=True)
    frozen = FrozenLinear(linear, storage)
    w = linear.weight
    widened = frozen.widened()
    if storage == "bf16":  # round to nearest: within half a bf16 ulp (2^-8 relative)
        assert torch.all((widened - w).abs() <= w.abs() * 2.0**-8)
        assert frozen.weight_bf16.dtype == torch.bfloat16
    else:  # per output row: within half a step of that row's scale (max |w| / 127)
        step = w.abs().amax(dim=1, keepdim=True) / 127
        assert torch.all((widened - w).abs() <= step / 2 * (1 + 1e-6))
        assert frozen.weight_int8.dtype == torch.int8 and frozen.weight_scale.shape == (w.shape[0],)
    assert not torch.equal(widened, w)  # it is stored rounded, not a float32 copy
    x = torch.randn(3, 5, 40, requires_grad=True)
    y = frozen(x)
    reference_x = x.detach().clone().requires_grad_(True)
    reference = torch.nn.functional.linear(reference_x, widened, linear.bias)
    assert torch.equal(y, reference)  # the same call on the same widened weight
    grad = torch.randn_like(y)
    y.backward(grad)
    reference.backward(grad)
    assert torch.allclose(x.grad, reference_x.grad, rtol=0, atol=1e-6 * float(reference_x.grad.abs().max()))
    assert not any(p.requires_grad for p in frozen.parameters())


def _tiny(dropout: float = 0.0) -> T5Model:
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                   dropout_rate=dropout)
    return T5Model(cfg)


@pytest.mark.parametrize("storage", STORAGES)
def test_adapter_gradients_equal_those_over_a_float32_base_holding_the_same_weights(storage):
    """With dropout on, so the relu feed-forward's training kernel runs on the compact weights (widened in its
    forward and backward) as it runs on the plain ones; both draw the same masks from the same seed."""
    compact = _tiny(dropout=0.1)
    add_lora(compact, LoRAConfig(r=4, alpha=8, targets=("q", "v")))
    with torch.no_grad():
        for name, p in lora_parameters(compact).items():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1)
    store_frozen_base(compact, storage)
    frozen = {n: m for n, m in compact.named_modules() if isinstance(m, FrozenLinear)}
    # every linear layer of both stacks, the adapted ones' bases among them; the head stays plain
    linears = [n for n, m in _tiny().named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    assert len(frozen) == len(linears)
    assert all(isinstance(layer.base, FrozenLinear) for layer in lora_layers(compact).values())
    assert type(compact.lm_head) is nn.Linear
    stored = sum(b.numel() * b.element_size() for m in frozen.values() for b in m.buffers())
    per_weight, per_row = (2, 0) if storage == "bf16" else (1, 4)  # int8: a float32 scale per output row
    assert stored == sum(m.out_features * (m.in_features * per_weight + per_row) for m in frozen.values())

    # The reference: a float32 model whose linear weights are the widened (rounded) ones, and the same adapter.
    plain = _tiny(dropout=0.1)
    add_lora(plain, LoRAConfig(r=4, alpha=8, targets=("q", "v")))
    plain.load_state_dict({k: v for k, v in compact.state_dict().items() if "weight_" not in k}, strict=False)
    with torch.no_grad():
        for name, module in frozen.items():
            target = plain.get_submodule(name)
            target.weight.copy_(module.widened())
    install(compact)
    install(plain)
    compact.train()
    plain.train()
    feed_forwards = [m for m in compact.modules() if hasattr(m, "fused") and hasattr(m, "wi")]
    assert feed_forwards and all(m.fused() for m in feed_forwards), "the training kernel takes the compact weights"
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(2, 96, (4, 9), generator=g),
             "labels": torch.randint(2, 96, (4, 6), generator=g)}

    def loss_and_grads(model):
        torch.manual_seed(2)  # the same dropout masks in both models
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        return float(loss.detach()), {n: p.grad for n, p in lora_parameters(model).items()}

    loss_c, grads_c = loss_and_grads(compact)
    loss_p, grads_p = loss_and_grads(plain)
    # The same float32 arithmetic, in the module path here and partly in the training kernels there (their
    # parity, measured in tests/train/test_train_adapter.py: loss to 7 digits, gradients within 1.4e-6 of their
    # norm); 1e-5 / 1e-4 as there. A base left unrounded or a missing scale moves them by far more.
    assert abs(loss_c - loss_p) <= 1e-5 * abs(loss_p)
    worst = max(float((grads_c[n] - grads_p[n]).norm() / grads_p[n].norm()) for n in grads_p)
    assert worst <= 1e-4, worst
    assert all(float(g.norm()) > 0 for g in grads_c.values())


def test_a_compact_base_refuses_training_layers_merges_and_unknown_storages():
    model = _tiny()
    with pytest.raises(ConfigError, match="trains: only a frozen base"):
        store_frozen_base(model, "int8")
    with pytest.raises(ConfigError, match="one of fp32, bf16, int8"):
        store_frozen_base(model, "fp8")
    add_lora(model, LoRAConfig(r=2))
    assert store_frozen_base(model, "fp32") is model and not any(isinstance(m, FrozenLinear) for m in model.modules())
    store_frozen_base(model, "bf16")
    adapted = len(lora_layers(model))
    with pytest.raises(ConfigError, match="t5kit adapter merge BASE ADAPTER OUT"):
        merge_lora(model)
    # the refused merge changed nothing: the adapters and their compact bases are all still there
    assert len(lora_layers(model)) == adapted > 0
    assert all(isinstance(m.base, FrozenLinear) for m in lora_layers(model).values())


def test_a_compact_base_keeps_the_dtype_it_computes_in():
    """``weight_dtype`` (what the feed-forward casts its input to) reads the layer's compute dtype, without
    widening the weight, and a float64 run stays float64."""
    from t5kit.model.layers import weight_dtype

    linear = _linear().double()
    frozen = FrozenLinear(linear, "bf16")
    assert frozen.compute_dtype == torch.float64 and weight_dtype(frozen, torch.float32) == torch.float64
    assert frozen(torch.randn(2, 40, dtype=torch.float64)).dtype == torch.float64
    wrapped = LoRALinear(_linear(), LoRAConfig(r=2))
    wrapped.base = FrozenLinear(wrapped.base, "int8")
    assert weight_dtype(wrapped, torch.float16) == torch.float32
