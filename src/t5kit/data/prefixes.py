"""The task-prefix registry: the text T5 puts before an input to say which task it is (the one copy).

T5 is told the task by a prefix ("translate English to German: ", "summarize: " ...). The task kinds of
:mod:`t5kit.data.tasks` write their inputs with these prefixes, the text pipeline (``t5kit.Generator``)
and the server accept their names as ``task=``, and the built-in model lists the ones it was fine-tuned
on. A checkpoint's config may add its own (``task_specific_params``, e.g. t5-small's
``translation_en_to_de``); :func:`task_prefixes` merges those in, and :func:`model_tasks` reads them.
"""

from __future__ import annotations

from typing import Any

from t5kit.errors import closest_names
from t5kit.generate.options import GenerationError, option_fields

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
# The Debian-section classification of package descriptions (t5kit.data.corpora.ddtp): a classification task
# with prefix "debian section" over the text field "description" writes this, as the paper's GLUE tasks write
# "cola sentence: ".
DEBIAN_SECTION = "debian section description: "

PREFIXES: dict[str, str] = {
    "translate_en_de": translation_prefix("en", "de"),
    "translate_en_fr": translation_prefix("en", "fr"),
    "translate_en_ro": translation_prefix("en", "ro"),
    "summarize": SUMMARIZE,
    "question": QUESTION,
    "define": DEFINE,
    "debian_section": DEBIAN_SECTION,
}
"""Named task presets: the prefixes T5 was trained with (and that t5kit.data's task kinds write), and the
built-in model's Debian-section classification."""


def model_tasks(config: Any) -> dict[str, dict[str, Any]]:
    """A model config's ``task_specific_params`` (prefix and decoding defaults per task), or ``{}``."""
    specific = (getattr(config, "extra", None) or {}).get("task_specific_params") or {}
    return {name: dict(params) for name, params in specific.items() if isinstance(params, dict)}


def task_prefixes(config: Any = None) -> dict[str, str]:
    """Every task name and its prefix: a model config's ``task_specific_params`` first (as :func:`task_options`
    looks them up), then the :data:`PREFIXES` presets it does not name."""
    prefixes = {name: str(params.get("prefix") or "") for name, params in model_tasks(config).items()}
    for name, prefix in PREFIXES.items():
        prefixes.setdefault(name, prefix)
    return prefixes


# The decoding defaults a checkpoint's task_specific_params may set: the options (not the model's token ids).
_TASK_KEYS = {f.name for f in option_fields() if f.metadata.get("request", True)} - {"suppress_tokens"}


def task_options(config: Any, task: str | None) -> tuple[str, dict[str, Any]]:
    """(prefix, decoding options) of a named task, in t5kit's terms (new-token counts): the one lookup, for
    the text pipeline and the server.

    A task of the model's config comes first (its prefix and decoding defaults), then a preset of
    :data:`PREFIXES` (the prefix only); an unknown name raises :class:`GenerationError` naming both lists.
    """
    if task is None:
        return "", {}
    tasks = model_tasks(config)
    if task not in tasks:
        if task in PREFIXES:
            return PREFIXES[task], {}
        known = ", ".join(sorted(tasks)) or "none (the config has no task_specific_params)"
        raise GenerationError(f"unknown task {task!r}; this model's tasks: {known}; t5kit's task presets: "
                              f"{', '.join(sorted(PREFIXES))}.{closest_names(task, [*tasks, *PREFIXES])}")
    params = dict(tasks[task])
    prefix = str(params.pop("prefix", "") or "")
    options: dict[str, Any] = {}
    if "max_length" in params:  # transformers counts the decoder start token; t5kit counts new tokens
        options["max_new_tokens"] = max(1, int(params.pop("max_length")) - 1)
    if "min_length" in params:
        options["min_new_tokens"] = max(0, int(params.pop("min_length")) - 1)
    options.update({k: v for k, v in params.items() if k in _TASK_KEYS})
    return prefix, options
