"""The decoding options: :class:`GenerationConfig` is the one list, and the other views are built from it.

Each field's ``dataclasses.field(metadata=...)`` holds its help text and its bounds (``ge``, ``gt``,
``le``, ``finite``, ``choices``), plus ``flag`` where the command-line spelling is special,
``request=False`` where a server client may not set it (the model's own token ids), and ``cli=False`` for a
Python callable (``prefix_allowed_tokens_fn``: neither a flag nor a request field).
Construction validates from those bounds, and the views below read the same metadata. Before #16 the
options were written out in five places (two in the search module, the CLI, and two in the server) and
the copies had drifted. Adding an option now takes one edit here.

The functions other modules call (named here so that the CLI and the server can depend on them):

- ``add_generation_arguments(parser, exclude=()) -> argument group``: one ``--flag`` per field plus
  ``--seed``, each defaulting to ``None`` so that only what the user typed overrides a task's defaults
  (used by ``t5kit generate``, ``t5kit eval``, ``t5kit demo`` and ``t5kit serve``). A list of ids is
  ``--decoder-prefix 5,6``; a list of id sequences is ``--bad-words-ids "3 4,7"`` (commas between
  sequences, spaces inside one) or JSON ``'[[3, 4], [7]]'``;
- ``options_from_args(args) -> dict``: the options the user gave, as ``generate()`` keyword arguments,
  each value checked at once (a bad value raises :class:`GenerationError` naming the flag's option).
  ``--seed N`` becomes ``generator=torch.Generator().manual_seed(N)``;
- ``generation_parameters_model(name=..., exclude=(), defaults={}, limits={}, seed=True) -> type[BaseModel]``:
  the server's request ``parameters`` schema (pydantic, strict, unknown keys refused), with the same names,
  bounds and descriptions. Its instances have ``.generation_options()`` (the config fields that are set,
  ready for ``generate()``) and ``.seed``; the cross-option checks (``num_return_sequences`` against
  ``num_beams`` ...) run when a request is parsed, so a bad request gets the GenerationError message;
- ``check_option(name, value)``: one option's own check (the one ``__post_init__`` runs);
- ``check_token_ids(config, vocab_size)``: every id an option holds is in the model's vocabulary (run by
  ``generate``, ``stream`` and the continuous batcher on the resolved config);
- ``option_fields()``: the fields, for anything else that lists the options.

Precision (fp32 / bf16 / int8) picks the weights, not the search, so it is not an option here. It lives in
``t5kit.kernels.inference.precision`` (``PRECISIONS``, ``add_precision_argument(parser)``), because
conversion is an inference kernel and sits above the model, which imports this package.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from t5kit.errors import T5kitError, closest_names

DEFAULT_MAX_NEW_TOKENS = 256  # generous on purpose: a silent cut at 20 tokens is a classic complaint


class GenerationError(T5kitError, ValueError):
    """A decoding option or input that generation cannot accept."""


def _option(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field whose metadata is the option's documentation and bounds."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class GenerationConfig:
    """Every decoding option, validated on construction (``GenerationError`` names the bad option).

    Token ids (``eos_token_id`` ...) default to the model's config when left ``None``.
    """

    max_new_tokens: int = _option(DEFAULT_MAX_NEW_TOKENS, "stop after this many new tokens", ge=1)
    min_new_tokens: int = _option(0, "forbid EOS before this many new tokens", ge=0)
    num_beams: int = _option(1, "beam search with this many beams (1: greedy or sampling)", ge=1)
    # The bounds of length_penalty, temperature and repetition_penalty keep the arithmetic finite: length ** 2**31
    # overflows a float, logits / 1e-308 overflow float32 and sampling then draws from NaN (found by fuzzing the
    # server, which answered 500). Typical values: length_penalty 0-2, temperature 0.1-2, repetition 1-2.
    length_penalty: float = _option(1.0, "beam length penalty exponent (see --length-penalty-style)", finite=True,
                                    ge=-16, le=16)
    length_penalty_style: str = _option(
        "hf", "hf: score / len^alpha (transformers); gnmt: score / ((5 + len) / 6)^alpha (the T5 paper's)",
        choices=("hf", "gnmt"), hint="'hf' divides by len**lp, 'gnmt' by ((5 + len) / 6)**lp")
    early_stopping: bool | str = _option(
        False, "beam search: stop an input once num_beams hypotheses are finished (true), by the length "
        "heuristic (false), or never (as transformers); the flag alone means true", choices=(True, False, "never"))
    num_return_sequences: int = _option(1, "outputs per input (at most num_beams without sampling)", ge=1)
    do_sample: bool = _option(False, "sample from the distribution instead of greedy / beam search")
    temperature: float = _option(1.0, "sampling temperature", ge=1e-3, le=1e3, finite=True,
                                 hint="for deterministic output use do_sample=False")
    top_k: int | None = _option(None, "sample among the k most likely tokens", ge=1)
    top_p: float | None = _option(None, "sample among the most likely tokens of total probability top_p", gt=0, le=1)
    no_repeat_ngram_size: int = _option(0, "forbid repeating any n-gram of this size (0: off)", ge=0)
    repetition_penalty: float = _option(1.0, "divide the logits of tokens already present by this (1: off)", ge=1e-3,
                                        le=1e3, finite=True)
    suppress_tokens: Sequence[int] = _option((), "token ids never generated", ge=0)
    # The constraints (#19). Each one costs nothing per step while unset (LogitsProcessors.active).
    bad_words_ids: Sequence[Sequence[int]] = _option(
        (), "token-id sequences never generated (a multi-token one: its last id is banned after the others)", ge=0)
    decoder_prefix: Sequence[int] = _option((), "token ids the output is forced to start with, then decoding is "
                                            "free (CTranslate2's target_prefix)", ge=0)
    allowed_sequences: Sequence[Sequence[int]] = _option(
        (), "the output is one of these token-id sequences, each ending in EOS (appended when missing); the "
        "text form is Generator.generate(choices=[...])", ge=0)
    force_words_ids: Sequence[Sequence[int]] = _option(
        (), "token-id sequences every output contains (constrained beam search: num_beams >= 2, no sampling)", ge=0)
    prefix_allowed_tokens_fn: Callable[[int, torch.Tensor], Sequence[int]] | None = _option(
        None, "Python only: f(batch_id, decoder ids so far) -> the ids allowed next (transformers' "
              "prefix_allowed_tokens_fn)", request=False, cli=False)
    eos_token_id: int | None = _option(None, "end-of-sequence id (default: the model's)", ge=0, request=False)
    pad_token_id: int | None = _option(None, "padding id (default: the model's)", ge=0, request=False)
    decoder_start_token_id: int | None = _option(None, "decoder start id (default: the model's)", ge=0,
                                                 request=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_option(f.name, getattr(self, f.name))
        self.suppress_tokens = tuple(int(t) for t in self.suppress_tokens)
        self.decoder_prefix = tuple(int(t) for t in self.decoder_prefix)
        self.bad_words_ids = tuple(tuple(int(t) for t in word) for word in self.bad_words_ids)
        self.allowed_sequences = tuple(tuple(int(t) for t in seq) for seq in self.allowed_sequences)
        self.force_words_ids = tuple(tuple(int(t) for t in word) for word in self.force_words_ids)
        if self.num_return_sequences > self.num_beams and not self.do_sample:
            raise GenerationError(
                f"num_return_sequences ({self.num_return_sequences}) > num_beams ({self.num_beams}): without "
                "sampling there are only num_beams distinct outputs; raise num_beams or set do_sample=True")
        _check_constraints(self)

    @classmethod
    def from_options(cls, base: GenerationConfig | None = None, **options: Any) -> GenerationConfig:
        """``base`` with ``options`` replaced; an unknown option name is an error with a suggestion."""
        names = {f.name for f in dataclasses.fields(cls)}
        for key in options:
            if key not in names:
                raise GenerationError(f"unknown generation option {key!r}.{closest_names(key, names)}")
        if base is None:
            return cls(**options)
        return dataclasses.replace(base, **options)

    def resolved(self, model_config: Any) -> GenerationConfig:
        """Fill the token ids left ``None`` from the model's config."""
        return dataclasses.replace(
            self,
            eos_token_id=self.eos_token_id if self.eos_token_id is not None else model_config.eos_token_id,
            pad_token_id=self.pad_token_id if self.pad_token_id is not None else model_config.pad_token_id,
            decoder_start_token_id=(self.decoder_start_token_id if self.decoder_start_token_id is not None
                                    else model_config.decoder_start_token_id),
        )

    def penalty(self, length: int) -> float:
        """The divisor applied to a summed log-probability of ``length`` generated tokens."""
        if self.length_penalty_style == "gnmt":
            return ((5.0 + length) / 6.0) ** self.length_penalty
        return float(length) ** self.length_penalty

    def choice_sequences(self) -> tuple[tuple[int, ...], ...]:
        """``allowed_sequences`` each ending in EOS, duplicates removed (first kept): what the trie holds.
        Needs ``eos_token_id`` (see :meth:`resolved`)."""
        eos = self.eos_token_id
        if eos is None:
            raise GenerationError("allowed_sequences needs an EOS id: set eos_token_id or resolve the config "
                                  "against the model (GenerationConfig.resolved)")
        ended = (seq if seq[-1] == eos else (*seq, eos) for seq in self.allowed_sequences)
        return tuple(dict.fromkeys(ended))


def _check_constraints(cfg: GenerationConfig) -> None:
    """The constraints against each other and the other options (those a model's vocabulary settles are in
    :func:`check_token_ids`). Checks that need the EOS id run once it is known (after ``resolved``)."""
    eos, prefix, limit = cfg.eos_token_id, cfg.decoder_prefix, cfg.max_new_tokens
    constrained = bool(prefix or cfg.allowed_sequences)
    if cfg.do_sample and cfg.num_beams > 1 and (constrained or cfg.prefix_allowed_tokens_fn is not None):
        # beam sampling draws 2 * num_beams distinct continuations a step: a forced token leaves one
        raise GenerationError("decoder_prefix, allowed_sequences and prefix_allowed_tokens_fn cannot be combined "
                              "with beam sampling (do_sample with num_beams > 1, which draws 2 * num_beams "
                              "distinct tokens a step); use num_beams=1 to sample or do_sample=False for beams")
    if len(prefix) > limit:
        raise GenerationError(f"decoder_prefix has {len(prefix)} tokens, more than max_new_tokens={limit}: raise "
                              "max_new_tokens or shorten the prefix")
    if prefix and len(prefix) == limit and cfg.num_return_sequences > 1 and not cfg.do_sample:
        raise GenerationError(f"decoder_prefix fills max_new_tokens={limit}: there is one output, not "
                              f"num_return_sequences={cfg.num_return_sequences}; raise max_new_tokens or return one")
    banned = set(cfg.suppress_tokens) | {word[0] for word in cfg.bad_words_ids if len(word) == 1}
    for t in prefix:
        if t == eos:
            raise GenerationError(f"decoder_prefix holds the EOS id {eos}: the output would end inside the prefix; "
                                  "remove it")
        if t in banned:
            raise GenerationError(f"decoder_prefix forces token {t}, which suppress_tokens or bad_words_ids forbid: "
                                  "remove it from one of them")
    if cfg.force_words_ids:
        _check_forced_words(cfg, banned)
    if eos is not None and (eos,) in cfg.bad_words_ids:
        raise GenerationError(f"bad_words_ids holds the EOS id {eos} alone (transformers drops it silently): to "
                              f"forbid EOS use suppress_tokens=[{eos}], or min_new_tokens for a minimum length")
    if not cfg.allowed_sequences:
        return
    for i, seq in enumerate(cfg.allowed_sequences):
        # the EOS id is not known yet: the sequence's own length is the least it needs
        needed = len(seq) if eos is None or seq[-1] == eos else len(seq) + 1
        if needed > limit:
            counted = "(EOS included)" if eos is not None else "or more (with EOS)"
            raise GenerationError(f"allowed_sequences item {i} needs {needed} tokens {counted}, more than "
                                  f"max_new_tokens={limit}: raise max_new_tokens")
        if eos is not None and eos in seq[:-1]:
            raise GenerationError(f"allowed_sequences item {i} holds the EOS id {eos} before its end: an output ends "
                                  "at its first EOS; remove it")
        if eos is not None and needed - 1 < cfg.min_new_tokens:
            raise GenerationError(f"allowed_sequences item {i} has {needed - 1} tokens before EOS but min_new_tokens="
                                  f"{cfg.min_new_tokens} forbids EOS until then: lower min_new_tokens")
    if prefix and not any(seq[: len(prefix)] == prefix for seq in cfg.allowed_sequences):
        raise GenerationError("no sequence of allowed_sequences starts with decoder_prefix: no output can meet both; "
                              "drop one or make them agree")
    if eos is None:
        return
    if eos in cfg.suppress_tokens:
        raise GenerationError(f"allowed_sequences end with EOS (id {eos}), which suppress_tokens forbids: remove "
                              f"{eos} from suppress_tokens")
    # only the sequences that start with the forced prefix can be outputs (a review found duplicates at -1e9
    # scores when the count ignored the prefix)
    distinct = sum(seq[: len(prefix)] == prefix for seq in cfg.choice_sequences())
    if cfg.num_return_sequences > distinct:
        raise GenerationError(f"num_return_sequences={cfg.num_return_sequences} is more than the {distinct} distinct "
                              "allowed_sequences" + (" that start with decoder_prefix" if prefix else "")
                              + ": lower num_return_sequences")


def _check_forced_words(cfg: GenerationConfig, banned: set[int]) -> None:
    words, eos = cfg.force_words_ids, cfg.eos_token_id
    if cfg.num_beams < 2 or cfg.do_sample:
        raise GenerationError("force_words_ids needs beam search without sampling: set num_beams >= 2 and "
                              "do_sample=False")
    others = [n for n in ("decoder_prefix", "allowed_sequences", "prefix_allowed_tokens_fn")
              if getattr(cfg, n) not in ((), None)]
    if others:
        raise GenerationError(f"force_words_ids cannot be combined with {others[0]} (each decides which tokens "
                              "may come next); use one of them")
    total = sum(len(w) for w in dict.fromkeys(words))
    if total > cfg.max_new_tokens:
        raise GenerationError(f"force_words_ids need {total} tokens, more than max_new_tokens={cfg.max_new_tokens}: "
                              "raise max_new_tokens or force fewer words")
    for i, word in enumerate(words):
        if eos is not None and eos in word:
            raise GenerationError(f"force_words_ids item {i} holds the EOS id {eos}: an output ends at its first "
                                  "EOS; remove it")
        stuck = sorted(set(word) & banned)
        if stuck:
            raise GenerationError(f"force_words_ids item {i} holds {stuck}, which suppress_tokens or bad_words_ids "
                                  "forbid: remove them from one of the two")


def check_token_ids(cfg: GenerationConfig, vocab_size: int) -> None:
    """Every token id an option holds is inside the model's vocabulary ``[0, vocab_size)`` (the one check:
    ``generate``, ``stream`` and the continuous batcher run it on the resolved config)."""
    for name in ("suppress_tokens", "decoder_prefix", "bad_words_ids", "allowed_sequences", "force_words_ids"):
        value = getattr(cfg, name)
        ids = value if _kind(name) is tuple else [t for seq in value for t in seq]
        bad = sorted({t for t in ids if not 0 <= t < vocab_size})
        if bad:
            raise GenerationError(f"{name} holds ids outside the vocabulary [0, {vocab_size}): {bad}; were they "
                                  "encoded with this model's tokenizer?")


# ---------------------------------------------------------------------------------------------- one field


def option_fields() -> tuple[dataclasses.Field, ...]:
    """The fields of :class:`GenerationConfig`, in order."""
    return dataclasses.fields(GenerationConfig)


_FIELDS = {f.name: f for f in dataclasses.fields(GenerationConfig)}
_HINTS = typing.get_type_hints(GenerationConfig)


def _kind(name: str) -> Any:
    """int, float, bool, str, tuple (a list of ids), list (a list of id sequences), Callable (Python only), or
    object (a choice of mixed types): the value's kind."""
    hint = _HINTS[name]
    args = [hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) > 1:  # bool | str: a choice among values of both types
        return object
    origin = typing.get_origin(args[0])
    if origin is Callable:
        return Callable
    if origin in (Sequence, list, tuple):
        (item,) = typing.get_args(args[0])
        return list if typing.get_origin(item) in (Sequence, list, tuple) else tuple
    return args[0]


def _on_command_line(f: dataclasses.Field) -> bool:
    """A flag exists for the option (not for a Python callable)."""
    return f.metadata.get("cli", True)


def _bounds(meta: Mapping[str, Any]) -> str:
    ge, gt, le = meta.get("ge"), meta.get("gt"), meta.get("le")
    low = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else "(-inf"
    if le is not None:
        return f"in {low}, {le}]"
    if ge is not None:
        return f">= {ge}"
    return f"> {gt}" if gt is not None else "finite"


def check_option(name: str, value: Any) -> None:
    """Raise :class:`GenerationError` when ``value`` is not acceptable for option ``name`` by itself."""
    meta = _FIELDS[name].metadata
    if value is None and _FIELDS[name].default is None:
        return
    hint = f" ({meta['hint']})" if "hint" in meta else ""
    kind = _kind(name)
    if "choices" in meta:
        if not any(value == c and type(value) is type(c) for c in meta["choices"]):
            shown = ", ".join(repr(c) for c in meta["choices"])
            raise GenerationError(f"{name} must be one of {shown}, got {value!r}{hint}")
        return
    if kind is bool:
        if not isinstance(value, bool):
            raise GenerationError(f"{name} must be True or False, got {value!r}")
        return
    if kind is Callable:
        if not callable(value):
            raise GenerationError(f"{name} must be a function, got {value!r}")
        return
    if kind is tuple:
        _check_ids(name, value, meta, hint)
        return
    if kind is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, Collection):
            raise GenerationError(f"{name} must be a list of token-id sequences, got {value!r}")
        # messages start with the option's name alone: the server reads the field from it
        for i, seq in enumerate(value):
            _check_ids(name, seq, meta, f" (in item {i}){hint}")
            if len(seq) == 0:
                raise GenerationError(f"{name} item {i} is empty: each sequence needs at least one token id "
                                      "(a word that tokenizes to nothing cannot be matched)")
        return
    _check_number(name, value, kind, meta, hint)


def _check_ids(name: str, value: Any, meta: Mapping[str, Any], hint: str) -> None:
    if isinstance(value, (str, bytes)) or not isinstance(value, Collection):
        raise GenerationError(f"{name} must be a list of token ids, got {value!r}{hint}")
    for item in value:
        _check_number(name, item, int, meta, hint, what="token ids")


def _check_number(name: str, value: Any, kind: type, meta: Mapping[str, Any], hint: str, what: str = "") -> None:
    integer = kind is int
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if ok and not integer and (meta.get("finite") or meta.get("gt") is not None) and not math.isfinite(value):
        ok = False
    if ok:
        ge, gt, le = meta.get("ge"), meta.get("gt"), meta.get("le")
        ok = (ge is None or value >= ge) and (gt is None or value > gt) and (le is None or value <= le)
    if not ok:
        noun = what or ("an integer" if integer else "a finite number" if meta.get("finite") else "a number")
        bounds = _bounds(meta)
        rule = f"{noun} {bounds}" if bounds != "finite" else noun
        raise GenerationError(f"{name} must be {rule}, got {value!r}{hint}")


# ---------------------------------------------------------------------------------------------- the CLI


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _early_stopping(text: str) -> bool | str:
    values = {"true": True, "false": False, "never": "never"}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"choose true, false or never, not {text!r}")
    return values[text.lower()]


def _token_ids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids, not {text!r}") from None


def _token_id_lists(text: str) -> tuple[tuple[int, ...], ...]:
    """'3 4,7' (sequences separated by commas, the ids of one by spaces) or JSON '[[3, 4], [7]]'."""
    try:
        if text.lstrip().startswith("["):
            value = json.loads(text)
            if not isinstance(value, list) or not all(isinstance(seq, list) for seq in value):
                raise ValueError
            return tuple(tuple(seq) for seq in value)
        return tuple(tuple(int(t) for t in part.split()) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token-id sequences as '3 4,7' (commas between sequences, "
                                         f"spaces inside one) or JSON [[3, 4], [7]], not {text!r}") from None


def add_generation_arguments(parser: argparse.ArgumentParser, exclude: Collection[str] = ()) -> Any:
    """One flag per :class:`GenerationConfig` field (minus ``exclude``), and ``--seed``, in a "decoding" group.

    Every default is ``None``: :func:`options_from_args` returns only what was given, so a task's or the
    library's defaults fill in the rest. Returns the argument group.
    """
    group = parser.add_argument_group("decoding")
    for f in option_fields():
        if f.name in exclude or not _on_command_line(f):
            continue
        kind = _kind(f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = "none" if default in (None, ()) else str(default).lower() if isinstance(default, bool) else default
        help_ = f.metadata["help"] if "default" in f.metadata["help"] else f"{f.metadata['help']} (default: {shown})"
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": help_}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif kind is object:  # early_stopping: True, False or "never"
            # The flag alone means True, as before #16, and takes no value: an optional value would swallow
            # the text after it (`--early-stopping "translate ..."`). The other values have their own flag.
            group.add_argument(f"{_flag(f)}-mode", dest=f.name, default=None, type=_early_stopping,
                               metavar="{true,false,never}", help=f"{f.metadata['help']} (set as a value)")
            kw.update(action="store_const", const=True, help="stop beam search early (early_stopping=True)")
        elif kind is tuple:
            kw.update(type=_token_ids, metavar="ID,ID...")
        elif kind is list:
            kw.update(type=_token_id_lists, metavar="'ID ID,ID...'",
                      help=f"{help_}; sequences separated by commas, the ids of one by spaces: '3 4,7' (or JSON "
                           "[[3, 4], [7]])")
        elif "choices" in f.metadata:
            kw["choices"] = list(f.metadata["choices"])
        else:
            kw["type"] = kind
        group.add_argument(_flag(f), **kw)
    if "seed" not in exclude:
        group.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible outputs)")
    return group


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding options the user gave (each checked), plus ``generator`` for ``--seed``."""
    options = {f.name: getattr(args, f.name) for f in option_fields()
               if _on_command_line(f) and getattr(args, f.name, None) is not None}
    for name, value in options.items():
        check_option(name, value)
    if getattr(args, "seed", None) is not None:
        options["generator"] = torch.Generator().manual_seed(args.seed)
    return options


# ---------------------------------------------------------------------------------------------- the server


def _request_type(name: str) -> Any:
    f = _FIELDS[name]
    if "choices" in f.metadata:
        hint: Any = Literal[tuple(f.metadata["choices"])]  # type: ignore[misc]
    else:
        kind = _kind(name)
        hint = list[int] if kind is tuple else list[list[int]] if kind is list else kind
    return hint | None if f.default is None else hint


def generation_parameters_model(
    name: str = "GenerationParameters",
    exclude: Collection[str] = (),
    defaults: Mapping[str, Any] | None = None,
    limits: Mapping[str, Mapping[str, Any]] | None = None,
    seed: bool = True,
) -> type:
    """A pydantic model of the decoding options a request may set (strict types, unknown keys refused).

    ``exclude``: options the server does not take; ``defaults``: a different default per option (``None``
    makes it optional, e.g. ``{"max_new_tokens": None}`` for "the server's"); ``limits``: tighter
    bounds per option (``{"num_beams": {"le": 16}}``); ``seed``: add an optional ``seed`` (>= 0).
    Fields with ``request=False`` in their metadata (token ids) are never included.
    """
    from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator  # optional: serve

    defaults = dict(defaults or {})
    limits = dict(limits or {})
    unknown = (set(defaults) | set(limits) | set(exclude)) - set(_FIELDS) - {"seed"}
    if unknown:
        raise GenerationError(f"unknown generation option {sorted(unknown)[0]!r}."
                              f"{closest_names(sorted(unknown)[0], _FIELDS)}")
    fields: dict[str, Any] = {}
    for f in option_fields():
        if f.name in exclude or not f.metadata.get("request", True):
            continue
        meta = {k: f.metadata[k] for k in ("ge", "gt", "le") if k in f.metadata}
        meta.update(limits.get(f.name, {}))
        default = f.default if f.default is not dataclasses.MISSING else list(f.default_factory())
        default = defaults.get(f.name, default)
        hint = _request_type(f.name)
        if default is None and f.default is not None:
            hint = hint | None
        if _kind(f.name) in (tuple, list):  # bounds apply to each id
            item = typing.Annotated[int, Field(**meta)]
            hint, meta = (list[item] if _kind(f.name) is tuple else list[list[item]]), {}
        allow_inf = {"allow_inf_nan": False} if _kind(f.name) is float else {}
        fields[f.name] = (hint, Field(default, description=f.metadata["help"], **meta, **allow_inf))
    if seed and "seed" not in exclude:
        fields["seed"] = (int | None, Field(None, ge=0, description="sampling seed (reproducible outputs)"))
    config_names = tuple(n for n in fields if n in _FIELDS)

    class Parameters(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        def generation_options(self) -> dict[str, Any]:
            """The options that hold a value, as ``generate()`` keyword arguments (``seed`` aside)."""
            return {n: getattr(self, n) for n in config_names if getattr(self, n) is not None}

        @model_validator(mode="after")
        def _consistent(self) -> Any:
            options = self.generation_options()
            if "suppress_tokens" in options:
                options["suppress_tokens"] = tuple(options["suppress_tokens"])
            try:
                GenerationConfig(**options)
            except GenerationError as err:
                raise ValueError(str(err)) from None
            return self

    model = create_model(name, __base__=Parameters, **fields)
    model.__doc__ = "Decoding options (derived from t5kit.generate.GenerationConfig)."
    return model
