"""Logits processors: what turns a step's logits into the scores a token is chosen from.

They run in `transformers`' order with its arithmetic (repetition penalty, n-gram ban, bad words, minimum
length, the prefix-allowed-tokens function, suppressed tokens; then, when sampling, temperature, top-k and
top-p), so that decoding stays token-identical to its ``generate`` for the options both have.

t5kit's own constraints run after those, last, so that what they promise holds whatever else is set:
``allowed_sequences`` (a trie: only tokens that continue some sequence) and then ``decoder_prefix`` (the
prefix's token at each of the first steps). A constraint whose allowed tokens were all made -inf by an
earlier processor gives them 0 instead (transformers' rule for ``prefix_allowed_tokens_fn``: the constraint
holds, and a row is never left without a token to pick).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from t5kit.generate.options import GenerationConfig, GenerationError


def ban_repeated_ngrams(scores: Tensor, history: Tensor, n: int, in_place: bool = False) -> Tensor:
    """Forbid any token that would complete an n-gram already present in ``history`` (as transformers);
    ``in_place`` writes into ``scores``."""
    length = history.shape[1]
    if length < n:
        return scores
    prefix = history[:, length + 1 - n:]
    windows = history.unfold(1, n, 1)
    matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
    vocab = scores.shape[-1]
    banned = scores.new_zeros((scores.shape[0], vocab + 1), dtype=torch.bool)
    banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
    return (scores.masked_fill_ if in_place else scores.masked_fill)(banned[:, :vocab], -math.inf)


def restrict(scores: Tensor, allowed: Tensor, group: int = 1) -> Tensor:
    """Only the ``allowed`` [rows, vocab] tokens keep their score (in place); where every allowed token of
    every row of a group of ``group`` consecutive rows (an item's beams) is already -inf, those tokens get 0
    (transformers' PrefixConstrainedLogitsProcessor, with its per-item grouping)."""
    scores.masked_fill_(~allowed, -math.inf)
    stuck = scores.amax(-1).isneginf()
    if bool(stuck.any()):
        stuck = stuck.view(-1, group).all(-1).repeat_interleave(group)
        if bool(stuck.any()):
            scores[stuck] = torch.zeros_like(scores[stuck]).masked_fill_(~allowed[stuck], -math.inf)
    return scores


class BadWords:
    """transformers' NoBadWordsLogitsProcessor: a one-token word is never generated; the last id of a longer
    one is banned right after its other ids (matched against the decoder ids so far, decoder start included)."""

    def __init__(self, words: Sequence[Sequence[int]]):
        self.single = torch.tensor(sorted({w[0] for w in words if len(w) == 1}), dtype=torch.long)
        by_length: dict[int, list[Sequence[int]]] = {}
        for w in dict.fromkeys(tuple(w) for w in words if len(w) > 1):
            by_length.setdefault(len(w) - 1, []).append(w)
        self.multi = [(torch.tensor([w[:-1] for w in group]), torch.tensor([w[-1] for w in group]))
                      for group in by_length.values()]

    def __call__(self, scores: Tensor, history: Tensor) -> Tensor:
        """Ban in place in ``scores`` [rows, vocab] given ``history`` [rows, length]."""
        if self.single.numel():
            self.single = self.single.to(scores.device)
            scores.index_fill_(1, self.single, -math.inf)
        for i, (prefixes, last) in enumerate(self.multi):
            n = prefixes.shape[1]
            if n > history.shape[1]:
                continue
            if prefixes.device != scores.device:
                self.multi[i] = prefixes, last = prefixes.to(scores.device), last.to(scores.device)
            rows, words = (history[:, None, -n:] == prefixes).all(-1).nonzero(as_tuple=True)
            if rows.numel():
                scores[rows, last[words]] = -math.inf
        return scores


class AllowedSequences:
    """The trie of ``allowed_sequences`` (each ending in EOS): a row may continue only along some sequence
    it has followed so far; a row off the trie (a dead beam that search kept with a -inf score) may end."""

    def __init__(self, sequences: Sequence[Sequence[int]], eos: int):
        children: dict[tuple[int, ...], set[int]] = {}
        for seq in sequences:
            for i in range(len(seq)):
                children.setdefault(tuple(seq[:i]), set()).add(seq[i])
        self.next = {prefix: sorted(ids) for prefix, ids in children.items()}
        self.eos = eos

    def allowed(self, scores: Tensor, history: Tensor) -> Tensor:
        """The [rows, vocab] mask of tokens that continue a sequence (``history`` starts with decoder start)."""
        mask = torch.zeros_like(scores, dtype=torch.bool)
        rows, cols = [], []
        for row, ids in enumerate(history[:, 1:].tolist()):
            tokens = self.next.get(tuple(ids), (self.eos,))
            rows.extend([row] * len(tokens))
            cols.extend(tokens)
        mask[torch.tensor(rows, device=scores.device), torch.tensor(cols, device=scores.device)] = True
        return mask


def prefix_allowed(scores: Tensor, history: Tensor, fn: object, batch_ids: Sequence[int]) -> Tensor:
    """The [rows, vocab] mask of ``fn(batch_id, history[row])`` (transformers' prefix_allowed_tokens_fn)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    vocab = scores.shape[-1]
    for row, batch_id in enumerate(batch_ids):
        ids = fn(batch_id, history[row])  # type: ignore[operator]
        if len(ids) == 0:
            raise GenerationError(f"prefix_allowed_tokens_fn returned no token for batch id {batch_id} after "
                                  f"{history[row].tolist()}: the constraint cannot be met; return at least one id "
                                  "(the EOS id to end)")
        ids = torch.as_tensor(ids, dtype=torch.long, device=scores.device)
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise GenerationError(f"prefix_allowed_tokens_fn returned ids outside the vocabulary [0, {vocab}) for "
                                  f"batch id {batch_id}: {ids.tolist()}")
        mask[row, ids] = True
    return mask


def force_token(scores: Tensor, token: int) -> Tensor:
    """Only ``token`` keeps its score, in place (0 where it was -inf, so that it is still picked)."""
    kept = scores[:, token].clone()
    scores.fill_(-math.inf)
    scores[:, token] = kept.masked_fill_(kept.isneginf(), 0.0)
    return scores


class LogitsProcessors:
    """The logits processors of a configuration, applied in transformers' order, then t5kit's constraints.

    ``history`` holds the decoder ids so far, decoder start included (the repetition penalty, the n-gram
    ban, bad words and the constraints see it, as they do in transformers). ``batch_ids`` (the input each
    row decodes) is what ``prefix_allowed_tokens_fn`` receives; ``group`` is the rows of one input that
    share its fallback (the beams of an item; 1 for greedy and sampled rows).
    """

    def __init__(self, cfg: GenerationConfig, vocab: int):
        self.cfg = cfg
        self.suppress = torch.tensor(sorted({t for t in cfg.suppress_tokens if 0 <= t < vocab}), dtype=torch.long)
        self.eos = torch.tensor([cfg.eos_token_id if cfg.eos_token_id is not None else 0])
        self.bad_words = BadWords(cfg.bad_words_ids) if cfg.bad_words_ids else None
        self.trie = (AllowedSequences(cfg.choice_sequences(), cfg.eos_token_id)  # type: ignore[arg-type]
                     if cfg.allowed_sequences else None)
        self.prefix_fn = cfg.prefix_allowed_tokens_fn
        self.constrained = (self.bad_words is not None or self.trie is not None or self.prefix_fn is not None
                            or bool(cfg.decoder_prefix))
        self.active = (cfg.repetition_penalty != 1.0 or cfg.no_repeat_ngram_size > 0 or cfg.min_new_tokens > 0
                       or self.suppress.numel() > 0 or self.constrained)
        # what search must keep of the decoder ids so far (the whole prefix) for the processors to see
        self.needs_history = (cfg.repetition_penalty != 1.0 or cfg.no_repeat_ngram_size > 0 or self.trie is not None
                              or self.prefix_fn is not None or any(len(w) > 1 for w in cfg.bad_words_ids))
        self.warp = cfg.do_sample and (cfg.temperature != 1.0 or cfg.top_k is not None
                                       or (cfg.top_p is not None and cfg.top_p < 1.0))

    def __call__(self, scores: Tensor, history: Tensor, step: int, in_place: bool = False,
                 batch_ids: Sequence[int] | None = None, group: int = 1) -> Tensor:
        cfg = self.cfg
        if self.constrained and not in_place:
            scores, in_place = scores.clone(), True
        if cfg.repetition_penalty != 1.0:
            picked = scores.gather(1, history)
            picked = torch.where(picked < 0, picked * cfg.repetition_penalty, picked / cfg.repetition_penalty)
            scores = (scores.scatter_ if in_place else scores.scatter)(1, history, picked)
        if cfg.no_repeat_ngram_size > 0:
            scores = ban_repeated_ngrams(scores, history, cfg.no_repeat_ngram_size, in_place)
        if self.bad_words is not None:
            scores = self.bad_words(scores, history)
        fill = scores.index_fill_ if in_place else scores.index_fill
        if step < cfg.min_new_tokens and cfg.eos_token_id is not None:
            scores = fill(1, self.eos, -math.inf)
            fill = scores.index_fill_
        if self.prefix_fn is not None:
            ids = batch_ids if batch_ids is not None else range(scores.shape[0])
            scores = restrict(scores, prefix_allowed(scores, history, self.prefix_fn, ids), group)
        if self.suppress.numel():
            scores = fill(1, self.suppress, -math.inf)
        if self.trie is not None:
            scores = restrict(scores, self.trie.allowed(scores, history), group)
        if step < len(cfg.decoder_prefix):
            scores = force_token(scores, cfg.decoder_prefix[step])
        return scores

    def warped(self, scores: Tensor, beam_sampling: bool = False) -> Tensor:
        """Temperature, top-k and top-p (sampling only); beam sampling keeps at least 2 tokens as transformers."""
        cfg = self.cfg
        keep = 2 if beam_sampling else 1
        if cfg.temperature != 1.0:
            scores = scores / cfg.temperature
        if cfg.top_k is not None:
            k = min(max(cfg.top_k, keep), scores.shape[-1])
            scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], -math.inf)
        if cfg.top_p is not None and cfg.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=False)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            remove = cumulative <= (1 - cfg.top_p)
            remove[..., -keep:] = False
            scores = scores.masked_fill(remove.scatter(1, order, remove), -math.inf)
        return scores

    def apply(self, scores: Tensor, history: Tensor, step: int, in_place: bool = False,
              batch_ids: Sequence[int] | None = None, group: int = 1) -> Tensor:
        """Processors on ``scores``: modified in place only with ``in_place`` (search owns the step's logits,
        and a copy of them costs more than the suppression itself: 104 us for 16 x 32128 float32 logits
        against ~2 us to fill one column in place, 2 threads, Intel Xeon)."""
        return self(scores, history, step, in_place, batch_ids, group) if self.active else scores


