"""Scoring and rank classification (t5kit.generate.score) against `transformers` on random checkpoints of each
family, built here.

The reference is transformers' per-token log-likelihood from its logits: ``log_softmax(hf(input_ids,
attention_mask, labels=...).logits.float())`` gathered at the labels. t5kit must agree within 1e-5 relative to
the values' size (the issue's bound: |ours - theirs| <= 1e-5 * max |theirs| per batch, and likewise for the
sums). Measured on the 2-core Xeon (AMX) of this project: 0 (v1.0, bit-identical), 2.8e-7 (v1.1), 2.0e-7
(mT5), 2.5e-7 (UMT5), 1.1e-7 (ByT5-like) of max |theirs| ~6-19, i.e. 1-2.5 float32 ulps at that size; the
bound is 35x that. Both engines are also held against a float64 twin of the reference
(:func:`~hf_models.assert_as_accurate_as_reference`), which is what bounds the low precisions.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hf_models import FAMILIES, assert_as_accurate_as_reference, build_hf_model, padded_batch

from t5kit import T5Model
from t5kit.generate import GenerationError, ScoreError, generate, rank, score
from t5kit.kernels import install
from t5kit.kernels.inference.precision import inference_model

RELATIVE = 1e-5  # the issue's tolerance, relative to the values' size


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request, tmp_path_factory):
    hf = build_hf_model(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    # with the inference kernels, as the text pipeline and the server run it
    return request.param, hf, install(T5Model.from_pretrained(directory).eval(), "inference")


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    from t5kit import T5Config

    return T5Model(T5Config.from_preset("tiny", vocab_size=300, d_model=16, d_ff=32, num_heads=2, d_kv=8,
                                        num_layers=1, num_decoder_layers=1)).eval()


def reference_logprobs(hf, ids, mask, labels) -> torch.Tensor:
    """transformers' per-token log-likelihoods of ``labels`` (-100: padding, 0.0 there)."""
    with torch.no_grad():
        logits = hf(input_ids=ids, attention_mask=mask, labels=labels).logits
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    keep = labels != -100
    return torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0] * keep


def batches(vocab: int):
    """Padded batches whose rows differ in source length (37 / 28 / 5 and 20 / 11 / 3) and target length."""
    yield padded_batch(vocab, seed=1, batch=3, source=37, target=21)
    ids, mask, labels = padded_batch(vocab, seed=2, batch=3, source=20, target=9)
    labels[0, 7:] = -100  # 7 / 3 / 4 target tokens: the longest row is not the first
    yield ids, mask, labels


def assert_relative(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> float:
    error = float((ours.double() - theirs.double()).abs().max())
    size = float(theirs.abs().max())
    assert error <= RELATIVE * size, f"{what}: error {error:.3g} > {RELATIVE} x {size:.3g}"
    return error / size


def test_scores_equal_transformers_log_likelihoods(pair):
    family, hf, model = pair
    exact_model = copy.deepcopy(hf).double()
    for ids, mask, labels in batches(hf.config.vocab_size):
        keep = labels != -100
        theirs = reference_logprobs(hf, ids, mask, labels)
        out = score(model, ids, mask, labels)
        assert out.token_logprobs.dtype == torch.float32 and out.token_logprobs.shape == labels.shape
        assert out.lengths.tolist() == keep.sum(1).tolist()
        assert (out.token_logprobs[~keep] == 0).all() and (out.token_logprobs[keep] < 0).all()
        assert_relative(out.token_logprobs, theirs, f"{family} per token")
        assert_relative(out.sum, theirs.sum(1), f"{family} sums")
        torch.testing.assert_close(out.mean, out.sum / keep.sum(1), rtol=0, atol=0)
        assert_as_accurate_as_reference(out.token_logprobs, theirs, reference_logprobs(exact_model, ids, mask, labels),
                                        f"{family} against float64")
        # the same targets given as a mask, and over encoder states the caller computed
        masked = score(model, ids, mask, torch.where(keep, labels, 7), labels_mask=keep)
        torch.testing.assert_close(masked.token_logprobs, out.token_logprobs, rtol=0, atol=0)
        with torch.no_grad():
            states = model.encode(ids, mask)
        given = score(model, None, mask, labels, encoder_hidden_states=states)
        torch.testing.assert_close(given.token_logprobs, out.token_logprobs, rtol=0, atol=0)
        torch.testing.assert_close(model.score(ids, mask, labels).token_logprobs, out.token_logprobs, rtol=0, atol=0)
        # a row scores the same alone, unpadded, as inside the padded batch
        row, source, target = 1, int(mask[1].sum()), int(keep[1].sum())
        alone = score(model, ids[row: row + 1, :source], None, labels[row: row + 1, :target])
        assert_relative(alone.token_logprobs[0], out.token_logprobs[row, :target], f"{family} alone")


def test_small_logits_budget_splits_passes_without_changing_scores(pair):
    family, hf, model = pair
    ids, mask, labels = padded_batch(hf.config.vocab_size)
    whole = score(model, ids, mask, labels)
    split = score(model, ids, mask, labels, logits_budget=1)  # one row per pass, each cut to its own target
    assert_relative(split.token_logprobs, whole.token_logprobs, family)


def candidates_for(vocab: int, seed: int = 3) -> list[list[list[int]]]:
    """4, 4 and 3 candidates (two candidate counts: two groups of passes) of 1 to 8 tokens, ending with EOS."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for lengths in ((3, 5, 1, 8), (4, 4, 4, 2), (6, 2, 3)):
        out.append([torch.randint(3, vocab, (n - 1,), generator=g).tolist() + [1] for n in lengths])
    return out


def pair_scores(model, ids, mask, candidates):
    """Each (input, candidate) scored alone, the source unpadded: what rank must reproduce."""
    sums, means, tokens = [], [], []
    for i, item in enumerate(candidates):
        source = ids[i: i + 1, : int(mask[i].sum())]
        outs = [score(model, source, None, torch.tensor([c])) for c in item]
        sums.append(torch.cat([o.sum for o in outs]))
        means.append(torch.cat([o.mean for o in outs]))
        tokens.append([o.token_logprobs[0] for o in outs])
    return sums, means, tokens


def test_rank_equals_scoring_each_pair_alone(pair):
    family, hf, model = pair
    ids, mask, _ = padded_batch(hf.config.vocab_size)
    candidates = candidates_for(hf.config.vocab_size)
    sums, means, tokens = pair_scores(model, ids, mask, candidates)
    bests = set()
    for normalize, statistic in (("sum", sums), ("mean", means)):
        for budget in (None, 1):  # all of a source's candidates in one pass; one candidate per pass
            options = {} if budget is None else {"logits_budget": budget}
            ranked = rank(model, ids, mask, candidates, normalize=normalize, **options)
            assert len(ranked) == 3
            for i, out in enumerate(ranked):
                assert out.lengths == [len(c) for c in candidates[i]]
                assert_relative(out.sums, sums[i], f"{family} rank sums {i}")
                assert_relative(out.means, means[i], f"{family} rank means {i}")
                for ours, alone in zip(out.token_logprobs, tokens[i]):
                    assert_relative(ours, alone, f"{family} rank tokens {i}")
                assert out.best == int(statistic[i].argmax()), (family, normalize, i)
                torch.testing.assert_close(out.probs, torch.softmax(statistic[i], 0), rtol=1e-5, atol=1e-7)
                assert abs(float(out.probs.sum()) - 1) < 1e-6 and out.scores is (out.sums if normalize == "sum"
                                                                                  else out.means)
                bests.add((normalize, out.best))
    assert len(bests) >= 3  # not always the same index: the reference says something
    method = model.rank(ids, mask, candidates, normalize="mean")
    assert [r.best for r in method] == [int(m.argmax()) for m in means]


class Counting:
    """The real model, with the calls rank makes of it counted (rows encoded, cache rows made, passes)."""

    def __init__(self, model):
        self.model, self.config = model, model.config
        self.encoded, self.cache_rows, self.passes = 0, 0, []

    @property
    def device(self):
        return self.model.device

    def encode(self, ids, mask):
        self.encoded += ids.shape[0]
        return self.model.encode(ids, mask)

    def new_cache(self, states, mask, max_length):
        self.cache_rows += states.shape[0]
        return self.model.new_cache(states, mask, max_length=max_length)

    def decode_step(self, decoder_ids, cache):
        self.passes.append(tuple(decoder_ids.shape))
        return self.model.decode_step(decoder_ids, cache)


def test_rank_runs_the_encoder_once_per_input(small_model):
    ids, mask, _ = padded_batch(small_model.config.vocab_size)
    candidates = candidates_for(small_model.config.vocab_size)
    counted = Counting(small_model)
    rank(counted, ids, mask, candidates)
    # one encoder row and one cross-attention computation per input; one decoder pass per candidate count
    # (the two inputs with 4 candidates share one), every candidate a row of it
    assert counted.encoded == 3 and counted.cache_rows == 3
    assert sorted(counted.passes) == [(3, 6), (8, 8)]


def test_scores_of_generated_outputs_equal_generate_scores(pair):
    """The whole-target pass and generation's one-token steps give one output the same log-likelihood."""
    family, hf, model = pair
    ids, mask, _ = padded_batch(hf.config.vocab_size)
    out = generate(model, ids, mask, max_new_tokens=12, return_scores=True, warn_on_length_limit=False)
    labels = torch.full((3, 12), -100)
    for row, n in enumerate(out.num_new_tokens):
        labels[row, :n] = out.sequences[row, 1: 1 + n]
    assert_relative(score(model, ids, mask, labels).sum, out.scores, family)


# ---------------------------------------------------------------------------------------------- precision


# rank's sums in each precision against fp32 pair scores, relative (measured on the five families, two candidate
# sets each: bf16 <= 0.65%, fp16w <= 0.02%, int8 <= 3.5%)
RANK_RELATIVE = {"fp32": RELATIVE, "bf16": 0.02, "fp16w": 1e-3, "int8": 0.08}


@pytest.mark.parametrize("family", ["v1.1-gated-untied", "umt5-per-layer-bias"])
def test_every_precision_scores(family, tmp_path):
    """The converted copies of every precision mode score and rank, also where the caller has gradients on
    (their linear kernels need no_grad: score runs under inference_mode).

    Per token against a float64 twin of the reference: bf16 is held to transformers' own bf16 (within 2x;
    measured 0.8-1.35x on these checkpoints); fp16w rounds weights only (2^-11): under 1% of the values' size
    (measured 0.03%). int8 quantizes activations per call, over all the rows of a pass, so its error is larger
    and moves with the batch a row is in: measured up to 3.8% of the values' size per token (max |log p| ~15)
    and 1.2% per sum on these random models (whose activations spread wider than a trained model's); bounded
    at 8% / 3%, the tokens' order kept (correlation with float64 above 0.99). rank's sums against fp32: see
    RANK_RELATIVE; it picks the candidate fp32 picks (these candidates' scores are far apart)."""
    hf = build_hf_model(family)
    hf.save_pretrained(tmp_path)
    model = T5Model.from_pretrained(tmp_path).eval()
    ids, mask, labels = padded_batch(hf.config.vocab_size)
    keep = labels != -100
    exact = reference_logprobs(copy.deepcopy(hf).double(), ids, mask, labels)
    hf_bf16 = reference_logprobs(copy.deepcopy(hf).to(torch.bfloat16), ids, mask, labels)
    size = float(exact.abs().max())
    candidates = candidates_for(hf.config.vocab_size)
    fp32_sums, _, _ = pair_scores(model, ids, mask, candidates)
    for precision in ("fp32", "bf16", "fp16w", "int8"):
        low = inference_model(model, precision)
        with torch.enable_grad():
            out = score(low, ids, mask, labels)
            ranked = rank(low, ids, mask, candidates)
        assert out.token_logprobs.dtype == torch.float32 and not out.token_logprobs.requires_grad
        tokens = out.token_logprobs.double()
        error = float((tokens - exact).abs().max())
        if precision == "fp32":
            assert error <= RELATIVE * size
        else:
            assert error > 1e-4 * size  # the copy really computes in its format
        if precision == "bf16":
            assert_as_accurate_as_reference(out.token_logprobs, hf_bf16, exact, f"{family} bf16")
        elif precision == "fp16w":
            assert error <= 0.01 * size, error
        elif precision == "int8":
            assert error <= 0.08 * size, error
            assert float(((out.sum.double() - exact.sum(1)).abs() / exact.sum(1).abs()).max()) <= 0.03
            assert float(torch.corrcoef(torch.stack([tokens[keep], exact[keep]]))[0, 1]) > 0.99
        for r, reference in zip(ranked, fp32_sums):
            relative = float(((r.sums - reference).abs() / reference.abs()).max())
            assert relative <= RANK_RELATIVE[precision], (precision, relative)
            assert r.best == int(reference.argmax()), precision


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("labels,mask,message", [
    ([[-100, -100]], None, r"rows \[0\] of labels hold no target token"),
    ([[5, 1], [-100, 1]], None, "target tokens first and its padding after"),
    ([[5, 300]], None, r"outside the vocabulary \[0, 300\): min 5, max 300"),
    ([[5, 1]], [[1, 1, 1]], "labels_mask shape"),
    ([[]], None, "at least one token"),
    ([[5.0, 1.0]], None, "integer token ids"),
    (None, None, "needs labels"),
])
def test_bad_labels_are_named(small_model, labels, mask, message):
    ids = torch.tensor([[5, 6, 1]] * (len(labels) if labels else 1))
    if labels is not None and labels and labels[0] and isinstance(labels[0][0], float):
        labels = torch.tensor(labels)
    with pytest.raises(ScoreError, match=message):
        score(small_model, ids, None, labels, mask)


def test_bad_sources_and_candidates_are_named(small_model):
    ids = torch.tensor([[5, 6, 1], [7, 1, 0]])
    with pytest.raises(ScoreError, match="2 sources but 1 rows of labels"):
        score(small_model, ids, None, [[5, 1]])
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        score(small_model, [[5, 900]], None, [[5, 1]])
    with pytest.raises(ScoreError, match="input 1 has no candidates"):
        rank(small_model, ids, None, [[[5, 1]], []])
    with pytest.raises(ScoreError, match="one list of candidates per input: 2 inputs, got 1"):
        rank(small_model, ids, None, [[[5, 1]]])
    with pytest.raises(ScoreError, match="candidate 1 of input 0 is not a non-empty list"):
        rank(small_model, ids, None, [[[5, 1], []], [[5, 1]]])
    with pytest.raises(ScoreError, match=r"candidate 0 of input 1 holds ids outside the vocabulary \[0, 300\)"):
        rank(small_model, ids, None, [[[5, 1]], [[-1, 1]]])
    with pytest.raises(ScoreError, match="normalize must be one of sum, mean"):
        rank(small_model, ids, None, [[[5, 1]], [[5, 1]]], normalize="max")
    # a candidate of one token (EOS alone) is scorable: the single-step path
    one = rank(small_model, ids, None, [[[1], [5, 1]], [[1]]])
    alone = score(small_model, ids[:1], None, [[1]])
    torch.testing.assert_close(one[0].sums[:1], alone.sum)
