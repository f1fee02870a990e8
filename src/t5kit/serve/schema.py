"""What a request may say and what the server answers: the limits, the error shape, the request and
response models, and turning a raw body into a checked request.

The decoding parameters are not written out here: :func:`parameters_model` derives them from
``t5kit.generate.GenerationConfig`` (name, type and default of each field) and a request's values are
validated by constructing that config, so an option added there is served, documented in OpenAPI and
checked with the same words as everywhere else, without a second list to keep in step.

Every error is JSON of one shape, ``{"error": {"code", "message", ...}}``; a broken limit also names the
limit and its value (``"limit": "max_new_tokens", "value": 256``), so a client can adjust without reading
server logs.

Odd bodies (:func:`read_json`): 400 ``invalid_json`` when the bytes are not JSON we read (not UTF-8, a
syntax error, ``NaN``/``Infinity``, nesting deeper than ``MAX_JSON_DEPTH``); 422 ``invalid_request`` when
they are JSON but not a request (a lone UTF-16 surrogate, a number out of range, a key given twice, NUL or
empty text, wrong types, unknown fields). A UTF-8 byte order mark is skipped (RFC 8259 section 8.1 lets
a reader ignore it; Windows editors write one).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from t5kit.errors import closest_names
from t5kit.generate import GenerationConfig, GenerationError
from t5kit.generate.options import check_option, generation_parameters_model, option_fields

JSON_SCALARS = (bool, int, float, str, type(None))


# ------------------------------------------------------------------------------------------------ limits
@dataclass
class Limits:
    """What one request may ask for; each is enforced with a 4xx answer naming it (``max_queue_rows``, the
    rows all requests may have waiting, with a 503 and ``Retry-After``)."""

    max_input_tokens: int = 512  # per input, counting the task prefix and EOS
    max_new_tokens: int = 256  # the most a request may ask for
    default_max_new_tokens: int = 64  # used when a request does not say
    max_inputs_per_request: int = 32
    max_body_bytes: int = 1_000_000
    request_timeout_s: float = 60.0
    max_num_beams: int = 16  # beam search costs num_beams rows of the batch per input
    max_queue_rows: int = 256  # rows waiting for the model; over it a request is answered 503 + Retry-After
    max_choices: int = 64  # POST /v1/score: candidates per input (each one a decoder row of the scoring pass)


# ------------------------------------------------------------------------------------------------ errors
class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.headers = headers
        self.body = {"code": code, "message": message, **extra}


def limit_error(
    status: int, limit: str, value: Any, message: str, code: str = "limit_exceeded", **extra: Any
) -> APIError:
    return APIError(status, code, f"{message} (limit {limit}={value})", limit=limit, value=value, **extra)


# ------------------------------------------------------------------------------------------------ parameters
def parameters_model() -> type[BaseModel]:
    """The request's ``parameters`` model: ``t5kit.generate.options``' own derivation of the decoding options.

    Every option a client may set (not the token ids: the model's own) except ``num_return_sequences`` (the
    server answers one output per input) and ``suppress_tokens``; ``max_new_tokens`` defaults to the
    server's ``default_max_new_tokens``, and ``seed`` makes sampling reproducible. Values are checked by
    :func:`decoding_options`.
    """
    return generation_parameters_model(
        "GenerateParameters", exclude=("num_return_sequences", "suppress_tokens"), defaults={"max_new_tokens": None})


GenerateParameters = parameters_model()
OPTION_NAMES = frozenset(f.name for f in option_fields())
SERVER_PARAMETERS = ("seed",)  # in the parameters model, not options of GenerationConfig


def decoding_options(parameters: BaseModel, max_new_tokens: int) -> dict[str, Any]:
    """The ``GenerationConfig`` options of a request, checked by constructing the config (its
    ``GenerationError`` becomes a 422 naming the parameter)."""
    options = {k: v for k, v in parameters.model_dump().items() if k not in SERVER_PARAMETERS}
    options["max_new_tokens"] = max_new_tokens
    try:
        GenerationConfig(**options)
    except GenerationError as err:
        raise _option_error(str(err), options) from None
    del options["max_new_tokens"]  # per row: rows with different limits still share a batch
    return options


def _option_error(message: str, options: dict[str, Any]) -> APIError:
    """'top_p must be in (0, 1], got 1.5' -> 'parameters.top_p must be in (0, 1], got 1.5'."""
    name = message.split(" ", 1)[0]
    if name not in options:
        return APIError(422, "invalid_request", f"parameters: {message}")
    field = f"parameters.{name}"
    detail = {"field": field, "message": message[len(name) :].strip(), "got": options[name]}
    return APIError(422, "invalid_request", f"{field}{message[len(name) :]}", details=[detail])


# ------------------------------------------------------------------------------------------------ bodies
class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: str | list[str] = Field(..., description="one text or a list of texts")
    task: str | None = Field(None, description="a task preset whose prefix is prepended (see /v1/models)")
    adapter: str | None = Field(None, description="a LoRA adapter the server holds, by name (see /v1/models); "
                                "absent: the base model")
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)  # type: ignore[valid-type]
    stream: bool = Field(False, description="answer as server-sent events: token, end (per input), done")
    choices: list[str] | None = Field(
        None, description="the output must be one of these strings (a trie over their tokens; greedy, beams, "
        "sampling); parameters.allowed_sequences is the same in token ids")


class Output(BaseModel):
    text: str
    token_ids: list[int]
    input_tokens: int
    output_tokens: int
    stop_reason: str


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int


class GenerateResponse(BaseModel):
    model: str
    outputs: list[Output]
    usage: Usage
    latency_s: float


class ScoreRequest(BaseModel):
    """``POST /v1/score``: the log-likelihood of given targets (``targets``: one per input), or rank
    classification over a label set (``choices``: one list for every input, or one list per input)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: str | list[str] = Field(..., description="one text or a list of texts")
    targets: str | list[str] | None = Field(None, description="the text to score for each input")
    choices: list[str] | list[list[str]] | None = Field(
        None, description="candidates to rank: one list for all inputs, or one list per input")
    task: str | None = Field(None, description="a task preset whose prefix is prepended (see /v1/models)")
    adapter: str | None = Field(None, description="a LoRA adapter the server holds, by name (see /v1/models); "
                                "absent: the base model")
    normalize: Literal["sum", "mean"] = Field(
        "sum", description="rank by the summed (sum) or the per-token mean (mean) log-likelihood")


class TargetScore(BaseModel):
    target: str
    token_ids: list[int]
    token_logprobs: list[float]
    sum: float
    mean: float


class ChoiceScores(BaseModel):
    label: str
    index: int
    scores: list[float] = Field(description="probabilities over the choices (softmax of the ranked statistic)")
    logprobs: list[float] = Field(description="each choice's summed log-likelihood")


class ScoreResponse(BaseModel):
    model: str
    scores: list[TargetScore] | None = None
    classifications: list[ChoiceScores] | None = None
    latency_s: float


@dataclass
class CheckedScore:
    texts: list[str]
    candidates: list[list[str]]  # per input: its target alone, or its choices
    classify: bool
    normalize: str


def request_texts(inputs: str | list[str], limits: Limits) -> list[str]:
    """A request's ``inputs`` as a list of texts, each checked (:func:`check_texts`), within
    ``max_inputs_per_request``: the rule /v1/generate and /v1/score share."""
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if not texts:
        raise APIError(422, "invalid_request", "inputs: the list is empty; send at least one text")
    if len(texts) > limits.max_inputs_per_request:
        raise limit_error(
            422, "max_inputs_per_request", limits.max_inputs_per_request, f"the request has {len(texts)} inputs"
        )
    check_texts(texts)
    return texts


def check_score_request(req: ScoreRequest, limits: Limits) -> CheckedScore:
    """The shape rules of ``POST /v1/score`` (exactly one of targets / choices, counts that match, no empty
    or repeated candidate) and its limits; the first broken one is raised as an :class:`APIError`."""
    texts = request_texts(req.inputs, limits)
    if (req.targets is None) == (req.choices is None):
        raise APIError(422, "invalid_request", "give either targets (the text to score for each input) or "
                       "choices (the candidates to rank), not both and not neither")
    if req.targets is not None:
        targets = [req.targets] if isinstance(req.targets, str) else list(req.targets)
        if len(targets) != len(texts):
            raise APIError(422, "invalid_request", f"targets: {len(targets)} targets for {len(texts)} inputs; "
                           "send one target per input")
        for i, t in enumerate(targets):
            if not t.strip():
                raise APIError(422, "invalid_request", f"targets[{i}] is empty; send the text to score")
        candidates = [[t] for t in targets]
    else:
        choices = req.choices
        if not choices:
            raise APIError(422, "invalid_request", "choices: the list is empty; send at least one candidate")
        per_input = isinstance(choices[0], list)
        if per_input and len(choices) != len(texts):
            raise APIError(422, "invalid_request", f"choices: {len(choices)} lists for {len(texts)} inputs; send "
                           "one list of candidates per input, or one list for all")
        candidates = [list(c) for c in choices] if per_input else [list(choices) for _ in texts]  # type: ignore[arg-type]
        for i, group in enumerate(candidates):
            where = f"choices[{i}]" if per_input else "choices"
            if not group:
                raise APIError(422, "invalid_request", f"{where} is empty; send at least one candidate")
            if len(group) > limits.max_choices:
                raise limit_error(422, "max_choices", limits.max_choices, f"{where} has {len(group)} candidates")
            for j, c in enumerate(group):
                if not c.strip():
                    raise APIError(422, "invalid_request", f"{where}[{j}] is empty; every candidate needs text")
            seen = [c for j, c in enumerate(group) if c in group[:j]]
            if seen:
                raise APIError(422, "invalid_request", f"{where} repeats {seen[0]!r}; send each candidate once")
    for i, group in enumerate(candidates):
        for c in group:
            if "\x00" in c:
                raise APIError(422, "invalid_request", f"a candidate of input {i} holds a NUL character (U+0000), "
                               "which the model's vocabulary cannot represent; remove it")
    return CheckedScore(texts, candidates, req.choices is not None, req.normalize)


# ------------------------------------------------------------------------------------------------ reading JSON
MAX_JSON_DEPTH = 16  # a request nests 3 levels (body -> parameters -> a list); deeper is not a request
INT64 = 2**63  # every integer a request holds (counts, token ids, seed) must fit torch's int64
UTF8_BOM = b"\xef\xbb\xbf"
SURROGATE = re.compile("[\ud800-\udfff]")  # json decodes a pair to one character: what is left is lone


class _Refused:
    """A JSON value the reader parsed but refuses (``NaN``, ``1e999``, a 30-digit integer), kept in place
    so that :func:`_check_values` can name where it was."""

    def __init__(self, text: str, status: int, code: str, why: str):
        self.text, self.status, self.code, self.why = text, status, code, why


class _Object(dict):
    """A JSON object, with the keys it was given more than once (the last one wins in ``json``; other
    parsers keep the first, so a proxy and the server could read two different requests)."""

    duplicates: list[str]


def _constant(name: str) -> _Refused:
    why = f"{name} is not JSON (RFC 8259 has no NaN or Infinity); send a finite number"
    return _Refused(name, 400, "invalid_json", why)


def _float(text: str) -> float | _Refused:
    value = float(text)
    if math.isfinite(value):
        return value
    return _Refused(text, 422, "invalid_request", f"the number {text[:40]} is out of range (it overflows a double)")


def _int(text: str) -> int | _Refused:
    # Checked on the digits first: Python refuses to convert more than 4300 of them (a ValueError), and a
    # 1 MB integer is quadratic to convert.
    if len(text) <= 20 and -INT64 <= int(text) < INT64:
        return int(text)
    shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} digits)"
    return _Refused(text, 422, "invalid_request", f"the integer {shown} is out of range (integers must fit 64 bits)")


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    obj.duplicates = [] if len(obj) == len(pairs) else [k for k, n in Counter(k for k, _ in pairs).items() if n > 1]
    return obj


def _where(path: str) -> str:
    return path or "(body)"


def _escaped(text: str) -> str:
    """Characters that cannot go into a UTF-8 answer (lone surrogates), as the JSON escapes the client sent."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_values(data: Any) -> None:
    """Every value the reader refused, every string holding a lone surrogate, every key given twice and any
    nesting deeper than ``MAX_JSON_DEPTH``, named by where it is (``inputs[0]``, ``parameters.seed``).

    Walks with a stack, not recursion: the body nests up to the parser's own limit (about 1000 levels).
    """
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, _Refused):
            raise APIError(value.status, value.code, f"{_where(path)}: {value.why}")
        if isinstance(value, str):
            bad = SURROGATE.search(value)
            if bad:
                raise APIError(
                    422,
                    "invalid_request",
                    f"{_where(path)}: holds a lone UTF-16 surrogate {_escaped(bad.group())} at character "
                    f"{bad.start()}, which is not a Unicode character; send the character itself or a "
                    "complete surrogate pair",
                )
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth >= MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(value, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in reversed(list(enumerate(value))))
            continue
        duplicates = getattr(value, "duplicates", ())
        if duplicates:
            raise APIError(
                422,
                "invalid_request",
                f"{_where(path)}: the key {_escaped(json.dumps(duplicates[0]))} is given more than once; "
                "send each key once",
            )
        for key, v in reversed(value.items()):  # popped in the order they were written
            bad = SURROGATE.search(key)
            if bad:
                raise APIError(
                    422,
                    "invalid_request",
                    f"{_where(path)}: the key {_escaped(json.dumps(key, ensure_ascii=False))} holds a lone UTF-16 "
                    f"surrogate {_escaped(bad.group())}, which is not a Unicode character",
                )
            stack.append((v, f"{path}.{key}" if path else key, depth + 1))


def _too_deep() -> APIError:
    return APIError(
        400,
        "invalid_json",
        f"the request body nests arrays or objects more than {MAX_JSON_DEPTH} levels deep; a request "
        'needs 3 at most, like {"inputs": ["..."], "parameters": {...}}',
    )


def read_json(body: bytes) -> Any:
    """The JSON value in ``body`` (UTF-8, an optional BOM skipped), checked by :func:`_check_values`; an
    :class:`APIError` naming the problem otherwise (the module docstring lists which)."""
    if body.startswith(UTF8_BOM):
        body = body[len(UTF8_BOM) :]
    if not body.strip():
        raise APIError(400, "invalid_json", 'the request body is empty; send JSON like {"inputs": "..."}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(
            400,
            "invalid_json",
            f"the request body is not valid JSON: it is not UTF-8 (byte 0x{body[err.start]:02x} at offset "
            f"{err.start}: {err.reason}); send JSON encoded as UTF-8",
        ) from None
    try:
        data = json.loads(
            text, parse_constant=_constant, parse_float=_float, parse_int=_int, object_pairs_hook=_object
        )
    except json.JSONDecodeError as err:
        raise APIError(
            400,
            "invalid_json",
            f"the request body is not valid JSON at line {err.lineno} column {err.colno}: {err.msg}",
        ) from None
    except RecursionError:  # json's C scanner stops at the interpreter's recursion limit
        raise _too_deep() from None
    _check_values(data)
    return data


def parse_request(body: bytes, model: type[BaseModel] = GenerateRequest) -> Any:
    """The request in ``body``, or a 400 (not JSON) / 422 (wrong shape) naming every problem.

    Parsed by hand rather than by a FastAPI body parameter so that malformed JSON gets the same error
    shape as everything else (the app bounds the body's size before it gets here).
    """
    data = read_json(body)
    if not isinstance(data, dict):
        shown = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise APIError(
            422,
            "invalid_request",
            f'the request body must be a JSON object like {{"inputs": "..."}}, not {shown}',
        )
    try:
        return model.model_validate(data)
    except ValidationError as err:
        option_error = _option_bound_error(err)
        if option_error is not None:
            raise option_error from None
        text, details = _readable(err)
        raise APIError(422, "invalid_request", text, details=details) from None


def _option_bound_error(err: ValidationError) -> APIError | None:
    """A decoding option's value out of its bounds, in ``GenerationConfig``'s words (the schema carries the
    same bounds for OpenAPI, but pydantic would word them its own way)."""
    for e in err.errors(include_url=False):
        loc = e["loc"]
        if len(loc) == 2 and loc[0] == "parameters" and loc[1] in OPTION_NAMES:
            try:
                check_option(str(loc[1]), e.get("input"))
            except GenerationError as option_err:
                return _option_error(str(option_err), {str(loc[1]): e.get("input")})
    return None


def _readable(err: ValidationError) -> tuple[str, list[dict[str, Any]]]:
    """One line per problem: 'parameters.temperature: Input should be a valid number'."""
    details = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in ("str", "list[str]")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            known = GenerateParameters.model_fields if loc.startswith("parameters.") else GenerateRequest.model_fields
            msg = f"unknown field.{closest_names(str(e['loc'][-1]), known)} Known: {', '.join(known)}"
        if loc == "inputs" and e["type"] in ("string_type", "list_type"):
            msg = "should be a string or a list of strings"
        detail = {"field": loc or "(body)", "message": msg, "got": e.get("input")}
        if detail not in details:
            details.append(detail)
    text = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return text, details


# ------------------------------------------------------------------------------------------------ checks
def check_texts(texts: list[str]) -> None:
    """Each input holds text, and no NUL: T5's SentencePiece cannot represent U+0000 (measured: "a\\x00b"
    encodes as "▁", "a", <unk>, "b", where "ab" is one piece and other control characters are dropped by
    its normaliser), and a NUL in text is nearly always a client's bug (a C string, binary data)."""
    for i, text in enumerate(texts):
        if not text.strip():
            raise APIError(
                422,
                "invalid_request",
                f"inputs[{i}] is {'empty' if not text else 'only whitespace'}; send the text to generate from",
            )
        at = text.find("\x00")
        if at >= 0:
            raise APIError(
                422,
                "invalid_request",
                f"inputs[{i}] holds a NUL character (U+0000) at character {at}, which the model's vocabulary "
                "cannot represent; remove it",
            )


@dataclass
class Checked:
    """A request that passed every limit: its texts, new-token limit and decoding options."""

    texts: list[str]
    max_new_tokens: int
    options: dict[str, Any]
    seed: int | None


def check_request(req: GenerateRequest, limits: Limits, stream_beams: bool = False) -> Checked:
    """The limits and the rules of serving (beam search does not sample here, and streams only with a batcher
    that streams its settled prefix: ``stream_beams``), then the decoding options themselves; the first
    broken one is raised as an :class:`APIError`."""
    texts = request_texts(req.inputs, limits)
    p = req.parameters
    asked = p.max_new_tokens  # type: ignore[attr-defined]
    new = asked if asked is not None else min(limits.default_max_new_tokens, limits.max_new_tokens)
    if new > limits.max_new_tokens:
        raise limit_error(
            422, "max_new_tokens", limits.max_new_tokens, f"parameters.max_new_tokens={new} asks for too many tokens"
        )
    options = decoding_options(p, new)
    beams = options["num_beams"]
    if beams > limits.max_num_beams:
        raise limit_error(
            422, "max_num_beams", limits.max_num_beams, f"parameters.num_beams={beams} asks for too many beams"
        )
    if beams > 1 and req.stream and not stream_beams:
        raise APIError(
            422,
            "invalid_request",
            "stream: the static batcher cannot stream beam search (num_beams > 1); use num_beams=1, "
            "stream=false, or the continuous batcher (t5kit serve --batching continuous)",
        )
    if beams > 1 and options["do_sample"]:
        raise APIError(422, "invalid_request", "parameters: beam search with do_sample is not supported")
    seed = p.seed if options["do_sample"] else None  # type: ignore[attr-defined]
    return Checked(texts, new, options, seed)


__all__ = [
    "APIError",
    "ChoiceScores",
    "CheckedScore",
    "ScoreRequest",
    "ScoreResponse",
    "TargetScore",
    "check_score_request",
    "Checked",
    "GenerateParameters",
    "GenerateRequest",
    "GenerateResponse",
    "Limits",
    "Output",
    "Usage",
    "check_request",
    "check_texts",
    "decoding_options",
    "limit_error",
    "parameters_model",
    "parse_request",
    "read_json",
]
