"""Looking inside a checkpoint and re-saving it: ``t5kit info`` and ``t5kit convert`` without a model.

Both work on the files and on state dicts only: ``checkpoint_info`` reads config.json and the safetensors
headers (no weights are loaded), ``convert_checkpoint`` reads the tensors and writes them back in another
layout or dtype.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from t5kit.checkpoint.io import check_state_dict, read_checkpoint, resolve_checkpoint_dir, write_checkpoint
from t5kit.config import PRESETS, T5Config
from t5kit.errors import CheckpointError

# Files next to the weights that make a checkpoint a complete model directory; convert copies them along.
COMPANION_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "generation_config.json", "MODEL_CARD.md", "README.md")


def model_family(config: T5Config) -> str:
    """A human name for the variant a config describes."""
    if config.model_type == "umt5":
        return "UMT5"
    if config.model_type == "mt5":
        return "mT5"
    if config.vocab_size == 384:
        return "ByT5"
    if config.is_gated and not config.tie_word_embeddings:
        return "T5 v1.1 / Flan-T5"
    if not config.is_gated and config.tie_word_embeddings:
        return "T5 (v1.0)"
    return "T5 (custom)"


def _safetensors_counts(path: Path, dtypes: dict[str, int]) -> int:
    """Parameters in one safetensors file, from its header; adds each dtype's count to ``dtypes``."""
    parameters = 0
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                numel = 1
                for d in sl.get_shape():
                    numel *= d
                parameters += numel
                dtype = sl.get_dtype()
                dtypes[dtype] = dtypes.get(dtype, 0) + numel
    except Exception as err:  # noqa: BLE001 - any header problem means the same to the user
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err
    return parameters


def checkpoint_info(path_or_repo_id: str | os.PathLike) -> dict[str, Any]:
    """What a checkpoint holds, read from config.json and the safetensors headers (no weights loaded)."""
    directory = resolve_checkpoint_dir(path_or_repo_id)
    config = T5Config.from_json_file(directory)
    dtypes: dict[str, int] = {}
    weight_files = sorted(p.name for p in directory.iterdir() if p.suffix in (".safetensors", ".bin"))
    parameters = sum(_safetensors_counts(directory / name, dtypes)
                     for name in weight_files if name.endswith(".safetensors"))
    preset = next((name for name, values in PRESETS.items()
                   if all(getattr(config, k) == v for k, v in values.items() if k != "dropout_rate")), None)
    return {
        "path": str(directory),
        "family": model_family(config),
        "matches_preset": preset,
        "d_model": config.d_model, "d_ff": config.d_ff, "d_kv": config.d_kv, "num_heads": config.num_heads,
        "encoder_layers": config.num_layers, "decoder_layers": config.num_decoder_layers,
        "feed_forward_proj": config.feed_forward_proj, "vocab_size": config.vocab_size,
        "tied_head": config.tie_word_embeddings, "rescaled_decoder_output": config.rescale_decoder_output,
        "parameters_stored": parameters, "dtypes": dtypes,
        "files": {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()},
        "tokenizer": next((f for f in ("spiece.model", "tokenizer.json") if (directory / f).exists()), None),
    }


def convert_checkpoint(source: str | os.PathLike, destination: str | os.PathLike,
                       dtype: torch.dtype | str | None = "auto", max_shard_size: int | str | None = None,
                       expected_shapes: Callable[[T5Config], Mapping[str, Sequence[int]]] | None = None) -> Path:
    """Re-save a checkpoint (any readable layout, e.g. legacy .bin) as safetensors, optionally cast and sharded.

    Tokenizer and generation files are copied along, so the result is a complete model directory.
    ``expected_shapes(config)`` (``t5kit.model.parameter_shapes``, which ``t5kit convert`` passes) checks
    every tensor against the model the config describes before anything is written; without it a
    checkpoint that does not fit its config is only refused when it is loaded.
    """
    source_dir = resolve_checkpoint_dir(source)
    destination = Path(destination)
    if destination.resolve() == source_dir.resolve():
        raise CheckpointError("convert writes a new directory; give a destination other than the source")
    config, state = read_checkpoint(source_dir, dtype=dtype)
    if expected_shapes is not None:
        check_state_dict(state, expected_shapes(config), source_dir)
    write_checkpoint(destination, config, state, max_shard_size=max_shard_size)
    for name in COMPANION_FILES:
        if (source_dir / name).exists():
            shutil.copyfile(source_dir / name, destination / name)
    return destination
