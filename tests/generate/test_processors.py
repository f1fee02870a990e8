"""The logits processors against direct statements of their rules (the transformers parity of the whole
search is in test_search.py)."""

from __future__ import annotations

import math

import torch

from t5kit.generate import GenerationConfig, LogitsProcessors
from t5kit.generate.processors import ban_repeated_ngrams


def test_ngram_ban_forbids_exactly_the_completions_of_seen_ngrams():
    g = torch.Generator().manual_seed(0)
    history = torch.randint(0, 4, (6, 12), generator=g)  # a small alphabet: many repeats
    scores = torch.randn(6, 4, generator=g)
    for n in (1, 2, 3):
        banned = ban_repeated_ngrams(scores, history, n) == -math.inf
        for row in range(6):
            seq = history[row].tolist()
            tail = seq[len(seq) - n + 1:] if n > 1 else []
            expected = {seq[i + n - 1] for i in range(len(seq) - n + 1) if seq[i: i + n - 1] == tail}
            assert set(banned[row].nonzero()[:, 0].tolist()) == expected, (n, row)


def test_processors_follow_the_options():
    cfg = GenerationConfig(repetition_penalty=2.0, min_new_tokens=2, suppress_tokens=[3], eos_token_id=1)
    processors = LogitsProcessors(cfg, vocab=5)
    scores = torch.tensor([[1.0, 2.0, -2.0, 0.5, 4.0]])
    history = torch.tensor([[0, 2, 4]])
    out = processors.apply(scores, history, step=0)
    assert out.tolist() == [[0.5, -math.inf, -4.0, -math.inf, 2.0]]  # seen ids penalised, EOS and 3 banned
    assert processors.apply(scores, history, step=2)[0, 1] == 2.0  # EOS allowed from min_new_tokens on
    assert scores.tolist() == [[1.0, 2.0, -2.0, 0.5, 4.0]]  # never in place
    plain = LogitsProcessors(GenerationConfig(), vocab=5)
    assert plain.apply(scores, history, 0) is scores and not plain.warp
    top = LogitsProcessors(GenerationConfig(do_sample=True, top_k=2, temperature=0.5), vocab=5)
    warped = top.warped(scores)
    assert torch.isinf(warped).sum() == 3 and warped[0, 4] == 8.0


def test_in_place_processing_equals_the_copy():
    """Search hands its own step logits over with ``in_place=True``: every processor gives the same scores
    as on a copy, written into the tensor given."""
    g = torch.Generator().manual_seed(1)
    history = torch.randint(0, 6, (4, 9), generator=g)
    options = [dict(repetition_penalty=1.5), dict(no_repeat_ngram_size=2), dict(min_new_tokens=3, eos_token_id=1),
               dict(suppress_tokens=[2, 5]),
               dict(repetition_penalty=0.7, no_repeat_ngram_size=3, min_new_tokens=3, suppress_tokens=[0],
                    eos_token_id=1)]
    for kw in options:
        processors = LogitsProcessors(GenerationConfig(**kw), vocab=6)
        for step in (0, 5):
            scores = torch.randn(4, 6, generator=g)
            expected = processors.apply(scores, history, step)
            got = processors.apply(scores, history, step, in_place=True)
            assert torch.equal(got, expected), (kw, step)
            assert got is scores or not processors.active
    assert torch.isinf(expected).any()  # the processors did something
