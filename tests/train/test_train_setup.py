"""Set-up before the first step: a preset sized from the tokenizer, a vocabulary that does not fit the tokenizer
refused before any step (with the fix), the CPU kernels installed by the trainer, a best metric that exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from train_support import NOMBRES, NUMBERS, restore_threads, small_config, write_number_task  # noqa: F401

from t5kit import T5Model
from t5kit.errors import ConfigError
from t5kit.kernels import installed
from t5kit.tokenizer import load_tokenizer, train_tokenizer
from t5kit.train import TrainConfig, train
from t5kit.train.setup import build_model, check_vocabulary, padded_vocab_size


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory) -> Path:
    """A SentencePiece vocabulary of 40 pieces (+ 100 sentinels: 140 ids) trained on the number words."""
    root = tmp_path_factory.mktemp("small-vocab")
    text = root / "text.txt"
    text.write_text("\n".join(f"{a} {b}" for a in NUMBERS + NOMBRES for b in NUMBERS + NOMBRES), encoding="utf-8")
    train_tokenizer([text], vocab_size=40, out_dir=root / "tokenizer")
    return root / "tokenizer"


def _tasks_with_metrics(directory: Path) -> Path:
    tasks_file = write_number_task(directory, n_train=16, n_val=4)
    tasks = yaml.safe_load(tasks_file.read_text(encoding="utf-8"))
    tasks["tasks"][0]["metrics"] = ["chrf", "exact_match"]
    tasks_file.write_text(yaml.safe_dump(tasks), encoding="utf-8")
    return tasks_file


def test_vocabulary_rule() -> None:
    # T5 pads its vocabulary to a multiple of 128: the published models and every preset fit the rule
    assert padded_vocab_size(32100) == 32128 and padded_vocab_size(250100) == 250112 and padded_vocab_size(384) == 384
    cfg = TrainConfig()
    check_vocabulary(cfg, 32128, 32100)
    check_vocabulary(cfg, 32100, 32100)
    with pytest.raises(ConfigError, match="no embedding for"):
        check_vocabulary(cfg, 32000, 32100)


@pytest.mark.usefixtures("restore_threads")
def test_a_preset_is_sized_from_the_tokenizer_and_evaluates(tmp_path: Path, small_vocab: Path) -> None:
    size = len(load_tokenizer(small_vocab))
    assert size == 140
    cfg = TrainConfig.from_dict(small_config(
        _tasks_with_metrics(tmp_path / "data"), tmp_path / "run", data={"tokenizer": str(small_vocab)},
        train={"steps": 2, "batch_size": 4}, eval={"generate": True, "max_examples": 4}, checkpoint={"every": 0},
    ))
    # The preset's own 32,128 ids would let the untrained model emit ids the tokenizer cannot decode, and the
    # run would fail at its first evaluation after all its steps ("id 29934 is out of range ...").
    result = train(cfg)
    assert result.step == 2 and "numbers/chrf" in result.last_eval
    assert T5Model.from_pretrained(str(result.checkpoint)).config.vocab_size == padded_vocab_size(size) == 256


@pytest.mark.usefixtures("restore_threads")
def test_a_vocabulary_that_does_not_fit_is_refused_before_the_first_step(tmp_path: Path, small_vocab: Path) -> None:
    tasks = _tasks_with_metrics(tmp_path / "data")
    base = small_config(tasks, tmp_path / "run")["model"]["overrides"]
    cfg = TrainConfig.from_dict(small_config(
        tasks, tmp_path / "run", data={"tokenizer": str(small_vocab)},
        model={"overrides": {**base, "vocab_size": 32128}}, train={"steps": 2, "batch_size": 4},
    ))
    with pytest.raises(ConfigError, match=r"32128 ids.*140 ids.*remove model.overrides.vocab_size.*140 and 256"):
        train(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not list((tmp_path / "run").glob("step-*"))

    # a checkpoint trained with another vocabulary: use its own tokenizer
    checkpoint = tmp_path / "t5-vocab-model"
    T5Model.from_preset("tiny", **base).save_pretrained(str(checkpoint))
    cfg = TrainConfig.from_dict(small_config(
        tasks, tmp_path / "run", data={"tokenizer": str(small_vocab)}, model={"checkpoint": str(checkpoint)},
    ))
    with pytest.raises(ConfigError, match="remove data.tokenizer to use the checkpoint's own"):
        train(cfg)


def test_the_trainer_installs_the_cpu_kernels_on_the_model_device(tmp_path: Path) -> None:
    cfg = TrainConfig.from_dict(small_config(write_number_task(tmp_path / "data"), tmp_path / "run"))
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    model = build_model(cfg, tokenizer, torch.device("cpu"))
    assert model.training and installed(model)  # the trainer's model runs the CPU training kernels
    assert not installed(T5Model.from_preset("tiny", **cfg.model.overrides).train())  # a plain model stays plain


@pytest.mark.usefixtures("restore_threads")
def test_best_metric_must_be_computed(tmp_path: Path) -> None:
    tasks = write_number_task(tmp_path / "data", n_train=16, n_val=2)
    cfg = TrainConfig.from_dict(small_config(tasks, tmp_path / "run", eval={"best_metric": "blue"}))
    with pytest.raises(ConfigError, match="Did you mean 'bleu'"):
        train(cfg)
