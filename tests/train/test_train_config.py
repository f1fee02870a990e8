"""TrainConfig: YAML and ``--set`` overrides, strict keys with suggestions, range checks, one-line CLI errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_support import write_config

from t5kit.errors import ConfigError
from t5kit.train.config import TrainConfig


def test_config_yaml_and_overrides(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "c.yaml", {"optim": {"name": "adafactor", "lr": 0.01}, "train": {"steps": 5}}
    )
    cfg = TrainConfig.load(
        path, ["optim.lr=1e-3", "train.precision=bf16", "schedule.name=cosine", "model.overrides.d_model=32"]
    )
    assert cfg.optim.lr == 1e-3 and cfg.optim.name == "adafactor" and cfg.train.steps == 5
    assert cfg.train.precision == "bf16" and cfg.schedule.name == "cosine"
    assert cfg.model.overrides == {"d_model": 32}


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"optim": {"weight_decai": 1}},
            "unknown key 'optim.weight_decai'. Did you mean 'optim.weight_decay'",
        ),
        ({"optim": {"lr_rate": 1}}, "Did you mean 'optim.lr'"),
        ({"optimizer": {}}, "unknown key 'optimizer'. Did you mean 'optim'"),
        ({"train": {"batch_sise": 4}}, "Did you mean 'train.batch_size'"),
        ({"optim": {"lr": 0}}, "optim.lr must be > 0"),
        ({"optim": {"lr": -1e-3}}, "optim.lr must be > 0"),
        ({"train": {"batch_size": 0}}, "train.batch_size must be > 0"),
        ({"train": {"batch_size": -8}}, "train.batch_size must be > 0"),
        ({"train": {"steps": "many"}}, "train.steps must be an integer"),
        ({"optim": {"name": "adam"}}, "Did you mean 'adamw'"),
        ({"schedule": {"name": "cosin"}}, "Did you mean 'cosine'"),
        ({"train": {"batch_size": 10, "grad_accum": 4}}, "divisible"),
    ],
)
def test_config_rejects_bad_values(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        TrainConfig.from_dict(data, "run.yaml")


def test_cli_reports_bad_config_in_one_line(tmp_path: Path, capsys) -> None:
    from t5kit.cli import main

    path = write_config(tmp_path / "c.yaml", {"optim": {"lr": 1e-3}})
    assert main(["train", str(path), "--set", "optim.lr=0"]) == 1
    err = capsys.readouterr().err
    assert "optim.lr must be > 0" in err and "Traceback" not in err
    assert main(["train", str(path), "--set", "train.batchsize=4"]) == 1
    assert "Did you mean 'train.batch_size'" in capsys.readouterr().err
