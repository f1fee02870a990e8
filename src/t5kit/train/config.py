"""TrainConfig: one YAML file (plus ``--set a.b=value`` overrides) describes a whole training run.

Why dataclasses and strict checking: a long run that silently ignores a misspelt key (``optim.lr_rate``)
wastes hours, so every key is checked against the dataclass fields, an unknown one suggests the close
name, and values are coerced to the declared type (``--set train.steps=100`` arrives as text) and
range-checked before anything is built.

Sections: ``model`` (preset or checkpoint), ``adapter`` (a LoRA adapter to train instead of every weight),
``data`` (tokenizer, tasks, lengths), ``optim``, ``schedule``, ``train`` (steps, batch, precision, distributed),
``eval``, ``checkpoint``, ``log``.

Adapters: ``adapter: {kind: lora, r: 8, alpha: 16, dropout: 0.05, targets: [q, v]}`` wraps those projections
of the built model in LoRA adapters (:func:`t5kit.adapters.add_lora`) and trains only them; absent or
``adapter: null`` (the default) fine-tunes every weight. The values are checked by
:class:`t5kit.adapters.LoRAConfig` (one set of rules for the trainer, the library and peft files), and its
defaults are the section's. An adapter needs ``model.checkpoint``: its checkpoints hold only the adapter, and
a preset's random base weights would be saved nowhere. ``adapter.base_storage: bf16`` or ``int8`` holds the
frozen base's linear layers in 2 or 1 bytes a weight (float32 arithmetic; :mod:`t5kit.adapters.frozen`).

Evaluation: by default the run evaluates its validation tasks (``data.validation``, else the training
tasks) on ``data.validation_split`` every ``eval.every`` steps and at the end. To train without evaluation
(a task with no validation split, or a time-boxed job), set ``eval: null`` in the YAML or pass
``--set eval=null``: no validation split is read, no ``best`` checkpoint is kept. (``eval.every: 0`` keeps
its meaning: evaluate only at the end.)
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from t5kit.adapters import LoRAConfig
from t5kit.adapters.frozen import check_base_storage
from t5kit.errors import ConfigError, closest_names

OPTIMIZERS = ("adamw", "adafactor", "adamw_rms", "sgd")
SCHEDULES = ("constant", "inverse_sqrt", "linear", "cosine")
# fp32: float32 weights and arithmetic; bf16: float32 weights under bfloat16 autocast; fp64: float64 weights and
# arithmetic (several times slower): a reference run that measures float32 rounding (the parity tests use it).
PRECISIONS = ("fp32", "bf16", "fp64")
DISTRIBUTED = ("ddp", "fsdp")


@dataclass
class ModelConfig:
    """Where the weights start: a checkpoint directory / hub id, or a preset initialised from scratch."""

    preset: str | None = "tiny"
    checkpoint: str | None = None
    dropout: float | None = None  # overrides the checkpoint's dropout_rate when set
    overrides: dict[str, Any] = field(default_factory=dict)  # T5Config fields for a preset (d_model ...)


@dataclass
class AdapterConfig:
    """A LoRA adapter to train (module doc); the defaults are :class:`~t5kit.adapters.LoRAConfig`'s."""

    kind: str = LoRAConfig.kind
    r: int = LoRAConfig.r
    alpha: float = LoRAConfig.alpha
    dropout: float = LoRAConfig.dropout
    targets: list[str] = field(default_factory=lambda: list(LoRAConfig.targets))
    base_storage: str = "fp32"  # the frozen base's linear layers stored in fp32 / bf16 / int8 (adapters.frozen)

    def lora_config(self, where: str = "adapter") -> LoRAConfig:
        """The :class:`LoRAConfig` this section describes; its ConfigError prefixed with ``where``."""
        check_base_storage(self.base_storage, f"{where}.base_storage")
        try:
            return LoRAConfig(kind=self.kind, r=self.r, alpha=self.alpha, dropout=self.dropout,
                              targets=tuple(self.targets))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None


@dataclass
class DataConfig:
    """Fine-tuning reads tasks/mixtures (``t5kit.data``); pre-training reads raw text for span corruption."""

    tokenizer: str | None = None  # directory with spiece.model; default: the model checkpoint's
    tasks_file: str | None = None  # YAML/JSON of tasks and mixtures (t5kit.data.load_tasks)
    train: str | None = None  # task or mixture name to train on
    validation: list[str] = field(default_factory=list)  # task names to evaluate (default: the train tasks)
    train_split: str = "train"
    validation_split: str = "validation"
    max_inputs_length: int = 512
    max_targets_length: int = 128
    shuffle_buffer: int = 1000
    # fine-tuning: pack several short examples into each row of max_inputs_length / max_targets_length tokens
    # (segment ids keep them apart in attention, so a packed example trains exactly as it would alone)
    pack: bool = False
    # pre-training (t5kit pretrain): raw text files, corrupted into fixed-length examples
    source: str | None = None
    validation_source: str | None = None
    text_field: str = "text"
    inputs_length: int = 512
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | adafactor | adamw_rms | sgd (plain, no momentum)
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scale_parameter: bool = True  # Adafactor: multiply the step by the parameter's RMS (as the paper)
    implementation: str = "auto"  # AdamW: auto | fused | foreach | single


@dataclass
class ScheduleConfig:
    name: str = "constant"
    warmup_steps: int = 0
    final_lr_ratio: float = 0.0  # linear / cosine end at lr * final_lr_ratio


@dataclass
class TrainLoopConfig:
    steps: int = 1000
    batch_size: int = 32  # global batch in examples per optimiser step (all ranks, all micro-batches)
    grad_accum: int = 1
    clip_grad_norm: float = 1.0  # 0 disables clipping
    precision: str = "fp32"
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    distributed: str = "ddp"  # under torchrun: ddp | fsdp
    compile: bool = False  # torch.compile the model (opt-in; first steps are slow)
    activation_checkpointing: bool = False  # recompute each layer in backward: less memory, ~30% slower


@dataclass
class EvalConfig:
    """Periodic validation (through ``t5kit.evaluate.validate``); ``eval: null`` turns it off (module doc)."""

    every: int = 0  # steps between evaluations; 0: only at the end
    max_examples: int = 200
    batch_size: int = 32
    max_new_tokens: int = 64
    generate: bool = True  # greedy-decode and compute the tasks' metrics (else validation loss only)
    best_metric: str = "val_loss"  # "val_loss" or a metric name of the validation tasks (bleu, chrf ...)


@dataclass
class CheckpointConfig:
    every: int = 0  # steps between checkpoints; 0: only at the end
    keep_last: int = 2
    keep_best: bool = True


@dataclass
class LogConfig:
    every: int = 10
    progress: bool = True  # tqdm progress bar (rank 0)
    tensorboard: bool = True  # when torch.utils.tensorboard is importable
    plot: bool = True  # curves.png at the end


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig | None = None  # None (absent, `adapter: null`): fine-tune every weight
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    eval: EvalConfig | None = field(default_factory=EvalConfig)  # None (`eval: null`): train without evaluation
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    out: str = "runs/run"
    base_dir: str = ""  # the config file's directory: relative paths resolve against it (set on load)

    # ------------------------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> TrainConfig:
        """Build and validate; ``where`` (the file name) prefixes error messages."""
        return _build(cls, data or {}, where).validate()

    @classmethod
    def load(cls, path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
        """Read a YAML file, apply ``a.b=value`` overrides (values parsed as YAML), validate."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"{p}: expected a mapping of sections (model, data, optim, ...) at the top level"
            )
        apply_overrides(data, overrides or [])
        data.setdefault("base_dir", str(p.resolve().parent))
        return cls.from_dict(data, where=str(p))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve(self, path: str | None) -> str | None:
        """A path from the config: relative to the config file's directory when it exists there, else as
        given (relative to the working directory, or a hub id)."""
        if path is None:
            return None
        p = os.path.expanduser(path)
        if os.path.isabs(p) or not self.base_dir:
            return p
        candidate = os.path.join(self.base_dir, p)
        return candidate if os.path.exists(candidate) else p

    # ------------------------------------------------------------------------------------ checks
    def validate(self) -> TrainConfig:
        o, s, t, e, c = self.optim, self.schedule, self.train, self.eval, self.checkpoint
        _choice("optim.name", o.name, OPTIMIZERS)
        _choice("schedule.name", s.name, SCHEDULES)
        _choice("train.precision", t.precision, PRECISIONS)
        _choice("train.distributed", t.distributed, DISTRIBUTED)
        _choice("optim.implementation", o.implementation, ("auto", "fused", "foreach", "single"))
        if not o.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
        if t.batch_size <= 0:
            raise ConfigError(f"train.batch_size must be > 0, got {t.batch_size}")
        evaluation = () if e is None else (("eval.batch_size", e.batch_size), ("eval.max_new_tokens", e.max_new_tokens))
        for name, value in (
            ("train.steps", t.steps),
            ("train.grad_accum", t.grad_accum),
            *evaluation,
            ("data.max_inputs_length", self.data.max_inputs_length),
            ("data.max_targets_length", self.data.max_targets_length),
            ("data.inputs_length", self.data.inputs_length),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        evaluation = () if e is None else (("eval.every", e.every), ("eval.max_examples", e.max_examples))
        for name, value in (
            ("schedule.warmup_steps", s.warmup_steps),
            *evaluation,
            ("checkpoint.every", c.every),
            ("optim.weight_decay", o.weight_decay),
            ("train.clip_grad_norm", t.clip_grad_norm),
            ("train.threads", t.threads),
            ("data.shuffle_buffer", self.data.shuffle_buffer),
        ):
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if c.keep_last < 1:
            raise ConfigError(f"checkpoint.keep_last must be >= 1, got {c.keep_last}")
        if t.batch_size % t.grad_accum:
            raise ConfigError(
                f"train.batch_size ({t.batch_size}) must be divisible by train.grad_accum ({t.grad_accum})"
            )
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
        if not 0 <= s.final_lr_ratio <= 1:
            raise ConfigError(f"schedule.final_lr_ratio must be in [0, 1], got {s.final_lr_ratio}")
        if self.model.dropout is not None and not 0 <= self.model.dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.model.dropout}")
        if self.model.preset is None and self.model.checkpoint is None:
            raise ConfigError("set model.checkpoint (a directory or hub id) or model.preset (e.g. t5-small)")
        if self.adapter is not None:
            self.adapter.lora_config()
            if self.model.checkpoint is None:
                # An adapter checkpoint holds no base weights, and a preset's are random: nothing could use it.
                raise ConfigError("adapter: an adapter adapts trained weights, set model.checkpoint (a directory "
                                  "or hub id); to train a preset from scratch, remove the adapter section")
        return self


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"{name} must be one of {', '.join(choices)}, got {value!r}.{closest_names(value, choices)}"
        )


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings to a nested dict in place (values parsed as YAML: 1e-3, true, [1,2])."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. optim.lr=1e-3), got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def _build(cls: type, data: Any, where: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; ``where`` names the file, ``prefix`` the section ("optim.")."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: {prefix.rstrip('.') or 'the config'} must be a mapping, got {type(data).__name__}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            dotted = [prefix + f for f in fields]
            raise ConfigError(
                f"{where}: unknown key {prefix + str(key)!r}.{closest_names(prefix + str(key), dotted)} "
                f"Known keys{' of ' + prefix.rstrip('.') if prefix else ''}: {', '.join(fields)}"
            )
        kwargs[key] = _coerce(hints[key], value, where, prefix + key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str, name: str) -> Any:
    """Check/convert ``value`` to annotation ``tp`` (str, int, float, bool, list, dict, dataclass)."""
    origin = typing.get_origin(tp)
    what = f"{where}: {name}"
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(args[0], value, where, name)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, where, name + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{what} must be true or false, got {value!r}")
    if tp is int:
        try:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        except (TypeError, ValueError):
            raise ConfigError(f"{what} must be an integer, got {value!r}") from None
    if tp is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{what} must be text, got {value!r}")
        return str(value)
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        items = value if isinstance(value, list) else [value]
        return [item if inner is Any else _coerce(inner, item, where, name) for item in items]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{what} must be a mapping, got {value!r}")
        return dict(value)
    return value
