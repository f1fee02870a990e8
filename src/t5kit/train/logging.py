"""What a person watching a run sees and what is left afterwards.

- a tqdm bar (rank 0) with loss, learning rate, tokens/s and the ETA;
- ``metrics.jsonl`` (one JSON object per record: ``{"kind": "train"|"eval", "step", ...}``) and
  ``metrics.csv`` (the same, one column per key seen so far) in the run directory;
- TensorBoard scalars under ``tensorboard/`` when ``torch.utils.tensorboard`` can be imported;
- ``curves.png``: training loss and validation loss/metrics against the step, written at the end of a
  run and by ``t5kit plot RUN_DIR`` (matplotlib, imported lazily with the headless Agg backend).

Whole-file writes (the logs rewritten on resume, the CSV when a column appears, ``curves.png``) go through
``t5kit.io`` (a temporary name, then one rename), so a run killed mid-write leaves the old file, never half
of one; records are appended line by line, and a line cut short by a kill is skipped when read.

Why the logs are rewritten on resume: a killed run may have logged steps after its last checkpoint; the
resumed run repeats them, so records beyond the resumed step are dropped to keep one line per step.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from t5kit.errors import T5kitError
from t5kit.io import atomic_path, write_text

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_JSONL
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut short by a kill: ignore it
                continue
    return records


class RunLogger:
    """Appends records to the JSONL/CSV logs (and TensorBoard); drives the progress bar. Rank 0 only."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        total_steps: int,
        start_step: int = 0,
        progress: bool = True,
        tensorboard: bool = True,
        enabled: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.bar = None
        self.tb = None
        if not enabled:
            return
        kept = [r for r in read_metrics(self.run_dir) if int(r.get("step", 0)) <= start_step]
        self._columns: list[str] = []
        for r in kept:
            self._add_columns(r)
        write_text(self.run_dir / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in kept))
        self._rewrite_csv(kept)
        if progress:
            self.bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                leave=True,
            )
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: the tensorboard package (no extra)

                self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1)
            except (ImportError, ModuleNotFoundError):
                self.tb = None

    def _add_columns(self, record: dict[str, Any]) -> bool:
        new = [k for k in record if k not in self._columns]
        self._columns.extend(new)
        return bool(new)

    def _rewrite_csv(self, records: list[dict[str, Any]]) -> None:
        with atomic_path(self.run_dir / METRICS_CSV) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns)
            writer.writeheader()
            writer.writerows(records)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / METRICS_JSONL, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._add_columns(record):
            self._rewrite_csv(read_metrics(self.run_dir))
        else:
            with open(self.run_dir / METRICS_CSV, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=self._columns).writerow(record)
        if self.tb is not None:
            prefix = "train" if record.get("kind") == "train" else "eval"
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(f"{prefix}/{key}", value, int(record["step"]))

    def progress(self, steps: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            if postfix:
                self.bar.set_postfix({k: _short(v) for k, v in postfix.items()}, refresh=False)

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def plot_run(run_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Draw the training loss and the validation curves of a run into a PNG; returns its path."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise T5kitError(f"{run_dir} has no {METRICS_JSONL}; is it a t5kit training run directory?")
    import matplotlib  # optional: plot

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # optional: plot

    train = [r for r in records if r.get("kind") == "train" and "loss" in r]
    evals = [r for r in records if r.get("kind") == "eval"]
    metric_names = sorted(
        {
            k
            for r in evals
            for k, v in r.items()
            if k not in ("kind", "step", "val_loss", "val_tokens", "elapsed")
            and "/" not in k
            and isinstance(v, (int, float))
        }
    )
    fig, axes = plt.subplots(
        1, 2 if metric_names else 1, figsize=(11 if metric_names else 6, 4), squeeze=False
    )
    ax = axes[0][0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    val = [r for r in evals if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross entropy (nats/token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    if metric_names:
        ax2 = axes[0][1]
        for name in metric_names:
            points = [(r["step"], r[name]) for r in evals if isinstance(r.get(name), (int, float))]
            ax2.plot([p[0] for p in points], [p[1] for p in points], "o-", label=name)
        ax2.set_xlabel("step")
        ax2.set_ylabel("validation metric")
        ax2.grid(alpha=0.3)
        ax2.legend()
    fig.tight_layout()
    out = Path(path) if path is not None else run_dir / CURVES_PNG
    try:
        with atomic_path(out) as tmp:  # the temporary name keeps the .png suffix matplotlib reads the format from
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return out
