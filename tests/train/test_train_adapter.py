"""Training a LoRA adapter (the config's ``adapter`` section): only the adapter trains, the training kernels
compute what the plain model computes, checkpoints hold only the adapter (peft's layout) and resume exactly,
and on real data (WordNet parts of speech) the built-in model's adapter learns and loads through
``Generator.from_pretrained(base, adapter=checkpoint)``.

The learning run: the built-in model (13.4 M parameters) with a rank-8 adapter on q and v (73,728 trainable
parameters, 0.55%), 100 steps of 16 glosses on one thread (about 20 s), on the balanced WordNet part-of-speech
task of tests/test_evaluate_rank.py (conftest.write_pos_task: 150 train / 40 test glosses per part of speech).
Measured: rank accuracy on the 160 test glosses 23.1% -> 48.1% (the majority class scores 25%); the checkpoint's
adapter is 300 kB against the base's 26.6 MB."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import WORDNET_POS, write_pos_task
from safetensors.torch import load_file
from train_support import (
    PARITY_OPTIM,
    PARITY_TRAIN,
    PYTHON,
    assert_same_training,
    max_abs_diff,
    restore_threads,  # noqa: F401  (fixture)
    small_config,
    subprocess_env,
    write_config,
    write_number_task,
)

from t5kit import Generator, T5Model
from t5kit.adapters import CONFIG_NAME, WEIGHTS_NAME, LoRALinear, lora_layers, lora_parameters, trainable_parameters
from t5kit.builtin import model_path
from t5kit.data import Collator, get_task, load_tasks
from t5kit.errors import CheckpointError, ConfigError
from t5kit.evaluate import evaluate
from t5kit.kernels import installed, uninstall
from t5kit.model import save_model
from t5kit.train import TrainConfig, train
from t5kit.train.setup import build_model, build_optimizer, build_streams, build_tokenizer
from t5kit.train.state import BEST_NAME

ADAPTER = {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.1, "targets": ["q", "v", "wo"]}


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> Path:
    """A small trained-from-nothing base (the tiny preset, seed 0) saved as a checkpoint: an adapter needs one."""
    torch.manual_seed(0)
    overrides = small_config(Path("t"), Path("o"))["model"]["overrides"]
    model = T5Model.from_preset("tiny", **overrides, vocab_size=32128)
    return save_model(model, tmp_path_factory.mktemp("base") / "model")


def _config(tmp_path: Path, base: Path, **sections: dict) -> dict:
    tasks = write_number_task(tmp_path / "data")
    model = {"preset": None, "checkpoint": str(base), **sections.pop("model", {})}
    cfg = small_config(tasks, tmp_path / "run", model=model, **sections)
    cfg["adapter"] = dict(ADAPTER)
    return cfg


def test_the_adapter_section_is_checked_by_lora_config(tmp_path: Path, base_checkpoint: Path) -> None:
    cfg = _config(tmp_path, base_checkpoint)
    assert TrainConfig.from_dict(cfg).adapter.lora_config().targets == ("q", "v", "wo")
    assert TrainConfig.from_dict({**cfg, "adapter": None}).adapter is None  # null: full fine-tuning
    with pytest.raises(ConfigError, match=r"adapter: LoRA rank r must be a whole number >= 1, got 0"):
        TrainConfig.from_dict({**cfg, "adapter": {**ADAPTER, "r": 0}})
    with pytest.raises(ConfigError, match=r"adapter: unknown LoRA target 'qq'.*Did you mean 'q'"):
        TrainConfig.from_dict({**cfg, "adapter": {**ADAPTER, "targets": ["qq"]}})
    with pytest.raises(ConfigError, match=r"run.yaml: unknown key 'adapter.rank'.*Did you mean 'adapter.r'"):
        TrainConfig.from_dict({**cfg, "adapter": {"rank": 4}}, where="run.yaml")
    with pytest.raises(ConfigError, match="an adapter adapts trained weights, set model.checkpoint"):
        TrainConfig.from_dict({**cfg, "model": {"preset": "tiny"}})


@pytest.mark.usefixtures("restore_threads")
def test_only_the_adapter_trains_and_the_kernels_compute_the_plain_model(tmp_path: Path, base_checkpoint: Path):
    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(_config(tmp_path, base_checkpoint, optim={"weight_decay": 0.01}))
    tokenizer = build_tokenizer(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer)
    assert installed(model), "the trainer installs its CPU kernels with an adapter too"
    adapters = lora_parameters(model)
    layers = lora_layers(model)
    assert {n.rpartition(".")[2] for n in layers} == {"q", "v", "wo"} and len(adapters) == 2 * len(layers)
    optimizer = build_optimizer(cfg, model)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in adapters.values()}  # the frozen base is not even handed over
    assert all(group["weight_decay"] == 0.01 for group in optimizer.param_groups)  # LoRA A / B are matrices
    total = sum(p.numel() for p in model.parameters())
    assert trainable_parameters(model) == sum(p.numel() for p in adapters.values()) < total / 20

    # The same batch through the training kernels and through the plain modules: the adapted projections run the
    # module path inside the kernels, so loss and adapter gradients agree to float32 rounding of reordered sums.
    stream, _ = build_streams(cfg, tokenizer, "finetune")
    batch = Collator(tokenizer, max_inputs_length=32, max_targets_length=32)([next(stream) for _ in range(8)])
    with torch.no_grad():  # a trained-looking adapter (B = 0 at the start would hide a skipped adapter)
        for name, p in adapters.items():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)
    model.set_dropout(0.0)  # the kernels' dropout draws its masks differently; parity is about the arithmetic

    def loss_and_grads() -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        out = model(**batch)
        out.loss.backward()
        return float(out.loss.detach()), {n: p.grad.clone() for n, p in adapters.items()}

    fast_loss, fast_grads = loss_and_grads()
    uninstall(model)
    assert not installed(model)
    plain_loss, plain_grads = loss_and_grads()
    # measured: the same loss to 7 digits, gradients within 1.4e-6 of their norm (the kernels order sums
    # differently); 1e-5 relative on the loss is ~80 float32 ulps, 1e-4 on the gradients 70x the measured gap
    assert abs(fast_loss - plain_loss) <= 1e-5 * abs(plain_loss)
    worst = max(float((fast_grads[n] - plain_grads[n]).norm() / plain_grads[n].norm()) for n in adapters)
    print(f"kernels vs plain: loss {fast_loss:.6f} / {plain_loss:.6f}, worst relative gradient gap {worst:.2g}")
    assert worst <= 1e-4
    assert all(float(g.norm()) > 0 for g in plain_grads.values())  # every adapter matrix gets a gradient


@pytest.mark.usefixtures("restore_threads")
def test_an_adapter_checkpoint_holds_only_the_adapter_and_resumes_exactly(tmp_path: Path, base_checkpoint: Path):
    steps = 12
    cfg_dict = _config(tmp_path, base_checkpoint, model={"dropout": 0.1}, train={"steps": steps},
                       checkpoint={"every": 4, "keep_last": 2, "keep_best": True},
                       eval={"every": 4, "generate": False})
    cfg = TrainConfig.from_dict(cfg_dict)
    interrupted = train(cfg, out=str(tmp_path / "interrupted"), max_steps_this_run=4)
    assert interrupted.step == 4
    resumed = train(cfg, out=str(tmp_path / "interrupted"), resume=True)
    reference = train(cfg, out=str(tmp_path / "reference"))
    assert resumed.step == reference.step == steps

    last = resumed.checkpoint
    names = {p.name for p in last.iterdir()}
    assert {CONFIG_NAME, WEIGHTS_NAME, "spiece.model", "optimizer.pt", "rng.pt", "trainer_state.json"} <= names
    assert "model.safetensors" not in names and "config.json" not in names  # no base weights
    assert (tmp_path / "interrupted" / BEST_NAME / WEIGHTS_NAME).is_file()  # the best checkpoint is an adapter too
    saved = json.loads((last / CONFIG_NAME).read_text())
    assert (saved["peft_type"], saved["r"], saved["lora_alpha"]) == ("LORA", 4, 8)
    assert saved["base_model_name_or_path"] == str(base_checkpoint)
    adapter_bytes = (last / WEIGHTS_NAME).stat().st_size
    base_bytes = (base_checkpoint / "model.safetensors").stat().st_size
    print(f"adapter checkpoint {adapter_bytes} bytes, base weights {base_bytes} bytes")
    assert adapter_bytes < base_bytes / 20

    final, uninterrupted = load_file(str(last / WEIGHTS_NAME)), load_file(str(reference.checkpoint / WEIGHTS_NAME))
    diff = max_abs_diff(final, uninterrupted)
    # The same float32 operations in the same order on one thread (measured: 0); 1e-6 is a few ulps of these
    # weights. A resume that loses the adapter, the optimiser or the RNG state ends orders of magnitude away.
    print(f"adapter resume parity: max abs difference {diff:.3g}")
    assert diff <= 1e-6
    assert resumed.data_hash == reference.data_hash
    assert max(float(t.abs().max()) for n, t in final.items() if "lora_B" in n) > 1e-3  # the adapter did train
    # the base stayed as it was: the trained model's frozen weights are the checkpoint's
    base = load_file(str(base_checkpoint / "model.safetensors"))
    trained = resumed.model
    q = trained.encoder.layers[0].self_attn.q
    assert isinstance(q, LoRALinear)
    assert torch.equal(q.base.weight.detach(), base["encoder.block.0.layer.0.SelfAttention.q.weight"])

    # resuming with another adapter configuration is refused with the fix, not loaded into the wrong shapes
    other = TrainConfig.from_dict({**cfg_dict, "adapter": {**ADAPTER, "r": 8}})
    with pytest.raises(CheckpointError, match="resume with the config the run was started with"):
        train(other, out=str(tmp_path / "interrupted"), resume=True)


@pytest.mark.usefixtures("restore_threads")
def test_a_base_stored_in_int8_trains_the_adapter_and_resumes_exactly(tmp_path: Path, base_checkpoint: Path):
    """``adapter.base_storage: int8`` (t5kit.adapters.frozen): the frozen linear layers hold one byte a weight,
    the adapter trains, and the run resumes bit-identically."""
    with pytest.raises(ConfigError, match="adapter.base_storage must be one of fp32, bf16, int8"):
        TrainConfig.from_dict({**_config(tmp_path, base_checkpoint), "adapter": {**ADAPTER, "base_storage": "fp8"}})
    cfg_dict = _config(tmp_path, base_checkpoint, train={"steps": 8}, checkpoint={"every": 4, "keep_last": 2},
                       eval={"every": 4, "generate": False})
    cfg_dict["adapter"]["base_storage"] = "int8"
    cfg = TrainConfig.from_dict(cfg_dict)
    model = build_model(cfg, build_tokenizer(cfg))
    from t5kit.adapters.frozen import FrozenLinear

    stored = [m for m in model.modules() if isinstance(m, FrozenLinear)]
    assert stored and all(m.storage == "int8" for m in stored)
    assert not any(type(m) is torch.nn.Linear for m in model.encoder.modules())
    interrupted = train(cfg, out=str(tmp_path / "interrupted"), max_steps_this_run=4)
    resumed = train(cfg, out=str(tmp_path / "interrupted"), resume=True)
    reference = train(cfg, out=str(tmp_path / "reference"))
    assert interrupted.step == 4 and resumed.step == reference.step == 8
    diff = max_abs_diff(load_file(str(resumed.checkpoint / WEIGHTS_NAME)),
                        load_file(str(reference.checkpoint / WEIGHTS_NAME)))
    assert diff <= 1e-6  # as the float32 base's resume test: the same operations in the same order
    final = load_file(str(reference.checkpoint / WEIGHTS_NAME))
    assert max(float(t.abs().max()) for n, t in final.items() if "lora_B" in n) > 1e-3  # the adapter did train


# ---------------------------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def pos_task(tmp_path_factory) -> Path:
    return write_pos_task(tmp_path_factory.mktemp("wordnet"), {"train": 150, "test": 40})


@pytest.mark.usefixtures("restore_threads")
def test_a_lora_adapter_on_the_builtin_model_learns_parts_of_speech(pos_task: Path, tmp_path: Path) -> None:
    load_tasks(pos_task)
    task = get_task("pos_balanced")
    torch.set_num_threads(1)
    before = evaluate(Generator.from_pretrained(model_path()), task, "test", mode="rank", progress=False)
    cfg = TrainConfig.from_dict({
        "model": {"checkpoint": model_path()},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.05, "targets": ["q", "v"]},
        "data": {"tasks_file": str(pos_task), "train": "pos_balanced", "validation": ["pos_balanced"],
                 "max_inputs_length": 40, "max_targets_length": 4, "shuffle_buffer": 600},
        "optim": {"name": "adamw", "lr": 3e-3},
        "schedule": {"name": "constant", "warmup_steps": 10},
        "train": {"steps": STEPS, "batch_size": 16, "threads": 1, "seed": 0},
        "eval": {"every": 0, "max_examples": 32, "batch_size": 32, "max_new_tokens": 4, "generate": False},
        "checkpoint": {"every": 0, "keep_last": 1},
        "log": {"every": 40, "progress": False, "tensorboard": False, "plot": False},
        "out": str(tmp_path / "run"),
    })
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    model = result.model
    total = sum(p.numel() for p in model.parameters())
    fraction = trainable_parameters(model) / total
    checkpoint = result.checkpoint
    adapter_bytes = (checkpoint / WEIGHTS_NAME).stat().st_size
    base_bytes = sum(p.stat().st_size for p in Path(model_path()).glob("*.safetensors"))

    in_memory = evaluate(Generator(model.eval(), build_tokenizer(cfg)), task, "test", mode="rank", progress=False)
    loaded = Generator.from_pretrained(model_path(), adapter=checkpoint)
    after = evaluate(loaded, task, "test", mode="rank", progress=False)
    print(f"LoRA r=8 on q, v of the built-in model: {trainable_parameters(model)} trainable of {total} "
          f"({100 * fraction:.2f}%), adapter {adapter_bytes / 1e3:.0f} kB vs base {base_bytes / 1e6:.1f} MB; "
          f"wordnet pos rank accuracy {before.metrics['accuracy']:.1f} -> {after.metrics['accuracy']:.1f} "
          f"(majority 25) after {STEPS} steps ({seconds:.0f} s); final validation {result.last_eval}")
    assert fraction < 0.01
    assert adapter_bytes < base_bytes / 50
    assert not any(p.suffix == ".safetensors" and p.name != WEIGHTS_NAME for p in checkpoint.iterdir())
    # measured (torch 2.13 CPU, one thread): 23.1 -> 48.1 in 100 steps (53.8 after 120); the majority class 25
    assert after.metrics["accuracy"] >= 25 + 15
    assert after.metrics["accuracy"] >= before.metrics["accuracy"] + 15
    # the loaded generator merged the adapter (plain layers); the trained model runs it unmerged: same answers
    assert not any(isinstance(m, LoRALinear) for m in loaded.model.modules())
    assert [p["prediction"] for p in after.predictions] == [p["prediction"] for p in in_memory.predictions]
    assert set(p["prediction"] for p in after.predictions) <= set(WORDNET_POS)


STEPS = 100


@pytest.mark.usefixtures("restore_threads")
@pytest.mark.parametrize("base_storage", ["fp32", "int8"])
def test_two_ranks_train_the_same_adapter_as_one_process(tmp_path: Path, base_checkpoint: Path,
                                                         base_storage: str) -> None:
    """DDP over an adapted model (its frozen base out of the all-reduce; an int8 base held in buffers that DDP
    sends once) under torchrun on CPU (gloo): the same adapter as one process, within the rounding measured
    against a float64 run (train_support)."""
    cfg_dict = _config(tmp_path, base_checkpoint, model={"dropout": 0.0}, optim=PARITY_OPTIM,
                       train={"steps": 6, "batch_size": 8, "grad_accum": 2, **PARITY_TRAIN},
                       checkpoint={"every": 0}, eval={"max_examples": 4})
    cfg_dict["adapter"]["dropout"] = 0.0  # the ranks draw different masks: parity is about the gradient
    cfg_dict["adapter"]["base_storage"] = base_storage
    config_path = write_config(tmp_path / "run.yaml", cfg_dict)
    ddp_out = tmp_path / "ddp"
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "t5kit", "train",
           str(config_path), "--out", str(ddp_out)]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def adapter(checkpoint: Path) -> dict[str, torch.Tensor]:
        return load_file(str(checkpoint / WEIGHTS_NAME))

    def one_process(name: str, *overrides: str) -> dict[str, torch.Tensor]:
        return adapter(train(TrainConfig.load(config_path, list(overrides)), out=str(tmp_path / name)).checkpoint)

    assert_same_training(
        adapter(ddp_out / "step-00000006"),
        single=one_process("single"),
        reference=one_process("float64", "train.precision=fp64"),
        doubled=one_process("doubled", f"optim.lr={2 * PARITY_OPTIM['lr']}"),
        steps=6,
        what="lora ddp",
    )
