"""Checkpoints in the Hugging Face layout, as (config, state dict in t5kit names); never imports the model.

``names`` holds the one HF <-> t5kit tensor-name table, ``io`` reads and writes the files, ``inspect``
looks inside them (``t5kit info``) and re-saves them (``t5kit convert``). Building a model from a
checkpoint is ``T5Model.from_pretrained`` (or ``t5kit.model.load_model``); saving one is
``T5Model.save_pretrained`` (``t5kit.model.save_model``).
"""

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
