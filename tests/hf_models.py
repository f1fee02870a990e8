"""Randomly initialised `transformers` T5 models of every family, built by the tests themselves."""

from __future__ import annotations

import torch

# Small shapes that still exercise the real structure: inner attention width (heads * d_kv = 48) differs
# from d_model (32), sources longer than max_exact so the logarithmic buckets are used.
BASE = dict(d_model=32, d_kv=12, d_ff=40, num_heads=4, vocab_size=300, dropout_rate=0.1,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)

FAMILIES = {
    "v1.0-relu-tied": dict(cls="T5", feed_forward_proj="relu", tie_word_embeddings=True, num_layers=2,
                           num_decoder_layers=2),
    "v1.1-gated-untied": dict(cls="T5", feed_forward_proj="gated-gelu", tie_word_embeddings=False, num_layers=2,
                              num_decoder_layers=2, relative_attention_num_buckets=16,
                              relative_attention_max_distance=40),
    "mt5-like": dict(cls="MT5", feed_forward_proj="gated-gelu", tie_word_embeddings=False, num_layers=2,
                     num_decoder_layers=2, vocab_size=1000),
    "umt5-per-layer-bias": dict(cls="UMT5", feed_forward_proj="gated-gelu", tie_word_embeddings=False, num_layers=3,
                                num_decoder_layers=2),
    "byt5-like-asymmetric": dict(cls="T5", feed_forward_proj="gated-gelu", tie_word_embeddings=False, num_layers=3,
                                 num_decoder_layers=1, vocab_size=384),
}


def build_hf_model(family: str, seed: int = 0):
    """A `transformers` model of the family with random weights, untied heads given their own weights.

    transformers 5.x ties lm_head to the embedding whatever the config says; an untied family gets a
    separate random head here, as the published untied checkpoints have.
    """
    import transformers

    spec = {**BASE, **FAMILIES[family]}
    kind = spec.pop("cls")
    config_cls = getattr(transformers, f"{kind}Config")
    model_cls = getattr(transformers, f"{kind}ForConditionalGeneration")
    torch.manual_seed(seed)
    config = config_cls(**spec)
    model = model_cls(config).eval()
    with torch.no_grad():
        if not spec["tie_word_embeddings"]:
            model.lm_head.weight = torch.nn.Parameter(0.5 * torch.randn_like(model.shared.weight))
        else:
            # A random tied model mostly predicts its input token; a smaller embedding makes outputs vary.
            model.shared.weight.mul_(0.2)
        # Random norms and biases so that a wrongly placed scale or a missing table shows.
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
            if "relative_attention_bias" in name:
                p.normal_(0.0, 1.0)
    return model


def padded_batch(vocab_size: int, seed: int = 1, batch: int = 3, source: int = 37, target: int = 21):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (batch, source), generator=g)
    attention_mask = torch.ones_like(input_ids)
    for i, length in enumerate([source, source - 9, 5][:batch]):
        attention_mask[i, length:] = 0
        input_ids[i, length:] = 0
    labels = torch.randint(3, vocab_size, (batch, target), generator=g)
    labels[1, target - 6:] = -100
    labels[2, 4:] = -100
    return input_ids, attention_mask, labels


def float64_twin(model):
    """A float64 copy of a `transformers` model: the reference both engines' rounding is measured against."""
    import copy

    return copy.deepcopy(model).double()


def assert_as_accurate_as_reference(ours, theirs, exact, what: str, factor: float = 2.0, ulps: float = 4.0) -> None:
    """``ours`` (t5kit) is no further from ``exact`` (transformers in float64) than ``factor`` times
    ``theirs`` (transformers in the same precision as ours) is, plus ``ulps`` units of that precision at the
    values' largest size.

    A fixed tolerance such as 1e-5 on logits of size ~10 is a few float32 ulps: it holds or fails with the
    CPU's GEMM kernels (AVX-512 and AVX2 sum in other orders), not with t5kit's correctness. Measuring both
    engines' own rounding against float64 gives a bound that moves with the machine: on an Intel Xeon (AMX)
    t5kit's float32 logits error was 0.9-1.1x transformers' (5e-7 ... 8e-6), its bf16 error 0.75-1.0x.
    """
    ours, theirs, exact = (torch.as_tensor(t) for t in (ours, theirs, exact))
    eps = torch.finfo(ours.dtype).eps
    ours, theirs, exact = ours.double(), theirs.double(), exact.double()
    error, reference_error = float((ours - exact).abs().max()), float((theirs - exact).abs().max())
    bound = factor * reference_error + ulps * eps * float(exact.abs().max())
    assert error <= bound, (
        f"{what}: error {error:.3g} against float64 > {bound:.3g} (transformers: {reference_error:.3g})")
