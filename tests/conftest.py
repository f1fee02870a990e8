"""Shared test fixtures: everything is built in code; the real T5 vocabulary is the one shipped in the package
(src/t5kit/resources/t5-vocab), so the tests check what users get; its tokenizer.json form, test data only, is
in tests/fixtures/t5-vocab."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

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
