"""Training a SentencePiece vocabulary with T5's conventions (``t5kit tokenizer train``).

Why SentencePiece's own trainer: the result must load, with the same ids, in SentencePiece, in t5kit and
in ``transformers``' ``T5Tokenizer`` (the tests check all three), and SentencePiece streams and samples
large corpora instead of loading them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from t5kit.errors import TokenizerError
from t5kit.ids import EOS_ID, EOS_TOKEN, PAD_ID, PAD_TOKEN, UNK_ID, UNK_TOKEN
from t5kit.tokenizer.sentencepiece import DEFAULT_NUM_SENTINELS, Tokenizer


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
    loaded whole. The result loads in t5kit and in ``transformers``' ``T5Tokenizer``. ``out_dir`` gets
    ``spiece.model``, ``tokenizer_config.json`` and ``special_tokens_map.json``, each written atomically
    (no half-written vocabulary after a crash or Ctrl-C).
    """
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
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()  # SentencePiece writes the model here, not to files: out_dir only gets finished files
    options = dict(
        input=",".join(str(f) for f in files),
        model_writer=model,
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
    Tokenizer(model.getvalue(), num_sentinels, name_or_path=str(out)).save_pretrained(out)  # atomic writes
    return Tokenizer.from_pretrained(out)
