"""``t5kit.tokenizer.load.load_tokenizer``: which class for which files, and the loading errors."""

from __future__ import annotations

import json

import pytest
from tokenizer_references import VOCAB

from t5kit.errors import TokenizerError
from t5kit.tokenizer import T5_VOCABULARY, ByteTokenizer, Tokenizer, load_tokenizer, t5_vocabulary_path


def test_load_tokenizer_rule(tmp_path):
    (tmp_path / "byt5").mkdir()
    (tmp_path / "byt5" / "config.json").write_text(json.dumps({"vocab_size": 384}))
    assert isinstance(load_tokenizer(tmp_path / "byt5"), ByteTokenizer)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer found"):
        load_tokenizer(tmp_path / "empty")
    if (VOCAB / "spiece.model").is_file():
        t = load_tokenizer(VOCAB / "spiece.model")
        assert isinstance(t, Tokenizer) and t.encode("Hello world") == [8774, 296, 1]


def test_bad_tokenizer_files_raise_clear_errors(tmp_path, monkeypatch):
    """Not a tokenizer, a broken or truncated spiece.model, a missing path, an offline hub: each a TokenizerError."""
    with pytest.raises(TokenizerError, match="neither spiece.model nor tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"\x00 definitely not a sentencepiece model \xff" * 10)
    with pytest.raises(TokenizerError, match="not a valid SentencePiece model"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes((VOCAB / "spiece.model").read_bytes()[:5000])  # truncated file
    with pytest.raises(TokenizerError, match="not a valid SentencePiece model"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(TokenizerError, match="no such"):
        Tokenizer.from_pretrained(tmp_path / "missing" / "dir")

    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("Cannot reach the Hub: network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(TokenizerError, match="local directory"):
        Tokenizer.from_pretrained("google-t5/t5-small")


def test_t5_names_the_shipped_vocabulary(tmp_path, monkeypatch):
    """``"t5"`` is the T5 vocabulary inside the package, for every loader; a local path named t5 still wins."""
    directory = t5_vocabulary_path()
    assert directory.name == "t5-vocab" and (directory / "spiece.model").is_file()
    spec_ids = [13959, 1566, 12, 2968, 10, 37, 629, 19, 1627, 5, 1]  # shared/T5_SPEC.md section 4
    text = "translate English to German: The house is wonderful."
    for loaded in (load_tokenizer(T5_VOCABULARY), Tokenizer.from_pretrained("t5"), load_tokenizer(directory)):
        assert isinstance(loaded, Tokenizer) and loaded.vocab_size == 32100 and loaded.encode(text) == spec_ids
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"vocab_size": 384}))
    assert isinstance(load_tokenizer("t5"), ByteTokenizer)
