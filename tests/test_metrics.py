"""Metric tests against values computed independently of t5kit.

- BLEU/chrF: the worked example in sacrebleu's README ("The dog bit the man." ...), whose published
  output is ``BLEU = 48.53``, ``chrF2 = 59.73`` (two references) and ``BLEU = 29.44`` once the first
  sentence loses a reference (``nrefs:var``).
- ROUGE: short sentences whose n-gram and LCS overlaps are counted by hand in the comments.
- SQuAD: the official normalisation rules, and F1 values worked out by hand.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from t5kit import metrics
from t5kit.errors import T5kitError
from t5kit.metrics import (
    METRICS,
    accuracy,
    bleu,
    chrf,
    compute_metrics,
    normalize_answer,
    rouge,
    sequence_exact_match,
    squad_exact_match,
    squad_f1,
)

# sacrebleu README, "Using the Python API": three system sentences, two reference streams.
README_SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
README_REF_STREAMS = [
    ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
    ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
]
# The same references, grouped per prediction as t5kit takes them.
README_REFS = [list(group) for group in zip(*README_REF_STREAMS)]


# ------------------------------------------------------------------------------------------ sacrebleu


def test_bleu_matches_sacrebleu_readme() -> None:
    score, signature = bleu(README_SYS, README_REFS)
    assert score == pytest.approx(48.53, abs=0.005)
    assert signature.startswith("nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:")


def test_chrf_matches_sacrebleu_readme() -> None:
    score, signature = chrf(README_SYS, README_REFS)
    assert score == pytest.approx(59.73, abs=0.005)
    assert signature.startswith("nrefs:2|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")


def test_bleu_variable_number_of_references_matches_readme() -> None:
    # README "Variable Number of References": the first sentence keeps only its second reference.
    refs = [README_REFS[0][1:], README_REFS[1], README_REFS[2]]
    score, signature = bleu(README_SYS, refs)
    assert score == pytest.approx(29.44, abs=0.005)
    assert signature.startswith("nrefs:var|")


def test_bleu_is_corpus_level_not_mean_of_sentences() -> None:
    # A perfect sentence and a 3-word sentence with no 4-gram match: the corpus pools n-gram counts,
    # so the score is neither 100 nor the mean of the two sentence scores (100 and ~0).
    preds = ["the quick brown fox jumps over the lazy dog", "hello big world"]
    refs = ["the quick brown fox jumps over the lazy dog", "hello small world"]
    score = bleu(preds, refs).score
    sentence_mean = (bleu(preds[:1], refs[:1]).score + bleu(preds[1:], refs[1:]).score) / 2
    assert 0 < score < 100
    assert score != pytest.approx(sentence_mean, abs=1.0)


def test_single_reference_strings_equal_single_reference_lists() -> None:
    refs = [streams[0] for streams in README_REFS]
    assert bleu(README_SYS, refs) == bleu(README_SYS, [[r] for r in refs])
    assert bleu(README_SYS, refs).signature.startswith("nrefs:1|")


# ------------------------------------------------------------------------------------------ ROUGE


def test_rouge_hand_computed_overlap() -> None:
    # pred "the cat sat on the mat" / ref "the cat lay on the mat", 6 tokens each.
    # unigrams: the x2, cat, on, mat match -> P = R = 5/6.
    # bigrams: "the cat", "on the", "the mat" of 5 -> P = R = 3/5.
    # LCS: "the cat on the mat" = 5 -> 5/6; one sentence, so Lsum = L.
    scores = rouge(["the cat sat on the mat"], ["the cat lay on the mat"])
    assert scores["rouge1"] == pytest.approx(100 * 5 / 6)
    assert scores["rouge2"] == pytest.approx(100 * 3 / 5)
    assert scores["rougeL"] == pytest.approx(100 * 5 / 6)
    assert scores["rougeLsum"] == pytest.approx(100 * 5 / 6)


def test_rouge_f_measure_with_unequal_lengths() -> None:
    # pred 2 tokens, ref 4 tokens, 2 unigram matches: P = 1, R = 1/2, F = 2/3.
    scores = rouge(["black cat"], ["a black cat sleeps"], ["rouge1"])
    assert scores == {"rouge1": pytest.approx(100 * 2 / 3)}


def test_rouge_uses_porter_stemming() -> None:
    # "cats" -> "cat", "running"/"runs" -> "run": a full match only with the stemmer on.
    assert rouge(["cats running"], ["cat runs"], ["rouge1"])["rouge1"] == pytest.approx(100.0)


def test_rouge_lsum_splits_sentences_on_newlines() -> None:
    # Two sentences in swapped order. Flat LCS: 3 of 6 tokens -> L = 50. Summary-level LCS matches
    # each reference sentence to its twin -> Lsum = 100.
    scores = rouge(["dogs bark often\ncats purr loudly"], ["cats purr loudly\ndogs bark often"])
    assert scores["rougeL"] == pytest.approx(50.0)
    assert scores["rougeLsum"] == pytest.approx(100.0)


def test_rouge_lsum_sentence_splitting_of_plain_text() -> None:
    preds, refs = ["Dogs bark often. Cats purr loudly."], ["Cats purr loudly. Dogs bark often."]
    assert rouge(preds, refs)["rougeLsum"] == pytest.approx(100.0)
    # Without splitting, the text is one sentence and Lsum falls back to the flat LCS.
    assert rouge(preds, refs, split_sentences=False)["rougeLsum"] == pytest.approx(50.0)


def test_rouge_mean_over_examples_and_best_reference() -> None:
    # Example 1: exact match with its second reference -> 100. Example 2: no shared token -> 0.
    scores = rouge(["red apple", "blue sky"], [["green pear", "red apple"], ["wet grass"]], ["rouge1"])
    assert scores["rouge1"] == pytest.approx(50.0)


def test_rouge_rejects_unknown_type() -> None:
    with pytest.raises(T5kitError, match="rouge3"):
        rouge(["a"], ["a"], ["rouge3"])


# ------------------------------------------------------------------------------------------ SQuAD


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("The Eiffel Tower", "eiffel tower"),  # case and leading article
        ("a cat and an owl", "cat and owl"),  # all three articles, as whole words only
        ("Theater anthem", "theater anthem"),  # "the"/"an" inside words are kept
        ("U.S.A., (1990)!", "usa 1990"),  # punctuation removed, not replaced by spaces
        ("  new \t york\n city ", "new york city"),  # whitespace squeezed
        ("the", ""),
    ],
)
def test_normalize_answer_rules(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def test_squad_exact_match_ignores_case_punctuation_articles() -> None:
    preds = ["The Eiffel Tower!", "eiffel towers", "Paris"]
    refs = ["eiffel tower", "eiffel tower", "paris."]
    assert squad_exact_match(preds, refs) == pytest.approx(100 * 2 / 3)


def test_squad_f1_partial_overlap_by_hand() -> None:
    # normalised pred "eiffel tower in paris" (4 tokens), ref "eiffel tower" (2): 2 common.
    # P = 2/4, R = 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3.
    assert squad_f1(["the Eiffel Tower in Paris"], ["Eiffel Tower"]) == pytest.approx(100 * 2 / 3)


def test_squad_f1_clips_repeated_tokens() -> None:
    # pred "paris paris france" vs ref "paris france": common = min counts = 2 tokens.
    # P = 2/3, R = 1, F1 = 2 * (2/3) / (5/3) = 0.8.
    assert squad_f1(["Paris, Paris, France"], ["Paris France"]) == pytest.approx(80.0)


def test_squad_takes_best_of_multiple_references() -> None:
    # Against "tower" F1 = 2/3 (P 1/2, R 1); against "eiffel tower" = 1; the maximum counts.
    preds = ["Eiffel Tower", "in 1889"]
    refs = [["tower", "the Eiffel tower"], ["1889", "1887"]]
    # Example 2: "in 1889" vs "1889": P 1/2, R 1 -> 2/3; vs "1887": 0.
    assert squad_f1(preds, refs) == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert squad_exact_match(preds, refs) == pytest.approx(50.0)


def test_squad_empty_answers() -> None:
    # An answer that normalises to nothing matches only an empty reference (SQuAD v2.0's rule).
    assert squad_f1(["the"], [""]) == pytest.approx(100.0)
    assert squad_f1(["the"], ["cat"]) == pytest.approx(0.0)
    assert squad_f1(["dog"], ["cat"]) == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------ labels


def test_accuracy_strips_whitespace_but_keeps_case() -> None:
    preds = ["positive", "negative \n", " neutral", "Positive"]
    refs = ["positive", "negative", "neutral", "positive"]
    assert accuracy(preds, refs) == pytest.approx(75.0)


def test_sequence_exact_match_is_character_exact() -> None:
    preds = ["x = 1", "x = 1 ", "y=2"]
    refs = [["x = 1"], ["x = 1"], ["y = 2", "y=2"]]
    assert sequence_exact_match(preds, refs) == pytest.approx(100 * 2 / 3)


# ------------------------------------------------------------------------------------------ registry


def test_compute_metrics_keys_in_order_and_values_match_functions() -> None:
    preds = ["the Eiffel Tower in Paris", "blue"]
    refs = [["Eiffel Tower"], ["blue"]]
    names = ["squad_f1", "rougeL", "accuracy", "rouge1", "bleu", "exact_match", "squad_em", "chrf"]
    result = compute_metrics(names, preds, refs)
    assert list(result) == names
    assert result["squad_f1"] == pytest.approx(squad_f1(preds, refs))
    assert result["squad_em"] == pytest.approx(50.0)
    assert result["accuracy"] == pytest.approx(50.0)
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["rougeL"] == pytest.approx(rouge(preds, refs)["rougeL"])
    assert result["rouge1"] == pytest.approx(rouge(preds, refs)["rouge1"])
    assert result["bleu"] == pytest.approx(bleu(preds, refs).score)
    assert result["chrf"] == pytest.approx(chrf(preds, refs).score)


def test_registry_names() -> None:
    expected = {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum"}
    expected |= {"squad_em", "squad_f1", "accuracy", "exact_match"}
    assert set(METRICS) == expected
    for name, fn in METRICS.items():
        # Five tokens: BLEU needs at least one 4-gram to be non-zero.
        text = "exactly the same five words"
        assert fn([text], [text]) == pytest.approx(100.0), name


# ------------------------------------------------------------------------------------------ bad input


def test_unknown_metric_suggests_closest_name() -> None:
    with pytest.raises(T5kitError, match=r"unknown metric 'blue'.*Did you mean 'bleu'"):
        compute_metrics(["blue"], ["a"], ["a"])


def test_unknown_metric_is_reported_before_any_work() -> None:
    # The bad name comes last; the error must still be about it, not about the inputs.
    with pytest.raises(T5kitError, match="unknown metric 'rougeX'"):
        compute_metrics(["accuracy", "rougeX"], [], [])


def test_no_metric_names() -> None:
    with pytest.raises(T5kitError, match="no metrics named"):
        compute_metrics([], ["a"], ["a"])


@pytest.mark.parametrize("name", sorted(METRICS))
def test_length_mismatch(name: str) -> None:
    with pytest.raises(T5kitError, match="2 predictions but 1 references"):
        compute_metrics([name], ["a", "b"], ["a"])


@pytest.mark.parametrize("name", sorted(METRICS))
def test_empty_inputs(name: str) -> None:
    with pytest.raises(T5kitError, match="no predictions to score"):
        compute_metrics([name], [], [])


def test_prediction_without_any_reference() -> None:
    with pytest.raises(T5kitError, match="reference 1 is an empty list"):
        squad_f1(["a", "b"], [["a"], []])


def test_single_string_instead_of_list() -> None:
    with pytest.raises(T5kitError, match="lists of strings"):
        accuracy("abc", "abc")


def test_non_string_prediction() -> None:
    with pytest.raises(T5kitError, match="prediction 0 is int"):
        accuracy([1], ["1"])


@pytest.mark.parametrize(("module", "fn"), [("sacrebleu", bleu), ("sacrebleu", chrf), ("rouge_score", rouge)])
def test_missing_optional_dependency_names_the_extra(monkeypatch, module, fn) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(T5kitError, match=r"pip install 't5kit\[metrics\]'"):
        fn(["a"], ["a"])


def test_importing_metrics_does_not_import_optional_packages() -> None:
    code = "import sys, t5kit.metrics; print('sacrebleu' in sys.modules, 'rouge_score' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert metrics.__name__ == "t5kit.metrics"
