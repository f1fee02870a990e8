"""``Generator.score`` and ``Generator.classify``: texts in, log-likelihoods and labels out, in the order given,
over a tiny random model with the real T5 vocabulary and over the built-in model; and the errors for input
that cannot be scored."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import T5_VOCAB

from t5kit import T5Config, T5Model
from t5kit.data.prefixes import PREFIXES
from t5kit.generate import GenerationError, ScoreError, score
from t5kit.pipeline import MAX_SCORE_TARGET_TOKENS, Generator
from t5kit.tokenizer import Tokenizer

INPUTS = ["translate English to German: The house is wonderful.", "Hello world", "A much longer input with many "
          "words in it, so that the batch is padded.", "Das Haus ist wunderbar."]
TARGETS = ["Das Haus ist wunderbar.", "Hallo Welt", "kurz", "The house is wonderful, and so is the garden."]


@pytest.fixture(scope="module")
def gen() -> Generator:
    torch.manual_seed(0)
    config = T5Config.from_preset("tiny", d_model=32, d_ff=48, num_heads=2, d_kv=16, num_layers=1,
                                  num_decoder_layers=1)
    return Generator(T5Model(config).eval(), Tokenizer.from_pretrained(T5_VOCAB))


def test_score_keeps_order_across_sorted_batches_and_matches_the_decoding_layer(gen):
    results = gen.score(INPUTS, TARGETS, batch_size=2)
    for text, target, r in zip(INPUTS, TARGETS, results):
        ids = gen.tokenizer.encode(target)
        assert r.target == target and r.token_ids == ids and ids[-1] == 1  # EOS appended, as in training
        assert r.tokens == gen.tokenizer.convert_ids_to_tokens(ids) and r.tokens[-1] == "</s>"
        assert r.input_tokens == len(gen.tokenizer.encode(text))
        assert len(r.token_logprobs) == len(ids) and all(lp < 0 for lp in r.token_logprobs)
        assert math.isclose(r.sum, sum(r.token_logprobs), rel_tol=1e-6)
        assert math.isclose(r.mean, r.sum / len(ids), rel_tol=1e-6)
        alone = score(gen.model, torch.tensor([gen.tokenizer.encode(text)]), None, torch.tensor([ids]))
        assert math.isclose(r.sum, float(alone.sum), rel_tol=1e-5)  # order kept, padding changes nothing
    assert len({round(r.sum, 3) for r in results}) == 4
    assert gen.score(INPUTS[0], TARGETS[0])[0].sum == pytest.approx(results[0].sum, rel=1e-5)  # one string each


def test_score_applies_the_task_prefix(gen):
    with_task = gen.score("The house is wonderful.", "Das Haus ist wunderbar.", task="translate_en_de")[0]
    spelled = gen.score(PREFIXES["translate_en_de"] + "The house is wonderful.", "Das Haus ist wunderbar.")[0]
    assert with_task.sum == pytest.approx(spelled.sum, rel=1e-6)
    assert with_task.input_tokens == spelled.input_tokens
    with pytest.raises(GenerationError, match="translate_en_de"):
        gen.score("x", "y", task="translate_en_dee")


def test_classify_ranks_the_choices_by_their_scores(gen):
    choices = ["Das Haus ist wunderbar.", "Hallo Welt", "kurz"]
    results = gen.classify(INPUTS, choices, batch_size=3)
    for text, c in zip(INPUTS, results):
        pairs = gen.score([text] * len(choices), choices)
        sums = [p.sum for p in pairs]
        assert c.choices == choices and c.label == choices[c.index]
        assert c.index == max(range(len(sums)), key=sums.__getitem__)
        assert c.logprobs == pytest.approx(sums, rel=1e-5)
        assert c.mean_logprobs == pytest.approx([p.mean for p in pairs], rel=1e-5)
        expected = torch.softmax(torch.tensor(sums), 0).tolist()
        assert c.scores == pytest.approx(expected, rel=1e-4, abs=1e-7) and sum(c.scores) == pytest.approx(1)
    by_mean = gen.classify(INPUTS, choices, normalize="mean")
    for c in by_mean:
        assert c.index == max(range(len(choices)), key=c.mean_logprobs.__getitem__)
        assert c.scores == pytest.approx(torch.softmax(torch.tensor(c.mean_logprobs), 0).tolist(), rel=1e-4)


def test_classify_takes_one_choice_list_per_input(gen):
    lists = [["ja", "nein"], ["Hallo Welt", "Guten Tag", "Tschüss"], ["eins"], ["ja", "nein"]]
    results = gen.classify(INPUTS, lists, batch_size=4)
    for text, labels, c in zip(INPUTS, lists, results):
        assert c.choices == labels and len(c.scores) == len(labels) == len(c.logprobs)
        alone = gen.classify(text, labels)[0]
        assert alone.index == c.index and alone.logprobs == pytest.approx(c.logprobs, rel=1e-5)
    assert results[2].scores == [1.0] and results[2].label == "eins"  # one choice: certain, still scored
    assert results[2].logprobs[0] < 0


def test_precision_modes_score_through_the_pipeline(gen):
    fp32 = gen.score(INPUTS, TARGETS)
    for precision in ("bf16", "int8"):  # every mode is held to its bound in tests/generate/test_score.py
        low = Generator(gen.model, gen.tokenizer, precision=precision)
        for a, b in zip(fp32, low.score(INPUTS, TARGETS)):
            assert b.token_ids == a.token_ids
            assert b.sum == pytest.approx(a.sum, rel=0.05) and b.sum != a.sum  # its own format, close to fp32
        assert [c.index for c in low.classify(INPUTS, TARGETS[:3])] == [c.index for c in gen.classify(INPUTS,
                                                                                                      TARGETS[:3])]


def test_builtin_model_classifies_its_translations_to_their_sources():
    """The built-in model, fine-tuned on gettext translations: among its own translations of held-out
    messages, each message's own ranks first (by sum and by mean; measured p >= 0.999 for each)."""
    from t5kit.builtin import DEMO_INPUTS, load_builtin

    builtin = load_builtin()
    sources = [t for t in DEMO_INPUTS if t.startswith("translate")]
    translations = [r.text for r in builtin.generate(sources, max_new_tokens=24)]
    assert len(set(translations)) == len(sources)
    for normalize in ("sum", "mean"):
        results = builtin.classify(sources, translations, normalize=normalize)
        assert [c.index for c in results] == list(range(len(sources)))
        assert all(c.label == translations[i] for i, c in enumerate(results))
    assert min(c.scores[c.index] for c in builtin.classify(sources, translations)) > 0.9


@pytest.mark.parametrize("call,message", [
    (lambda g: g.classify("x", []), "choices must be a non-empty list"),
    (lambda g: g.classify(["x", "y"], [["a"], []]), r"choices\[1\] is empty"),
    (lambda g: g.classify("x", ["yes", "no", "yes"]), r"choices\[0\] 'yes' and choices\[2\] 'yes' are the same"),
    (lambda g: g.classify("x", ["yes", "yes "]), r"choices\[0\] 'yes' and choices\[1\] 'yes ' tokenize to the same"),
    (lambda g: g.classify("x", ["yes", ""]), r"choices\[1\] '' tokenizes to nothing"),
    (lambda g: g.classify("x", ["yes", "   "]), r"choices\[1\] '   ' tokenizes to nothing"),
    (lambda g: g.classify("x", [["a"], "b"]), "mixes label strings and lists"),
    (lambda g: g.classify(["x", "y"], [["a"]]), "2 inputs but 1 choice lists"),
    (lambda g: g.classify("x", ["a", 3]), r"choices\[1\] is int, not a label string"),
    (lambda g: g.classify("x", ["a", "b"], normalize="max"), "normalize must be one of sum, mean"),
    (lambda g: g.classify("x", ["a" * 40, "b"], max_target_tokens=8), r"choices\[0\] is \d+ tokens long.*"
                                                                         "max_target_tokens=8"),
    (lambda g: g.score(["x", "y"], ["a"]), "2 inputs but 1 targets"),
    (lambda g: g.score("x", ""), r"targets\[0\] '' tokenizes to nothing"),
    (lambda g: g.score("x", "word " * (MAX_SCORE_TARGET_TOKENS + 1)),
     rf"targets\[0\] is \d+ tokens long .* over max_target_tokens={MAX_SCORE_TARGET_TOKENS}"),
    (lambda g: g.score(["fine", "word " * 600], ["a", "b"]), r"inputs\[1\] is \d+ tokens long .* max_input_tokens=512"),
    (lambda g: g.score("x", "y", max_input_tokens=2), r"inputs\[0\] is 3 tokens long"),
    (lambda g: g.score([], []), "inputs is empty"),
    (lambda g: g.score("x", [b"y"]), r"targets\[0\] is bytes, not a string"),
    (lambda g: g.score("x", "y", batch_size=0), "batch_size must be a positive integer"),
])
def test_unscorable_input_is_named_with_the_fix(gen, call, message):
    with pytest.raises(GenerationError, match=message):
        call(gen)


def test_limits_can_be_lifted(gen):
    long_target = "word " * (MAX_SCORE_TARGET_TOKENS + 1)
    result = gen.score("x", long_target, max_target_tokens=None)[0]
    assert len(result.token_ids) > MAX_SCORE_TARGET_TOKENS
    assert isinstance(ScoreError("x"), GenerationError)  # the server's 4xx mapping covers it
