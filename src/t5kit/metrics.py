"""Evaluation metrics computed the standard way, so t5kit numbers can be compared with published ones.

BLEU and chrF come from ``sacrebleu`` (corpus-level, default settings, with the signature string that
says exactly how the score was computed); ROUGE from Google's ``rouge-score`` with Porter stemming, as
in the T5 paper; SQuAD exact match and F1 follow the official SQuAD evaluation script; accuracy and
sequence exact match are plain string comparisons for label and generation tasks.

Every score is a percentage in [0, 100]. References are either one string per prediction or a list of
strings per prediction (several acceptable answers); with several, each metric takes the best match
(sacrebleu uses all references jointly, as multi-reference BLEU is defined).

``sacrebleu`` and ``rouge-score`` are optional: they are imported only when BLEU, chrF or ROUGE is
asked for, with an error that names ``pip install 't5kit[metrics]'`` when they are missing.
"""

from __future__ import annotations

import collections
import importlib
import re
import string
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from t5kit.errors import ConfigError, DataError, T5kitError, closest_names

__all__ = [
    "METRICS",
    "ROUGE_TYPES",
    "SignedScore",
    "accuracy",
    "bleu",
    "chrf",
    "compute_metrics",
    "normalize_answer",
    "rouge",
    "sequence_exact_match",
    "squad_exact_match",
    "squad_f1",
]

ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL", "rougeLsum")

References = Sequence[str] | Sequence[Sequence[str]]


class SignedScore(NamedTuple):
    """A sacrebleu score and its signature (e.g. ``nrefs:1|case:mixed|eff:no|tok:13a|...``).

    The signature belongs next to the number in any report: BLEU values are only comparable when the
    signatures are equal.
    """

    score: float
    signature: str


# --------------------------------------------------------------------------------------------------
# input checks


def _check_inputs(predictions: Sequence[str], references: References) -> list[list[str]]:
    """Validate the inputs and return the references as one list of strings per prediction.

    Done once here so that every metric fails with the same readable message instead of an
    IndexError or ZeroDivisionError deep inside a library.
    """
    if isinstance(predictions, str) or isinstance(references, str):
        raise DataError("predictions and references must be lists of strings, not a single string")
    if len(predictions) == 0:
        raise DataError("no predictions to score: predictions and references are empty")
    if len(predictions) != len(references):
        raise DataError(
            f"{len(predictions)} predictions but {len(references)} references: "
            "there must be exactly one reference (or one list of references) per prediction"
        )
    for i, pred in enumerate(predictions):
        if not isinstance(pred, str):
            raise DataError(f"prediction {i} is {type(pred).__name__}, expected a string")
    refs: list[list[str]] = []
    for i, ref in enumerate(references):
        group = [ref] if isinstance(ref, str) else list(ref)
        if not group:
            raise DataError(f"reference {i} is an empty list: every prediction needs at least one reference")
        for r in group:
            if not isinstance(r, str):
                raise DataError(f"reference {i} contains {type(r).__name__}, expected strings")
        refs.append(group)
    return refs


def _require(module: str, metric: str) -> Any:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise T5kitError(
            f"the {metric} metric needs the '{module}' package, which is not installed; "
            "install it with: pip install 't5kit[metrics]'"
        ) from exc


# --------------------------------------------------------------------------------------------------
# sacrebleu: BLEU and chrF


def _reference_streams(refs: list[list[str]]) -> list[list[str | None]]:
    """Transpose per-prediction references into sacrebleu's reference streams.

    sacrebleu wants ``streams[k][i]`` = k-th reference of sentence i. Predictions with fewer
    references are padded with ``None``, which sacrebleu treats as "no reference here" and reports
    as ``nrefs:var`` in the signature (``""`` would score the same but claim a fixed ``nrefs``).
    """
    n_streams = max(len(group) for group in refs)
    return [[group[k] if k < len(group) else None for group in refs] for k in range(n_streams)]


def bleu(predictions: Sequence[str], references: References) -> SignedScore:
    """Corpus BLEU with sacrebleu's defaults (13a tokenisation, exponential smoothing, mixed case).

    Corpus-level, not an average of sentence BLEU: that is how BLEU is defined and reported (WMT,
    the T5 paper). Input is detokenised text, exactly as the model produces it.
    """
    refs = _check_inputs(predictions, references)
    _require("sacrebleu", "BLEU")
    from sacrebleu.metrics import BLEU  # optional: metrics

    metric = BLEU()
    result = metric.corpus_score(list(predictions), _reference_streams(refs))
    return SignedScore(float(result.score), str(metric.get_signature()))


def chrf(predictions: Sequence[str], references: References) -> SignedScore:
    """Corpus chrF2 with sacrebleu's defaults (character 6-grams, beta 2, no word n-grams).

    Character-level, so it rewards partially correct words: more informative than BLEU for
    morphologically rich target languages and for short outputs.
    """
    refs = _check_inputs(predictions, references)
    _require("sacrebleu", "chrF")
    from sacrebleu.metrics import CHRF  # optional: metrics

    metric = CHRF()
    result = metric.corpus_score(list(predictions), _reference_streams(refs))
    return SignedScore(float(result.score), str(metric.get_signature()))


# --------------------------------------------------------------------------------------------------
# rouge-score: ROUGE-1/2/L/Lsum

# A sentence ends at . ! or ? followed by whitespace (this also covers the " . " of tokenised
# CNN/DailyMail text that T5's own preprocessing splits on).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _lsum_lines(text: str) -> str:
    """One sentence per line, the form rouge-score's ROUGE-Lsum expects.

    rouge-score splits summaries for Lsum on ``"\\n"`` only. Text that already has newlines is taken
    to be split already and is left alone; otherwise it is split after sentence-ending punctuation.
    """
    if "\n" in text:
        return text
    return "\n".join(_SENTENCE_END.split(text.strip()))


def rouge(
    predictions: Sequence[str],
    references: References,
    rouge_types: Sequence[str] = ROUGE_TYPES,
    *,
    split_sentences: bool = True,
) -> dict[str, float]:
    """ROUGE F-measures x100, averaged over examples, with Porter stemming (the T5 paper's setup).

    rouge-score lower-cases, keeps only ``[a-z0-9]`` tokens and stems tokens longer than 3 characters.
    ROUGE-Lsum is the summary-level LCS over sentences, and rouge-score finds sentences by splitting
    on newlines. With ``split_sentences`` (default), a text without newlines is first put one
    sentence per line (split after ``.``, ``!``, ``?`` followed by whitespace); text with newlines is
    used as is. With ``split_sentences=False`` a text without newlines is a single sentence and Lsum
    equals ROUGE-L. Only Lsum is affected: the other types ignore line breaks.

    With several references an example scores its best reference (rouge-score's ``score_multi``,
    max F-measure per type). The mean over examples is a plain mean, not T5's bootstrap midpoint,
    so the result is deterministic.
    """
    refs = _check_inputs(predictions, references)
    unknown = [t for t in rouge_types if t not in ROUGE_TYPES]
    if unknown or not rouge_types:
        raise ConfigError(f"unknown ROUGE types {unknown}; choose from {', '.join(ROUGE_TYPES)}")
    _require("rouge_score", "ROUGE")
    from rouge_score import rouge_scorer  # optional: metrics

    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=True)
    totals = dict.fromkeys(rouge_types, 0.0)
    for pred, group in zip(predictions, refs):
        if split_sentences and "rougeLsum" in rouge_types:
            pred, group = _lsum_lines(pred), [_lsum_lines(r) for r in group]
        scores = scorer.score_multi(group, pred)
        for t in rouge_types:
            totals[t] += scores[t].fmeasure
    return {t: 100.0 * totals[t] / len(refs) for t in rouge_types}


# --------------------------------------------------------------------------------------------------
# SQuAD exact match and F1

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower-case, drop punctuation, drop a/an/the, squeeze spaces.

    Applied in that order, as in the SQuAD v1.1/v2.0 evaluation scripts, so that answers differing
    only in case, punctuation or articles count as equal and scores match published ones.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, reference: str) -> float:
    """Bag-of-tokens F1 between two normalised answers (SQuAD's definition).

    Two empty answers agree (F1 1); an empty answer against a non-empty one scores 0 (SQuAD v2.0's
    rule, which also avoids a division by zero).
    """
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(ref_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_exact_match(predictions: Sequence[str], references: References) -> float:
    """Percentage of predictions equal to some reference after :func:`normalize_answer`."""
    refs = _check_inputs(predictions, references)
    hits = sum(
        max(float(normalize_answer(p) == normalize_answer(r)) for r in group)
        for p, group in zip(predictions, refs)
    )
    return 100.0 * hits / len(refs)


def squad_f1(predictions: Sequence[str], references: References) -> float:
    """Mean token F1 x100, each prediction against its best reference (max over references)."""
    refs = _check_inputs(predictions, references)
    total = sum(max(_token_f1(p, r) for r in group) for p, group in zip(predictions, refs))
    return 100.0 * total / len(refs)


# --------------------------------------------------------------------------------------------------
# label accuracy and sequence exact match


def accuracy(predictions: Sequence[str], references: References) -> float:
    """Percentage of predicted labels equal to a reference label, ignoring surrounding whitespace.

    For classification cast as text (T5's "positive"/"negative", "entailment", ...): the decoder may
    emit a trailing space or newline, which is not a different label. Case still matters.
    """
    refs = _check_inputs(predictions, references)
    hits = sum(any(p.strip() == r.strip() for r in group) for p, group in zip(predictions, refs))
    return 100.0 * hits / len(refs)


def sequence_exact_match(predictions: Sequence[str], references: References) -> float:
    """Percentage of predictions identical, character for character, to one of their references.

    The strictest check, for tasks where any difference is an error (e.g. generated code, copying).
    """
    refs = _check_inputs(predictions, references)
    hits = sum(any(p == r for r in group) for p, group in zip(predictions, refs))
    return 100.0 * hits / len(refs)


# --------------------------------------------------------------------------------------------------
# registry


def _rouge_metric(rouge_type: str) -> Callable[[Sequence[str], References], float]:
    def metric(predictions: Sequence[str], references: References) -> float:
        return rouge(predictions, references, (rouge_type,))[rouge_type]

    metric.__name__ = rouge_type
    metric.__doc__ = f"{rouge_type} F-measure x100 (see :func:`rouge`)."
    return metric


MetricFn = Callable[[Sequence[str], References], float]

METRICS: dict[str, MetricFn] = {
    "bleu": lambda p, r: bleu(p, r).score,
    "chrf": lambda p, r: chrf(p, r).score,
    **{t: _rouge_metric(t) for t in ROUGE_TYPES},
    "squad_em": squad_exact_match,
    "squad_f1": squad_f1,
    "accuracy": accuracy,
    "exact_match": sequence_exact_match,
}
"""Metric name -> ``fn(predictions, references) -> score in [0, 100]``; the names tasks and the CLI use."""


def compute_metrics(
    names: Sequence[str], predictions: Sequence[str], references: References
) -> dict[str, float]:
    """Compute several metrics of one set of predictions, keyed by metric name, in the order asked.

    The entry point for training loops and ``t5kit eval``. Names are checked before anything is
    computed, so a typo fails at once rather than after a long generation. ROUGE types asked together
    share one pass of rouge-score. For BLEU/chrF signatures, call :func:`bleu` / :func:`chrf`.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ConfigError(f"no metrics named; choose from {', '.join(METRICS)}")
    for name in names:
        if name not in METRICS:
            raise ConfigError(
                f"unknown metric {name!r}.{closest_names(name, METRICS)} Known metrics: {', '.join(METRICS)}"
            )
    _check_inputs(predictions, references)

    results: dict[str, float] = {}
    rouge_names = [n for n in dict.fromkeys(names) if n in ROUGE_TYPES]
    rouge_scores = rouge(predictions, references, rouge_names) if rouge_names else {}
    for name in names:
        results[name] = rouge_scores[name] if name in rouge_scores else METRICS[name](predictions, references)
    return results
