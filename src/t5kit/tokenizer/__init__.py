"""T5 tokenizers: SentencePiece (T5, T5 v1.1, Flan-T5, mT5, UMT5) and byte-level (ByT5), one interface.

Where things are (one job per file):

- ``base.py``: what both tokenizers share: the batch (``BatchEncoding``), padding, truncation, inline
  special tokens, decoding;
- ``sentencepiece.py``: :class:`Tokenizer`, SentencePiece with T5's conventions (``legacy`` explained there);
- ``byte.py``: :class:`ByteTokenizer`, ByT5's byte ids;
- ``convert.py``: ``tokenizer.json`` -> ``spiece.model`` through SentencePiece's own ModelProto;
- ``train.py``: :func:`train_tokenizer`, a new vocabulary with T5's conventions;
- ``files.py``: where a tokenizer's files are (local directory, hub id through :func:`t5kit.hub.resolve`,
  or ``"t5"``: the T5 vocabulary shipped in the package, :func:`t5_vocabulary_path`);
- ``load.py``: :func:`load_tokenizer`, the one loader that picks the class.

The special ids and tokens are defined once, in :mod:`t5kit.ids`; they are re-exported here because
``from t5kit.tokenizer import PAD_ID`` worked before the package was split.
"""

from __future__ import annotations

from t5kit.ids import EOS_ID, EOS_TOKEN, LABEL_PAD_ID, PAD_ID, PAD_TOKEN, UNK_ID, UNK_TOKEN
from t5kit.tokenizer.base import BatchEncoding
from t5kit.tokenizer.byte import BYT5_NUM_SENTINELS, BYT5_OFFSET, BYT5_VOCAB_SIZE, ByteTokenizer
from t5kit.tokenizer.files import T5_VOCABULARY, t5_vocabulary_path
from t5kit.tokenizer.load import load_tokenizer
from t5kit.tokenizer.sentencepiece import DEFAULT_NUM_SENTINELS, Tokenizer
from t5kit.tokenizer.train import train_tokenizer

__all__ = [
    "BYT5_NUM_SENTINELS",
    "BYT5_OFFSET",
    "BYT5_VOCAB_SIZE",
    "DEFAULT_NUM_SENTINELS",
    "EOS_ID",
    "EOS_TOKEN",
    "LABEL_PAD_ID",
    "PAD_ID",
    "PAD_TOKEN",
    "T5_VOCABULARY",
    "UNK_ID",
    "UNK_TOKEN",
    "BatchEncoding",
    "ByteTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "t5_vocabulary_path",
    "train_tokenizer",
]
