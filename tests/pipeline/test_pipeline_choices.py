""""One of these strings" in the text pipeline: ``Generator.generate(choices=[...])`` tokenizes the choices
(``t5kit.pipeline.choice_token_ids``, the one tokenization the server also uses) and every output is one of them."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import T5_VOCAB

from t5kit.generate import GenerationError, LengthLimitWarning
from t5kit.pipeline import Generator, choice_token_ids, with_choices

CHOICES = ["positive", "negative", "not sure at all", "Das Haus"]


@pytest.fixture(scope="module")
def text_generator():
    from t5kit import T5Config, T5Model
    from t5kit.tokenizer import Tokenizer

    torch.manual_seed(0)
    config = T5Config.from_preset("tiny", d_model=32, d_ff=48, num_heads=2, d_kv=16, num_decoder_layers=1,
                                  num_layers=1)
    return Generator(T5Model(config).eval(), Tokenizer.from_pretrained(T5_VOCAB))


def test_every_output_is_one_of_the_choices(text_generator):
    gen = text_generator
    texts = ["A review: I loved it.", "Hello world", "translate English to German: The house."]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthLimitWarning)
        free = gen.generate(texts, max_new_tokens=6)
    assert not {r.text for r in free} <= set(CHOICES)  # a random model left alone says something else
    for options in (dict(), dict(num_beams=4), dict(num_beams=5, num_return_sequences=4),
                    dict(do_sample=True, generator=torch.Generator().manual_seed(0))):
        results = gen.generate(texts, choices=CHOICES, **options)
        assert all(r.text in CHOICES and r.stop_reason == "eos" for r in results), options
        assert all(r.token_ids == list(gen.tokenizer.encode(r.text, add_eos=True)) for r in results)
        if options.get("num_return_sequences"):  # four distinct choices per text
            assert all(len({r.text for r in results[i: i + 4]}) == 4 for i in range(0, len(results), 4))
    streamed = "".join(gen.stream(texts[0], choices=CHOICES))
    assert streamed == gen.generate(texts[0], choices=CHOICES)[0].text


def test_choice_tokenization_and_its_errors(text_generator):
    tokenizer = text_generator.tokenizer
    ids = choice_token_ids(tokenizer, CHOICES)
    assert [tokenizer.decode(list(s), skip_special_tokens=True) for s in ids] == CHOICES
    assert all(s[-1] == tokenizer.eos_token_id for s in ids)
    options = with_choices(tokenizer, {"num_beams": 2}, CHOICES)
    assert options["max_new_tokens"] == max(len(s) for s in ids)  # no output is longer than the longest choice
    assert with_choices(tokenizer, {"max_new_tokens": 50}, CHOICES, given={"max_new_tokens"})["max_new_tokens"] == 50
    for bad, words in [([], "choices is empty"), ("positive", "a list of strings"), (["yes", ""], "item 1 ('')"),
                       (["yes", 3], "item 1 must be a string")]:
        with pytest.raises(GenerationError, match=words.replace("(", r"\(").replace(")", r"\)")):
            text_generator.generate("x", choices=bad)
    with pytest.raises(GenerationError, match="not both"):
        text_generator.generate("x", choices=["a"], allowed_sequences=[[5]])
    with pytest.raises(GenerationError, match="more than max_new_tokens=2"):  # the caller's limit is kept
        text_generator.generate("x", choices=["not sure at all"], max_new_tokens=2)
