"""A whole decoder layer's decoding step in one native call (t5kit.kernels.inference.decoder, decoder_step.c):
against float64, token for token against the per-norm path and the plain model, and when it is not taken."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from t5kit import T5Model
from t5kit.adapters.lora import LoRAConfig, add_lora
from t5kit.generate import generate
from t5kit.kernels import install, uninstall
from t5kit.kernels.inference import decoder, linear, native
from t5kit.kernels.inference.decoder import InferenceDecoder, InferenceDecoderLayer
from t5kit.kernels.inference.precision import inference_model
from t5kit.model.cache import DecoderCache

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"no native kernels here: {native.unavailable()}")

U = linear.UNIT_ROUNDOFF["fp32"]
GEMV = {"fp32": "avx2-gemv", "fp16w": "avx2-gemv-fp16", "int8": "avx2-gemv-int8"}
FEED_FORWARD = {"relu": "relu", "gated": "gated-gelu"}


@pytest.fixture
def forced(monkeypatch):
    """Force one kernel for every linear layer (the tiny shapes here would time MKL fastest, which the whole step
    cannot call); the choices are reset before and after."""
    def force(kernel: str) -> None:
        monkeypatch.setenv(linear.BACKEND_ENV, kernel)
        linear.reset()
    yield force
    monkeypatch.delenv(linear.BACKEND_ENV, raising=False)
    linear.reset()


@pytest.fixture
def layer_calls(monkeypatch):
    calls = []
    real = native.decoder_layer
    monkeypatch.setattr(native, "decoder_layer", lambda lib, args: calls.append(args[2]) or real(lib, args))
    return calls


def model(feed_forward: str, seed: int = 0, **overrides) -> T5Model:
    torch.manual_seed(seed)
    made = T5Model.from_preset("tiny", num_decoder_layers=2, vocab_size=512,
                               feed_forward_proj=FEED_FORWARD.get(feed_forward, feed_forward), **overrides).eval()
    with torch.no_grad():  # position biases large enough that a wrong key column changes the tokens
        for name, parameter in made.named_parameters():
            if "relative_bias" in name:
                parameter.normal_(std=3.0)
    return made


def step_inputs(config, rows: int, beams: int, start: int, source: int, joined: bool, seed: int = 0):
    """A decoding step's inputs for layer 0: x, the self-attention bias and a cache with ``start`` positions."""
    g = torch.Generator().manual_seed(seed)
    heads, d_kv, items = config.num_heads, config.d_kv, rows // beams
    cross_bias = torch.zeros(items, 1, 1, source)
    cross_bias[0, ..., source - 3:] = torch.finfo(torch.float32).min  # the first item's padding
    cache = DecoderCache(self_kv=torch.randn(2 * config.num_decoder_layers, rows, heads, start + 8, d_kv, generator=g),
                         cross_k=[torch.randn(items, heads, source, d_kv, generator=g) for _ in range(2)],
                         cross_v=[torch.randn(items, heads, source, d_kv, generator=g) for _ in range(2)],
                         cross_bias=cross_bias, self_bias_by_distance=[torch.randn(heads, start + 8, generator=g)],
                         length=start, beams=beams)
    bias = cache.self_bias_by_distance[0][None, :, None, -(start + 8):][..., :start + 1]
    if joined:  # continuous batching: a row that joined later does not see the columns before it
        mask = torch.zeros(rows, start + 1)
        mask[-1, :2] = torch.finfo(torch.float32).min
        bias = bias + mask[:, None, None, :]
    x = torch.randn(rows, 1, config.d_model, generator=g) * 3
    return x, bias, cache


def with_stored_weights(layer: torch.nn.Module, fast_layer: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A plain copy of ``layer`` in ``dtype`` whose linear weights are exactly what ``fast_layer``'s kernels read
    (its fp16 / int8 copies, widened)."""
    plain = copy.deepcopy(layer).to(dtype)
    for name, module in fast_layer.named_modules():
        if isinstance(module, linear.BackendLinear):
            storage = module.storages()[0]
            plain.get_submodule(name).weight.data = linear.stored_weight64(module, storage).to(dtype)
    return plain


def with_adapter_terms(adapted: T5Model) -> T5Model:
    """LoRA starts as the identity (B = 0): give B values, so that an adapter ignored would change the tokens."""
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if name.endswith("lora_B"):
                parameter.normal_(std=0.5)
    return adapted


def run_layer(layer, x, bias, cache):
    cache = copy.deepcopy(cache)
    with torch.no_grad():
        out = layer(x, bias, None, None, cache, 0)
    start = cache.length
    return out, cache.self_k[0][:, :, start], cache.self_v[0][:, :, start]


@pytest.mark.parametrize("feed_forward", ["relu", "gated"])
@pytest.mark.parametrize(("precision", "rows", "beams", "joined"),
                         [("fp32", 1, 1, False), ("fp32", 6, 3, False), ("fp32", 16, 1, True), ("fp16w", 4, 2, False),
                          ("int8", 3, 1, True)])
def test_the_whole_step_is_as_accurate_as_the_plain_float32_layer(feed_forward, precision, rows, beams, joined,
                                                                   forced, layer_calls):
    """Against the plain layer in float64 on the same stored weights, the native step's error is at most 4x that
    of the plain float32 layer: both make the same float32 operations (products over K terms, softmax, norms),
    in other orders, which changes an error bound by a small constant, not its order (a bfloat16 rounding
    anywhere would be ~2^16 times larger: the last assertion)."""
    forced(GEMV[precision])
    plain = model(feed_forward)
    fast = install(inference_model(copy.deepcopy(plain), precision), "inference")
    layer = fast.decoder.layers[0]
    x, bias, cache = step_inputs(plain.config, rows, beams, start=5, source=9, joined=joined)
    native_out = run_layer(layer, x, bias, cache)
    assert layer_calls == [rows]
    reference = run_layer(with_stored_weights(plain.decoder.layers[0], layer, torch.float64), x.double(),
                          bias.double(), _double_cache(cache))
    float32 = run_layer(with_stored_weights(plain.decoder.layers[0], layer, torch.float32), x, bias, cache)
    for got, want, plain32 in zip(native_out, reference, float32):
        scale = want.abs().max()
        allowed = 4 * max(float((plain32.double() - want).abs().max()), float(U * scale))
        assert float((got.double() - want).abs().max()) <= allowed
    out, expected = native_out[0].double(), reference[0]
    assert float((out.bfloat16().double() - expected).abs().max()) > 4 * float(
        (float32[0].double() - expected).abs().max())


def _double_cache(cache: DecoderCache) -> DecoderCache:
    return DecoderCache(self_kv=cache.self_kv.double(), cross_k=[t.double() for t in cache.cross_k],
                        cross_v=[t.double() for t in cache.cross_v], cross_bias=cache.cross_bias.double(),
                        self_bias_by_distance=[t.double() for t in cache.self_bias_by_distance],
                        length=cache.length, beams=cache.beams)


@pytest.mark.parametrize("feed_forward", ["relu", "gated"])
@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_with_the_whole_step_gives_the_plain_models_tokens(feed_forward, beams, forced, layer_calls,
                                                                   monkeypatch):
    forced("avx2-gemv")
    plain = model(feed_forward)
    fast = install(copy.deepcopy(plain), "inference")
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 512, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    options = dict(max_new_tokens=8, num_beams=beams, suppress_tokens=[1])
    one_by_one = []  # layers stepped one by one (their own _whole_step) rather than by the decoder's arguments
    real = InferenceDecoderLayer._whole_step
    monkeypatch.setattr(InferenceDecoderLayer, "_whole_step", lambda *a: one_by_one.append(1) or real(*a))
    tokens = generate(fast, ids, mask, **options).sequences
    assert len(layer_calls) == 2 * (tokens.shape[1] - 1) and one_by_one == []  # every layer of every step
    assert "decoder layer step (x2): rows 1-16 whole layer native" in linear.summary(fast)  # t5kit info --backend
    assert torch.equal(tokens, generate(plain, ids, mask, **options).sequences)
    layer_calls.clear()
    layers_alone = without_native_steps(copy.deepcopy(fast), layers=False)
    assert torch.equal(tokens, generate(layers_alone, ids, mask, **options).sequences)
    assert len(layer_calls) == 2 * (tokens.shape[1] - 1) and len(one_by_one) == len(layer_calls)
    layer_calls.clear()
    per_norm = without_native_steps(copy.deepcopy(fast), layers=True)
    assert torch.equal(tokens, generate(per_norm, ids, mask, **options).sequences)
    assert layer_calls == []


def without_native_steps(model: T5Model, layers: bool) -> T5Model:
    """``model`` whose decoder steps its layers one by one (and, with ``layers``, whose layers take the per-norm
    path)."""
    for module in model.modules():
        if isinstance(module, InferenceDecoder):
            module._stack = lambda *args: None
        if layers and isinstance(module, InferenceDecoderLayer):
            module._step_plan = lambda *args: None
    return model


def test_the_step_is_not_taken_where_its_conditions_fail(forced, layer_calls):
    ids = torch.randint(3, 512, (2, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    options = dict(max_new_tokens=4, suppress_tokens=[1])
    forced("mkl")  # a forced kernel that the step cannot call
    on_mkl = install(model("relu"), "inference")
    generate(on_mkl, ids, mask, **options)
    assert layer_calls == []
    assert "decoder layer step (x2): rows 1-16 modules" in linear.summary(on_mkl)
    forced("avx2-gemv")
    generate(install(model("gated-silu"), "inference"), ids, mask, **options)  # an activation it lacks
    assert layer_calls == []
    adapted = add_lora(model("gated"), LoRAConfig(targets=("q", "v")))  # adapters compute their own terms
    with_adapter_terms(adapted)
    fast = install(copy.deepcopy(adapted), "inference")
    assert torch.equal(generate(fast, ids, mask, **options).sequences,
                       generate(adapted, ids, mask, **options).sequences)
    assert layer_calls == []


def test_a_changed_weight_or_adapter_rebuilds_the_plan(forced, layer_calls):
    forced("avx2-gemv")
    plain = model("gated")
    fast = install(copy.deepcopy(plain), "inference")
    ids = torch.randint(3, 512, (2, 7), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    options = dict(max_new_tokens=6, suppress_tokens=[1])
    generate(fast, ids, mask, **options)
    assert layer_calls
    with torch.no_grad():  # in place: same tensor, new version
        for m in (plain, fast):
            m.decoder.layers[1].ffn.wo.weight.mul_(-3)
            m.decoder.layers[0].cross_attn_norm.weight.add_(0.5)
    assert torch.equal(generate(fast, ids, mask, **options).sequences, generate(plain, ids, mask, **options).sequences)
    layer_calls.clear()
    with_adapter_terms(add_lora(fast, LoRAConfig(targets=("o",)))).eval()  # replaces modules under a built plan
    generate(fast, ids, mask, **options)
    assert layer_calls == []
    uninstall(fast)
    assert all(decoder.PLANS not in m.__dict__ for m in fast.modules())


@pytest.mark.parametrize("whole_faster", [True, False])
def test_stand_in_kernels_are_used_only_where_the_whole_step_was_timed_faster(whole_faster, forced, layer_calls,
                                                                              monkeypatch):
    """Where a gemv kernel stands in for a kernel chosen elsewhere, the step is timed against the per-norm path
    once (per machine, layer shape and bucket) and used only if faster; the decision is cached."""
    forced("avx2-gemv")
    real = linear.native_kernel
    monkeypatch.setattr(linear, "native_kernel", lambda module, rows: (*real(module, rows)[:2], True))
    timed = []

    def fake_timings(self, rows, plan):
        timed.append(rows)
        assert self._whole_step(*fake_step(self, rows), 0, plan) is not None  # the plan runs as timed
        layer_calls.clear()
        return {"whole": 1.0, "per-norm": 2.0} if whole_faster else {"whole": 2.0, "per-norm": 1.0}
    monkeypatch.setattr(InferenceDecoderLayer, "_time_steps", fake_timings)
    ids = torch.randint(3, 512, (2, 7), generator=torch.Generator().manual_seed(5))
    options = dict(max_new_tokens=5, suppress_tokens=[1])
    plain = model("relu", num_heads=2, d_kv=8 if whole_faster else 12)  # a layer shape nothing else has decided
    fast = install(copy.deepcopy(plain), "inference")
    tokens = generate(fast, ids, torch.ones_like(ids), **options).sequences
    assert timed == [4]  # one layer shape, one bucket (2 rows): timed once, the second layer reads the cache
    assert bool(layer_calls) == whole_faster
    assert torch.equal(tokens, generate(plain, ids, torch.ones_like(ids), **options).sequences)
    layer_calls.clear()
    again = install(copy.deepcopy(plain), "inference")  # a new model: plans built anew, the decision cached
    generate(again, ids, torch.ones_like(ids), **options)
    assert timed == [4] and bool(layer_calls) == whole_faster


def fake_step(layer: InferenceDecoderLayer, rows: int) -> tuple:
    """A step's x, self bias and cache for ``layer``'s shapes (its layer number: 0)."""
    attn = layer.self_attn
    shapes = SimpleNamespace(num_heads=attn.num_heads, d_kv=attn.d_kv, num_decoder_layers=1,
                             d_model=attn.q.in_features)
    return step_inputs(shapes, rows, 1, start=3, source=5, joined=False)
