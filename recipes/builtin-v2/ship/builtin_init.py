"""The built-in model: a small T5 trained from scratch with t5kit on text found on a Debian machine.

Why it exists: with no network (and for a first try of the toolkit) ``t5kit generate``, ``t5kit demo``,
``t5kit serve`` and the playground need a model that does something real without a download. It was
pre-trained with span corruption on English text (manual pages, GCIDE, the Debian handbook) and fine-tuned on
English->French and English->German (gettext catalogues and Debian's package descriptions with their
translations), summarization of package descriptions into their one-line synopsis, the Debian section of a
package from its description, and WordNet definitions. ``recipes/builtin-v2/build.sh`` rebuilds it;
``MODEL_CARD.md`` (next to this file) gives its data, licences, compute, its scores on text of packages it never
saw (``scores.json``: with the copy / lead / majority-class baselines measured the same way), and what it cannot do.

The weights are stored in bfloat16 to keep the package small; they are loaded as float32 by default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from t5kit.data.prefixes import PREFIXES
from t5kit.pipeline import Generator

BUILTIN_DIR: Path = Path(__file__).resolve().parent
"""The model directory (config.json, model.safetensors, spiece.model, tokenizer config, MODEL_CARD.md, scores.json)."""

MODEL_DIR: Path = BUILTIN_DIR  # the name ``t5kit serve`` looks for

TASKS = ("translate_en_fr", "translate_en_de", "summarize", "debian_section", "define")
"""The tasks the model was fine-tuned on (names of the prefix registry, :data:`t5kit.data.prefixes.PREFIXES`)."""

TASK_PREFIXES: dict[str, str] = {name: PREFIXES[name] for name in TASKS}
"""The prefix each of :data:`TASKS` puts before its inputs."""

# Held-out inputs for the demo: the tutorial sentence, then TEST-split text of packages never trained on.
DEMO_INPUTS: list[str] = [
    *(PREFIXES["translate_en_fr"] + text for text in (
        'I love to read books', 'This could mean that the signature is forged.', 'root certificate not yet valid')),
    *(PREFIXES["translate_en_de"] + text for text in ('quit this menu', 'this key has already been designated as a revoker')),
    PREFIXES["summarize"] + (
        'This module provides a wrapper around various text markup languages.\nAvailable by default are Markdown, reStructuredText and Textile, but you can easily add your own markups.\nIt is also possible to implement custom markups (inherited from AbstractMarkup class).'),
    PREFIXES["debian_section"] + (
        "Perl module for XSLT as a SAX Filter\nThe XML::Filter::XSLT module implements XSLT as a SAX Filter.  At the moment it only uses XML::LibXSLT as an XSLT transformer, but hopefully others will be supported in the future (it's written with that in mind).\nThe beauty is you can stick other things in the transformation chain if you want, or you can make the writer use XML::Handler::HTMLWriter if you want to write out valid HTML 4.0, or you can make the generator something like XML::Generator::DBI.  The possibilities are endless."),
    *(PREFIXES["define"] + word for word in ('indicative', 'euglenophyta')),
]


def model_path() -> str:
    """The model directory as a string (for callers that take a ``--model`` path)."""
    return str(BUILTIN_DIR)


def scores() -> dict[str, Any]:
    """The model's scores on the by-package TEST splits beside their baselines (``scores.json``, written by the
    recipe's last stage): ``{task: {"examples": n, "baseline": which, "metrics": {metric: [model, baseline]}}}``."""
    return json.loads((BUILTIN_DIR / "scores.json").read_text(encoding="utf-8"))


def load_builtin(precision: str = "fp32") -> Generator:
    """A text-level :class:`t5kit.Generator` for the shipped model.

    ``precision``: "fp32" (default; the bf16-stored weights are widened once at load), "bf16" or "int8"
    (converted for inference by :mod:`t5kit.kernels.inference.precision`).
    """
    return Generator.from_pretrained(str(BUILTIN_DIR), precision=precision)


__all__ = ["BUILTIN_DIR", "DEMO_INPUTS", "MODEL_DIR", "TASKS", "TASK_PREFIXES", "load_builtin", "model_path",
           "scores"]
