"""Span corruption, T5's pre-training objective, exactly as in the paper and ``T5_SPEC.md`` section 5.

A raw chunk of ``L`` token ids is split into noise and non-noise tokens: ``round(0.15 L)`` noise tokens
(clamped to ``[1, L-1]``) in ``max(1, round(noise / 3))`` spans. The noise tokens and the non-noise
tokens are each cut into that many non-empty segments at random and interleaved, non-noise first, so
the chunk starts with kept text and ends with a noise span. Each noise span is replaced in the inputs
by one sentinel (32099, 32098, ... in order); the targets are ``S0 span0 S1 span1 ...``. EOS is added
by the pipeline (:class:`SpanCorruptionStream`), not here, so that a chunk of
:func:`span_corruption_lengths` tokens gives inputs and targets of exactly the requested lengths.

Everything is vectorised with numpy: :func:`span_corrupt_batch` corrupts a ``[B, L]`` array with no
Python loop over examples or spans, which is what the benchmark measures.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from t5kit.errors import DataError
from t5kit.ids import EOS_ID

DEFAULT_SENTINEL_START = 32099  # <extra_id_0> in the T5 vocabulary; <extra_id_i> = 32099 - i

SeedLike = int | np.random.Generator | Sequence[int] | None


def _counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """Noise tokens and noise spans for a chunk of ``length`` tokens (Python's round, as in T5)."""
    num_noise = int(round(length * noise_density))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(1, int(round(num_noise / mean_noise_span_length)))
    # Each non-noise segment must be non-empty too.
    num_spans = min(num_spans, num_noise, length - num_noise)
    return num_noise, num_spans


def _lengths_for_raw(raw_length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    num_noise, num_spans = _counts(raw_length, noise_density, mean_noise_span_length)
    return (raw_length - num_noise) + num_spans + 1, num_noise + num_spans + 1


def span_corruption_lengths(
    inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """The raw chunk length and the targets length for inputs of exactly ``inputs_length`` tokens.

    Picks the largest raw length ``L`` whose corrupted inputs (kept tokens + one sentinel per span +
    EOS) fit, as T5's ``random_spans_helper`` does: 512 -> (568, 114), 256 -> (284, 58),
    1024 -> (1137, 229). Both lengths include EOS.
    """
    if inputs_length < 3:
        raise DataError(f"inputs_length must be at least 3 for span corruption, got {inputs_length}")
    if not 0.0 < noise_density < 1.0:
        raise DataError(f"noise_density must be between 0 and 1 (exclusive), got {noise_density}")
    if mean_noise_span_length <= 0:
        raise DataError(f"mean_noise_span_length must be positive, got {mean_noise_span_length}")
    raw = 2
    while _lengths_for_raw(raw + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
        raw += 1
    inputs, targets = _lengths_for_raw(raw, noise_density, mean_noise_span_length)
    if inputs != inputs_length:  # pragma: no cover - only for exotic densities where no L fits exactly
        raise DataError(
            f"no raw length gives exactly {inputs_length} input tokens with noise_density={noise_density}, "
            f"mean_noise_span_length={mean_noise_span_length} (closest: {inputs}); pick another inputs_length"
        )
    return raw, targets


def as_generator(seed_or_generator: SeedLike) -> np.random.Generator:
    """A numpy Generator from an int seed, a sequence of ints (e.g. ``[seed, index]``) or a Generator."""
    if isinstance(seed_or_generator, np.random.Generator):
        return seed_or_generator
    return np.random.default_rng(seed_or_generator)


def random_spans_noise_mask(
    batch: int,
    length: int,
    rng: np.random.Generator,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> np.ndarray:
    """A boolean ``[batch, length]`` noise mask: alternating random segments, non-noise first.

    Cutting ``n`` items into ``k`` non-empty segments uniformly at random means choosing ``k-1`` of the
    ``n-1`` gaps, which is what T5's shuffled indicator does; here it is a per-row permutation.
    """
    num_noise, num_spans = _counts(length, noise_density, mean_noise_span_length)
    num_keep = length - num_noise

    def segment_starts(n: int) -> np.ndarray:
        # [batch, num_spans] sorted start offsets (first is 0) of k random non-empty segments of n items.
        if num_spans == 1:
            return np.zeros((batch, 1), dtype=np.int64)
        gaps = np.zeros((batch, n - 1), dtype=bool)
        gaps[:, : num_spans - 1] = True
        gaps = rng.permuted(gaps, axis=1)
        cuts = np.nonzero(gaps)[1].reshape(batch, num_spans - 1) + 1
        return np.concatenate([np.zeros((batch, 1), dtype=np.int64), cuts], axis=1)

    noise_starts = segment_starts(num_noise)  # offsets among noise tokens
    keep_starts = segment_starts(num_keep)  # offsets among kept tokens
    # Kept tokens before noise segment j = start of kept segment j+1 (or all kept tokens for the last).
    keep_before = np.concatenate(
        [keep_starts[:, 1:], np.full((batch, 1), num_keep, dtype=np.int64)], axis=1
    )
    # Segment of each noise token k: number of noise starts <= k, minus one.
    is_start = np.zeros((batch, num_noise), dtype=np.int64)
    np.put_along_axis(is_start, noise_starts, 1, axis=1)
    seg = np.cumsum(is_start, axis=1) - 1
    positions = np.arange(num_noise)[None, :] + np.take_along_axis(keep_before, seg, axis=1)
    mask = np.zeros((batch, length), dtype=bool)
    np.put_along_axis(mask, positions, True, axis=1)
    return mask


def _apply_mask(tokens: np.ndarray, mask: np.ndarray, sentinel_start: int) -> tuple[np.ndarray, np.ndarray]:
    """Replace each noise span by a sentinel in the inputs and each kept span by one in the targets."""
    batch, length = tokens.shape
    prev = np.concatenate([np.zeros((batch, 1), dtype=bool), mask[:, :-1]], axis=1)
    noise_start = mask & ~prev
    first = np.zeros((batch, length), dtype=bool)
    first[:, 0] = True
    keep_start = ~mask & (prev | first)
    sent_in = sentinel_start - (np.cumsum(noise_start, axis=1) - 1)
    sent_tg = sentinel_start - (np.cumsum(keep_start, axis=1) - 1)
    inputs_full = np.where(noise_start, sent_in, tokens)
    targets_full = np.where(keep_start, sent_tg, tokens)
    keep_in = ~mask | noise_start
    keep_tg = mask | keep_start
    # Every row has the same counts, so boolean selection reshapes cleanly.
    inputs = inputs_full[keep_in].reshape(batch, -1)
    targets = targets_full[keep_tg].reshape(batch, -1)
    return inputs, targets


def span_corrupt_batch(
    tokens: np.ndarray | Sequence[Sequence[int]],
    seed_or_generator: SeedLike,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    sentinel_start: int = DEFAULT_SENTINEL_START,
) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt a ``[B, L]`` batch of equal-length chunks at once (no EOS); returns ``[B, Li]``, ``[B, Lt]``."""
    arr = np.asarray(tokens, dtype=np.int64)
    if arr.ndim != 2:
        raise DataError(f"span_corrupt_batch expects a [batch, length] array, got shape {arr.shape}")
    if arr.shape[1] < 2:
        raise DataError(f"span corruption needs chunks of at least 2 tokens, got {arr.shape[1]}")
    rng = as_generator(seed_or_generator)
    mask = random_spans_noise_mask(arr.shape[0], arr.shape[1], rng, noise_density, mean_noise_span_length)
    return _apply_mask(arr, mask, sentinel_start)


def span_corrupt(
    tokens: Sequence[int] | np.ndarray,
    seed_or_generator: SeedLike,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    sentinel_start: int = DEFAULT_SENTINEL_START,
) -> tuple[list[int], list[int]]:
    """Corrupt one chunk of token ids; returns ``(inputs, targets)`` as lists, without EOS.

    ``seed_or_generator`` is an int, a sequence of ints or a ``numpy.random.Generator``: the same seed
    and chunk always give the same result.
    """
    arr = np.asarray(tokens, dtype=np.int64)
    if arr.ndim != 1:
        raise DataError(f"span_corrupt expects one 1-D chunk of token ids, got shape {arr.shape}")
    inputs, targets = span_corrupt_batch(
        arr[None, :], seed_or_generator, noise_density, mean_noise_span_length, sentinel_start
    )
    return inputs[0].tolist(), targets[0].tolist()


class SpanCorruptionStream:
    """Documents -> token ids (no EOS) -> concatenated -> chunks of the raw length -> corrupted + EOS.

    Yields ``{"inputs": list[int], "targets": list[int]}`` with ``len(inputs) == inputs_length`` and
    ``len(targets) == targets_length`` (both end with EOS id 1). A leftover shorter than one chunk at the
    end of the source is dropped, so every example has exactly those lengths and needs no padding.

    ``source`` is any iterable of dicts (a t5kit source, resumable when it has ``state_dict``);
    ``tokenizer`` any object with ``encode(text, add_eos=...)``. Example ``i`` is corrupted with the
    generator ``default_rng([seed, i])``, so resuming needs only the source position, the partial chunk
    and ``i`` (see :meth:`state_dict`).
    """

    def __init__(
        self,
        source: Iterable[dict[str, Any]],
        tokenizer: Any,
        inputs_length: int = 512,
        text_field: str = "text",
        seed: int = 0,
        noise_density: float = 0.15,
        mean_noise_span_length: float = 3.0,
        sentinel_start: int | None = None,
        eos_id: int = EOS_ID,
    ) -> None:
        self.source = source
        self.tokenizer = tokenizer
        self.inputs_length = inputs_length
        self.raw_length, self.targets_length = span_corruption_lengths(
            inputs_length, noise_density, mean_noise_span_length
        )
        self.text_field = text_field
        self.seed = seed
        self.noise_density = noise_density
        self.mean_noise_span_length = mean_noise_span_length
        if sentinel_start is None:
            sid = getattr(tokenizer, "sentinel_id", None)
            sentinel_start = int(sid(0)) if callable(sid) else DEFAULT_SENTINEL_START
        self.sentinel_start = sentinel_start
        self.eos_id = eos_id
        self._buffer: list[int] = []
        self._index = 0
        self._source_iter: Iterator[dict[str, Any]] | None = None

    def _encode(self, record: dict[str, Any]) -> list[int]:
        if self.text_field not in record:
            where = record.get("_where", "a record")
            fields = [k for k in record if not k.startswith("_")]
            raise DataError(
                f"{where}: no field {self.text_field!r} for span corruption (fields: {fields}); "
                f"set text_field to one of them"
            )
        text = record[self.text_field]
        if not isinstance(text, str):
            raise DataError(f"{record.get('_where', 'a record')}: field {self.text_field!r} is not text")
        if not text.strip():
            return []
        return list(self.tokenizer.encode(text, add_eos=False))

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        return self

    def __next__(self) -> dict[str, list[int]]:
        if self._source_iter is None:
            self._source_iter = iter(self.source)
        while len(self._buffer) < self.raw_length:
            record = next(self._source_iter)  # StopIteration ends the stream; the leftover is dropped
            self._buffer.extend(self._encode(record))
        chunk = self._buffer[: self.raw_length]
        del self._buffer[: self.raw_length]
        rng = np.random.default_rng([self.seed, self._index])
        self._index += 1
        inputs, targets = span_corrupt(
            chunk, rng, self.noise_density, self.mean_noise_span_length, self.sentinel_start
        )
        inputs.append(self.eos_id)
        targets.append(self.eos_id)
        return {"inputs": inputs, "targets": targets}

    def state_dict(self) -> dict[str, Any]:
        """Position after the last example returned: source position, partial chunk, example index."""
        src = self.source.state_dict() if hasattr(self.source, "state_dict") else None
        return {"source": src, "buffer": list(self._buffer), "index": self._index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("source") is not None:
            if not hasattr(self.source, "load_state_dict"):
                raise DataError("cannot resume: this stream's source has no load_state_dict()")
            self.source.load_state_dict(state["source"])
        self._buffer = list(state["buffer"])
        self._index = int(state["index"])
        self.seed = int(state.get("seed", self.seed))
        self._source_iter = None
