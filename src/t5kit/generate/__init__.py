"""Decoding over a small model protocol: options, logits processors, greedy / sampled / beam search.

- :mod:`t5kit.generate.options`: :class:`GenerationConfig`, the one list of decoding options, and the CLI
  flags and server schema derived from it;
- :mod:`t5kit.generate.processors`: the logits processors (transformers' order and arithmetic);
- :mod:`t5kit.generate.search`: :func:`generate` and :func:`stream`;
- :mod:`t5kit.generate.score`: :func:`score` (log-likelihoods of given targets) and :func:`rank` (candidates
  ranked with one encoder pass per source).

This package imports no other part of t5kit above ``errors``: ``T5Model.generate`` calls into it. Text in,
text out (tokenizer, task prefixes, batching, precision) is the pipeline's job: ``t5kit.Generator``
(:mod:`t5kit.pipeline`).
"""

import importlib

from t5kit.generate.options import (
    DEFAULT_MAX_NEW_TOKENS,
    GenerationConfig,
    GenerationError,
    add_generation_arguments,
    check_option,
    generation_parameters_model,
    option_fields,
    options_from_args,
)
from t5kit.generate.processors import LogitsProcessors
from t5kit.generate.score import NORMALIZE, RankOutput, ScoreError, ScoreOutput, check_normalize, rank, score
from t5kit.generate.search import (
    DecodingCache,
    DecodingModel,
    GenerationOutput,
    LengthLimitWarning,
    StreamEvent,
    generate,
    stream,
)

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS", "DecodingCache", "DecodingModel", "GenerationConfig", "GenerationError",
    "GenerationOutput", "LengthLimitWarning", "LogitsProcessors", "StreamEvent", "add_generation_arguments",
    "check_option", "generate", "generation_parameters_model", "option_fields", "options_from_args", "stream",
    "NORMALIZE", "RankOutput", "ScoreError", "ScoreOutput", "check_normalize", "rank", "score",
]

# Names that lived here before #16 and moved up to the text pipeline. Resolved on first use so that code
# written against ``from t5kit.generate import Generator`` keeps working: a module-level import would be a
# cycle (the pipeline imports the model, which imports this package). New code imports ``t5kit.Generator``.
_MOVED = {"Generator": "t5kit.pipeline", "GenerationResult": "t5kit.pipeline"}


def __getattr__(name: str) -> object:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 't5kit.generate' has no attribute {name!r}")
