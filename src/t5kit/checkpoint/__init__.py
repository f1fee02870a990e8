"""Checkpoints in the Hugging Face layout, as (config, state dict in t5kit names); never imports the model.

``names`` holds the one HF <-> t5kit tensor-name table, ``io`` reads and writes the files, ``inspect``
looks inside them (``t5kit info``) and re-saves them (``t5kit convert``). Building a model from a
checkpoint is ``T5Model.from_pretrained`` (or ``t5kit.model.load_model``); saving one is
``T5Model.save_pretrained`` (``t5kit.model.save_model``).
"""

import importlib

from t5kit.checkpoint.inspect import COMPANION_FILES, checkpoint_info, convert_checkpoint, model_family
from t5kit.checkpoint.io import (
    PICKLE_INDEX_NAME,
    PICKLE_NAME,
    SAFETENSORS_INDEX_NAME,
    SAFETENSORS_NAME,
    cast_state_dict,
    check_state_dict,
    convert_hf_state_dict,
    keeps_fp32_in_fp16,
    parse_dtype,
    parse_size,
    read_checkpoint,
    read_state_dict,
    resolve_checkpoint_dir,
    to_hf_state_dict,
    write_checkpoint,
)
from t5kit.checkpoint.names import ALIAS_KEYS, IGNORED_KEYS, hf_to_t5kit_name, t5kit_to_hf_name

__all__ = [
    "ALIAS_KEYS", "COMPANION_FILES", "IGNORED_KEYS", "PICKLE_INDEX_NAME", "PICKLE_NAME", "SAFETENSORS_INDEX_NAME",
    "SAFETENSORS_NAME", "cast_state_dict", "check_state_dict", "checkpoint_info", "convert_checkpoint",
    "convert_hf_state_dict", "hf_to_t5kit_name", "keeps_fp32_in_fp16", "model_family", "parse_dtype", "parse_size",
    "read_checkpoint", "read_state_dict", "resolve_checkpoint_dir", "t5kit_to_hf_name", "to_hf_state_dict",
    "write_checkpoint",
]

# Names that lived here before #16 and need the model: they moved up to t5kit.model.loading (this package never
# imports the model). Resolved on first use so that pre-#16 code keeps working; new code imports t5kit.model.
_MOVED = {"load_model": "t5kit.model.loading", "save_model": "t5kit.model.loading",
          "hf_state_dict": "t5kit.model.loading"}


def __getattr__(name: str) -> object:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 't5kit.checkpoint' has no attribute {name!r}")
