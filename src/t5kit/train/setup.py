"""What a training run builds before its first step: the tokenizer, the model, the data streams, the optimiser.

The step loop (:mod:`t5kit.train.loop`) calls these in order and then only steps; a user's own loop can call
them too (``build_model``, ``build_streams``, ``build_optimizer``) and get the trainer's exact set-up.

Who installs the CPU kernels (:func:`t5kit.kernels.install`): the trainer, in :func:`build_model`, not
``T5Model.train()``. ``train()`` / ``eval()`` flip the mode many times a run (every validation flips it twice)
while the swap of module classes is a structural change made once; and a user's own loop over ``T5Model``
keeps the plain model, the one its tests and its reading are about, unless it asks for the kernels. The model
is moved to its device first, because :func:`~t5kit.kernels.install` decides by device: on CUDA it leaves
the plain path (SDPA, autocast), since the kernels were measured on CPU only.

The vocabulary, settled before the first step: a model whose vocabulary is smaller than the tokenizer's fails
at its first forward, and one much larger (a preset's 32,128 ids for a tokenizer of 12,100) trains every step
and then fails at the first evaluation, when it emits an id the tokenizer cannot decode. So a preset, trained
from scratch, is *sized from the tokenizer*: its size rounded up to a multiple of 128, T5's convention (32,100
pieces -> 32,128 rows), which is also every T5 preset's size, so a run on the T5 vocabulary builds the same
model as before. Sizing rather than only checking because from scratch there is nothing to keep: an error would
ask the user to type a number the trainer can compute. A checkpoint, or an explicit
``model.overrides.vocab_size``, is *checked* against the same range (the tokenizer's size up to that multiple of
128), with the fix in the error. The few padding rows above the tokenizer's ids are no text: validation
(:func:`t5kit.evaluate.validate`) never decodes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from t5kit.adapters import add_lora
from t5kit.adapters.frozen import store_frozen_base
from t5kit.data import Collator, Mixture, Shard, get_mixture, get_task, list_mixtures, load_tasks
from t5kit.data.tasks import span_corruption_task
from t5kit.errors import ConfigError, DataError, closest_names
from t5kit.evaluate import ValidationSet, validation_set
from t5kit.kernels import install as install_kernels
from t5kit.model import T5Model
from t5kit.tokenizer import load_tokenizer
from t5kit.train.config import TrainConfig
from t5kit.train.optim import build_optimizer as _build_optimizer
from t5kit.train.schedule import learning_rate

# train.precision -> the dtype of the weights (bf16 trains float32 weights under bfloat16 autocast).
WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.float32, "fp64": torch.float64}
VOCAB_MULTIPLE = 128  # T5 pads its vocabulary to a multiple of 128 (32,100 -> 32,128; mT5 250,100 -> 250,112)


# ---------------------------------------------------------------------------------------------- tokenizer


def tokenizer_path(cfg: TrainConfig) -> str | None:
    """``data.tokenizer``, else the model checkpoint's own tokenizer; None when neither is set."""
    if cfg.data.tokenizer is not None:
        return cfg.resolve(cfg.data.tokenizer)
    if cfg.model.checkpoint is not None:
        return cfg.resolve(cfg.model.checkpoint)
    return None


def build_tokenizer(cfg: TrainConfig) -> Any:
    """The run's tokenizer, through the one loader (:func:`t5kit.tokenizer.load_tokenizer`)."""
    path = tokenizer_path(cfg)
    if path is None:
        raise ConfigError(
            "set data.tokenizer (a directory with spiece.model) or start from a model.checkpoint that holds one"
        )
    return load_tokenizer(path)


# ---------------------------------------------------------------------------------------------- model


def padded_vocab_size(tokenizer_size: int) -> int:
    """The model vocabulary for a tokenizer of ``tokenizer_size`` ids: rounded up to a multiple of 128."""
    return -(-tokenizer_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def check_vocabulary(cfg: TrainConfig, vocab_size: int, tokenizer_size: int) -> None:
    """A ConfigError, before any step, unless ``tokenizer_size <= vocab_size <= padded_vocab_size(...)``."""
    largest = padded_vocab_size(tokenizer_size)
    if tokenizer_size <= vocab_size <= largest:
        return
    problem = (
        f"the model's vocabulary ({vocab_size} ids) does not fit the tokenizer's ({tokenizer_size} ids): "
        + ("the tokenizer gives ids the model has no embedding for" if vocab_size < tokenizer_size else
           "the model can emit ids the tokenizer cannot decode, and evaluation would fail")
    )
    if cfg.model.checkpoint is not None:
        fix = (
            f"train {cfg.model.checkpoint} with the tokenizer it was trained with (remove data.tokenizer to use "
            "the checkpoint's own)"
        )
    else:
        fix = (
            "remove model.overrides.vocab_size (a preset is sized from the tokenizer) or set it between "
            f"{tokenizer_size} and {largest}"
        )
    raise ConfigError(f"{problem}; {fix}")


def build_model(cfg: TrainConfig, tokenizer: Any = None, device: torch.device | str | None = None) -> nn.Module:
    """The model a run starts from, in training mode, on ``device``, with the CPU kernels installed.

    From ``model.checkpoint`` (its weights) or ``model.preset`` (initialised from the current torch seed,
    sized from ``tokenizer`` unless ``model.overrides`` sets ``vocab_size``); ``model.dropout`` overrides the
    dropout rate; the weights are float32 (float64 with ``train.precision: fp64``). With a ``tokenizer``, the
    vocabulary is checked against it (module doc). With an ``adapter`` section, the targeted projections get
    LoRA adapters (:func:`t5kit.adapters.add_lora`) and every other weight is frozen, so the optimiser (which
    takes the parameters that require a gradient) trains only the adapters.
    """
    m = cfg.model
    if m.checkpoint is not None:
        model = T5Model.from_pretrained(cfg.resolve(m.checkpoint), dtype=torch.float32)
    else:
        overrides = dict(m.overrides)
        if tokenizer is not None and "vocab_size" not in overrides:
            overrides["vocab_size"] = padded_vocab_size(len(tokenizer))
        try:
            model = T5Model.from_preset(m.preset, **overrides)
        except TypeError as err:
            raise ConfigError(f"model.overrides: {err}") from None
    if tokenizer is not None:
        check_vocabulary(cfg, model.config.vocab_size, len(tokenizer))
    if m.dropout is not None:
        model.set_dropout(m.dropout)
    if cfg.adapter is not None:
        # Before the kernels: they keep a LoRA-wrapped projection on the module path (t5kit.adapters.lora).
        add_lora(model, cfg.adapter.lora_config())
    model.to(device=device, dtype=WEIGHT_DTYPES[cfg.train.precision])
    if cfg.adapter is not None:  # after the cast above, which would widen a compact base again
        store_frozen_base(model, cfg.adapter.base_storage)
    if cfg.train.activation_checkpointing:
        model.set_activation_checkpointing(True)
    return install_kernels(model).train()


# ---------------------------------------------------------------------------------------------- data


def build_collators(cfg: TrainConfig, tokenizer: Any, objective: str) -> tuple[Collator, Collator]:
    """(the validation collator: dynamic padding; the training collator: packed when ``data.pack``)."""
    d = cfg.data
    collator = Collator(tokenizer, max_inputs_length=d.max_inputs_length, max_targets_length=d.max_targets_length)
    if not (d.pack and objective == "finetune"):
        return collator, collator
    packed = Collator(
        tokenizer,
        max_inputs_length=d.max_inputs_length,
        max_targets_length=d.max_targets_length,
        pack=True,
        inputs_length=d.max_inputs_length,
        targets_length=d.max_targets_length,
    )
    return collator, packed


def _span_corruption(cfg: TrainConfig, name: str, source: str) -> Any:
    d = cfg.data
    return span_corruption_task(
        name,
        cfg.resolve(source),
        text_field=d.text_field,
        inputs_length=d.inputs_length,
        noise_density=d.noise_density,
        mean_noise_span_length=d.mean_noise_span_length,
    )


def build_streams(
    cfg: TrainConfig, tokenizer: Any, objective: str, rank: int = 0, world_size: int = 1
) -> tuple[Any, list[ValidationSet]]:
    """(this rank's training stream, the validation sets; none with ``eval: null``).

    The stream is shuffled first and sharded after: every rank reads the same shuffled order and keeps every
    N-th example, so a global batch holds the same examples whatever the number of ranks.
    """
    d, seed = cfg.data, cfg.train.seed
    if objective == "pretrain":
        if d.source is None:
            raise ConfigError("pretrain needs data.source: raw text files (a path, directory or glob)")
        stream = _span_corruption(cfg, "pretrain", d.source).stream(
            "train", tokenizer=tokenizer, shuffle_buffer=d.shuffle_buffer, seed=seed, repeat=True
        )
        val_tasks = [_span_corruption(cfg, "pretrain_validation", d.validation_source)] if d.validation_source else []
        split = "train"  # a span-corruption source is one set of files: the validation source is all of it
    else:
        if d.tasks_file is None or d.train is None:
            raise ConfigError(
                "fine-tuning needs data.tasks_file (tasks YAML, e.g. from `t5kit data import`) "
                "and data.train (a task or mixture name in it)"
            )
        load_tasks(cfg.resolve(d.tasks_file))
        if d.train in list_mixtures():
            mixture: Mixture = get_mixture(d.train)
            stream = mixture.stream(d.train_split, seed=seed, tokenizer=tokenizer, shuffle_buffer=d.shuffle_buffer)
            default_val = [t.name for t in mixture.resolved_tasks()]
        else:
            task = get_task(d.train)
            stream = task.stream(
                d.train_split, tokenizer=tokenizer, shuffle_buffer=d.shuffle_buffer, seed=seed, repeat=True
            )
            default_val = [task.name]
        val_tasks = [get_task(n) for n in (d.validation or default_val)] if cfg.eval is not None else []
        split = d.validation_split
    if world_size > 1:
        stream = Shard(stream, rank, world_size)
    if cfg.eval is None:
        return stream, []
    val_sets = []
    for task in val_tasks:
        try:
            val_sets.append(validation_set(task, split, tokenizer, cfg.eval.max_examples))
        except DataError as err:
            raise ConfigError(
                f"validation task {task.name!r}: {err} Evaluate other tasks (data.validation), choose another "
                "split (data.validation_split), or train without evaluation: eval: null (--set eval=null)"
            ) from None
    return stream, val_sets


def check_best_metric(cfg: TrainConfig, val_sets: list[ValidationSet]) -> None:
    """``eval.best_metric`` must be a validation loss or a metric some validation task computes."""
    e = cfg.eval
    if e is None or e.best_metric == "val_loss" or e.best_metric.endswith("val_loss"):
        return
    known = sorted({m for vs in val_sets for m in vs.metrics})
    if e.best_metric not in known:
        raise ConfigError(
            f"eval.best_metric {e.best_metric!r} is not computed by the validation tasks; choose "
            f"val_loss or one of {known}.{closest_names(e.best_metric, known)}"
        )


# ---------------------------------------------------------------------------------------------- optimiser


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser of ``optim`` over ``model``'s trainable parameters (the FSDP-wrapped model when sharded).

    With an adapter, those are the LoRA matrices alone; ``optim.weight_decay`` applies to them (they are
    matrices, :func:`t5kit.train.optim.param_groups`), pulling the adapter's product towards zero, i.e. the
    model towards its base, as peft under the Hugging Face Trainer does; the frozen base is never decayed.
    """
    o = cfg.optim
    return _build_optimizer(
        model, o.name, o.lr, o.weight_decay, tuple(o.betas), o.eps, o.scale_parameter, o.implementation
    )


def build_schedule(cfg: TrainConfig) -> Callable[[int], float]:
    """The learning rate at a step: a function of the step alone, so a resumed run continues it exactly."""
    s, lr, total = cfg.schedule, cfg.optim.lr, cfg.train.steps
    return lambda step: learning_rate(lr, s.name, step, total, s.warmup_steps, s.final_lr_ratio)


__all__ = [
    "VOCAB_MULTIPLE",
    "WEIGHT_DTYPES",
    "build_collators",
    "build_model",
    "build_optimizer",
    "build_schedule",
    "build_streams",
    "build_tokenizer",
    "check_best_metric",
    "check_vocabulary",
    "padded_vocab_size",
    "tokenizer_path",
]
