"""Constrained decoding (#19): bad words, the prefix-allowed-tokens function, a forced decoder prefix and "one of
these sequences" (a trie), on the boosted random checkpoints of test_search.

The constraints transformers has (``bad_words_ids``, ``prefix_allowed_tokens_fn``) are token-identical to its
``generate`` with the same constraint, greedy and beams. t5kit's own are checked against what they promise (every
output starts with the prefix / is one of the sequences) and against transformers running the same rule as a
``prefix_allowed_tokens_fn``: a trie lookup, a forced token per step. Each case asserts the constraint changed the
output, so a constraint that does nothing fails.
"""

from __future__ import annotations

import pytest
import torch
from test_search import MAX_NEW, SCORE_ATOL, boosted_hf_model, upto_eos

from t5kit import T5Model
from t5kit.generate import GenerationConfig, GenerationError, generate
from t5kit.generate.continuous import ContinuousDecoder, Job
from t5kit.kernels import install

EOS = 1
BANNED = 5
GREEDY_AND_BEAMS = {"greedy": dict(), "beam4": dict(num_beams=4, length_penalty=0.6),
                    "beam3-nrs2": dict(num_beams=3, num_return_sequences=2, early_stopping=True)}


@pytest.fixture(scope="module", params=["v1.1-gated-untied", "v1.0-relu-tied"])
def pair(request, tmp_path_factory):
    hf = boosted_hf_model(request.param)
    directory = tmp_path_factory.mktemp(f"{request.param}-constraints")
    hf.save_pretrained(directory)
    return request.param, hf, install(T5Model.from_pretrained(directory).eval(), "inference")


def batch(vocab: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 17), generator=g)
    mask = torch.ones_like(ids)
    for i, n in enumerate([17, 9, 5]):
        mask[i, n:] = 0
        ids[i, n:] = 0
    ids[[0, 1, 2], [16, 8, 4]] = EOS
    return ids, mask


def both(hf, model, ids, mask, options: dict, hf_options: dict | None = None):
    """(transformers' sequences up to EOS, its beam scores or None) and t5kit's output, same options."""
    ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                      output_scores=True, return_dict_in_generate=True, **(hf_options or options))
    out = generate(model, ids, mask, max_new_tokens=MAX_NEW, return_scores=True, warn_on_length_limit=False,
                   **options)
    return [upto_eos(r) for r in ref.sequences], getattr(ref, "sequences_scores", None), out


def check_parity(hf, model, ids, mask, options, hf_options=None, what=""):
    expected, ref_scores, out = both(hf, model, ids, mask, options, hf_options)
    assert [upto_eos(r) for r in out.sequences] == expected, what
    if ref_scores is not None:
        assert torch.allclose(out.scores, ref_scores, atol=SCORE_ATOL, rtol=0), what
    return expected


def free(model, ids, mask, options) -> list[list[int]]:
    out = generate(model, ids, mask, max_new_tokens=MAX_NEW, warn_on_length_limit=False, **options)
    return [upto_eos(r) for r in out.sequences]


def test_bad_words_are_token_identical_to_transformers(pair):
    family, hf, model = pair
    ids, mask = batch(hf.config.vocab_size)
    for name, options in GREEDY_AND_BEAMS.items():
        unconstrained = free(model, ids, mask, options)
        # ban what the model likes: its most frequent token, and a bigram of its output (a two-token word)
        tokens = [t for row in unconstrained for t in row if t != EOS]
        common = max(set(tokens), key=tokens.count)
        row = next(r for r in unconstrained if len([t for t in r if t != common]) >= 3)
        rest = [t for t in row if t not in (common, EOS)]
        words = [[common], rest[:2], [rest[0], 2, 7]]  # the last one never matches: a no-op that must stay one
        opts = dict(options, bad_words_ids=words)
        expected = check_parity(hf, model, ids, mask, opts, what=(family, name))
        assert expected != unconstrained, (family, name)
        for out in expected:
            assert common not in out
            assert all(out[i: i + 2] != rest[:2] for i in range(len(out) - 1))


def test_prefix_allowed_tokens_fn_is_token_identical_to_transformers(pair):
    family, hf, model = pair
    ids, mask = batch(hf.config.vocab_size, seed=2)
    vocab = hf.config.vocab_size
    calls: list[tuple[int, int]] = []

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        calls.append((batch_id, len(sent)))
        # a rule of the input and of the prefix so far, EOS always allowed
        return [t for t in range(vocab) if t % 3 == (batch_id + int(sent[-1])) % 3] + [EOS]

    for name, options in GREEDY_AND_BEAMS.items():
        unconstrained = free(model, ids, mask, options)
        opts = dict(options, prefix_allowed_tokens_fn=allowed)
        expected = check_parity(hf, model, ids, mask, opts, what=(family, name))
        assert expected != unconstrained
        assert {b for b, _ in calls} == {0, 1, 2}  # every input's batch id, beams mapped to their input
        calls.clear()
        # the fallback: a step where every allowed token is already -inf (banned) gives them 0, in both
        def only_banned(batch_id: int, sent: torch.Tensor) -> list[int]:
            return [BANNED] if len(sent) == 3 else allowed(batch_id, sent)

        opts = dict(options, prefix_allowed_tokens_fn=only_banned, bad_words_ids=[[BANNED]])
        expected = check_parity(hf, model, ids, mask, opts, what=(family, name, "fallback"))
        assert all(len(out) < 3 or out[2] == BANNED for out in expected)


class Trie:
    """The rule of allowed_sequences written as transformers' prefix_allowed_tokens_fn: the tokens that continue
    some sequence after the generated ones, EOS alone off the trie."""

    def __init__(self, sequences):
        self.sequences = [tuple(s) if s[-1] == EOS else (*s, EOS) for s in sequences]

    def __call__(self, batch_id: int, sent: torch.Tensor) -> list[int]:
        done = tuple(sent[1:].tolist())
        nxt = sorted({s[len(done)] for s in self.sequences if len(s) > len(done) and s[: len(done)] == done})
        return nxt or [EOS]


def choice_set(vocab: int, seed: int = 3) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    a, b, c = (torch.randint(2, vocab, (n,), generator=g).tolist() for n in (3, 5, 2))
    # shared prefixes, one sequence a prefix of another, one given with its EOS
    return [a, a[:2] + b, a[:2], c + [EOS], c + a]


def test_allowed_sequences_give_members_and_follow_the_trie(pair):
    family, hf, model = pair
    ids, mask = batch(hf.config.vocab_size, seed=4)
    choices = choice_set(hf.config.vocab_size)
    members = {tuple(s) for s in Trie(choices).sequences}
    for name, options in GREEDY_AND_BEAMS.items():
        opts = dict(options, allowed_sequences=choices)
        expected = check_parity(hf, model, ids, mask, opts, dict(options, prefix_allowed_tokens_fn=Trie(choices)),
                                what=(family, name))
        assert all(tuple(out) in members for out in expected), (family, name, expected)
        if name == "beam3-nrs2":  # two distinct members per input
            assert all(expected[i] != expected[i + 1] for i in range(0, len(expected), 2))
    sampled = generate(model, ids, mask, do_sample=True, num_return_sequences=4, allowed_sequences=choices,
                       generator=torch.Generator().manual_seed(0))
    got = [tuple(upto_eos(r)) for r in sampled.sequences]
    assert all(g in members for g in got) and len(set(got)) >= 2
    assert sampled.stop_reasons == ["eos"] * len(got)


def sequence_log_likelihood(model, ids, mask, target: list[int]) -> torch.Tensor:
    """Sum of log p(target) per input, by teacher forcing (the full decoder over the target)."""
    decoder = torch.tensor([[0, *target[:-1]]]).repeat(ids.shape[0], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits.float()
    picked = torch.log_softmax(logits, -1).gather(2, torch.tensor(target).repeat(ids.shape[0], 1)[:, :, None])
    return picked[:, :, 0].sum(1)


def test_beam_search_over_few_choices_returns_the_best_scoring_member(pair):
    """With num_beams >= the number of sequences, beam search keeps every partial sequence (each step has at most
    that many distinct continuations), so it returns the member of best length-penalised log-likelihood."""
    family, hf, model = pair
    ids, mask = batch(hf.config.vocab_size, seed=5)
    choices = choice_set(hf.config.vocab_size)
    members = Trie(choices).sequences
    answers = set()
    for lp in (0.0, 2.0):  # the raw sum favours short members, a strong length penalty long ones
        out = generate(model, ids, mask, num_beams=6, length_penalty=lp, early_stopping="never",
                       allowed_sequences=choices, return_scores=True, max_new_tokens=MAX_NEW)
        table = torch.stack([sequence_log_likelihood(model, ids, mask, list(s)) / len(s) ** lp for s in members], 1)
        best = table.argmax(1)
        assert [tuple(upto_eos(r)) for r in out.sequences] == [members[i] for i in best], (family, lp)
        assert torch.allclose(out.scores, table.max(1).values, atol=SCORE_ATOL, rtol=0), (family, lp)
        answers.update(best.tolist())
    assert len(answers) >= 2, "every input and penalty picked the same member: the check shows nothing"


def test_decoder_prefix_starts_every_output_and_then_decodes_freely(pair):
    family, hf, model = pair
    ids, mask = batch(hf.config.vocab_size, seed=6)
    prefix = [17, 42, 9]

    def forced(batch_id: int, sent: torch.Tensor) -> list[int]:
        return [prefix[len(sent) - 1]] if len(sent) <= len(prefix) else list(range(hf.config.vocab_size))

    for name, options in GREEDY_AND_BEAMS.items():
        opts = dict(options, decoder_prefix=prefix)
        expected = check_parity(hf, model, ids, mask, opts, dict(options, prefix_allowed_tokens_fn=forced),
                                what=(family, name))
        assert all(out[:3] == prefix for out in expected)
        assert len({tuple(out[3:]) for out in expected}) >= 2  # free after the prefix
    sampled = generate(model, ids, mask, do_sample=True, decoder_prefix=prefix, max_new_tokens=8,
                       generator=torch.Generator().manual_seed(0), warn_on_length_limit=False)
    assert sampled.sequences[:, 1:4].tolist() == [prefix] * 3
    # the prefix as long as the limit: the output is the prefix
    out = generate(model, ids, mask, decoder_prefix=prefix, max_new_tokens=3, warn_on_length_limit=False)
    assert out.sequences[:, 1:].tolist() == [prefix] * 3 and out.stop_reasons == ["length"] * 3


def contains(seq: list[int], word: list[int]) -> bool:
    return any(seq[i: i + len(word)] == word for i in range(len(seq) - len(word) + 1))


def test_forced_words_are_in_every_hypothesis_and_scored_as_beam_search_scores(pair):
    """Constrained beam search (no transformers reference: 5.x moved it to a hub repository that cannot be run
    here): every returned hypothesis holds each forced word, and its score is its teacher-forced
    log-likelihood divided by the length penalty (so the beam bookkeeping and the cache reorders are right)."""
    family, hf, model = pair
    ids, mask = batch(hf.config.vocab_size, seed=8)
    free_out = free(model, ids, mask, dict(num_beams=4))
    seen = {t for row in free_out for t in row}
    absent = [t for t in range(2, hf.config.vocab_size) if t not in seen]
    words = [absent[:2], [absent[2]], [absent[3], absent[4], absent[5]]]  # none of them in the free output
    for options in (dict(num_beams=4, num_return_sequences=3, length_penalty=0.6),
                    dict(num_beams=2, early_stopping=True, length_penalty=0.0)):
        out = generate(model, ids, mask, max_new_tokens=MAX_NEW, force_words_ids=words, return_scores=True,
                       warn_on_length_limit=False, **options)
        got = [upto_eos(r) for r in out.sequences]
        assert all(contains(g, w) for g in got for w in words), (family, options, got)
        nrs = options.get("num_return_sequences", 1)
        for r, g in enumerate(got):
            source = r // nrs
            ll = sequence_log_likelihood(model, ids[source: source + 1], mask[source: source + 1], g)
            assert torch.allclose(out.scores[r], ll[0] / len(g) ** options["length_penalty"], atol=SCORE_ATOL), r
        if nrs > 1:
            assert all(len({tuple(g) for g in got[i: i + nrs]}) == nrs for i in range(0, len(got), nrs))
            assert all(out.scores[i] >= out.scores[i + 1] for i in range(len(got) - 1) if (i + 1) % nrs)
    # the limit exactly fits the words: every output is the words in some order, nothing else
    tight = generate(model, ids, mask, max_new_tokens=6, num_beams=3, num_return_sequences=3,
                     force_words_ids=words, warn_on_length_limit=False)
    for row in tight.sequences.tolist():
        assert sorted(row[1:]) == sorted(t for w in words for t in w) and all(contains(row[1:], w) for w in words)


def test_constraints_work_in_continuous_batching(pair):
    """A constrained job shares the decoder with an unconstrained one and gives what it gives alone."""
    family, hf, model = pair
    ids, mask = batch(hf.config.vocab_size, seed=7)
    sources = [row[: int(m.sum())].tolist() for row, m in zip(ids, mask)]
    choices = choice_set(hf.config.vocab_size)
    jobs = [Job(sources[:2], dict(allowed_sequences=choices)),
            Job(sources[2:], dict(num_beams=3, bad_words_ids=[[5], [9, 11]], decoder_prefix=[20, 21])),
            Job(sources[1:], dict(num_beams=2, force_words_ids=[[30, 31], [32]])),
            Job(sources, {})]
    decoder = ContinuousDecoder(model, MAX_NEW)
    decoder.admit(jobs)
    got: dict[int, dict[int, list[int]]] = {id(j): {} for j in jobs}
    while decoder.jobs:
        for event in decoder.step():
            if event.token_id is not None:
                got[id(event.job)].setdefault(event.index, []).append(event.token_id)
    for job in jobs:
        width = max(len(s) for s in job.input_ids)
        alone_ids = torch.tensor([s + [0] * (width - len(s)) for s in job.input_ids])
        want = free(model, alone_ids, (alone_ids != 0).long(), dict(job.options))
        assert [got[id(job)].get(i, []) for i in range(len(want))] == [[t for t in w if t != EOS] for w in want]
    assert got[id(jobs[1])][0][:2] == [20, 21]
    assert all(contains(out, [30, 31]) and 32 in out for out in got[id(jobs[2])].values())


def test_constraints_cost_nothing_when_unset():
    from t5kit.generate import LogitsProcessors

    processors = LogitsProcessors(GenerationConfig(), vocab=10)
    assert not processors.active and not processors.needs_history
    assert not LogitsProcessors(GenerationConfig(bad_words_ids=[[3]], decoder_prefix=[4]), 10).needs_history


@pytest.mark.parametrize("options, words", [
    (dict(bad_words_ids=[[3], []]), "bad_words_ids item 1 is empty"),
    (dict(bad_words_ids=[[3, -1]]), "bad_words_ids must be token ids >= 0, got -1 (in item 0)"),
    (dict(bad_words_ids=[3, 4]), "bad_words_ids must be a list of token ids, got 3 (in item 0)"),
    (dict(bad_words_ids=[[EOS]]), "use suppress_tokens=[1]"),
    (dict(allowed_sequences=[[4], []]), "allowed_sequences item 1 is empty"),
    (dict(allowed_sequences=[[4, 5, 6]], max_new_tokens=3), "needs 4 tokens (EOS included), more than max_new_"),
    (dict(allowed_sequences=[[4, EOS, 6]]), "holds the EOS id 1 before its end"),
    (dict(allowed_sequences=[[4, 5]], min_new_tokens=3), "min_new_tokens=3 forbids EOS"),
    (dict(allowed_sequences=[[4], [5, EOS], [5]], num_beams=3, num_return_sequences=3), "2 distinct"),
    (dict(allowed_sequences=[[4]], suppress_tokens=[EOS]), "suppress_tokens forbids"),
    (dict(allowed_sequences=[[4, 5]], decoder_prefix=[5]), "no sequence of allowed_sequences starts with"),
    (dict(decoder_prefix=[4, 5, 6], max_new_tokens=2), "decoder_prefix has 3 tokens, more than max_new_tokens=2"),
    (dict(decoder_prefix=[4, EOS]), "decoder_prefix holds the EOS id"),
    (dict(decoder_prefix=[4], suppress_tokens=[4]), "forces token 4"),
    (dict(decoder_prefix=[4], do_sample=True, num_beams=2), "beam sampling"),
    (dict(prefix_allowed_tokens_fn=[1, 2]), "prefix_allowed_tokens_fn must be a function"),
    (dict(force_words_ids=[[4]]), "force_words_ids needs beam search without sampling: set num_beams >= 2"),
    (dict(force_words_ids=[[4]], num_beams=2, do_sample=True), "do_sample=False"),
    (dict(force_words_ids=[[4], []], num_beams=2), "force_words_ids item 1 is empty"),
    (dict(force_words_ids=[[4, 5], [6]], num_beams=2, max_new_tokens=2), "need 3 tokens, more than max_new_tokens"),
    (dict(force_words_ids=[[4, EOS]], num_beams=2), "force_words_ids item 0 holds the EOS id"),
    (dict(force_words_ids=[[4]], num_beams=2, bad_words_ids=[[4]]), "holds [4], which suppress_tokens or bad_"),
    (dict(force_words_ids=[[4]], num_beams=2, allowed_sequences=[[4]]), "cannot be combined with allowed_sequ"),
])
def test_impossible_constraints_are_refused_with_the_fix(options, words):
    with pytest.raises(GenerationError) as err:
        GenerationConfig(eos_token_id=EOS, **options)
    assert words in str(err.value)


def test_ids_outside_the_vocabulary_and_a_stuck_function_are_refused(pair):
    _, hf, model = pair
    vocab = hf.config.vocab_size
    ids, mask = batch(vocab)
    for name in ("bad_words_ids", "allowed_sequences", "force_words_ids"):
        with pytest.raises(GenerationError, match=rf"{name} holds ids outside the vocabulary \[0, {vocab}\)"):
            generate(model, ids, mask, num_beams=2, **{name: [[3], [vocab + 2]]})
    with pytest.raises(GenerationError, match="decoder_prefix holds ids outside"):
        generate(model, ids, mask, decoder_prefix=[vocab])
    with pytest.raises(GenerationError, match="returned no token for batch id 0"):
        generate(model, ids, mask, prefix_allowed_tokens_fn=lambda b, s: [])
    with pytest.raises(GenerationError, match="returned ids outside the vocabulary"):
        generate(model, ids, mask, prefix_allowed_tokens_fn=lambda b, s: [vocab])
    # the continuous batcher runs the same checks on a job
    with pytest.raises(GenerationError, match="allowed_sequences holds ids outside"):
        ContinuousDecoder(model, 8).prepare(Job([[5, 1]], dict(allowed_sequences=[[vocab]])))


def test_more_outputs_than_the_prefix_leaves_possible_is_refused():
    """Found in review: the count of distinct choices ignored the forced prefix, and a prefix that fills the
    length left one output; both returned duplicates at -1e9-class scores instead of an error."""
    from t5kit.generate import GenerationConfig, GenerationError

    with pytest.raises(GenerationError, match="2 distinct allowed_sequences that start with decoder_prefix"):
        GenerationConfig(allowed_sequences=[[4, 5], [4, 6], [7]], decoder_prefix=[4], num_beams=3,
                         num_return_sequences=3, eos_token_id=1)
    with pytest.raises(GenerationError, match="fills max_new_tokens=2"):
        GenerationConfig(decoder_prefix=[4, 5], max_new_tokens=2, num_beams=3, num_return_sequences=3)
    GenerationConfig(allowed_sequences=[[4, 5], [4, 6], [7]], decoder_prefix=[4], num_beams=3,
                     num_return_sequences=2, eos_token_id=1)  # two outputs start with the prefix: fine
