"""The text pipeline: text in, text out over a model and a tokenizer (``t5kit.Generator``).

:class:`Generator` does what search (:mod:`t5kit.generate`) leaves to its caller: tokenizing, task
prefixes and their decoding defaults, batching by length, the inference precision, and detokenizing,
including the incremental detokenizer :class:`TextStream` that streaming (here and in the server) uses.
It also scores given targets (``Generator.score``) and classifies into a set of label strings by ranking
their likelihoods (``Generator.classify``) over :func:`t5kit.generate.score` / :func:`t5kit.generate.rank`.

Where the pieces come from: task prefixes from the one registry (:mod:`t5kit.data.prefixes`) and the
model's ``task_specific_params``; precision from :mod:`t5kit.kernels.inference.precision`; loading from
``T5Model.from_pretrained`` and ``t5kit.tokenizer.load_tokenizer``, on a directory resolved once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from t5kit.adapters import load_adapter, merge_lora
from t5kit.adapters.multi import attach_adapters
from t5kit.data.prefixes import model_tasks, task_options
from t5kit.errors import CheckpointError
from t5kit.generate import (
    GenerationConfig,
    GenerationError,
    ScoreError,
    check_normalize,
    generate,
    rank,
    score,
    stream,
)
from t5kit.hub import resolve
from t5kit.ids import LABEL_PAD_ID
from t5kit.kernels import install as install_kernels
from t5kit.kernels.inference.precision import check_precision, inference_model
from t5kit.model import T5Model
from t5kit.tokenizer import load_tokenizer


def undecodable_ids(vocab_size: int, tokenizer: Any) -> tuple[int, ...]:
    """The ids a model can emit that its tokenizer cannot decode: the rows a vocabulary is padded with (T5's
    embedding has 32,128 rows for 32,100 pieces). A trained model rarely picks them, one trained from scratch
    can; decoding never should (the one rule: the Generator, the server and validation suppress these)."""
    pieces = getattr(tokenizer, "vocab_size", None) or len(tokenizer)
    return tuple(range(min(pieces, vocab_size), vocab_size))


class TextStream:
    """Incremental detokenization: the text each new token adds, never a half character (the one copy:
    ``Generator.stream`` and the server's streaming both use it).

    SentencePiece marks a word start with "▁" and its decoder joins pieces with context (leading spaces,
    byte fallback), so a piece cannot be decoded alone: each step decodes the whole output so far and
    emits what was appended; a tail that is still an incomplete UTF-8 character (decoded as U+FFFD) waits.
    """

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text it completes ("" while a character is incomplete)."""
        self.ids.append(token_id)
        text = self.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece

    def finish(self) -> str:
        """The text still held back once generation has ended (an incomplete tail, decoded as it is)."""
        text = self.decode(self.ids)
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece


def choice_token_ids(tokenizer: Any, choices: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """The token ids of each choice string, EOS included: ``allowed_sequences`` for "one of these strings"
    (the one tokenization: ``Generator.generate(choices=)`` and the server use it). An empty list, a lone
    string, or a choice that tokenizes to nothing is a :class:`GenerationError`."""
    if isinstance(choices, str) or not isinstance(choices, Sequence):
        raise GenerationError(f"choices must be a list of strings, got {choices!r}")
    if not choices:
        raise GenerationError("choices is empty: give at least one string the output may be")
    sequences = []
    for i, choice in enumerate(choices):
        if not isinstance(choice, str):
            raise GenerationError(f"choices item {i} must be a string, got {choice!r}")
        ids = tuple(tokenizer.encode(choice, add_eos=True))
        if len(ids) < 2:  # EOS alone
            raise GenerationError(f"choices item {i} ({choice!r}) tokenizes to nothing: every choice needs some "
                                  "text")
        sequences.append(ids)
    return tuple(sequences)


def with_choices(tokenizer: Any, options: dict[str, Any], choices: Sequence[str] | None,
                 given: Collection[str] = ()) -> dict[str, Any]:
    """``options`` with ``allowed_sequences`` for ``choices`` (None: unchanged). Unless the caller ``given``
    ``max_new_tokens``, it becomes the longest choice's length: no output can be longer, and the decoder's
    cache is allocated for that many positions."""
    if choices is None:
        return options
    if "allowed_sequences" in options:
        raise GenerationError("give choices (strings) or allowed_sequences (token ids), not both")
    sequences = choice_token_ids(tokenizer, choices)
    options = {**options, "allowed_sequences": sequences}
    if "max_new_tokens" not in given:
        options["max_new_tokens"] = max(len(ids) for ids in sequences)
    return options


@dataclass
class GenerationResult:
    """One output text. ``token_ids``: the generated ids (no decoder start, no padding; EOS kept if produced)."""

    text: str
    token_ids: list[int]
    input_tokens: int
    output_tokens: int
    stop_reason: str
    score: float | None = None


@dataclass
class Score:
    """One target scored. ``token_ids``: the target's ids (EOS last), ``tokens`` their pieces,
    ``token_logprobs`` the log-probability of each; ``sum`` their sum (the target's log-likelihood) and
    ``mean`` their mean; ``input_tokens``: the input's length (with the task prefix and EOS)."""

    target: str
    token_ids: list[int]
    tokens: list[str]
    token_logprobs: list[float]
    sum: float
    mean: float
    input_tokens: int


@dataclass
class Classification:
    """The choice with the highest likelihood for one input. ``label``: that choice, ``index``: its position
    in ``choices``; ``scores``: per choice, the softmax over the choices of the ranked statistic (with
    ``normalize="sum"`` each choice's probability renormalised over the choice set; they sum to 1);
    ``logprobs`` / ``mean_logprobs``: per choice, the summed / token-mean log-likelihood (EOS included)."""

    label: str
    index: int
    scores: list[float]
    logprobs: list[float]
    mean_logprobs: list[float]
    choices: list[str]


# Limits of Generator.score / classify: T5's pre-training lengths (512 input tokens; the server's default
# max_input_tokens too). Over-long texts are refused, never cut: a truncated target scores another string.
MAX_SCORE_INPUT_TOKENS = 512
MAX_SCORE_TARGET_TOKENS = 512


# transformers' task_specific_params count the decoder start in max_length/min_length; t5kit counts new tokens.

class Generator:
    """Text in, text out: tokenizes, batches (sorted by length, order preserved), decodes, detokenizes.

    ``tokenizer`` needs ``encode(text, add_eos=True) -> list[int]``, ``decode(ids, skip_special_tokens=...)``,
    ``pad_token_id``/``eos_token_id`` are taken from the model's config. Ids the tokenizer cannot decode
    (the model's embedding has 28 rows beyond T5's 32,100 ids) are never generated.

    ``precision`` ("fp32", "bf16", "int8"; ``None``: the model as it is) decodes with
    :func:`~t5kit.kernels.inference.precision.inference_model`'s copy of ``model``: converted once, kept,
    and refreshed after the original's weights change (so a trainer's evaluations see its latest step).
    ``model``'s weights are never changed; it gets the inference kernels (``t5kit.kernels.install(model,
    "inference")``, a class swap of its attention modules that falls back to the plain path in training).
    """

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, precision: str | None = None,
                        revision: str | None = None, adapter: str | os.PathLike | None = None,
                        merge_adapter: bool = True, **load_options: Any) -> Generator:
        """Model and tokenizer from one checkpoint directory (or hub repo id), resolved once.

        The loaded model belongs to the generator, so its inference kernels are installed on it
        (``t5kit.kernels.install(model, "inference")``; a converted precision gets them too). ``adapter``: a
        LoRA adapter directory (peft's layout, :mod:`t5kit.adapters`), merged into the loaded weights, so
        decoding costs what the base model's does; with ``merge_adapter=False`` it is kept apart, as the
        server keeps several (:func:`t5kit.adapters.multi.attach_adapters`: the base matmul plus two rank-r
        ones per adapted projection; ``benchmarks/adapters.py`` measures the cost against the merged model).
        """
        directory = resolve(path_or_repo_id, what="checkpoint", revision=revision, error=CheckpointError)
        model = T5Model.from_pretrained(str(directory), **load_options)
        if adapter is not None:
            if merge_adapter:
                merge_lora(load_adapter(model, adapter))
            else:
                attach_adapters(model, {"default": adapter}).use("default")
        return cls(model, load_tokenizer(directory), precision=precision)

    def __init__(self, model: Any, tokenizer: Any, precision: str | None = None):
        # The inference kernels (t5kit.kernels: the inference RMS norm on CPU): a class swap
        # that changes no parameter; the model's float32 eval outputs stay as they were.
        self.model = install_kernels(model, "inference")
        self.tokenizer = tokenizer
        self.precision = check_precision(precision) if precision is not None else None
        self._unreachable = undecodable_ids(model.config.vocab_size, tokenizer)

    @property
    def decoding_model(self) -> Any:
        """The model that decodes: ``model`` in ``precision`` (see the class docstring)."""
        return self.model if self.precision is None else inference_model(self.model, self.precision)

    # -- tasks
    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        """``task_specific_params`` of the model's config (t5-* checkpoints carry summarization, translation ...)."""
        return model_tasks(self.model.config)

    def task_options(self, task: str | None) -> tuple[str, dict[str, Any]]:
        """(prefix, decoding options) of a named task: :func:`t5kit.data.prefixes.task_options`."""
        return task_options(self.model.config, task)

    def _options(self, task: str | None, decoding: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        prefix, options = self.task_options(task)
        options.update(decoding)
        if self._unreachable:
            options["suppress_tokens"] = tuple(options.get("suppress_tokens", ())) + self._unreachable
        return prefix, options

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- whole outputs
    def generate(self, texts: str | Sequence[str], task: str | None = None, batch_size: int = 16,
                 return_scores: bool = False, generator: torch.Generator | None = None,
                 choices: Sequence[str] | None = None, **decoding: Any) -> list[GenerationResult]:
        """Results in the order of ``texts`` (``num_return_sequences`` consecutive results per text).

        ``decoding``: :class:`~t5kit.generate.GenerationConfig` options over the task's defaults;
        ``generator`` makes sampling reproducible. ``choices``: each output is one of these strings (greedy:
        the first token's best choice, then the next's ...; beams: the best-scoring of those the search keeps,
        all of them when ``num_beams`` is at least their number).
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise GenerationError("texts is empty: nothing to generate from")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise GenerationError(f"batch_size must be a positive integer, got {batch_size!r}")
        prefix, options = self._options(task, decoding)
        options = with_choices(self.tokenizer, options, choices, given=decoding)
        GenerationConfig.from_options(**options)  # fail before any work on a bad option
        model = self.decoding_model
        encoded = [self.tokenizer.encode(prefix + t, add_eos=True) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
        per_text: dict[int, list[GenerationResult]] = {}
        pad = self.model.config.pad_token_id
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            longest = max(len(encoded[i]) for i in chunk)
            ids = torch.full((len(chunk), longest), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(chunk):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            out = generate(model, ids, mask, return_scores=return_scores, generator=generator, **options)
            copies = out.sequences.shape[0] // len(chunk)
            for row, i in enumerate(chunk):
                results = []
                for c in range(copies):
                    r = row * copies + c
                    generated = out.sequences[r, 1: 1 + out.num_new_tokens[r]].tolist()
                    results.append(GenerationResult(
                        text=self._decode(generated), token_ids=generated, input_tokens=len(encoded[i]),
                        output_tokens=len(generated), stop_reason=out.stop_reasons[r],
                        score=float(out.scores[r]) if out.scores is not None else None))
                per_text[i] = results
        return [result for i in range(len(texts)) for result in per_text[i]]

    # -- scoring and classification
    def _encode_inputs(self, inputs: str | Sequence[str], task: str | None, limit: int | None,
                       what: str) -> tuple[list[str], list[list[int]]]:
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, Sequence) or not all(isinstance(t, str) for t in inputs):
            raise ScoreError(f"inputs must be a string or a list of strings, got {type(inputs).__name__}")
        inputs = list(inputs)
        if not inputs:
            raise ScoreError(f"inputs is empty: nothing to {what}")
        prefix, _ = self.task_options(task)  # the task's prefix; its decoding options do not apply
        encoded = [self.tokenizer.encode(prefix + t, add_eos=True) for t in inputs]
        _check_limit(encoded, limit, "inputs", "max_input_tokens")
        return inputs, encoded

    def _encode_target(self, text: Any, what: str) -> list[int]:
        if not isinstance(text, str):
            raise ScoreError(f"{what} is {type(text).__name__}, not a string")
        ids = self.tokenizer.encode(text, add_eos=True)
        eos = self.model.config.eos_token_id
        if not [t for t in ids if t != eos]:
            raise ScoreError(f"{what} {text!r} tokenizes to nothing (no token before EOS): give a non-empty text")
        return ids

    def _tokens(self, ids: list[int]) -> list[str]:
        pieces = getattr(self.tokenizer, "convert_ids_to_tokens", None)
        return list(pieces(ids)) if pieces is not None else [self.tokenizer.decode([i]) for i in ids]

    def score(self, inputs: str | Sequence[str], targets: str | Sequence[str], task: str | None = None,
              batch_size: int = 16, max_input_tokens: int | None = MAX_SCORE_INPUT_TOKENS,
              max_target_tokens: int | None = MAX_SCORE_TARGET_TOKENS) -> list[Score]:
        """The log-likelihood of each target given its input, per token and in total, in the order given.

        ``targets[i]`` is scored after ``inputs[i]`` (the task's prefix before it), EOS appended as in
        training, so the score is that of the whole output "target, then stop". Batches of ``batch_size``
        pairs, sorted by length. Texts over ``max_input_tokens`` / ``max_target_tokens`` tokens (EOS and the
        prefix counted; None: no limit) raise :class:`~t5kit.generate.ScoreError`, as do empty targets.
        """
        _check_batch_size(batch_size)
        texts, encoded = self._encode_inputs(inputs, task, max_input_tokens, "score")
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, Sequence):
            raise ScoreError(f"targets must be a string or a list of strings, got {type(targets).__name__}")
        targets = list(targets)
        if len(targets) != len(texts):
            raise ScoreError(f"{len(texts)} inputs but {len(targets)} targets: give one target per input (to "
                             "score several targets of one input, repeat the input, or use classify)")
        target_ids = [self._encode_target(t, f"targets[{i}]") for i, t in enumerate(targets)]
        _check_limit(target_ids, max_target_tokens, "targets", "max_target_tokens")
        model = self.decoding_model
        order = sorted(range(len(texts)), key=lambda i: (len(encoded[i]), len(target_ids[i])))
        results: dict[int, Score] = {}
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            ids, mask = self._pad([encoded[i] for i in chunk])
            labels = torch.full((len(chunk), max(len(target_ids[i]) for i in chunk)), LABEL_PAD_ID, dtype=torch.long)
            for row, i in enumerate(chunk):
                labels[row, : len(target_ids[i])] = torch.tensor(target_ids[i])
            out = score(model, ids, mask, labels)
            for row, i in enumerate(chunk):
                n = len(target_ids[i])
                results[i] = Score(target=targets[i], token_ids=target_ids[i], tokens=self._tokens(target_ids[i]),
                                   token_logprobs=out.token_logprobs[row, :n].tolist(), sum=float(out.sum[row]),
                                   mean=float(out.mean[row]), input_tokens=len(encoded[i]))
        return [results[i] for i in range(len(texts))]

    def classify(self, inputs: str | Sequence[str], choices: Sequence[str] | Sequence[Sequence[str]],
                 task: str | None = None, normalize: str = "sum", batch_size: int = 16,
                 max_input_tokens: int | None = MAX_SCORE_INPUT_TOKENS,
                 max_target_tokens: int | None = MAX_SCORE_TARGET_TOKENS) -> list[Classification]:
        """Rank classification: for each input, the choice the model finds most likely, and every choice's score.

        ``choices``: one list of label strings for every input, or one list per input. Each choice is scored
        as a target (EOS appended) with the encoder run once per input (:func:`t5kit.generate.rank`), and
        ranked by ``normalize``: "sum" (the whole string's log-likelihood, the T5 paper's reading) or "mean"
        (per token: long labels are not penalised for their length). Ties go to the first choice.
        """
        normalize = check_normalize(normalize)
        _check_batch_size(batch_size)
        texts, encoded = self._encode_inputs(inputs, task, max_input_tokens, "classify")
        if isinstance(choices, str) or not isinstance(choices, Sequence) or not choices:
            raise ScoreError("choices must be a non-empty list of label strings (or one such list per input), "
                             f"got {choices!r:.60}")
        per_input = not isinstance(choices[0], str)
        if per_input:
            if not all(isinstance(c, Sequence) and not isinstance(c, str) for c in choices):
                raise ScoreError("choices mixes label strings and lists: give one list of strings for all inputs "
                                 "or one list of strings per input")
            if len(choices) != len(texts):
                raise ScoreError(f"{len(texts)} inputs but {len(choices)} choice lists: give one list for all "
                                 "inputs or one per input")
        lists = [list(c) for c in choices] if per_input else [list(choices)]
        tokenized: dict[tuple[str, ...], list[list[int]]] = {}  # each distinct list tokenized once
        for n, labels in enumerate(lists):
            what = f"choices[{n}]" if per_input else "choices"
            for j, c in enumerate(labels):
                if not isinstance(c, str):
                    raise ScoreError(f"{what}[{j}] is {type(c).__name__}, not a label string")
            if tuple(labels) not in tokenized:
                tokenized[tuple(labels)] = self._encode_choices(labels, what, max_target_tokens)
        model = self.decoding_model
        # sources sorted by length share a batch; candidates need no sorting (rank pads them per pass)
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        results: dict[int, Classification] = {}
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            ids, mask = self._pad([encoded[i] for i in chunk])
            labels_of = [lists[i] if per_input else lists[0] for i in chunk]
            ranked = rank(model, ids, mask, [tokenized[tuple(c)] for c in labels_of], normalize=normalize)
            for i, labels, out in zip(chunk, labels_of, ranked):
                results[i] = Classification(label=labels[out.best], index=out.best, scores=out.probs.tolist(),
                                            logprobs=out.sums.tolist(), mean_logprobs=out.means.tolist(),
                                            choices=labels)
        return [results[i] for i in range(len(texts))]

    def _encode_choices(self, choices: list[Any], what: str, limit: int | None) -> list[list[int]]:
        if not choices:
            raise ScoreError(f"{what} is empty: give at least one label string to choose from")
        ids = [self._encode_target(c, f"{what}[{j}]") for j, c in enumerate(choices)]
        seen: dict[tuple[int, ...], int] = {}
        for j, row in enumerate(ids):
            other = seen.setdefault(tuple(row), j)
            if other != j:
                same = "are the same string" if choices[other] == choices[j] else "tokenize to the same ids"
                raise ScoreError(f"{what}[{other}] {choices[other]!r} and {what}[{j}] {choices[j]!r} {same}: "
                                 "each choice must be distinct (remove one)")
        _check_limit(ids, limit, what, "max_target_tokens")
        return ids

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(rows), max(len(r) for r in rows)), self.model.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, r in enumerate(rows):
            ids[row, : len(r)] = torch.tensor(r)
            mask[row, : len(r)] = 1
        return ids, mask

    # -- streaming
    def stream(self, text: str, task: str | None = None, generator: torch.Generator | None = None,
               choices: Sequence[str] | None = None, **decoding: Any) -> Iterator[str]:
        """Yield text pieces as tokens arrive; their concatenation is the decoded output (see :class:`TextStream`)."""
        if not isinstance(text, str):
            raise GenerationError(f"stream() takes one string, not {type(text).__name__}")
        prefix, options = self._options(task, decoding)
        options = with_choices(self.tokenizer, options, choices, given=decoding)
        ids = torch.tensor([self.tokenizer.encode(prefix + text, add_eos=True)])
        pieces = TextStream(self._decode)
        for event in stream(self.decoding_model, ids, generator=generator, **options):
            if event.token_id is None:
                break
            piece = pieces.push(event.token_id)
            if piece:
                yield piece
        tail = pieces.finish()
        if tail:
            yield tail


def _check_batch_size(batch_size: Any) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise GenerationError(f"batch_size must be a positive integer, got {batch_size!r}")


def _check_limit(rows: list[list[int]], limit: int | None, what: str, name: str) -> None:
    if limit is None:
        return
    for i, row in enumerate(rows):
        if len(row) > limit:
            raise ScoreError(f"{what}[{i}] is {len(row)} tokens long (EOS and any task prefix counted), over "
                             f"{name}={limit}: shorten it or pass a larger {name} (None: no limit)")


__all__ = ["MAX_SCORE_INPUT_TOKENS", "MAX_SCORE_TARGET_TOKENS", "Classification", "GenerationResult", "Generator",
           "Score", "TextStream", "choice_token_ids", "with_choices"]
