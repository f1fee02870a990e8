"""What a request may say and what the server answers: the limits, the error shape, the request and
response models, and turning a raw body into a checked request.

The decoding parameters are not written out here: :func:`parameters_model` derives them from
``t5kit.generate.GenerationConfig`` (name, type and default of each field) and a request's values are
validated by constructing that config, so an option added there is served, documented in OpenAPI and
checked with the same words as everywhere else, without a second list to keep in step.

Every error is JSON of one shape, ``{"error": {"code", "message", ...}}``; a broken limit also names the
limit and its value (``"limit": "max_new_tokens", "value": 256``), so a client can adjust without reading
server logs.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from t5kit.errors import closest_names
from t5kit.generate import GenerationConfig, GenerationError

JSON_SCALARS = (bool, int, float, str, type(None))


# ------------------------------------------------------------------------------------------------ limits
@dataclass
class Limits:
    """What one request may ask for; each is enforced with a 4xx answer naming it."""

    max_input_tokens: int = 512  # per input, counting the task prefix and EOS
    max_new_tokens: int = 256  # the most a request may ask for
    default_max_new_tokens: int = 64  # used when a request does not say
    max_inputs_per_request: int = 32
    max_body_bytes: int = 1_000_000
    request_timeout_s: float = 60.0
    max_num_beams: int = 16  # beam search costs num_beams rows of the batch per input


# ------------------------------------------------------------------------------------------------ errors
class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "message": message, **extra}


def limit_error(status: int, limit: str, value: Any, message: str) -> APIError:
    return APIError(status, "limit_exceeded", f"{message} (limit {limit}={value})", limit=limit, value=value)


# ------------------------------------------------------------------------------------------------ parameters
def parameters_model(config: type = GenerationConfig) -> type[BaseModel]:
    """The request's ``parameters`` model, derived from the decoding-options dataclass ``config``.

    Each field of ``config`` whose type is a JSON scalar (or a union of them) becomes a request parameter
    with the field's type and default, except the token ids (``*_token_id``: the model's own, read from its
    config) and ``num_return_sequences`` (the server answers one output per input). Two parameters are the
    server's: ``max_new_tokens`` defaults to the server's ``default_max_new_tokens`` instead of the config's
    default, and ``seed`` makes sampling reproducible. Values are checked by :func:`decoding_options`.

    The one place that turns the options definition into the HTTP schema (to be swapped for the
    definition's own derivation once there is one).
    """
    hints = typing.get_type_hints(config)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        kind = hints[f.name]
        if f.name.endswith("_token_id") or f.name == "num_return_sequences" or not _is_scalar(kind):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        fields[f.name] = (kind, Field(default))
    fields["max_new_tokens"] = (int | None, Field(None, description="new tokens at most (default: server's)"))
    fields["seed"] = (int | None, Field(None, ge=0, description="sampling seed; a seeded request is batched alone"))
    return create_model(
        "GenerateParameters",
        __config__=ConfigDict(extra="forbid", strict=True),
        __doc__=f"Decoding options (the fields of ``{config.__module__}.{config.__name__}``).",
        **fields,
    )


def _is_scalar(kind: Any) -> bool:
    if typing.get_origin(kind) in (Union, types.UnionType):
        return all(_is_scalar(k) for k in typing.get_args(kind))
    return kind in JSON_SCALARS


GenerateParameters = parameters_model()
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
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)  # type: ignore[valid-type]
    stream: bool = Field(False, description="answer as server-sent events: token, end (per input), done")


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


def parse_request(body: bytes) -> GenerateRequest:
    """The request in ``body``, or a 400 (not JSON) / 422 (wrong shape) naming every problem.

    Parsed by hand rather than by a FastAPI body parameter so that malformed JSON gets the same error
    shape as everything else (the app bounds the body's size before it gets here).
    """
    if not body.strip():
        raise APIError(400, "invalid_json", 'the request body is empty; send JSON like {"inputs": "..."}')
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f" at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise APIError(400, "invalid_json", f"the request body is not valid JSON{where}: {err}") from None
    if not isinstance(data, dict):
        raise APIError(
            422,
            "invalid_request",
            f'the request body must be a JSON object like {{"inputs": "..."}}, not {type(data).__name__}',
        )
    try:
        return GenerateRequest.model_validate(data)
    except ValidationError as err:
        text, details = _readable(err)
        raise APIError(422, "invalid_request", text, details=details) from None


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
@dataclass
class Checked:
    """A request that passed every limit: its texts, new-token limit and decoding options."""

    texts: list[str]
    max_new_tokens: int
    options: dict[str, Any]
    seed: int | None


def check_request(req: GenerateRequest, limits: Limits) -> Checked:
    """The limits and the rules of serving (beam search neither streams nor samples here), then the
    decoding options themselves; the first broken one is raised as an :class:`APIError`."""
    texts = [req.inputs] if isinstance(req.inputs, str) else list(req.inputs)
    if not texts:
        raise APIError(422, "invalid_request", "inputs: the list is empty; send at least one text")
    if len(texts) > limits.max_inputs_per_request:
        raise limit_error(
            422, "max_inputs_per_request", limits.max_inputs_per_request, f"the request has {len(texts)} inputs"
        )
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
    if beams > 1 and req.stream:
        raise APIError(
            422,
            "invalid_request",
            "stream: beam search (num_beams > 1) cannot stream tokens; use num_beams=1 or stream=false",
        )
    if beams > 1 and options["do_sample"]:
        raise APIError(422, "invalid_request", "parameters: beam search with do_sample is not supported")
    seed = p.seed if options["do_sample"] else None  # type: ignore[attr-defined]
    return Checked(texts, new, options, seed)


__all__ = [
    "APIError",
    "Checked",
    "GenerateParameters",
    "GenerateRequest",
    "GenerateResponse",
    "Limits",
    "Output",
    "Usage",
    "check_request",
    "decoding_options",
    "limit_error",
    "parameters_model",
    "parse_request",
]
