"""Evaluate a model on a task: generate for every example (batched) and score with the task's metrics.

This is the Python API behind ``t5kit eval``; training calls it for its periodic validation.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t5kit.errors import DataError
from t5kit.metrics import compute_metrics


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
        directory.mkdir(parents=True, exist_ok=True)
        predictions = directory / "predictions.jsonl"
        metrics = directory / "metrics.json"
        tmp = predictions.with_name(predictions.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for row in self.predictions:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, predictions)
        summary = {"task": self.task, "split": self.split, "examples": len(self.predictions),
                   "seconds": round(self.seconds, 3), "metrics": self.metrics}
        tmp = metrics.with_name(metrics.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, metrics)
        return predictions, metrics


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


def evaluate(generator: Any, task: Any, split: str = "test", *, metrics: list[str] | None = None,
             max_examples: int | None = None, batch_size: int = 32, skip_bad: bool = False,
             progress: bool = True, **decoding: Any) -> EvalResult:
    """Generate for each example of ``task``'s ``split`` and score the outputs.

    ``generator`` is a :class:`t5kit.Generator`; ``decoding`` options go to its ``generate``
    (greedy by default). ``metrics`` overrides the task's own metric names.
    """
    examples = task_examples(task, split, max_examples, skip_bad)
    names = list(metrics or task.metrics or ["exact_match"])
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(examples), desc=f"eval {task.name}/{split}", unit="ex")
    # Batches of similar length over the whole split (the generator sorts only within what it is given),
    # so short inputs are not padded to a long neighbour's length; results go back to the split's order.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["inputs"]))
    results: list[Any] = [None] * len(examples)  # by position in the split
    for i in range(0, len(order), batch_size):
        chunk = order[i : i + batch_size]
        outputs = generator.generate([examples[j]["inputs"] for j in chunk], batch_size=batch_size, **decoding)
        for j, out in zip(chunk, outputs):
            results[j] = out
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    post = task.postprocess or (lambda text: text)
    predictions = [str(post(r.text)) for r in results]
    references = [str(post(e["targets"])) for e in examples]
    scores = compute_metrics(names, predictions, references)
    rows = [{"inputs": e["inputs"], "target": e["targets"], "prediction": r.text, "stop_reason": r.stop_reason}
            for e, r in zip(examples, results)]
    return EvalResult(task=task.name, split=split, metrics=scores, predictions=rows, seconds=seconds)
