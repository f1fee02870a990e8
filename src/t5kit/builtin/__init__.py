"""The built-in model: a small T5 trained from scratch with t5kit on text found on a Debian machine.

Why it exists: with no network (and for a first try of the toolkit) ``t5kit generate``, ``t5kit demo``,
``t5kit serve`` and the playground need a model that does something real without a download. It was
pre-trained with span corruption on English text and fine-tuned on English->French and English->German
gettext pairs and WordNet definitions; ``recipes/builtin/build.sh`` rebuilds it and ``MODEL_CARD.md``
(next to this file) gives its data, licences, compute and held-out scores, and what it cannot do.

The weights are stored in bfloat16 to keep the package small; they are loaded as float32 by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from t5kit.generate import Generator

BUILTIN_DIR: Path = Path(__file__).resolve().parent
"""The model directory (config.json, model.safetensors, spiece.model, tokenizer config, MODEL_CARD.md)."""

MODEL_DIR: Path = BUILTIN_DIR  # the name ``t5kit serve`` looks for

# Held-out inputs (TEST splits of the gettext and WordNet imports, never seen in training) for demos.
DEMO_INPUTS: list[str] = [
    "translate English to French: Configuration file",
    "translate English to French: Could not write new index file.",
    "translate English to French: Invalid number of parameters",
    "translate English to French: Don't show this message again",
    "translate English to German: Suggested packages:",
    "translate English to German: The list of subproperties",
    "translate English to German: Don't clear environment on startup",
    "define: firehouse",
    "define: armor",
]

TASK_PREFIXES: dict[str, str] = {
    "translate English to French": "translate English to French: ",
    "translate English to German": "translate English to German: ",
    "define": "define: ",
}
"""The tasks the model was fine-tuned on, by the prefix its inputs must start with."""


def model_path() -> str:
    """The model directory as a string (for callers that take a ``--model`` path)."""
    return str(BUILTIN_DIR)


def load_builtin(precision: str = "fp32") -> Generator:
    """A text-level :class:`t5kit.generate.Generator` for the shipped model.

    ``precision``: "fp32" (default; the bf16-stored weights are widened once at load), "bf16" or "int8"
    (converted for inference by :mod:`t5kit.generate`).
    """
    from t5kit.generate import Generator

    return Generator.from_pretrained(str(BUILTIN_DIR), precision=precision)


__all__ = ["BUILTIN_DIR", "DEMO_INPUTS", "MODEL_DIR", "TASK_PREFIXES", "load_builtin", "model_path"]
