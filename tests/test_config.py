from __future__ import annotations

import json

import pytest

from t5kit import PRESETS, T5Config
from t5kit.errors import ConfigError


def test_old_configs_imply_relu_tied_and_max_distance_128():
    old = {"d_model": 512, "d_ff": 2048, "num_layers": 6, "num_heads": 8, "d_kv": 64, "vocab_size": 32128,
           "n_positions": 512, "output_past": True}
    config = T5Config.from_dict(old)
    assert config.feed_forward_proj == "relu" and not config.is_gated
    assert config.tie_word_embeddings and config.rescale_decoder_output
    assert config.relative_attention_max_distance == 128
    assert config.num_decoder_layers == 6


def test_unknown_keys_survive_a_round_trip(tmp_path):
    data = {"d_model": 64, "num_layers": 3, "num_decoder_layers": 1, "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False, "task_specific_params": {"summarization": {"num_beams": 4}},
            "architectures": ["T5ForConditionalGeneration"], "my_own_key": [1, 2]}
    T5Config.from_dict(data).save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["task_specific_params"] == {"summarization": {"num_beams": 4}}
    assert written["my_own_key"] == [1, 2]
    again = T5Config.from_json_file(tmp_path)
    assert again.num_decoder_layers == 1 and again.activation == "gelu_tanh" and not again.rescale_decoder_output
    assert again.extra["task_specific_params"]["summarization"]["num_beams"] == 4


@pytest.mark.parametrize("key,value,match", [
    ("d_model", "512", "'d_model' must be int"),
    ("num_heads", 0, "'num_heads' must be positive"),
    ("tie_word_embeddings", "yes", "'tie_word_embeddings' must be bool"),
    ("dropout_rate", 1.5, "'dropout_rate' must be below 1"),
    ("feed_forward_proj", "gated-swiglu", "'feed_forward_proj' has unknown value 'gated-swiglu'"),
    ("feed_forward_proj", "fancy-gelu", "'feed_forward_proj'"),
    ("model_type", "bart", "'model_type'"),
])
def test_bad_values_name_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        T5Config.from_dict({key: value})


def test_a_typo_of_a_known_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown config key 'd_modle'. Did you mean 'd_model'"):
        T5Config.from_dict({"d_modle": 512})
    with pytest.raises(ConfigError, match="num_layer"):
        T5Config.from_preset("t5-small").replace(num_layer=3)
    # Generic keys of Hugging Face configs are kept even when they look like a T5 key.
    assert T5Config.from_dict({"bos_token_id": 5}).extra["bos_token_id"] == 5


@pytest.mark.parametrize("name,shape", [
    ("t5-small", (512, 2048, 6, 6, 8, 64, "relu", True, 32128)),
    ("t5-3b", (1024, 16384, 24, 24, 32, 128, "relu", True, 32128)),
    ("t5-11b", (1024, 65536, 24, 24, 128, 128, "relu", True, 32128)),
    ("google/flan-t5-small", (512, 1024, 8, 8, 6, 64, "gated-gelu", False, 32128)),
    ("t5-v1_1-xxl", (4096, 10240, 24, 24, 64, 64, "gated-gelu", False, 32128)),
    ("mt5-base", (768, 2048, 12, 12, 12, 64, "gated-gelu", False, 250112)),
    ("umt5-small", (512, 1024, 8, 8, 6, 64, "gated-gelu", False, 256384)),
    ("byt5-small", (1472, 3584, 12, 4, 6, 64, "gated-gelu", False, 384)),
])
def test_presets_have_the_published_shapes(name, shape):
    c = T5Config.from_preset(name)
    assert (c.d_model, c.d_ff, c.num_layers, c.num_decoder_layers, c.num_heads, c.d_kv, c.feed_forward_proj,
            c.tie_word_embeddings, c.vocab_size) == shape
    assert c.per_layer_position_bias == name.startswith("umt5")


def test_every_preset_family_is_there_and_unknown_presets_suggest():
    for family in ("t5", "t5-v1_1", "flan-t5", "mt5", "umt5"):
        assert any(p.startswith(family + "-") for p in PRESETS)
    with pytest.raises(ConfigError, match="t5-small"):
        T5Config.from_preset("t5-smal")


def test_missing_and_invalid_config_files(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        T5Config.from_json_file(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        T5Config.from_json_file(tmp_path)
