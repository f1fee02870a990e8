"""Shared test fixtures: everything is built in code; the real T5 vocabulary comes from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing them when pytest runs things in parallel.
torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED = Path(__file__).resolve().parents[2] / "shared"
T5_VOCAB = SHARED / "fixtures" / "t5-vocab"


@pytest.fixture(scope="session")
def t5_vocab_dir() -> Path:
    if not (T5_VOCAB / "spiece.model").exists():
        pytest.skip(f"the real T5 vocabulary is not at {T5_VOCAB} (the shared/ folder beside the checkout)")
    return T5_VOCAB
