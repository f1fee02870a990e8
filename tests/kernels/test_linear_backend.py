"""The linear layers' GEMM backend (t5kit.kernels.inference.linear): every kernel within its format's
rounding-error bound against float64, the choice is the fastest accurate one and is kept per machine, the
plain nn.Linear runs whenever autograd records, and a model using the chosen kernels is as accurate as
transformers."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hf_models import assert_as_accurate_as_reference, build_hf_model, float64_twin, padded_batch
from torch import nn

from t5kit import T5Config, T5Model
from t5kit.kernels import install
from t5kit.kernels.inference import cpu, linear
from t5kit.kernels.inference.cpu import native_bf16, parse_cpuinfo
from t5kit.kernels.inference.linear import (
    BACKEND_ENV,
    CANDIDATES,
    BackendError,
    BackendLinear,
    BackendWarning,
    Candidate,
    error_bound,
    report,
    set_storages,
    stored_weight64,
    summary,
)
from t5kit.kernels.inference.precision import inference_model

AVAILABLE = [c for c in CANDIDATES if c.available()]


@pytest.fixture(autouse=True)
def fresh_choices(tmp_path, monkeypatch):
    """Each test starts without choices, with its own cache file, in auto mode."""
    monkeypatch.setenv("T5KIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    linear.reset()
    yield
    linear.reset()


def backend_layer(out_features: int, in_features: int, storages: tuple[str, ...], seed: int = 0) -> BackendLinear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=False)
    if storages == ("bf16",):
        layer = layer.bfloat16()
    elif storages != ("fp32",):
        set_storages(layer, storages, keep_plain="fp32" in storages)
    return install(layer, "inference")


@pytest.mark.parametrize("candidate", AVAILABLE, ids=lambda c: c.name)
@pytest.mark.parametrize("shape", [(24, 40), (130, 70), (512, 64)])
@pytest.mark.parametrize("rows", [1, 3, 16, 70])
def test_every_kernel_is_within_its_formats_error_bound(candidate, shape, rows):
    layer = backend_layer(*shape, (candidate.storage,) if candidate.storage != "fp32" else ("fp32",))
    x = torch.randn(rows, shape[1]) * 3
    if candidate.storage == "bf16":
        x = x.bfloat16()
    with torch.no_grad():
        y = candidate.run(x, candidate.pack(layer.stored_weight(candidate.storage))).double()
    weight = stored_weight64(layer, candidate.storage)
    error = (y - x.double() @ weight.T).abs()
    assert (error <= error_bound(candidate.storage, x, weight)).all(), (candidate.name, error.max().item())
    if rows % 2 == 0:  # the layer passes [batch, length, features] through unflattened: the kernel takes it
        with torch.no_grad():
            y3 = candidate.run(x.reshape(2, rows // 2, -1), candidate.pack(layer.stored_weight(candidate.storage)))
        assert y3.shape == (2, rows // 2, shape[0]) and torch.equal(y3.reshape(rows, -1).double(), y)


def test_the_bound_rejects_a_kernel_that_rounds_more_than_its_format():
    """The fp32 bound is tight enough that computing in bf16 (what a mis-dispatched kernel might do) fails it:
    the check can fail."""
    layer = backend_layer(64, 256, ("fp32",))
    x = torch.randn(4, 256)
    weight = stored_weight64(layer, "fp32")
    bf16 = F.linear(x.bfloat16(), layer.weight.bfloat16()).double()
    assert not ((bf16 - x.double() @ weight.T).abs() <= error_bound("fp32", x, weight)).all()


def test_no_grad_calls_run_the_chosen_kernel_and_autograd_gets_the_plain_linear(monkeypatch):
    layer = backend_layer(96, 48, ("fp32",))
    monkeypatch.setenv(BACKEND_ENV, "onednn" if torch.backends.mkldnn.is_available() else "mkl")
    linear.reset()
    x = torch.randn(2, 5, 48, requires_grad=True)
    with torch.no_grad():
        fast = layer(x)
    chosen = linear._BY_NAME[linear.forced_kernel()]
    assert torch.equal(fast, chosen.run(x.detach().reshape(10, 48), chosen.pack(layer.weight)).reshape(2, 5, 96))
    recorded = layer(x)  # autograd on: exactly nn.Linear, gradients flow
    assert torch.equal(recorded, F.linear(x, layer.weight))
    recorded.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None


def test_the_choice_is_the_fastest_accurate_kernel_and_is_kept_on_disk(monkeypatch, tmp_path):
    layer = backend_layer(256, 128, ("fp32",))
    with torch.no_grad():
        layer(torch.randn(16, 128))
    data = json.loads((tmp_path / "cache" / linear.CACHE_FILE).read_text())
    (machine, entries), = data["machines"].items()
    assert "torch " + torch.__version__ in machine
    entry = entries["fp32 256x128 rows 16"]
    names = {c.name for c in AVAILABLE if c.storage == "fp32" and c.serves(16)}
    assert set(entry["us"]) == names and entry["rejected"] == []
    fastest = min(entry["us"], key=entry["us"].get)
    if entry["kernel"] != fastest:  # only the default may win, within the margin, over a kernel holding a copy
        assert entry["kernel"] == "mkl" and entry["us"][fastest] > (1 - linear.MARGIN) * entry["us"]["mkl"]
        assert linear._BY_NAME[fastest].holds_copy  # noqa: SLF001
    # a new process (here: forgotten in-memory choices) reads the choice back without timing anything
    linear.reset()

    def no_timing(*args, **kwargs):
        raise AssertionError("timed again although the choice is cached")

    monkeypatch.setattr(linear, "_time_all", no_timing)
    assert linear.choose(layer, 16) == entry["kernel"]


def test_a_kernel_outside_its_bound_is_reported_and_never_chosen(monkeypatch):
    def rounds_in_bf16(x, weight):
        return F.linear(x.bfloat16(), weight.bfloat16()).float()

    broken = Candidate("broken", "fp32", lambda w: w.detach(), rounds_in_bf16, lambda: True, "test")
    monkeypatch.setattr(linear, "CANDIDATES", (broken, *CANDIDATES))
    monkeypatch.setitem(linear._BY_NAME, "broken", broken)
    layer = backend_layer(64, 256, ("fp32",))
    with pytest.warns(BackendWarning, match="broken is outside its rounding-error bound"):
        kernel = linear.choose(layer, 4)
    assert kernel != "broken"
    entry = linear._choices()["fp32 64x256 rows 4"]
    assert entry["rejected"] == ["broken"] and "broken" not in entry["us"]


def test_a_kernel_that_fails_on_this_machine_is_skipped_with_a_warning(monkeypatch):
    def refuses(x, weight):
        raise RuntimeError("mkldnn_linear: this CPU lacks the instructions\nsecond line")

    refusing = Candidate("refusing", "fp32", lambda w: w.detach(), refuses, lambda: True, "test")
    monkeypatch.setattr(linear, "CANDIDATES", (*CANDIDATES, refusing))
    monkeypatch.setitem(linear._BY_NAME, "refusing", refusing)
    layer = backend_layer(32, 64, ("fp32",))
    with pytest.warns(BackendWarning, match=r"refusing does not run on this machine \(mkldnn_linear: this CPU"):
        assert linear.choose(layer, 1) != "refusing"
    assert "refusing" in linear._choices()["fp32 32x64 rows 1"]["rejected"]


def test_forcing_a_kernel_and_a_clear_error_for_an_unknown_one(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "mkl")
    assert linear.choose(backend_layer(32, 32, ("fp32",)), 16) == "mkl"
    int8 = next((c.name for c in AVAILABLE if c.storage == "int8"), None)
    if int8 is not None:  # mkl reads no int8 weights: the int8 layer keeps its format's default kernel
        assert linear.choose(backend_layer(32, 32, ("int8",)), 16) == int8
    monkeypatch.setenv(BACKEND_ENV, "cublas")
    with pytest.raises(BackendError, match="T5KIT_LINEAR_BACKEND='cublas' is not a kernel: use auto or one of mkl"):
        linear.choose(backend_layer(32, 32, ("fp32",)), 1)


def test_a_weight_changed_in_place_is_repacked(monkeypatch):
    """An optimizer step between two generations must not leave the prepacked copy stale."""
    monkeypatch.setenv(BACKEND_ENV, "onednn" if torch.backends.mkldnn.is_available() else "mkl")
    layer = backend_layer(64, 32, ("fp32",))
    x = torch.randn(3, 32)
    with torch.no_grad():
        before = layer(x)
        layer.weight.mul_(-2.0)
        after = layer(x)
    exact = x.double() @ layer.weight.double().T
    assert ((after.double() - exact).abs() <= error_bound("fp32", x, layer.weight.double())).all()
    assert not torch.allclose(before, after)


def test_a_corrupt_cache_is_ignored_with_a_warning_and_rewritten(tmp_path):
    path = tmp_path / "cache" / linear.CACHE_FILE
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    layer = backend_layer(16, 16, ("fp32",))
    with pytest.warns(BackendWarning, match="ignoring the linear-backend cache"):
        linear.choose(layer, 1)
    assert json.loads(path.read_text())["version"] == 1


def test_report_and_summary_cover_every_shape_and_bucket():
    torch.manual_seed(0)
    model = install(inference_model(T5Model(T5Config.from_preset("tiny")).eval(), "int8"), "inference")
    choices = report(model, rows=(1, 16))
    # the model's own linears and the fused q/k/v and wi_0/wi_1 copies it runs (t5kit.kernels.inference.fused)
    linears = [m for m in linear.inference_linears(model) if isinstance(m, BackendLinear)]
    shapes = {(m.out_features, m.in_features) for m in linears}
    assert (3 * model.config.inner_dim, model.config.d_model) in shapes
    assert (2 * model.config.d_ff, model.config.d_model) in shapes
    assert {(c.shape, c.rows) for c in choices} == {(s, r) for s in shapes for r in (1, 16)}
    assert sum(c.modules for c in choices if c.rows == 1) == len(linears)
    assert all(c.kernel in c.timings_us for c in choices)
    text = summary(model)
    assert text.startswith("CPU: ") and f"torch {torch.__version__}" in text
    assert f"{model.config.vocab_size}x{model.config.d_model}" in text
    assert f"{3 * model.config.inner_dim}x{model.config.d_model}" in text


@pytest.mark.parametrize("family", ["v1.0-relu-tied", "v1.1-gated-untied"])
def test_a_model_on_the_chosen_kernels_is_as_accurate_as_transformers(family, tmp_path):
    """Logits with every linear on its chosen kernel are no further from transformers in float64 than
    transformers in float32 is (tests/hf_models.py). Decoding steps (1-4 rows): tests/generate/test_search.py
    holds generation token-identical to transformers with the chosen kernels installed."""
    hf = build_hf_model(family)
    hf.save_pretrained(tmp_path / "model")
    model = install(T5Model.from_pretrained(tmp_path / "model").eval(), "inference")
    exact_model = float64_twin(hf)
    for batch in (3, 5):
        ids, mask, labels = padded_batch(hf.config.vocab_size, batch=batch)
        with torch.no_grad():
            ours = model(input_ids=ids, attention_mask=mask, labels=labels).logits
            theirs = hf(input_ids=ids, attention_mask=mask, labels=labels).logits
            exact = exact_model(input_ids=ids, attention_mask=mask, labels=labels.clone()).logits
        assert_as_accurate_as_reference(ours, theirs, exact, f"{family} batch {batch}")
    kernels = {c.kernel for c in report(model, rows=(1, 64))}
    assert kernels  # the report names what ran


@pytest.mark.parametrize("text, name, native", [
    ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n"
     "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_int8\n\nprocessor\t: 1\nmodel name\t: other\n",
     "Intel(R) Xeon(R) Processor", True),
    ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 fma\n",
     "AMD EPYC 7B13", False),
    ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n", "", True),
])
def test_cpuinfo_parsing(text, name, native, monkeypatch):
    parsed_name, flags = parse_cpuinfo(text)
    assert parsed_name == name
    monkeypatch.setattr(cpu, "_cpu", lambda: (name or "arm", flags))
    assert native_bf16() is native


def test_a_frozen_layer_still_passes_gradients_to_its_input_and_a_layer_pickles(monkeypatch):
    """The kernels have no autograd: a frozen weight with an input that needs a gradient (a frozen base under
    an adapter) must take the plain path, and oneDNN's packed copy must not break pickling."""
    import pickle

    monkeypatch.setenv(BACKEND_ENV, "onednn" if torch.backends.mkldnn.is_available() else "mkl")
    layer = backend_layer(16, 32, ("fp32",)).requires_grad_(False)
    x = torch.randn(4, 32, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, layer.weight.sum(0).expand(4, 32))
    with torch.no_grad():
        expected = layer(x)  # builds the packed copy
    clone = pickle.loads(pickle.dumps(layer))
    with torch.no_grad():
        assert torch.equal(clone(x), expected)


def test_reduced_precision_fp32_matmuls_take_pytorchs_own_path():
    layer = backend_layer(16, 32, ("fp32",))
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert layer.storages() == ()
        with torch.no_grad():
            assert torch.equal(layer(torch.ones(2, 32)), F.linear(torch.ones(2, 32), layer.weight))
    finally:
        torch.set_float32_matmul_precision(before)
    assert layer.storages() == ("fp32",)


def test_a_kernel_limited_to_some_buckets_is_a_candidate_only_there(monkeypatch):
    """MKL's packed sgemm is packed for one row: a candidate at bucket 1 only (and exact elsewhere anyway)."""
    packed = linear._BY_NAME["mkl-packed"]
    assert packed.serves(1) and not packed.serves(4)
    names = {c.name for c in linear.candidates(("fp32",), 16)}
    assert "mkl-packed" not in names and "mkl" in names
    if packed.available():
        assert "mkl-packed" in {c.name for c in linear.candidates(("fp32",), 1)}
        layer = backend_layer(48, 32, ("fp32",))
        x = torch.randn(3, 32)
        with torch.no_grad():  # another row count runs the unpacked GEMM: exactly F.linear
            assert torch.equal(packed.run(x, packed.pack(layer.weight)), F.linear(x, layer.weight))
        monkeypatch.setenv(BACKEND_ENV, "mkl-packed")  # forced, it applies where it serves; elsewhere the default
        assert linear.choose(layer, 1) == "mkl-packed" and linear.choose(layer, 16) == "mkl"
