"""The model side of the server: prefixes, per-row events against ``t5kit.generate``, precision, settings."""

from __future__ import annotations

import pytest
import torch
from serve_helpers import save_tiny_checkpoint

from t5kit.errors import T5kitError
from t5kit.generate import generate
from t5kit.kernels.inference.precision import PRECISIONS
from t5kit.serve.engine import DecodingSettings, Engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return Engine.load(str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-t5"))), name="tiny")


def events_by_row(engine: Engine, ids: list[list[int]], limits: list[int], settings: DecodingSettings,
                  cancelled=lambda row: False) -> dict[int, tuple[list[int], str | None]]:  # noqa: ANN001
    out: dict[int, tuple[list[int], str | None]] = {i: ([], None) for i in range(len(ids))}
    for row, token, reason in engine.run_batch(ids, limits, settings, cancelled):
        assert out[row][1] is None, f"row {row} has an event after its end"
        if reason is None:
            out[row][0].append(token)
        else:
            out[row] = (out[row][0], reason)
    return out


def alone(engine: Engine, ids: list[int], limit: int, **options) -> list[int]:
    out = generate(engine.model, torch.tensor([ids]), max_new_tokens=limit, warn_on_length_limit=False, **options)
    eos = engine.model.config.eos_token_id
    return [t for t in out.sequences[0, 1: 1 + out.num_new_tokens[0]].tolist() if t != eos]


def test_encode_prepends_the_task_prefix_and_names_unknown_tasks(engine):
    assert engine.encode(["The house."], "translate_en_de") == engine.tokenizer.batch_encode(
        ["translate English to German: The house."])
    assert engine.encode(["The house."]) == engine.tokenizer.batch_encode(["The house."])
    with pytest.raises(T5kitError, match="translate_en_de"):
        engine.encode(["x"], "translate_en_dee")
    assert engine.describe()["tasks"]["summarize"] == "summarize: "


def test_greedy_rows_match_each_row_decoded_alone(engine):
    """Rows of different lengths and limits in one batch get exactly what each gets alone."""
    ids = engine.encode(["The house is wonderful.", "Hi", "A much longer input sentence with many tokens."])
    limits = [5, 12, 1]
    settings = DecodingSettings.of({}, max(limits))
    out = events_by_row(engine, ids, limits, settings)
    for row, (tokens, reason) in out.items():
        assert tokens == alone(engine, ids[row], limits[row]), row
        assert reason in ("eos", "length") and (reason == "eos" or len(tokens) == limits[row])


def test_beam_rows_end_at_their_own_limit(engine):
    ids = engine.encode(["Hello", "The house."])
    limits = [3, 6]
    settings = DecodingSettings.of({"num_beams": 3}, max(limits))
    out = events_by_row(engine, ids, limits, settings)
    assert [len(tokens) <= limit for (tokens, _), limit in zip(out.values(), limits)] == [True, True]
    assert all(reason is not None for _, reason in out.values())


def test_a_batch_nobody_waits_for_stops(engine):
    ids = engine.encode(["The house is wonderful.", "Hi"])
    settings = DecodingSettings.of({}, 200)
    assert list(engine.run_batch(ids, [200, 200], settings, lambda row: True)) == []


@pytest.mark.parametrize("precision", PRECISIONS)
def test_precision_serves_a_converted_copy(engine, precision):
    served = Engine(engine.model, engine.tokenizer, name="tiny", precision=precision)
    assert served.precision == precision and served.describe()["precision"] == precision
    assert engine.model.dtype == torch.float32  # the original is untouched
    if precision == "bf16":
        assert served.model.dtype == torch.bfloat16
    if precision in ("fp16w", "int8"):  # the linear layers hold that format's weights
        assert served.model is not engine.model
        stored = {"fp16w": "fp16", "int8": "int8"}[precision]
        assert served.model.encoder.layers[0].self_attn.q.storages() == (stored,)
    ids = served.encode(["The house."])
    tokens, reason = events_by_row(served, ids, [4], DecodingSettings.of({}, 4))[0]
    assert 1 <= len(tokens) <= 4 and reason in ("eos", "length")


def test_unknown_precision_names_the_choices(engine):
    with pytest.raises(T5kitError, match="fp32, bf16, fp16w, int8"):
        Engine(engine.model, engine.tokenizer, precision="fp8")


def test_settings_group_equal_options_and_similar_lengths():
    a = DecodingSettings.of({"temperature": 1.0, "do_sample": False}, 100)
    b = DecodingSettings.of({"do_sample": False, "temperature": 1.0}, 128)
    assert a == b and hash(a) == hash(b) and a.length_group == 128  # greedy/sampled: powers of two
    assert DecodingSettings.of({}, 129).length_group == 256
    assert DecodingSettings.of({"num_beams": 2}, 100).length_group == 100  # beam search: exact
    assert a != DecodingSettings.of({"temperature": 0.5, "do_sample": False}, 100)
    assert a.generate_options() == {"do_sample": False, "temperature": 1.0}


def test_ids_the_tokenizer_cannot_decode_are_never_served(tmp_path):
    """The vocabulary's padding rows (32,128 rows for 32,100 pieces) are suppressed, as Generator does: a model
    that prefers them still answers with text."""
    served = Engine.load(str(save_tiny_checkpoint(tmp_path)), name="tiny")
    pieces = len(served.tokenizer)
    assert served.undecodable == tuple(range(pieces, served.model.config.vocab_size)) and served.undecodable
    with torch.no_grad():  # make every padding row the most likely next token
        served.model.lm_head.weight[pieces:] = 50 * served.model.lm_head.weight[:pieces].abs().max()
    greedy = DecodingSettings.of({}, 6)
    plain = alone(served, served.encode(["x"])[0], 6)
    assert any(t >= pieces for t in plain)  # unsuppressed, the model would emit them
    tokens, _ = events_by_row(served, served.encode(["x"]), [6], greedy)[0]
    assert tokens and all(t < pieces for t in tokens)
