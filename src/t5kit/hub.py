"""One resolver from "a local directory or a Hugging Face hub id" to a local directory.

The checkpoint loader and the tokenizer loader both go through :func:`resolve`, so both accept the same
names and fail with the same message offline. A name is taken as a hub id only when it cannot be a local
path: ``t5-small`` or ``google/flan-t5-small`` (one optional ``owner/``), not ``./x``, ``/x``, ``~/x``,
``a/b/c`` or a ``.model`` file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from t5kit.errors import T5kitError

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?")

CHECKPOINT_FILES = ["*.json", "*.safetensors", "spiece.model", "*.model", "tokenizer*"]
TOKENIZER_FILES = ["spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"]


_FILES_OF = {"checkpoint": "config.json + model.safetensors + spiece.model",
             "tokenizer": "spiece.model, or tokenizer.json"}


class HubError(T5kitError):
    """A name that is neither a local directory nor a hub id that could be fetched."""


def looks_like_repo_id(name: str) -> bool:
    """Whether ``name`` can be a hub repo id rather than a local path (see the module docstring)."""
    if name.startswith((".", "/", "~")) or name.endswith(".model") or "\\" in name:
        return False
    return _REPO_ID.fullmatch(name) is not None


def resolve(
    path_or_repo_id: str | os.PathLike,
    *,
    what: str = "checkpoint",
    allow_patterns: list[str] | None = None,
    revision: str | None = None,
    error: type[T5kitError] = HubError,
) -> Path:
    """A local directory as it is, or a hub snapshot downloaded through ``huggingface_hub`` (its cache).

    ``what`` names the thing in messages; ``error`` is the exception type raised (a subclass of
    :class:`T5kitError`, so the CLI and the server report it as one line).
    """
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise error(f"{path} is a file; pass the {what} directory (the one that holds config.json or spiece.model)")
    text = str(path_or_repo_id)
    if not looks_like_repo_id(text):
        raise error(f"no {what} directory at {text!r} (no such file or directory): check the path, or pass a "
                    "Hugging Face repo id such as 'google/flan-t5-small'")
    from huggingface_hub import snapshot_download  # lazy: 185 ms of every start-up (importtime), hub ids only

    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=allow_patterns or CHECKPOINT_FILES))
    except Exception as err:  # offline, unknown repo, gated repo: all end the same way for the user
        detail = str(err).splitlines()[0][:200] if str(err) else "no details"
        raise error(
            f"{text!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(err).__name__}: {detail}). If this machine is offline, download the {what} elsewhere and "
            f"pass its local directory ({_FILES_OF.get(what, _FILES_OF['checkpoint'])}), or set HF_HUB_OFFLINE=1 "
            "to use the local cache only"
        ) from None
