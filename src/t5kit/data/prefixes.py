"""The task-prefix registry: the text T5 puts before an input to say which task it is (the one copy).

T5 is told the task by a prefix ("translate English to German: ", "summarize: " ...). The task kinds of
:mod:`t5kit.data.tasks` write their inputs with these prefixes, the text pipeline (``t5kit.Generator``)
and the server accept their names as ``task=``, and the built-in model lists the ones it was fine-tuned
on. A checkpoint's config may add its own (``task_specific_params``, e.g. t5-small's
``translation_en_to_de``); :func:`task_prefixes` merges those in, and :func:`model_tasks` reads them.
"""

from __future__ import annotations

from typing import Any

LANGUAGES = {
    "en": "English", "fr": "French", "de": "German", "ro": "Romanian", "es": "Spanish", "it": "Italian",
    "pt": "Portuguese", "nl": "Dutch", "ru": "Russian", "zh": "Chinese", "ja": "Japanese",
}


def translation_prefix(source_lang: str, target_lang: str) -> str:
    """``"translate English to French: "`` for ``("en", "fr")`` (the paper's wording)."""
    return f"translate {LANGUAGES[source_lang]} to {LANGUAGES[target_lang]}: "


SUMMARIZE = "summarize: "
QUESTION = "question: "
CONTEXT = " context: "  # between the question and its passage in extractive QA
DEFINE = "define: "

PREFIXES: dict[str, str] = {
    "translate_en_de": translation_prefix("en", "de"),
    "translate_en_fr": translation_prefix("en", "fr"),
    "translate_en_ro": translation_prefix("en", "ro"),
    "summarize": SUMMARIZE,
    "question": QUESTION,
    "define": DEFINE,
}
"""Named task presets: the prefixes T5 was trained with (and that t5kit.data's task kinds write)."""


def model_tasks(config: Any) -> dict[str, dict[str, Any]]:
    """A model config's ``task_specific_params`` (prefix and decoding defaults per task), or ``{}``."""
    specific = (getattr(config, "extra", None) or {}).get("task_specific_params") or {}
    return {name: dict(params) for name, params in specific.items() if isinstance(params, dict)}


def task_prefixes(config: Any = None) -> dict[str, str]:
    """:data:`PREFIXES`, plus the prefixes a model's config names (the registry's own win on a clash)."""
    prefixes = dict(PREFIXES)
    for name, params in model_tasks(config).items():
        if isinstance(params.get("prefix"), str):
            prefixes.setdefault(name, params["prefix"])
    return prefixes
