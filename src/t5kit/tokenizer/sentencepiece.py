"""The SentencePiece tokenizer with T5's conventions (T5, T5 v1.1, Flan-T5, mT5, UMT5).

Why this module exists: a T5 checkpoint is only usable with the exact ids it was trained on, and the
common tokenizer bugs (sentinel ids, the extra "▁" after special tokens, EOS handling, dropped
whitespace and braces) silently degrade a model instead of failing. The ids produced here are
SentencePiece's own ids plus EOS, which is what the original T5 pipeline fed the model.

Layout (both tokenizers): pad 0 (also the decoder start), eos ``</s>`` 1, unk ``<unk>`` 2. The
SentencePiece tokenizer puts ``num_sentinels`` sentinels above the SentencePiece pieces, in T5's order:
``<extra_id_i>`` = ``vocab_size - 1 - i`` (32099 - i for T5, whose model embedding has 32,128 rows; ids
32100..32127 are never produced). :class:`~t5kit.tokenizer.ByteTokenizer` uses id = UTF-8 byte + 3 and, like
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

import os
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from t5kit.errors import TokenizerError
from t5kit.ids import EOS_ID, EOS_TOKEN, PAD_ID, PAD_TOKEN, UNK_ID, UNK_TOKEN, sentinel_token
from t5kit.io import atomic_open, write_json
from t5kit.tokenizer.base import SPECIAL_RE, TokenizerBase
from t5kit.tokenizer.convert import proto_from_tokenizer_json, with_dummy_prefix
from t5kit.tokenizer.files import read_json, tokenizer_directory

DEFAULT_NUM_SENTINELS = 100  # T5's sentinels <extra_id_0> .. <extra_id_99>


def _load_processor(model_proto: bytes, source: str) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model_proto)
    except Exception as err:  # sentencepiece raises RuntimeError/OSError with a C++ message
        raise TokenizerError(
            f"{source} is not a valid SentencePiece model ({err}); re-download or retrain it"
        ) from None
    return sp


class Tokenizer(TokenizerBase):
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
        self._sp_no_prefix: spm.SentencePieceProcessor | None = None  # built on first use (see _no_prefix)
        self.num_pieces = sp.get_piece_size()
        self.num_sentinels = int(num_sentinels)
        self.vocab_size = self.num_pieces + self.num_sentinels
        self.legacy = bool(legacy)
        self.num_threads = int(num_threads) if num_threads else min(8, os.cpu_count() or 1)
        self.name_or_path = name_or_path
        self.model_max_length = model_max_length

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
        ``<extra_id_N>`` tokens in ``tokenizer.json``), else 100. ``"t5"`` names the T5 vocabulary shipped in
        t5kit (:func:`~t5kit.tokenizer.t5_vocabulary_path`).
        """
        path = Path(path_or_repo_id)
        if path.is_file():
            return cls._from_spiece(
                path, legacy, DEFAULT_NUM_SENTINELS if num_sentinels is None else num_sentinels, num_threads
            )
        directory = tokenizer_directory(path_or_repo_id, revision)
        config = read_json(directory / "tokenizer_config.json")
        spiece = directory / "spiece.model"
        if num_sentinels is None and isinstance(config.get("extra_ids"), int) and config["extra_ids"] > 0:
            num_sentinels = config["extra_ids"]
        max_len = config.get("model_max_length")
        max_len = max_len if isinstance(max_len, int) and max_len < 10**9 else None
        if spiece.is_file():
            tok = cls._from_spiece(
                spiece, legacy, DEFAULT_NUM_SENTINELS if num_sentinels is None else num_sentinels, num_threads
            )
        elif (directory / "tokenizer.json").is_file():
            proto, found = proto_from_tokenizer_json(directory / "tokenizer.json")
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
        with atomic_open(out / "spiece.model", "wb") as f:
            f.write(self._model_proto)
        extra = [sentinel_token(i) for i in range(self.num_sentinels)]
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
        write_json(out / "tokenizer_config.json", config)
        write_json(out / "special_tokens_map.json", special)
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
        m = SPECIAL_RE.fullmatch(piece)
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
    def _no_prefix(self) -> spm.SentencePieceProcessor:
        """A second processor without the dummy "▁" prefix: text glued to a preceding special token."""
        if self._sp_no_prefix is None:
            self._sp_no_prefix = _load_processor(with_dummy_prefix(self._model_proto, False), self.name_or_path)
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
