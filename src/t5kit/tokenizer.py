"""T5 tokenizers: SentencePiece (T5, T5 v1.1, Flan-T5, mT5, UMT5) and byte-level (ByT5), one interface.

Why this module exists: a T5 checkpoint is only usable with the exact ids it was trained on, and the
common tokenizer bugs (sentinel ids, the extra "▁" after special tokens, EOS handling, dropped
whitespace and braces) silently degrade a model instead of failing. The ids produced here are
SentencePiece's own ids plus EOS, which is what the original T5 pipeline fed the model.

Layout (both tokenizers): pad 0 (also the decoder start), eos ``</s>`` 1, unk ``<unk>`` 2. The
SentencePiece tokenizer puts ``num_sentinels`` sentinels above the SentencePiece pieces, in T5's order:
``<extra_id_i>`` = ``vocab_size - 1 - i`` (32099 - i for T5, whose model embedding has 32,128 rows; ids
32100..32127 are never produced). :class:`ByteTokenizer` uses id = UTF-8 byte + 3 and, like
``transformers``' ``ByT5Tokenizer``, ``<extra_id_i>`` = 259 + i (vocab_size 384 with 125 sentinels).

Encoding: EOS is appended to every text unless the text already ends with an inline ``</s>`` (it is
never duplicated). Whitespace runs, tabs and newlines collapse to one space and leading/trailing
whitespace is dropped (SentencePiece's ``nmt_nfkc`` normaliser); characters outside the vocabulary, such
as ``{`` and ``}`` with the T5 vocabulary, become ``<unk>`` (2). The special tokens ``<extra_id_N>``
(N < num_sentinels), ``</s>``, ``<pad>`` and ``<unk>`` written inline in text are recognised as their ids.

Special tokens inline, ``legacy=False`` (the default) versus ``legacy=True``:

- ``legacy=False`` (default): text after a special token continues the same word unless it begins
  with whitespace. "Hello <extra_id_0>." -> [8774, 32099, 5, 1]; "Hello <extra_id_0> world" ->
  [8774, 32099, 296, 1] ("▁world"). This is what ``transformers`` 4.x's slow (SentencePiece)
  ``T5Tokenizer(legacy=False)`` produced, and it never inserts a token that is not in the text.
  One difference from 4.x: t5kit treats any whitespace the normaliser sees (tab, newline, U+3000...)
  after a special token as a word break, where 4.x looked for a literal space only.
- ``legacy=True``: every piece of text between special tokens is encoded as a fresh sentence, so it
  starts with SentencePiece's dummy-prefix "▁": "Hello <extra_id_0>." -> [8774, 32099, 3, 5, 1]. These
  are exactly the ids of ``transformers`` 5.x's ``T5Tokenizer``/``T5TokenizerFast`` (both are the
  ``tokenizers``-backed class in 5.x, which always behaves this way whatever its ``legacy`` flag) and of
  4.x's slow tokenizer with ``legacy=True`` (its default). Choose it to reproduce data prepared by
  ``transformers``. The one exception: a text that ends with a literal ``</s>`` gets a second EOS from
  ``transformers`` 5.x; t5kit never duplicates EOS, in either mode.

Both modes give identical ids for text without inline special tokens.

Decoding joins pieces as SentencePiece does ("▁" -> space, the leading dummy space dropped); ``<unk>``
decodes as SentencePiece's " ⁇ " (U+2047) so that lost characters stay visible; special tokens decode to
their text, or are dropped with ``skip_special_tokens=True``. The space before a special token is not
recoverable (the encoder drops it), so "a <extra_id_0> b" decodes as "a<extra_id_0> b".

Over-long input: with ``max_length`` set and ``truncation=False`` an over-long text raises
:class:`~t5kit.errors.TokenizerError` naming its length and the maximum; with ``truncation=True`` it is
cut to ``max_length`` ids, keeping EOS last, and the batch output says which rows were cut
(``batch.truncated``, ``batch.labels_truncated``), attributes rather than keys so that ``model(**batch)``
still works.
"""

from __future__ import annotations

import base64
import bisect
import itertools
import json
import os
import re
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from t5kit.errors import TokenizerError

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
LABEL_PAD_ID = -100
DEFAULT_NUM_SENTINELS = 100
BYT5_NUM_SENTINELS = 125
BYT5_OFFSET = 3
BYT5_VOCAB_SIZE = 256 + BYT5_OFFSET + BYT5_NUM_SENTINELS  # 384

_SPECIAL_RE = re.compile(r"<extra_id_(\d+)>|</s>|<pad>|<unk>")
_CONTROL_IDS = {PAD_TOKEN: PAD_ID, EOS_TOKEN: EOS_ID, UNK_TOKEN: UNK_ID}

__all__ = [
    "BatchEncoding",
    "ByteTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "train_tokenizer",
]


# --------------------------------------------------------------------------------------------------
# Batch output


class BatchEncoding(dict):
    """The batch returned by calling a tokenizer: a plain dict of model inputs plus flags.

    Keys: ``input_ids``, ``attention_mask`` and, with targets, ``labels`` (padding = -100). Keys can also
    be read as attributes (``batch.input_ids``). ``truncated`` / ``labels_truncated`` are attributes,
    not keys, so ``model(**batch)`` receives only model inputs.
    """

    truncated: list[bool]
    labels_truncated: list[bool] | None

    def __init__(self, data: dict[str, Any], truncated: list[bool], labels_truncated: list[bool] | None):
        super().__init__(data)
        self.truncated = truncated
        self.labels_truncated = labels_truncated

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: Any) -> BatchEncoding:
        """Move every tensor to ``device`` (lists are left alone); returns self for chaining."""
        for key, value in self.items():
            if hasattr(value, "to"):
                self[key] = value.to(device)
        return self


# --------------------------------------------------------------------------------------------------
# Shared behaviour


class _TokenizerBase:
    """Everything that does not depend on how text becomes ids: batching, padding, truncation, decoding."""

    pad_token_id: int = PAD_ID
    eos_token_id: int = EOS_ID
    unk_token_id: int = UNK_ID
    decoder_start_token_id: int = PAD_ID
    pad_token: str = PAD_TOKEN
    eos_token: str = EOS_TOKEN
    unk_token: str = UNK_TOKEN
    vocab_size: int
    num_sentinels: int
    legacy: bool = False

    # -- sentinels ---------------------------------------------------------------------------------
    def sentinel_id(self, i: int) -> int:
        """The id of ``<extra_id_i>`` (span-corruption sentinel number ``i``)."""
        if not 0 <= int(i) < self.num_sentinels:
            raise TokenizerError(f"sentinel {i} does not exist: this tokenizer has {self.num_sentinels} sentinels")
        return self._sentinel_id(int(i))

    def is_sentinel(self, token_id: int) -> bool:
        """Whether ``token_id`` is one of the ``<extra_id_N>`` sentinels."""
        return self._sentinel_index(int(token_id)) is not None

    @property
    def sentinel_ids(self) -> list[int]:
        """``[sentinel_id(0), sentinel_id(1), ...]``."""
        return [self._sentinel_id(i) for i in range(self.num_sentinels)]

    @property
    def all_special_ids(self) -> list[int]:
        return [PAD_ID, EOS_ID, UNK_ID, *self.sentinel_ids]

    def _sentinel_id(self, i: int) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def _sentinel_index(self, token_id: int) -> int | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __len__(self) -> int:
        return self.vocab_size

    # -- encoding ----------------------------------------------------------------------------------
    def _encode_batch(self, texts: list[str], add_eos: bool) -> list[list[int]]:  # pragma: no cover
        raise NotImplementedError

    def _special_id(self, match: re.Match) -> int | None:
        """The id of an inline special token matched by ``_SPECIAL_RE`` (None: not special here)."""
        if match.group(1) is not None:
            n = int(match.group(1))
            if n < self.num_sentinels and match.group(1) == str(n):
                return self._sentinel_id(n)
            return None
        return _CONTROL_IDS[match.group(0)]

    def _special_spans(self, texts: list[str]) -> dict[int, list[tuple[int, int, int]]]:
        """For each text holding inline special tokens: [(start, end, id), ...].

        One regex pass over the joined batch instead of one per text: keeps the common case (no special
        tokens anywhere) at C speed.
        """
        found: dict[int, list[tuple[int, int, int]]] = {}
        joined = "\x00".join(texts)
        if "<" not in joined:
            return found
        starts: list[int] = []
        for m in _SPECIAL_RE.finditer(joined):
            token_id = self._special_id(m)
            if token_id is None:
                continue
            if not starts:  # row offsets, only once a special token is actually found
                starts.append(0)
                starts.extend(itertools.accumulate(len(t) + 1 for t in texts))
            row = bisect.bisect_right(starts, m.start()) - 1
            off = starts[row]
            found.setdefault(row, []).append((m.start() - off, m.end() - off, token_id))
        return found

    @staticmethod
    def _check_texts(texts: Any, what: str = "texts") -> list[str]:
        """A list of strings, or TokenizerError naming the first item that is not one.

        The per-item check runs at C speed (``str.join`` rejects non-strings); the Python loop that
        names the culprit runs only when something is wrong.
        """
        if isinstance(texts, str):
            return [texts]
        if not isinstance(texts, (list, tuple)):
            raise TokenizerError(f"{what} must be a string or a list of strings, not {type(texts).__name__}")
        try:
            "".join(texts)
        except TypeError:
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise TokenizerError(f"{what}[{i}] is a {type(t).__name__}, not a string: {t!r:.60}") from None
        return texts if isinstance(texts, list) else list(texts)

    def _limit(
        self, ids: list[list[int]], max_length: int | None, truncation: bool, add_eos: bool, what: str
    ) -> list[bool]:
        """Apply ``max_length`` in place; returns per-row truncated flags. Raises when not allowed to cut."""
        flags = [False] * len(ids)
        if max_length is None:
            return flags
        if max_length < 1:
            raise TokenizerError(f"max_length must be at least 1, got {max_length}")
        for row, seq in enumerate(ids):
            if len(seq) <= max_length:
                continue
            if not truncation:
                raise TokenizerError(
                    f"{what}[{row}] is {len(seq)} tokens long, more than max_length={max_length}; "
                    "pass truncation=True to cut it (EOS is kept), or raise max_length"
                )
            keep_eos = add_eos and seq[-1] == EOS_ID
            ids[row] = seq[: max_length - 1] + [EOS_ID] if keep_eos else seq[:max_length]
            flags[row] = True
        return flags

    def encode(
        self, text: str, add_eos: bool = True, max_length: int | None = None, truncation: bool = False
    ) -> list[int]:
        """Ids of one text, EOS appended (unless ``add_eos=False``).

        With ``max_length`` and ``truncation=False`` an over-long text raises; with ``truncation=True`` it
        is cut (EOS kept). To learn whether a text was cut, call the tokenizer on a list and read
        ``batch.truncated``.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"encode() takes a string, not {type(text).__name__}: {text!r:.60}")
        return self.batch_encode([text], add_eos=add_eos, max_length=max_length, truncation=truncation)[0]

    def batch_encode(
        self,
        texts: Sequence[str],
        add_eos: bool = True,
        max_length: int | None = None,
        truncation: bool = False,
    ) -> list[list[int]]:
        """Ids of many texts at once (unpadded lists); much faster than calling :meth:`encode` in a loop."""
        texts = self._check_texts(texts)
        ids = self._encode_batch(texts, add_eos)
        self._limit(ids, max_length, truncation, add_eos, "texts")
        return ids

    def __call__(
        self,
        texts: str | Sequence[str] | None = None,
        text_target: str | Sequence[str] | None = None,
        padding: bool | str = True,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        add_eos: bool = True,
        max_target_length: int | None = None,
    ) -> BatchEncoding:
        """Tokenize a batch for the model: ``input_ids``, ``attention_mask`` and, with targets, ``labels``.

        ``padding``: True / "longest" pads to the longest row, "max_length" to ``max_length``, False not at
        all (then ``return_tensors`` needs equal lengths). Labels are padded with -100 so the loss ignores
        them. ``max_length`` applies to inputs and, unless ``max_target_length`` is given, to targets.
        ``return_tensors``: "pt" (torch), "np" (numpy) or None (lists).
        """
        if texts is None and text_target is None:
            raise TokenizerError("nothing to tokenize: pass texts, text_target or both")
        if padding not in (True, False, "longest", "max_length", "do_not_pad"):
            raise TokenizerError(f"padding must be True, False, 'longest' or 'max_length', not {padding!r}")
        if padding == "max_length" and max_length is None:
            raise TokenizerError("padding='max_length' needs max_length")
        if return_tensors not in (None, "pt", "np"):
            raise TokenizerError(f"return_tensors must be 'pt', 'np' or None, not {return_tensors!r}")
        pad_mode = {True: "longest", "longest": "longest", "max_length": "max_length"}.get(padding, None)
        data: dict[str, Any] = {}
        truncated: list[bool] = []
        labels_truncated = None
        if texts is not None:
            ids = self._encode_batch(self._check_texts(texts), add_eos)
            truncated = self._limit(ids, max_length, truncation, add_eos, "texts")
            data["input_ids"], data["attention_mask"] = _pad(ids, pad_mode, max_length, PAD_ID, return_tensors)
        if text_target is not None:
            target_max = max_target_length if max_target_length is not None else max_length
            ids = self._encode_batch(self._check_texts(text_target, "text_target"), add_eos)
            labels_truncated = self._limit(ids, target_max, truncation, add_eos, "text_target")
            labels, _ = _pad(ids, pad_mode, target_max, LABEL_PAD_ID, return_tensors)
            if texts is None:
                data["input_ids"], data["attention_mask"] = _pad(ids, pad_mode, target_max, PAD_ID, return_tensors)
                truncated = labels_truncated
            data["labels"] = labels
        return BatchEncoding(data, truncated, labels_truncated)

    # -- decoding ----------------------------------------------------------------------------------
    def _decode_run(self, ids: list[int], first: bool) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _special_text(self, token_id: int) -> str | None:
        """The text of a special id (None for an ordinary one)."""
        if token_id in (PAD_ID, EOS_ID):
            return PAD_TOKEN if token_id == PAD_ID else EOS_TOKEN
        index = self._sentinel_index(token_id)
        return None if index is None else f"<extra_id_{index}>"

    def _check_ids(self, ids: Any) -> list[int]:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        if not isinstance(ids, (list, tuple)):
            raise TokenizerError(f"decode() takes a list of ids, not {type(ids).__name__}")
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TokenizerError(f"decode() got a {type(i).__name__} ({i!r:.40}) among the ids; ids are ints")
            if not 0 <= i < self.vocab_size:
                hint = " (-100 is label padding: replace it with pad_token_id 0 first)" if i == -100 else ""
                raise TokenizerError(f"id {i} is out of range for this vocabulary of {self.vocab_size} ids{hint}")
            out.append(i)
        return out

    def decode(self, ids: Sequence[int] | Any, skip_special_tokens: bool = False) -> str:
        """Text of a list of ids (a list, tuple, tensor or array). Out-of-range ids raise TokenizerError."""
        ids = self._check_ids(ids)
        parts: list[str] = []
        run: list[int] = []
        for token_id in ids:
            text = self._special_text(token_id)
            if text is None:
                run.append(token_id)
                continue
            if run:
                parts.append(self._decode_run(run, first=not parts))
                run = []
            if not skip_special_tokens:
                parts.append(text)
        if run:  # "first": nothing emitted yet, so the dummy-prefix space is dropped (as after skipped pads)
            parts.append(self._decode_run(run, first=not parts))
        return "".join(parts)

    def batch_decode(self, sequences: Iterable[Sequence[int]] | Any, skip_special_tokens: bool = False) -> list[str]:
        """:meth:`decode` for each row (a list of lists, or a 2-D tensor/array)."""
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(seq, skip_special_tokens=skip_special_tokens) for seq in sequences]


def _pad(
    ids: list[list[int]], mode: str | None, max_length: int | None, pad_value: int, return_tensors: str | None
) -> tuple[Any, Any]:
    """Pad rows and build the attention mask; vectorised with numpy (no per-token Python work)."""
    lengths = [len(x) for x in ids]
    longest = max(lengths, default=0)
    width = max_length if mode == "max_length" else longest
    if mode is None:
        if return_tensors is None:
            return ids, [[1] * n for n in lengths]
        if len(set(lengths)) > 1:
            raise TokenizerError(
                f"rows have different lengths ({min(lengths)}..{longest}): pass padding=True to return tensors"
            )
    if return_tensors is None:
        padded = [x + [pad_value] * (width - n) for x, n in zip(ids, lengths)]
        mask = [[1] * n + [0] * (width - n) for n in lengths]
        return padded, mask
    import numpy as np

    n_rows = len(ids)
    arr = np.full((n_rows, width), pad_value, dtype=np.int64)
    lens = np.asarray(lengths, dtype=np.int64)
    mask = np.arange(width)[None, :] < lens[:, None]
    arr[mask] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lens.sum()))
    mask = mask.astype(np.int64)
    if return_tensors == "np":
        return arr, mask
    import torch

    return torch.from_numpy(arr), torch.from_numpy(mask)


# --------------------------------------------------------------------------------------------------
# A minimal protobuf reader/writer for SentencePiece's ModelProto (no protobuf dependency)

_PIECE_NORMAL, _PIECE_UNKNOWN, _PIECE_CONTROL, _PIECE_BYTE = 1, 2, 3, 6


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32 values are written as 10-byte two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("bad varint")


def _fields(buf: bytes) -> list[tuple[int, int, bytes]]:
    """Split a protobuf message into (field number, wire type, raw field bytes including its key)."""
    out = []
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            pos += size
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated field")
        out.append((number, wire, buf[start:pos]))
    return out


def _payload(raw: bytes) -> bytes:
    """The payload of a length-delimited field given its raw bytes."""
    _, pos = _read_varint(raw, 0)
    size, pos = _read_varint(raw, pos)
    return raw[pos : pos + size]


def _key(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _msg(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def _with_dummy_prefix(model_proto: bytes, add_dummy_prefix: bool) -> bytes:
    """A copy of a ModelProto whose normaliser (and denormaliser) has ``add_dummy_prefix`` set as asked."""
    out = bytearray()
    for number, _wire, raw in _fields(model_proto):
        if number in (3, 5):
            kept = b"".join(r for n, _w, r in _fields(_payload(raw)) if n != 3)
            out += _msg(number, kept + _key(3, 0) + _varint(int(add_dummy_prefix)))
        else:
            out += raw
    return bytes(out)


def _build_model_proto(
    pieces: list[tuple[str, float, int]],
    charsmap: bytes,
    add_dummy_prefix: bool,
    byte_fallback: bool,
    unk_id: int,
) -> bytes:
    """Serialise a unigram ModelProto with T5's special ids (what ``spiece.model`` holds)."""
    out = bytearray()
    for piece, score, kind in pieces:
        body = _msg(1, piece.encode("utf-8")) + _key(2, 5) + struct.pack("<f", score) + _key(3, 0) + _varint(kind)
        out += _msg(1, body)
    trainer = (
        _key(3, 0) + _varint(1)  # model_type UNIGRAM
        + _key(4, 0) + _varint(len(pieces))
        + _key(35, 0) + _varint(int(byte_fallback))
        + _key(40, 0) + _varint(unk_id)
        + _key(41, 0) + _varint(-1)  # no bos
        + _key(42, 0) + _varint(EOS_ID)
        + _key(43, 0) + _varint(PAD_ID)
    )  # fmt: skip
    out += _msg(2, trainer)
    name = b"nmt_nfkc" if charsmap else b"identity"
    normalizer = (
        _msg(1, name)
        + (_msg(2, charsmap) if charsmap else b"")
        + _key(3, 0) + _varint(int(add_dummy_prefix))
        + _key(4, 0) + _varint(1)
        + _key(5, 0) + _varint(1)
    )  # fmt: skip
    out += _msg(3, normalizer)
    return bytes(out)


# --------------------------------------------------------------------------------------------------
# SentencePiece tokenizer


def _load_processor(model_proto: bytes, source: str):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model_proto)
    except Exception as err:  # sentencepiece raises RuntimeError/OSError with a C++ message
        raise TokenizerError(
            f"{source} is not a valid SentencePiece model ({err}); re-download or retrain it"
        ) from None
    return sp


class Tokenizer(_TokenizerBase):
    """The T5 SentencePiece tokenizer (also mT5/UMT5 and vocabularies made by :func:`train_tokenizer`).

    Build it with :meth:`from_pretrained` (a directory, a ``spiece.model`` file or a hub repo id) or
    directly from the bytes of a ``spiece.model``. See the module docstring for ``legacy``.
    """

    def __init__(
        self,
        model_proto: bytes,
        num_sentinels: int = DEFAULT_NUM_SENTINELS,
        legacy: bool = False,
        num_threads: int | None = None,
        name_or_path: str = "<bytes>",
        model_max_length: int | None = None,
    ):
        if not isinstance(model_proto, (bytes, bytearray)) or not model_proto:
            raise TokenizerError(f"{name_or_path}: an empty or non-bytes SentencePiece model")
        if num_sentinels < 0:
            raise TokenizerError(f"num_sentinels must be >= 0, got {num_sentinels}")
        self._model_proto = bytes(model_proto)
        self._sp = _load_processor(self._model_proto, name_or_path)
        sp = self._sp
        got = (sp.pad_id(), sp.eos_id(), sp.unk_id())
        if got != (PAD_ID, EOS_ID, UNK_ID):
            raise TokenizerError(
                f"{name_or_path}: special ids pad/eos/unk are {got}, T5 needs (0, 1, 2); "
                "train the vocabulary with `t5kit tokenizer train`"
            )
        self._sp_no_prefix = None
        self.num_pieces = sp.get_piece_size()
        self.num_sentinels = int(num_sentinels)
        self.vocab_size = self.num_pieces + self.num_sentinels
        self.legacy = bool(legacy)
        self.num_threads = int(num_threads) if num_threads else min(8, os.cpu_count() or 1)
        self.name_or_path = name_or_path
        self.model_max_length = model_max_length
        self._unk_surface: str | None = None

    def __repr__(self) -> str:
        return (
            f"Tokenizer({self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"num_sentinels={self.num_sentinels}, legacy={self.legacy})"
        )

    def __getstate__(self) -> dict:
        """Picklable (DataLoader workers, multiprocessing): the processors are rebuilt from the model bytes."""
        state = self.__dict__.copy()
        state["_sp"] = state["_sp_no_prefix"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._sp = _load_processor(self._model_proto, self.name_or_path)

    # -- loading and saving ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        legacy: bool = False,
        num_sentinels: int | None = None,
        num_threads: int | None = None,
        revision: str | None = None,
    ) -> Tokenizer:
        """Load from a directory holding ``spiece.model`` (or a unigram ``tokenizer.json``), a
        ``spiece.model`` file, or a Hugging Face hub repo id (downloaded; needs the network once).

        ``num_sentinels`` defaults to ``extra_ids`` from ``tokenizer_config.json`` (or the number of
        ``<extra_id_N>`` tokens in ``tokenizer.json``), else 100.
        """
        path = Path(path_or_repo_id)
        if path.is_file():
            return cls._from_spiece(path, legacy, 100 if num_sentinels is None else num_sentinels, num_threads)
        directory = _resolve_directory(path_or_repo_id, revision)
        config = _read_json(directory / "tokenizer_config.json")
        spiece = directory / "spiece.model"
        if num_sentinels is None and isinstance(config.get("extra_ids"), int) and config["extra_ids"] > 0:
            num_sentinels = config["extra_ids"]
        max_len = config.get("model_max_length")
        max_len = max_len if isinstance(max_len, int) and max_len < 10**9 else None
        if spiece.is_file():
            tok = cls._from_spiece(spiece, legacy, 100 if num_sentinels is None else num_sentinels, num_threads)
        elif (directory / "tokenizer.json").is_file():
            proto, found = _proto_from_tokenizer_json(directory / "tokenizer.json")
            tok = cls(proto, found if num_sentinels is None else num_sentinels, legacy, num_threads, str(directory))
        else:
            raise TokenizerError(
                f"{directory} holds neither spiece.model nor tokenizer.json; point at a T5 checkpoint or "
                "tokenizer directory, or train one with `t5kit tokenizer train`"
            )
        tok.model_max_length = max_len
        return tok

    @classmethod
    def _from_spiece(cls, path: Path, legacy: bool, num_sentinels: int, num_threads: int | None) -> Tokenizer:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise TokenizerError(f"cannot read {path}: {err.strerror or err}") from None
        return cls(data, num_sentinels, legacy, num_threads, str(path.parent if path.name == "spiece.model" else path))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``spiece.model``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

        ``transformers``' ``T5Tokenizer.from_pretrained(directory)`` loads the result with the same ids.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "spiece.model").write_bytes(self._model_proto)
        extra = [f"<extra_id_{i}>" for i in range(self.num_sentinels)]
        config = {
            "tokenizer_class": "T5Tokenizer",
            "eos_token": EOS_TOKEN,
            "unk_token": UNK_TOKEN,
            "pad_token": PAD_TOKEN,
            "extra_ids": self.num_sentinels,
            "additional_special_tokens": extra,
            "legacy": self.legacy,
            "model_max_length": self.model_max_length or 512,
        }
        special = {"eos_token": EOS_TOKEN, "unk_token": UNK_TOKEN, "pad_token": PAD_TOKEN}
        if extra:
            special["additional_special_tokens"] = extra
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
        return out

    @property
    def model_proto(self) -> bytes:
        """The serialised SentencePiece model (the bytes of ``spiece.model``)."""
        return self._model_proto

    # -- pieces ------------------------------------------------------------------------------------
    def _sentinel_id(self, i: int) -> int:
        return self.vocab_size - 1 - i

    def _sentinel_index(self, token_id: int) -> int | None:
        if self.num_pieces <= token_id < self.vocab_size:
            return self.vocab_size - 1 - token_id
        return None

    def id_to_piece(self, token_id: int) -> str:
        """The piece (or special token text) of one id."""
        (token_id,) = self._check_ids([token_id])
        special = self._special_text(token_id)
        return special if special is not None else self._sp.id_to_piece(token_id)

    def piece_to_id(self, piece: str) -> int:
        """The id of a piece (``<extra_id_N>`` included); unknown pieces give unk (2)."""
        m = _SPECIAL_RE.fullmatch(piece)
        if m is not None and (special := self._special_id(m)) is not None:
            return special
        return self._sp.piece_to_id(piece)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.id_to_piece(i) for i in self._check_ids(ids)]

    def normalize(self, text: str) -> str:
        """The text as the model sees it: NFKC-style normalised, whitespace collapsed and stripped."""
        if not isinstance(text, str):
            raise TokenizerError(f"normalize() takes a string, not {type(text).__name__}")
        return self._no_prefix.normalize(text).replace("\u2581", " ")

    # -- encoding ----------------------------------------------------------------------------------
    @property
    def _no_prefix(self):
        """A second processor without the dummy "▁" prefix: text glued to a preceding special token."""
        if self._sp_no_prefix is None:
            self._sp_no_prefix = _load_processor(_with_dummy_prefix(self._model_proto, False), self.name_or_path)
        return self._sp_no_prefix

    def _starts_word(self, segment: str) -> bool:
        """Whether text following a special token begins with whitespace, as the normaliser sees it."""
        return self._no_prefix.normalize("x" + segment).startswith(("x\u2581", "x "))

    def _encode_batch(self, texts: list[str], add_eos: bool) -> list[list[int]]:
        # Real batches repeat themselves (labels such as "positive", prompts, boilerplate lines): encode
        # each distinct text once, then copy its ids into every row that holds it.
        distinct = dict.fromkeys(texts)
        if len(distinct) < 0.9 * len(texts):
            keys = list(distinct)
            table = dict(zip(keys, self._sp.encode(keys, add_eos=add_eos, num_threads=self.num_threads)))
            ids = list(map(list, map(table.__getitem__, texts)))  # a fresh list per row: rows can be edited
        else:
            ids = self._sp.encode(texts, add_eos=add_eos, num_threads=self.num_threads)
        specials = self._special_spans(texts)
        if specials:
            self._encode_with_specials(texts, specials, ids, add_eos)
        return ids

    def _encode_with_specials(
        self, texts: list[str], specials: dict[int, list[tuple[int, int, int]]], ids: list[list[int]], add_eos: bool
    ) -> None:
        """Re-encode the texts that hold inline special tokens, segment by segment, batched."""
        # plan: per row a list of ("text", processor index, position) or ("id", token id)
        batches: tuple[list[str], list[str]] = ([], [])  # 0: with dummy prefix, 1: without
        plans: dict[int, list[tuple[int, int]]] = {}
        for row, spans in specials.items():
            text = texts[row]
            plan: list[tuple[int, int]] = []
            pos = 0
            for start, end, token_id in spans:
                self._plan_segment(text[pos:start], pos == 0, batches, plan)
                plan.append((-1, token_id))
                pos = end
            self._plan_segment(text[pos:], pos == 0, batches, plan)
            plans[row] = plan
        encoded = (
            self._sp.encode(batches[0], num_threads=self.num_threads) if batches[0] else [],
            self._no_prefix.encode(batches[1], num_threads=self.num_threads) if batches[1] else [],
        )
        for row, plan in plans.items():
            seq: list[int] = []
            for which, value in plan:
                if which < 0:
                    seq.append(value)
                else:
                    seq.extend(encoded[which][value])
            if add_eos and (not seq or seq[-1] != EOS_ID):
                seq.append(EOS_ID)
            ids[row] = seq

    def _plan_segment(
        self, segment: str, at_start: bool, batches: tuple[list[str], list[str]], plan: list[tuple[int, int]]
    ) -> None:
        if not segment:
            return
        which = 0 if (at_start or self.legacy or self._starts_word(segment)) else 1
        plan.append((which, len(batches[which])))
        batches[which].append(segment)

    # -- decoding ----------------------------------------------------------------------------------
    def _decode_run(self, ids: list[int], first: bool) -> str:
        text = self._sp.decode(ids)
        if not first and self._sp.id_to_piece(ids[0]).startswith("\u2581"):
            text = " " + text  # SentencePiece drops the leading space; after a special token it is real
        return text


# --------------------------------------------------------------------------------------------------
# Byte tokenizer (ByT5)


class ByteTokenizer(_TokenizerBase):
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
        directory = _resolve_directory(path_or_repo_id, revision)
        config = _read_json(directory / "tokenizer_config.json")
        extra = config.get("extra_ids")
        tok = cls(extra if isinstance(extra, int) and extra > 0 else BYT5_NUM_SENTINELS, str(directory))
        return tok

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write a ``tokenizer_config.json``/``special_tokens_map.json`` that ``ByT5Tokenizer`` loads."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": "ByT5Tokenizer",
            "eos_token": EOS_TOKEN,
            "unk_token": UNK_TOKEN,
            "pad_token": PAD_TOKEN,
            "extra_ids": self.num_sentinels,
        }
        special = {"eos_token": EOS_TOKEN, "unk_token": UNK_TOKEN, "pad_token": PAD_TOKEN}
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
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


# --------------------------------------------------------------------------------------------------
# Loading helpers

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TokenizerError(f"{path} is not valid JSON: {err}") from None
    return data if isinstance(data, dict) else {}


def _resolve_directory(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory for a path, or a downloaded snapshot for a hub repo id."""
    path = Path(path_or_repo_id)
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    looks_local = text.startswith((".", "/", "~")) or os.sep in text.replace("/", "") or path.suffix == ".model"
    if looks_local or not _REPO_ID_RE.match(text) or text.count("/") > 1:
        raise TokenizerError(f"{text}: no such tokenizer directory or file")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise TokenizerError(f"{text} is not a local directory and huggingface_hub is not installed") from None
    patterns = ["spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"]
    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=patterns))
    except Exception as err:  # network errors, missing repos, offline mode: all mean "cannot fetch"
        kind = type(err).__name__
        raise TokenizerError(
            f"{text} is not a local directory and could not be downloaded from the Hugging Face hub "
            f"({kind}: {str(err).splitlines()[0] if str(err) else 'no details'}). With no network, "
            "pass a local directory holding spiece.model (or tokenizer.json) instead."
        ) from None


def _proto_from_tokenizer_json(path: Path) -> tuple[bytes, int]:
    """Rebuild ``spiece.model`` from a ``tokenizers`` unigram ``tokenizer.json``; returns (proto, sentinels).

    The precompiled normaliser in ``tokenizer.json`` is SentencePiece's own charsmap, so the rebuilt
    model encodes exactly as the original ``spiece.model`` did.
    """
    data = _read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "Unigram" or not isinstance(model.get("vocab"), list):
        raise TokenizerError(
            f"{path} is not a unigram (SentencePiece) tokenizer (model type {model.get('type')!r}); "
            "T5 tokenizers are unigram"
        )
    vocab = model["vocab"]
    sentinel_re = re.compile(r"<extra_id_(\d+)>")
    n_sentinels = 0
    while n_sentinels < len(vocab) and sentinel_re.fullmatch(str(vocab[len(vocab) - 1 - n_sentinels][0])):
        n_sentinels += 1
    base = vocab[: len(vocab) - n_sentinels]
    for i in range(n_sentinels):
        if vocab[len(vocab) - 1 - i][0] != f"<extra_id_{i}>":
            raise TokenizerError(f"{path}: sentinels are not in T5's order (<extra_id_0> last)")
    extra_added = [
        t
        for t in data.get("added_tokens") or []
        if sentinel_re.fullmatch(str(t.get("content"))) and t["id"] >= len(vocab)
    ]
    n_sentinels += len(extra_added)
    unk_id = model.get("unk_id", UNK_ID)
    byte_fallback = bool(model.get("byte_fallback", False))
    if [p[0] for p in base[:3]] != [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN] or unk_id != UNK_ID:
        raise TokenizerError(f"{path}: the first pieces are not <pad>, </s>, <unk> (T5's ids 0, 1, 2)")
    byte_re = re.compile(r"<0x[0-9A-F]{2}>")
    pieces = []
    for i, (piece, score) in enumerate(base):
        if i in (PAD_ID, EOS_ID):
            kind = _PIECE_CONTROL
        elif i == UNK_ID:
            kind = _PIECE_UNKNOWN
        elif byte_fallback and byte_re.fullmatch(piece):
            kind = _PIECE_BYTE
        else:
            kind = _PIECE_NORMAL
        pieces.append((str(piece), float(score), kind))
    charsmap = b""
    stack = [data.get("normalizer")]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "Precompiled" and node.get("precompiled_charsmap"):
                charsmap = base64.b64decode(node["precompiled_charsmap"])
            stack.extend(node.get("normalizers") or [])
    add_prefix = True
    stack = [data.get("pre_tokenizer")]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "Metaspace":
                add_prefix = bool(node.get("add_prefix_space", node.get("prepend_scheme", "always") != "never"))
            stack.extend(node.get("pretokenizers") or [])
    return _build_model_proto(pieces, charsmap, add_prefix, byte_fallback, unk_id), n_sentinels


def load_tokenizer(
    path_or_repo_id: str | os.PathLike, legacy: bool = False, **kwargs: Any
) -> Tokenizer | ByteTokenizer:
    """The right tokenizer for a checkpoint or tokenizer directory (or hub repo id).

    Rule, first match wins:

    1. a ``*.model`` file -> :class:`Tokenizer`;
    2. ``tokenizer_config.json`` naming a ``ByT5`` tokenizer class -> :class:`ByteTokenizer`;
    3. ``spiece.model`` present -> :class:`Tokenizer`;
    4. ``tokenizer.json`` with a Unigram model -> :class:`Tokenizer` rebuilt from it;
    5. ``config.json`` with ``vocab_size`` 384, or a name/architecture mentioning byt5 -> :class:`ByteTokenizer`;
    6. otherwise :class:`~t5kit.errors.TokenizerError`.
    """
    path = Path(path_or_repo_id)
    if path.is_file():
        return Tokenizer.from_pretrained(path, legacy=legacy, **kwargs)
    directory = _resolve_directory(path_or_repo_id, kwargs.pop("revision", None))
    tok_config = _read_json(directory / "tokenizer_config.json")
    if "byt5" in str(tok_config.get("tokenizer_class", "")).lower():
        return ByteTokenizer.from_pretrained(directory)
    if (directory / "spiece.model").is_file() or (directory / "tokenizer.json").is_file():
        return Tokenizer.from_pretrained(directory, legacy=legacy, **kwargs)
    config = _read_json(directory / "config.json")
    names = " ".join(str(config.get(k, "")) for k in ("_name_or_path", "name_or_path", "architectures")).lower()
    if config.get("vocab_size") == BYT5_VOCAB_SIZE or "byt5" in names or "byt5" in directory.name.lower():
        return ByteTokenizer.from_pretrained(directory)
    raise TokenizerError(
        f"{directory}: no tokenizer found (expected spiece.model, a unigram tokenizer.json, or a ByT5 "
        "tokenizer_config.json / config.json with vocab_size 384)"
    )


# --------------------------------------------------------------------------------------------------
# Training


def train_tokenizer(
    input_files: Sequence[str | os.PathLike],
    vocab_size: int,
    out_dir: str | os.PathLike,
    byte_fallback: bool = False,
    num_sentinels: int = DEFAULT_NUM_SENTINELS,
    input_sentence_size: int = 2_000_000,
    character_coverage: float = 0.9995,
    num_threads: int | None = None,
    seed: int = 0,
    max_sentence_length: int = 16384,
    quiet: bool = True,
) -> Tokenizer:
    """Train a SentencePiece unigram vocabulary with T5's conventions and save it to ``out_dir``.

    Conventions: pad 0, eos 1, unk 2, no bos, ``nmt_nfkc`` normalisation, ``vocab_size`` pieces
    (specials included) with ``num_sentinels`` sentinels appended above them by the tokenizer (so the
    model's vocabulary is ``vocab_size + num_sentinels``; round it up to a multiple of 128 for speed).
    ``byte_fallback`` spells unknown characters as UTF-8 byte pieces (as mT5 does) instead of ``<unk>``.
    Inputs are plain text, one sentence or paragraph per line; SentencePiece streams them and keeps a
    random sample of ``input_sentence_size`` lines (reservoir sampling), so large corpora are never
    loaded whole. The result loads in t5kit and in ``transformers``' ``T5Tokenizer``.
    """
    import sentencepiece as spm

    files = [Path(f) for f in input_files]
    if not files:
        raise TokenizerError("no input files to train on")
    for f in files:
        if not f.is_file():
            raise TokenizerError(f"training input {f} does not exist or is not a file")
        if "," in str(f):
            raise TokenizerError(f"training input {f}: SentencePiece cannot read paths containing commas")
    if vocab_size < 4 + (256 if byte_fallback else 0):
        raise TokenizerError(f"vocab_size {vocab_size} is too small" + (" for byte fallback" if byte_fallback else ""))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)
    prefix = out / "spiece"
    options = dict(
        input=",".join(str(f) for f in files),
        model_prefix=str(prefix),
        model_type="unigram",
        vocab_size=vocab_size,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        pad_piece=PAD_TOKEN,
        eos_piece=EOS_TOKEN,
        unk_piece=UNK_TOKEN,
        byte_fallback=byte_fallback,
        normalization_rule_name="nmt_nfkc",
        character_coverage=character_coverage,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        max_sentence_length=max_sentence_length,
        num_threads=num_threads or min(16, os.cpu_count() or 1),
        minloglevel=2 if quiet else 0,
    )
    try:
        spm.SentencePieceTrainer.train(**options)
    except RuntimeError as err:
        raise TokenizerError(f"SentencePiece training failed: {err}") from None
    vocab_file = prefix.with_suffix(".vocab")
    if vocab_file.exists():
        vocab_file.unlink()  # a human-readable copy of the pieces; spiece.model holds everything
    tok = Tokenizer.from_pretrained(prefix.with_suffix(".model"), num_sentinels=num_sentinels)
    tok.save_pretrained(out)
    return Tokenizer.from_pretrained(out)
