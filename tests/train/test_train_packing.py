"""Packed fine-tuning trains exactly as unpacked: segment ids keep the examples apart."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_support import (
    PARITY_OPTIM,
    PARITY_TRAIN,
    assert_same_training,
    load_weights,
    restore_threads,  # noqa: F401  (fixture)
    small_config,
    write_number_task,
)

from t5kit.data import Collator, load_tasks
from t5kit.tokenizer import Tokenizer
from t5kit.train import TrainConfig, train


@pytest.mark.usefixtures("restore_threads")
def test_packed_training_ends_with_the_same_weights(tmp_path: Path) -> None:
    tasks = write_number_task(tmp_path / "data", n_train=32, n_val=2)

    def run(name: str, pack: bool = False, precision: str = "fp32", lr: float = PARITY_OPTIM["lr"]) -> dict:
        cfg = small_config(tasks, tmp_path / name, data={"pack": pack}, model={"dropout": 0.0},
                           optim={**PARITY_OPTIM, "lr": lr},
                           train={"steps": 3, "grad_accum": 1, "precision": precision, **PARITY_TRAIN},
                           checkpoint={"every": 3, "keep_last": 1})
        return load_weights(train(TrainConfig.from_dict(cfg)).checkpoint)

    # Plain SGD (a gradient scaled by a constant shows), within the rounding measured against a float64 run of
    # the same steps (assert_same_training). Packed examples that could see each other would not be rounding.
    assert_same_training(
        run("packed", pack=True),
        single=run("unpacked"),
        reference=run("float64", precision="fp64"),
        doubled=run("doubled", lr=2 * PARITY_OPTIM["lr"]),
        steps=3,
        what="packed",
    )
    # The comparison means something: these examples really are packed several to a row.
    task = load_tasks(tasks)["tasks"]["numbers"]
    examples = [e for _, e in zip(range(8), task.stream("train"))]
    cfg = small_config(tasks, tmp_path / "unused")
    packed = Collator(Tokenizer.from_pretrained(cfg["data"]["tokenizer"]), pack=True, inputs_length=32,
                      targets_length=32)(examples)
    assert packed["input_ids"].shape[0] < len(examples)
