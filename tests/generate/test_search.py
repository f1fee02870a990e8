"""Generation against `transformers`' generate on random checkpoints of each family, built here.

Each reference model gets a boosted EOS row (and, when tied, rows of equal norm and a stronger feed-forward
output) so that its greedy and beam outputs hold varied tokens and end at different steps; every test
asserts that its reference is not trivial. Sequences are compared up to and including the first EOS
(transformers' beam search fills with EOS after it, t5kit with pad). Scores (summed log-probabilities,
length-penalised for beams) agree within 1e-4 absolute.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hf_models import build_hf_model, padded_batch

from t5kit import T5Model
from t5kit.generate import GenerationConfig, GenerationError, LengthLimitWarning, generate, stream
from t5kit.kernels import install

MAX_NEW = 24
SCORE_ATOL = 1e-4
# family -> (EOS row factor, tied only: embedding row norm and decoder wo factor)
BOOST = {"v1.0-relu-tied": (1.9, 3.0, 5.0), "v1.1-gated-untied": (1.6, None, None),
         "umt5-per-layer-bias": (1.3, None, None), "byt5-like-asymmetric": (6.0, None, None)}


def boosted_hf_model(family: str):
    hf = build_hf_model(family)
    eos_factor, row_norm, wo_factor = BOOST[family]
    with torch.no_grad():
        if row_norm is not None:  # tied: no hub tokens, and layers that outweigh the copied input embedding
            hf.shared.weight.copy_(torch.nn.functional.normalize(hf.shared.weight, dim=-1) * row_norm)
            for block in hf.decoder.block:
                block.layer[-1].DenseReluDense.wo.weight.mul_(wo_factor)
        hf.lm_head.weight[1] *= eos_factor
    return hf


@pytest.fixture(scope="module", params=list(BOOST))
def pair(request, tmp_path_factory):
    hf = boosted_hf_model(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    # with the inference kernels, so the chosen linear backends (t5kit.kernels.inference.linear) are what is held
    # token-identical to transformers
    return request.param, hf, install(T5Model.from_pretrained(directory).eval(), "inference")


def upto_eos(row: torch.Tensor) -> list[int]:
    ids = row.tolist()[1:]
    return ids[: ids.index(1) + 1] if 1 in ids else ids


CASES = {
    "greedy": dict(),
    "beam4-lp0.6": dict(num_beams=4, length_penalty=0.6),
    "beam4-lp2-early-nrs2": dict(num_beams=4, length_penalty=2.0, early_stopping=True, num_return_sequences=2),
    "ngram3": dict(no_repeat_ngram_size=3),
    "min-new-and-repetition": dict(min_new_tokens=6, repetition_penalty=1.5),
}


def test_token_identical_to_transformers(pair):
    family, hf, model = pair
    ids, mask, _ = padded_batch(hf.config.vocab_size, batch=3)
    for name, options in CASES.items():
        ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                          output_scores=True, return_dict_in_generate=True, **options)
        out = generate(model, ids, mask, max_new_tokens=MAX_NEW, return_scores=True, warn_on_length_limit=False,
                       **options)
        expected = [upto_eos(r) for r in ref.sequences]
        assert [upto_eos(r) for r in out.sequences] == expected, (family, name)
        assert out.sequences[:, 0].eq(0).all()
        # layout: pad (0) after EOS, never EOS filler
        for row, n in zip(out.sequences, out.num_new_tokens):
            assert row[1 + n:].eq(0).all()
        assert out.stop_reasons == ["eos" if e[-1] == 1 else "length" for e in expected]
        if "num_beams" in options:
            ref_scores = ref.sequences_scores
        else:
            steps = hf.compute_transition_scores(ref.sequences, ref.scores, normalize_logits=True)
            ref_scores = torch.stack([steps[i, : len(e)].sum() for i, e in enumerate(expected)])
        assert torch.allclose(out.scores, ref_scores, atol=SCORE_ATOL, rtol=0), (family, name)
        if name == "greedy":  # the reference is not trivial: varied tokens, rows ending at different steps
            assert len({t for e in expected for t in e}) >= 6, family
            if family != "byt5-like-asymmetric":
                assert len({len(e) for e in expected}) >= 2, family
        if name == "min-new-and-repetition":
            assert all(len(e) > 6 for e in expected)


def test_beam_references_end_at_different_steps():
    """At least some beam references stop early on EOS while others hit the length limit."""
    hf = boosted_hf_model("umt5-per-layer-bias")
    ids, mask, _ = padded_batch(hf.config.vocab_size, batch=3)
    ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, num_beams=4,
                      num_return_sequences=2, length_penalty=2.0, early_stopping=True, do_sample=False)
    lengths = {len(upto_eos(r)) for r in ref}
    assert len(lengths) >= 2 and min(lengths) < MAX_NEW


def reference_greedy(model: T5Model, ids: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding without a cache: the full decoder over the whole prefix at every step."""
    decoder = torch.zeros(ids.shape[0], 1, dtype=torch.long)
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    with torch.no_grad():
        enc = model.encode(ids, mask)
        for _ in range(steps):
            logits = model(decoder_input_ids=decoder, attention_mask=mask, encoder_hidden_states=enc).logits
            nxt = logits[:, -1].argmax(-1).masked_fill(done, 0)
            decoder = torch.cat([decoder, nxt[:, None]], 1)
            done |= nxt == 1
            if done.all():
                break
    return decoder


def test_cached_equals_uncached_and_finished_rows_leave_the_batch(pair):
    family, hf, model = pair
    ids, mask, _ = padded_batch(hf.config.vocab_size, batch=3)
    ref = reference_greedy(model, ids, mask, MAX_NEW)
    sizes: list[int] = []
    original = model.decode_step

    def counting(tokens, cache):
        sizes.append(tokens.shape[0])
        return original(tokens, cache)

    model.decode_step = counting
    try:
        out = generate(model, ids, mask, max_new_tokens=MAX_NEW, warn_on_length_limit=False)
    finally:
        del model.decode_step
    assert [upto_eos(r) for r in out.sequences] == [upto_eos(r) for r in ref]
    ended_early = [n for n, r in zip(out.num_new_tokens, out.stop_reasons) if r == "eos"]
    if ended_early:  # after a row's EOS, the later steps run on fewer rows
        assert sizes[min(ended_early)] < sizes[0]


def test_streaming_yields_what_generate_returns(pair):
    family, hf, model = pair
    ids, mask, _ = padded_batch(hf.config.vocab_size, batch=3)
    out = generate(model, ids, mask, max_new_tokens=MAX_NEW, warn_on_length_limit=False)
    tokens: dict[int, list[int]] = {0: [], 1: [], 2: []}
    finished_order = []
    for event in stream(model, ids, mask, max_new_tokens=MAX_NEW):
        if event.token_id is None:
            assert event.row not in finished_order
            finished_order.append(event.row)
            assert event.stop_reason == out.stop_reasons[event.row]
        else:
            assert event.row not in finished_order  # no token after the row's end
            tokens[event.row].append(event.token_id)
    assert [tokens[r] for r in range(3)] == [upto_eos(r) for r in out.sequences]
    # a row is reported finished as soon as it ends: shorter outputs are announced first
    lengths = [len(tokens[r]) for r in finished_order]
    assert lengths == sorted(lengths)
    single = [e.token_id for e in stream(model, ids[:1, : int(mask[0].sum())], max_new_tokens=MAX_NEW)
              if e.token_id is not None]
    assert single == upto_eos(out.sequences[0])


def small_model(tmp_path_factory, family: str = "v1.1-gated-untied") -> T5Model:
    hf = boosted_hf_model(family)
    directory = tmp_path_factory.mktemp(f"{family}-single")
    hf.save_pretrained(directory)
    return T5Model.from_pretrained(directory).eval()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> T5Model:
    return small_model(tmp_path_factory)


def test_sampling_is_reproducible_and_top_k_one_is_greedy(model):
    ids, mask, _ = padded_batch(model.config.vocab_size, batch=3)
    kw = dict(do_sample=True, max_new_tokens=12, warn_on_length_limit=False)
    a = generate(model, ids, mask, generator=torch.Generator().manual_seed(3), **kw).sequences
    b = generate(model, ids, mask, generator=torch.Generator().manual_seed(3), **kw).sequences
    c = generate(model, ids, mask, generator=torch.Generator().manual_seed(4), **kw).sequences
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = generate(model, ids, mask, max_new_tokens=12, warn_on_length_limit=False).sequences
    top1 = generate(model, ids, mask, top_k=1, generator=torch.Generator().manual_seed(5), **kw).sequences
    assert torch.equal(top1, greedy)
    several = generate(model, ids, mask, num_return_sequences=4, generator=torch.Generator().manual_seed(3), **kw)
    assert several.sequences.shape[0] == 12


@pytest.mark.parametrize("options", [dict(temperature=1.0), dict(temperature=0.7, top_k=5), dict(top_p=0.6)])
def test_sampling_distribution(model, options):
    """First-token frequencies over 4000 draws match the filtered softmax, and tokens the filter removes
    never appear. Tolerance: total variation below 1.5x its expected sampling noise
    (0.5 * sum sqrt(2 p (1 - p) / (pi n)), about 0.05 for the unfiltered 300-token softmax) plus 0.01."""
    n = 4000
    ids, mask, _ = padded_batch(model.config.vocab_size)
    ids, mask = ids[:1], mask[:1]
    with torch.no_grad():
        enc = model.encode(ids, mask)
        cache = model.new_cache(enc, mask, max_length=1)
        logits = model.decode_step(torch.zeros(1, 1, dtype=torch.long), cache)[0, -1].float()
    logits = logits / options.get("temperature", 1.0)
    probs = torch.softmax(logits, -1)
    if "top_k" in options:
        keep = torch.zeros_like(probs, dtype=torch.bool)
        keep[probs.topk(options["top_k"]).indices] = True
        probs = torch.where(keep, probs, 0)
    if "top_p" in options:
        sorted_p, order = probs.sort(descending=True)
        cut = (sorted_p.cumsum(0) - sorted_p) < options["top_p"]  # keep until the mass reaches top_p
        keep = torch.zeros_like(probs, dtype=torch.bool)
        keep[order[cut]] = True
        probs = torch.where(keep, probs, 0)
    probs = probs / probs.sum()
    out = generate(model, ids.expand(n, -1), mask.expand(n, -1), do_sample=True, max_new_tokens=1,
                   generator=torch.Generator().manual_seed(0), warn_on_length_limit=False, **options)
    counts = torch.bincount(out.sequences[:, 1], minlength=probs.numel()).float() / n
    assert counts[probs == 0].sum() == 0
    noise = 0.5 * torch.sqrt(2 * probs * (1 - probs) / (torch.pi * n)).sum().item()
    assert 0.5 * (counts - probs).abs().sum().item() < 1.5 * noise + 0.01
    assert (probs > 0).sum() > 1  # the filtered distribution is not a single token


def test_gnmt_length_penalty_scores(model):
    ids, mask, _ = padded_batch(model.config.vocab_size)
    ids, mask = ids[:2], mask[:2]
    alpha = 0.6
    out = generate(model, ids, mask, num_beams=4, length_penalty=alpha, length_penalty_style="gnmt",
                   max_new_tokens=MAX_NEW, return_scores=True, warn_on_length_limit=False)
    for i in range(2):
        n = out.num_new_tokens[i]
        seq = out.sequences[i, : n + 1][None]
        with torch.no_grad():
            logits = model(input_ids=ids[i: i + 1], attention_mask=mask[i: i + 1],
                           decoder_input_ids=seq[:, :-1]).logits.float()
        logp = torch.log_softmax(logits, -1)[0].gather(1, seq[0, 1:, None]).sum()
        assert out.scores[i].item() == pytest.approx((logp / ((5 + n) / 6) ** alpha).item(), abs=SCORE_ATOL)


def test_bad_inputs_give_clear_errors(model):
    ids = torch.tensor([[5, 6, 1]])
    cases = [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(num_return_sequences=3, num_beams=2), "num_return_sequences"),
        (dict(top_p=0.0, do_sample=True), "top_p"),
        (dict(top_p=1.5, do_sample=True), "top_p"),
        (dict(temperature=0.0, do_sample=True), "temperature"),
        (dict(length_penalty_style="paper"), "length_penalty_style"),
        (dict(num_beam=4), "num_beams"),  # a typo: the message suggests the right name
        (dict(suppress_tokens=[10**6]), "suppress_tokens"),
    ]
    for options, name in cases:
        with pytest.raises(GenerationError, match=name):
            generate(model, ids, **options)
    with pytest.raises(GenerationError, match="empty batch"):
        generate(model, torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        generate(model, torch.tensor([[5, model.config.vocab_size]]))
    with pytest.raises(GenerationError, match="stream"):
        next(stream(model, ids, num_beams=2))
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16w, int8, got 'fp8'"):
        generate(model, ids, precision="fp8")
    assert isinstance(GenerationError("x"), ValueError)
    assert GenerationConfig().max_new_tokens >= 128  # never a silent 20


def test_length_limit_is_reported(model):
    ids, mask, _ = padded_batch(model.config.vocab_size, batch=3)
    with pytest.warns(LengthLimitWarning, match="max_new_tokens=2"):
        out = generate(model, ids, mask, max_new_tokens=2)
    assert "length" in out.stop_reasons
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # EOS suppressed: stopping at the limit is the point, no warning
        out = generate(model, ids, mask, max_new_tokens=5, suppress_tokens=[1])
    assert out.stop_reasons == ["length"] * 3 and out.sequences.shape[1] == 6
    assert T5Model.generate is not None and torch.equal(model.generate(ids, mask, max_new_tokens=5,
                                                                       suppress_tokens=[1]).sequences, out.sequences)


def test_beam_cache_shares_cross_rows_and_reorders_like_per_row_caches(model):
    """A beam cache (one cross-attention row per item, shared by its beams) decodes and reorders exactly like
    a cache that holds a copy of everything per beam row."""
    torch.manual_seed(0)
    beams = 3
    ids = torch.randint(3, 200, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # padded source: the shared cross row must carry its own mask
    with torch.no_grad():
        encoded = model.encode(ids, mask)
        shared = model.new_cache(encoded, mask, max_length=4).expand_beams(beams)
        per_row = model.new_cache(encoded, mask, max_length=4).select(torch.arange(2).repeat_interleave(beams))
        assert shared.cross_k[0].shape[0] == 2 and per_row.cross_k[0].shape[0] == 2 * beams
        assert shared.batch_size == per_row.batch_size == 2 * beams
        start = torch.zeros(2 * beams, 1, dtype=torch.long)
        torch.testing.assert_close(model.decode_step(start, shared), model.decode_step(start, per_row),
                                   atol=1e-5, rtol=1e-5)
        rows = torch.tensor([2, 0, 0, 4, 5, 3])  # each group of 3 rows continues rows of its own item
        shared, per_row = shared.reorder_beams(rows), per_row.select(rows)
        step = torch.randint(3, 200, (2 * beams, 1))
        torch.testing.assert_close(model.decode_step(step, shared), model.decode_step(step, per_row),
                                   atol=1e-5, rtol=1e-5)
        keep = torch.tensor([1])  # item 0 leaves: its cross row goes, item 1's beams stay
        shared = shared.reorder_beams(torch.tensor([3, 4, 5]), keep)
        per_row = per_row.select(torch.tensor([3, 4, 5]))
        step = torch.randint(3, 200, (beams, 1))
        torch.testing.assert_close(model.decode_step(step, shared), model.decode_step(step, per_row),
                                   atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="reorder_beams"):
            shared.select(torch.tensor([0]))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precision_decodes_with_the_converted_copy(model, precision):
    """``generate(..., precision=)`` (the pre-#16 API) decodes with the same converted copy the pipeline uses:
    its scores are the copy's own, and they are not the float32 model's."""
    from t5kit.kernels.inference.precision import inference_model

    ids, mask, _ = padded_batch(model.config.vocab_size, batch=3)
    options = dict(max_new_tokens=6, suppress_tokens=[1], return_scores=True)
    ours = generate(model, ids, mask, precision=precision, **options)
    copy = generate(inference_model(model, precision), ids, mask, **options)
    plain = generate(model, ids, mask, **options)
    assert torch.equal(ours.sequences, copy.sequences) and torch.equal(ours.scores, copy.scores)
    assert not torch.equal(ours.scores, plain.scores)
    assert [e.token_id for e in stream(model, ids[:1], precision=precision, max_new_tokens=3, suppress_tokens=[1])
            if e.token_id is not None] == copy.sequences[0, 1:4].tolist()


def test_two_stage_top_continuations_are_topks_own():
    """Beam search's top 2K continuations come from a per-beam topk first: it must return what one topk over
    the whole row returns (values and indices), ties, NaN and -inf included (those fall back to it)."""
    from t5kit.generate.search import _top_continuations

    g = torch.Generator().manual_seed(0)
    beams, vocab, k = 4, 50, 8
    cases = [torch.randn(3, beams * vocab, generator=g)]
    tied = torch.randn(3, beams * vocab, generator=g)
    tied[0, 7] = tied[0, 3 * vocab + 1] = tied[0].max()  # a tie at the top
    tied[1, :] = tied[1, :1]  # everything tied
    cases.append(tied)
    filler = torch.full((2, beams * vocab), -1e9)
    filler[:, :vocab] = torch.randn(2, vocab, generator=g)  # transformers' first step: beams 1.. at -1e9
    cases.append(filler)
    cases.append(torch.full((2, beams * vocab), -torch.inf))
    nan = torch.randn(2, beams * vocab, generator=g)
    nan[0, 5] = torch.nan
    cases.append(nan)
    for scores in cases:
        values, index = _top_continuations(scores, k, beams)
        expected = torch.topk(scores, k)
        torch.testing.assert_close(values, expected.values, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(index, expected.indices)
