"""The request schema: the decoding parameters follow ``GenerationConfig`` and are checked by it."""

from __future__ import annotations

import dataclasses
import json

import pytest

pytest.importorskip("pydantic")

from t5kit.generate import GenerationConfig, GenerationError  # noqa: E402
from t5kit.serve.schema import (  # noqa: E402
    APIError,
    GenerateParameters,
    Limits,
    check_request,
    parameters_model,
    parse_request,
    read_json,
)

SERVER_OWN = {"seed"}  # request parameters that are not GenerationConfig fields


def test_every_scalar_option_is_a_parameter_with_its_default():
    fields = {f.name: f for f in dataclasses.fields(GenerationConfig)}
    served = set(GenerateParameters.model_fields) - SERVER_OWN
    assert served <= set(fields)
    left_out = set(fields) - served
    assert left_out == {n for n in fields if n.endswith("_token_id")} | {
        "num_return_sequences", "suppress_tokens", "prefix_allowed_tokens_fn"}  # a Python callable (request=False)
    for name in served - {"max_new_tokens"}:  # the server's default_max_new_tokens applies instead
        f = fields[name]  # a list option's default is its factory's (the constraints of #19)
        default = f.default if f.default is not dataclasses.MISSING else list(f.default_factory())
        assert GenerateParameters.model_fields[name].default == default, name
    assert GenerateParameters.model_fields["max_new_tokens"].default is None


def test_the_schema_is_the_option_definitions_own_derivation():
    """No second list in the server: every field of the parameters model, with its bounds and help text, comes
    from ``t5kit.generate.options`` (an option added there is served with no edit here)."""
    from t5kit.generate.options import option_fields

    model = parameters_model()
    requestable = {f.name: f for f in option_fields() if f.metadata.get("request", True)}
    assert set(model.model_fields) - SERVER_OWN == set(requestable) - {"num_return_sequences", "suppress_tokens"}
    for name, info in model.model_fields.items():
        if name not in SERVER_OWN:
            assert info.description == requestable[name].metadata["help"], name
    assert model(top_p=0.5).top_p == 0.5


def request(**parameters):
    return parse_request(json.dumps({"inputs": "x", "parameters": parameters}).encode())


@pytest.mark.parametrize(
    "parameters, field",
    [({"top_p": 1.5}, "top_p"), ({"temperature": -0.5}, "temperature"), ({"min_new_tokens": -1}, "min_new_tokens"),
     ({"repetition_penalty": 0.0}, "repetition_penalty"), ({"early_stopping": "maybe"}, "early_stopping")],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_values_are_checked_by_generation_config_and_name_the_parameter(parameters, field):
    with pytest.raises(GenerationError) as expected:
        GenerationConfig(**parameters)
    with pytest.raises(APIError) as err:
        check_request(request(**parameters), Limits())
    assert err.value.status == 422 and err.value.body["code"] == "invalid_request"
    message = err.value.body["message"]
    assert message.startswith(f"parameters.{field} ") and str(expected.value).split(" ", 1)[1] in message
    assert err.value.body["details"][0]["field"] == f"parameters.{field}"


def test_checked_request_carries_options_limits_and_seed():
    checked = check_request(request(do_sample=True, temperature=0.7, seed=3), Limits(default_max_new_tokens=9))
    assert checked.max_new_tokens == 9 and checked.seed == 3 and checked.texts == ["x"]
    assert checked.options["temperature"] == 0.7 and "max_new_tokens" not in checked.options
    assert set(checked.options) == set(GenerateParameters.model_fields) - SERVER_OWN - {"max_new_tokens"}
    assert check_request(request(seed=3), Limits()).seed is None  # greedy needs no seed: batched with others


@pytest.mark.parametrize(
    "raw, status, message",
    [
        (b'{"parameters": {"x": [1, NaN]}}', 400, "parameters.x[1]: NaN is not JSON"),
        (b'{"a": [{"b": "\\udc00"}]}', 422, r"a[0].b: holds a lone UTF-16 surrogate \udc00 at character 0"),
        (b'{"a": {"k": 1, "k": 2}}', 422, 'a: the key "k" is given more than once'),
        (b'[1, 2, -99999999999999999999]', 422, "[2]: the integer -99999999999999999999 is out of range"),
    ],
)
def test_read_json_names_where_a_refused_value_is(raw, status, message):
    with pytest.raises(APIError) as err:
        read_json(raw)
    assert err.value.status == status and err.value.body["message"].startswith(message), err.value.body


def test_read_json_keeps_what_json_keeps():
    assert read_json(b'\xef\xbb\xbf{"a": [1, 2.5, -9223372036854775808, "\\ud83d\\ude00", null]}') == {
        "a": [1, 2.5, -(2**63), "\U0001f600", None]
    }
    many = b"{" + b",".join(b'"k": %d' % i for i in range(50_000)) + b"}"  # duplicates found in linear time
    with pytest.raises(APIError, match='the key "k" is given more than once'):
        read_json(many)
