"""Shared test fixtures: everything is built in code; the real T5 vocabulary is the one shipped in the package
(src/t5kit/resources/t5-vocab), so the tests check what users get; its tokenizer.json form, test data only, is
in tests/fixtures/t5-vocab."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from t5kit.tokenizer import t5_vocabulary_path

# Two cores on CI: keep torch from oversubscribing them when pytest runs things in parallel.
torch.set_num_threads(min(2, os.cpu_count() or 1))
# The linear backend's per-machine choices (t5kit.kernels.inference.linear): timed afresh in each test session,
# never written to the user's ~/.cache; subprocesses (the CLI tests) inherit the directory.
os.environ["T5KIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="t5kit-test-cache-")
# bf16 copies are tested on every CPU, also where it is emulated (AMD EPYC without AVX512-BF16), where users
# get fp32 and a warning instead (tests/kernels/test_precision_modes.py checks that fallback).
os.environ["T5KIT_BF16"] = "emulate"

T5_VOCAB = t5_vocabulary_path()  # spiece.model
T5_TOKENIZER_JSON = Path(__file__).resolve().parent / "fixtures" / "t5-vocab" / "tokenizer.json"


@pytest.fixture(scope="session")
def t5_vocab_dir() -> Path:
    assert (T5_VOCAB / "spiece.model").is_file(), f"the T5 vocabulary is missing from {T5_VOCAB}"
    return T5_VOCAB


def missing_system_part(message: str) -> None:
    """A Debian package a test reads or drives is absent: skip on a developer's machine, fail on CI (.ci/run
    installs every one of them, so there its absence is a broken set-up, not a reason to go green)."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


WORDNET_POS = ("noun", "verb", "adjective", "adverb")
WORDNET_DATA = Path("/usr/share/wordnet/data.noun")


def write_pos_task(root: Path, per_class: dict[str, int], max_chars: int = 80, seed: int = 0) -> Path:
    """A balanced part-of-speech task from WordNet glosses (``t5kit data import wordnet``): ``per_class[split]``
    glosses of at most ``max_chars`` per part of speech for the train and test splits (WordNet's hash split by
    lemma: no gloss of a test lemma is trained on), so the majority class scores 25%. Task ``pos_balanced``,
    validation = test; returns its tasks.yaml. Skips (fails on CI) without the wordnet-base package."""
    if not WORDNET_DATA.exists():
        missing_system_part("apt package wordnet-base is not installed")
    from t5kit.data import load_tasks
    from t5kit.data.corpora import import_wordnet

    import_wordnet(root / "import")
    load_tasks(root / "import" / "tasks.yaml")
    rng = random.Random(seed)
    for split in ("train", "test"):
        by_pos: dict[str, list[dict]] = {p: [] for p in WORDNET_POS}
        for line in (root / "import" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if len(record["definition"]) <= max_chars:  # short glosses: a quick run
                by_pos[record["pos"]].append({"definition": record["definition"], "pos": record["pos"]})
        chosen = [r for p in WORDNET_POS for r in rng.sample(by_pos[p], per_class[split])]
        rng.shuffle(chosen)
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in chosen)
    task = {"name": "pos_balanced", "kind": "classification", "prefix": "wordnet pos",
            "text_fields": ["definition"], "label_field": "pos", "label_words": {p: p for p in WORDNET_POS},
            "source": {"train": "train.jsonl", "validation": "test.jsonl", "test": "test.jsonl"}}
    (root / "tasks.yaml").write_text(yaml.safe_dump({"tasks": [task]}), encoding="utf-8")
    return root / "tasks.yaml"


@pytest.fixture
def restore_threads():
    """The caller's torch thread count back after a test that sets its own (the learning tests run on one)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
