"""Checkpoints in the Hugging Face layout as (config, state dict): the only place that reads or writes them.

Reads ``model.safetensors``, sharded safetensors (``model.safetensors.index.json``) and legacy
``pytorch_model.bin`` (with ``torch.load(weights_only=True)``: tensors only, never arbitrary pickles).
Writes config.json + safetensors, each file atomically through :mod:`t5kit.io` (a temporary name, then a
rename), shards first and the index after them, so a reader never sees a half-written checkpoint.

Everything here is plain dicts of tensors in t5kit's parameter names; building a model from them is the
model's job (``T5Model.from_pretrained``), so this module never imports :mod:`t5kit.model`.

Tying: the embedding aliases (``encoder.embed_tokens``, ``decoder.embed_tokens``) and a tied
``lm_head`` may or may not be in a file. The head is tied when the file holds no separate
``lm_head.weight`` (or one identical to ``shared.weight``); otherwise it is untied. A tied state dict
holds ``shared.weight`` only. Whether the decoder output is rescaled comes from the config (see
``t5kit.config``).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from t5kit.checkpoint.names import ALIAS_KEYS, IGNORED_KEYS, hf_to_t5kit_name, t5kit_to_hf_name
from t5kit.config import T5Config
from t5kit.errors import CheckpointError, ConfigError
from t5kit.hub import resolve
from t5kit.io import atomic_path, write_json, write_text

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAME = "pytorch_model.bin"
PICKLE_INDEX_NAME = "pytorch_model.bin.index.json"

StateDict = dict[str, torch.Tensor]

# ---------------------------------------------------------------------------------------------- locating files


def resolve_checkpoint_dir(path_or_repo_id: str | os.PathLike, revision: str | None = None,
                           allow_patterns: list[str] | None = None) -> Path:
    """A local directory as is, or a hub repo id downloaded through :func:`t5kit.hub.resolve`."""
    return resolve(path_or_repo_id, what="checkpoint", allow_patterns=allow_patterns, revision=revision,
                   error=CheckpointError)


# ---------------------------------------------------------------------------------------------- reading


def read_state_dict(directory: str | os.PathLike) -> StateDict:
    """All tensors of a checkpoint directory with their Hugging Face names (no unpickling of code)."""
    directory = Path(directory)
    if (directory / SAFETENSORS_NAME).exists():
        return _read_safetensors(directory / SAFETENSORS_NAME)
    if (directory / SAFETENSORS_INDEX_NAME).exists():
        out: StateDict = {}
        for shard in _index_shards(directory / SAFETENSORS_INDEX_NAME):
            out.update(_read_safetensors(directory / shard))
        return out
    if (directory / PICKLE_NAME).exists():
        return _read_pickle(directory / PICKLE_NAME)
    if (directory / PICKLE_INDEX_NAME).exists():
        out = {}
        for shard in _index_shards(directory / PICKLE_INDEX_NAME):
            out.update(_read_pickle(directory / shard))
        return out
    raise CheckpointError(
        f"no weights in {directory}: expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} or {PICKLE_NAME}"
    )


def _index_shards(index_path: Path) -> list[str]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        shards = sorted(set(index["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as err:
        raise CheckpointError(f"{index_path} is not a valid shard index ({err}); re-download or re-save it") from err
    for shard in shards:
        if not (index_path.parent / shard).exists():
            raise CheckpointError(f"{index_path.name} names shard {shard}, which is missing from {index_path.parent}")
    return shards


def _read_safetensors(path: Path) -> StateDict:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({err}); it may be truncated or corrupt: "
            "download or save it again"
        ) from err


def _read_pickle(path: Path) -> StateDict:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds objects other than tensors, and t5kit does not unpickle arbitrary code. "
            "If you trust the file, convert it to safetensors with the tool that wrote it"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({err}); it may be truncated") from err
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return data


def convert_hf_state_dict(hf_state: Mapping[str, torch.Tensor], config: T5Config) -> tuple[StateDict, bool]:
    """Rename to t5kit names; returns (state dict, whether the head is tied to the embedding)."""
    state: StateDict = {}
    unexpected = []
    for name, tensor in hf_state.items():
        if name in IGNORED_KEYS or name in ALIAS_KEYS:
            continue
        new = hf_to_t5kit_name(name)
        if new is None:
            unexpected.append(name)
            continue
        state[new] = tensor
    if "shared.weight" not in state:  # files may keep only an alias of the embedding
        for alias in ALIAS_KEYS + ("lm_head.weight",):
            if alias in hf_state and (alias != "lm_head.weight" or config.tie_word_embeddings):
                state["shared.weight"] = hf_state[alias]
                break
    if unexpected:
        raise CheckpointError(
            f"unexpected tensors in the checkpoint: {', '.join(sorted(unexpected)[:5])}"
            f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)} in all); is this a T5 checkpoint?"
        )
    head = state.get("lm_head.weight")
    shared = state.get("shared.weight")
    tied = head is None or (shared is not None and head.shape == shared.shape and torch.equal(head, shared))
    if tied:
        state.pop("lm_head.weight", None)
    return state, tied


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    """A torch dtype from its t5kit spelling (fp32, bf16, fp16 ...); None and ``"auto"`` pass through."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}
    if dtype not in names:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of fp32, bf16, fp16 or 'auto' (as stored)")
    return names[dtype]


def keeps_fp32_in_fp16(name: str) -> bool:
    """Whether a parameter stays float32 in a float16 model: the feed-forward output projections, whose
    products overflow float16's range in published checkpoints (transformers keeps ``wo`` in float32 too;
    ``T5Model.set_dtype`` applies the same rule to a model in memory)."""
    return name.endswith(".ffn.wo.weight")


def cast_state_dict(state: Mapping[str, torch.Tensor], dtype: torch.dtype | str | None = None,
                    device: str | torch.device = "cpu") -> StateDict:
    """``state`` on ``device`` in ``dtype``: None -> float32 (as the reference loads), ``"auto"`` -> as
    stored (the embedding's dtype), or fp32/bf16/fp16 (see :func:`keeps_fp32_in_fp16`)."""
    dtype = parse_dtype(dtype)
    if dtype == "auto":
        stored = state.get("shared.weight", next(iter(state.values()), None))
        target = stored.dtype if stored is not None else torch.float32
    else:
        target = dtype or torch.float32

    def dtype_of(name: str) -> torch.dtype:
        return torch.float32 if target == torch.float16 and keeps_fp32_in_fp16(name) else target

    return {name: tensor.to(device=device, dtype=dtype_of(name)) for name, tensor in state.items()}


def _hf_name(name: str) -> str:
    """The name a user sees in their files (a name outside the table as it is)."""
    try:
        return t5kit_to_hf_name(name)
    except KeyError:
        return name


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, Sequence[int]],
                     source: str | os.PathLike) -> None:
    """Raise a CheckpointError naming (in Hugging Face names) the tensors ``state`` lacks or has too many
    of, or the first one whose shape differs from ``expected`` (parameter name -> shape: what a model
    built from the config holds), with both shapes."""
    shapes = {name: tuple(shape) for name, shape in expected.items()}
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
    if missing or unexpected:
        parts = []
        for kind, names in (("missing", missing), ("unexpected", unexpected)):
            if names:
                parts.append(f"{kind} {', '.join(_hf_name(n) for n in names[:5])}"
                             f"{' ...' if len(names) > 5 else ''} ({len(names)})")
        raise CheckpointError(
            f"checkpoint {source} does not fit its config.json: {'; '.join(parts)}. "
            "Check that config.json belongs to these weights (num_layers, feed_forward_proj, model_type)"
        )
    for name, shape in shapes.items():
        if tuple(state[name].shape) != shape:
            raise CheckpointError(
                f"tensor {_hf_name(name)} has shape {tuple(state[name].shape)} in the checkpoint but the "
                f"config implies {shape}; check config.json (d_model, d_ff, num_heads, d_kv, vocab_size)"
            )


def read_checkpoint(path_or_repo_id: str | os.PathLike, dtype: torch.dtype | str | None = None,
                    device: str | torch.device = "cpu", revision: str | None = None,
                    ) -> tuple[T5Config, StateDict]:
    """(config, state dict in t5kit names) of a checkpoint directory or hub repo id.

    The config's ``tie_word_embeddings`` is settled from what the file holds: when the config and the
    file disagree the file wins, and a tied state dict has no ``lm_head.weight``. ``dtype`` as in
    :func:`cast_state_dict`. Whether every tensor fits a model is the caller's check
    (:func:`check_state_dict`), since only the model knows its parameters.
    """
    dtype = parse_dtype(dtype)
    directory = resolve_checkpoint_dir(path_or_repo_id, revision=revision)
    config = T5Config.from_json_file(directory)
    state, tied = convert_hf_state_dict(read_state_dict(directory), config)
    if tied != config.tie_word_embeddings:
        # The file wins, and the rescale is read the way transformers 5.x reads it: T5/UMT5 rescale unless
        # the config says tie_word_embeddings false, mT5 never rescales.
        if config.scale_decoder_outputs is None:
            config.scale_decoder_outputs = config.tie_word_embeddings and config.model_type != "mt5"
        config.tie_word_embeddings = tied
    return config, cast_state_dict(state, dtype, device)


# ---------------------------------------------------------------------------------------------- writing

_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}


def parse_size(size: int | str) -> int:
    """Bytes from ``2GB``, ``500MB``, ``64KiB`` or a plain number."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", size.upper())
    if not match:
        raise ConfigError(f"cannot read size {size!r}; write it like '2GB' or '500MB'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2) or "B"])


def to_hf_state_dict(state: Mapping[str, torch.Tensor], tied: bool) -> StateDict:
    """``state`` with Hugging Face names; a tied head is stored once (as ``shared.weight``)."""
    # An adapted model (t5kit.adapters, which this layer does not import) holds ``...q.base.weight`` and
    # ``...q.lora_A``: refused by what it is, not as a name the table lacks.
    adapted = next((name for name in state if ".lora_A" in name), None)
    if adapted is not None:
        raise CheckpointError(f"this model holds LoRA adapters ({adapted.removesuffix('.lora_A')} ...) and a "
                              "checkpoint holds plain weights: save the adapter with t5kit.adapters.save_adapter, "
                              "or fold it in first with t5kit.adapters.merge_lora(model)")
    return {t5kit_to_hf_name(name): tensor.detach().contiguous()
            for name, tensor in state.items() if not (tied and name == "lm_head.weight")}


def _save_safetensors(tensors: StateDict, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})


def write_checkpoint(directory: str | os.PathLike, config: T5Config, state: Mapping[str, torch.Tensor],
                     tied: bool | None = None, max_shard_size: int | str | None = None,
                     extra_files: dict[str, Any] | None = None) -> Path:
    """Write config.json and safetensors weights in the Hugging Face layout (sharded above max_shard_size).

    ``state`` is in t5kit names; ``tied`` (default: the config's ``tie_word_embeddings``) drops a head that
    shares the embedding. ``extra_files`` maps file names to text or JSON-able values written alongside.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create checkpoint directory {directory}: {err}") from err
    tensors = to_hf_state_dict(state, config.tie_word_embeddings if tied is None else tied)
    limit = parse_size(max_shard_size) if max_shard_size is not None else None
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    try:
        if limit is None or total <= limit:
            _save_safetensors(tensors, directory / SAFETENSORS_NAME)
            stale = [directory / SAFETENSORS_INDEX_NAME]
        else:
            shards: list[StateDict] = [{}]
            size = 0
            for name, tensor in tensors.items():
                nbytes = tensor.numel() * tensor.element_size()
                if shards[-1] and size + nbytes > limit:
                    shards.append({})
                    size = 0
                shards[-1][name] = tensor
                size += nbytes
            weight_map = {}
            for i, shard in enumerate(shards, start=1):
                shard_name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                _save_safetensors(shard, directory / shard_name)
                weight_map.update({name: shard_name for name in shard})
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            write_json(directory / SAFETENSORS_INDEX_NAME, index, sort_keys=True)
            stale = [directory / SAFETENSORS_NAME]
        config.save_pretrained(directory)
        for name, content in (extra_files or {}).items():
            if isinstance(content, str):
                write_text(directory / name, content)
            else:
                write_json(directory / name, content)
    except OSError as err:
        raise CheckpointError(f"could not write the checkpoint to {directory}: {err}") from err
    for path in stale:  # a previous save in the other layout would shadow this one
        if path.exists():
            path.unlink()
    return directory
