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

from t5kit.data.prefixes import PREFIXES
from t5kit.pipeline import Generator

BUILTIN_DIR: Path = Path(__file__).resolve().parent
"""The model directory (config.json, model.safetensors, spiece.model, tokenizer config, MODEL_CARD.md)."""

MODEL_DIR: Path = BUILTIN_DIR  # the name ``t5kit serve`` looks for

# Held-out inputs (TEST splits of the gettext and WordNet imports, never seen in training) for demos.
TASKS = ("translate_en_fr", "translate_en_de", "define")
"""The tasks the model was fine-tuned on (names of the prefix registry, :data:`t5kit.data.prefixes.PREFIXES`)."""

TASK_PREFIXES: dict[str, str] = {name: PREFIXES[name] for name in TASKS}
"""The prefix each of :data:`TASKS` puts before its inputs."""

DEMO_INPUTS: list[str] = [
    *(PREFIXES["translate_en_fr"] + text for text in (
        "Configuration file", "Could not write new index file.", "Invalid number of parameters",
        "Don't show this message again")),
    *(PREFIXES["translate_en_de"] + text for text in (
        "Suggested packages:", "The list of subproperties", "Don't clear environment on startup")),
    *(PREFIXES["define"] + word for word in ("firehouse", "armor")),
]


def model_path() -> str:
    """The model directory as a string (for callers that take a ``--model`` path)."""
    return str(BUILTIN_DIR)


def load_builtin(precision: str = "fp32") -> Generator:
    """A text-level :class:`t5kit.Generator` for the shipped model.

    ``precision``: "fp32" (default; the bf16-stored weights are widened once at load), "bf16" or "int8"
    (converted for inference by :mod:`t5kit.kernels.inference.precision`).
    """
    return Generator.from_pretrained(str(BUILTIN_DIR), precision=precision)


__all__ = ["BUILTIN_DIR", "DEMO_INPUTS", "MODEL_DIR", "TASKS", "TASK_PREFIXES", "load_builtin", "model_path"]
