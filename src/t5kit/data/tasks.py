"""Tasks and mixtures: T5's vocabulary for "what to train on", as in T5X/seqio.

A :class:`Task` turns source records into text-to-text examples ``{"inputs": str, "targets": str,
"task": name}`` with an input template (``"translate English to French: {en}"``), a target template,
optional pre-processors (record -> record or None to drop) and a post-processor for model outputs,
plus the metric names used to evaluate it. A span-corruption task instead yields token ids
``{"inputs": list[int], "targets": list[int], "task": name}`` of fixed lengths (needs a tokenizer).

A :class:`Mixture` samples tasks at rates proportional to their sizes with a cap, temperature-scaled, or
given explicitly (paper section 3.5.2). Built-in task kinds (:data:`TASK_KINDS`) cover translation,
summarisation, extractive and closed-book QA, classification with label words, definitions and
span-corruption pre-training; tasks and mixtures can be declared in YAML or JSON (:func:`load_tasks`).
"""

from __future__ import annotations

import inspect
import json
import os
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from t5kit.data.prefixes import CONTEXT, DEFINE, LANGUAGES, QUESTION, SUMMARIZE, translation_prefix
from t5kit.data.sources import Record, Repeat, Stream, open_source
from t5kit.data.span_corruption import SpanCorruptionStream
from t5kit.errors import DataError, closest_names


def _template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def _fill(template: str, record: Record, task: str, role: str) -> str:
    values = {}
    for name in _template_fields(template):
        if name not in record:
            fields = [k for k in record if not k.startswith("_")]
            raise DataError(
                f"{record.get('_where', 'a record')}: task {task!r} needs field {name!r} for its {role}, "
                f"but the record has {fields}.{closest_names(name, fields)} Map the field in the task "
                f"declaration or fix the data"
            )
        value = record[name]
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(
                f"{record.get('_where', 'a record')}: task {task!r}: field {name!r} is empty; "
                f"remove the record or pass skip_bad=True (CLI: --skip-bad) to skip empty examples"
            )
        values[name] = value if isinstance(value, str) else str(value)
    return template.format_map(values)


@dataclass
class Task:
    """One text-to-text task.

    ``source`` is a source declaration (path, glob, dict, ``"hf:id"``, list of records or a Stream), or
    a mapping from split name to one. ``inputs``/``targets`` are ``str.format`` templates over the record's
    fields. ``preprocessors`` run on each record first (return None to drop it); ``postprocess`` maps a
    model output back to a comparable value (e.g. label word -> label). ``kind`` is informational.
    For ``kind == "span_corruption"``, ``options`` holds ``text_field``, ``inputs_length``,
    ``noise_density`` and ``mean_noise_span_length`` and the templates are unused.
    """

    name: str
    source: Any
    inputs: str = "{inputs}"
    targets: str = "{targets}"
    preprocessors: Sequence[Callable[[Record], Record | None]] = ()
    postprocess: Callable[[str], Any] | None = None
    metrics: Sequence[str] = ()
    kind: str = "custom"
    size: int | Mapping[str, int] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    base_dir: str | None = None

    def _split_spec(self, split: str) -> Any:
        src = self.source
        if isinstance(src, Mapping) and not ({"path", "paths", "dataset"} & set(src)):
            if split not in src:
                raise DataError(
                    f"task {self.name!r} has no split {split!r}; it has {sorted(src)}."
                    + closest_names(split, list(src))
                )
            return src[split]
        return src

    def records(self, split: str = "train", skip_bad: bool = False) -> Stream:
        """The raw records of ``split`` as a resumable stream."""
        return open_source(self._split_spec(split), base_dir=self.base_dir, skip_bad=skip_bad)

    def to_example(self, record: Record) -> dict[str, Any] | None:
        """Record -> ``{"inputs", "targets", "task"}`` (None when a pre-processor drops it)."""
        for fn in self.preprocessors:
            out = fn(record)
            if out is None:
                return None
            record = out
        return {
            "inputs": _fill(self.inputs, record, self.name, "inputs"),
            "targets": _fill(self.targets, record, self.name, "targets"),
            "task": self.name,
        }

    def stream(
        self,
        split: str = "train",
        *,
        tokenizer: Any = None,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        repeat: bool = False,
        skip_bad: bool = False,
    ) -> Any:
        """Examples of ``split``: sharded by rank first (ranks never overlap), then shuffled, then mapped.

        With ``skip_bad`` a record with a missing or empty field is skipped and counted in
        ``stream.bad`` instead of raising.
        """
        base: Stream = self.records(split, skip_bad=skip_bad)
        if world_size > 1:
            base = base.shard(rank, world_size)
        if repeat:
            base = Repeat(base)
        if shuffle_buffer > 1:
            base = base.shuffle(shuffle_buffer, seed)
        if self.kind == "span_corruption":
            if tokenizer is None:
                raise DataError(f"task {self.name!r} is span corruption: pass a tokenizer to stream()")
            opts = {k: v for k, v in self.options.items() if k != "text_field"}
            sc = SpanCorruptionStream(
                base, tokenizer, text_field=self.options.get("text_field", "text"), seed=seed, **opts
            )
            return _Tagged(sc, self.name)
        return TaskStream(self, base, skip_bad=skip_bad)

    def num_examples(self, split: str = "train") -> int:
        """Declared size, or the number of records (counted by reading the split once)."""
        if isinstance(self.size, int):
            return self.size
        if isinstance(self.size, Mapping) and split in self.size:
            return int(self.size[split])
        return sum(1 for _ in self.records(split, skip_bad=True))


class TaskStream(Stream):
    """A task's examples over a record stream; resumable through the record stream's state."""

    def __init__(self, task: Task, records: Stream, skip_bad: bool = False) -> None:
        super().__init__()
        self.task, self.inner, self.skip_bad = task, records, skip_bad
        self.bad = 0

    def _generate(self) -> Iterator[Record]:
        for rec in self.inner:
            try:
                ex = self.task.to_example(rec)
            except DataError:
                if not self.skip_bad:
                    raise
                self.bad += 1
                continue
            if ex is not None:
                yield ex

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.bad = int(state.get("bad", 0))
        self._reset()


class _Tagged(Stream):
    """Adds ``"task": name`` to a span-corruption stream's examples."""

    def __init__(self, inner: SpanCorruptionStream, name: str) -> None:
        super().__init__()
        self.inner, self.name = inner, name

    def _generate(self) -> Iterator[Record]:
        for ex in self.inner:
            ex["task"] = self.name
            yield ex

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
        self._reset()


# -- built-in task kinds ---------------------------------------------------------------------------


def translation_task(
    name: str, source: Any, source_lang: str = "en", target_lang: str = "fr",
    source_field: str | None = None, target_field: str | None = None, **kw: Any,
) -> Task:
    """``"translate English to French: {en}"`` -> ``"{fr}"`` (paper prefix), metric BLEU."""
    for lang in (source_lang, target_lang):
        if lang not in LANGUAGES:
            raise DataError(f"unknown language code {lang!r}; known: {', '.join(LANGUAGES)}."
                            + closest_names(lang, LANGUAGES))
    sf, tf = source_field or source_lang, target_field or target_lang
    prefix = translation_prefix(source_lang, target_lang)
    kw.setdefault("metrics", ["bleu", "chrf"])
    return Task(name, source, inputs=prefix + "{" + sf + "}", targets="{" + tf + "}", kind="translation", **kw)


def summarization_task(
    name: str, source: Any, text_field: str = "article", summary_field: str = "summary", **kw: Any
) -> Task:
    """``"summarize: {article}"`` -> ``"{summary}"``, metric ROUGE."""
    kw.setdefault("metrics", ["rouge1", "rouge2", "rougeL"])
    return Task(name, source, inputs=SUMMARIZE + "{" + text_field + "}", targets="{" + summary_field + "}",
                kind="summarization", **kw)


def _first_answer(field_name: str) -> Callable[[Record], Record]:
    """SQuAD-style answers (``{"text": [...]}`` or a list) -> the first answer string."""

    def fn(rec: Record) -> Record:
        ans = rec.get(field_name)
        if isinstance(ans, Mapping):
            ans = ans.get("text")
        if isinstance(ans, (list, tuple)):
            ans = ans[0] if ans else ""
        return {**rec, field_name: ans}

    return fn


def qa_task(
    name: str, source: Any, question_field: str = "question", context_field: str = "context",
    answer_field: str = "answer", **kw: Any,
) -> Task:
    """Extractive QA: ``"question: {question} context: {context}"`` -> answer; EM and F1."""
    kw.setdefault("metrics", ["squad_em", "squad_f1"])
    pre = [_first_answer(answer_field), *kw.pop("preprocessors", [])]
    return Task(name, source, inputs=QUESTION + "{" + question_field + "}" + CONTEXT + "{" + context_field + "}",
                targets="{" + answer_field + "}", preprocessors=pre, kind="qa", **kw)


def closed_book_qa_task(
    name: str, source: Any, question_field: str = "question", answer_field: str = "answer", **kw: Any
) -> Task:
    """Closed-book QA: ``"question: {question}"`` -> answer, with no context."""
    kw.setdefault("metrics", ["squad_em", "squad_f1"])
    pre = [_first_answer(answer_field), *kw.pop("preprocessors", [])]
    return Task(name, source, inputs=QUESTION + "{" + question_field + "}", targets="{" + answer_field + "}",
                preprocessors=pre, kind="closed_book_qa", **kw)


def classification_task(
    name: str, source: Any, prefix: str | None = None, text_fields: Sequence[str] = ("sentence",),
    label_field: str = "label", label_words: Sequence[str] | Mapping[Any, str] | None = None, **kw: Any,
) -> Task:
    """``"cola sentence: {sentence}"`` -> a label word; with several text fields the paper's
    ``"stsb sentence1: ... sentence2: ..."`` form. ``label_words`` maps label values (or indices) to words;
    the post-processor maps a generated word back to its label (None when it is not a label word)."""
    prefix = prefix if prefix is not None else name
    if len(text_fields) == 1:
        inputs = f"{prefix} {text_fields[0]}: " + "{" + text_fields[0] + "}"
    else:
        inputs = prefix + "".join(f" {f}: " + "{" + f + "}" for f in text_fields)
    words: dict[str, str] = {}
    if label_words is not None:
        items = label_words.items() if isinstance(label_words, Mapping) else enumerate(label_words)
        words = {str(k): str(v) for k, v in items}

    def to_word(rec: Record) -> Record:
        if label_field not in rec:
            return rec  # _fill reports the missing field with its location
        value = str(rec[label_field])
        if words:
            if value not in words:
                raise DataError(
                    f"{rec.get('_where', 'a record')}: task {name!r}: label {value!r} has no label word; "
                    f"known labels: {sorted(words)}"
                )
            value = words[value]
        return {**rec, label_field: value}

    inverse = {v: k for k, v in words.items()}
    kw.setdefault("metrics", ["accuracy"])
    if words:  # the label set, for rank classification (``t5kit eval --rank``: the most likely label word)
        kw["options"] = {**kw.get("options", {}), "choices": list(dict.fromkeys(words.values()))}
    pre = [to_word, *kw.pop("preprocessors", [])]
    return Task(name, source, inputs=inputs, targets="{" + label_field + "}", preprocessors=pre,
                postprocess=(lambda s: inverse.get(s.strip())) if words else None, kind="classification", **kw)


def definition_task(name: str, source: Any, word_field: str = "word", definition_field: str = "definition",
                    **kw: Any) -> Task:
    """``"define: {word}"`` -> gloss (the WordNet importer's records)."""
    kw.setdefault("metrics", ["exact_match", "rougeL"])
    return Task(name, source, inputs=DEFINE + "{" + word_field + "}", targets="{" + definition_field + "}",
                kind="definition", **kw)


def span_corruption_task(
    name: str, source: Any, text_field: str = "text", inputs_length: int = 512,
    noise_density: float = 0.15, mean_noise_span_length: float = 3.0, **kw: Any,
) -> Task:
    """Pre-training on raw text: token-id examples of exactly ``inputs_length`` / targets length."""
    opts = {"text_field": text_field, "inputs_length": inputs_length, "noise_density": noise_density,
            "mean_noise_span_length": mean_noise_span_length}
    return Task(name, source, kind="span_corruption", options=opts, **kw)


def custom_task(name: str, source: Any, inputs: str, targets: str, **kw: Any) -> Task:
    """Any text-to-text task given by its two templates."""
    return Task(name, source, inputs=inputs, targets=targets, kind="custom", **kw)


TASK_KINDS: dict[str, Callable[..., Task]] = {
    "translation": translation_task,
    "summarization": summarization_task,
    "qa": qa_task,
    "closed_book_qa": closed_book_qa_task,
    "classification": classification_task,
    "definition": definition_task,
    "span_corruption": span_corruption_task,
    "custom": custom_task,
}


# -- mixtures --------------------------------------------------------------------------------------

RATE_MODES = ("proportional", "temperature", "equal", "explicit")


@dataclass
class Mixture:
    """Several tasks sampled at rates (paper section 3.5.2).

    - ``"proportional"``: rate_i ∝ min(n_i, cap) (examples-proportional mixing with an artificial limit);
    - ``"temperature"``: rate_i ∝ min(n_i, cap) ** (1 / temperature);
    - ``"equal"``: the same rate for every task;
    - ``"explicit"``: ``weights`` (normalised).
    Sizes come from the tasks' declared ``size`` or are counted from their sources.
    """

    name: str
    tasks: Sequence[Task | str]
    rate: str = "proportional"
    cap: int | None = None
    temperature: float = 1.0
    weights: Sequence[float] | None = None

    def resolved_tasks(self) -> list[Task]:
        return [get_task(t) if isinstance(t, str) else t for t in self.tasks]

    def rates(self, split: str = "train") -> dict[str, float]:
        tasks = self.resolved_tasks()
        if not tasks:
            raise DataError(f"mixture {self.name!r} has no tasks")
        if self.rate not in RATE_MODES:
            raise DataError(f"mixture {self.name!r}: unknown rate {self.rate!r}; use one of {RATE_MODES}."
                            + closest_names(self.rate, RATE_MODES))
        if self.rate == "explicit" or (self.weights is not None and self.rate == "proportional"):
            if self.weights is None or len(self.weights) != len(tasks):
                raise DataError(f"mixture {self.name!r}: 'weights' must give one number per task ({len(tasks)})")
            raw = np.asarray(self.weights, dtype=float)
        elif self.rate == "equal":
            raw = np.ones(len(tasks))
        else:
            sizes = np.asarray([t.num_examples(split) for t in tasks], dtype=float)
            if self.cap is not None:
                sizes = np.minimum(sizes, self.cap)
            raw = sizes ** (1.0 / self.temperature) if self.rate == "temperature" else sizes
        if (raw < 0).any() or raw.sum() <= 0:
            raise DataError(f"mixture {self.name!r}: rates must be non-negative and not all zero, got {raw}")
        raw = raw / raw.sum()
        return {t.name: float(r) for t, r in zip(tasks, raw)}

    def stream(self, split: str = "train", *, seed: int = 0, **task_kwargs: Any) -> MixtureStream:
        """An endless stream of examples: each step picks a task at its rate, then its next example.

        Each task's stream repeats forever; ``task_kwargs`` (tokenizer, shuffle_buffer, rank,
        world_size, skip_bad) go to :meth:`Task.stream`.
        """
        tasks = self.resolved_tasks()
        rates = self.rates(split)
        streams = [t.stream(split, seed=seed + i, repeat=True, **task_kwargs) for i, t in enumerate(tasks)]
        return MixtureStream([t.name for t in tasks], streams, [rates[t.name] for t in tasks], seed)


class MixtureStream(Stream):
    """Samples a task per example with a seeded generator; its state holds every task stream's state."""

    def __init__(self, names: list[str], streams: list[Any], rates: list[float], seed: int) -> None:
        super().__init__()
        self.names, self.streams = names, streams
        self._cdf = np.cumsum(np.asarray(rates, dtype=float))
        self._cdf[-1] = 1.0
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.count = 0

    def _generate(self) -> Iterator[Record]:
        while True:
            i = int(np.searchsorted(self._cdf, self._rng.random(), side="right"))
            ex = next(self.streams[i])
            self.count += 1
            yield ex

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state, "count": self.count,
                "streams": {n: s.state_dict() for n, s in zip(self.names, self.streams)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.names) - set(state["streams"])
        if missing:
            raise DataError(f"saved mixture state lacks tasks {sorted(missing)}; was the mixture changed?")
        self._rng = np.random.default_rng(self.seed)
        self._rng.bit_generator.state = state["rng"]
        self.count = int(state["count"])
        for n, s in zip(self.names, self.streams):
            s.load_state_dict(state["streams"][n])
        self._reset()


# -- registry and declarations ---------------------------------------------------------------------

_TASKS: dict[str, Task] = {}
_MIXTURES: dict[str, Mixture] = {}


def register_task(task: Task, overwrite: bool = False) -> Task:
    if task.name in _TASKS and not overwrite:
        raise DataError(f"task {task.name!r} is already registered; pick another name or pass overwrite=True")
    _TASKS[task.name] = task
    return task


def register_mixture(mixture: Mixture, overwrite: bool = False) -> Mixture:
    if mixture.name in _MIXTURES and not overwrite:
        raise DataError(f"mixture {mixture.name!r} is already registered; pick another name")
    _MIXTURES[mixture.name] = mixture
    return mixture


def get_task(name: str) -> Task:
    """A registered task by name; an unknown name suggests the closest registered ones."""
    if name not in _TASKS:
        known = sorted(_TASKS)
        raise DataError(
            f"unknown task {name!r}.{closest_names(name, known)} Registered tasks: "
            f"{', '.join(known) if known else '(none; load a task file with load_tasks or --tasks)'}"
        )
    return _TASKS[name]


def get_mixture(name: str) -> Mixture:
    if name not in _MIXTURES:
        known = sorted(_MIXTURES)
        raise DataError(f"unknown mixture {name!r}.{closest_names(name, known)} Registered: {known}")
    return _MIXTURES[name]


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def list_mixtures() -> list[str]:
    return sorted(_MIXTURES)


def task_from_dict(decl: Mapping[str, Any], base_dir: str | None = None, where: str = "task") -> Task:
    """A task from a declaration ``{"name", "kind", "source", ...kind options}``."""
    decl = dict(decl)
    if "name" not in decl or "source" not in decl:
        raise DataError(f"{where}: a task needs 'name' and 'source' (got keys {sorted(decl)})")
    kind = decl.pop("kind", "custom")
    if kind not in TASK_KINDS:
        raise DataError(f"{where}: unknown task kind {kind!r}.{closest_names(kind, TASK_KINDS)} "
                        f"Known kinds: {', '.join(TASK_KINDS)}")
    factory = TASK_KINDS[kind]
    name, source = decl.pop("name"), decl.pop("source")
    params = set(inspect.signature(factory).parameters) | {"metrics", "size"}
    params -= {"name", "source", "kw"}
    for key in decl:
        if key not in params:
            raise DataError(f"{where}: task {name!r} (kind {kind}) has no option {key!r}."
                            f"{closest_names(key, params)} Options: {', '.join(sorted(params))}")
    try:
        return factory(name, source, base_dir=base_dir, **decl)
    except TypeError as err:
        raise DataError(f"{where}: task {name!r}: {err}") from None


def load_tasks(path: str | os.PathLike, register: bool = True, overwrite: bool = True) -> dict[str, Any]:
    """Read tasks and mixtures from a YAML or JSON file (relative source paths are relative to it).

    Format::

        tasks:
          - name: en_fr
            kind: translation
            source: {train: data/en-fr/train.jsonl, validation: data/en-fr/validation.jsonl}
            source_lang: en
            target_lang: fr
        mixtures:
          - name: mix
            tasks: [en_fr, define]
            rate: temperature
            temperature: 2
            cap: 100000
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"task file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            doc = yaml.safe_load(text)
    except Exception as err:
        raise DataError(f"{p}: cannot parse task file: {err}") from None
    if not isinstance(doc, Mapping):
        raise DataError(f"{p}: expected a mapping with 'tasks' and/or 'mixtures' at the top level")
    unknown = set(doc) - {"tasks", "mixtures"}
    if unknown:
        key = sorted(unknown)[0]
        raise DataError(f"{p}: unknown top-level key {key!r}.{closest_names(key, ['tasks', 'mixtures'])}")
    tasks: dict[str, Task] = {}
    for i, decl in enumerate(doc.get("tasks") or []):
        t = task_from_dict(decl, base_dir=str(p.parent), where=f"{p}: tasks[{i}]")
        tasks[t.name] = t
        if register:
            register_task(t, overwrite=overwrite)
    mixtures: dict[str, Mixture] = {}
    for i, decl in enumerate(doc.get("mixtures") or []):
        decl = dict(decl)
        where = f"{p}: mixtures[{i}]"
        allowed = {"name", "tasks", "rate", "cap", "temperature", "weights"}
        for key in decl:
            if key not in allowed:
                raise DataError(f"{where}: unknown key {key!r}.{closest_names(key, allowed)}")
        names = decl.get("tasks") or []
        members = []
        for n in names:
            if n in tasks:
                members.append(tasks[n])
            elif n in _TASKS:
                members.append(_TASKS[n])
            else:
                known = sorted(set(tasks) | set(_TASKS))
                raise DataError(f"{where}: unknown task {n!r}.{closest_names(n, known)}")
        decl["tasks"] = members
        m = Mixture(**decl)
        mixtures[m.name] = m
        if register:
            register_mixture(m, overwrite=overwrite)
    return {"tasks": tasks, "mixtures": mixtures}
