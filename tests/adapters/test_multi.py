"""Several LoRA adapters over one base, chosen per row (t5kit.adapters.multi): each row computes what its own
adapter computes alone."""

from __future__ import annotations

import pytest
import torch

from t5kit import T5Config, T5Model
from t5kit.adapters import LoRAConfig, add_lora, load_adapter, lora_layers, save_adapter
from t5kit.adapters.multi import BASE, MultiLoRALinear, attach_adapters, multi_lora_layers, parse_adapter_specs
from t5kit.errors import ConfigError
from t5kit.kernels import install

# Against float64: each row must be as accurate as its adapter computed alone in float32 (LoRALinear), within a
# factor of 4 of that model's own error or 16 float32 ulps of the largest logit, whichever is larger. The two
# run the same products in another order (the per-row path folds the scale into B and adds the low-rank term
# to the base output in place; the adapters here are large, so their term dominates), while a row given the
# wrong adapter moves its logits by more than 1e-2 relative (asserted below).
FACTOR, ULPS = 4.0, 16 * torch.finfo(torch.float32).eps
ADAPTERS = {  # name -> (rank, alpha, targets): different ranks and different layers
    "a": (4, 8, ("q", "v")),
    "b": (2, 4, ("q", "k", "o", "wi", "wo")),
}


def _tiny() -> T5Model:
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4)
    return T5Model(cfg).eval()


def _save(base_state, directory, seed, r, alpha, targets):
    model = _tiny()
    model.load_state_dict(base_state)
    add_lora(model, LoRAConfig(r=r, alpha=alpha, targets=targets))
    generator = torch.Generator().manual_seed(seed)
    for layer in lora_layers(model).values():
        with torch.no_grad():  # B starts at zero (the identity): give both matrices weight
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.5)
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=generator) * 0.5)
    return save_adapter(model, directory)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    base = _tiny().state_dict()
    root = tmp_path_factory.mktemp("adapters")
    dirs = {name: _save(base, root / name, seed, *spec) for seed, (name, spec) in enumerate(ADAPTERS.items())}
    return base, dirs


def _alone(base_state, directory, dtype=torch.float32):
    model = _tiny()
    model.load_state_dict(base_state)
    if directory is not None:
        load_adapter(model, directory)
    return model.to(dtype).eval()


def _logits(model, ids, labels):
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=labels).logits


def _relative(ours, theirs):
    return ((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max()).item()


def _check(ours, alone32, exact):
    """``ours`` as close to ``exact`` (float64) as the adapter alone in float32 (see FACTOR, ULPS)."""
    bound = max(FACTOR * _relative(alone32, exact), ULPS)
    assert _relative(ours, exact) <= bound, f"{_relative(ours, exact):.3g} > {bound:.3g}"


@pytest.mark.parametrize("kernels", [False, True])
def test_rows_of_different_adapters_in_one_call_equal_each_adapter_alone(saved, kernels):
    base, dirs = saved
    model = _tiny()
    model.load_state_dict(base)
    adapters = attach_adapters(model, dirs)
    if kernels:
        install(model, "inference")
    assert set(multi_lora_layers(model)) and not lora_layers(model)
    names = [None, "a", "b", "a", None, "b"]
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 96, (len(names), 7), generator=generator)
    labels = torch.randint(2, 96, (len(names), 5), generator=generator)
    adapters.route([adapters.index_of(n) for n in names])
    mixed = _logits(model, ids, labels)
    names_held = (None, "a", "b")
    references = {n: _alone(base, dirs[n] if n else None) for n in names_held}
    exact = {n: _alone(base, dirs[n] if n else None, torch.float64) for n in names_held}

    def row_check(logits, row, name):  # the adapter alone on the same batch (a GEMM's order depends on its rows)
        _check(logits[row], _logits(references[name], ids, labels)[row], _logits(exact[name], ids, labels)[row])

    for row, name in enumerate(names):
        row_check(mixed, row, name)
        for other in set(names_held) - {name}:  # a row given the wrong adapter would be caught
            wrong = _logits(references[other], ids[row: row + 1], labels[row: row + 1])[0]
            assert _relative(mixed[row], wrong) > 1e-2
    # All rows on one adapter: the unindexed path, the same accuracy.
    adapters.use("b")
    assert adapters.routing.single == adapters.index_of("b")
    single = _logits(model, ids, labels)
    for row in range(len(names)):
        row_check(single, row, "b")
    adapters.use(None)
    plain = _logits(model, ids, labels)
    for row in range(len(names)):
        row_check(plain, row, None)


def test_a_routing_of_the_wrong_length_and_unknown_names_are_clear_errors(saved):
    base, dirs = saved
    model = _tiny()
    model.load_state_dict(base)
    adapters = attach_adapters(model, dirs)
    adapters.route([BASE, adapters.index_of("a")])
    ids = torch.randint(2, 96, (3, 4))
    with pytest.raises(ConfigError, match="routing names 2 rows but the layer got 3"):
        _logits(model, ids, ids)
    with pytest.raises(ConfigError, match=r"no adapter named 'c' is loaded \(loaded: a, b\)"):
        adapters.index_of("c")
    with pytest.raises(ConfigError, match="already holds adapters"):
        attach_adapters(model, dirs)


def test_a_bad_adapter_names_itself_and_leaves_the_model_as_it_was(saved, tmp_path):
    base, dirs = saved
    model = _tiny()
    model.load_state_dict(base)
    (tmp_path / "broken").mkdir()
    with pytest.raises(Exception, match="adapter 'broken'"):
        attach_adapters(model, {"a": dirs["a"], "broken": tmp_path / "broken"})
    assert not multi_lora_layers(model) and not lora_layers(model)
    assert all(type(m) is not MultiLoRALinear for m in model.modules())


@pytest.mark.parametrize("precision", ["bf16", "fp16w"])
def test_a_precision_copy_routes_its_own_rows(saved, precision):
    """A precision conversion deep-copies the model (``inference_model``); ``bound_to`` routes the copy's rows,
    and its rows of a, b and the base equal each adapter attached alone and converted the same way."""
    from t5kit.kernels.inference.precision import inference_model

    base, dirs = saved
    model = _tiny()
    model.load_state_dict(base)
    adapters = attach_adapters(model, dirs)
    copy = inference_model(model, precision)
    assert copy is not model
    bound = adapters.bound_to(copy)
    assert all(m.pair(1)[0].dtype == torch.float32 for m in multi_lora_layers(copy).values() if m.pair(1))
    names = [None, "a", "b", "a"]
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(2, 96, (len(names), 6), generator=generator)
    labels = torch.randint(2, 96, (len(names), 4), generator=generator)
    bound.route([bound.index_of(n) for n in names])
    mixed = _logits(copy, ids, labels)
    for name in ("a", "b", None):
        alone = _tiny()
        alone.load_state_dict(base)
        one = attach_adapters(alone, {name: dirs[name]} if name else {})
        alone = inference_model(alone, precision)
        one = one.bound_to(alone) if name else one
        one.route([1 if name else BASE] * len(names))
        want = _logits(alone, ids, labels)
        for row in (r for r, n in enumerate(names) if n == name):  # the same kernels on the same rows
            assert torch.allclose(mixed[row].float(), want[row].float(), rtol=0,
                                  atol=1e-6 * float(want[row].float().abs().max())), (precision, name, row)


def test_adapters_move_with_the_model_and_stay_float32_under_a_cast(saved):
    base, dirs = saved
    model = _tiny()
    model.load_state_dict(base)
    attach_adapters(model, dirs)
    model.to(torch.bfloat16)
    for layer in multi_lora_layers(model).values():
        assert layer.base.weight.dtype == torch.bfloat16
        assert all(layer.pair(i)[0].dtype == torch.float32 for i in layer.indices)
    assert not any("lora_" in name for name in model.state_dict())  # the checkpoint layout stays the base's


def test_adapter_specs_from_the_command_line(tmp_path):
    assert parse_adapter_specs(["fr=runs/fr", "runs/de/"]) == {"fr": "runs/fr", "de": "runs/de/"}
    odd = tmp_path / "lr=1e-4"
    odd.mkdir()
    assert parse_adapter_specs([str(odd)]) == {"lr=1e-4": str(odd)}  # an existing directory is a bare DIR
    assert parse_adapter_specs(["runs/lr=1e-4/best"]) == {"best": "runs/lr=1e-4/best"}
    with pytest.raises(ConfigError, match="two adapters are named 'x'"):
        parse_adapter_specs(["x=a", "x=b"])
    with pytest.raises(ConfigError, match="NAME=DIR"):
        parse_adapter_specs(["=dir"])
