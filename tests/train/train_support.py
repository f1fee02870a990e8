"""Helpers shared by the training tests: small task files written in code, small configs, weight comparisons."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import T5_VOCAB

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


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
