"""The CPU training kernels (t5kit.kernels.training) against the plain computation they replace.

t5kit draws its dropout masks from 16-bit slices of 64-bit random words (faster than torch's Bernoulli
sampler); these tests hold it to what dropout must be: the right rate, unbiased slices, the right scale,
the matching gradient, reproducible from the seed. Each fused Function is checked against the same steps
written out with the same mask.
"""

from __future__ import annotations

import pytest
import torch

from t5kit import T5Config, T5Model
from t5kit.kernels import install
from t5kit.kernels.training.dropout import FastDropout, dropout, dropout_keep_mask
from t5kit.kernels.training.head import RecycledBuffers, cross_entropy
from t5kit.model import Attention, FeedForward, RMSNorm, padding_bias


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_dropout_mask_rate_and_independence(p):
    torch.manual_seed(0)
    n = 1_000_003  # not a multiple of the 4 slices per random word
    keep = dropout_keep_mask((n,), p)
    assert keep.dtype == torch.float32 and set(keep.unique().tolist()) <= {0.0, 1.0}
    # 6 standard deviations of a binomial rate over n draws: a biased slice (e.g. a sign bit) fails this
    assert abs(float(1 - keep.mean()) - p) < 6 * (p * (1 - p) / n) ** 0.5
    usable = keep[: n // 4 * 4].view(-1, 4)  # the four slices of each random word
    for s in range(4):
        assert abs(float(1 - usable[:, s].mean()) - p) < 6 * (p * (1 - p) / usable.shape[0]) ** 0.5
    both_dropped = float(((1 - keep[:-1]) * (1 - keep[1:])).mean())  # neighbours: independent, so p^2
    assert abs(both_dropped - p * p) < 6 * (p * p * (1 - p * p) / n) ** 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_scales_kept_values_and_gradient(dtype):
    torch.manual_seed(0)
    x = (torch.rand(64, 257) + 0.5).to(dtype).requires_grad_()  # no exact zeros: zero means dropped
    torch.manual_seed(1)
    y = dropout(x, 0.1, True)
    kept = y != 0
    assert y.dtype == dtype and 0.08 < 1 - float(kept.float().mean()) < 0.12
    torch.testing.assert_close(y[kept], (x[kept].float() / 0.9).to(dtype))
    upstream = torch.randn(64, 257, dtype=dtype)
    y.backward(upstream)
    torch.testing.assert_close(x.grad, (upstream.float() * kept / 0.9).to(dtype))
    torch.manual_seed(1)
    assert torch.equal(dropout(x.detach(), 0.1, True), y.detach())  # reproducible from the seed
    assert dropout(x, 0.1, False) is x and dropout(x, 0.0, True) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout(x, 1.0, True)


@pytest.mark.parametrize("family", ["gated-untied", "relu-tied"])
def test_dropout_model_training_is_reproducible_and_checkpointing_replays_masks(family):
    """Same seed, same loss and gradients; activation checkpointing (which re-runs the forward in backward
    after restoring the RNG state) gives the same gradients as keeping activations. Both feed-forward kinds:
    the relu one fuses relu and dropout in place, and the tied head takes the in-place embedding gradient."""
    config = T5Config.from_preset("tiny", dropout_rate=0.1)
    if family == "relu-tied":
        config = _relu_tied_tiny(0.1)
    ids = torch.randint(3, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(3, config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(2))

    def grads(checkpointing: bool):
        torch.manual_seed(0)
        model = install(T5Model(config)).train()
        if checkpointing:
            model.set_activation_checkpointing(True)
        torch.manual_seed(3)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        return float(loss), model.shared.weight.grad.clone()

    loss_a, grad_a = grads(False)
    loss_b, grad_b = grads(False)
    loss_c, grad_c = grads(True)
    assert loss_a == loss_b and torch.equal(grad_a, grad_b)
    assert loss_c == pytest.approx(loss_a, abs=1e-6)
    torch.testing.assert_close(grad_c, grad_a, atol=1e-6, rtol=1e-5)


def _relu_tied_tiny(dropout_rate: float) -> T5Config:
    return T5Config.from_preset("tiny", feed_forward_proj="relu", tie_word_embeddings=True, dropout_rate=dropout_rate)


def test_fused_relu_dropout_matches_relu_then_dropout():
    """The relu feed-forward fuses relu and dropout and applies 1/(1-p) after wo: same values and gradients
    as relu, mask, scale, wo done one by one with the same mask (fp32; 1e-5, as the scale is applied at a
    different point, so sums round differently)."""
    config = _relu_tied_tiny(0.1)
    torch.manual_seed(0)
    ffn = install(FeedForward(config)).train()
    x = torch.randn(3, 7, config.d_model, requires_grad=True)
    upstream = torch.randn(3, 7, config.d_model)
    params = (x, ffn.wi.weight, ffn.wo.weight)
    torch.manual_seed(5)
    out = ffn(x)
    grads = torch.autograd.grad(out, params, upstream)
    torch.manual_seed(5)
    keep = dropout_keep_mask((3, 7, config.d_ff), 0.1)
    assert 0 < float(keep.mean()) < 1
    ref = ffn.wo(torch.relu(ffn.wi(x)) * keep / 0.9)
    ref_grads = torch.autograd.grad(ref, params, upstream)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(grads, ref_grads):
        assert theirs.abs().max() > 0
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ffn.eval()(x), ffn.wo(torch.relu(ffn.wi(x))))  # eval: no dropout, no scale

    ffn.train()  # under bf16 autocast: the same casts as autocast's linear layers, float32 weight gradients
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(5)
        out = ffn(x)
        grads = torch.autograd.grad(out, params, upstream)
        torch.manual_seed(5)
        keep = dropout_keep_mask((3, 7, config.d_ff), 0.1, torch.bfloat16)
        ref = ffn.wo(torch.relu(ffn.wi(x)) * keep / 0.9)
        ref_grads = torch.autograd.grad(ref, params, upstream)
    assert out.dtype == ref.dtype == torch.bfloat16
    for ours, theirs in zip((out, *grads), (ref, *ref_grads)):
        assert ours.dtype == theirs.dtype == (torch.bfloat16 if ours is out else torch.float32)
        # bf16 rounds in another order: within 2 bf16 ulps of the largest value, 1% in norm (measured: 1 ulp)
        assert float((ours.float() - theirs.float()).norm() / theirs.float().norm()) < 1e-2
        torch.testing.assert_close(ours, theirs, atol=float(theirs.abs().max()) * 2**-6, rtol=0)


def written_out_attention(attn: Attention, x: torch.Tensor, bias: torch.Tensor, memory: torch.Tensor | None,
                          p: float) -> torch.Tensor:
    """Attention in training written out step by step through the module's own projections, with t5kit's dropout
    mask drawn where the fused Function draws it (the caller seeds torch's generator first)."""
    source = memory if memory is not None else x
    q, k, v = attn.heads(attn.q(x)), attn.heads(attn.k(source)), attn.heads(attn.v(source))
    probs = (q @ k.transpose(-1, -2) + bias).softmax(-1)
    probs = probs * dropout_keep_mask(probs.shape, p, probs.dtype) / (1 - p)
    return attn.o((probs @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


@pytest.mark.parametrize("kind", ["self", "cross"])
@pytest.mark.parametrize("autocast", [False, True])
def test_training_attention_with_dropout_matches_the_explicit_computation(kind, autocast):
    """Attention in training with dropout (t5kit's own Function: its layouts, the bias added in place, the
    mask's scale as the matmuls' alpha) against the same steps written out with the same mask: values and
    the gradients of the input, the encoder output (cross), the four projections and the relative-bias
    table (self; its bias broadcasts over the batch) within 1e-5 in float32; under bf16 autocast within 2
    bf16 ulps of each tensor's largest value and 1% in norm (measured: at most 1 ulp and 0.2-0.6%)."""
    config = _relu_tied_tiny(0.1)
    torch.manual_seed(0)
    cross = kind == "cross"
    attn = install(Attention(config, has_relative_bias=not cross, cross=cross)).train()
    assert attn.fused()
    x = torch.randn(2, 6, config.d_model, requires_grad=True)
    memory = torch.randn(2, 9, config.d_model, requires_grad=True) if cross else None
    upstream = torch.randn(2, 6, config.d_model)
    params = [x, attn.q.weight, attn.k.weight, attn.v.weight, attn.o.weight]
    params += [memory] if cross else [attn.relative_bias.weight]
    padding = torch.ones(2, 9)
    padding[1, 6:] = 0

    def run(explicit: bool) -> tuple[torch.Tensor, ...]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            bias = padding_bias(padding, torch.float32) if cross else attn.relative_bias(6, 6)
            torch.manual_seed(3)
            out = attn(x, bias, memory) if not explicit else written_out_attention(attn, x, bias, memory, 0.1)
            return (out, *torch.autograd.grad(out, params, upstream))

    ours, reference = run(False), run(True)
    for a, b in zip(ours, reference):
        assert b.abs().max() > 0
        assert a.dtype == b.dtype
        if autocast:  # bf16 rounds in another order: within 2 bf16 ulps of the largest value, 1% overall
            assert float((a.float() - b.float()).norm() / b.float().norm()) < 1e-2
            torch.testing.assert_close(a, b, atol=float(b.abs().max()) * 2**-6, rtol=0)
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if cross:  # the padded memory positions get no attention, so no gradient
        assert float(ours[-1][1, 6:].abs().max()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_dropout_add_matches_add_of_dropout(dtype):
    """``Dropout.add_to(residual, x)`` is residual + dropout(x) in one pass; the residual stays float32
    when x is bf16 (as under autocast), and each gets its own gradient in its own dtype."""
    drop = FastDropout(0.1).train()
    residual = torch.randn(4, 9, 32, requires_grad=True)
    x = torch.randn(4, 9, 32).to(dtype).requires_grad_()
    upstream = torch.randn(4, 9, 32)
    torch.manual_seed(11)
    out = drop.add_to(residual, x)
    grad_residual, grad_x = torch.autograd.grad(out, (residual, x), upstream)
    torch.manual_seed(11)
    keep = dropout_keep_mask(x.shape, 0.1, dtype)
    assert out.dtype == torch.float32 and grad_x.dtype == dtype
    torch.testing.assert_close(out, residual + x.float() * keep.float() / 0.9, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad_residual, upstream)
    torch.testing.assert_close(grad_x, (upstream * keep.float() / 0.9).to(dtype))
    assert torch.equal(drop.eval().add_to(residual, x), residual + x)


def test_tied_training_gradient_is_dense_and_equals_the_dense_lookup():
    """Training a tied model adds the lookup's gradient rows into the head's weight gradient in place
    (t5kit.kernels.training.head.TiedGradient); the result equals (1e-6) the plain lookup + linear head's,
    also when the loss never reaches the head, when the decoder's lookup is separate, and across gradient
    accumulation."""
    config = _relu_tied_tiny(0.0)
    torch.manual_seed(0)
    model = install(T5Model(config))
    ids = torch.randint(3, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(3, config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(2))

    def grad(train: bool, loss_of, backward_passes: int = 1, separate_lookups: bool = False) -> torch.Tensor:
        model.train(train)
        model.zero_grad(set_to_none=True)
        for _ in range(backward_passes):
            if separate_lookups:  # encoder states given: the decoder looks up its ids on its own
                memory = model.encode(ids)
                out = model(encoder_hidden_states=memory, labels=labels)
            else:
                out = model(input_ids=ids, labels=labels)
            loss_of(out).backward()
        g = model.shared.weight.grad
        assert g is not None and g.layout == torch.strided
        return g.clone()

    for loss_of in (lambda out: out.loss, lambda out: out.encoder_hidden_states.pow(2).sum()):
        sparse_path = grad(True, loss_of)
        dense_path = grad(False, loss_of)  # eval mode: the plain lookup (dropout is 0, so the same forward)
        assert dense_path.abs().max() > 0
        torch.testing.assert_close(sparse_path, dense_path, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad(True, lambda out: out.loss, separate_lookups=True),
                               grad(False, lambda out: out.loss, separate_lookups=True), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad(True, lambda out: out.loss, 2), 2 * grad(False, lambda out: out.loss),
                               atol=1e-6, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the head's own casts reproduce autocast's linear
        fused, plain = grad(True, lambda out: out.loss), grad(False, lambda out: out.loss)
    # bf16 products summed in another order: within 2 bf16 ulps of the largest gradient, 1% in norm
    assert float((fused - plain).norm() / plain.norm()) < 1e-2
    torch.testing.assert_close(fused, plain, atol=float(plain.abs().max()) * 2**-6, rtol=0)


@pytest.mark.parametrize("tied", [True, False])
def test_recycled_buffers_reuse_memory_and_never_overwrite_what_a_caller_kept(tied):
    """Training steps reuse the previous step's memory for the logits, their gradient and the head's weight
    gradient (t5kit.kernels.training.head.RecycledBuffers): weight gradients still equal the eval-mode
    path's (1e-6) step after step, gradient accumulation without zeroing still adds up, and logits or a
    gradient a caller still holds are left as they were."""
    import copy

    config = _relu_tied_tiny(0.0)
    config.tie_word_embeddings = tied
    torch.manual_seed(0)
    model = install(T5Model(config))
    ids = torch.randint(3, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(3, config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(2))

    def head_grad(train: bool, passes: int = 1) -> torch.Tensor:
        model.train(train)
        for _ in range(passes):
            model(input_ids=ids, labels=labels).loss.backward()
        grad = model.lm_head.weight.grad
        model.zero_grad(set_to_none=True)
        return grad

    reference = head_grad(False).clone()
    first = head_grad(True)  # this step's gradient is kept by the test: the next step must not write over it
    kept = first.clone()
    second = head_grad(True)
    assert second.data_ptr() != first.data_ptr() and torch.equal(first, kept)
    torch.testing.assert_close(second, reference, atol=1e-6, rtol=1e-5)
    del first, second
    pointers = set()
    for _ in range(3):  # nothing holds the last gradient any more: its memory comes back
        pointers.add(head_grad(True).data_ptr())
    assert len(pointers) == 1
    torch.testing.assert_close(head_grad(True, passes=2), 2 * reference, atol=1e-6, rtol=1e-5)

    model.train()
    out = model(input_ids=ids, labels=labels)
    logits = out.logits.clone()
    out.loss.backward()
    model(input_ids=ids, labels=labels).loss.backward()  # out.logits is still held: fresh memory this time
    assert torch.equal(out.logits, logits)
    assert isinstance(copy.deepcopy(model)._recycled, RecycledBuffers)
    assert model.eval()._recycled._storages == {}  # evaluation gives the memory back


class _Adapter(torch.nn.Module):
    """A low-rank adapter around a linear layer, as parameter-efficient fine-tuning libraries make them: it
    exposes the wrapped layer's ``weight`` but adds its own term in forward."""

    def __init__(self, base: torch.nn.Linear):
        super().__init__()
        self.base = base
        self.down = torch.nn.Parameter(torch.randn(2, base.in_features) * 0.1)
        self.up = torch.nn.Parameter(torch.randn(base.out_features, 2) * 0.1)

    @property
    def weight(self) -> torch.nn.Parameter:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + x @ self.down.t() @ self.up.t()


@pytest.mark.parametrize("tied", [True, False])
def test_training_fast_paths_leave_wrapped_layers_to_their_own_forward(tied):
    """The training Functions (attention, relu feed-forward, head, tied lookup) read weights directly; a layer
    wrapped by an adapter must still run its own forward, so its extra parameters get gradients."""
    config = T5Config.from_preset("tiny", feed_forward_proj="relu", tie_word_embeddings=tied, dropout_rate=0.1)
    torch.manual_seed(0)
    model = install(T5Model(config)).train()
    layer = model.encoder.layers[0]
    layer.self_attn.q = _Adapter(layer.self_attn.q)
    model.decoder.layers[0].cross_attn.v = _Adapter(model.decoder.layers[0].cross_attn.v)
    layer.ffn.wi = _Adapter(layer.ffn.wi)
    adapters = [layer.self_attn.q, model.decoder.layers[0].cross_attn.v, layer.ffn.wi]
    if not tied:
        model.lm_head = _Adapter(model.lm_head)
        adapters.append(model.lm_head)
    assert not layer.self_attn.fused() and not layer.ffn.fused()
    assert model.encoder.layers[1].self_attn.fused()  # the others keep the fast path
    ids = torch.randint(3, config.vocab_size, (2, 7))
    model(input_ids=ids, labels=ids[:, :5]).loss.backward()
    for adapter in adapters:
        assert float(adapter.down.grad.abs().max()) > 0 and float(adapter.up.grad.abs().max()) > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_matches_torch(dtype):
    """t5kit's loss (log-sum-exp per row, gradient written once) against F.cross_entropy on float32 logits:
    value within 1e-6, gradient within 1e-7 in fp32 (one bf16 rounding for bf16 logits), -100 ignored,
    more rows than one pass holds, and nan when every label is ignored, as torch gives."""
    torch.manual_seed(0)
    logits = (torch.randn(37, 1000) * 4).to(dtype).requires_grad_()
    labels = torch.randint(0, 1000, (37,))
    labels[[3, 17, 36]] = -100
    ours = cross_entropy(logits, labels)
    (grad,) = torch.autograd.grad(ours * 2.5, logits)
    reference = torch.nn.functional.cross_entropy(logits.float(), labels, ignore_index=-100)
    (ref_grad,) = torch.autograd.grad(reference * 2.5, logits)
    assert ours.dtype == torch.float32 and grad.dtype == dtype
    assert abs(float(ours) - float(reference)) <= 1e-6 * float(reference)
    assert grad[[3, 17, 36]].abs().max() == 0
    # float32: a few float32 ulps of the largest gradient; bf16 logits: the gradient is written in bf16, one
    # rounding, so within one bf16 ulp of the largest value (2^-7 relative)
    ulp = 2**-21 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(grad, ref_grad, atol=float(ref_grad.abs().max()) * ulp, rtol=1e-5)
    assert torch.isnan(cross_entropy(torch.randn(4, 10), torch.full((4,), -100)))


def test_rms_norm_backward_matches_torch():
    """The float32 training RMS norm (its own forward and hand-written backward) against F.rms_norm and
    autograd through it: values within 2e-7 relative (the statistic is summed in another order), gradients
    within 1e-5 relative."""
    torch.manual_seed(0)
    norm = install(RMSNorm(48)).train()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(3, 5, 48) * 3).requires_grad_()
    upstream = torch.randn(3, 5, 48)
    out = norm(x)
    grads = torch.autograd.grad(out, (x, norm.weight), upstream)
    reference = torch.nn.functional.rms_norm(x, (48,), norm.weight, norm.eps)
    ref_grads = torch.autograd.grad(reference, (x, norm.weight), upstream)
    assert out.grad_fn is not None and "RMSNorm" in type(out.grad_fn).__name__  # the training Function ran
    torch.testing.assert_close(out, reference, atol=1e-7, rtol=2e-7)
    for ours, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
