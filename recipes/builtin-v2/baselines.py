"""Model-free baselines of the built-in model's tasks, scored by the same ``t5kit.evaluate.evaluate`` that
``t5kit eval`` runs, on the TEST split; then a table of model against baseline (markdown, on stdout).

    python recipes/builtin-v2/baselines.py WORK TASK...

- translation and definitions: copy the input (minus the task prefix);
- summarization: the lead, the description's first N words, N = the mean synopsis length in words over the
  TRAIN split (the issue's "as many as the average synopsis has");
- classification: the TRAIN split's most frequent label word for every input.
There is no CLI switch for a model-free baseline, hence this script (it only calls t5kit's API).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from t5kit.data import get_task, load_tasks
from t5kit.evaluate import evaluate, task_examples


class Result:
    def __init__(self, text: str) -> None:
        self.text, self.stop_reason = text, "eos"


class Baseline:
    """Looks like a Generator to ``evaluate``: one output per input text, from ``answer``."""

    def __init__(self, answer: Callable[[str], str]) -> None:
        self.answer = answer

    def generate(self, texts: list[str], **_: object) -> list[Result]:
        return [Result(self.answer(t)) for t in texts]


def baseline_for(task) -> tuple[str, Baseline]:
    prefix = task.inputs.split("{", 1)[0]  # the template's fixed text before the first field

    def strip(text: str) -> str:
        return text[len(prefix):] if text.startswith(prefix) else text

    train = task_examples(task, "train")
    if task.kind == "summarization":
        words = round(sum(len(e["targets"].split()) for e in train) / len(train))
        return f"lead {words} words", Baseline(lambda t: " ".join(strip(t).split()[:words]))
    if task.kind == "classification":
        majority = Counter(e["targets"] for e in train).most_common(1)[0][0]
        return f"majority class ({majority})", Baseline(lambda t: majority)
    return "copy the input", Baseline(strip)


def main(work: Path, names: list[str]) -> None:
    """Prints the markdown table and writes ``WORK/model/scores.json`` ({task: {examples, baseline, metrics:
    {metric: [model, baseline]}}}), which ships with the model: the demo's summary line and the card read it."""
    load_tasks(work / "tasks.yaml")
    scores = {}
    print("| task (test examples) | metric | model | baseline | which baseline |")
    print("|---|---|---:|---:|---|")
    for name in names:
        task = get_task(name)
        which, baseline = baseline_for(task)
        base = evaluate(baseline, task, "test", progress=False)
        base.save(work / "baseline" / name)
        model = json.loads((work / "eval" / name / "metrics.json").read_text(encoding="utf-8"))
        n = model["examples"]
        scores[name] = {"examples": n, "baseline": which,
                        "metrics": {m: [round(v, 2), round(base.metrics[m], 2)] for m, v in model["metrics"].items()}}
        for metric, value in model["metrics"].items():
            print(f"| {name} ({n}) | {metric} | {value:.2f} | {base.metrics[metric]:.2f} | {which} |")
    (work / "model" / "scores.json").write_text(json.dumps(scores, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
