"""The special token ids of T5's vocabularies: the one definition in t5kit.

Every published T5 SentencePiece vocabulary (T5, v1.1, Flan-T5, mT5, UMT5) and ByT5's byte vocabulary put
the three control pieces first, in this order; the decoder starts from the pad id (T5_SPEC.md, "special
tokens"). Labels use -100 where a position must not count in the loss, as PyTorch's ``ignore_index`` and
`transformers` do.
"""

from __future__ import annotations

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
DECODER_START_ID = PAD_ID  # the decoder's first input is the pad piece
LABEL_PAD_ID = -100  # label positions ignored by the loss (torch's default ignore_index)

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
CONTROL_IDS = {PAD_TOKEN: PAD_ID, EOS_TOKEN: EOS_ID, UNK_TOKEN: UNK_ID}

SENTINEL_FORMAT = "<extra_id_{}>"  # sentinel i is the i-th id counted down from the top of the vocabulary


def sentinel_token(index: int) -> str:
    """The text of sentinel ``index`` (``<extra_id_0>`` ...)."""
    return SENTINEL_FORMAT.format(index)
