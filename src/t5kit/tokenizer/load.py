"""The one tokenizer loader: the right T5 tokenizer for a directory, a ``spiece.model`` file, a hub id or ``"t5"``.

Code that needs "the tokenizer of this checkpoint" (``Generator``, the server, ``t5kit tokenizer
encode/decode``) calls :func:`load_tokenizer`, so every entry point accepts the same names and picks the
same class; where a name lives (local, hub, shipped) is decided once, in :mod:`t5kit.tokenizer.files`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from t5kit.errors import TokenizerError
from t5kit.tokenizer.byte import BYT5_VOCAB_SIZE, ByteTokenizer
from t5kit.tokenizer.files import read_json, tokenizer_directory
from t5kit.tokenizer.sentencepiece import Tokenizer


def load_tokenizer(
    path_or_repo_id: str | os.PathLike, legacy: bool = False, **kwargs: Any
) -> Tokenizer | ByteTokenizer:
    """The right tokenizer for a checkpoint or tokenizer directory (or hub repo id, or ``"t5"``).

    ``"t5"`` is the T5 vocabulary shipped in t5kit (:func:`~t5kit.tokenizer.t5_vocabulary_path`), the one
    of every published T5, T5 v1.1 and Flan-T5 checkpoint. Rule, first match wins:

    1. a ``*.model`` file -> :class:`Tokenizer`;
    2. ``tokenizer_config.json`` naming a ``ByT5`` tokenizer class -> :class:`ByteTokenizer`;
    3. ``spiece.model`` present -> :class:`Tokenizer`;
    4. ``tokenizer.json`` with a Unigram model -> :class:`Tokenizer` rebuilt from it;
    5. ``config.json`` with ``vocab_size`` 384, or a name/architecture mentioning byt5 -> :class:`ByteTokenizer`;
    6. otherwise :class:`~t5kit.errors.TokenizerError`.

    ``kwargs`` go to :meth:`Tokenizer.from_pretrained` (``num_sentinels``, ``num_threads``, ``revision``).
    """
    path = Path(path_or_repo_id)
    if path.is_file():
        return Tokenizer.from_pretrained(path, legacy=legacy, **kwargs)
    directory = tokenizer_directory(path_or_repo_id, kwargs.pop("revision", None))
    tok_config = read_json(directory / "tokenizer_config.json")
    if "byt5" in str(tok_config.get("tokenizer_class", "")).lower():
        return ByteTokenizer.from_pretrained(directory)
    if (directory / "spiece.model").is_file() or (directory / "tokenizer.json").is_file():
        return Tokenizer.from_pretrained(directory, legacy=legacy, **kwargs)
    config = read_json(directory / "config.json")
    names = " ".join(str(config.get(k, "")) for k in ("_name_or_path", "name_or_path", "architectures")).lower()
    if config.get("vocab_size") == BYT5_VOCAB_SIZE or "byt5" in names or "byt5" in directory.name.lower():
        return ByteTokenizer.from_pretrained(directory)
    raise TokenizerError(
        f"{directory}: no tokenizer found (expected spiece.model, a unigram tokenizer.json, or a ByT5 "
        "tokenizer_config.json / config.json with vocab_size 384)"
    )
