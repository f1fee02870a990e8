"""Continuous (in-flight) batching for an encoder-decoder: requests join and leave a running batch at every step.

A static batch decodes until its longest row ends, and a request that arrives meanwhile waits for all of
it. Here the batch is a list of *jobs* (one request each: its sources, its options, its own logits
processors and its own seeded generator) that share one decoder cache. Between two decoding steps:

- new jobs are admitted (:meth:`ContinuousDecoder.admit`): their sources go through the encoder together,
  their cross-attention keys/values are computed once, and their rows join the cache at its current
  column (``DecoderCache.join``). T5's positions are relative, so a row that starts at column 40 sees
  exactly what it would see alone (the columns before it are masked);
- jobs whose rows all ended, and jobs the caller cancels (:meth:`ContinuousDecoder.drop`), leave, and the
  cache keeps only the rows still decoding (one gather per step, only when something changed).

Each job advances with the same bookkeeping ``generate`` uses (:class:`~t5kit.generate.search.SampleState`,
:class:`~t5kit.generate.search.BeamState`) on its own slice of the step's logits, so greedy and seeded
sampled outputs equal what the job gives decoded alone, and rows with different settings share a step.
Beam search jobs join as num_beams rows per source and stream the prefix all their hypotheses share
(``BeamState.settled``): tokens that no later step can change.

Events never carry the EOS token: a row's end is its own event (``token_id`` None, ``stop_reason`` "eos" or
"length"). Nothing here imports ``t5kit.model``; the model is the search module's protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from t5kit.generate.options import GenerationConfig, GenerationError
from t5kit.generate.search import BeamState, ForcedWordsBeamState, SampleState, _config, beam_state

# The cache holds twice the longest output a job may ask for: a row that joins late starts at a later column,
# and the columns before the oldest running row are dropped (``DecoderCache.compact``) only when the cache is
# full, so with twice the room a compaction (one copy of the cache) happens at most once per max_new_tokens steps.
ROOM_FACTOR = 2
# Source tokens whose encoder pass may run before one decoding step (a server's admission budget). A t5-small
# step of 32 rows takes ~40-60 ms on 2 cores, and the encoder reads ~8-10k tokens a second there: 512 tokens
# cost about one step.
DEFAULT_MAX_ENCODER_TOKENS = 512


@dataclass(eq=False)
class Job:
    """One request's rows for :class:`ContinuousDecoder`: token ids of each source (EOS included) and options.

    ``tag`` is the caller's (the server keeps its request there). ``generator`` seeds sampling: a job's
    draws depend on its own rows only, so a seeded job gives the same text alone and in any batch. ``route``
    is the caller's per-row key for the model (the server's adapter index: the decoder hands the keys of
    each call's rows to its ``route`` callback, and never reads them itself).
    """

    input_ids: list[list[int]]
    options: dict[str, Any] = field(default_factory=dict)
    generator: torch.Generator | None = None
    tag: Any = None
    route: Any = None
    config: GenerationConfig | None = field(default=None, init=False)
    state: SampleState | BeamState | ForcedWordsBeamState | None = field(default=None, init=False, repr=False)
    sent: list[int] = field(default_factory=list, init=False, repr=False)  # beam streaming: tokens reported
    first_step: bool = field(default=True, init=False, repr=False)
    failed: str | None = field(default=None, init=False)  # why the job stopped with an error, if it did

    @property
    def rows(self) -> int:
        """Decoder rows the job needs when it is admitted (sources x beams, or x copies when sampling)."""
        cfg = self.config
        if cfg is None:
            raise GenerationError("job not prepared: ContinuousDecoder.prepare(job) first")
        per_source = cfg.num_beams if cfg.num_beams > 1 else cfg.num_return_sequences
        return len(self.input_ids) * per_source

    @property
    def source_tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)

    @property
    def done(self) -> bool:
        return self.failed is not None or (self.state is not None and self.state.done)


class Event(NamedTuple):
    """A new token of output ``index`` of ``job`` (``token_id``), or its end (``token_id`` None, ``stop_reason``
    "eos", "length", or "error" with ``error`` saying what failed: that job alone, the others go on)."""

    job: Job
    index: int
    token_id: int | None
    stop_reason: str | None = None
    error: str | None = None


class ContinuousDecoder:
    """Jobs sharing one decoder cache, advanced one step at a time (see the module docstring).

    ``max_new_tokens`` is the longest output any job may ask for. Call :meth:`prepare` on a job (checks its
    options and ids), :meth:`admit` to let prepared jobs in, :meth:`step` to decode one token for every
    running row, :meth:`drop` to stop a job. Not thread-safe: one caller thread (the server's model worker).
    ``route``, if given, is called before each model call with one key per input row (each job's ``route``:
    a source's row in the encoder pass, a cache row in a decoding step), so a model whose layers act per row
    group (several adapters over one base: :class:`t5kit.adapters.multi.AdapterSet`) knows the rows' groups.
    """

    def __init__(self, model: Any, max_new_tokens: int, max_rows: int = 32,
                 route: Callable[[list[Any]], None] | None = None):
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.model = model
        self.max_new_tokens = int(max_new_tokens)
        self.capacity = ROOM_FACTOR * self.max_new_tokens
        self.max_rows = int(max_rows)  # rows the cache keeps room for (more are allocated when a job needs them)
        self.jobs: list[Job] = []
        self.cache: Any = None
        self.eos = model.config.eos_token_id
        self.compactions = 0
        self.route = route

    # ------------------------------------------------------------------------------------------ admission
    @property
    def rows(self) -> int:
        """Decoder rows the next step decodes."""
        return sum(job.state.num_rows for job in self.jobs)

    def prepare(self, job: Job) -> Job:
        """Resolve and check ``job``'s options and ids (a :class:`GenerationError` names what is wrong).
        A job that does not say ``max_new_tokens`` may decode as many as the decoder allows."""
        options = {"max_new_tokens": self.max_new_tokens, **job.options}  # unsaid: as long as the decoder allows
        cfg = _config(self.model, None, options)
        if cfg.max_new_tokens > self.max_new_tokens:
            raise GenerationError(f"max_new_tokens {cfg.max_new_tokens} is over this decoder's limit of "
                                  f"{self.max_new_tokens}")
        if cfg.num_beams > 1 and cfg.num_return_sequences > 1:
            raise GenerationError("continuous batching returns one hypothesis per source for beam search: "
                                  "num_return_sequences must be 1 with num_beams > 1")
        if not job.input_ids or any(not ids for ids in job.input_ids):
            raise GenerationError("every source needs at least one token (EOS)")
        vocab = self.model.config.vocab_size
        for i, ids in enumerate(job.input_ids):
            if min(ids) < 0 or max(ids) >= vocab:
                raise GenerationError(f"source {i} holds ids outside the vocabulary [0, {vocab})")
        job.config = cfg
        return job

    def admit(self, jobs: list[Job]) -> None:
        """Let prepared ``jobs`` into the running batch: one encoder pass over all their sources, their
        cross-attention keys/values computed once, their rows joined to the cache at its current column."""
        jobs = [j if j.config is not None else self.prepare(j) for j in jobs]
        if not jobs:
            return
        model, device = self.model, self.model.device
        sources = [ids for job in jobs for ids in job.input_ids]
        width = max(len(ids) for ids in sources)
        input_ids = torch.full((len(sources), width), model.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sources), width), dtype=torch.long)
        for i, ids in enumerate(sources):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, : len(ids)] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        if self.route is not None:  # one row per source (the cross-attention keys/values are computed here too)
            self.route([job.route for job in jobs for _ in job.input_ids])
        with torch.inference_mode():
            cache = model.new_cache(model.encode(input_ids, mask), mask, max_length=self.capacity)
            repeats, source = [], 0
            for job in jobs:
                cfg = job.config
                per_source = cfg.num_beams if cfg.num_beams > 1 else cfg.num_return_sequences
                for _ in job.input_ids:
                    repeats.extend([source] * per_source)
                    source += 1
                vocab = model.config.vocab_size
                if cfg.num_beams > 1:
                    job.state = beam_state(cfg, len(job.input_ids), vocab, job.generator, device)
                    job.sent = [0] * len(job.input_ids)
                else:
                    job.state = SampleState(cfg, job.rows, vocab, job.generator, False, device)
            if repeats != list(range(len(sources))):
                cache = cache.select(torch.tensor(repeats, device=device))
            self.cache = cache if self.cache is None else self.cache.join(cache, self.max_rows)
        self.jobs.extend(jobs)

    def drop(self, job: Job) -> None:
        """Stop ``job`` (cancelled, timed out, client gone): its rows leave the batch now. No event follows."""
        if job not in self.jobs:
            return
        offset = 0
        for other in self.jobs:
            if other is job:
                break
            offset += other.state.num_rows
        n = job.state.num_rows
        self.jobs.remove(job)
        if not self.jobs:
            self.cache = None
            return
        keep = [r for r in range(self.cache.batch_size) if not offset <= r < offset + n]
        with torch.inference_mode():  # the cache's tensors are inference tensors
            self.cache.keep_rows(keep, keep)

    def clear(self) -> list[Job]:
        """Forget every job (after a failure); returns them."""
        jobs, self.jobs, self.cache = self.jobs, [], None
        return jobs

    # ------------------------------------------------------------------------------------------ decoding
    def step(self) -> list[Event]:
        """Decode one token for every running row; returns what happened (tokens, ends) in job order."""
        if not self.jobs:
            return []
        cache = self.cache
        with torch.inference_mode():
            if cache.length + 1 > cache.max_length:
                if not cache.compact():
                    raise GenerationError(f"the decoder cache is full ({cache.max_length} positions)")
                self.compactions += 1
            if self.route is not None:
                self.route([job.route for job in self.jobs for _ in range(job.state.num_rows)])
            inputs = [job.state.tokens if isinstance(job.state, SampleState) else job.state.next_input()
                      for job in self.jobs]
            logits = self.model.decode_step(torch.cat(inputs) if len(inputs) > 1 else inputs[0], cache)[:, -1]
            logits = logits.float()
            events: list[Event] = []
            rows: list[int] = []  # new row r continues old row rows[r] ...
            cross_rows: list[int] = []  # ... and takes old row cross_rows[r]'s cross attention (ascending)
            offset = 0
            for job in self.jobs:
                n = job.state.num_rows
                mine = logits[offset: offset + n]
                mark = len(events)
                try:
                    if isinstance(job.state, SampleState):
                        kept = kept_cross = self._advance_sample(job, mine, events)
                    else:
                        kept, kept_cross = self._advance_beam(job, mine, events)
                except Exception as err:  # noqa: BLE001 - one job's failure (its options, its logits) is its own
                    job.failed = f"{type(err).__name__}: {err}"
                    del events[mark:]
                    events.extend(Event(job, i, None, "error", job.failed) for i in range(self._outputs(job)))
                    kept = kept_cross = []
                rows.extend(offset + r for r in kept)
                cross_rows.extend(offset + r for r in kept_cross)
                offset += n
            self.jobs = [job for job in self.jobs if not job.done]
            if not self.jobs:
                self.cache = None
            elif rows != list(range(offset)):
                cache.keep_rows(rows, cross_rows)
        return events

    @staticmethod
    def _outputs(job: Job) -> int:
        """Outputs (event indices) of a job: one per source, times copies when sampling several."""
        cfg = job.config
        return len(job.input_ids) * (1 if cfg.num_beams > 1 else cfg.num_return_sequences)

    def _advance_sample(self, job: Job, logits: Tensor, events: list[Event]) -> list[int]:
        """Advance a greedy / sampled job; returns the positions (within the job) of its rows that go on."""
        state = job.state
        rows, tokens, finished, keep = state.advance(logits)
        for r, t in zip(rows.tolist(), tokens.tolist()):
            if t != self.eos:
                events.append(Event(job, r, t))
        for r, reason in finished:
            events.append(Event(job, r, None, reason))
        if state.done:
            return []
        return list(range(rows.numel())) if keep is None else keep.tolist()

    def _advance_beam(self, job: Job, logits: Tensor, events: list[Event]) -> tuple[list[int], list[int]]:
        """Advance a beam job; returns (the old row each new row continues, a row of the same item for its
        cross attention), positions within the job. Streams each item's settled tokens."""
        state = job.state
        K = state.K
        if job.first_step:  # every beam of a source starts from the same decoder start: one row's logits each
            job.first_step = False
            logits = logits.view(-1, K, logits.shape[-1])[:, 0].repeat_interleave(K, 0)
        reorder = state.advance(logits)
        if reorder is None:
            out = state.output(False)
            for i in range(len(job.input_ids)):
                new = out.sequences[i, 1: out.num_new_tokens[i] + 1].tolist()
                for t in new[job.sent[i]:]:
                    if t != self.eos:
                        events.append(Event(job, i, t))
                events.append(Event(job, i, None, out.stop_reasons[i]))
            return [], []
        rows, cross_items = reorder
        items, settled = state.settled()
        for position, (item, count) in enumerate(zip(items.tolist(), settled.tolist())):
            if count > job.sent[item]:
                for t in state.running_sequences[position, 0, 1 + job.sent[item]: 1 + count].tolist():
                    if t == self.eos:
                        break
                    events.append(Event(job, item, t))
                    job.sent[item] += 1
        old_items = cross_items.tolist() if cross_items is not None else range(rows.numel() // K)
        return rows.tolist(), [item * K + beam for item in old_items for beam in range(K)]

__all__ = ["DEFAULT_MAX_ENCODER_TOKENS", "ROOM_FACTOR", "ContinuousDecoder", "Event", "Job"]
