"""Span corruption: the length table, the structure of each example, statistics, the streaming pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from t5kit.data import ListSource, SpanCorruptionStream, span_corrupt, span_corrupt_batch, span_corruption_lengths
from t5kit.errors import DataError

SENT = 32099


@pytest.mark.parametrize("inputs,raw,targets", [(512, 568, 114), (256, 284, 58), (1024, 1137, 229)])
def test_length_table(inputs, raw, targets):
    assert span_corruption_lengths(inputs) == (raw, targets)


def test_lengths_are_exact_for_many_sizes():
    rng = np.random.default_rng(0)
    for inputs in (16, 64, 100, 128, 333, 512):
        raw, tl = span_corruption_lengths(inputs)
        a, b = span_corrupt(rng.integers(5, 30000, raw), rng)
        assert len(a) + 1 == inputs and len(b) + 1 == tl
        # the largest raw length: one more token would overflow the inputs
        assert len(span_corrupt(np.arange(5, raw + 6), 0)[0]) + 1 > inputs


def reconstruct(inputs: list[int], targets: list[int], first_sentinel: int = 32000) -> list[int]:
    """Put each target span back in place of its sentinel."""
    spans: dict[int, list[int]] = {}
    cur = None
    for t in targets:
        if t >= first_sentinel:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(t)
    out = []
    for t in inputs:
        out.extend(spans.pop(t) if t >= first_sentinel else [t])
    assert not spans, "a target span has no sentinel in the inputs"
    return out


def test_structure_reconstructs_chunk_and_orders_sentinels():
    rng = np.random.default_rng(1)
    for length in [2, 3, 5, 10, 37, 568, 1137]:
        for _ in range(30):
            chunk = rng.integers(3, 32000, length).tolist()
            inputs, targets = span_corrupt(chunk, rng)
            assert reconstruct(inputs, targets) == chunk
            sent_in = [t for t in inputs if t >= 32000]
            sent_tg = [t for t in targets if t >= 32000]
            n = len(sent_in)
            assert sent_in == sent_tg == [SENT - i for i in range(n)]
            assert inputs[0] < 32000, "an example starts with kept text"
            assert inputs[-1] >= 32000, "an example ends with a noise span"
            assert targets[0] == SENT and targets[-1] < 32000
            # no two sentinels adjacent in the inputs (spans are separated by kept text)
            assert all(not (a >= 32000 and b >= 32000) for a, b in zip(inputs, inputs[1:]))


def test_deterministic_and_seed_dependent():
    chunk = list(range(100, 668))
    assert span_corrupt(chunk, 7) == span_corrupt(chunk, 7)
    assert span_corrupt(chunk, 7) != span_corrupt(chunk, 8)
    assert span_corrupt(chunk, np.random.default_rng(3)) == span_corrupt(chunk, 3)


def test_sentinel_start_is_configurable():
    inputs, targets = span_corrupt(list(range(10, 60)), 0, sentinel_start=259)  # e.g. ByT5's first sentinel
    assert targets[0] == 259 and 258 in inputs


def test_statistics_over_10000_examples():
    raw, _ = span_corruption_lengths(512)
    rng = np.random.default_rng(2024)
    # Token value = position + 3, so the targets tell exactly which positions were noise.
    tokens = np.tile(np.arange(raw) + 3, (10_000, 1))
    inputs, targets = span_corrupt_batch(tokens, rng)
    sentinel = targets >= 32000
    noise_tokens = int((~sentinel).sum())
    spans = int(sentinel.sum())
    assert abs(noise_tokens / tokens.size - 0.15) <= 0.005
    assert abs(noise_tokens / spans - 3.0) <= 0.1
    # Noise is spread evenly over the interior (only the final forced noise span raises the density at the
    # very end): the second and third quarters each hold about 15% noise.
    positions = targets[~sentinel] - 3
    per_position = np.bincount(positions, minlength=raw) / 10_000
    assert per_position[0] == 0.0 and per_position[-1] == 1.0  # starts with kept text, ends with noise
    for q in (1, 2):
        part = per_position[q * raw // 4 : (q + 1) * raw // 4]
        assert abs(part.mean() - 0.15) < 0.01, (q, part.mean())
    # Random segmentation: 85 noise tokens in 28 spans -> P(span length 1) = 27/84 for a uniform composition.
    row_lengths = np.diff(np.flatnonzero(np.append(sentinel[:2000].ravel(), True))) - 1
    assert abs(np.mean(row_lengths == 1) - 27 / 84) < 0.01
    assert row_lengths.var() > 1.0, "span lengths must vary"


def test_batch_rejects_bad_shapes():
    with pytest.raises(DataError, match="batch, length"):
        span_corrupt_batch([1, 2, 3], 0)
    with pytest.raises(DataError, match="at least 3"):
        span_corruption_lengths(2)


class CharTokenizer:
    """A deterministic stand-in: one id per character."""

    def encode(self, text, add_eos=True):
        ids = [3 + (ord(c) % 1000) for c in text]
        return ids + [1] if add_eos else ids


def test_stream_exact_lengths_and_concatenation():
    docs = [{"text": "abcdefghij" * k} for k in range(1, 40)] + [{"text": "   "}]
    stream = SpanCorruptionStream(ListSource(docs), CharTokenizer(), inputs_length=64, seed=5)
    raw, tl = span_corruption_lengths(64)
    examples = list(stream)
    total = sum(len(d["text"]) for d in docs[:-1])
    assert len(examples) == total // raw  # the short leftover is dropped
    for ex in examples:
        assert len(ex["inputs"]) == 64 and len(ex["targets"]) == tl
        assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1
        assert 1 not in ex["inputs"][:-1], "no EOS between concatenated documents"
    concat = [t for ex in examples for t in reconstruct(ex["inputs"][:-1], ex["targets"][:-1])]
    expected = CharTokenizer().encode("".join(d["text"] for d in docs[:-1]), add_eos=False)
    assert concat == expected[: len(concat)]


def test_stream_resume_is_exact():
    docs = [{"text": f"document number {i} " * (i % 7 + 1)} for i in range(300)]
    full = SpanCorruptionStream(ListSource(docs), CharTokenizer(), inputs_length=32, seed=9)
    first = [next(full) for _ in range(10)]
    state = full.state_dict()
    expected = [next(full) for _ in range(10)]
    resumed = SpanCorruptionStream(ListSource(docs), CharTokenizer(), inputs_length=32, seed=0)
    resumed.load_state_dict(state)
    assert [next(resumed) for _ in range(10)] == expected
    assert first != expected
