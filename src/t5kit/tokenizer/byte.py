"""ByT5's tokenizer: one id per UTF-8 byte, no vocabulary file.

Layout: pad 0, eos 1, unk 2, byte ``b`` -> ``b + 3``, then ``num_sentinels`` sentinels ``<extra_id_i>`` =
259 + i (ascending, unlike the SentencePiece tokenizer's), so ByT5's 125 sentinels give vocab_size 384,
the ``vocab_size`` of every ByT5 ``config.json`` (which is how :func:`~t5kit.tokenizer.load_tokenizer`
recognises a ByT5 checkpoint without a ``tokenizer_config.json``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from t5kit.errors import TokenizerError
from t5kit.ids import EOS_ID, EOS_TOKEN, PAD_ID, PAD_TOKEN, UNK_ID, UNK_TOKEN
from t5kit.io import write_json
from t5kit.tokenizer.base import TokenizerBase
from t5kit.tokenizer.files import read_json, tokenizer_directory

BYT5_NUM_SENTINELS = 125
BYT5_OFFSET = 3  # ids 0, 1, 2 are pad, eos, unk; bytes follow
BYT5_VOCAB_SIZE = 256 + BYT5_OFFSET + BYT5_NUM_SENTINELS  # 384


class ByteTokenizer(TokenizerBase):
    """The ByT5 tokenizer: id = UTF-8 byte + 3; pad 0, eos 1, unk 2; ``<extra_id_i>`` = 259 + i.

    Matches ``transformers``' ``ByT5Tokenizer``, including its quirks: whitespace next to an inline
    ``</s>``/``<pad>``/``<unk>`` is dropped, and invalid UTF-8 is dropped when decoding.
    """

    num_pieces = 256 + BYT5_OFFSET

    def __init__(self, num_sentinels: int = BYT5_NUM_SENTINELS, name_or_path: str = "byt5"):
        if num_sentinels < 0:
            raise TokenizerError(f"num_sentinels must be >= 0, got {num_sentinels}")
        self.num_sentinels = int(num_sentinels)
        self.vocab_size = self.num_pieces + self.num_sentinels
        self.name_or_path = name_or_path
        self.model_max_length: int | None = None

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size}, num_sentinels={self.num_sentinels})"

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | os.PathLike, revision: str | None = None, **_: Any
    ) -> ByteTokenizer:
        """Read ``extra_ids`` from a ByT5 ``tokenizer_config.json`` if there is one (125 otherwise)."""
        directory = tokenizer_directory(path_or_repo_id, revision)
        config = read_json(directory / "tokenizer_config.json")
        extra = config.get("extra_ids")
        tok = cls(extra if isinstance(extra, int) and extra > 0 else BYT5_NUM_SENTINELS, str(directory))
        return tok

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write a ``tokenizer_config.json``/``special_tokens_map.json`` that ``ByT5Tokenizer`` loads."""
        out = Path(directory)
        config = {
            "tokenizer_class": "ByT5Tokenizer",
            "eos_token": EOS_TOKEN,
            "unk_token": UNK_TOKEN,
            "pad_token": PAD_TOKEN,
            "extra_ids": self.num_sentinels,
        }
        special = {"eos_token": EOS_TOKEN, "unk_token": UNK_TOKEN, "pad_token": PAD_TOKEN}
        write_json(out / "tokenizer_config.json", config)
        write_json(out / "special_tokens_map.json", special)
        return out

    def _sentinel_id(self, i: int) -> int:
        return self.num_pieces + i

    def _sentinel_index(self, token_id: int) -> int | None:
        if self.num_pieces <= token_id < self.vocab_size:
            return token_id - self.num_pieces
        return None

    def _special_text(self, token_id: int) -> str | None:
        if token_id == UNK_ID:
            return UNK_TOKEN
        return super()._special_text(token_id)

    @staticmethod
    def _bytes_ids(text: str) -> list[int]:
        return [b + BYT5_OFFSET for b in text.encode("utf-8")]

    def _encode_batch(self, texts: list[str], add_eos: bool) -> list[list[int]]:
        try:
            ids = [[b + BYT5_OFFSET for b in t.encode("utf-8")] for t in texts]
        except AttributeError:
            self._check_texts(texts)
            raise
        for row, spans in self._special_spans(texts).items():
            text = texts[row]
            seq: list[int] = []
            pos = 0
            for start, end, token_id in spans:
                segment = text[pos:start]
                if token_id in (PAD_ID, EOS_ID, UNK_ID):  # transformers strips around these (lstrip/rstrip)
                    segment = segment.rstrip()
                    while end < len(text) and text[end].isspace():
                        end += 1
                seq.extend(self._bytes_ids(segment))
                seq.append(token_id)
                pos = end
            seq.extend(self._bytes_ids(text[pos:]))
            ids[row] = seq
        if add_eos:
            for seq in ids:
                if not seq or seq[-1] != EOS_ID:
                    seq.append(EOS_ID)
        return ids

    def _decode_run(self, ids: list[int], first: bool) -> str:
        return bytes(i - BYT5_OFFSET for i in ids).decode("utf-8", errors="ignore")

    def decode(self, ids: Sequence[int] | Any, skip_special_tokens: bool = False) -> str:
        """Text of byte ids; bytes that are not valid UTF-8 are dropped (as ``transformers`` does)."""
        ids = self._check_ids(ids)
        parts: list[str] = []
        run: list[int] = []
        for token_id in ids:
            if token_id >= BYT5_OFFSET and self._sentinel_index(token_id) is None:
                run.append(token_id)
                continue
            if run:
                parts.append(self._decode_run(run, False))
                run = []
            if not skip_special_tokens:
                parts.append(self._special_text(token_id) or "")
        if run:
            parts.append(self._decode_run(run, False))
        return "".join(parts)
