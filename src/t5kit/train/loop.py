"""The training loop: fine-tuning on tasks/mixtures and span-corruption pre-training, one code path.

A step is: set the learning rate from the schedule, draw ``grad_accum`` micro-batches from this rank's
shard of the stream, forward/backward each (bf16 autocast when asked), clip, step. Around it: evaluation
every N steps (validation loss, greedy decoding and the tasks' metrics), checkpoints every N steps, logs.

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
from torch import nn

from t5kit.errors import CheckpointError, ConfigError, DataError, T5kitError
from t5kit.kernels import install as install_kernels
from t5kit.train import distributed as D
from t5kit.train import state as S
from t5kit.train.config import TrainConfig
from t5kit.train.logging import RunLogger, plot_run
from t5kit.train.optim import build_optimizer
from t5kit.train.schedule import learning_rate


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    best: dict[str, Any] | None = None
    last_eval: dict[str, Any] = field(default_factory=dict)
    data_hash: int = 0
    tokens_per_second: float = 0.0


@dataclass
class ValidationSet:
    name: str
    examples: list[dict[str, Any]]
    metrics: list[str]
    postprocess: Any = None


# ---------------------------------------------------------------------------------------------- building

# Keys of a packed batch (t5kit.data.Collator(pack=True)) that the model needs to keep examples apart.
PACKED_KEYS = ("decoder_input_ids", "encoder_segment_ids", "encoder_positions", "decoder_segment_ids",
               "decoder_positions")


def load_tokenizer(path: str | None) -> Any:
    """The tokenizer for a run (kept behind one function: the tokenizer module is another engineer's)."""
    from t5kit.tokenizer import Tokenizer

    if path is None:
        raise ConfigError(
            "set data.tokenizer (a directory with spiece.model) or start from a model.checkpoint "
            "that holds one"
        )
    return Tokenizer.from_pretrained(path)


def greedy_decode(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int
) -> list[list[int]]:
    """Greedy generation through ``t5kit.generate``; the generated ids of each row (start token dropped)."""
    from t5kit.generate import generate

    out = generate(
        model, input_ids, attention_mask, max_new_tokens=max_new_tokens, warn_on_length_limit=False
    )
    return out.sequences[:, 1:].tolist()


def set_dropout(model: nn.Module, rate: float) -> None:
    """Set every dropout of a T5Model (kept for callers of ``t5kit.train.set_dropout``)."""
    model.set_dropout(rate)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each encoder/decoder layer in the backward pass instead of keeping its activations."""
    model.set_activation_checkpointing(True)


def build_model(cfg: TrainConfig) -> nn.Module:
    from t5kit.model import T5Model

    m = cfg.model
    if m.checkpoint is not None:
        model = T5Model.from_pretrained(cfg.resolve(m.checkpoint), dtype=torch.float32)
    else:
        try:
            model = T5Model.from_preset(m.preset, **m.overrides)
        except TypeError as err:
            raise ConfigError(f"model.overrides: {err}") from None
    if m.dropout is not None:
        set_dropout(model, m.dropout)
    return install_kernels(model.float()).train()


def _tokenizer_path(cfg: TrainConfig) -> str | None:
    if cfg.data.tokenizer is not None:
        return cfg.resolve(cfg.data.tokenizer)
    if cfg.model.checkpoint is not None:
        return cfg.resolve(cfg.model.checkpoint)
    return None


def build_streams(
    cfg: TrainConfig, tokenizer: Any, objective: str, rank: int, world_size: int
) -> tuple[Any, list[ValidationSet]]:
    """(this rank's training stream, validation sets). Shuffled first, sharded after (see module doc)."""
    from t5kit.data import Mixture, Shard, get_mixture, get_task, list_mixtures, load_tasks
    from t5kit.data.tasks import span_corruption_task

    d, seed = cfg.data, cfg.train.seed
    if objective == "pretrain":
        if d.source is None:
            raise ConfigError("pretrain needs data.source: raw text files (a path, directory or glob)")

        def sc_task(name: str, source: str) -> Any:
            return span_corruption_task(
                name,
                cfg.resolve(source),
                text_field=d.text_field,
                inputs_length=d.inputs_length,
                noise_density=d.noise_density,
                mean_noise_span_length=d.mean_noise_span_length,
            )

        train_task = sc_task("pretrain", d.source)
        stream = train_task.stream(
            "train", tokenizer=tokenizer, shuffle_buffer=d.shuffle_buffer, seed=seed, repeat=True
        )
        val_tasks = [sc_task("pretrain_validation", d.validation_source)] if d.validation_source else []
        splits = "train"
    else:
        if d.tasks_file is None or d.train is None:
            raise ConfigError(
                "fine-tuning needs data.tasks_file (tasks YAML, e.g. from `t5kit data import`) "
                "and data.train (a task or mixture name in it)"
            )
        load_tasks(cfg.resolve(d.tasks_file))
        if d.train in list_mixtures():
            mixture: Mixture = get_mixture(d.train)
            stream = mixture.stream(
                d.train_split, seed=seed, tokenizer=tokenizer, shuffle_buffer=d.shuffle_buffer
            )
            default_val = [t.name for t in mixture.resolved_tasks()]
        else:
            task = get_task(d.train)
            stream = task.stream(
                d.train_split, tokenizer=tokenizer, shuffle_buffer=d.shuffle_buffer, seed=seed, repeat=True
            )
            default_val = [task.name]
        val_tasks = [get_task(n) for n in (d.validation or default_val)]
        splits = d.validation_split
    if world_size > 1:
        stream = Shard(stream, rank, world_size)
    from t5kit.metrics import METRICS

    val_sets = []
    for task in val_tasks:
        split = "train" if objective == "pretrain" else splits
        try:
            examples = task.stream(split, tokenizer=tokenizer).take(cfg.eval.max_examples)
        except DataError as err:
            raise DataError(f"validation task {task.name!r}: {err}") from None
        known = [m for m in task.metrics if m in METRICS]
        unknown = [m for m in task.metrics if m not in METRICS]
        if unknown:
            warnings.warn(
                f"task {task.name!r}: metrics {unknown} are not t5kit metrics; skipped", stacklevel=2
            )
        val_sets.append(ValidationSet(task.name, examples, known, task.postprocess))
    return stream, val_sets


# ---------------------------------------------------------------------------------------------- evaluation


def _autocast(precision: str, device: torch.device) -> Any:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    val_sets: list[ValidationSet],
    collator: Any,
    tokenizer: Any,
    cfg: TrainConfig,
    device: torch.device,
    generate: bool = True,
) -> tuple[dict[str, float], list[str]]:
    """Validation loss (token mean) per task and overall; with ``generate``, greedy outputs and metrics.

    Returns (metrics, a few "input => prediction | reference" sample lines for the log).
    """
    from t5kit.metrics import compute_metrics

    was_training = model.training
    model.eval()
    results: dict[str, float] = {}
    samples: list[str] = []
    total_loss, total_tokens = 0.0, 0
    per_metric: dict[str, list[float]] = {}
    try:
        for vs in val_sets:
            loss_sum, tokens = 0.0, 0
            predictions: list[str] = []
            for i in range(0, len(vs.examples), cfg.eval.batch_size):
                chunk = vs.examples[i : i + cfg.eval.batch_size]
                batch = {k: v.to(device) for k, v in collator(chunk).items()}
                n = int((batch["labels"] != -100).sum())
                with _autocast(cfg.train.precision, device):
                    out = model(
                        input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"],
                        labels=batch["labels"],
                    )
                loss_sum += float(out.loss) * n
                tokens += n
                if generate and vs.metrics:
                    with _autocast(cfg.train.precision, device):
                        ids = greedy_decode(
                            model, batch["input_ids"], batch["attention_mask"], cfg.eval.max_new_tokens
                        )
                    predictions.extend(tokenizer.batch_decode(ids, skip_special_tokens=True))
            if tokens:
                results[f"{vs.name}/val_loss"] = loss_sum / tokens
            total_loss += loss_sum
            total_tokens += tokens
            if predictions:
                references = [ex["targets"] for ex in vs.examples]
                scores = compute_metrics(vs.metrics, predictions, references)
                for name, value in scores.items():
                    results[f"{vs.name}/{name}"] = float(value)
                    per_metric.setdefault(name, []).append(float(value))
                for ex, pred in list(zip(vs.examples, predictions))[:3]:
                    samples.append(
                        f"  {str(ex['inputs'])[:60]!r} => {pred[:60]!r} | {str(ex['targets'])[:60]!r}"
                    )
    finally:
        model.train(was_training)
    if total_tokens:
        results["val_loss"] = total_loss / total_tokens
        results["val_tokens"] = total_tokens
    for name, values in per_metric.items():
        results[name] = sum(values) / len(values)
    return results, samples


def _is_better(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value < best if metric.endswith("loss") else value > best


# ---------------------------------------------------------------------------------------------- the loop


def _batch_hash(batch: dict[str, torch.Tensor], previous: int) -> int:
    h = zlib.crc32(batch["input_ids"].numpy().tobytes(), previous)
    return zlib.crc32(batch["labels"].numpy().tobytes(), h)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
        return _train(cfg, Path(out or cfg.out), resume, objective, info, max_steps_this_run)
    finally:
        D.teardown(info)


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool,
    objective: str,
    info: D.DistInfo,
    max_steps_this_run: int | None,
) -> TrainResult:
    t, e, c = cfg.train, cfg.eval, cfg.checkpoint
    if t.threads:
        torch.set_num_threads(t.threads)
    per_rank = t.batch_size // t.grad_accum
    if per_rank % info.world_size:
        raise ConfigError(
            f"train.batch_size / train.grad_accum = {per_rank} examples per micro-step must be "
            f"divisible by the number of ranks ({info.world_size})"
        )
    micro = per_rank // info.world_size
    device = info.device

    # -- the run directory: writable, no leftovers, a checkpoint to resume from (rank 0 checks, all agree)
    error = None
    resume_from = None
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
            stacklevel=2,
        )

    # -- model, data, optimiser
    _seed_all(t.seed)
    tokenizer = load_tokenizer(_tokenizer_path(cfg))
    model = build_model(cfg)
    if t.activation_checkpointing:
        enable_activation_checkpointing(model)
    from t5kit.data import Collator

    collator = Collator(
        tokenizer,
        max_inputs_length=cfg.data.max_inputs_length,
        max_targets_length=cfg.data.max_targets_length,
    )
    train_collator = collator
    if cfg.data.pack and objective == "finetune":
        train_collator = Collator(
            tokenizer,
            max_inputs_length=cfg.data.max_inputs_length,
            max_targets_length=cfg.data.max_targets_length,
            pack=True,
            inputs_length=cfg.data.max_inputs_length,
            targets_length=cfg.data.max_targets_length,
        )
    stream, val_sets = build_streams(cfg, tokenizer, objective, info.rank, info.world_size)
    if e.best_metric != "val_loss" and not e.best_metric.endswith("val_loss"):
        known = sorted({m for vs in val_sets for m in vs.metrics})
        if e.best_metric not in known:
            from t5kit.errors import closest_names

            raise ConfigError(
                f"eval.best_metric {e.best_metric!r} is not computed by the validation tasks; choose "
                f"val_loss or one of {known}.{closest_names(e.best_metric, known)}"
            )

    start_step, data_hash, best, tokens_seen = 0, 0, None, 0
    trainer_state = optim_state = torch_rng = None
    if resume_from is not None:
        trainer_state, optim_state, torch_rng = S.load_checkpoint(Path(resume_from))
        S.load_weights(model, Path(resume_from))
        if int(trainer_state.get("world_size", 1)) != info.world_size:
            raise CheckpointError(
                f"{resume_from} was written by {trainer_state.get('world_size')} ranks; resume "
                f"with the same number (now {info.world_size})"
            )
        start_step = int(trainer_state["step"])
        data_hash = int(trainer_state["data_hash"][info.rank])
        best = trainer_state.get("best")
        tokens_seen = int(trainer_state.get("tokens_seen", 0))
        stream.load_state_dict(trainer_state["data"][info.rank])

    model.to(device)
    train_model = D.wrap(model, info, t.distributed)
    optimizer = build_optimizer(
        train_model if t.distributed == "fsdp" else model,
        cfg.optim.name,
        cfg.optim.lr,
        cfg.optim.weight_decay,
        tuple(cfg.optim.betas),
        cfg.optim.eps,
        cfg.optim.scale_parameter,
        cfg.optim.implementation,
    )
    if optim_state is not None:
        D.load_optimizer_state(train_model, optimizer, optim_state, t.distributed, info)
    if resume_from is None:
        torch.manual_seed(t.seed + 1000 * info.rank)  # dropout masks differ across ranks
    else:
        S.restore_rng(trainer_state["rng"][info.rank], torch_rng[info.rank])
    forward_model = torch.compile(train_model) if t.compile else train_model

    logger = RunLogger(
        run_dir,
        t.steps,
        start_step,
        progress=cfg.log.progress,
        tensorboard=cfg.log.tensorboard,
        enabled=info.is_main,
    )
    if info.is_main:
        import yaml

        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
        if resume_from is not None:
            logger.write(f"resumed from {resume_from} at step {start_step}")
    generate_ok = e.generate and t.distributed != "fsdp"

    def run_eval(step: int) -> dict[str, Any]:
        nonlocal best
        if not val_sets:
            return {}
        record: dict[str, Any] = {}
        if t.distributed == "fsdp" and info.enabled:  # sharded parameters: every rank takes part in forward
            metrics, samples = evaluate(
                train_model, val_sets, collator, tokenizer, cfg, device, generate=False
            )
        elif info.is_main:
            metrics, samples = evaluate(
                model, val_sets, collator, tokenizer, cfg, device, generate=generate_ok
            )
        else:
            metrics, samples = {}, []
        metrics = D.broadcast(info, metrics)
        if info.is_main:
            record = {"kind": "eval", "step": step, **metrics}
            logger.log(record)
            shown = {k: round(v, 4) for k, v in metrics.items() if "/" not in k and k != "val_tokens"}
            logger.write(f"step {step}: {shown}")
            for line in samples:
                logger.write(line)
        value = metrics.get(e.best_metric)
        improved = value is not None and _is_better(value, best["value"] if best else None, e.best_metric)
        if improved:
            best = {"metric": e.best_metric, "value": value, "step": step}
        record["_improved"] = improved
        return record

    def save(step: int, name: str) -> Path:
        model_state, opt_state = D.full_state(train_model, optimizer, t.distributed, info)
        py_np, torch_state = S.capture_rng()
        ranks = D.gather(
            info, {"data": stream.state_dict(), "rng": py_np, "torch": torch_state, "data_hash": data_hash}
        )
        error, path = None, run_dir / name
        if info.is_main:
            to_save = model
            if model_state is not None:  # FSDP: the gathered full weights go into a CPU copy of the model
                to_save = build_model(cfg)
                to_save.load_state_dict(model_state)
            state = {
                "step": step,
                "world_size": info.world_size,
                "data": [r["data"] for r in ranks],
                "rng": [r["rng"] for r in ranks],
                "data_hash": [r["data_hash"] for r in ranks],
                "best": best,
                "tokens_seen": tokens_seen,
                "objective": objective,
                "config": cfg.to_dict(),
            }
            try:
                path = S.save_checkpoint(
                    run_dir, name, to_save, opt_state, state, [r["torch"] for r in ranks]
                )
                if name != S.BEST_NAME:
                    S.prune(run_dir, c.keep_last)
            except CheckpointError as err:
                error = str(err)
        error = D.broadcast(info, error)
        if error:
            raise CheckpointError(error)
        return path

    # -- steps
    total = t.steps
    stop = total if max_steps_this_run is None else min(total, start_step + max_steps_this_run)
    last_checkpoint: Path | None = None
    last_eval: dict[str, Any] = {}
    window_loss = torch.zeros((), dtype=torch.float64)
    window_targets, window_tokens, window_start, window_steps = 0, 0, time.perf_counter(), 0
    run_start, run_start_tokens = time.perf_counter(), tokens_seen
    params = [p for p in train_model.parameters() if p.requires_grad]
    step = start_step
    train_model.train()
    try:
        while step < stop:
            step += 1
            lr = learning_rate(
                cfg.optim.lr,
                cfg.schedule.name,
                step,
                total,
                cfg.schedule.warmup_steps,
                cfg.schedule.final_lr_ratio,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = []
            for _ in range(t.grad_accum):
                try:
                    examples = [next(stream) for _ in range(micro)]
                except StopIteration:
                    raise DataError(
                        "the training data ran out; it should repeat: is the train split empty?"
                    ) from None
                batch = train_collator(examples)
                data_hash = _batch_hash(batch, data_hash)
                batches.append(batch)
            local_targets = sum(int((b["labels"] != -100).sum()) for b in batches)
            global_targets = D.all_sum(info, local_targets)
            if global_targets == 0:
                raise DataError(f"step {step}: the batch has no target tokens")
            scale = info.world_size / global_targets
            for i, batch in enumerate(batches):
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                n = int((batch["labels"] != -100).sum())
                sync = D.set_grad_sync(train_model, i == len(batches) - 1)
                with sync, _autocast(t.precision, device):
                    packed = {k: batch[k] for k in PACKED_KEYS if k in batch}
                    out = forward_model(
                        input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"],
                        labels=batch["labels"],
                        **packed,
                    )
                    loss = out.loss * (n * scale)
                loss.backward()
                window_loss += out.loss.detach().double().cpu() * n
                window_tokens += int(batch["attention_mask"].sum()) + n
            if t.distributed == "fsdp" and info.enabled:
                train_model.set_requires_gradient_sync(True)
            grad_norm = None
            if t.clip_grad_norm > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, t.clip_grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            window_targets += local_targets
            window_steps += 1

            is_last = step == stop
            if step % cfg.log.every == 0 or is_last:
                loss_sum = D.all_sum(info, float(window_loss))
                targets = D.all_sum(info, window_targets)
                tokens = D.all_sum(info, window_tokens)
                tokens_seen += int(tokens)
                now = time.perf_counter()
                tps = tokens / max(now - window_start, 1e-9)
                mean_loss = loss_sum / max(targets, 1)
                if not math.isfinite(mean_loss):
                    raise T5kitError(
                        f"step {step}: the loss is {mean_loss}; lower optim.lr or enable clipping"
                    )
                record = {
                    "kind": "train",
                    "step": step,
                    "loss": mean_loss,
                    "lr": lr,
                    "tokens_per_s": tps,
                    "tokens": tokens_seen,
                    "data_hash": data_hash,
                }
                if grad_norm is not None:
                    record["grad_norm"] = grad_norm
                logger.log(record)
                logger.progress(window_steps, loss=mean_loss, lr=lr, tok_s=tps)
                window_loss.zero_()
                window_targets, window_tokens, window_start, window_steps = 0, 0, now, 0
            if (e.every and step % e.every == 0) or (step == total and val_sets):
                last_eval = run_eval(step)
                if last_eval.pop("_improved", False) and c.keep_best:
                    save(step, S.BEST_NAME)
            if (c.every and step % c.every == 0) or step == total or is_last:
                last_checkpoint = save(step, S.checkpoint_name(step))
    finally:
        logger.close()
    elapsed = time.perf_counter() - run_start
    if info.is_main and cfg.log.plot and step == total:
        try:
            plot_run(run_dir)
        except ImportError:
            logger.write("matplotlib is not installed: no curves.png (pip install t5kit[plot])")
    return TrainResult(
        run_dir=run_dir,
        step=step,
        checkpoint=last_checkpoint,
        best=best,
        last_eval=last_eval,
        data_hash=data_hash,
        tokens_per_second=(tokens_seen - run_start_tokens) / max(elapsed, 1e-9),
    )


# Kept importable for callers that build their own loop.
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
