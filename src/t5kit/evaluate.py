"""Evaluate a model on a task's split with the task's metrics: the one place t5kit scores a model's outputs.

Two entry points over one scoring rule (:func:`score`: the task's ``postprocess`` on predictions and
references alike, then its metrics):

- :func:`evaluate` - text in, text out through a :class:`~t5kit.Generator` (``t5kit eval``): every example of
  a split, batched by length, predictions and metrics saved by :meth:`EvalResult.save`;
- :func:`validate` - the trainer's periodic validation on a model it is training: the token-mean validation
  loss of each :class:`ValidationSet` (built once by :func:`validation_set`) and, when asked, greedy outputs
  scored the same way. It takes collated batches (text or token-id examples, e.g. span corruption), so it
  works on the model as it trains, in its autocast, without a tokenizer round trip for the loss.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from t5kit.errors import DataError
from t5kit.ids import LABEL_PAD_ID
from t5kit.io import write_json, write_jsonl
from t5kit.metrics import METRICS, compute_metrics
from t5kit.pipeline import undecodable_ids


@dataclass
class EvalResult:
    task: str
    split: str
    metrics: dict[str, float]
    predictions: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def save(self, directory: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``predictions.jsonl`` (one line per example, in order) and ``metrics.json``."""
        directory = Path(directory)
        predictions = directory / "predictions.jsonl"
        metrics = directory / "metrics.json"
        write_jsonl(predictions, self.predictions)
        summary = {"task": self.task, "split": self.split, "examples": len(self.predictions),
                   "seconds": round(self.seconds, 3), "metrics": self.metrics}
        write_json(metrics, summary)
        return predictions, metrics


def score(
    metrics: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[Any],
    postprocess: Callable[[str], Any] | None = None,
) -> dict[str, float]:
    """The task's metrics of ``predictions`` against ``references``, both mapped by the task's ``postprocess``
    first (e.g. a label word back to its label), so a prediction and its reference are compared alike."""
    post = postprocess or (lambda text: text)
    return compute_metrics(
        list(metrics), [str(post(p)) for p in predictions], [str(post(r)) for r in references]
    )


def task_examples(task: Any, split: str = "test", max_examples: int | None = None,
                  skip_bad: bool = False) -> list[dict[str, Any]]:
    """The ``{"inputs", "targets"}`` examples of a task's split, in file order."""
    examples = []
    for example in task.stream(split, skip_bad=skip_bad):
        examples.append(example)
        if max_examples is not None and len(examples) >= max_examples:
            break
    if not examples:
        raise DataError(f"task {task.name!r} has no examples in split {split!r}")
    return examples


EVAL_MODES = ("generate", "rank")


def task_choices(task: Any, choices: Sequence[str] | None = None) -> list[str]:
    """The label set rank classification picks from: ``choices``, else the task's label words."""
    found = list(choices) if choices is not None else list(getattr(task, "options", {}).get("choices", ()))
    if not found:
        raise DataError(f"task {task.name!r} has no label set to rank: give its label words (a classification "
                        "task's label_words) or the choices (--choices yes,no)")
    return found


def evaluate(generator: Any, task: Any, split: str = "test", *, metrics: list[str] | None = None,
             max_examples: int | None = None, batch_size: int = 32, skip_bad: bool = False,
             progress: bool = True, mode: str = "generate", choices: Sequence[str] | None = None,
             **decoding: Any) -> EvalResult:
    """Generate for each example of ``task``'s ``split`` and score the outputs.

    ``generator`` is a :class:`t5kit.Generator`; ``decoding`` options go to its ``generate``
    (greedy by default). ``metrics`` overrides the task's own metric names. ``mode="rank"`` classifies
    instead: each example's prediction is the most likely member of the label set (``choices``, else the
    task's label words) under the model (``Generator.classify``: one encoder pass per input), so an output
    outside the label set is impossible.
    """
    if mode not in EVAL_MODES:
        raise DataError(f"eval mode must be one of {', '.join(EVAL_MODES)}, got {mode!r}")
    label_set = task_choices(task, choices) if mode == "rank" else None
    if label_set is not None and decoding:
        raise DataError(f"rank classification takes no decoding options, got {sorted(decoding)}")
    examples = task_examples(task, split, max_examples, skip_bad)
    names = list(metrics or task.metrics or ["exact_match"])
    start = time.perf_counter()
    bar = None
    if progress:
        bar = tqdm(total=len(examples), desc=f"eval {task.name}/{split}", unit="ex")
    # Batches of similar length over the whole split (the generator sorts only within what it is given),
    # so short inputs are not padded to a long neighbour's length; results go back to the split's order.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["inputs"]))
    results: list[Any] = [None] * len(examples)  # by position in the split
    for i in range(0, len(order), batch_size):
        chunk = order[i : i + batch_size]
        texts = [examples[j]["inputs"] for j in chunk]
        if label_set is not None:
            # no length limits: an eval reads the split as it is (the generate mode has none either)
            ranked = generator.classify(texts, label_set, batch_size=batch_size, max_input_tokens=None,
                                        max_target_tokens=None)
            outputs = [_Ranked(c.label) for c in ranked]
        else:
            outputs = generator.generate(texts, batch_size=batch_size, **decoding)
        for j, out in zip(chunk, outputs):
            results[j] = out
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    scores = score(names, [r.text for r in results], [e["targets"] for e in examples], task.postprocess)
    rows = [{"inputs": e["inputs"], "target": e["targets"], "prediction": r.text, "stop_reason": r.stop_reason}
            for e, r in zip(examples, results)]
    return EvalResult(task=task.name, split=split, metrics=scores, predictions=rows, seconds=seconds)


@dataclass
class _Ranked:
    """A rank classification's answer in the shape of a generation result (text, stop reason)."""

    text: str
    stop_reason: str = "ranked"


# ---------------------------------------------------------------------------------------------- validation


@dataclass
class ValidationSet:
    """A task's validation examples, taken once, and the t5kit metrics to score them with."""

    name: str
    examples: list[dict[str, Any]]
    metrics: list[str]
    postprocess: Callable[[str], Any] | None = None


def validation_set(task: Any, split: str, tokenizer: Any = None, max_examples: int | None = None) -> ValidationSet:
    """The first ``max_examples`` examples of ``task``'s ``split`` (a DataError names a missing split).

    A metric name that is not a t5kit metric is skipped with a warning rather than failing the run that
    evaluates it periodically.
    """
    examples = task.stream(split, tokenizer=tokenizer).take(max_examples)
    known = [m for m in task.metrics if m in METRICS]
    unknown = [m for m in task.metrics if m not in METRICS]
    if unknown:
        warnings.warn(f"task {task.name!r}: metrics {unknown} are not t5kit metrics; skipped", stacklevel=2)
    return ValidationSet(task.name, examples, known, task.postprocess)


@torch.no_grad()
def validate(
    model: nn.Module,
    sets: Sequence[ValidationSet],
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    tokenizer: Any,
    *,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    generate: bool = True,
    autocast_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[dict[str, float], list[str]]:
    """Validation loss (token mean) per set and overall; with ``generate``, greedy outputs and the metrics.

    Returns (metrics, a few ``input => prediction | reference`` sample lines for a log). Keys: ``NAME/val_loss``
    and ``NAME/METRIC`` per set, ``val_loss`` and ``val_tokens`` over all sets, and each metric's mean over the
    sets that compute it. ``model`` is put in eval mode for the call and back in its previous mode after.
    ``generate=False`` (loss only) is for a sharded model that cannot decode on its own. Greedy decoding never
    picks an id past the tokenizer's (the rows T5 pads its vocabulary with): those are no text.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device

    def autocast() -> Any:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=autocast_dtype)

    padding_ids = undecodable_ids(model.config.vocab_size, tokenizer) if generate else ()
    was_training = model.training
    model.eval()
    results: dict[str, float] = {}
    samples: list[str] = []
    total_loss, total_tokens = 0.0, 0
    per_metric: dict[str, list[float]] = {}
    try:
        for vs in sets:
            loss_sum, tokens = 0.0, 0
            predictions: list[str] = []
            for i in range(0, len(vs.examples), batch_size):
                chunk = vs.examples[i : i + batch_size]
                batch = {k: v.to(device) for k, v in collator(chunk).items()}
                n = int((batch["labels"] != LABEL_PAD_ID).sum())
                with autocast():
                    out = model(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
                    )
                loss_sum += float(out.loss) * n
                tokens += n
                if generate and vs.metrics:
                    with autocast():
                        decoded = model.generate(
                            batch["input_ids"],
                            batch["attention_mask"],
                            max_new_tokens=max_new_tokens,
                            suppress_tokens=padding_ids,
                            warn_on_length_limit=False,
                        )
                    ids = decoded.sequences[:, 1:].tolist()  # the decoder start token dropped
                    predictions.extend(tokenizer.batch_decode(ids, skip_special_tokens=True))
            if tokens:
                results[f"{vs.name}/val_loss"] = loss_sum / tokens
            total_loss += loss_sum
            total_tokens += tokens
            if predictions:
                references = [ex["targets"] for ex in vs.examples]
                for name, value in score(vs.metrics, predictions, references, vs.postprocess).items():
                    results[f"{vs.name}/{name}"] = float(value)
                    per_metric.setdefault(name, []).append(float(value))
                for ex, pred in list(zip(vs.examples, predictions))[:3]:
                    samples.append(f"  {str(ex['inputs'])[:60]!r} => {pred[:60]!r} | {str(ex['targets'])[:60]!r}")
    finally:
        model.train(was_training)
    if total_tokens:
        results["val_loss"] = total_loss / total_tokens
        results["val_tokens"] = total_tokens
    for name, values in per_metric.items():
        results[name] = sum(values) / len(values)
    return results, samples
