"""Packed fine-tuning trains exactly as unpacked: segment ids keep the examples apart."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_support import restore_threads, small_config, write_number_task  # noqa: F401

from t5kit import T5Model
from t5kit.train import TrainConfig, train


@pytest.mark.usefixtures("restore_threads")
def test_packed_training_ends_with_the_same_weights(tmp_path: Path) -> None:
    tasks = write_number_task(tmp_path / "data", n_train=32, n_val=2)
    finals = {}
    for pack in (False, True):
        cfg = small_config(tasks, tmp_path / f"run-{pack}", data={"pack": pack}, model={"dropout": 0.0},
                           train={"steps": 3, "grad_accum": 1}, checkpoint={"every": 3, "keep_last": 1})
        result = train(TrainConfig.from_dict(cfg))
        finals[pack] = T5Model.from_pretrained(result.checkpoint)
    a, b = finals[False].state_dict(), finals[True].state_dict()
    # Adam divides by the root of tiny second moments, which magnifies float rounding: 2e-4 after 3 steps at
    # lr 3e-3 (letting the examples see each other moves them by 9e-3).
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 2e-4
    # The comparison means something: these examples really are packed several to a row.
    from t5kit.data import Collator, load_tasks
    from t5kit.tokenizer import Tokenizer

    task = load_tasks(tasks)["tasks"]["numbers"]
    examples = [e for _, e in zip(range(8), task.stream("train"))]
    packed = Collator(Tokenizer.from_pretrained(cfg["data"]["tokenizer"]), pack=True, inputs_length=32,
                      targets_length=32)(examples)
    assert packed["input_ids"].shape[0] < len(examples)
