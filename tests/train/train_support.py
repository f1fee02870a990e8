"""Helpers shared by the training tests: small task files written in code, small configs, weight comparisons."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import yaml
from conftest import (
    T5_VOCAB,
    restore_threads,  # noqa: F401  (the fixture, re-exported for the train tests)
)

REPO = Path(__file__).resolve().parents[2]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
NOMBRES = ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"]


def require_vocab() -> Path:
    assert (T5_VOCAB / "spiece.model").is_file(), f"the T5 vocabulary is missing from {T5_VOCAB}"
    return T5_VOCAB


def write_number_task(directory: Path, n_train: int = 96, n_val: int = 8) -> Path:
    """A tiny en->fr task (digit strings spelt out) with train/validation splits; returns tasks.yaml."""
    directory.mkdir(parents=True, exist_ok=True)

    def record(i: int) -> dict:
        digits = [int(d) for d in str(i)]
        return {"en": " ".join(NUMBERS[d] for d in digits), "fr": " ".join(NOMBRES[d] for d in digits)}

    for split, rng in (("train", range(100, 100 + n_train)), ("validation", range(10, 10 + n_val))):
        with open(directory / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i in rng:
                f.write(json.dumps(record(i), ensure_ascii=False) + "\n")
    tasks = {
        "tasks": [
            {
                "name": "numbers",
                "kind": "translation",
                "source_lang": "en",
                "target_lang": "fr",
                "source": {"train": "train.jsonl", "validation": "validation.jsonl"},
            }
        ]
    }
    path = directory / "tasks.yaml"
    path.write_text(yaml.safe_dump(tasks), encoding="utf-8")
    return path


def small_config(tasks_file: Path, out: Path, **sections: dict) -> dict:
    """A config dict for a very small, fast, deterministic run (1 thread, no progress bar)."""
    cfg = {
        "model": {"preset": "tiny", "overrides": {"d_model": 32, "d_ff": 64, "num_heads": 2, "d_kv": 16}},
        "data": {
            "tokenizer": str(require_vocab()),
            "tasks_file": str(tasks_file),
            "train": "numbers",
            "shuffle_buffer": 16,
            "max_inputs_length": 32,
            "max_targets_length": 32,
        },
        "optim": {"name": "adamw", "lr": 3e-3},
        "schedule": {"name": "linear", "warmup_steps": 2},
        "train": {"steps": 10, "batch_size": 8, "grad_accum": 2, "threads": 1, "seed": 3},
        "eval": {"every": 0, "max_examples": 8, "generate": False, "max_new_tokens": 8},
        "checkpoint": {"every": 5, "keep_last": 2},
        "log": {"every": 1, "progress": False, "tensorboard": False, "plot": False},
        "out": str(out),
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


PYTHON = sys.executable


def load_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "model.safetensors"))


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)




# ---------------------------------------------------------------------------------------------- parity


EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7: the spacing of float32 numbers just above 1

# SGD without clipping: the step is the gradient times the rate, so a run whose gradient is off by a constant
# factor (summed over ranks or micro-batches instead of averaged) ends elsewhere. AdamW divides a constant factor
# out of its step and clipping to norm 1.0 hides it too, so parity under them cannot see that bug.
PARITY_OPTIM = {"name": "sgd", "lr": 0.5}
PARITY_TRAIN = {"clip_grad_norm": 0.0}


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The Euclidean distance between two sets of weights, all tensors together, in float64."""
    assert a.keys() == b.keys()
    return sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a) ** 0.5


def assert_same_training(
    candidate: dict[str, torch.Tensor],
    single: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
    doubled: dict[str, torch.Tensor],
    steps: int,
    what: str,
) -> None:
    """``candidate`` (float32) trained the same steps as the one-process run ``single`` (float32), up to rounding.

    How far rounding may take a float32 run is measured, not assumed: ``reference`` is the same steps in float64,
    so each float32 run's distance from it is that run's own rounding on this machine (its BLAS, its vector
    width). A correct candidate differs from ``single`` only in the order of its sums, so its rounding is of the
    same size: at most 4 times single's. The two are measured within 0.6-1.1 of each other here, and mostly
    agree because both round the same weights at every step; the 4 covers a machine whose kernels reorder the
    candidate's sums more (the fixed 1e-5 this replaces failed on AVX2 under AdamW, which magnifies rounding
    in gradients near zero; plain SGD does not). ``doubled`` is the one-process run with twice the learning
    rate, which under SGD is exactly a run with a doubled gradient (the sum-instead-of-mean bug): it must fail
    the same bound by far, so the bound can tell that bug from rounding.
    """
    own = distance(single, reference)
    norm = distance(reference, {k: torch.zeros_like(v) for k, v in reference.items()})
    # float32 keeps each weight to half a unit in the last place: about EPS32 * |w| of error for each rounding,
    # once per step, growing like a random walk; 16x over that leaves room for the gradient's own rounding.
    # This only shows the float64 run is a reference (a broken one would be as far away as a bug).
    assert 0 < own <= 16 * EPS32 * norm * steps**0.5, f"the float64 run is no reference: {own:.3g} from float32"
    err = distance(candidate, reference)
    print(f"{what}: rounding {err:.3g} against the one-process run's {own:.3g} (bound {4 * own:.3g})")
    assert err <= 4 * own, f"{what}: {err:.3g} from the float64 run, more than 4x the one-process run's {own:.3g}"
    bug = distance(doubled, reference)
    assert bug > 100 * 4 * own, f"a doubled gradient ({bug:.3g}) is not told apart from rounding ({own:.3g})"
