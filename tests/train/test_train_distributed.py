"""``torchrun --nproc_per_node 2`` on CPU (gloo), with DDP or FSDP, trains to the same weights as one process with
the same global batch, and the two ranks read disjoint examples.

Parity is checked under plain SGD without clipping (a gradient summed instead of averaged changes the result) and
within the rounding measured against a float64 run of the same steps (train_support.assert_same_training)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from train_support import (
    PARITY_OPTIM,
    PARITY_TRAIN,
    PYTHON,
    assert_same_training,
    load_weights,
    restore_threads,  # noqa: F401  (fixture)
    small_config,
    subprocess_env,
    write_config,
    write_number_task,
)

from t5kit.data import ListSource, Shard
from t5kit.train import TrainConfig, train

# gated-GELU with an untied head (v1.1 / mT5), and relu with the tied head (the original T5), whose embedding
# gradient takes t5kit's in-place path (model.TiedGradient): DDP must see one gradient for the shared weight.
FAMILIES = {
    "gated-untied": {},
    "relu-tied": {"feed_forward_proj": "relu", "tie_word_embeddings": True},
}


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.usefixtures("restore_threads")
def test_two_ranks_match_one_process(tmp_path: Path, family: str, mode: str) -> None:
    tasks = write_number_task(tmp_path / "data")
    base = small_config(tasks, tmp_path / "unused")["model"]
    cfg_dict = small_config(
        tasks,
        tmp_path / "unused",
        model={"dropout": 0.0, "overrides": {**base["overrides"], **FAMILIES[family]}},
        optim=PARITY_OPTIM,
        train={"steps": 6, "batch_size": 8, "grad_accum": 2, "distributed": mode, **PARITY_TRAIN},
        checkpoint={"every": 0},
        eval={"max_examples": 4},
    )
    config_path = write_config(tmp_path / "run.yaml", cfg_dict)
    ddp_out = tmp_path / "ddp"
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "t5kit",
        "train",
        str(config_path),
        "--out",
        str(ddp_out),
    ]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def one_process(name: str, *overrides: str) -> dict:
        return load_weights(train(TrainConfig.load(config_path, list(overrides)), out=str(tmp_path / name)).checkpoint)

    ddp_checkpoint = ddp_out / "step-00000006"
    assert_same_training(
        load_weights(ddp_checkpoint),
        single=one_process("single"),
        reference=one_process("float64", "train.precision=fp64"),
        doubled=one_process("doubled", f"optim.lr={2 * PARITY_OPTIM['lr']}"),
        steps=6,
        what=f"{family} {mode}",
    )
    import json

    saved = json.loads((ddp_checkpoint / "config.json").read_text())
    assert saved["tie_word_embeddings"] == (family == "relu-tied")
    assert saved["feed_forward_proj"] == ("relu" if family == "relu-tied" else "gated-gelu")
    state = json.loads((ddp_checkpoint / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and len(state["data"]) == 2  # both ranks' positions were saved


def test_shards_are_disjoint_and_cover_the_stream() -> None:
    records = [{"i": i} for i in range(20)]
    shards = [[r["i"] for r in Shard(ListSource(records), rank, 2)] for rank in range(2)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(20))
