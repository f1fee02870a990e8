"""The training kernels' float32 products (t5kit.kernels.training.gemm) on each backend, against float64.

The bound is the inference chooser's (``linear.error_bound``): float32 accumulation over K terms in any order,
``gamma_K * |a| |b|`` (Higham 3.1). Both backends must meet it for every form a training step uses (plain and
transposed operands, scaled, accumulated, into a recycled buffer); the choice is forced, cached and timed.
"""

from __future__ import annotations

import copy

import pytest
import torch

from t5kit import T5Config, T5Model
from t5kit.kernels import install, uninstall
from t5kit.kernels.inference import linear
from t5kit.kernels.inference.linear import BackendError, error_bound
from t5kit.kernels.training import gemm
from t5kit.kernels.training import linear as training_linear


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("T5KIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(gemm.GEMM_ENV, raising=False)
    linear.reset()
    gemm.reset()
    yield tmp_path
    linear.reset()
    gemm.reset()


def _within_bound(result: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0,
                  acc: torch.Tensor | None = None) -> None:
    exact = alpha * (a.double() @ b.double()) + (0 if acc is None else acc.double())
    bound = abs(alpha) * error_bound("fp32", a, b.t().double())
    if acc is not None:  # one more rounding: the sum with the accumulator
        bound = bound + torch.finfo(torch.float32).eps * exact.abs()
    assert result.dtype == torch.float32
    assert bool(((result.double() - exact).abs() <= bound).all())


@pytest.mark.parametrize("backend", gemm.BACKENDS)
def test_every_product_form_meets_the_float32_bound_on_each_backend(backend, cache_dir, monkeypatch):
    monkeypatch.setenv(gemm.GEMM_ENV, backend)
    assert gemm.backend() == backend or not torch.backends.mkldnn.is_available()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 24, generator=g)
    w = torch.randn(19, 24, generator=g)
    grad = torch.randn(37, 19, generator=g)
    for a, b in [(x, w.t()), (grad, w), (grad.t(), x)]:  # x W^T, g W, g^T x: a linear layer's three products
        _within_bound(gemm.mm(a, b), a, b)
        _within_bound(gemm.scaled_mm(a, b, 1 / 0.9), a, b, alpha=1 / 0.9)
        out = torch.full((a.shape[0], b.shape[1]), float("nan"))
        assert gemm.mm_into(out, a, b) is out
        _within_bound(out, a, b)
        acc = torch.randn(a.shape[0], b.shape[1], generator=g)
        _within_bound(gemm.add_mm(acc.clone(), a, b), a, b, acc=acc)


def test_other_dtypes_and_shapes_take_torch_s_own_call(cache_dir, monkeypatch):
    monkeypatch.setenv(gemm.GEMM_ENV, "onednn")
    a, b = torch.randn(5, 8, dtype=torch.bfloat16), torch.randn(8, 3, dtype=torch.bfloat16)
    assert torch.equal(gemm.mm(a, b), torch.mm(a, b))
    a64, b64 = a.double(), b.double()
    assert torch.equal(gemm.mm(a64, b64), torch.mm(a64, b64))


def test_the_choice_is_timed_once_cached_per_machine_and_forced_by_the_environment(cache_dir, monkeypatch):
    chosen = gemm.backend()
    assert chosen in gemm.BACKENDS
    entry = linear.cached_choice("training gemm fp32")
    assert entry is not None and entry["kernel"] == chosen and set(entry["us"]) <= set(gemm.BACKENDS)
    assert entry["us"]["mkl"] > 0
    assert "training gemm fp32" in (cache_dir / linear.CACHE_FILE).read_text()
    # a new process (here: the in-memory choice forgotten) reads the cached choice instead of timing again
    gemm.reset()
    linear.reset()
    monkeypatch.setattr(gemm, "choose", lambda: pytest.fail("timed again despite the cache"))
    assert gemm.backend() == chosen
    monkeypatch.setenv(gemm.GEMM_ENV, "mkl")
    assert gemm.backend() == "mkl"
    monkeypatch.setenv(gemm.GEMM_ENV, "fastest")
    with pytest.raises(BackendError, match="T5KIT_TRAINING_GEMM='fastest' is not a training GEMM backend: "
                                           "use auto or one of mkl, onednn"):
        gemm.backend()


def test_onednn_is_chosen_only_when_clearly_faster_and_accurate(cache_dir, monkeypatch):
    times = {"mkl": 1.0, "onednn": 0.95}
    monkeypatch.setattr(gemm, "_time", lambda products, backend, rounds=5: times[backend])
    assert gemm.choose()[0] == "mkl"  # within the margin: the reference path stays
    times["onednn"] = 0.5
    assert gemm.choose()[0] == ("onednn" if torch.backends.mkldnn.is_available() else "mkl")
    monkeypatch.setattr(gemm, "_onednn_accurate", lambda products: False)
    assert gemm.choose()[0] == "mkl"


@pytest.mark.parametrize("bias", [False, True])
def test_a_linear_layer_s_training_pass_on_onednn_meets_the_bound_with_its_gradients(bias, cache_dir, monkeypatch):
    """nn.Linear in training with the kernels installed and oneDNN chosen: output and the input, weight and bias
    gradients within the float32 bound of the float64 computation (3-D input, as a model's layers get it)."""
    monkeypatch.setenv(gemm.GEMM_ENV, "onednn")
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    torch.manual_seed(0)
    layer = install(torch.nn.Linear(24, 19, bias=bias)).train()
    x = torch.randn(3, 7, 24, requires_grad=True)
    out = layer(x)
    assert type(out.grad_fn).__name__ == "_LinearBackward"  # the kernel's Function, not torch's addmm/mm
    upstream = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, layer.weight] + ([layer.bias] if bias else []), upstream)
    x2, w, g2 = x.detach().reshape(-1, 24), layer.weight.detach(), upstream.reshape(-1, 19)
    acc = layer.bias.detach().expand(21, 19) if bias else None
    if acc is None:
        _within_bound(out.detach().reshape(-1, 19), x2, w.t())
    else:
        _within_bound(out.detach().reshape(-1, 19), x2, w.t(), acc=acc)
    _within_bound(grads[0].reshape(-1, 24), g2, w)
    _within_bound(grads[1], g2.t(), x2)
    if bias:
        torch.testing.assert_close(grads[2].double(), g2.double().sum(0), rtol=0,
                                   atol=21 * torch.finfo(torch.float32).eps * float(g2.abs().sum(0).max()))


def test_a_linear_layer_keeps_torch_s_path_outside_a_float32_training_pass(cache_dir, monkeypatch):
    monkeypatch.setenv(gemm.GEMM_ENV, "onednn")
    layer = install(torch.nn.Linear(8, 4)).train()
    x = torch.randn(2, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(layer(x).grad_fn).__name__ != "_LinearBackward"
    assert type(layer.eval()(x).grad_fn).__name__ != "_LinearBackward"
    monkeypatch.setenv(gemm.GEMM_ENV, "mkl")
    assert type(layer.train()(x).grad_fn).__name__ != "_LinearBackward"


def test_a_gated_model_trains_alike_on_both_backends(cache_dir, monkeypatch):
    """A gated model without dropout (every projection then runs TrainingLinear, the head its Function): the
    loss and every gradient on oneDNN off the float64 model's by at most 4x what MKL's are off it (they round
    in another order), or 16 float32 ulps of the gradient's largest value."""
    config = T5Config.from_preset("tiny", feed_forward_proj="gated-gelu", dropout_rate=0.0)
    ids = torch.randint(3, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    plain = T5Model(config)

    def run(model: T5Model) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = model.train()(input_ids=ids, labels=ids[:, :5]).loss
        loss.backward()
        return loss.detach().double(), {n: p.grad.double() for n, p in model.named_parameters()}

    exact = run(copy.deepcopy(plain).double())
    calls: list[int] = []
    apply = training_linear._Linear.apply
    monkeypatch.setattr(training_linear._Linear, "apply", lambda *args: calls.append(1) or apply(*args))
    results = {}
    for backend in gemm.BACKENDS:
        monkeypatch.setenv(gemm.GEMM_ENV, backend)
        calls.clear()
        results[backend] = run(install(copy.deepcopy(plain)))
        # oneDNN: every projection ran the kernel's Function (an encoder layer: q, k, v, o, wi_0, wi_1, wo; a
        # decoder layer: cross attention's four more; the head has its own Function); MKL: the plain layers
        projections = config.num_layers * 7 + config.num_decoder_layers * 11
        assert len(calls) == (0 if backend == "mkl" else projections), (backend, len(calls))
    eps = torch.finfo(torch.float32).eps
    for ours, theirs, reference in zip(results["onednn"], results["mkl"], exact):
        pairs = ours.items() if isinstance(ours, dict) else [("loss", ours)]
        for name, value in pairs:
            ref = reference[name] if isinstance(reference, dict) else reference
            other = theirs[name] if isinstance(theirs, dict) else theirs
            bound = max(4 * float((other - ref).abs().max()), 16 * eps * float(ref.abs().max()))
            assert float(ref.abs().max()) > 0 and float((value - ref).abs().max()) <= bound, name


def test_empty_and_broadcast_operands_and_double_backward_take_torch_s_call(cache_dir, monkeypatch):
    """oneDNN refuses an empty inner dimension and has no derivative: a batch of 0 rows trains (zero gradients),
    an expanded gradient is multiplied right, and a second-order gradient (create_graph) equals plain nn.Linear's."""
    monkeypatch.setenv(gemm.GEMM_ENV, "onednn")
    layer = install(torch.nn.Linear(8, 4)).train()
    empty = torch.randn(0, 8, requires_grad=True)
    layer(empty).backward(torch.empty(0, 4))  # a dense (not expanded) empty gradient
    assert layer.weight.grad is not None and float(layer.weight.grad.abs().max()) == 0.0
    a, b = torch.randn(5, 3), torch.ones(3, 1).expand(3, 4)  # a zero stride
    _within_bound(gemm.mm(a, b), a, b)
    plain = uninstall(copy.deepcopy(layer))
    second = []
    for model in (layer, plain):
        x = torch.randn(6, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
        (gx,) = torch.autograd.grad(torch.tanh(model(x)).sum(), x, create_graph=True)
        second.append(torch.autograd.grad((gx**2).sum(), model.weight)[0])
    assert float(second[1].abs().max()) > 0
    torch.testing.assert_close(second[0], second[1], rtol=1e-5, atol=1e-6)


def test_a_malformed_cache_entry_is_timed_again(cache_dir, monkeypatch):
    linear.remember_choice("training gemm fp32", "onednn")  # not an entry this code writes
    gemm.reset()
    linear.reset()
    monkeypatch.setattr(gemm, "choose", lambda: ("mkl", {"mkl": 1.0}))
    assert gemm.backend() == "mkl"
    assert linear.cached_choice("training gemm fp32", from_disk=True) == {"kernel": "mkl", "us": {"mkl": 1.0}}
    assert gemm.describe().startswith("training products (float32): mkl (auto;")
