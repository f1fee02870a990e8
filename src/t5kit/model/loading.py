"""Model <-> checkpoint helpers for callers that hold a model: ``load_model``, ``save_model``, ``hf_state_dict``.

Thin wrappers over ``T5Model.from_pretrained`` / ``save_pretrained`` and :mod:`t5kit.checkpoint.io`, kept
for callers that want functions (the trainer's checkpoints, ``t5kit convert``'s shape check). ``t5.py``
does not import this module; the checkpoint package never imports the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from t5kit.checkpoint.io import to_hf_state_dict, write_checkpoint
from t5kit.config import T5Config
from t5kit.model.t5 import T5Model


def load_model(path_or_repo_id: str | os.PathLike, dtype: torch.dtype | str | None = None,
               **kwargs: Any) -> T5Model:
    """A T5Model from a checkpoint directory or hub repo id (see ``T5Model.from_pretrained``)."""
    return T5Model.from_pretrained(path_or_repo_id, dtype=dtype, **kwargs)


def save_model(model: T5Model, directory: str | os.PathLike, max_shard_size: int | str | None = None,
               extra_files: dict[str, Any] | None = None) -> Path:
    """Write config.json and safetensors weights in the Hugging Face layout (sharded above max_shard_size),
    plus ``extra_files`` (file name -> text or a JSON-able value)."""
    return write_checkpoint(directory, model.config, model.state_dict(), tied=model.tied,
                            max_shard_size=max_shard_size, extra_files=extra_files)


def hf_state_dict(model: T5Model) -> dict[str, torch.Tensor]:
    """The model's tensors with Hugging Face names; a tied head is stored once (as ``shared.weight``)."""
    return to_hf_state_dict(model.state_dict(), tied=model.tied)


def parameter_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter a model built from ``config`` holds (built on the meta device, so
    nothing is allocated); what ``t5kit.checkpoint.convert_checkpoint`` checks a checkpoint against."""
    with torch.device("meta"):
        model = T5Model(config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}
