"""Where a tokenizer's files are: a local directory, a Hugging Face hub id, or the T5 vocabulary shipped inside t5kit.

Why the shipped vocabulary: every published T5 SentencePiece checkpoint (t5-small ... t5-11b, T5 v1.1,
Flan-T5) uses the same 32,000-piece vocabulary, it is Apache-2.0, and a recipe or a script that trains
from a preset needs it without a download or a path into this repository. Name it ``"t5"`` wherever a
tokenizer is loaded (``load_tokenizer("t5")``, ``Tokenizer.from_pretrained("t5")``, ``data.tokenizer: t5``
in a recipe, ``t5kit tokenizer encode ... --model t5``), or ask :func:`t5_vocabulary_path` for its
directory (to copy ``spiece.model`` next to a checkpoint, or to hand it to another library).

An existing local path always wins over the name (``./t5`` is a directory, ``t5`` too when one exists in
the working directory), as a path wins over a hub id in :func:`t5kit.hub.resolve`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from t5kit import hub
from t5kit.errors import TokenizerError

T5_VOCABULARY = "t5"
"""The name of the T5 SentencePiece vocabulary shipped in the package (see the module docstring)."""

_RESOURCE_DIR = Path(__file__).resolve().parent.parent / "resources" / "t5-vocab"


def t5_vocabulary_path() -> Path:
    """The directory of the shipped T5 vocabulary (``spiece.model``: 32,000 pieces; with the tokenizer's 100
    sentinels, ids 0..32099, as in every published T5 checkpoint).

    ``load_tokenizer("t5")`` loads it; this function is for callers that need the file itself.
    """
    if not (_RESOURCE_DIR / "spiece.model").is_file():
        raise TokenizerError(
            f"the T5 vocabulary is missing from this t5kit installation ({_RESOURCE_DIR}); reinstall t5kit"
        )
    return _RESOURCE_DIR


def tokenizer_directory(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory as it is, the shipped vocabulary for ``"t5"``, else a hub snapshot (the one resolver,
    :func:`t5kit.hub.resolve`, with the tokenizer's files only)."""
    if str(path_or_repo_id) == T5_VOCABULARY and not Path(path_or_repo_id).exists():
        return t5_vocabulary_path()
    return hub.resolve(
        path_or_repo_id, what="tokenizer", allow_patterns=hub.TOKENIZER_FILES, revision=revision, error=TokenizerError
    )


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; ``{}`` when the file is absent or holds something else than an object."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TokenizerError(f"{path} is not valid JSON: {err}; fix it or download it again") from None
    return data if isinstance(data, dict) else {}
