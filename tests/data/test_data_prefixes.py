"""The one task lookup (t5kit.data.prefixes): a checkpoint's own tasks first, then t5kit's presets."""

from __future__ import annotations

import pytest

from t5kit import T5Config
from t5kit.data.prefixes import PREFIXES, task_options, task_prefixes
from t5kit.generate import GenerationError


def _config_with_tasks() -> T5Config:
    config = T5Config.from_preset("tiny")
    config.extra["task_specific_params"] = {
        "translation_en_to_de": {"prefix": "translate English to German: ", "max_length": 300, "num_beams": 4,
                                 "early_stopping": True},
        "summarize": {"prefix": "summarise please: ", "min_length": 30, "no_repeat_ngram_size": 3},
    }
    return config


def test_a_checkpoints_task_wins_and_brings_its_decoding_defaults():
    config = _config_with_tasks()
    assert task_options(config, "translation_en_to_de") == (
        "translate English to German: ", {"max_new_tokens": 299, "num_beams": 4, "early_stopping": True})
    assert task_options(config, "summarize") == ("summarise please: ", {"min_new_tokens": 29,
                                                                         "no_repeat_ngram_size": 3})
    assert task_options(config, "translate_en_fr") == (PREFIXES["translate_en_fr"], {})
    assert task_options(config, None) == ("", {})
    listed = task_prefixes(config)
    assert listed["summarize"] == "summarise please: " and listed["define"] == PREFIXES["define"]
    with pytest.raises(GenerationError, match="unknown task 'sumarize'.*Did you mean 'summarize'"):
        task_options(config, "sumarize")


def test_the_server_and_the_pipeline_use_the_same_lookup():
    from t5kit import Generator, T5Model
    from t5kit.serve.engine import Engine
    from t5kit.tokenizer import load_tokenizer

    model = T5Model(_config_with_tasks())
    tokenizer = load_tokenizer("t5")
    engine, generator = Engine(model, tokenizer), Generator(model, tokenizer)
    for task in ("summarize", "translation_en_to_de", "define"):
        assert engine.prefix(task) == generator.task_options(task)[0]
        assert engine.describe()["tasks"][task] == engine.prefix(task)
