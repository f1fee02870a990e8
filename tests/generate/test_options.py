"""The one list of decoding options and the views derived from it: every ``GenerationConfig`` field is a
flag of ``t5kit generate``, ``eval`` and ``demo`` and a field of the server's request schema, with the
same bounds; a bad value is refused by each view with the ``GenerationError`` message of the config."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from t5kit.cli import build_parser
from t5kit.generate import (
    GenerationConfig,
    GenerationError,
    add_generation_arguments,
    check_option,
    generation_parameters_model,
    option_fields,
    options_from_args,
)
from t5kit.kernels.inference.precision import PRECISIONS

# a valid non-default value per option, and a bad one with the words its message must hold
GOOD = {"max_new_tokens": ("7", 7), "min_new_tokens": ("2", 2), "num_beams": ("3", 3), "length_penalty": ("0.6", 0.6),
        "length_penalty_style": ("gnmt", "gnmt"), "early_stopping": ("never", "never"),
        "num_return_sequences": ("2", 2), "do_sample": (None, True), "temperature": ("0.7", 0.7),
        "top_k": ("5", 5), "top_p": ("0.9", 0.9), "no_repeat_ngram_size": ("3", 3),
        "repetition_penalty": ("1.2", 1.2), "suppress_tokens": ("5,6", (5, 6)), "eos_token_id": ("2", 2),
        "bad_words_ids": ("3 4,7", ((3, 4), (7,))), "decoder_prefix": ("5 6", (5, 6)),
        "allowed_sequences": ("[[5, 6], [7]]", ((5, 6), (7,))), "force_words_ids": ("8 9", ((8, 9),)),
        "pad_token_id": ("3", 3), "decoder_start_token_id": ("4", 4)}
BAD = {"max_new_tokens": ("0", "an integer >= 1"), "min_new_tokens": ("-1", "an integer >= 0"),
       "num_beams": ("0", "an integer >= 1"), "length_penalty": ("nan", "a finite number"),
       "num_return_sequences": ("0", "an integer >= 1"), "temperature": ("0", "a finite number in [0.001, 1000.0]"),
       "top_k": ("0", "an integer >= 1"), "top_p": ("1.5", "in (0, 1]"), "no_repeat_ngram_size": ("-2", ">= 0"),
       "repetition_penalty": ("-1", "in [0.001, 1000.0]"), "suppress_tokens": ("5,-1", "token ids >= 0"),
       "eos_token_id": ("-1", ">= 0"), "pad_token_id": ("-1", ">= 0"), "decoder_start_token_id": ("-1", ">= 0"),
       "bad_words_ids": ("3 -4,7", "token ids >= 0, got -4 (in item 0)"), "decoder_prefix": ("5,-6", "token ids >= 0"),
       "allowed_sequences": ("[[5], []]", "item 1 is empty"), "force_words_ids": ("8,-9", "token ids >= 0")}
PYTHON_ONLY = {"prefix_allowed_tokens_fn"}  # a callable: neither a flag nor a request field


def names() -> list[str]:
    """The options that are flags (all but the Python-only ones)."""
    return [f.name for f in option_fields() if f.name not in PYTHON_ONLY]


def test_the_tables_above_cover_every_option():
    assert set(GOOD) == set(names())
    choice_or_bool = {f.name for f in option_fields() if "choices" in f.metadata or f.type == "bool"}
    assert set(BAD) | choice_or_bool == set(names())
    for f in option_fields():
        assert f.metadata["help"], f.name  # every option documents itself


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize("command", ["generate", "eval", "demo"])
def test_every_option_is_a_flag_of_each_command(command):
    parser = subcommand(command)
    dests = {a.dest: a for a in parser._actions}
    for name in names():
        assert name in dests, (command, name)
        assert dests[name].default is None  # only what the user typed overrides a task's defaults
        assert "--" + name.replace("_", "-") in dests[name].option_strings
    assert dests["precision"].choices == list(PRECISIONS) and dests["precision"].default == "fp32"
    assert "seed" in dests


@pytest.mark.parametrize("name", list(GOOD))
def test_a_flag_gives_its_option(name):
    parser = argparse.ArgumentParser()
    add_generation_arguments(parser)
    text, value = GOOD[name]
    flag = "--early-stopping-mode" if name == "early_stopping" else "--" + name.replace("_", "-")
    args = parser.parse_args([flag] if text is None else [flag, text])
    options = options_from_args(args)
    assert options == {name: value}
    assert options_from_args(parser.parse_args([])) == {}  # nothing given, nothing overridden


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_flag_value_gives_the_config_message(name):
    parser = argparse.ArgumentParser()
    add_generation_arguments(parser)
    text, words = BAD[name]
    args = parser.parse_args(["--" + name.replace("_", "-"), text])
    with pytest.raises(GenerationError) as from_flag:
        options_from_args(args)
    with pytest.raises(GenerationError) as from_config:
        GenerationConfig(**{name: getattr(args, name)})
    assert str(from_flag.value) == str(from_config.value)
    assert str(from_flag.value).startswith(f"{name} ") and words in str(from_flag.value)


def test_the_bare_early_stopping_flag_takes_no_value():
    """``--early-stopping`` is an on/off flag as before #16: the text after it stays an input."""
    parser = argparse.ArgumentParser()
    parser.add_argument("texts", nargs="*")
    add_generation_arguments(parser)
    args = parser.parse_args(["--num-beams", "2", "--early-stopping", "translate English to French: hello"])
    assert args.texts == ["translate English to French: hello"]
    assert options_from_args(args) == {"num_beams": 2, "early_stopping": True}
    assert options_from_args(parser.parse_args(["--early-stopping-mode", "false"])) == {"early_stopping": False}


def test_flag_spellings_of_today_keep_working():
    parser = argparse.ArgumentParser()
    add_generation_arguments(parser)
    args = parser.parse_args(["--early-stopping", "--do-sample", "--seed", "3", "--length-penalty-style", "hf"])
    options = options_from_args(args)
    assert options["early_stopping"] is True and options["do_sample"] is True
    assert isinstance(options.pop("generator"), torch.Generator)
    assert options_from_args(parser.parse_args(["--no-do-sample"])) == {"do_sample": False}
    with pytest.raises(SystemExit):
        parser.parse_args(["--length-penalty-style", "paper"])
    serve_like = argparse.ArgumentParser()
    add_generation_arguments(serve_like, exclude=("max_new_tokens", "seed"))
    serve_like.add_argument("--max-new-tokens", type=int, default=256)  # a server limit of the same name
    assert serve_like.parse_args([]).max_new_tokens == 256


def test_config_checks_each_option_and_their_combination():
    for name in BAD:
        bad = {"suppress_tokens": [-5], "length_penalty": float("inf")}.get(name, -5)
        with pytest.raises(GenerationError, match=name):
            check_option(name, bad)
    with pytest.raises(GenerationError, match="length_penalty_style must be one of 'hf', 'gnmt'"):
        GenerationConfig(length_penalty_style="paper")
    with pytest.raises(GenerationError, match="early_stopping"):
        GenerationConfig(early_stopping=1)
    with pytest.raises(GenerationError, match="do_sample must be True or False"):
        GenerationConfig(do_sample="yes")
    with pytest.raises(GenerationError, match="num_return_sequences"):
        GenerationConfig(num_return_sequences=3, num_beams=2)
    assert GenerationConfig(suppress_tokens=[3, 4]).suppress_tokens == (3, 4)
    with pytest.raises(GenerationError, match="num_beams"):  # a typo: the message suggests the right name
        GenerationConfig.from_options(num_beam=4)


def test_the_request_schema_is_the_same_list():
    pydantic = pytest.importorskip("pydantic")  # the serve extra
    model = generation_parameters_model(defaults={"max_new_tokens": None}, limits={"num_beams": {"le": 16}})
    requested = [f.name for f in option_fields() if f.metadata.get("request", True)]
    assert list(model.model_fields) == [*requested, "seed"]
    assert {f.name for f in option_fields()} - set(requested) == {
        "eos_token_id", "pad_token_id", "decoder_start_token_id", *PYTHON_ONLY}
    for name in requested:
        if name != "max_new_tokens":
            default = GenerationConfig().__getattribute__(name)
            assert model.model_fields[name].default == (list(default) if isinstance(default, tuple) else default)
        assert model.model_fields[name].description == dataclasses.fields(GenerationConfig)[
            names().index(name)].metadata["help"]
    params = model(num_beams=4, length_penalty=0.6, seed=3)
    assert params.seed == 3
    options = params.generation_options()
    assert "seed" not in options and "max_new_tokens" not in options
    assert GenerationConfig(**{**options, "suppress_tokens": tuple(options["suppress_tokens"])}).num_beams == 4
    schema = model.model_json_schema()["properties"]
    assert schema["num_beams"]["maximum"] == 16 and schema["top_p"]["anyOf"][0]["maximum"] == 1
    for bad in [dict(num_beams=17), dict(temperature=0), dict(top_p=1.5), dict(max_new_tokens=0),
                dict(length_penalty_style="paper"), dict(early_stopping="sometimes"), dict(frobnicate=1),
                dict(num_beams="4"), dict(eos_token_id=1), dict(suppress_tokens=[-1])]:
        with pytest.raises(pydantic.ValidationError):
            model(**bad)
    with pytest.raises(pydantic.ValidationError, match="num_return_sequences"):  # the config's own check
        model(num_return_sequences=3)
    with pytest.raises(GenerationError, match="num_beams"):
        generation_parameters_model(limits={"num_beam": {"le": 4}})


def test_lists_of_id_sequences_on_the_command_line():
    """``--bad-words-ids "3 4,7"``: commas between sequences, spaces inside one; or JSON. A Python callable
    (prefix_allowed_tokens_fn) has no flag and is not a request field."""
    parser = argparse.ArgumentParser()
    add_generation_arguments(parser)
    for text, want in [("3 4,7", ((3, 4), (7,))), ("3,4", ((3,), (4,))), (" 3  4 ", ((3, 4),)),
                       ("[[3, 4], [7]]", ((3, 4), (7,)))]:
        assert options_from_args(parser.parse_args(["--allowed-sequences", text])) == {"allowed_sequences": want}
    for bad in ["3 x,7", "[3, 4]", "[[3, 4]", '[["a"]]']:
        with pytest.raises((SystemExit, GenerationError)):
            options_from_args(parser.parse_args(["--bad-words-ids", bad]))
    with pytest.raises(GenerationError, match="bad_words_ids item 1 is empty"):  # '3,' is a sequence and nothing
        options_from_args(parser.parse_args(["--bad-words-ids", "3,"]))
    dests = {a.dest for a in parser._actions}
    assert not PYTHON_ONLY & dests
    assert options_from_args(parser.parse_args([])) == {}
    config = GenerationConfig(prefix_allowed_tokens_fn=lambda batch_id, ids: [1])
    assert config.prefix_allowed_tokens_fn(0, None) == [1]
    fn = config.prefix_allowed_tokens_fn
    assert GenerationConfig.from_options(config, num_beams=2).prefix_allowed_tokens_fn is fn
