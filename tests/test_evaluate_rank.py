"""Rank classification (``evaluate(..., mode="rank")``, ``t5kit eval --rank``) on a real labelled task: the part of
speech of WordNet glosses (``wordnet_pos`` from ``t5kit data import wordnet``), with the built-in model before
and after a short fine-tune.

The split is WordNet's hash split by lemma (no gloss of a test lemma is trained on); train and test are
balanced (150 / 40 glosses per part of speech), so the majority class scores 25% on the test set. The run
is a fixed number of steps on one thread, so its numbers do not depend on the machine's load.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from conftest import WORDNET_POS, missing_system_part, write_pos_task

from t5kit import Generator
from t5kit.builtin import model_path
from t5kit.data import get_task, load_tasks
from t5kit.errors import DataError
from t5kit.evaluate import evaluate
from t5kit.train import TrainConfig, train

POS = WORDNET_POS



PER_CLASS = {"train": 150, "test": 40}


@pytest.fixture(scope="module")
def pos_task(tmp_path_factory) -> Path:
    return write_pos_task(tmp_path_factory.mktemp("wordnet"), PER_CLASS)


def test_the_imported_task_has_its_label_set(tmp_path):
    if not Path("/usr/share/wordnet/data.noun").exists():
        missing_system_part("apt package wordnet-base is not installed")
    from t5kit.data.corpora import import_wordnet

    out = tmp_path / "wordnet"
    import_wordnet(out)
    load_tasks(out / "tasks.yaml")
    assert get_task("wordnet_pos").options["choices"] == list(POS)


@pytest.mark.usefixtures("restore_threads")
def test_rank_classification_beats_the_majority_class_after_a_short_fine_tune(pos_task: Path, tmp_path: Path):
    load_tasks(pos_task)
    task = get_task("pos_balanced")
    labels = [e["targets"] for e in task.stream("test")]
    majority = 100.0 * max(labels.count(p) for p in POS) / len(labels)
    assert majority == 25.0
    torch.set_num_threads(1)
    before = evaluate(Generator.from_pretrained(model_path()), task, "test", mode="rank", progress=False)
    assert {p["prediction"] for p in before.predictions} <= set(POS)  # ranked: never outside the label set

    cfg = TrainConfig.from_dict({
        "model": {"checkpoint": model_path()},
        "data": {"tasks_file": str(pos_task), "train": "pos_balanced", "validation": ["pos_balanced"],
                 "max_inputs_length": 40, "max_targets_length": 4, "shuffle_buffer": 600},
        "optim": {"name": "adamw", "lr": 1e-3},
        "schedule": {"name": "constant", "warmup_steps": 10},
        "train": {"steps": 160, "batch_size": 16, "threads": 1, "seed": 0},
        "eval": {"every": 0, "max_examples": 16, "batch_size": 16, "max_new_tokens": 4},
        "checkpoint": {"every": 0, "keep_last": 1},
        "log": {"every": 40, "progress": False, "tensorboard": False, "plot": False},
        "out": str(tmp_path / "run"),
    })
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    assert (result.checkpoint / "spiece.model").is_file()  # a checkpoint loads on its own, tokenizer included
    tuned = Generator.from_pretrained(result.checkpoint)
    after = evaluate(tuned, task, "test", mode="rank", progress=False)
    generated = evaluate(tuned, task, "test", max_new_tokens=4, progress=False)
    print(f"wordnet pos, balanced test (majority {majority:.0f}%): rank accuracy {before.metrics['accuracy']:.1f} "
          f"-> {after.metrics['accuracy']:.1f} after {cfg.train.steps} steps ({seconds:.0f} s); greedy decoding "
          f"after: {generated.metrics['accuracy']:.1f}")
    assert after.metrics["accuracy"] >= majority + 20
    assert after.metrics["accuracy"] > before.metrics["accuracy"]


def test_rank_mode_needs_a_label_set_and_no_decoding_options(pos_task: Path):
    load_tasks(pos_task)
    task = get_task("pos_balanced")
    generator = Generator.from_pretrained(model_path())
    with pytest.raises(DataError, match="eval mode must be one of generate, rank"):
        evaluate(generator, task, "test", mode="vote")
    with pytest.raises(DataError, match="no decoding options"):
        evaluate(generator, task, "test", mode="rank", num_beams=4)
    plain = type(task)("plain", task.source, inputs=task.inputs, targets=task.targets, base_dir=task.base_dir)
    with pytest.raises(DataError, match="no label set to rank"):
        evaluate(generator, plain, "test", mode="rank")
    few = evaluate(generator, task, "test", mode="rank", choices=["noun", "verb"], max_examples=8, progress=False)
    assert {p["prediction"] for p in few.predictions} <= {"noun", "verb"}
