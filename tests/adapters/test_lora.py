"""LoRA adapters: parity with peft in both directions (merged and unmerged), the kernels over an adapted
model, the config's and the loader's errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hf_models import build_hf_model, padded_batch

from t5kit import T5Config, T5Model
from t5kit.adapters import (
    LoRAConfig,
    LoRALinear,
    add_lora,
    load_adapter,
    lora_layers,
    lora_parameters,
    merge_lora,
    remove_lora,
    save_adapter,
    trainable_parameters,
)
from t5kit.errors import CheckpointError, ConfigError
from t5kit.kernels import install, installed, uninstall
from t5kit.kernels.inference.linear import BackendLinear

peft = pytest.importorskip("peft")

# The bar: 1e-5 of the largest logit, ~84 float32 ulps there. The two engines compute the same sums
# in other orders (SDPA against two matmuls, peft's x @ A then @ B as here); without adapters t5kit and
# transformers measured within 0-4.7 ulps of the largest logit (tests/model/test_t5.py), so 1e-5 leaves room
# for other CPUs' GEMM orders, while a wrong scale, a transposed matrix or a missed layer moves the logits by
# more than 1e-2 relative (asserted: the adapter's effect below).
RELATIVE = 1e-5
FAMILIES = {  # family -> the projections adapted there (relu models have wi, gated ones wi_0 / wi_1)
    "v1.0-relu-tied": ("q", "k", "v", "o", "wi", "wo"),
    "v1.1-gated-untied": ("q", "v", "wi_0", "wi_1"),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(family, transformers model, its checkpoint directory)."""
    hf = build_hf_model(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    return request.param, hf, directory


def _batch(vocab_size: int):
    ids, mask, labels = padded_batch(vocab_size)
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.float()


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def _randomize(parameters, seed: int) -> None:
    """Non-zero A and B (a fresh adapter's B is zero, which would make every comparison trivial). At 0.05 the
    adapter moves the logits by >1e-2 relative; at 0.3 it swamps the base weights and float32 itself (against a
    float64 twin) strays 1e-5 ... 6e-5 on these random models, merged or not (measured), a test of the random
    model's conditioning, not of the adapter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in parameters:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_t5kit_adapter_loads_in_peft_merged_and_unmerged(family, tmp_path):
    name, hf, directory = family
    batch = _batch(hf.config.vocab_size)
    model = T5Model.from_pretrained(directory).eval()
    base_logits = _logits(model, batch)
    add_lora(model, LoRAConfig(r=4, alpha=8, targets=FAMILIES[name]))
    _randomize(lora_parameters(model).values(), seed=1)
    ours = _logits(model, batch)
    assert _relative_error(ours, base_logits) > 1e-2  # the adapter matters
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(directory))

    theirs_model = peft.PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path / "adapter").eval()
    theirs = _logits(theirs_model, batch)
    error = _relative_error(ours, theirs)
    assert error <= RELATIVE, f"{name} unmerged: {error:.2e}"

    merge_lora(model)
    assert not lora_layers(model) and type(model.encoder.layers[0].self_attn.q) is torch.nn.Linear
    merged = _logits(model, batch)
    theirs_merged = _logits(theirs_model.merge_and_unload(), batch)
    assert _relative_error(merged, theirs_merged) <= RELATIVE, f"{name} merged vs peft merged"
    assert _relative_error(merged, ours) <= RELATIVE, f"{name} merged vs unmerged"


def test_peft_adapter_loads_in_t5kit_merged_and_unmerged(family, tmp_path):
    name, hf, directory = family
    batch = _batch(hf.config.vocab_size)
    config = peft.LoraConfig(r=6, lora_alpha=12, lora_dropout=0.1, target_modules=list(FAMILIES[name]),
                             task_type="SEQ_2_SEQ_LM")
    theirs_model = peft.get_peft_model(copy.deepcopy(hf), config)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter_name, p in theirs_model.named_parameters():
            if "lora_B" in parameter_name:  # A is peft's kaiming init, B random instead of zeros
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    theirs_model.eval()
    theirs_model.save_pretrained(tmp_path / "peft")
    theirs = _logits(theirs_model, batch)

    model = load_adapter(T5Model.from_pretrained(directory).eval(), tmp_path / "peft")
    layers = lora_layers(model)
    assert {n.rpartition(".")[2] for n in layers} == set(FAMILIES[name])
    assert all(layer.scale == 2.0 and layer.config.dropout == 0.1 for layer in layers.values())
    ours = _logits(model, batch)
    assert _relative_error(ours, _logits(copy.deepcopy(hf), batch)) > 1e-2  # the adapter matters
    error = _relative_error(ours, theirs)
    assert error <= RELATIVE, f"{name} unmerged: {error:.2e}"

    merged = _logits(merge_lora(model), batch)
    assert _relative_error(merged, _logits(theirs_model.merge_and_unload(), batch)) <= RELATIVE
    assert _relative_error(merged, ours) <= RELATIVE


def _tiny(**overrides) -> T5Model:
    torch.manual_seed(0)
    return T5Model(T5Config.from_preset("tiny", vocab_size=120, **overrides)).eval()


def test_add_lora_freezes_the_base_and_starts_as_the_identity():
    model = _tiny(feed_forward_proj="relu")
    ids = torch.randint(3, 120, (2, 9))
    before = _logits(model, dict(input_ids=ids, labels=ids))
    add_lora(model, LoRAConfig(r=4, targets=("q", "v", "wi")))
    layers = lora_layers(model)
    c = model.config
    # q and v: encoder self attention, decoder self and cross attention; wi: every feed-forward
    assert len(layers) == 2 * (c.num_layers + 2 * c.num_decoder_layers) + c.num_layers + c.num_decoder_layers
    assert not any(layer.training for layer in layers.values())  # the model was in eval mode: dropout stays off
    expected = sum(4 * (layer.in_features + layer.out_features) for layer in layers.values())
    assert trainable_parameters(model) == expected == sum(p.numel() for p in lora_parameters(model).values())
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    assert torch.equal(_logits(model, dict(input_ids=ids, labels=ids)), before)  # B starts at zero
    remove_lora(model)
    assert not lora_layers(model)


def test_kernels_install_over_an_adapted_model():
    """The kernels swap the base linear inside each LoRA layer (and back); in training the fused attention
    computes its adapters' terms and the feed-forward runs the module path for its adapted wi: the adapters get
    gradients, and the base none."""
    model = _tiny(feed_forward_proj="relu", dropout_rate=0.1)
    add_lora(model, LoRAConfig(r=4, targets=("q", "v", "wi")))
    _randomize(lora_parameters(model).values(), seed=3)
    ids = torch.randint(3, 120, (2, 9))
    batch = dict(input_ids=ids, labels=ids[:, :5])
    plain = _logits(model, batch)
    install(model)
    layer = model.encoder.layers[0]
    assert type(layer.self_attn.q) is LoRALinear and isinstance(layer.self_attn.q.base, BackendLinear)
    assert isinstance(layer.self_attn.k, BackendLinear)  # an unadapted projection
    fast = _logits(model, batch)
    assert _relative_error(fast, plain) <= RELATIVE
    assert not layer.self_attn.fused() and not layer.ffn.fused()

    model.train()
    assert layer.self_attn.fused() and not layer.ffn.fused()
    model(**batch).loss.backward()
    for parameter in lora_parameters(model).values():
        assert parameter.grad is not None and float(parameter.grad.abs().max()) > 0
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)

    # The same gradients as the plain model's: without dropout (the fast dropout draws other masks than torch's)
    # the norm, head and loss kernels still run, and the adapted projections must give what the plain path gives.
    grads = []
    for m in (model, uninstall(copy.deepcopy(model))):
        for module in m.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        m.zero_grad()
        m(**batch).loss.backward()
        grads.append({n: p.grad for n, p in lora_parameters(m).items()})
    for n, grad in grads[0].items():
        assert _relative_error(grad, grads[1][n]) <= RELATIVE, n
    uninstall(model)
    assert installed(model) == [] and type(layer.self_attn.q.base) is torch.nn.Linear
    assert _relative_error(_logits(model.eval(), batch), plain) == 0.0


def test_merge_leaves_plain_layers_that_the_inference_kernels_recompute():
    """Merging writes the weight in place through autograd (its version moves), so a BackendLinear that has
    already planned (and packed) the old weight computes with the new one."""
    model = install(_tiny())
    ids = torch.randint(3, 120, (2, 9))
    batch = dict(input_ids=ids, labels=ids)
    _logits(model, batch)  # plans made for the base weights
    add_lora(model, LoRAConfig(r=2, targets=("q", "o", "wi_0", "wo")))
    _randomize(lora_parameters(model).values(), seed=4)
    unmerged = _logits(model, batch)
    merged = _logits(merge_lora(model), batch)
    assert isinstance(model.encoder.layers[0].self_attn.q, BackendLinear)
    assert _relative_error(merged, unmerged) <= RELATIVE


@pytest.mark.parametrize("kwargs, message", [
    (dict(r=0), "r must be a whole number >= 1"),
    (dict(r=2.5), "r must be a whole number"),
    (dict(alpha=0), "alpha must be a number > 0"),
    (dict(dropout=1.0), "dropout must be in [0, 1)"),
    (dict(targets=()), "targets are empty"),
    (dict(targets=("q", "value")), "unknown LoRA target 'value'"),
    (dict(targets=("wi0",)), "Did you mean 'wi_0'"),
    (dict(targets=("q", "q")), "name a projection twice"),
    (dict(kind="ia3"), "use kind 'lora'"),
])
def test_config_errors_name_the_fix(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        LoRAConfig(**kwargs)


def test_add_lora_refuses_missing_targets_and_a_second_adapter():
    model = _tiny()  # gated
    with pytest.raises(ConfigError, match="'wi' match no layer of this model.*wi_0"):
        add_lora(model, LoRAConfig(targets=("q", "wi")))
    assert not lora_layers(model)
    add_lora(model, LoRAConfig())
    with pytest.raises(ConfigError, match="already holds LoRA adapters"):
        add_lora(model, LoRAConfig())


def _saved(tmp_path):
    model = _tiny()
    add_lora(model, LoRAConfig(r=2))
    return save_adapter(model, tmp_path / "adapter")


@pytest.mark.parametrize("key, value, message", [
    ("use_dora", True, "use_dora = True asks for DoRA"),
    ("use_rslora", True, "rank-stabilised"),
    ("bias", "all", "bias = 'all' asks for trained biases"),
    ("modules_to_save", ["lm_head"], "fully trained extra modules"),
    ("rank_pattern", {"q": 4}, "per-layer ranks"),
    ("init_lora_weights", "pissa", "changed the base weights"),
    ("peft_type", "IA3", "peft_type 'IA3' is not supported"),
    ("target_modules", ".*q", "is the pattern"),
    ("target_modules", ["query"], "unknown LoRA target 'query'"),
])
def test_load_adapter_refuses_what_it_does_not_compute(tmp_path, key, value, message):
    directory = _saved(tmp_path)
    config = json.loads((directory / "adapter_config.json").read_text())
    config[key] = value
    (directory / "adapter_config.json").write_text(json.dumps(config))
    model = _tiny()
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_adapter(model, directory)
    assert not lora_layers(model)


def test_load_adapter_refuses_pickles_and_foreign_shapes(tmp_path):
    directory = _saved(tmp_path)
    (directory / "adapter_model.safetensors").rename(directory / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="pickle.*safe_serialization=True"):
        load_adapter(_tiny(), directory)
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        load_adapter(_tiny(), tmp_path)

    other = _tiny(d_model=48)
    add_lora(other, LoRAConfig(r=2))
    save_adapter(other, tmp_path / "other")
    model = _tiny()
    with pytest.raises(CheckpointError, match="has shape .* this model needs"):
        load_adapter(model, tmp_path / "other")
    assert not lora_layers(model)  # left as it was


def test_saved_names_and_config_are_peft_s(tmp_path):
    from safetensors import safe_open

    directory = _saved(tmp_path)
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_2_SEQ_LM" and config["r"] == 2
    assert config["target_modules"] == ["q", "v"] and config["bias"] == "none"
    with safe_open(str(directory / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight" in keys
    assert "base_model.model.decoder.block.1.layer.1.EncDecAttention.v.lora_B.weight" in keys
    assert peft.LoraConfig.from_pretrained(str(directory)).r == 2  # peft reads every key t5kit writes


def test_a_bf16_base_keeps_float32_adapters_and_merges_into_bf16():
    """As peft does by default: the adapter matrices of a half-precision base are float32 (a bf16 rank-r update
    would round away most small steps); the output keeps the base's dtype, and a merge rounds once into it."""
    model = _tiny().to(torch.bfloat16)
    add_lora(model, LoRAConfig(r=4, targets=("q", "wo")))
    assert {p.dtype for p in lora_parameters(model).values()} == {torch.float32}
    _randomize(lora_parameters(model).values(), seed=6)
    ids = torch.randint(3, 120, (2, 9))
    unmerged = _logits(model, dict(input_ids=ids, labels=ids))
    with torch.no_grad():
        assert model(input_ids=ids, labels=ids).logits.dtype == torch.bfloat16
    merge_lora(model)
    assert model.encoder.layers[0].self_attn.q.weight.dtype == torch.bfloat16
    merged = _logits(model, dict(input_ids=ids, labels=ids))
    # bf16 keeps 8 bits: the merged weights and the unmerged sums round differently (measured 9.7e-3 of the
    # largest logit, 2.5 bf16 ulps of 2^-8; the adapter itself moves the logits by 0.33)
    assert _relative_error(merged, unmerged) <= 8 * 2**-8


def test_saving_an_adapted_model_as_a_checkpoint_names_the_two_ways(tmp_path):
    model = add_lora(_tiny(), LoRAConfig())
    with pytest.raises(CheckpointError, match="holds LoRA adapters.*save_adapter.*merge_lora"):
        model.save_pretrained(tmp_path / "checkpoint")
    merge_lora(model).save_pretrained(tmp_path / "checkpoint")
    assert (tmp_path / "checkpoint" / "model.safetensors").is_file()


def test_an_inference_copy_in_int8_runs_the_adapter_but_refuses_a_merge():
    from t5kit.kernels.inference.precision import inference_model

    model = install(add_lora(_tiny(), LoRAConfig(r=4, targets=("q", "v", "wo"))), "inference")
    _randomize(lora_parameters(model).values(), seed=7)
    ids = torch.randint(3, 120, (2, 9))
    batch = dict(input_ids=ids, labels=ids)
    reference = _logits(model, batch)
    copy_int8 = inference_model(model, "int8")
    int8 = _logits(copy_int8, batch)
    # int8 weights move the logits a little (measured 0.040 of the largest), dropping the adapter far more (0.26)
    assert _relative_error(int8, reference) < 0.25 * _relative_error(int8, _logits(_tiny(), batch))
    with pytest.raises(ConfigError, match="merge first, then choose the precision"):
        merge_lora(copy_int8)
    assert _relative_error(_logits(merge_lora(model), batch), reference) <= RELATIVE
