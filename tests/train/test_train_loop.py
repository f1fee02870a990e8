"""The step loop around its steps: training without evaluation, and the clear error when a validation split is
missing while evaluation is on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from train_support import restore_threads, small_config, write_config, write_number_task  # noqa: F401

from t5kit.errors import ConfigError
from t5kit.train import TrainConfig, train
from t5kit.train.logging import read_metrics


def _train_only_task(directory: Path) -> Path:
    """The number task as 'hid', with a train split and no validation split."""
    tasks_file = write_number_task(directory, n_train=16, n_val=2)
    tasks = yaml.safe_load(tasks_file.read_text(encoding="utf-8"))
    tasks["tasks"][0].update(name="hid", source={"train": "train.jsonl"})
    tasks_file.write_text(yaml.safe_dump(tasks), encoding="utf-8")
    return tasks_file


@pytest.mark.usefixtures("restore_threads")
def test_a_task_without_validation_split_trains_with_eval_null(tmp_path: Path) -> None:
    tasks = _train_only_task(tmp_path / "data")
    config = write_config(
        tmp_path / "run.yaml",
        small_config(tasks, tmp_path / "run", data={"train": "hid"}, train={"steps": 2, "batch_size": 4},
                     checkpoint={"every": 0}),
    )
    # evaluation on (the default): one error naming the missing split and the ways out, before any step
    with pytest.raises(ConfigError, match=r"task 'hid' has no split 'validation'.*eval: null \(--set eval=null\)"):
        train(TrainConfig.load(config))
    assert not list((tmp_path / "run").glob("step-*"))

    cfg = TrainConfig.load(config, ["eval=null"])  # as `t5kit train run.yaml --set eval=null`
    assert cfg.eval is None
    result = train(cfg)
    assert result.step == 2 and result.checkpoint is not None and result.checkpoint.is_dir()
    assert result.last_eval == {} and result.best is None
    records = read_metrics(result.run_dir)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert not [r for r in records if r["kind"] == "eval"]
    assert not (result.run_dir / "best").exists()
    # the run's saved config says so, and loads again
    assert TrainConfig.load(result.run_dir / "config.yaml").eval is None


def test_eval_null_in_yaml(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", {"eval": None, "train": {"steps": 5}})
    assert TrainConfig.load(path).eval is None
    # and a section given again turns evaluation back on
    assert TrainConfig.load(path, ["eval.every=2"]).eval.every == 2
