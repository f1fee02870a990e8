"""Continuous batching (t5kit.generate.continuous): jobs that join a running batch at different steps, with
different options and lengths, give what each gives decoded alone with ``generate``, token for token.

The models are the boosted random checkpoints of test_search (varied tokens, rows that end at different
steps); each test asserts its reference is not trivial (rows of different lengths, EOS reached).
"""

from __future__ import annotations

import pytest
import torch
from test_search import BOOST, boosted_hf_model

from t5kit import T5Model
from t5kit.generate import GenerationError, generate
from t5kit.generate.continuous import ContinuousDecoder, Job
from t5kit.kernels import install

LIMIT = 16  # the decoder's max_new_tokens: its cache holds 2 x 16 columns, so staggered joins compact it


@pytest.fixture(scope="module", params=["v1.1-gated-untied", "umt5-per-layer-bias", "v1.0-relu-tied"])
def model(request, tmp_path_factory) -> T5Model:
    assert request.param in BOOST
    directory = tmp_path_factory.mktemp(f"{request.param}-continuous")
    boosted_hf_model(request.param).save_pretrained(directory)
    return install(T5Model.from_pretrained(directory).eval(), "inference")


def sources(vocab: int, count: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 14, (count,), generator=g).tolist()
    return [torch.randint(2, vocab, (n - 1,), generator=g).tolist() + [1] for n in lengths]


def alone(model: T5Model, job_sources: list[list[int]], options: dict, seed: int | None) -> list[list[int]]:
    """What ``generate`` gives the job decoded by itself: each row's tokens up to EOS, EOS excluded."""
    width = max(len(s) for s in job_sources)
    ids = torch.zeros((len(job_sources), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(job_sources):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    out = generate(model, ids, mask, generator=generator, warn_on_length_limit=False, **options)
    rows = []
    for row, n in zip(out.sequences.tolist(), out.num_new_tokens):
        rows.append([t for t in row[1: n + 1] if t != 1])
    return rows


def run(decoder: ContinuousDecoder, schedule: list[tuple[int, Job]], check=None) -> dict:
    """Admit each job at its step, decode until every job ends; per job: tokens and end reason per output."""
    got: dict[int, dict] = {id(job): {"tokens": {}, "ends": {}} for _, job in schedule}
    step = 0
    pending = sorted(schedule, key=lambda item: item[0])
    while pending or decoder.jobs:
        joining = [job for s, job in pending if s <= step]
        pending = [(s, job) for s, job in pending if s > step]
        if joining:
            decoder.admit(joining)
        for event in decoder.step():
            record = got[id(event.job)]
            if event.token_id is None:
                assert event.index not in record["ends"], "a row ended twice"
                record["ends"][event.index] = event.stop_reason
            else:
                assert event.index not in record["ends"], "a token after the row's end"
                assert event.token_id != 1, "EOS is never reported as a token"
                record["tokens"].setdefault(event.index, []).append(event.token_id)
        if check is not None:
            check(decoder, step)
        step += 1
        assert step < 500, "decoding did not end"
    return got


MIX = [  # (join step, number of sources, options, seed)
    (0, 2, dict(max_new_tokens=LIMIT), None),
    (0, 1, dict(max_new_tokens=5), None),
    (2, 1, dict(max_new_tokens=LIMIT, num_beams=4, length_penalty=0.6), None),
    (3, 2, dict(max_new_tokens=12, do_sample=True, top_k=20, temperature=0.8), 7),
    (3, 1, dict(max_new_tokens=LIMIT, no_repeat_ngram_size=2, min_new_tokens=3), None),
    (6, 1, dict(max_new_tokens=10, num_beams=3, early_stopping=True), None),
    (9, 3, dict(max_new_tokens=LIMIT, repetition_penalty=1.3), None),
    (14, 1, dict(max_new_tokens=LIMIT, min_new_tokens=LIMIT), None),  # these two outlive the cache's 32 columns
    (20, 1, dict(max_new_tokens=LIMIT, min_new_tokens=LIMIT, do_sample=True, top_p=0.9), 11),
]


def test_jobs_joining_a_running_batch_decode_as_they_do_alone(model):
    vocab = model.config.vocab_size
    schedule, expected = [], {}
    for n, (step, count, options, seed) in enumerate(MIX):
        job_sources = sources(vocab, count, seed=100 + n)
        job = Job(job_sources, dict(options), torch.Generator().manual_seed(seed) if seed is not None else None)
        schedule.append((step, job))
        expected[id(job)] = alone(model, job_sources, options, seed)
    decoder = ContinuousDecoder(model, LIMIT)
    widths = []
    got = run(decoder, schedule, check=lambda d, step: widths.append(d.rows))
    lengths = set()
    for (_, job), (_, count, options, _) in zip(schedule, MIX):
        want = expected[id(job)]
        record = got[id(job)]
        assert sorted(record["ends"]) == list(range(count))
        for i in range(count):
            assert record["tokens"].get(i, []) == want[i], (options, i)
            assert record["ends"][i] in ("eos", "length")
            lengths.add(len(want[i]))
    assert len(lengths) >= 4, f"the reference outputs are too alike: lengths {sorted(lengths)}"
    assert max(widths) > 6 and widths[-1] < max(widths), "rows did not both join and leave the running batch"
    assert decoder.compactions >= 1, "the staggered joins never filled the cache (compaction untested)"
    assert decoder.cache is None and decoder.rows == 0


def test_beam_search_streams_only_settled_tokens(model):
    """Each streamed beam token is final: the streamed tokens are a prefix of (and at the end equal to) the
    output, and some arrive before the search ends."""
    vocab = model.config.vocab_size
    job_sources = sources(vocab, 2, seed=5)
    options = dict(max_new_tokens=LIMIT, num_beams=4)
    want = alone(model, job_sources, options, None)
    decoder = ContinuousDecoder(model, LIMIT)
    job = Job(job_sources, options)
    decoder.admit([job])
    streamed: dict[int, list[int]] = {0: [], 1: []}
    early = 0
    while decoder.jobs:
        for event in decoder.step():
            if event.token_id is not None:
                streamed[event.index].append(event.token_id)
                assert streamed[event.index] == want[event.index][: len(streamed[event.index])]
                early += not job.done
    assert streamed == {0: want[0], 1: want[1]}
    assert early > 0, "nothing was streamed before the search ended"


def test_a_dropped_job_leaves_at_once_and_the_others_are_unchanged(model):
    vocab = model.config.vocab_size
    keep_sources, drop_sources = sources(vocab, 2, seed=1), sources(vocab, 3, seed=2)
    options = dict(max_new_tokens=LIMIT, min_new_tokens=LIMIT)  # no row ends early: only the drop removes rows
    want = alone(model, keep_sources, options, None)
    decoder = ContinuousDecoder(model, LIMIT)
    kept, dropped = Job(keep_sources, options), Job(drop_sources, options)
    decoder.admit([dropped, kept])
    tokens: dict[int, list[int]] = {0: [], 1: []}
    for step in range(LIMIT):
        if step == 3:
            assert decoder.rows == 5
            decoder.drop(dropped)
            assert decoder.rows == 2
        for event in decoder.step():
            assert event.job is kept or step < 3
            if event.job is kept and event.token_id is not None:
                tokens[event.index].append(event.token_id)
    assert tokens == {0: want[0], 1: want[1]}
    assert not decoder.jobs


def test_bad_jobs_are_refused_with_the_reason(model):
    decoder = ContinuousDecoder(model, LIMIT)
    with pytest.raises(GenerationError, match="over this decoder's limit"):
        decoder.prepare(Job([[5, 1]], dict(max_new_tokens=LIMIT + 1)))
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        decoder.prepare(Job([[model.config.vocab_size, 1]], {}))
    with pytest.raises(GenerationError, match="at least one token"):
        decoder.prepare(Job([[]], {}))
    with pytest.raises(GenerationError, match="unknown generation option"):
        decoder.prepare(Job([[5, 1]], dict(beams=2)))
    with pytest.raises(GenerationError, match="num_return_sequences"):
        decoder.prepare(Job([[5, 1]], dict(num_beams=2, num_return_sequences=2)))
    assert not decoder.jobs and decoder.cache is None


def test_a_job_that_fails_mid_step_fails_alone(model):
    """A job whose step raises (here: sampling with something that is not a generator) ends with an error
    event per output; the job beside it decodes on, unchanged."""
    vocab = model.config.vocab_size
    good_sources, bad_sources = sources(vocab, 1, seed=3), sources(vocab, 2, seed=4)
    options = dict(max_new_tokens=8, min_new_tokens=8)
    want = alone(model, good_sources, options, None)
    decoder = ContinuousDecoder(model, LIMIT)
    bad = Job(bad_sources, dict(options, do_sample=True), generator="not a generator")  # type: ignore[arg-type]
    good = Job(good_sources, options)
    decoder.admit([bad, good])
    events = []
    while decoder.jobs:
        events.extend(decoder.step())
    errors = [e for e in events if e.job is bad]
    assert [(e.index, e.stop_reason) for e in errors] == [(0, "error"), (1, "error")]
    assert errors[0].error and "generator" in errors[0].error.lower()
    assert [e.token_id for e in events if e.job is good and e.token_id is not None] == want[0]
    assert bad.done and bad.failed and decoder.cache is None
