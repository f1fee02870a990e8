"""``checkpoint_info``, ``convert_checkpoint`` and ``model_family`` as functions (the CLI is in tests/cli)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from t5kit import T5Config, T5Model
from t5kit.checkpoint import checkpoint_info, convert_checkpoint, model_family
from t5kit.errors import CheckpointError
from t5kit.model import parameter_shapes


@pytest.fixture()
def tiny(tmp_path):
    torch.manual_seed(0)
    model = T5Model(T5Config.from_preset("tiny", vocab_size=120)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "spiece.model").write_bytes(b"not a real model, only copied along")
    return model, tmp_path / "ckpt"


@pytest.mark.parametrize(("preset", "family"), [
    ("t5-small", "T5 (v1.0)"), ("t5-v1_1-small", "T5 v1.1 / Flan-T5"), ("mt5-small", "mT5"), ("umt5-small", "UMT5"),
    ("byt5-small", "ByT5"),
])
def test_model_family(preset, family):
    assert model_family(T5Config.from_preset(preset)) == family


def test_info_reads_headers_only(tiny):
    model, path = tiny
    info = checkpoint_info(path)
    assert info["family"] == "T5 v1.1 / Flan-T5" and info["matches_preset"] is None
    assert info["parameters_stored"] == model.num_parameters() and info["dtypes"] == {"F32": model.num_parameters()}
    assert info["tokenizer"] == "spiece.model" and "model.safetensors" in info["files"]


def test_convert_casts_shards_and_copies_the_tokenizer(tiny, tmp_path):
    model, path = tiny
    out = convert_checkpoint(path, tmp_path / "fp16", dtype="fp16", max_shard_size="50KB")
    assert (out / "model.safetensors.index.json").exists() and (out / "spiece.model").exists()
    stored = {}
    for shard in out.glob("*.safetensors"):
        stored.update(load_file(str(shard)))
    # fp16 keeps the feed-forward output projections in float32, as T5Model.set_dtype does.
    assert stored["encoder.block.0.layer.1.DenseReluDense.wo.weight"].dtype == torch.float32
    assert stored["shared.weight"].dtype == torch.float16
    loaded = T5Model.from_pretrained(out, dtype="auto")
    assert loaded.dtype == torch.float16 and loaded.encoder.layers[0].ffn.wo.weight.dtype == torch.float32
    assert torch.equal(loaded.encoder.layers[0].ffn.wo.weight, model.encoder.layers[0].ffn.wo.weight)


def test_convert_refuses_the_source_and_a_misfit_before_writing(tiny, tmp_path):
    _, path = tiny
    with pytest.raises(CheckpointError, match="destination other than the source"):
        convert_checkpoint(path, path)
    state = load_file(str(path / "model.safetensors"))
    state["decoder.block.0.layer.0.layer_norm.weight"] = torch.ones(65)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"layer.0.layer_norm.weight has shape \(65,\).*implies \(64,\)"):
        convert_checkpoint(path, tmp_path / "out", expected_shapes=parameter_shapes)
    assert not (tmp_path / "out").exists()
