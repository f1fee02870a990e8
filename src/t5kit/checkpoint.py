"""Checkpoints in the Hugging Face layout: the only place that knows another library's key names.

Reads ``model.safetensors``, sharded safetensors (``model.safetensors.index.json``) and legacy
``pytorch_model.bin`` (with ``torch.load(weights_only=True)``: tensors only, never arbitrary pickles).
Writes config.json + safetensors atomically (each file to a temporary name, then renamed), shards last
and the index after them, so a reader never sees a half-written checkpoint.

Tying: the embedding aliases (``encoder.embed_tokens``, ``decoder.embed_tokens``) and a tied
``lm_head`` may or may not be in a file. The head is tied when the file holds no separate
``lm_head.weight`` (or one identical to ``shared.weight``); otherwise it is untied. Whether the
decoder output is rescaled comes from the config (see ``t5kit.config``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from t5kit.config import T5Config
from t5kit.errors import CheckpointError, ConfigError

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAME = "pytorch_model.bin"
PICKLE_INDEX_NAME = "pytorch_model.bin.index.json"

# Keys that published checkpoints carry but the model does not use.
IGNORED_KEYS = re.compile(r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$")
ALIAS_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")

# (Hugging Face pattern, t5kit replacement) applied to layer keys; the reverse table is derived below.
_HF_TO_T5KIT = [
    (r"^(encoder|decoder)\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.weight$",
     r"\1.layers.\2.self_attn.relative_bias.weight"),
    (r"^(encoder|decoder)\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight$",
     r"\1.layers.\2.self_attn.\3.weight"),
    (r"^(encoder|decoder)\.block\.(\d+)\.layer\.0\.layer_norm\.weight$", r"\1.layers.\2.self_attn_norm.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.(wi|wi_0|wi_1|wo)\.weight$",
     r"encoder.layers.\1.ffn.\2.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight$", r"encoder.layers.\1.ffn_norm.weight"),
    (r"^decoder\.block\.(\d+)\.layer\.1\.EncDecAttention\.([qkvo])\.weight$",
     r"decoder.layers.\1.cross_attn.\2.weight"),
    (r"^decoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight$", r"decoder.layers.\1.cross_attn_norm.weight"),
    (r"^decoder\.block\.(\d+)\.layer\.2\.DenseReluDense\.(wi|wi_0|wi_1|wo)\.weight$",
     r"decoder.layers.\1.ffn.\2.weight"),
    (r"^decoder\.block\.(\d+)\.layer\.2\.layer_norm\.weight$", r"decoder.layers.\1.ffn_norm.weight"),
    (r"^(encoder|decoder)\.final_layer_norm\.weight$", r"\1.final_norm.weight"),
    (r"^(shared|lm_head)\.weight$", r"\1.weight"),
]
_T5KIT_TO_HF = [
    (r"^(encoder|decoder)\.layers\.(\d+)\.self_attn\.relative_bias\.weight$",
     r"\1.block.\2.layer.0.SelfAttention.relative_attention_bias.weight"),
    (r"^(encoder|decoder)\.layers\.(\d+)\.self_attn\.([qkvo])\.weight$",
     r"\1.block.\2.layer.0.SelfAttention.\3.weight"),
    (r"^(encoder|decoder)\.layers\.(\d+)\.self_attn_norm\.weight$", r"\1.block.\2.layer.0.layer_norm.weight"),
    (r"^encoder\.layers\.(\d+)\.ffn\.(wi|wi_0|wi_1|wo)\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.\2.weight"),
    (r"^encoder\.layers\.(\d+)\.ffn_norm\.weight$", r"encoder.block.\1.layer.1.layer_norm.weight"),
    (r"^decoder\.layers\.(\d+)\.cross_attn\.([qkvo])\.weight$", r"decoder.block.\1.layer.1.EncDecAttention.\2.weight"),
    (r"^decoder\.layers\.(\d+)\.cross_attn_norm\.weight$", r"decoder.block.\1.layer.1.layer_norm.weight"),
    (r"^decoder\.layers\.(\d+)\.ffn\.(wi|wi_0|wi_1|wo)\.weight$", r"decoder.block.\1.layer.2.DenseReluDense.\2.weight"),
    (r"^decoder\.layers\.(\d+)\.ffn_norm\.weight$", r"decoder.block.\1.layer.2.layer_norm.weight"),
    (r"^(encoder|decoder)\.final_norm\.weight$", r"\1.final_layer_norm.weight"),
    (r"^(shared|lm_head)\.weight$", r"\1.weight"),
]


def _rename(name: str, table: list[tuple[str, str]]) -> str | None:
    for pattern, replacement in table:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def hf_to_t5kit_name(name: str) -> str | None:
    """The t5kit parameter name of a Hugging Face key, or None if the key is not a T5 parameter."""
    return _rename(name, _HF_TO_T5KIT)


def t5kit_to_hf_name(name: str) -> str:
    hf = _rename(name, _T5KIT_TO_HF)
    if hf is None:  # pragma: no cover - every model parameter has a mapping
        raise KeyError(f"no Hugging Face name for parameter {name!r}")
    return hf


# ---------------------------------------------------------------------------------------------- locating files


def resolve_checkpoint_dir(path_or_repo_id: str | os.PathLike, revision: str | None = None,
                           allow_patterns: list[str] | None = None) -> Path:
    """A local directory as is, or a hub repo id downloaded through ``huggingface_hub`` (its cache)."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint directory that holds config.json")
    text = str(path_or_repo_id)
    looks_like_repo = re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", text) is not None and not text.startswith(".")
    if not looks_like_repo or os.sep in text.rstrip("/").split("/", 1)[-1]:
        raise CheckpointError(
            f"no checkpoint directory at {text!r}: check the path, or pass a Hugging Face repo id such as 't5-small'"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - a core dependency
        raise CheckpointError("downloading from the hub needs huggingface_hub: pip install huggingface_hub") from err
    patterns = allow_patterns or ["*.json", "*.safetensors", "spiece.model", "*.model", "tokenizer*"]
    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=patterns))
    except Exception as err:  # offline, unknown repo, gated repo: all end the same way for the user
        kind = type(err).__name__
        raise CheckpointError(
            f"could not get {text!r} from the Hugging Face hub ({kind}: {str(err).splitlines()[0][:200]}). "
            "If this machine is offline, download the checkpoint elsewhere and pass its local directory "
            "(config.json + model.safetensors + spiece.model), or set HF_HUB_OFFLINE=1 to use the local cache only"
        ) from err


def read_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory with their Hugging Face names (no unpickling of code)."""
    directory = Path(directory)
    if (directory / SAFETENSORS_NAME).exists():
        return _read_safetensors(directory / SAFETENSORS_NAME)
    if (directory / SAFETENSORS_INDEX_NAME).exists():
        out: dict[str, torch.Tensor] = {}
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


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({err}); it may be truncated or corrupt: "
            "download or save it again"
        ) from err


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    import pickle

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


# ---------------------------------------------------------------------------------------------- loading


def convert_hf_state_dict(hf_state: dict[str, torch.Tensor], config: T5Config) -> tuple[dict[str, torch.Tensor], bool]:
    """Rename to t5kit names; returns (state dict, whether the head is tied to the embedding)."""
    state: dict[str, torch.Tensor] = {}
    unexpected = []
    for name, tensor in hf_state.items():
        if IGNORED_KEYS.match(name):
            continue
        if name in ALIAS_KEYS:
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


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}
    if dtype not in names:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of fp32, bf16, fp16 or 'auto' (as stored)")
    return names[dtype]


def load_model(path_or_repo_id: str | os.PathLike, dtype: torch.dtype | str | None = None,
               device: str | torch.device = "cpu", revision: str | None = None):
    """Build a T5Model from a checkpoint directory or hub repo id.

    ``dtype``: None -> float32 (as the reference loads), ``"auto"`` -> as stored, or fp32/bf16/fp16.
    Missing, unexpected and mis-shaped tensors are reported by name with both shapes.
    """
    from t5kit.model import T5Model

    dtype = _parse_dtype(dtype)
    directory = resolve_checkpoint_dir(path_or_repo_id, revision=revision)
    config = T5Config.from_json_file(directory)
    hf_state = read_state_dict(directory)
    state, tied = convert_hf_state_dict(hf_state, config)
    if tied != config.tie_word_embeddings:
        # The config and the file disagree about sharing; the file wins, and the rescale is read the way
        # transformers 5.x reads it: T5/UMT5 rescale unless the config says tie_word_embeddings false,
        # mT5 never rescales.
        if config.scale_decoder_outputs is None:
            config.scale_decoder_outputs = config.tie_word_embeddings and config.model_type != "mt5"
        config.tie_word_embeddings = tied
    with torch.device("meta"):
        model = T5Model(config)
    expected = {name: p for name, p in model.named_parameters()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(t5kit_to_hf_name(m) for m in missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''} ({len(missing)})")
        if unexpected:
            parts.append(f"unexpected {', '.join(t5kit_to_hf_name(u) for u in unexpected[:5])}"
                         f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})")
        raise CheckpointError(
            f"checkpoint {directory} does not fit its config.json: {'; '.join(parts)}. "
            "Check that config.json belongs to these weights (num_layers, feed_forward_proj, model_type)"
        )
    for name, param in expected.items():
        if tuple(state[name].shape) != tuple(param.shape):
            raise CheckpointError(
                f"tensor {t5kit_to_hf_name(name)} has shape {tuple(state[name].shape)} in the checkpoint but the "
                f"config implies {tuple(param.shape)}; check config.json (d_model, d_ff, num_heads, d_kv, vocab_size)"
            )
    target = state["shared.weight"].dtype if dtype == "auto" else (dtype or torch.float32)
    state = {k: v.to(device=device, dtype=target) for k, v in state.items()}
    if tied:
        state["lm_head.weight"] = state["shared.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        model.lm_head.weight = model.shared.weight
    if target == torch.float16:
        model.set_dtype(torch.float16)
    return model.eval()


# ---------------------------------------------------------------------------------------------- saving

_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}


def parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", size.upper())
    if not match:
        raise ConfigError(f"cannot read size {size!r}; write it like '2GB' or '500MB'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2) or "B"])


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's tensors with Hugging Face names; a tied head is stored once (as ``shared.weight``)."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.tied:
            continue
        out[t5kit_to_hf_name(name)] = tensor.detach().contiguous()
    return out


def _atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o666 & ~_umask())  # the writer creates it private; a checkpoint is an ordinary file
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_model(model, directory: str | os.PathLike, max_shard_size: int | str | None = None,
               extra_files: dict[str, Any] | None = None) -> Path:
    """Write config.json and safetensors weights in the Hugging Face layout (sharded above max_shard_size)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create checkpoint directory {directory}: {err}") from err
    tensors = hf_state_dict(model)
    limit = parse_size(max_shard_size) if max_shard_size is not None else None
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    try:
        if limit is None or total <= limit:
            _atomic_save_safetensors(tensors, directory / SAFETENSORS_NAME)
            stale = [directory / SAFETENSORS_INDEX_NAME]
        else:
            shards: list[dict[str, torch.Tensor]] = [{}]
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
                _atomic_save_safetensors(shard, directory / shard_name)
                weight_map.update({name: shard_name for name in shard})
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            _atomic_write_text(directory / SAFETENSORS_INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n")
            stale = [directory / SAFETENSORS_NAME]
        model.config.save_pretrained(directory)
        for name, content in (extra_files or {}).items():
            text = content if isinstance(content, str) else json.dumps(content, indent=2) + "\n"
            _atomic_write_text(directory / name, text)
    except OSError as err:
        raise CheckpointError(f"could not write the checkpoint to {directory}: {err}") from err
    for path in stale:  # a previous save in the other layout would shadow this one
        if path.exists():
            path.unlink()
    return directory


# ---------------------------------------------------------------------------------------------- inspection, conversion

TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
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


def checkpoint_info(path_or_repo_id: str | os.PathLike) -> dict[str, Any]:
    """What a checkpoint holds, read from config.json and the safetensors headers (no weights loaded)."""
    from t5kit.config import PRESETS

    directory = resolve_checkpoint_dir(path_or_repo_id)
    config = T5Config.from_json_file(directory)
    dtypes: dict[str, int] = {}
    parameters = 0
    weight_files = sorted(p.name for p in directory.iterdir() if p.suffix in (".safetensors", ".bin"))
    for name in weight_files:
        if not name.endswith(".safetensors"):
            continue
        from safetensors import safe_open

        try:
            with safe_open(str(directory / name), framework="pt") as f:
                for key in f.keys():
                    sl = f.get_slice(key)
                    numel = 1
                    for d in sl.get_shape():
                        numel *= d
                    parameters += numel
                    dtype = sl.get_dtype()
                    dtypes[dtype] = dtypes.get(dtype, 0) + numel
        except Exception as err:  # noqa: BLE001 - any header problem means the same to the user
            raise CheckpointError(f"{directory / name} is not a readable safetensors file ({err})") from err
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
                       dtype: torch.dtype | str | None = "auto", max_shard_size: int | str | None = None) -> Path:
    """Re-save a checkpoint (any readable layout, e.g. legacy .bin) as safetensors, optionally cast and sharded.

    Tokenizer and generation files are copied along, so the result is a complete model directory.
    """
    import shutil

    source_dir = resolve_checkpoint_dir(source)
    destination = Path(destination)
    if destination.resolve() == source_dir.resolve():
        raise CheckpointError("convert writes a new directory; give a destination other than the source")
    model = load_model(source_dir, dtype=dtype)
    save_model(model, destination, max_shard_size=max_shard_size)
    for name in TOKENIZER_FILES:
        if (source_dir / name).exists():
            shutil.copyfile(source_dir / name, destination / name)
    return destination
