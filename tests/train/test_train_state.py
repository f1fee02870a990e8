"""Bad input gives one clear error: resume without a complete checkpoint, an unwritable output directory,
a disk that fills up while a checkpoint is written (and no half-written checkpoint is left)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from train_support import restore_threads, small_config, write_number_task  # noqa: F401

from t5kit.errors import CheckpointError
from t5kit.train import TrainConfig, train
from t5kit.train import state as S


def _config(tmp_path: Path, **sections: dict) -> TrainConfig:
    tasks = write_number_task(tmp_path / "data", n_train=16, n_val=2)
    return TrainConfig.from_dict(small_config(tasks, tmp_path / "run", **sections))


@pytest.mark.usefixtures("restore_threads")
def test_resume_without_a_complete_checkpoint(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        train(cfg, out=str(tmp_path / "empty"), resume=True)
    partial = tmp_path / "partial"
    (partial / ".tmp-step-00000005-123").mkdir(parents=True)
    (partial / "step-00000005").mkdir()  # a directory without its files is not a checkpoint
    (partial / "step-00000005" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"only incomplete: .*step-00000005"):
        S.latest_checkpoint(partial)


@pytest.mark.usefixtures("restore_threads")
def test_unwritable_output_directory(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError, match="cannot write to"):
        train(cfg, out=str(blocker / "run"))


@pytest.mark.usefixtures("restore_threads")
def test_disk_full_while_checkpointing_leaves_no_partial_checkpoint(tmp_path: Path, monkeypatch) -> None:
    cfg = _config(
        tmp_path,
        train={"steps": 2, "batch_size": 4, "grad_accum": 1},
        checkpoint={"every": 1, "keep_last": 3},
    )
    calls = {"n": 0}
    real = S._save_torch

    def failing(obj, path):
        calls["n"] += 1
        if calls["n"] > 2:  # the first checkpoint (optimizer.pt + rng.pt) succeeds, the second fails
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, path)

    monkeypatch.setattr(S, "_save_torch", failing)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="disk is full.*no partial checkpoint was left"):
        train(cfg, out=str(out))
    left = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert left == ["step-00000001"] and S.is_complete(out / "step-00000001")
    # and the run resumes from the complete one once space is back
    monkeypatch.setattr(S, "_save_torch", real)
    result = train(cfg, out=str(out), resume=True)
    assert result.step == 2 and S.is_complete(out / "step-00000002")
