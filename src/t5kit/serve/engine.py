"""The model side of the server: text <-> ids, task prefixes, decoding settings, and one batch at a time.

Kept apart from the HTTP app and the batcher so that those know nothing about torch, and so that the
decoding itself stays in ``t5kit.generate`` (this module only adapts it to the batcher's row events).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from t5kit.adapters.multi import BASE, attach_adapters
from t5kit.data.prefixes import task_options, task_prefixes
from t5kit.errors import ConfigError
from t5kit.generate import generate, stream
from t5kit.generate.continuous import ContinuousDecoder, Job
from t5kit.generate.options import GenerationConfig, check_token_ids
from t5kit.generate.processors import LogitsProcessors
from t5kit.generate.score import rank
from t5kit.hub import resolve
from t5kit.kernels import install as install_kernels
from t5kit.kernels.inference.precision import check_precision, inference_model
from t5kit.model import T5Model
from t5kit.pipeline import undecodable_ids
from t5kit.tokenizer import load_tokenizer


def _frozen(value: Any) -> Any:
    """Lists (token-id options: bad words, prefixes, choices) as tuples, so settings hash."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass
class Scored:
    """One input's candidates scored: summed and per-token-mean log-likelihoods, and per-token ones."""

    sums: list[float]
    means: list[float]
    token_logprobs: list[list[float]]


@dataclass(frozen=True)
class DecodingSettings:
    """What must be equal for two rows to share a batch (hashable, so a group key).

    ``options`` are the request's ``GenerationConfig`` options (sorted pairs, all of them, defaults
    included, so equal settings compare equal however they were spelled). ``max_new_tokens`` is not among
    them: it is per row, so short and long requests still batch together, within a ``length_group``.
    """

    options: tuple[tuple[str, Any], ...] = ()
    seed: int | None = None
    group: int | None = None  # set to a request's serial to keep it out of shared batches (seeded sampling)
    length_group: int = 0  # max_new_tokens class: a batch runs to its longest row, so keep lengths alike
    adapter: str | None = None  # the LoRA adapter the rows decode with (None: the base model)

    @classmethod
    def of(cls, options: dict[str, Any], max_new_tokens: int, seed: int | None = None,
           group: int | None = None, adapter: str | None = None) -> DecodingSettings:
        """Settings for a request's rows. Rows of a batch run until its longest limit: greedy and sampled
        limits are grouped by power of two (waste < 2x); beam search is cut only at the end, so there the
        limit must be exact."""
        beams = options.get("num_beams", 1) > 1
        length_group = max_new_tokens if beams else 1 << (max_new_tokens - 1).bit_length()
        return cls(tuple(sorted((k, _frozen(v)) for k, v in options.items())), seed, group, length_group, adapter)

    def generate_options(self) -> dict[str, Any]:
        """The ``t5kit.generate`` keyword arguments (those that are not batching bookkeeping)."""
        return dict(self.options)

    @property
    def num_beams(self) -> int:
        return int(self.generate_options().get("num_beams", 1))


class Engine:
    """A loaded model and tokenizer, decoding batches for :class:`t5kit.serve.batcher.Batcher`.

    ``precision`` (one of ``t5kit.kernels.inference.precision.PRECISIONS``) serves a converted
    copy of ``model``, made once here; ``None`` serves the model as it is. ``adapters`` (name -> LoRA
    adapter directory, peft's layout) are attached unmerged over the one base (:mod:`t5kit.adapters.multi`):
    a request names one (``Row.settings.adapter``), and the continuous batcher decodes rows of different
    adapters and of the base in one step. ``run_batch`` must only be
    called from one thread at a time (the batcher's worker); the lock makes a mistake there an ordinary
    wait instead of two torch calls racing on the same weights.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str = "t5kit",
        source: str | None = None,
        precision: str | None = None,
        adapters: Mapping[str, str | os.PathLike] | None = None,
    ):
        if precision is not None:
            check_precision(precision)
        # Before the kernels and the precision copies: those then apply to each adapted projection's base.
        self.adapters = attach_adapters(model, adapters) if adapters else None
        model = install_kernels(model.eval(), "inference")  # as the Generator prepares it (t5kit.kernels)
        self.model = inference_model(model, precision) if precision is not None else model
        if self.adapters is not None and self.model is not model:  # a converted copy routes its own rows
            self.adapters = self.adapters.bound_to(self.model)
        self.precision = precision
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.undecodable = undecodable_ids(model.config.vocab_size, tokenizer)
        self.tasks = task_prefixes(model.config)  # the registry's, plus the checkpoint's task_specific_params
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, path: str, dtype: str | None = None, name: str | None = None, precision: str | None = None,
        adapters: Mapping[str, str | os.PathLike] | None = None,
    ) -> Engine:
        """Model and tokenizer from one checkpoint directory (or hub id), resolved once; ``adapters`` as in
        the constructor."""
        directory = resolve(path, what="checkpoint")
        model = T5Model.from_pretrained(str(directory), dtype=dtype)
        tokenizer = load_tokenizer(directory)
        name = name or Path(str(path)).name or str(path)
        return cls(model, tokenizer, name=name, source=str(path), precision=precision, adapters=adapters)

    # --------------------------------------------------------------------------------- text
    def prefix(self, task: str | None) -> str:
        """The prefix of a named task, by the pipeline's lookup (:func:`t5kit.data.prefixes.task_options`)."""
        return task_options(self.model.config, task)[0]

    def encode(self, texts: Sequence[str], task: str | None = None) -> list[list[int]]:
        """Token ids of each input (task prefix prepended, EOS appended)."""
        prefix = self.prefix(task)
        return self.tokenizer.batch_encode([prefix + t for t in texts])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def describe(self) -> dict[str, Any]:
        """What is loaded, for ``GET /v1/models``."""
        c = self.model.config
        return {
            "id": self.name,
            "object": "model",
            "source": self.source,
            "parameters": self.model.num_parameters(),
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "precision": self.precision,
            "device": str(self.model.device),
            "config": {
                k: getattr(c, k)
                for k in (
                    "d_model",
                    "d_ff",
                    "num_layers",
                    "num_decoder_layers",
                    "num_heads",
                    "vocab_size",
                    "feed_forward_proj",
                )
            },
            "tasks": dict(self.tasks),
            "adapters": list(self.adapters.names) if self.adapters is not None else [],
        }

    # --------------------------------------------------------------------------------- adapters
    def adapter_index(self, name: str | None) -> int:
        """The route index of adapter ``name`` (None: the base); a ConfigError names the loaded ones."""
        if self.adapters is None:
            if name is None:
                return BASE
            raise ConfigError(f"no adapter named {name!r} is loaded: this server holds none (start it with "
                              f"t5kit serve --adapter NAME=DIR); leave adapter out for the base model")
        return self.adapters.index_of(name)

    def _use_adapter(self, name: str | None) -> None:
        """Every row of the next model calls decodes with adapter ``name`` (a static batch, a scoring call)."""
        if self.adapters is not None:
            self.adapters.use(name)

    # --------------------------------------------------------------------------------- decoding
    def run_batch(
        self,
        rows: Sequence[list[int]],
        max_new_tokens: Sequence[int],
        settings: Hashable,
        is_cancelled: Callable[[int], bool],
    ) -> Iterator[tuple[int, int | None, str | None]]:
        """Decode ``rows`` together (see ``BatchEngine.run_batch``) with ``t5kit.generate``.

        Greedy and sampled rows stream from ``generate.stream``: each row's tokens as they come and its
        end the moment it reaches EOS or its own ``max_new_tokens`` (the batch runs to the longest limit;
        a row past its limit is answered and its further tokens ignored, which for greedy decoding is
        exactly the output it would get alone). Beam search cannot commit early, so its rows come from
        ``generate.generate`` at the end. The EOS token itself is not reported as an output token.
        A cancelled row (timed out, client gone) still costs compute until its batch ends, unless every row
        of the batch is cancelled: ``generate.stream`` cannot drop single rows from outside.
        """
        assert isinstance(settings, DecodingSettings)
        input_ids, mask = self._pad(rows)
        limits = list(max_new_tokens)
        options = settings.generate_options()
        if self.undecodable:
            options["suppress_tokens"] = tuple(options.get("suppress_tokens", ())) + self.undecodable
        generator = torch.Generator().manual_seed(settings.seed) if settings.seed is not None else None
        eos = self.model.config.eos_token_id
        with self._lock:
            self._use_adapter(settings.adapter)  # a static batch shares its settings, the adapter among them
            if settings.num_beams > 1:
                out = generate(
                    self.model,
                    input_ids,
                    mask,
                    max_new_tokens=max(limits),
                    generator=generator,
                    warn_on_length_limit=False,
                    **options,
                )
                for row, (seq, reason) in enumerate(zip(out.sequences.tolist(), out.stop_reasons)):
                    n = out.num_new_tokens[row] if out.num_new_tokens else len(seq) - 1
                    new = [t for t in seq[1 : n + 1] if t != eos]
                    if len(new) > limits[row]:
                        new, reason = new[: limits[row]], "length"
                    for t in new:
                        yield row, t, None
                    yield row, None, reason
                return
            produced = [0] * len(rows)
            ended = [False] * len(rows)
            for event in stream(
                self.model, input_ids, mask, max_new_tokens=max(limits), generator=generator, **options
            ):
                row = event.row
                if ended[row]:
                    continue
                if is_cancelled(row):  # nobody waits for it; stop the batch once that holds for all rows
                    ended[row] = True
                    if all(ended):
                        return
                    continue
                if event.token_id is None:
                    ended[row] = True
                    yield row, None, event.stop_reason
                elif event.token_id != eos:
                    produced[row] += 1
                    yield row, event.token_id, None
                    if produced[row] >= limits[row]:
                        ended[row] = True
                        yield row, None, "length"

    def check_options(self, options: dict[str, Any]) -> None:
        """The checks decoding makes against this model (token ids inside its vocabulary, EOS inside a forced
        prefix or a choice ...), made now: a request that breaks one is answered 422, not failed later."""
        if self.undecodable:  # as decoding will run it (Engine.options): the ids the tokenizer cannot decode
            options = {**options, "suppress_tokens": tuple(options.get("suppress_tokens", ())) + self.undecodable}
        cfg = GenerationConfig.from_options(**options).resolved(self.model.config)
        check_token_ids(cfg, self.model.config.vocab_size)
        LogitsProcessors(cfg, self.model.config.vocab_size)

    # --------------------------------------------------------------------------------- continuous batching
    def options(self, settings: DecodingSettings, max_new_tokens: int) -> dict[str, Any]:
        """``generate`` options of a request: its settings, its length, the tokens the tokenizer cannot decode."""
        options = settings.generate_options()
        options["max_new_tokens"] = int(max_new_tokens)
        if self.undecodable:
            options["suppress_tokens"] = tuple(options.get("suppress_tokens", ())) + self.undecodable
        return options

    def job(self, rows: Sequence[Any], tag: Any = None) -> Job:
        """The :class:`~t5kit.generate.continuous.Job` of one request's rows (``t5kit.serve.batcher.Row``:
        same settings and length), for :class:`t5kit.serve.continuous.ContinuousBatcher`."""
        settings = rows[0].settings
        assert isinstance(settings, DecodingSettings)
        generator = torch.Generator().manual_seed(settings.seed) if settings.seed is not None else None
        return Job([list(r.ids) for r in rows], self.options(settings, rows[0].max_new_tokens), generator, tag,
                   route=self.adapter_index(settings.adapter))

    def continuous_decoder(self, max_new_tokens: int, max_rows: int = 32) -> ContinuousDecoder:
        """A decoder whose running batch requests join and leave step by step (one per model worker), with
        room for ``max_rows`` rows (the batcher's ``max_batch_size``)."""
        route = self.adapters.route if self.adapters is not None else None
        return ContinuousDecoder(self.model, max_new_tokens, max_rows, route=route)

    # --------------------------------------------------------------------------------- scoring
    def score_works(self, works: Sequence[Any]) -> list[list[Scored]]:
        """Score the candidates of several ``t5kit.serve.batcher.ScoreWork`` requests in one call: every
        input's encoder pass once, all its candidates in one decoder pass (``t5kit.generate.score.rank``).
        Returns, per work, per input, the candidates' summed / mean log-likelihoods and per-token ones."""
        out: list[list[Scored]] = [[] for _ in works]
        by_adapter: dict[str | None, list[int]] = {}  # one rank call per adapter (its rows expand per candidate)
        for i, work in enumerate(works):
            by_adapter.setdefault(work.adapter, []).append(i)
        for adapter, members in by_adapter.items():
            sources = [ids for i in members for ids in works[i].input_ids]
            candidates = [group for i in members for group in works[i].candidates]
            input_ids, mask = self._pad(sources)
            with self._lock, torch.inference_mode():
                self._use_adapter(adapter)
                ranked = rank(self.model, input_ids, mask, candidates)
            scored = [Scored(r.sums.tolist(), r.means.tolist(), [t.tolist() for t in r.token_logprobs])
                      for r in ranked]
            at = 0
            for i in members:
                out[i] = scored[at: at + len(works[i].input_ids)]
                at += len(works[i].input_ids)
        return out

    def _pad(self, rows: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.model.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        device = self.model.device
        return ids.to(device), mask.to(device)
