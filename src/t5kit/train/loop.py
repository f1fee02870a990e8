"""The step loop: fine-tuning on tasks/mixtures and span-corruption pre-training, one code path.

Everything built before the first step (tokenizer, model, streams, optimiser, schedule) comes from
:mod:`t5kit.train.setup`; validation goes through :func:`t5kit.evaluate.validate`; checkpoints through
:mod:`t5kit.train.state`. What is left here is the step and what happens around it.

A step is: set the learning rate from the schedule, draw ``grad_accum`` micro-batches from this rank's
shard of the stream, forward/backward each (bf16 autocast when asked), clip, step. Around it: validation
every ``eval.every`` steps and at the end (unless ``eval: null``), checkpoints every ``checkpoint.every``
steps and at the end, logs every ``log.every`` steps.

Exactness, and why it holds:
- the loss of a micro-batch is its summed token cross entropy divided by the number of target tokens
  in the whole global batch (all micro-batches, all ranks), times the world size that DDP divides by;
  so gradient accumulation and N ranks give the gradient of one big batch's token-mean loss;
- the stream is shuffled first and sharded after (every rank reads the same shuffled order and keeps
  every N-th example), so a global batch holds the same examples whatever the number of ranks;
- a checkpoint holds the optimiser, every RNG, every rank's stream position and the step, and the
  schedule is a function of the step: a resumed run draws the same batches and dropout masks as an
  uninterrupted one. ``data_hash`` (a CRC chained over every batch) proves the order in the logs.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from t5kit.errors import CheckpointError, ConfigError, DataError, T5kitError
from t5kit.evaluate import ValidationSet, validate
from t5kit.ids import LABEL_PAD_ID
from t5kit.io import write_text
from t5kit.model import T5Model
from t5kit.tokenizer import load_tokenizer
from t5kit.train import distributed as D
from t5kit.train import setup
from t5kit.train import state as S
from t5kit.train.config import EvalConfig, TrainConfig
from t5kit.train.logging import RunLogger, plot_run
from t5kit.train.setup import build_model, build_streams


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    best: dict[str, Any] | None = None
    last_eval: dict[str, Any] = field(default_factory=dict)
    data_hash: int = 0
    tokens_per_second: float = 0.0
    model: nn.Module | None = None  # the trained model as it ended (with its adapters, unmerged, in an adapter run)


# Keys of a packed batch (t5kit.data.Collator(pack=True)) that the model needs to keep examples apart.
PACKED_KEYS = ("decoder_input_ids", "encoder_segment_ids", "encoder_positions", "decoder_segment_ids",
               "decoder_positions")


def train(
    cfg: TrainConfig,
    out: str | None = None,
    resume: bool = False,
    objective: str = "finetune",
    max_steps_this_run: int | None = None,
) -> TrainResult:
    """Run (or resume) a training run described by ``cfg``; returns where it ended.

    ``objective``: "finetune" (tasks/mixtures) or "pretrain" (span corruption of ``data.source``).
    ``max_steps_this_run`` stops early after that many steps (for tests and time-boxed jobs); the
    schedule still runs to ``train.steps``.
    """
    cfg.validate()
    info = D.setup()
    try:
        return _Run(cfg, Path(out or cfg.out), resume, objective, info).run(max_steps_this_run)
    finally:
        D.teardown(info)


# ---------------------------------------------------------------------------------------------- helpers


def _autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a run's ``train.precision`` (None: no autocast), for its steps and its validation."""
    return torch.bfloat16 if precision == "bf16" else None


def _validation_options(e: EvalConfig, precision: str, device: torch.device) -> dict[str, Any]:
    """The options of :func:`t5kit.evaluate.validate` a run's ``eval`` and ``train.precision`` give."""
    return dict(batch_size=e.batch_size, max_new_tokens=e.max_new_tokens, autocast_dtype=_autocast_dtype(precision),
                device=device)


def _autocast(precision: str, device: torch.device) -> Any:
    dtype = _autocast_dtype(precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def _is_better(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value < best if metric.endswith("loss") else value > best


def _batch_hash(batch: dict[str, torch.Tensor], previous: int) -> int:
    h = zlib.crc32(batch["input_ids"].numpy().tobytes(), previous)
    return zlib.crc32(batch["labels"].numpy().tobytes(), h)


def _targets(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"] != LABEL_PAD_ID).sum())


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _run_directory(run_dir: Path, resume: bool, info: D.DistInfo) -> Path | None:
    """Check the run directory (writable, no leftovers) on rank 0; the checkpoint to resume from, on all."""
    error = resume_from = None
    if info.is_main:
        try:
            S.check_writable(run_dir)
            S.remove_partial(run_dir)
            if resume:
                resume_from = S.latest_checkpoint(run_dir)
        except T5kitError as err:
            error = str(err)
    error, resume_from = D.broadcast(info, (error, resume_from))
    if error:
        raise CheckpointError(error)
    if not resume and info.is_main and S.list_checkpoints(run_dir):
        warnings.warn(
            f"{run_dir} already holds checkpoints; pass --resume to continue that run (starting over "
            "and overwriting)",
            stacklevel=3,
        )
    return resume_from


# ---------------------------------------------------------------------------------------------- the run


class _Run:
    """One run's state between steps: what set-up built, the data position, the best metric, the logger."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool, objective: str, info: D.DistInfo) -> None:
        t = cfg.train
        self.cfg, self.run_dir, self.objective, self.info = cfg, run_dir, objective, info
        if t.threads:
            torch.set_num_threads(t.threads)
        per_rank = t.batch_size // t.grad_accum
        if per_rank % info.world_size:
            raise ConfigError(
                f"train.batch_size / train.grad_accum = {per_rank} examples per micro-step must be "
                f"divisible by the number of ranks ({info.world_size})"
            )
        self.micro = per_rank // info.world_size
        self.device = info.device
        if cfg.adapter is not None and info.enabled and t.distributed == "fsdp":
            raise ConfigError("an adapter run trains under DDP, not FSDP (its checkpoint gathers only full "
                              "weights): set train.distributed: ddp; an adapter's replica is its base plus "
                              "a few matrices")
        resume_from = _run_directory(run_dir, resume, info)

        # -- set-up (the order fixes what the seeded RNG draws: the initial weights come first)
        _seed_all(t.seed)
        self.tokenizer = setup.build_tokenizer(cfg)
        self.model = build_model(cfg, self.tokenizer, self.device)
        self.collator, self.train_collator = setup.build_collators(cfg, self.tokenizer, objective)
        self.stream, self.val_sets = build_streams(cfg, self.tokenizer, objective, info.rank, info.world_size)
        setup.check_best_metric(cfg, self.val_sets)
        self.start_step, self.data_hash, self.best, self.tokens_seen = 0, 0, None, 0
        trainer_state = optim_state = torch_rng = None
        if resume_from is not None:
            trainer_state, optim_state, torch_rng = S.load_checkpoint(Path(resume_from))
            S.load_weights(self.model, Path(resume_from))
            if int(trainer_state.get("world_size", 1)) != info.world_size:
                raise CheckpointError(
                    f"{resume_from} was written by {trainer_state.get('world_size')} ranks; resume "
                    f"with the same number (now {info.world_size})"
                )
            self.start_step = int(trainer_state["step"])
            self.data_hash = int(trainer_state["data_hash"][info.rank])
            self.best = trainer_state.get("best")
            self.tokens_seen = int(trainer_state.get("tokens_seen", 0))
            self.stream.load_state_dict(trainer_state["data"][info.rank])
        self.train_model = D.wrap(self.model, info, t.distributed)
        self.optimizer = setup.build_optimizer(cfg, self.train_model if t.distributed == "fsdp" else self.model)
        self.schedule = setup.build_schedule(cfg)
        if optim_state is not None:
            D.load_optimizer_state(self.train_model, self.optimizer, optim_state, t.distributed, info)
        if trainer_state is None:
            torch.manual_seed(t.seed + 1000 * info.rank)  # dropout masks differ across ranks
        else:
            S.restore_rng(trainer_state["rng"][info.rank], torch_rng[info.rank])
        self.forward_model = torch.compile(self.train_model) if t.compile else self.train_model
        self.params = [p for p in self.train_model.parameters() if p.requires_grad]

        self.logger = RunLogger(
            run_dir, t.steps, self.start_step, progress=cfg.log.progress, tensorboard=cfg.log.tensorboard,
            enabled=info.is_main,
        )
        if info.is_main:
            write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            if resume_from is not None:
                self.logger.write(f"resumed from {resume_from} at step {self.start_step}")

    # -------------------------------------------------------------------------------------- the step
    def step(self, step: int) -> tuple[float, int, int, torch.Tensor, float | None]:
        """One optimiser step; (lr, target tokens, tokens, summed token loss, grad norm) of this rank."""
        t, info = self.cfg.train, self.info
        lr = self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = []
        for _ in range(t.grad_accum):
            try:
                examples = [next(self.stream) for _ in range(self.micro)]
            except StopIteration:
                raise DataError("the training data ran out; it should repeat: is the train split empty?") from None
            batch = self.train_collator(examples)
            self.data_hash = _batch_hash(batch, self.data_hash)
            batches.append(batch)
        local_targets = sum(_targets(b) for b in batches)
        global_targets = D.all_sum(info, local_targets)
        if global_targets == 0:
            raise DataError(f"step {step}: the batch has no target tokens")
        scale = info.world_size / global_targets
        loss_sum = torch.zeros((), dtype=torch.float64)
        tokens = 0
        for i, batch in enumerate(batches):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            n = _targets(batch)
            sync = D.set_grad_sync(self.train_model, i == len(batches) - 1)
            with sync, _autocast(t.precision, self.device):
                packed = {k: batch[k] for k in PACKED_KEYS if k in batch}
                out = self.forward_model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    labels=batch["labels"],
                    **packed,
                )
                loss = out.loss * (n * scale)
            loss.backward()
            loss_sum += out.loss.detach().double().cpu() * n
            tokens += int(batch["attention_mask"].sum()) + n
        if t.distributed == "fsdp" and info.enabled:
            self.train_model.set_requires_gradient_sync(True)
        grad_norm = None
        if t.clip_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, t.clip_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr, local_targets, tokens, loss_sum, grad_norm

    # -------------------------------------------------------------------------------------- validation
    def evaluate(self, step: int) -> tuple[dict[str, Any], bool]:
        """Validate through t5kit.evaluate, log it on rank 0; (the record, whether the best metric improved)."""
        e, t, info = self.cfg.eval, self.cfg.train, self.info
        if e is None or not self.val_sets:
            return {}, False
        options = _validation_options(e, t.precision, self.device)
        if t.distributed == "fsdp" and info.enabled:  # sharded parameters: every rank takes part, loss only
            metrics, samples = validate(
                self.train_model, self.val_sets, self.collator, self.tokenizer, generate=False, **options
            )
        elif info.is_main:
            generate = e.generate and t.distributed != "fsdp"
            metrics, samples = validate(
                self.model, self.val_sets, self.collator, self.tokenizer, generate=generate, **options
            )
        else:
            metrics, samples = {}, []
        metrics = D.broadcast(info, metrics)
        record: dict[str, Any] = {}
        if info.is_main:
            record = {"kind": "eval", "step": step, **metrics}
            self.logger.log(record)
            shown = {k: round(v, 4) for k, v in metrics.items() if "/" not in k and k != "val_tokens"}
            self.logger.write(f"step {step}: {shown}")
            for line in samples:
                self.logger.write(line)
        value = metrics.get(e.best_metric)
        improved = value is not None and _is_better(value, self.best["value"] if self.best else None, e.best_metric)
        if improved:
            self.best = {"metric": e.best_metric, "value": value, "step": step}
        return record, improved

    # -------------------------------------------------------------------------------------- checkpoints
    def save(self, step: int, name: str) -> Path:
        """A complete checkpoint of every rank's state, written by rank 0 (collective)."""
        t, info = self.cfg.train, self.info
        model_state, opt_state = D.full_state(self.train_model, self.optimizer, t.distributed, info)
        py_np, torch_state = S.capture_rng()
        ranks = D.gather(
            info,
            {"data": self.stream.state_dict(), "rng": py_np, "torch": torch_state, "data_hash": self.data_hash},
        )
        error, path = None, self.run_dir / name
        if info.is_main:
            to_save = self.model
            if model_state is not None:  # FSDP: the gathered full weights go into a CPU copy of the model
                with torch.random.fork_rng(devices=[]):  # its initialisation must not move the run's RNG
                    to_save = T5Model(self.model.config).to(setup.WEIGHT_DTYPES[t.precision])
                to_save.load_state_dict(model_state)
            state = {
                "step": step,
                "world_size": info.world_size,
                "data": [r["data"] for r in ranks],
                "rng": [r["rng"] for r in ranks],
                "data_hash": [r["data_hash"] for r in ranks],
                "best": self.best,
                "tokens_seen": self.tokens_seen,
                "objective": self.objective,
                "config": self.cfg.to_dict(),
            }
            try:
                path = S.save_checkpoint(self.run_dir, name, to_save, opt_state, state, [r["torch"] for r in ranks],
                                         self.tokenizer, self.cfg.model.checkpoint)
                if name != S.BEST_NAME:
                    S.prune(self.run_dir, self.cfg.checkpoint.keep_last)
            except CheckpointError as err:
                error = str(err)
        error = D.broadcast(info, error)
        if error:
            raise CheckpointError(error)
        return path

    # -------------------------------------------------------------------------------------- the loop
    def run(self, max_steps_this_run: int | None) -> TrainResult:
        cfg, info, c = self.cfg, self.info, self.cfg.checkpoint
        total = cfg.train.steps
        every_eval = cfg.eval.every if cfg.eval is not None else 0
        stop = total if max_steps_this_run is None else min(total, self.start_step + max_steps_this_run)
        last_checkpoint: Path | None = None
        last_eval: dict[str, Any] = {}
        window_loss = torch.zeros((), dtype=torch.float64)
        window_targets, window_tokens, window_start, window_steps = 0, 0, time.perf_counter(), 0
        run_start, run_start_tokens = time.perf_counter(), self.tokens_seen
        step = self.start_step
        self.train_model.train()
        try:
            while step < stop:
                step += 1
                lr, targets, tokens, loss_sum, grad_norm = self.step(step)
                window_loss += loss_sum
                window_targets += targets
                window_tokens += tokens
                window_steps += 1

                is_last = step == stop
                if step % cfg.log.every == 0 or is_last:
                    loss_total = D.all_sum(info, float(window_loss))
                    all_targets = D.all_sum(info, window_targets)
                    all_tokens = D.all_sum(info, window_tokens)
                    self.tokens_seen += int(all_tokens)
                    now = time.perf_counter()
                    tps = all_tokens / max(now - window_start, 1e-9)
                    mean_loss = loss_total / max(all_targets, 1)
                    if not math.isfinite(mean_loss):
                        raise T5kitError(f"step {step}: the loss is {mean_loss}; lower optim.lr or enable clipping")
                    record = {
                        "kind": "train",
                        "step": step,
                        "loss": mean_loss,
                        "lr": lr,
                        "tokens_per_s": tps,
                        "tokens": self.tokens_seen,
                        "data_hash": self.data_hash,
                    }
                    if grad_norm is not None:
                        record["grad_norm"] = grad_norm
                    self.logger.log(record)
                    self.logger.progress(window_steps, loss=mean_loss, lr=lr, tok_s=tps)
                    window_loss.zero_()
                    window_targets, window_tokens, window_start, window_steps = 0, 0, now, 0
                if (every_eval and step % every_eval == 0) or (step == total and self.val_sets):
                    last_eval, improved = self.evaluate(step)
                    if improved and c.keep_best:
                        self.save(step, S.BEST_NAME)
                if (c.every and step % c.every == 0) or step == total or is_last:
                    last_checkpoint = self.save(step, S.checkpoint_name(step))
        finally:
            self.logger.close()
        elapsed = time.perf_counter() - run_start
        if info.is_main and cfg.log.plot and step == total:
            try:
                plot_run(self.run_dir)
            except ImportError:
                self.logger.write("matplotlib is not installed: no curves.png (pip install t5kit[plot])")
        return TrainResult(
            run_dir=self.run_dir,
            step=step,
            checkpoint=last_checkpoint,
            best=self.best,
            last_eval=last_eval,
            data_hash=self.data_hash,
            tokens_per_second=(self.tokens_seen - run_start_tokens) / max(elapsed, 1e-9),
            model=self.model,
        )


# ---------------------------------------------------------------------------------------------- kept names
# Importable from here since before the set-up moved to t5kit.train.setup and validation to t5kit.evaluate,
# for callers that build their own loop. Each is a thin call into its one implementation.


def set_dropout(model: nn.Module, rate: float) -> None:
    """Set every dropout of a T5Model: :meth:`T5Model.set_dropout`."""
    model.set_dropout(rate)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each encoder/decoder layer in the backward pass: :meth:`T5Model.set_activation_checkpointing`."""
    model.set_activation_checkpointing(True)


def greedy_decode(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int
) -> list[list[int]]:
    """Greedy generation (:meth:`T5Model.generate`); the generated ids of each row (start token dropped)."""
    out = model.generate(input_ids, attention_mask, max_new_tokens=max_new_tokens, warn_on_length_limit=False)
    return out.sequences[:, 1:].tolist()


def evaluate(
    model: nn.Module,
    val_sets: list[ValidationSet],
    collator: Any,
    tokenizer: Any,
    cfg: TrainConfig,
    device: torch.device,
    generate: bool = True,
) -> tuple[dict[str, float], list[str]]:
    """:func:`t5kit.evaluate.validate` with the run's ``eval`` options (the config's defaults with ``eval: null``)."""
    options = _validation_options(cfg.eval or EvalConfig(), cfg.train.precision, device)
    return validate(model, val_sets, collator, tokenizer, generate=generate, **options)


__all__ = [
    "TrainResult",
    "ValidationSet",
    "build_model",
    "build_streams",
    "enable_activation_checkpointing",
    "evaluate",
    "greedy_decode",
    "load_tokenizer",
    "set_dropout",
    "train",
]
