"""Training checkpoints that are either complete or absent, and resume from the newest complete one.

A checkpoint is a directory ``step-00001000/`` holding:

- ``config.json`` + ``model.safetensors``: the weights in the Hugging Face layout, so
  ``T5Model.from_pretrained(".../step-00001000")`` (or ``transformers``) loads it as is; or, for a run
  that trains a LoRA adapter (``adapter:`` in the config), ``adapter_config.json`` +
  ``adapter_model.safetensors`` in peft's layout (:func:`t5kit.adapters.save_adapter`) and no base weights:
  the base is unchanged, so the checkpoint is the adapter's size (``Generator.from_pretrained(base,
  adapter=".../step-00001000")`` or ``t5kit adapter merge`` uses it);
- ``optimizer.pt``: the optimiser state (``torch.save``; loaded with ``weights_only=True``);
- ``rng.pt``: every rank's torch RNG state (dropout masks continue exactly);
- ``trainer_state.json``: step, every rank's data position and Python/NumPy RNG states, the running
  data-order hash, the best metric so far, and the run's config.

Why a temporary directory and one rename: a run can be killed at any instant (SIGKILL, pre-emption, a
full disk). Everything is written into ``.tmp-step-...`` and then moved into place with ``os.replace``,
which is atomic on POSIX; a reader therefore sees the old set of checkpoints or the new one, never a
half-written directory. ``.tmp-*`` leftovers of a killed run are removed at the next start, and a
write that fails (ENOSPC, EACCES) removes its temporary directory before raising.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t5kit.adapters import CONFIG_NAME as ADAPTER_CONFIG_NAME
from t5kit.adapters import WEIGHTS_NAME as ADAPTER_WEIGHTS_NAME
from t5kit.adapters import load_adapter_state, lora_layers, save_adapter
from t5kit.checkpoint import convert_hf_state_dict, read_state_dict
from t5kit.errors import CheckpointError
from t5kit.io import atomic_directory, remove_directory, write_json
from t5kit.model import save_model

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"
RNG_NAME = "rng.pt"
BEST_NAME = "best"
_STEP_DIR = re.compile(r"^step-(\d+)$")
REQUIRED_FILES = (STATE_NAME, OPTIMIZER_NAME, RNG_NAME)
# Either the full weights (config.json + model.safetensors or its index) or an adapter in peft's layout.
FULL_WEIGHTS = (("config.json", "model.safetensors"), ("config.json", "model.safetensors.index.json"))
ADAPTER_FILES = (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


# ---------------------------------------------------------------------------------------------- RNG states


def capture_rng() -> tuple[dict[str, Any], dict[str, Any]]:
    """(JSON-able Python + NumPy states, torch states) of this process."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    np_state = {
        **np_state,
        "state": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])},
    }
    torch_state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        torch_state["cuda"] = torch.cuda.get_rng_state()
    return {"python": [version, list(internal), gauss], "numpy": np_state}, torch_state


def restore_rng(json_state: dict[str, Any], torch_state: dict[str, Any]) -> None:
    version, internal, gauss = json_state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = dict(json_state["numpy"])
    np_state["state"] = {
        "key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
        "pos": np_state["state"]["pos"],
    }
    np.random.set_state(np_state)
    torch.set_rng_state(torch_state["cpu"])
    if "cuda" in torch_state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch_state["cuda"])


# ---------------------------------------------------------------------------------------------- directories


def check_writable(out: str | os.PathLike) -> Path:
    """Create the run directory and prove a file can be written there, before any training time is spent."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise CheckpointError(_write_error(out, err)) from err
    return out


def _write_error(where: Path, err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        advice = "the disk is full: free space or choose another output directory with --out"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = (
            "the directory is not writable: fix its permissions or choose another output directory with --out"
        )
    else:
        advice = "choose a writable output directory with --out"
    return f"cannot write to {where}: {err.strerror or err} ({advice})"


def is_complete(path: Path) -> bool:
    """A directory with every checkpoint file, weights included, and a readable trainer_state.json."""
    if not path.is_dir() or not all((path / name).is_file() for name in REQUIRED_FILES):
        return False
    if not any(all((path / name).is_file() for name in names) for names in (*FULL_WEIGHTS, ADAPTER_FILES)):
        return False
    try:
        json.loads((path / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def list_checkpoints(out: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete ``step-N`` checkpoints of a run, oldest first."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = []
    for child in out.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and is_complete(child):
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(out: str | os.PathLike) -> Path:
    """The newest complete checkpoint, or a clear error when the directory holds none."""
    out = Path(out)
    found = list_checkpoints(out)
    if not found:
        partial = (
            sorted(p.name for p in out.glob("*") if p.name.startswith((".tmp-", "step-")))
            if out.is_dir()
            else []
        )
        detail = f" (only incomplete: {', '.join(partial)})" if partial else ""
        where = "does not exist" if not out.is_dir() else f"holds no complete checkpoint{detail}"
        raise CheckpointError(
            f"cannot resume: {out} {where}; run without --resume to start a new run, "
            f"or point --out at the run to continue"
        )
    return found[-1][1]


def remove_partial(out: str | os.PathLike) -> list[str]:
    """Delete ``.tmp-*`` / ``.old-*`` directories a killed run left behind; returns their names."""
    out = Path(out)
    removed = []
    if out.is_dir():
        for child in out.iterdir():
            if child.name.startswith((".tmp-", ".old-")) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child.name)
    return removed


def prune(out: str | os.PathLike, keep_last: int) -> None:
    """Keep the newest ``keep_last`` step checkpoints (``best`` is separate and always kept)."""
    for _, path in list_checkpoints(out)[:-keep_last]:
        remove_directory(path)  # renamed first: a half-deleted directory never looks like a checkpoint


# ---------------------------------------------------------------------------------------------- save / load


def _save_torch(obj: Any, path: Path) -> None:
    torch.save(obj, path)


def save_checkpoint(
    out: str | os.PathLike,
    name: str,
    model: torch.nn.Module,
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    torch_rng: list[dict[str, Any]],
    tokenizer: Any = None,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write a complete checkpoint ``out/name`` atomically (temporary directory, then one rename).

    ``model`` is the plain T5Model (full weights written), or one holding LoRA adapters (only the adapter
    written, peft's layout, ``base_model_name_or_path`` in its config); ``optimizer_state`` its optimiser's
    state dict;
    ``tokenizer`` (its ``save_pretrained``) goes beside the weights, so the checkpoint loads on its own
    (``Generator.from_pretrained``, ``t5kit generate --model``) like a published one.
    On any write error the temporary directory is removed and a CheckpointError says why.
    """
    out = Path(out)
    final = out / name
    try:
        with atomic_directory(final) as tmp:
            if lora_layers(model):
                save_adapter(model, tmp, base_model_name_or_path)
            else:
                save_model(model, tmp)
            if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
                tokenizer.save_pretrained(tmp)
            _save_torch(optimizer_state, tmp / OPTIMIZER_NAME)
            _save_torch(torch_rng, tmp / RNG_NAME)
            write_json(tmp / STATE_NAME, trainer_state, indent=1, sort_keys=True)
    except (OSError, CheckpointError, RuntimeError, TypeError) as err:
        cause = (
            err.__cause__ if isinstance(err, CheckpointError) and isinstance(err.__cause__, OSError) else err
        )
        if isinstance(cause, OSError):
            raise CheckpointError(
                f"checkpoint {final} was not written, {_write_error(out, cause)}; "
                "no partial checkpoint was left"
            ) from err
        if isinstance(err, TypeError):
            raise CheckpointError(
                f"checkpoint {final} was not written: state is not serialisable: {err}"
            ) from err
        raise CheckpointError(
            f"checkpoint {final} was not written: {err}; no partial checkpoint was left"
        ) from err
    return final


def load_weights(model: torch.nn.Module, directory: Path) -> None:
    """Copy a checkpoint's weights into an existing model (keeping its parameter objects): the full weights,
    or, into a model holding adapters, the checkpoint's adapter (the base is the one the run starts from)."""
    has_adapter = (directory / ADAPTER_WEIGHTS_NAME).is_file()
    if lora_layers(model) or has_adapter:
        if not (lora_layers(model) and has_adapter):
            held = "an adapter" if has_adapter else "full weights"
            wanted = "an adapter (the config has an adapter section)" if lora_layers(model) else "full weights"
            raise CheckpointError(f"checkpoint {directory} holds {held}, this run trains {wanted}; resume with "
                                  "the config the run was started with")
        load_adapter_state(model, directory)
        return
    state, tied = convert_hf_state_dict(read_state_dict(directory), model.config)
    if tied:
        state["lm_head.weight"] = state["shared.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and tied)]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {directory} does not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; resume with the config the run was started with"
        )


def load_checkpoint(directory: Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(trainer_state, optimizer_state, torch RNG states per rank) of a checkpoint directory."""
    try:
        trainer_state = json.loads((directory / STATE_NAME).read_text(encoding="utf-8"))
        optimizer_state = torch.load(directory / OPTIMIZER_NAME, map_location="cpu", weights_only=True)
        torch_rng = torch.load(directory / RNG_NAME, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot read checkpoint {directory}: {err}") from err
    return trainer_state, optimizer_state, torch_rng
