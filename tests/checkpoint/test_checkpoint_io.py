"""Checkpoint formats, tying, and every way a checkpoint can be broken."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hf_models import build_hf_model, padded_batch
from safetensors.torch import load_file, save_file

import t5kit.checkpoint
from t5kit import T5Config, T5Model
from t5kit.checkpoint import (
    SAFETENSORS_INDEX_NAME,
    check_state_dict,
    read_checkpoint,
    to_hf_state_dict,
    write_checkpoint,
)
from t5kit.errors import CheckpointError, ConfigError
from t5kit.model import hf_state_dict, load_model


@pytest.fixture()
def tiny(tmp_path):
    torch.manual_seed(0)
    model = T5Model(T5Config.from_preset("tiny", vocab_size=120)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def _same(a: T5Model, b: T5Model) -> bool:
    ids = torch.randint(3, a.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a(input_ids=ids, labels=ids).logits, b(input_ids=ids, labels=ids).logits)


def test_round_trip_is_exact_and_atomic(tiny):
    model, path = tiny
    assert _same(model, T5Model.from_pretrained(path))
    assert not [p for p in os.listdir(path) if p.endswith(".tmp")]


def test_sharded_save_and_load(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    index = json.loads((tmp_path / "sharded" / SAFETENSORS_INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 3
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    assert _same(model, T5Model.from_pretrained(tmp_path / "sharded"))


def test_legacy_bin_is_read_with_weights_only(tiny, tmp_path):
    model, path = tiny
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((path / "config.json").read_text())
    torch.save(hf_state_dict(model), tmp_path / "bin" / "pytorch_model.bin")
    assert _same(model, T5Model.from_pretrained(tmp_path / "bin"))


def test_a_pickle_holding_code_is_refused(tiny, tmp_path):
    _, path = tiny
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "config.json").write_text((path / "config.json").read_text())
    torch.save({"shared.weight": torch.zeros(2), "payload": os.system}, tmp_path / "evil" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="does not unpickle arbitrary code"):
        load_model(tmp_path / "evil")


def test_aliases_and_tied_heads_are_retied(tmp_path):
    hf = build_hf_model("v1.0-relu-tied")
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    # A file holding only the decoder alias of the embedding, plus the unused legacy cross-attention table.
    shared = state.pop("shared.weight")
    state.pop("encoder.embed_tokens.weight", None)
    state.pop("lm_head.weight", None)
    state["decoder.embed_tokens.weight"] = shared.clone()
    state["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(32, 4)
    hf.config.save_pretrained(tmp_path)
    save_file(state, str(tmp_path / "model.safetensors"))
    model = T5Model.from_pretrained(tmp_path)
    assert model.tied and torch.equal(model.shared.weight, shared)
    ids, mask, labels = padded_batch(hf.config.vocab_size)
    with torch.no_grad():
        assert (model(input_ids=ids, attention_mask=mask, labels=labels).logits
                - hf(input_ids=ids, attention_mask=mask, labels=labels).logits).abs().max() <= 1e-5


def test_missing_config(tiny):
    _, path = tiny
    (path / "config.json").unlink()
    with pytest.raises(ConfigError, match="no config.json"):
        load_model(path)


def test_unknown_feed_forward_proj(tiny):
    _, path = tiny
    cfg = json.loads((path / "config.json").read_text())
    cfg["feed_forward_proj"] = "gated-swiglu"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="feed_forward_proj"):
        load_model(path)


def test_wrong_shape_names_tensor_and_both_shapes(tiny):
    _, path = tiny
    state = load_file(str(path / "model.safetensors"))
    state["encoder.block.1.layer.1.DenseReluDense.wo.weight"] = torch.zeros(64, 99)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"encoder.block.1.layer.1.DenseReluDense.wo.weight has shape \(64, 99\)"
                       r".*implies \(64, 128\)"):
        load_model(path)


def test_missing_and_unexpected_tensors_are_named(tiny):
    _, path = tiny
    state = load_file(str(path / "model.safetensors"))
    del state["decoder.block.1.layer.2.layer_norm.weight"]
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing decoder.block.1.layer.2.layer_norm.weight"):
        load_model(path)
    state["decoder.block.1.layer.2.layer_norm.weight"] = torch.ones(64)
    state["encoder.block.0.layer.0.SelfAttention.bias"] = torch.ones(64)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected tensors.*SelfAttention.bias"):
        load_model(path)


def test_truncated_safetensors(tiny):
    _, path = tiny
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(path)


def test_no_weights_and_missing_path(tmp_path):
    T5Config.from_preset("tiny").save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no weights"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        load_model(tmp_path / "nope" / "deeper")


def test_repo_id_while_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(CheckpointError, match="offline.*local directory"):
        load_model("google/flan-t5-small")


def test_unwritable_output_directory(tiny, tmp_path):
    model, _ = tiny
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot create checkpoint directory"):
        model.save_pretrained(blocker / "sub")


def test_checkpoint_io_never_imports_the_model():
    """``import t5kit`` itself imports the model (``t5kit.T5Model``), so a plain ``import t5kit.checkpoint.io``
    would always find ``t5kit.model`` in ``sys.modules``; a bare ``t5kit`` package object stands in for the
    top-level ``__init__`` here, and the check that it can fail comes last."""
    src = os.path.dirname(os.path.dirname(t5kit.checkpoint.__file__))
    code = f"""
import sys, types
package = types.ModuleType("t5kit")
package.__path__ = [{src!r}]
sys.modules["t5kit"] = package
import t5kit.checkpoint, t5kit.checkpoint.io, t5kit.checkpoint.inspect
above = sorted(m for m in sys.modules if m.split(".")[:2] in (["t5kit", "model"], ["t5kit", "kernels"],
                                                               ["t5kit", "generate"], ["t5kit", "tokenizer"]))
assert not above, above
import t5kit.model
assert "t5kit.model" in sys.modules
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_state_dicts_in_and_out_without_a_model(tiny, tmp_path):
    model, path = tiny
    config, state = read_checkpoint(path)
    assert config.to_dict() == model.config.to_dict()
    assert set(state) == {name for name, _ in model.named_parameters()}
    assert all(torch.equal(state[name], p) for name, p in model.named_parameters())
    write_checkpoint(tmp_path / "again", config, state, max_shard_size="100KB")
    config2, state2 = read_checkpoint(tmp_path / "again", dtype="bf16")
    assert config2.to_dict() == config.to_dict()
    assert all(torch.equal(state2[name], state[name].to(torch.bfloat16)) for name in state)


def test_a_tied_head_is_stored_once_and_read_back_tied(tmp_path):
    torch.manual_seed(0)
    config = T5Config.from_preset("tiny", vocab_size=120, feed_forward_proj="relu", tie_word_embeddings=True)
    model = T5Model(config)
    state = model.state_dict()
    assert "lm_head.weight" in state and "lm_head.weight" not in to_hf_state_dict(state, tied=True)
    write_checkpoint(tmp_path, config, state)
    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))
    config2, state2 = read_checkpoint(tmp_path)
    assert config2.tie_word_embeddings and "lm_head.weight" not in state2
    # An untied config over a file whose head equals the embedding: the file wins.
    config.tie_word_embeddings = False
    copy = {**state, "lm_head.weight": state["shared.weight"].clone()}
    write_checkpoint(tmp_path / "untied", config, copy, tied=False)
    assert "lm_head.weight" in load_file(str(tmp_path / "untied" / "model.safetensors"))
    config3, state3 = read_checkpoint(tmp_path / "untied")
    assert config3.tie_word_embeddings and "lm_head.weight" not in state3


def test_check_state_dict_names_the_misfit_in_hugging_face_names():
    expected = {"shared.weight": (10, 4), "encoder.final_norm.weight": (4,)}
    check_state_dict({"shared.weight": torch.zeros(10, 4), "encoder.final_norm.weight": torch.ones(4)}, expected, "x")
    with pytest.raises(CheckpointError, match=r"checkpoint x does not fit .*missing encoder.final_layer_norm.weight"):
        check_state_dict({"shared.weight": torch.zeros(10, 4)}, expected, "x")
    with pytest.raises(CheckpointError, match=r"tensor shared.weight has shape \(10, 5\)"):
        check_state_dict({"shared.weight": torch.zeros(10, 5), "encoder.final_norm.weight": torch.ones(4)},
                         expected, "x")
