"""Decoding: greedy, sampled and beam search, and streaming, over a small model protocol.

Everything here drives the model's incremental interface (``encode`` once, ``new_cache`` once,
``decode_step`` one token at a time: :class:`DecodingModel`) and never re-runs the decoder over the prefix.
It imports nothing of ``t5kit.model``: ``T5Model.generate`` calls into this module, so the model is
described by the protocol instead. The outputs are laid out as `transformers` lays them out (decoder start
token first, pad after EOS) and are token-identical to its ``generate`` for the options both have: the
logits processors run in the same order with the same arithmetic, and beam search repeats its
bookkeeping operation for operation (including the -1e9 masking and the early-stopping heuristic),
because a reimplementation "in the same spirit" breaks ties differently.

Cost model: greedy and sampled rows that reach EOS leave the compute batch at once (``cache.select``);
beam-search items that can no longer change leave it too, and a beam reorder copies only the filled part
of the self-attention cache.

Constraints (#19): bad words, the prefix-allowed-tokens function, ``allowed_sequences`` and ``decoder_prefix``
are logits processors (:mod:`t5kit.generate.processors`), so every search and the continuous batcher apply
them alike; ``force_words_ids`` needs its own beam search (:class:`ForcedWordsBeamState`).

Two length penalties are offered: ``length_penalty_style="hf"`` divides the summed log-probability by
``length ** length_penalty`` (`transformers`), ``"gnmt"`` by ``((5 + length) / 6) ** length_penalty``
(Wu et al. 2016, the T5 paper's beam search with alpha 0.6).

Precision is not decided here: a bf16 or int8 model is prepared by the text pipeline
(``t5kit.Generator(..., precision=)``) or by ``t5kit.kernels.inference.precision.inference_model`` and
then searched like any other model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from t5kit.generate.options import GenerationConfig, GenerationError, check_token_ids
from t5kit.generate.processors import LogitsProcessors
from t5kit.threads import decoding_threads, each_step, tick


class DecodingCache(Protocol):
    """The decoder cache as search uses it (``t5kit.model.cache.DecoderCache`` is one)."""

    def select(self, rows: Tensor) -> DecodingCache: ...

    def expand_beams(self, beams: int) -> DecodingCache: ...

    def reorder_beams(self, rows: Tensor, items: Tensor | None = None) -> DecodingCache: ...


class DecodingModel(Protocol):
    """What search needs of a model (``t5kit.T5Model`` is one): its config's token ids and vocabulary size,
    its device, an encoder pass, a cache, and one decoder step on the cache. The logits a step returns
    belong to search, which may modify them in place."""

    config: Any  # .vocab_size, .eos_token_id, .pad_token_id, .decoder_start_token_id

    @property
    def device(self) -> torch.device: ...

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor: ...

    def new_cache(self, encoder_hidden: Tensor, attention_mask: Tensor, max_length: int) -> DecodingCache: ...

    def decode_step(self, decoder_input_ids: Tensor, cache: Any) -> Tensor: ...


class LengthLimitWarning(UserWarning):
    """Some output stopped at ``max_new_tokens`` rather than at EOS (it may be truncated)."""


@dataclass
class GenerationOutput:
    """``sequences`` [n, 1 + longest]: decoder start, generated ids, pad after EOS (transformers' layout).

    Rows are ordered input by input, ``num_return_sequences`` consecutive rows per input (best beam first).
    ``scores`` [n] (only with ``return_scores``): the summed log-probability of the generated tokens under
    the processed distribution they were chosen from; for beam search, divided by the length penalty (as
    transformers' ``sequences_scores``). ``stop_reasons``: "eos" or "length" per row.
    """

    sequences: Tensor
    stop_reasons: list[str]
    scores: Tensor | None = None
    num_new_tokens: list[int] = field(default_factory=list)

    @property
    def hit_length_limit(self) -> bool:
        return any(r == "length" for r in self.stop_reasons)


class StreamEvent(NamedTuple):
    """One streaming event: a new token of ``row`` (``token_id``), or its end (``token_id`` None, ``stop_reason``)."""

    row: int
    token_id: int | None
    stop_reason: str | None = None


# ---------------------------------------------------------------------------------------------- inputs


def _prepare_inputs(model: Any, input_ids: Any, attention_mask: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(input_ids, Tensor):
        try:
            input_ids = torch.as_tensor(input_ids, dtype=torch.long)
        except (TypeError, ValueError) as e:
            raise GenerationError(f"input_ids must be a [batch, length] tensor of token ids: {e}") from None
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2:
        raise GenerationError(f"input_ids must have shape [batch, length], got {tuple(input_ids.shape)}")
    if input_ids.shape[0] == 0:
        raise GenerationError("input_ids is an empty batch: give at least one source")
    if input_ids.shape[1] == 0:
        raise GenerationError("input_ids has zero length: every source needs at least one token (EOS)")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise GenerationError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    vocab = model.config.vocab_size
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab:
        raise GenerationError(f"input_ids holds ids outside the vocabulary [0, {vocab}): min {low}, max {high}; "
                              "was the text encoded with this model's tokenizer?")
    input_ids = input_ids.to(device=model.device, dtype=torch.long)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    else:
        attention_mask = torch.as_tensor(attention_mask).to(model.device)
        if attention_mask.shape != input_ids.shape:
            raise GenerationError(f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids "
                                  f"shape {tuple(input_ids.shape)}")
    return input_ids, attention_mask


# ``precision=`` converts the model (bf16 weights, int8 linears): an inference kernel, which sits above the model
# and so above this module. It registers its converter here when imported (``import t5kit`` imports it), so
# ``generate(model, ..., precision="int8")`` works as it did before #16 without this module importing upwards.
_precision_converter: Callable[[Any, str], Any] | None = None


def register_precision_converter(convert: Callable[[Any, str], Any]) -> None:
    """Set the function ``generate``/``stream`` use for ``precision=`` (t5kit.kernels.inference.precision)."""
    global _precision_converter
    _precision_converter = convert


def _in_precision(model: Any, precision: str | None) -> Any:
    if precision is None:
        return model
    if _precision_converter is None:
        raise GenerationError("precision= needs t5kit's inference kernels: import t5kit (or "
                              "t5kit.kernels.inference.precision) first")
    return _precision_converter(model, precision)


def _config(model: Any, config: GenerationConfig | None, options: dict[str, Any]) -> GenerationConfig:
    cfg = GenerationConfig.from_options(config, **options).resolved(model.config)
    check_token_ids(cfg, model.config.vocab_size)
    return cfg


# ---------------------------------------------------------------------------------------------- entry points


def generate(
    model: DecodingModel,
    input_ids: Any,
    attention_mask: Any = None,
    *,
    config: GenerationConfig | None = None,
    precision: str | None = None,
    return_scores: bool = False,
    generator: torch.Generator | None = None,
    warn_on_length_limit: bool = True,
    **options: Any,
) -> GenerationOutput:
    """Generate from a batch of (padded) sources; options are :class:`GenerationConfig` fields.

    ``precision`` ("fp32", "bf16", "int8") decodes with a converted copy of the model, made once and kept
    (``t5kit.kernels.inference.precision.inference_model``); ``None`` uses the model as it is.
    ``generator`` makes sampling reproducible.
    A ``LengthLimitWarning`` is raised when some row stopped at ``max_new_tokens`` rather than at EOS
    (unless EOS is suppressed, when that is the point).
    """
    model = _in_precision(model, precision)
    cfg = _config(model, config, options)
    input_ids, attention_mask = _prepare_inputs(model, input_ids, attention_mask)
    with torch.inference_mode(), decoding_threads():  # t5kit.threads: T5KIT_THREADS
        if cfg.num_beams > 1:
            out = _beam_search(model, input_ids, attention_mask, cfg, return_scores, generator)
        else:
            out = _sample(model, input_ids, attention_mask, cfg, return_scores, generator)
    eos_possible = cfg.eos_token_id is not None and cfg.eos_token_id not in cfg.suppress_tokens
    if warn_on_length_limit and eos_possible and out.hit_length_limit:
        count = sum(r == "length" for r in out.stop_reasons)
        warnings.warn(f"{count} of {len(out.stop_reasons)} sequences stopped at max_new_tokens="
                      f"{cfg.max_new_tokens} before EOS (possibly truncated); raise max_new_tokens",
                      LengthLimitWarning, stacklevel=2)
    return out


def stream(
    model: DecodingModel,
    input_ids: Any,
    attention_mask: Any = None,
    *,
    config: GenerationConfig | None = None,
    precision: str | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> Iterator[StreamEvent]:
    """Yield ``StreamEvent(row, token_id)`` as tokens are produced, then ``StreamEvent(row, None, reason)``
    the moment a row ends, so a server can answer that request while the other rows go on.

    Greedy or sampled decoding only (beam search cannot commit to a token before it ends). Rows are
    input rows (times ``num_return_sequences`` when sampling several).
    """
    model = _in_precision(model, precision)
    cfg = _config(model, config, options)
    if cfg.num_beams > 1:
        raise GenerationError("stream() supports greedy and sampled decoding only (num_beams=1); beam search "
                              "decides its output at the end: use generate()")
    input_ids, attention_mask = _prepare_inputs(model, input_ids, attention_mask)
    with torch.inference_mode():
        steps = each_step(_sample_steps(model, input_ids, attention_mask, cfg, False, generator))
        for rows, tokens, finished in steps:
            for r, t in zip(rows.tolist(), tokens.tolist()):
                yield StreamEvent(r, t)
            for r, reason in finished:
                yield StreamEvent(r, None, reason)


# ---------------------------------------------------------------------------------------------- greedy / sampling


class SampleState:
    """The greedy / sampling bookkeeping of one batch of rows, step by step, apart from the model and the cache:
    what ``_sample_steps`` runs over one cache and the continuous batcher (:mod:`t5kit.generate.continuous`)
    runs for each request inside a shared one. Rows that end leave (:attr:`keep` says which stay)."""

    def __init__(self, cfg: GenerationConfig, rows: int, vocab: int, generator: torch.Generator | None,
                 with_scores: bool = False, device: torch.device | str = "cpu"):
        self.cfg, self.generator = cfg, generator
        self.max_new = cfg.max_new_tokens
        self.out = torch.full((rows, self.max_new + 1), cfg.pad_token_id, dtype=torch.long, device=device)
        self.out[:, 0] = cfg.decoder_start_token_id
        self.scores = torch.zeros(rows, dtype=torch.float32, device=device) if with_scores else None
        self.lengths = [self.max_new] * rows
        self.reasons: dict[int, str] = {}
        self.processors = LogitsProcessors(cfg, vocab)
        self.needs_history = self.processors.needs_history
        # prefix_allowed_tokens_fn's batch id: the input of a row (transformers': row // copies)
        self.copies = cfg.num_return_sequences if cfg.prefix_allowed_tokens_fn is not None else 0
        self.rows = torch.arange(rows, device=device)  # rows still decoding, in cache order
        self.tokens = self.out[:, :1]  # the next decoder input, one per row still decoding
        self.step = 0
        self.done = False

    @property
    def num_rows(self) -> int:
        """Rows the next step decodes (the cache rows this state owns)."""
        return self.rows.numel()

    def advance(self, logits: Tensor) -> tuple[Tensor, Tensor, list[tuple[int, str]], Tensor | None]:
        """One step from the float32 logits [rows, vocab] of the rows still decoding (modified in place):
        returns (those rows, their new tokens, [(row, stop reason)] ended now, the positions of the rows
        that go on, or None when all of them do)."""
        cfg, step, rows = self.cfg, self.step, self.rows
        history = self.out[:, : step + 1].index_select(0, rows) if self.needs_history else self.out[:0]
        batch_ids = (rows // self.copies).tolist() if self.copies else None
        scores = self.processors.apply(logits, history, step, in_place=True, batch_ids=batch_ids)
        if cfg.do_sample:
            scores = self.processors.warped(scores)
            next_tokens = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=self.generator)[:, 0]
        else:
            # argmax's rule (the first maximum, NaN first), in a third of its time: 137 us against 411 us for
            # 16 x 32128 float32 scores (55 -> 23 us for one row), 2 threads, Intel Xeon
            next_tokens = scores.max(-1).indices
        if self.scores is not None:
            chosen = torch.log_softmax(scores, dim=-1).gather(1, next_tokens[:, None])[:, 0]
            self.scores.index_add_(0, rows, chosen)
        self.out[rows, step + 1] = next_tokens
        last = step + 1 == self.max_new
        finished: list[tuple[int, str]] = []
        keep = None
        new_rows, new_tokens = rows, next_tokens
        if cfg.eos_token_id is not None:
            done = next_tokens == cfg.eos_token_id
            if bool(done.any()):
                for r in rows[done].tolist():
                    finished.append((r, "eos"))
                    self.lengths[r] = step + 1
                keep = (~done).nonzero()[:, 0]
                rows, next_tokens = rows[keep], next_tokens[keep]
        if last:
            finished.extend((r, "length") for r in rows.tolist())
        self.reasons.update(finished)
        self.rows, self.tokens = rows, next_tokens[:, None]
        self.step += 1
        self.done = last or rows.numel() == 0
        return new_rows, new_tokens, finished, keep

    def output(self) -> GenerationOutput:
        longest = max(self.lengths)
        return GenerationOutput(sequences=self.out[:, : longest + 1],
                                stop_reasons=[self.reasons[i] for i in range(len(self.lengths))],
                                scores=self.scores, num_new_tokens=self.lengths)


def _sample_steps(
    model: Any, input_ids: Tensor, attention_mask: Tensor, cfg: GenerationConfig, with_scores: bool,
    generator: torch.Generator | None, state: dict[str, Any] | None = None,
) -> Iterator[tuple[Tensor, Tensor, list[tuple[int, str]]]]:
    """The greedy/sampling loop: yields (rows, their new tokens, [(row, stop reason) ended this step]).

    ``state`` (if given) receives the :class:`SampleState` under ``"state"``.
    """
    copies = cfg.num_return_sequences
    if copies > 1:
        input_ids = input_ids.repeat_interleave(copies, 0)
        attention_mask = attention_mask.repeat_interleave(copies, 0)
    encoder_hidden = model.encode(input_ids, attention_mask)
    cache = model.new_cache(encoder_hidden, attention_mask, max_length=cfg.max_new_tokens)
    del encoder_hidden
    search = SampleState(cfg, input_ids.shape[0], model.config.vocab_size, generator, with_scores, input_ids.device)
    if state is not None:
        state["state"] = search
    while True:
        tick()  # the thread count follows a neighbour's load
        logits = model.decode_step(search.tokens, cache)[:, -1].float()
        rows, tokens, finished, keep = search.advance(logits)
        if keep is not None and not search.done:
            cache = cache.select(keep)  # finished rows cost nothing from here on
        yield rows, tokens, finished
        if search.done:
            return


def _sample(model: Any, input_ids: Tensor, attention_mask: Tensor, cfg: GenerationConfig, with_scores: bool,
            generator: torch.Generator | None) -> GenerationOutput:
    state: dict[str, Any] = {}
    for _ in _sample_steps(model, input_ids, attention_mask, cfg, with_scores, generator, state):
        pass
    return state["state"].output()


# ---------------------------------------------------------------------------------------------- beam search


def _top_continuations(scores: Tensor, k: int, beams: int) -> tuple[Tensor, Tensor]:
    """``torch.topk(scores, k)`` of [items, beams * vocab] scores, in two stages: the k + 1 best of each beam,
    then the k + 1 best of those. When these k + 1 are all distinct the answer is unique, so it is topk's
    own on the whole row; otherwise (a tie, NaN, -inf) topk runs on the whole row, whose tie order
    transformers has. topk keeps one row to one thread: 4 beams x 32128, 2 threads, Intel Xeon: 358 ->
    146 us for one item, 656 -> 489 us for 4."""
    items, width = scores.shape
    vocab, m = width // beams, k + 1
    if m <= vocab:
        values, index = torch.topk(scores.view(items, beams, vocab), m)
        best, pick = torch.topk(values.view(items, beams * m), m)
        if bool((best[:, 1:] < best[:, :-1]).all()):
            index = index + torch.arange(0, width, vocab, device=scores.device)[:, None]
            return best[:, :k], index.view(items, beams * m).gather(1, pick[:, :k])
    return torch.topk(scores, k)


class BeamState:
    """transformers' (5.x) vectorised beam search, operation for operation, apart from the model and the cache.

    State per input item: ``num_beams`` running hypotheses and ``num_beams`` finished slots. Each step
    takes the top 2*num_beams continuations of all running beams, moves those that end (EOS or length
    limit) and rank in the top num_beams into the finished slots when they beat them, and keeps the best
    num_beams unfinished ones running. An item whose finished slots can no longer change (all slots full
    and, by the early-stopping heuristic, no running beam can beat them) leaves the compute batch.

    ``_beam_search`` runs it over one cache; the continuous batcher runs one per request in a shared cache.
    """

    def __init__(self, cfg: GenerationConfig, items: int, vocab: int, generator: torch.Generator | None,
                 device: torch.device | str = "cpu"):
        self.cfg, self.generator, self.vocab = cfg, generator, vocab
        K = self.K = cfg.num_beams
        self.max_new = cfg.max_new_tokens
        self.max_len = max_len = self.max_new + 1  # decoder start + generated
        eos = cfg.eos_token_id
        self.fill = cfg.pad_token_id if cfg.pad_token_id else (eos if eos is not None else -1)  # transformers'
        self.beams_to_keep = max(2, 1 + (1 if eos is not None else 0)) * K
        self.top_num_beam_mask = torch.cat((torch.ones(K, dtype=torch.bool, device=device),
                                            torch.zeros(self.beams_to_keep - K, dtype=torch.bool, device=device)))
        self.processors = LogitsProcessors(cfg, vocab)
        self.running_sequences = torch.full((items, K, max_len), self.fill, dtype=torch.long, device=device)
        self.running_sequences[:, :, 0] = cfg.decoder_start_token_id
        self.sequences = self.running_sequences.clone()
        self.running_beam_scores = torch.zeros((items, K), dtype=torch.float32, device=device)
        self.running_beam_scores[:, 1:] = -1e9
        self.beam_scores = torch.full((items, K), -1e9, dtype=torch.float32, device=device)
        self.is_sent_finished = torch.zeros((items, K), dtype=torch.bool, device=device)
        self.unsatisfied = torch.ones((items, 1), dtype=torch.bool, device=device)
        self.final_sequences = torch.full((items, K, max_len), self.fill, dtype=torch.long, device=device)
        self.final_scores = torch.full((items, K), -1e9, dtype=torch.float32, device=device)
        self.items = torch.arange(items, device=device)  # input items still in the compute batch
        self.cur_len = 1
        self.done = False

    @property
    def num_rows(self) -> int:
        """Decoder rows the next step decodes: num_beams per item still running."""
        return self.items.numel() * self.K

    def next_input(self) -> Tensor:
        """The decoder input of every running beam [items * beams, 1]."""
        return self.running_sequences.view(-1, self.max_len)[:, self.cur_len - 1: self.cur_len]

    def advance(self, logits: Tensor) -> tuple[Tensor, Tensor | None] | None:
        """One step from the float32 logits [items * beams, vocab] of the running beams. Returns None when
        the search has ended, else the cache reorder (``rows``: new row r continues old row rows[r];
        ``items``: the old item indices kept, None when all are)."""
        cfg, K, max_len, cur_len = self.cfg, self.K, self.max_len, self.cur_len
        device = logits.device
        b = self.items.numel()
        vocab = logits.shape[-1]
        log_probs = torch.log_softmax(logits, dim=-1)
        flat_running = self.running_sequences.view(b * K, max_len)[:, :cur_len]
        batch_ids = self.items.repeat_interleave(K).tolist() if cfg.prefix_allowed_tokens_fn is not None else None
        log_probs = self.processors.apply(log_probs, flat_running, cur_len - 1, in_place=True, batch_ids=batch_ids,
                                          group=K)
        if cfg.do_sample:
            log_probs = self.processors.warped(log_probs, beam_sampling=True)
        log_probs = log_probs.view(b, K, vocab) + self.running_beam_scores[:, :, None]
        log_probs = log_probs.reshape(b, K * vocab)

        # c. top-K continuations
        if cfg.do_sample:
            topk_indices = torch.multinomial(torch.softmax(log_probs, dim=-1), self.beams_to_keep,
                                             generator=self.generator)
            topk_log_probs = torch.gather(log_probs, 1, topk_indices)
            topk_log_probs, order = topk_log_probs.sort(dim=-1, descending=True)
            topk_indices = topk_indices.gather(-1, order)
        else:
            topk_log_probs, topk_indices = _top_continuations(log_probs, self.beams_to_keep, K)
        topk_beam = topk_indices // vocab
        topk_ids = topk_indices % vocab
        topk_running_sequences = torch.take_along_dim(self.running_sequences, topk_beam[:, :, None], dim=1)
        topk_running_sequences[:, :, cur_len] = topk_ids

        # d. which continuations end here
        eos = cfg.eos_token_id
        hits = topk_ids == eos if eos is not None else torch.zeros_like(topk_ids, dtype=torch.bool)
        if cur_len + 1 >= max_len:
            hits = torch.ones_like(hits)

        # e. the best unfinished continuations keep running
        topk_running_log_probs = topk_log_probs + hits.to(torch.float32) * -1.0e9
        next_topk = torch.topk(topk_running_log_probs, k=K)[1]
        self.running_sequences = torch.take_along_dim(topk_running_sequences, next_topk[:, :, None], dim=1)
        self.running_beam_scores = torch.take_along_dim(topk_running_log_probs, next_topk, dim=1)
        source_beam = torch.take_along_dim(topk_beam, next_topk, dim=1)

        # f. finished slots take new endings that beat them
        did_finish = hits & self.top_num_beam_mask[None, :]
        scored = topk_log_probs / cfg.penalty(cur_len)
        full = torch.all(self.is_sent_finished, dim=-1, keepdim=True) & (cfg.early_stopping is True)
        scored = scored + full.to(torch.float32) * -1.0e9
        scored = scored + (~self.unsatisfied).to(torch.float32) * -1.0e9
        scored = scored + (~did_finish) * -1.0e9
        merged_sequences = torch.cat((self.sequences, topk_running_sequences), dim=1)
        merged_scores = torch.cat((self.beam_scores, scored), dim=1)
        merged_finished = torch.cat((self.is_sent_finished, did_finish), dim=1)
        best = torch.topk(merged_scores, k=K)[1]
        self.sequences = torch.take_along_dim(merged_sequences, best[:, :, None], dim=1)
        self.beam_scores = torch.take_along_dim(merged_scores, best, dim=1)
        self.is_sent_finished = torch.take_along_dim(merged_finished, best, dim=1)

        self.cur_len = cur_len = cur_len + 1
        # the early-stopping heuristic (transformers' _check_early_stop_heuristic)
        if cfg.early_stopping == "never" and cfg.length_penalty > 0.0:
            best_length = max_len - 1
        else:
            best_length = cur_len - 1
        best_running = self.running_beam_scores[:, :1] / cfg.penalty(best_length)
        worst_finished = torch.where(self.is_sent_finished, torch.min(self.beam_scores, dim=1, keepdim=True)[0],
                                     -1.0e9)
        self.unsatisfied = self.unsatisfied & torch.any(best_running > worst_finished, dim=-1, keepdim=True)

        all_hit = bool(hits.all())
        alive = self.unsatisfied[:, 0] & ~(torch.all(self.is_sent_finished, dim=-1) & (cfg.early_stopping is True))
        if all_hit or not bool(alive.any()):
            self.final_sequences[self.items] = self.sequences
            self.final_scores[self.items] = self.beam_scores
            self.items = self.items[:0]
            self.done = True
            return None
        if not bool(alive.all()):  # items that can no longer change leave the compute batch
            gone = (~alive).nonzero()[:, 0]
            self.final_sequences[self.items[gone]] = self.sequences[gone]
            self.final_scores[self.items[gone]] = self.beam_scores[gone]
            keep = alive.nonzero()[:, 0]
            self.items = self.items[keep]
            self.running_sequences = self.running_sequences[keep]
            self.running_beam_scores = self.running_beam_scores[keep]
            self.sequences, self.beam_scores = self.sequences[keep], self.beam_scores[keep]
            self.is_sent_finished, self.unsatisfied = self.is_sent_finished[keep], self.unsatisfied[keep]
            source_beam = source_beam[keep]
            row_items, cross_items = keep, keep
        else:
            row_items, cross_items = torch.arange(self.items.numel(), device=device), None
        # row (item i, beam j) continues old row (old item index, source beam)
        rows = (row_items[:, None] * K + source_beam).reshape(-1)
        return rows, cross_items

    def settled(self) -> tuple[Tensor, Tensor]:
        """(items still running, how many leading generated tokens of each are settled): the prefix that every
        running beam and every finished hypothesis of the item share. The answer is one of those hypotheses
        or a continuation of a running beam, so that prefix is the answer's whatever comes next: what a
        stream of beam search can send before the search ends."""
        running = self.running_sequences[:, :, 1: self.cur_len]
        reference = running[:, :1]
        same = (running == reference).all(1)
        finished = self.sequences[:, :, 1: self.cur_len]
        same &= ((finished == reference) | ~self.is_sent_finished[:, :, None]).all(1)
        settled = same.to(torch.int32).cumprod(1).sum(1)
        return self.items, settled

    def output(self, with_scores: bool) -> GenerationOutput:
        cfg = self.cfg
        eos = cfg.eos_token_id
        nrs = cfg.num_return_sequences
        items = self.final_sequences.shape[0]
        chosen = self.final_sequences[:, :nrs].reshape(items * nrs, self.max_len)
        chosen_scores = self.final_scores[:, :nrs].reshape(-1)
        # transformers fills after EOS with EOS when pad is 0; t5kit's layout is pad after EOS.
        lengths: list[int] = []
        reasons: list[str] = []
        body = chosen[:, 1:]
        for row in range(body.shape[0]):
            hit = (body[row] == eos).nonzero() if eos is not None else body[row][:0]
            if hit.numel():
                length = int(hit[0, 0]) + 1
                reasons.append("eos")
            else:
                length = self.max_new
                reasons.append("length")
            body[row, length:] = cfg.pad_token_id
            lengths.append(length)
        longest = max(lengths)
        return GenerationOutput(sequences=chosen[:, : longest + 1].contiguous(), stop_reasons=reasons,
                                scores=chosen_scores if with_scores else None, num_new_tokens=lengths)


class ForcedWordsBeamState:
    """Constrained beam search: every output contains each of ``force_words_ids`` (each word a contiguous run
    of ids; no disjunctions). Post & Vilar's (2018) dynamic beam allocation, as transformers' (4.x)
    ConstrainedBeamSearchScorer does it, but not token-identical to it: transformers 5.x moved that search to
    a hub repository (transformers-community/constrained-beam-search) that cannot be run here.

    Each step, every running beam offers its best 2 * num_beams continuations and also the next token of
    each word it has not yet contained (so a word is always tried, however unlikely). The num_beams that go
    on are chosen round-robin over *banks*, the number of forced tokens a hypothesis has matched, best score
    first within each, so that hypotheses on their way to a word survive beside freer ones. A hypothesis may
    end (EOS, or the length limit) only once it holds every word, and a continuation is allowed only if
    every word still fits in the steps left (so the limit never leaves a beam unable to meet them: when it
    is tight, the next token of the word matched furthest is what is left). Scores are those of beam search: the
    summed log-probabilities of the processed distribution, divided by the length penalty.

    The interface is :class:`BeamState`'s, so ``generate`` and the continuous batcher drive both alike.
    """

    def __init__(self, cfg: GenerationConfig, items: int, vocab: int, generator: torch.Generator | None,
                 device: torch.device | str = "cpu"):
        self.cfg, self.vocab = cfg, vocab
        K = self.K = cfg.num_beams
        self.max_new = cfg.max_new_tokens
        self.max_len = self.max_new + 1
        self.words = tuple(dict.fromkeys(cfg.force_words_ids))
        self.word_tokens = sorted({t for w in self.words for t in w})
        self.processors = LogitsProcessors(cfg, vocab)
        self.running_sequences = torch.full((items, K, self.max_len), cfg.pad_token_id, dtype=torch.long,
                                            device=device)
        self.running_sequences[:, :, 0] = cfg.decoder_start_token_id
        # only beam 0 is live at first (all beams start from the same decoder start)
        self.running_beam_scores = torch.full((items, K), -math.inf, dtype=torch.float32, device=device)
        self.running_beam_scores[:, 0] = 0.0
        start = (0,) * len(self.words)  # per word: how many of its ids the hypothesis's end matches (len: met)
        self.states = [[start] * K for _ in range(items)]
        self.finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(items)]  # (score, ids)
        self.final: dict[int, list[tuple[float, list[int]]]] = {}  # the finished hypotheses of items that left
        self.items = torch.arange(items, device=device)
        self.cur_len = 1
        self.done = False
        self._moves: dict[tuple[tuple[int, ...], int], tuple[int, ...]] = {}

    @property
    def num_rows(self) -> int:
        return self.items.numel() * self.K

    def next_input(self) -> Tensor:
        return self.running_sequences.view(-1, self.max_len)[:, self.cur_len - 1: self.cur_len]

    # -- the words' bookkeeping (a state: per word, the longest suffix of the output that begins it)
    def _move(self, state: tuple[int, ...], token: int) -> tuple[int, ...]:
        key = (state, token)
        if key not in self._moves:
            new = []
            for word, matched in zip(self.words, state):
                if matched == len(word):
                    new.append(matched)
                    continue
                seq = (*word[:matched], token)  # the longest match after token ends with it (KMP's argument)
                new.append(next((q for q in range(len(seq), 0, -1) if seq[-q:] == word[:q]), 0))
            self._moves[key] = tuple(new)
        return self._moves[key]

    def _needed(self, state: tuple[int, ...]) -> int:
        """Tokens that surely meet every word from here: the rest of the unmet word matched furthest, then the
        others whole. Appending that word's next token lowers it by at least one (its match grows by one, or it
        is met), so a beam that can meet the words within the limit always keeps a token that can."""
        unmet = [(len(w), m) for w, m in zip(self.words, state) if m < len(w)]
        return sum(n for n, _ in unmet) - max((m for _, m in unmet), default=0)

    def _fresh_needed(self, state: tuple[int, ...]) -> int:
        """:meth:`_needed` after a token of no word (every partial match lost)."""
        return sum(len(w) for w, m in zip(self.words, state) if m < len(w))

    def advance(self, logits: Tensor) -> tuple[Tensor, Tensor | None] | None:
        cfg, K, cur_len = self.cfg, self.K, self.cur_len
        b, device, eos = self.items.numel(), logits.device, cfg.eos_token_id
        vocab = logits.shape[-1]
        log_probs = torch.log_softmax(logits, dim=-1)
        flat_running = self.running_sequences.view(b * K, self.max_len)[:, :cur_len]
        log_probs = self.processors.apply(log_probs, flat_running, cur_len - 1, in_place=True, group=K)
        left = self.max_new - cur_len  # steps left after this one
        word_tokens = torch.tensor(self.word_tokens, device=device)
        allowed = torch.ones_like(log_probs, dtype=torch.bool)
        offers: list[list[int]] = []  # per row: the next token of each unmet word
        for row in range(b * K):
            state = self.states[row // K][row % K]
            if self._fresh_needed(state) > left:
                allowed[row] = False
            allowed[row, word_tokens] = torch.tensor([self._needed(self._move(state, t)) <= left
                                                      for t in self.word_tokens], device=device)
            if eos is not None:
                allowed[row, eos] = self._needed(state) == 0
            offers.append([w[m] for w, m in zip(self.words, state) if m < len(w)])
        scores = log_probs.masked_fill_(~allowed, -math.inf) + self.running_beam_scores.view(-1, 1)
        top_scores, top_ids = torch.topk(scores, min(2 * K, vocab), dim=-1)
        top_scores, top_ids = top_scores.tolist(), top_ids.tolist()
        final = cur_len + 1 >= self.max_len

        new_sequences = self.running_sequences.clone()
        new_scores = torch.full_like(self.running_beam_scores, -math.inf)
        source_beam = torch.zeros((b, K), dtype=torch.long)
        alive = [True] * b
        for i in range(b):
            seen: dict[tuple[int, int], float] = {}
            for beam in range(K):
                row = i * K + beam
                for s, t in zip(top_scores[row], top_ids[row]):
                    seen[(beam, t)] = s
                for t in offers[row]:
                    seen.setdefault((beam, t), float(scores[row, t]))
            candidates = []  # (score, bank, beam, token, state)
            for (beam, t), s in seen.items():
                if s == -math.inf:
                    continue
                state = self._move(self.states[i][beam], t)
                if t == eos or final:
                    ids = self.running_sequences[i, beam, 1:cur_len].tolist() + [t]
                    self.finished[i].append((s / cfg.penalty(cur_len), ids))
                else:
                    candidates.append((s, sum(state), beam, t, state))
            self.finished[i] = sorted(self.finished[i], key=lambda f: -f[0])[:K]
            chosen = self._allocate(candidates)
            for k, (s, _, beam, t, state) in enumerate(chosen):
                new_sequences[i, k] = self.running_sequences[i, beam]
                new_sequences[i, k, cur_len] = t
                new_scores[i, k] = s
                source_beam[i, k] = beam
                self.states[i][k] = state
            for k in range(len(chosen), K):  # fewer live continuations than beams: dead copies fill the rows
                new_sequences[i, k] = new_sequences[i, 0]
                source_beam[i, k] = source_beam[i, 0]
                self.states[i][k] = self.states[i][0]
            alive[i] = bool(chosen) and not final and not self._settled_item(i, chosen[0][0], cur_len + 1)
        self.running_sequences, self.running_beam_scores = new_sequences, new_scores
        self.cur_len = cur_len + 1
        source_beam = source_beam.to(device)
        for i in range(b):
            if not alive[i]:
                self.final[int(self.items[i])] = self.finished[i]
        if not any(alive):
            self.items = self.items[:0]
            self.finished = []
            self.done = True
            return None
        if not all(alive):
            keep = torch.tensor([i for i in range(b) if alive[i]], device=device)
            self.items = self.items[keep]
            self.running_sequences = self.running_sequences[keep]
            self.running_beam_scores = self.running_beam_scores[keep]
            self.states = [self.states[i] for i in keep.tolist()]
            self.finished = [self.finished[i] for i in keep.tolist()]
            source_beam = source_beam[keep]
            row_items, cross_items = keep, keep
        else:
            row_items, cross_items = torch.arange(b, device=device), None
        rows = (row_items[:, None] * K + source_beam).reshape(-1)
        return rows, cross_items

    def _allocate(self, candidates: list) -> list:
        """num_beams candidates, round-robin over banks (most forced tokens matched first), best score first
        within a bank; returned best score first."""
        banks: dict[int, list] = {}
        for c in sorted(candidates, key=lambda c: -c[0]):
            banks.setdefault(c[1], []).append(c)
        order = [banks[k] for k in sorted(banks, reverse=True)]
        chosen: list = []
        depth = 0
        while len(chosen) < self.K and any(depth < len(bank) for bank in order):
            for bank in order:
                if depth < len(bank) and len(chosen) < self.K:
                    chosen.append(bank[depth])
            depth += 1
        return sorted(chosen, key=lambda c: -c[0])

    def _settled_item(self, i: int, best_running: float, cur_len: int) -> bool:
        """Whether item ``i``'s finished hypotheses can no longer change (BeamState's early-stopping rule)."""
        cfg = self.cfg
        if len(self.finished[i]) < self.K:
            return False
        if cfg.early_stopping is True:
            return True
        if cfg.early_stopping == "never" and cfg.length_penalty > 0.0:
            best_length = self.max_len - 1
        else:
            best_length = cur_len - 1
        return best_running / cfg.penalty(best_length) <= self.finished[i][-1][0]

    def settled(self) -> tuple[Tensor, Tensor]:
        """(items still running, how many leading generated tokens every running beam and finished hypothesis
        of each share): tokens no later step can change."""
        counts = []
        for i in range(self.items.numel()):
            seqs = [s[1: self.cur_len] for s in self.running_sequences[i].tolist()]
            seqs += [ids for _, ids in self.finished[i]]
            n = 0
            while all(len(s) > n and s[n] == seqs[0][n] for s in seqs):
                n += 1
            counts.append(n)
        return self.items, torch.tensor(counts, dtype=torch.long)

    def output(self, with_scores: bool) -> GenerationOutput:
        cfg = self.cfg
        final = dict(self.final)
        for position, item in enumerate(self.items.tolist()):
            final[item] = self.finished[position]
        nrs = cfg.num_return_sequences
        rows: list[list[int]] = []
        scores: list[float] = []
        for item in range(len(final)):
            best = final[item][:nrs]
            if len(best) < nrs:  # every live beam meets the words by the limit: only a ban can kill them all
                raise GenerationError(
                    f"constrained beam search found {len(best)} hypotheses holding every forced word for input "
                    f"{item}, fewer than num_return_sequences={nrs}: another option (no_repeat_ngram_size, "
                    "bad_words_ids, repetition_penalty ...) forbids what they need; relax it or force fewer words")
            for score, ids in best:
                rows.append(ids)
                scores.append(score)
        longest = max(len(r) for r in rows)
        device = self.running_sequences.device
        sequences = torch.full((len(rows), longest + 1), cfg.pad_token_id, dtype=torch.long, device=device)
        sequences[:, 0] = cfg.decoder_start_token_id
        for r, ids in enumerate(rows):
            sequences[r, 1: 1 + len(ids)] = torch.tensor(ids, dtype=torch.long)
        reasons = ["eos" if ids and ids[-1] == cfg.eos_token_id else "length" for ids in rows]
        return GenerationOutput(sequences=sequences, stop_reasons=reasons,
                                scores=torch.tensor(scores, device=device) if with_scores else None,
                                num_new_tokens=[len(ids) for ids in rows])


def beam_state(cfg: GenerationConfig, items: int, vocab: int, generator: torch.Generator | None,
               device: torch.device | str = "cpu") -> BeamState | ForcedWordsBeamState:
    """The beam-search state for ``cfg``: constrained (``force_words_ids``) or transformers' own."""
    if cfg.force_words_ids:
        return ForcedWordsBeamState(cfg, items, vocab, generator, device)
    return BeamState(cfg, items, vocab, generator, device)


def _beam_search(model: Any, input_ids: Tensor, attention_mask: Tensor, cfg: GenerationConfig, with_scores: bool,
                 generator: torch.Generator | None) -> GenerationOutput:
    """:class:`BeamState` over one cache; items that can no longer change leave the compute batch, and a
    beam reorder moves only the self-attention rows that change."""
    K = cfg.num_beams
    search = beam_state(cfg, input_ids.shape[0], model.config.vocab_size, generator, input_ids.device)
    encoder_hidden = model.encode(input_ids, attention_mask)
    cache = model.new_cache(encoder_hidden, attention_mask, max_length=cfg.max_new_tokens)
    del encoder_hidden
    # The first step: every beam of an item is the same decoder start, so decode one row per item and
    # then give each beam its own copy of the cache.
    logits = model.decode_step(search.running_sequences[:, 0, :1], cache)[:, -1].float()
    logits = logits.repeat_interleave(K, 0)
    cache = cache.expand_beams(K)
    while True:
        tick()  # the thread count follows a neighbour's load
        reorder = search.advance(logits)
        if reorder is None:
            break
        rows, cross_items = reorder
        cache = cache.reorder_beams(rows, cross_items)  # the cross rows move only when items leave
        logits = model.decode_step(search.next_input(), cache)[:, -1].float()
    return search.output(with_scores)
