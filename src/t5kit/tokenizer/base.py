"""What both T5 tokenizers share: the batch they return, padding, truncation, inline special tokens, decoding.

:class:`~t5kit.tokenizer.Tokenizer` (SentencePiece) and :class:`~t5kit.tokenizer.ByteTokenizer` (ByT5)
differ only in how a run of text becomes ids and back, and where the sentinels sit; everything here is
written once for both. The special ids come from :mod:`t5kit.ids`.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from t5kit.errors import TokenizerError
from t5kit.ids import (
    CONTROL_IDS,
    DECODER_START_ID,
    EOS_ID,
    EOS_TOKEN,
    LABEL_PAD_ID,
    PAD_ID,
    PAD_TOKEN,
    SENTINEL_FORMAT,
    UNK_ID,
    UNK_TOKEN,
    sentinel_token,
)

SENTINEL_RE = re.compile(re.escape(SENTINEL_FORMAT).replace(r"\{\}", r"(\d+)"))
"""A sentinel's text (group 1: its number), derived from :data:`t5kit.ids.SENTINEL_FORMAT`."""
SPECIAL_RE = re.compile("|".join([SENTINEL_RE.pattern, *map(re.escape, CONTROL_IDS)]))
"""An inline special token: a sentinel (group 1: its number) or a control token (``<pad>``, ``</s>``, ``<unk>``)."""


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


class TokenizerBase:
    """Everything that does not depend on how text becomes ids: batching, padding, truncation, decoding."""

    pad_token_id: int = PAD_ID
    eos_token_id: int = EOS_ID
    unk_token_id: int = UNK_ID
    decoder_start_token_id: int = DECODER_START_ID
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
        """The id of an inline special token matched by ``SPECIAL_RE`` (None: not special here)."""
        if match.group(1) is not None:
            n = int(match.group(1))
            if n < self.num_sentinels and match.group(1) == str(n):
                return self._sentinel_id(n)
            return None
        return CONTROL_IDS[match.group(0)]

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
        for m in SPECIAL_RE.finditer(joined):
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
        return None if index is None else sentinel_token(index)

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
                hint = (
                    f" ({LABEL_PAD_ID} is label padding: replace it with pad_token_id {PAD_ID} first)"
                    if i == LABEL_PAD_ID
                    else ""
                )
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
    n_rows = len(ids)
    arr = np.full((n_rows, width), pad_value, dtype=np.int64)
    lens = np.asarray(lengths, dtype=np.int64)
    mask = np.arange(width)[None, :] < lens[:, None]
    arr[mask] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lens.sum()))
    mask = mask.astype(np.int64)
    if return_tensors == "np":
        return arr, mask
    return torch.from_numpy(arr), torch.from_numpy(mask)
