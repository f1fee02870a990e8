"""Adapters in peft's layout: ``adapter_config.json`` + ``adapter_model.safetensors``.

Tensor names are peft's for ``T5ForConditionalGeneration``: ``base_model.model.`` + the Hugging Face module
name + ``.lora_A.weight`` / ``.lora_B.weight``; the module names come from t5kit's one HF name table
(:mod:`t5kit.checkpoint.names`). Only what t5kit computes is accepted: plain LoRA on q/k/v/o/wi/wi_0/wi_1/wo,
one rank and alpha for all layers; a config asking for more (DoRA, rsLoRA, biases ...) is refused by name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from t5kit.adapters.lora import LoRAConfig, add_lora, lora_config, lora_layers, merge_lora, remove_lora
from t5kit.checkpoint.inspect import COMPANION_FILES
from t5kit.checkpoint.io import resolve_checkpoint_dir
from t5kit.checkpoint.names import hf_to_t5kit_name, t5kit_to_hf_name
from t5kit.errors import CheckpointError, ConfigError
from t5kit.io import atomic_path, write_json
from t5kit.model.t5 import T5Model

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
PREFIX = "base_model.model."
MATRICES = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight"}  # t5kit parameter -> peft's suffix

# peft config keys whose non-default value asks for something t5kit does not compute: key -> (accepted
# values, what it means). Any other key is read or ignored (peft writes many that do not change the math).
_UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "use_dora": ((False, None), "DoRA (weight-decomposed LoRA)"),
    "use_rslora": ((False, None), "rank-stabilised LoRA (scale alpha / sqrt(r))"),
    "bias": (("none", None), "trained biases"),
    "lora_bias": ((False, None), "a bias on lora_B"),
    "fan_in_fan_out": ((False, None), "transposed (Conv1D) weights"),
    "modules_to_save": ((None, []), "fully trained extra modules"),
    "rank_pattern": ((None, {}), "per-layer ranks"),
    "alpha_pattern": ((None, {}), "per-layer alphas"),
    "layers_to_transform": ((None, []), "adapters on some layers only"),
    "layers_pattern": ((None, [], ""), "adapters on some layers only"),
    "layer_replication": ((None, []), "replicated layers"),
    "exclude_modules": ((None, [], ""), "excluded modules"),
    "trainable_token_indices": ((None, [], {}), "trainable token embeddings"),
    "target_parameters": ((None, []), "adapters on bare parameters"),
    "use_qalora": ((False, None), "QA-LoRA"),
    "alora_invocation_tokens": ((None, []), "activated LoRA"),
    "use_bdlora": ((False, None), "block-diagonal LoRA"),
    "arrow_config": ((None, {}), "routing among several adapters (Arrow)"),
    "kasa_config": ((None, {}), "KaSA"),
    "velora_config": ((None, {}), "VeLoRA"),
    "monteclora_config": ((None, {}), "MonteCLoRA"),
    # These initialisations rewrite the BASE weights (the adapter is relative to a residual model), unless
    # peft converted the adapter back to plain LoRA on saving (it then writes init_lora_weights = true).
    "init_lora_weights": ((True, False, None, "gaussian", "eva", "orthogonal", "mica"),
                          "an initialisation that changed the base weights (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA ...)"),
}


def _hf_module(t5kit_module: str) -> str:
    return t5kit_to_hf_name(f"{t5kit_module}.weight").removesuffix(".weight")


def save_adapter(model: nn.Module, directory: str | os.PathLike, base_model_name_or_path: str | None = None) -> Path:
    """Write ``model``'s adapter in peft's layout to ``directory`` (each file atomically); returns the path.

    ``PeftModel.from_pretrained(hf_model, directory)`` loads it; so does :func:`load_adapter`.
    """
    config = lora_config(model)
    layers = lora_layers(model)
    tensors = {}
    for module_name, layer in layers.items():
        for param, suffix in MATRICES.items():
            tensors[f"{PREFIX}{_hf_module(module_name)}.{suffix}"] = getattr(layer, param).detach().cpu().contiguous()
    targets = sorted({name.rpartition(".")[2] for name in layers})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(directory / CONFIG_NAME, {
        "peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": config.r, "lora_alpha": config.alpha, "lora_dropout": config.dropout, "target_modules": targets,
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "lora_bias": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None, "rank_pattern": {},
        "alpha_pattern": {}, "layers_to_transform": None, "layers_pattern": None, "revision": None,
        "auto_mapping": None,
    }, sort_keys=True)
    return directory


def read_adapter_config(directory: str | os.PathLike) -> tuple[LoRAConfig, dict[str, Any]]:
    """The :class:`LoRAConfig` an adapter directory describes and its raw JSON; refuses what t5kit cannot run."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise CheckpointError(f"adapter directory {directory} does not exist: pass the folder peft's "
                              f"save_pretrained or t5kit's save_adapter wrote")
    if not path.exists():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}: an adapter directory holds {CONFIG_NAME} and "
                              f"{WEIGHTS_NAME} (pass the adapter, not the base model)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}): save the adapter again") from err
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds {type(raw).__name__}, not a JSON object: save the adapter again")
    peft_type = str(raw.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise ConfigError(f"{path}: peft_type {raw.get('peft_type')!r} is not supported; t5kit loads LORA adapters")
    for key, (accepted, meaning) in _UNSUPPORTED.items():
        if key in raw and raw[key] not in accepted:
            raise ConfigError(f"{path}: {key} = {raw[key]!r} asks for {meaning}, which t5kit does not support: "
                              f"train the adapter with {key} = {accepted[0]!r}, or merge it with peft "
                              f"(merge_and_unload) and load the merged model")
    targets = raw.get("target_modules")
    if isinstance(targets, str):
        raise ConfigError(f"{path}: target_modules is the pattern {targets!r}; t5kit reads a list of projection "
                          f"names such as [\"q\", \"v\"]")
    if not isinstance(targets, list) or not targets:
        raise ConfigError(f"{path}: target_modules must be a non-empty list of projection names, got {targets!r}")
    try:
        config = LoRAConfig(r=raw.get("r", 8), alpha=raw.get("lora_alpha", 8),
                            dropout=raw.get("lora_dropout", 0.0) or 0.0, targets=tuple(sorted(targets)))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    return config, raw


def read_adapter_tensors(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The adapter's tensors by peft's names (safetensors only: a pickle can run code when read)."""
    directory = Path(directory)
    path = directory / WEIGHTS_NAME
    if not path.exists():
        if (directory / PICKLE_NAME).exists():
            raise CheckpointError(
                f"{directory} holds {PICKLE_NAME}, a pickle, which t5kit does not read (loading a pickle can run "
                f"code): re-save it as safetensors with peft, PeftModel.from_pretrained(base, dir)"
                f".save_pretrained(new_dir, safe_serialization=True)")
        raise CheckpointError(f"{directory} has no {WEIGHTS_NAME}: save the adapter again")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}): save the adapter again") from err


def _t5kit_parameter(name: str, path: Path) -> tuple[str, str]:
    """peft's tensor name -> (t5kit module name, 'lora_A' | 'lora_B')."""
    for param, suffix in MATRICES.items():
        stem = name.removeprefix(PREFIX)
        if stem != name and stem.endswith("." + suffix):
            module = hf_to_t5kit_name(stem.removesuffix("." + suffix) + ".weight")
            if module is not None:
                return module.removesuffix(".weight"), param
    raise CheckpointError(f"{path}: tensor {name!r} is not a LoRA matrix of a T5 projection (expected names like "
                          f"{PREFIX}encoder.block.0.layer.0.SelfAttention.q.lora_A.weight)")


def _tensors_by_module(directory: Path) -> dict[str, dict[str, torch.Tensor]]:
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for tensor_name, tensor in read_adapter_tensors(directory).items():
        module, param = _t5kit_parameter(tensor_name, directory / WEIGHTS_NAME)
        by_module.setdefault(module, {})[param] = tensor
    return by_module


def _copy_adapter(model: nn.Module, by_module: dict[str, dict[str, torch.Tensor]], path: Path,
                  config: LoRAConfig) -> None:
    """Copy the read matrices into ``model``'s adapters (its parameter objects kept), checking names and shapes."""
    layers = lora_layers(model)
    missing = sorted(set(layers) - set(by_module))
    unknown = sorted(set(by_module) - set(layers))
    if missing or unknown:
        problem = (f"has no tensors for {len(missing)} targeted layer(s) ({missing[0]} ...)" if missing else
                   f"holds tensors for layers the config does not target or this model lacks ({unknown[0]} ...)")
        raise CheckpointError(f"{path} {problem}: the adapter was saved for another model or is incomplete")
    for module, held in by_module.items():
        layer = layers[module]
        for param in MATRICES:
            if param not in held:
                raise CheckpointError(f"{path} has no {param} for {module}: the adapter file is incomplete")
            target = getattr(layer, param)
            if tuple(held[param].shape) != tuple(target.shape):
                raise CheckpointError(
                    f"{path}: {module}.{param} has shape {list(held[param].shape)}, this model needs "
                    f"{list(target.shape)} (r = {config.r}): the adapter belongs to a model of other shapes")
            with torch.no_grad():
                target.copy_(held[param].to(target.dtype))


def load_adapter(model: nn.Module, directory: str | os.PathLike, name: str = "default") -> nn.Module:
    """Add the adapter saved in ``directory`` (by peft or t5kit) to ``model``, unmerged; returns ``model``."""
    directory = Path(directory)
    config, _ = read_adapter_config(directory)
    by_module = _tensors_by_module(directory)
    add_lora(model, config, name=name)
    try:
        _copy_adapter(model, by_module, directory / WEIGHTS_NAME, config)
    except CheckpointError:
        remove_lora(model)  # leave the model as it was
        raise
    return model


def load_adapter_state(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Copy the adapter saved in ``directory`` into the adapters ``model`` already holds, keeping their parameter
    objects (what a resumed training run needs: its optimiser refers to them); the configs must agree."""
    directory = Path(directory)
    config, _ = read_adapter_config(directory)
    held = lora_config(model)
    if (config.r, config.alpha, sorted(config.targets)) != (held.r, held.alpha, sorted(held.targets)):
        raise CheckpointError(f"{directory} holds an adapter with r={config.r}, alpha={config.alpha:g}, targets "
                              f"{sorted(config.targets)}; this model's has r={held.r}, alpha={held.alpha:g}, targets "
                              f"{sorted(held.targets)}: resume with the config the run was started with")
    _copy_adapter(model, _tensors_by_module(directory), directory / WEIGHTS_NAME, config)
    return model


def adapter_info(directory: str | os.PathLike) -> dict[str, Any]:
    """What an adapter directory holds, without a base model: its config, the adapted layers, the parameters."""
    directory = Path(directory)
    config, raw = read_adapter_config(directory)
    tensors = read_adapter_tensors(directory)
    path = directory / WEIGHTS_NAME
    modules = sorted({_t5kit_parameter(name, path)[0] for name in tensors})
    return {
        "path": str(directory), "peft_type": "LORA", "r": config.r, "alpha": config.alpha, "scale": config.scale,
        "dropout": config.dropout, "targets": list(config.targets), "task_type": raw.get("task_type"),
        "base_model_name_or_path": raw.get("base_model_name_or_path"), "peft_version": raw.get("peft_version"),
        "layers": len(modules), "tensors": len(tensors), "parameters": sum(t.numel() for t in tensors.values()),
        "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()}),
        "files": {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()},
    }


def merge_adapter(base: str | os.PathLike, adapter: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Write ``base`` (a checkpoint directory or hub repo id) with ``adapter`` merged in as a plain checkpoint
    (float32, the precision the merge is computed in; ``t5kit convert --dtype`` re-saves it), plus the base's
    tokenizer and generation files: loadable by ``T5Model.from_pretrained`` and ``transformers``."""
    destination = Path(destination)
    base_dir = resolve_checkpoint_dir(base)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise CheckpointError(f"{destination} exists and is not empty: merge writes a new directory, choose another")
    model = T5Model.from_pretrained(base_dir)
    load_adapter(model, adapter)
    merge_lora(model).save_pretrained(destination)
    for name in COMPANION_FILES:
        if (base_dir / name).exists():
            shutil.copyfile(base_dir / name, destination / name)
    return destination
