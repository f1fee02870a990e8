"""The shipped built-in model: it loads, translates held-out strings into the right language, defines words,
and ``t5kit generate`` without ``--model`` uses it.

The inputs are from the TEST splits of ``t5kit data import gettext`` / ``wordnet`` (never used in
training). The language check is a vocabulary-and-accent vote rather than exact strings, so that a
retrained model passes when it is sane and fails when it copies English or answers in the wrong language.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from t5kit.builtin import BUILTIN_DIR, DEMO_INPUTS, TASK_PREFIXES, TASKS, load_builtin
from t5kit.data.prefixes import PREFIXES

FR_INPUTS = [
    "Configuration file",
    "Could not write new index file.",
    "Invalid number of parameters",
    "Don't show this message again",
    "Key has been compromised",
    "You need to specify a NEWS file as input.",
    "SELinux is enabled on this system.",
    "Missing size argument",
]
DE_INPUTS = [
    "Suggested packages:",
    "The list of subproperties",
    "Don't clear environment on startup",
    "Creating script to delete old cluster",
    "Text to show in the item.",
    "Are you sure you want to replace it? (y/N)",
    "List of text search templates",
    "Attempt to unlock database when not locked",
]
WORDS = ["firehouse", "armor", "dominion", "verona"]

ENGLISH = {"the", "of", "to", "and", "is", "a", "an", "for", "in", "on", "not", "this", "could", "file", "be",
           "you", "with", "from", "are", "it", "no", "list", "number", "write", "show", "again", "that"}
FRENCH = {"le", "la", "les", "de", "des", "du", "un", "une", "et", "est", "pas", "en", "pour", "dans", "sur", "au",
          "aux", "ce", "cette", "ne", "impossible", "fichier", "nombre", "vous", "plus", "l", "d", "n", "à", "par",
          "avec", "qui", "que", "ou", "été", "sont", "nouveau", "liste", "clé", "clef", "message", "erreur"}
GERMAN = {"der", "die", "das", "nicht", "und", "ist", "ein", "eine", "einen", "den", "dem", "des", "zu", "von",
          "mit", "für", "auf", "werden", "wird", "kann", "konnte", "datei", "sie", "im", "beim", "liste", "pakete",
          "wirklich", "als", "oder", "es", "wurde", "zum", "zur", "eines", "bei", "nach", "aus", "alten"}
FR_MARKS = set("éèêàâçôîûùëïœ«»’")
DE_MARKS = set("äöüßÄÖÜ")


def words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.lower())


def vote(text: str, native: set[str], marks: set[str]) -> tuple[int, int]:
    """(evidence for the target language, evidence for English): function words, plus accented letters."""
    ws = words(text)
    return sum(w in native for w in ws) + sum(c in marks for c in text), sum(w in ENGLISH for w in ws)


@pytest.fixture(scope="module")
def generator():
    return load_builtin()


def test_shipped_files_and_size():
    for name in ("config.json", "model.safetensors", "spiece.model", "MODEL_CARD.md"):
        assert (BUILTIN_DIR / name).is_file(), name
    assert (BUILTIN_DIR / "model.safetensors").stat().st_size < 42 * 1024 * 1024
    assert DEMO_INPUTS and all(isinstance(t, str) and t for t in DEMO_INPUTS)
    # the tasks it was fine-tuned on come from the one prefix registry, and every demo input is one of them
    assert TASK_PREFIXES == {name: PREFIXES[name] for name in TASKS}
    assert all(t.startswith(tuple(TASK_PREFIXES.values())) for t in DEMO_INPUTS)


def test_builtin_tasks_are_accepted_by_name(generator):
    text = "Configuration file"
    by_name = generator.generate([text], task="translate_en_fr", max_new_tokens=16)[0]
    assert by_name.text == generator.generate([TASK_PREFIXES["translate_en_fr"] + text], max_new_tokens=16)[0].text


@pytest.mark.parametrize(
    ("prefix", "inputs", "native", "marks"),
    [("translate English to French: ", FR_INPUTS, FRENCH, FR_MARKS),
     ("translate English to German: ", DE_INPUTS, GERMAN, DE_MARKS)],
    ids=["en-fr", "en-de"],
)
def test_translations_are_in_the_right_language(generator, prefix, inputs, native, marks):
    outputs = [r.text for r in generator.generate([prefix + t for t in inputs], max_new_tokens=48)]
    assert all(o.strip() for o in outputs), outputs
    votes = [vote(o, native, marks) for o in outputs]
    target_total = sum(v[0] for v in votes)
    english_total = sum(v[1] for v in votes)
    assert target_total > 2 * english_total, list(zip(outputs, votes))
    leaning = sum(t > e for t, e in votes)
    assert leaning >= len(inputs) * 3 // 4, list(zip(outputs, votes))
    copies = sum(o.strip().lower() == t.strip().lower() for o, t in zip(outputs, inputs))
    assert copies <= 1, outputs


def test_definitions_are_glosses(generator):
    outputs = [r.text for r in generator.generate(["define: " + w for w in WORDS], max_new_tokens=48)]
    for word, out in zip(WORDS, outputs):
        assert len(words(out)) >= 2, (word, out)
        assert out.strip().lower() != word


def test_generate_without_model_uses_builtin(generator):
    text = "translate English to French: " + FR_INPUTS[0]
    expected = generator.generate([text])[0].text
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "t5kit", "generate", text, "--threads", "1"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected.strip()
    assert proc.stdout.strip()
