"""Scoring: the log-likelihood of given targets, and rank classification over candidate targets.

:func:`score` is teacher forcing without a loss: for each target token the log-probability the model gives
it after the source and the target tokens before it (``log_softmax`` of the logits in float32, as
``T5Model.loss`` computes it), summed and averaged per row. :func:`rank` scores several candidate targets
per source and picks the best: the T5 paper's reading of classification as comparing the likelihood of the
label strings, a monoT5 reranker's "true"/"false", T5X's ``score`` mode.

Like search (:mod:`t5kit.generate.search`) this module drives the model's incremental interface (the
:class:`~t5kit.generate.search.DecodingModel` protocol: ``encode``, ``new_cache``, ``decode_step``) and
imports nothing of ``t5kit.model``. The whole target goes through ``decode_step`` at once on a fresh cache:
the same causal pass as the model's teacher-forced ``forward``, but with the cross-attention keys/values
computed once per source (``new_cache``). That is what makes ranking cheap: one encoder pass per source,
one cross-attention projection per source, and the candidates of a source decode as the "beams" of one cache
row (``DecoderCache.expand_beams``), all of them queries of one attention over that source's encoder
output, in one teacher-forced decoder pass.

Targets are token ids as the caller wants them scored, normally ending with EOS (the pipeline appends it, as
training does): without it "yes" would outscore "yes please" just by being a prefix of it.

Memory: a pass holds its logits ([rows, target length, vocab] in float32, plus the log-softmax), so passes
are cut to at most ``LOGITS_BUDGET`` logits (128 MiB of float32): 130 candidate rows of 8 tokens over
T5's 32,128-token vocabulary, or 2 rows of 512.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from t5kit.generate.options import GenerationError
from t5kit.generate.search import _prepare_inputs
from t5kit.ids import LABEL_PAD_ID
from t5kit.threads import decoding_threads, tick

LOGITS_BUDGET = 2**25  # logits (elements) one decoder pass may hold; see the module docstring
NORMALIZE = ("sum", "mean")  # the statistics rank() may rank candidates by


class ScoreError(GenerationError):
    """Targets or candidates that cannot be scored (empty, out of the vocabulary, of the wrong shape)."""


@dataclass
class ScoreOutput:
    """Per-token and per-row log-likelihoods of a batch of targets.

    ``token_logprobs`` [batch, target_length]: log p(target token | source, earlier target tokens), 0.0
    where a row is padded; ``sum`` [batch] and ``mean`` [batch] (``sum / lengths``) over each row's target
    tokens; ``lengths`` [batch] (int64) the number of target tokens of each row. float32 (float64 for a
    float64 model), whatever the model's precision.
    """

    token_logprobs: Tensor
    sum: Tensor
    mean: Tensor
    lengths: Tensor


@dataclass
class RankOutput:
    """The candidates of one source, scored. ``sums`` / ``means`` [candidates]: each candidate's summed and
    token-mean log-likelihood; ``token_logprobs``: one [length] tensor per candidate; ``lengths``: its token
    counts. ``normalize`` ("sum" or "mean") is the statistic candidates are ranked by: ``best`` is the index
    of its largest value (the first one on a tie) and ``probs`` [candidates] its softmax over the candidates
    (with "sum": each candidate's probability renormalised over the candidate set)."""

    sums: Tensor
    means: Tensor
    token_logprobs: list[Tensor]
    lengths: list[int]
    normalize: str
    best: int
    probs: Tensor

    @property
    def scores(self) -> Tensor:
        """The ranked statistic: ``sums`` or ``means``."""
        return self.sums if self.normalize == "sum" else self.means


# ---------------------------------------------------------------------------------------------- inputs


def _prepare_labels(model: Any, labels: Any, labels_mask: Any) -> tuple[Tensor, Tensor]:
    """(labels [batch, length] int64 on the model's device, padding set to 0; mask [batch, length] bool)."""
    if labels is None:
        raise ScoreError("score() needs labels: the target token ids to score, [batch, length]")
    if not isinstance(labels, Tensor):
        try:
            labels = torch.as_tensor(labels, dtype=torch.long)
        except (TypeError, ValueError) as e:
            raise ScoreError(f"labels must be a [batch, length] tensor of token ids (pad rows with "
                             f"{LABEL_PAD_ID} to one length): {e}") from None
    if labels.dim() == 1:
        labels = labels[None]
    if labels.dim() != 2 or labels.shape[0] == 0 or labels.shape[1] == 0:
        raise ScoreError(f"labels must have shape [batch, length] with at least one token, got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ScoreError(f"labels must hold integer token ids, got dtype {labels.dtype}")
    labels = labels.to(device=model.device, dtype=torch.long)
    if labels_mask is None:
        mask = labels != LABEL_PAD_ID
    else:
        mask = torch.as_tensor(labels_mask, device=model.device)
        if mask.shape != labels.shape:
            raise ScoreError(f"labels_mask shape {tuple(mask.shape)} differs from labels shape {tuple(labels.shape)}")
        mask = mask.bool()
    # The decoder reads target token t-1 at position t, so the tokens must come first and the padding after.
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ScoreError("each row of labels must hold its target tokens first and its padding after them "
                         f"(right padding, {LABEL_PAD_ID} or labels_mask 0)")
    empty = (~mask.any(1)).nonzero()[:, 0].tolist()
    if empty:
        raise ScoreError(f"rows {empty} of labels hold no target token: every target needs at least one (EOS)")
    labels = labels.masked_fill(~mask, 0)
    vocab = model.config.vocab_size
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= vocab:
        raise ScoreError(f"labels hold ids outside the vocabulary [0, {vocab}): min {low}, max {high} (padding is "
                         f"{LABEL_PAD_ID}); were the targets encoded with this model's tokenizer?")
    return labels, mask


def _check_candidates(candidates: Any, batch: int, vocab: int) -> list[list[list[int]]]:
    if not isinstance(candidates, Sequence) or len(candidates) != batch:
        got = len(candidates) if isinstance(candidates, Sequence) else type(candidates).__name__
        raise ScoreError(f"candidates must hold one list of candidates per input: {batch} inputs, got {got}")
    checked = []
    for i, item in enumerate(candidates):
        if not isinstance(item, Sequence) or isinstance(item, (str, bytes)) or not item:
            raise ScoreError(f"input {i} has no candidates: give each input a non-empty list of token id lists")
        rows = []
        for j, ids in enumerate(item):
            if isinstance(ids, Tensor):
                ids = ids.tolist()
            if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence) or not ids:
                raise ScoreError(f"candidate {j} of input {i} is not a non-empty list of token ids: {ids!r:.60}; "
                                 "encode candidate strings with the tokenizer (EOS appended) first")
            if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
                raise ScoreError(f"candidate {j} of input {i} holds ids outside the vocabulary [0, {vocab}): "
                                 f"{list(ids)!r:.80}")
            rows.append(list(ids))
        checked.append(rows)
    return checked


def check_normalize(normalize: Any) -> str:
    """``normalize`` itself when it is one of :data:`NORMALIZE`, else :class:`ScoreError` (the one check)."""
    if normalize not in NORMALIZE:
        raise ScoreError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}: 'sum' ranks by the "
                         "log-likelihood of the whole candidate, 'mean' by its per-token mean (longer "
                         "candidates are not penalised for their length)")
    return normalize


# ---------------------------------------------------------------------------------------------- passes


def _target_logprobs(model: Any, cache: Any, labels: Tensor, mask: Tensor) -> Tensor:
    """Teacher-forced log-probabilities [rows, length] of ``labels`` on a fresh ``cache`` of ``rows`` decoder
    rows; 0.0 where ``mask`` is False."""
    decoder_input = torch.empty_like(labels)
    decoder_input[:, 0] = model.config.decoder_start_token_id
    # shifted right; the pad id where the previous position is padding (the logits there are discarded)
    decoder_input[:, 1:] = labels[:, :-1].masked_fill(~mask[:, :-1], model.config.pad_token_id)
    logits = model.decode_step(decoder_input, cache)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, labels[..., None])[..., 0]
    return logprobs.masked_fill(~mask, 0.0)


def _rows_per_pass(length: int, vocab: int, budget: int) -> int:
    return max(1, budget // (length * vocab))


def score(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    labels: Any,
    labels_mask: Any = None,
    *,
    encoder_hidden_states: Tensor | None = None,
    logits_budget: int = LOGITS_BUDGET,
) -> ScoreOutput:
    """Log-likelihood of ``labels`` [batch, target_length] given ``input_ids`` [batch, source_length].

    ``labels``: token ids, padded on the right with -100 (or any value where ``labels_mask`` is 0); each row
    normally ends with EOS. ``attention_mask``: the sources' padding (None: none). ``encoder_hidden_states``
    (with ``attention_mask``) replaces ``input_ids`` when the caller already ran the encoder. Runs under
    ``torch.inference_mode``, so every precision copy of ``t5kit.kernels.inference.precision`` scores.
    """
    labels, mask = _prepare_labels(model, labels, labels_mask)
    batch, length = labels.shape
    with torch.inference_mode(), decoding_threads():
        if encoder_hidden_states is None:
            input_ids, attention_mask = _prepare_inputs(model, input_ids, attention_mask)
            encoder_hidden_states = model.encode(input_ids, attention_mask)
        else:
            if encoder_hidden_states.dim() != 3:
                raise ScoreError("encoder_hidden_states must have shape [batch, source_length, d_model], got "
                                 f"{tuple(encoder_hidden_states.shape)}")
            if attention_mask is None:
                attention_mask = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.long, device=model.device)
            attention_mask = torch.as_tensor(attention_mask, device=model.device)
            if attention_mask.shape != encoder_hidden_states.shape[:2]:
                raise ScoreError(f"attention_mask shape {tuple(attention_mask.shape)} differs from the encoder "
                                 f"states' [batch, source_length] {tuple(encoder_hidden_states.shape[:2])}")
        if encoder_hidden_states.shape[0] != batch:
            raise ScoreError(f"{encoder_hidden_states.shape[0]} sources but {batch} rows of labels: give one "
                             "target per source")
        out = torch.empty(labels.shape, dtype=torch.float32, device=model.device)
        step = _rows_per_pass(length, model.config.vocab_size, logits_budget)
        for start in range(0, batch, step):
            tick()  # the thread count follows a neighbour's load
            rows = slice(start, start + step)
            end = int(mask[rows].sum(1).max())  # this pass's longest target
            cache = model.new_cache(encoder_hidden_states[rows], attention_mask[rows], max_length=end)
            part = _target_logprobs(model, cache, labels[rows, :end], mask[rows, :end])
            if part.dtype != out.dtype:
                out = out.to(part.dtype)
            out[rows, :end] = part
            out[rows, end:] = 0.0
    lengths = mask.sum(1)
    total = out.sum(1)
    return ScoreOutput(token_logprobs=out, sum=total, mean=total / lengths, lengths=lengths)


def rank(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    candidates: Sequence[Sequence[Sequence[int]]],
    *,
    normalize: str = "sum",
    logits_budget: int = LOGITS_BUDGET,
) -> list[RankOutput]:
    """Score every candidate (a list of token ids, normally ending with EOS) of every source and rank them.

    ``candidates[i]`` holds the candidates of source ``i`` (any number, any lengths; sources may have
    different counts). The encoder runs once over the sources; each source's cross-attention keys/values are
    computed once and shared by its candidates, which decode in one teacher-forced pass (several sources
    with the same number of candidates share a pass, up to ``logits_budget`` logits). Returns one
    :class:`RankOutput` per source, ranked by ``normalize`` ("sum" or "mean").
    """
    normalize = check_normalize(normalize)
    vocab = model.config.vocab_size
    input_ids, attention_mask = _prepare_inputs(model, input_ids, attention_mask)
    checked = _check_candidates(candidates, input_ids.shape[0], vocab)
    logprobs: list[list[Any]] = [[None] * len(item) for item in checked]
    with torch.inference_mode(), decoding_threads():
        encoder_hidden = model.encode(input_ids, attention_mask)
        by_count: dict[int, list[int]] = {}
        for i, item in enumerate(checked):
            by_count.setdefault(len(item), []).append(i)
        for count, items in by_count.items():
            longest = max(len(ids) for i in items for ids in checked[i])
            per_item = count * longest * vocab
            if per_item <= logits_budget:  # whole sources per pass, all their candidates as its beams
                step = max(1, logits_budget // per_item)
                for start in range(0, len(items), step):
                    chunk = items[start: start + step]
                    base = _base_cache(model, encoder_hidden, attention_mask, checked, chunk)
                    _rank_pass(model, base, checked, chunk, 0, count, logprobs)
            else:  # one source's candidates over several passes, sharing its cross-attention keys/values
                for i in items:
                    step = _rows_per_pass(max(len(ids) for ids in checked[i]), vocab, logits_budget)
                    base = _base_cache(model, encoder_hidden, attention_mask, checked, [i])
                    for start in range(0, count, step):
                        _rank_pass(model, base, checked, [i], start, min(step, count - start), logprobs)
    results = []
    for item in logprobs:
        sums = torch.stack([t.sum() for t in item])
        lengths = [t.numel() for t in item]
        means = sums / torch.tensor(lengths, dtype=sums.dtype, device=sums.device)
        ranked = sums if normalize == "sum" else means
        results.append(RankOutput(sums=sums, means=means, token_logprobs=item, lengths=lengths, normalize=normalize,
                                  best=int(ranked.argmax()), probs=torch.softmax(ranked, dim=0)))
    return results


def _base_cache(model: Any, encoder_hidden: Tensor, attention_mask: Tensor, candidates: list[list[list[int]]],
                items: list[int]) -> Any:
    """A fresh cache of one row per item (its cross-attention keys/values, computed here once), long enough
    for every candidate of those items; passes expand it to their candidate rows (``expand_beams``), which
    leaves it fresh for the next pass."""
    index = torch.tensor(items, device=encoder_hidden.device)
    mask = attention_mask.index_select(0, index)
    # the sources cut to the last position any of these items attends to (a short source among long ones
    # then costs its own length; the padding beyond it is masked anyway)
    seen = mask.any(0).nonzero()
    width = int(seen.max()) + 1 if seen.numel() else mask.shape[1]
    longest = max(len(ids) for i in items for ids in candidates[i])
    return model.new_cache(encoder_hidden.index_select(0, index)[:, :width], mask[:, :width], max_length=longest)


def _rank_pass(model: Any, base: Any, candidates: list[list[list[int]]], items: list[int], first: int, beams: int,
               out: list[list[Any]]) -> None:
    """Candidates ``first .. first + beams`` of each of ``items`` (``base``'s rows) in one teacher-forced pass
    over ``beams`` decoder rows per item; writes their log-probabilities into ``out``."""
    tick()  # the thread count follows a neighbour's load
    rows = [candidates[i][first + j] for i in items for j in range(beams)]
    length = max(len(ids) for ids in rows)
    labels = torch.zeros((len(rows), length), dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for r, ids in enumerate(rows):
        labels[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = True
    labels, mask = labels.to(model.device), mask.to(model.device)
    logprobs = _target_logprobs(model, base.expand_beams(beams), labels, mask)
    for r, ids in enumerate(rows):
        out[items[r // beams]][first + r % beams] = logprobs[r, : len(ids)].clone()


__all__ = ["LOGITS_BUDGET", "NORMALIZE", "RankOutput", "ScoreError", "ScoreOutput", "check_normalize", "rank", "score"]
