"""t5kit.hub: one rule for "a local directory or a hub id", and one message when neither works."""

from __future__ import annotations

import pytest

from t5kit.errors import CheckpointError
from t5kit.hub import HubError, looks_like_repo_id, resolve


@pytest.mark.parametrize("name", ["t5-small", "google/flan-t5-small", "google-t5/t5-base"])
def test_hub_ids(name):
    assert looks_like_repo_id(name)


@pytest.mark.parametrize("name", ["./model", "/abs/model", "~/model", "a/b/c", "spiece.model", "runs\\best", ""])
def test_local_looking_names_are_never_sent_to_the_hub(name):
    assert not looks_like_repo_id(name)


def test_local_directories_and_clear_errors(tmp_path):
    assert resolve(tmp_path) == tmp_path
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(HubError, match="is a file; pass the checkpoint directory"):
        resolve(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no tokenizer directory at './missing'"):
        resolve("./missing", what="tokenizer", error=CheckpointError)


def test_an_unreachable_hub_id_says_what_to_do_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="could not be fetched from the Hugging Face hub.*offline"):
        resolve("t5kit-test/does-not-exist")
