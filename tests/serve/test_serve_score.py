"""``POST /v1/score`` over real HTTP (the app the CLI builds, under uvicorn in this process): target scores
equal ``t5kit.generate.score.score`` on the same model, classification picks the best-scoring choice, both
batchers, scoring while generation decodes, and bad requests answered 4xx naming the problem."""

from __future__ import annotations

import math

import httpx
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import BOUND_S, LiveServer, cli_app, save_tiny_checkpoint  # noqa: E402

from t5kit.generate.score import score  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="module", params=["continuous", "static"])
def server(request, checkpoint):
    s = LiveServer(cli_app(checkpoint, "--batching", request.param, "--max-choices", "5"))
    yield s
    s.stop()


def post(s: LiveServer, body: dict) -> httpx.Response:
    return httpx.post(s.url + "/v1/score", json=body, timeout=BOUND_S)


def test_target_scores_equal_the_model_scored_directly(server):
    engine = server.app.state.engine
    texts, targets = ["The house is wonderful.", "Hi"], ["Das Haus ist wunderbar.", "Hallo du"]
    r = post(server, {"inputs": texts, "targets": targets})
    assert r.status_code == 200, r.text
    got = r.json()["scores"]
    for text, target, item in zip(texts, targets, got):
        ids = torch.tensor([engine.tokenizer.batch_encode([text])[0]])
        label = engine.tokenizer.batch_encode([target])[0]
        want = score(engine.model, ids, torch.ones_like(ids), torch.tensor([label]))
        assert item["target"] == target and item["token_ids"] == label
        expected = want.token_logprobs[0].tolist()
        assert len(item["token_logprobs"]) == len(expected)
        # float32 log-probabilities of the same computation, batched with another row: within a few ulps of
        # the largest value (|log p| of the rows' tokens)
        scale = max(abs(v) for v in expected)
        assert all(abs(a - b) <= 64 * 1.2e-7 * scale for a, b in zip(item["token_logprobs"], expected))
        assert math.isclose(item["sum"], sum(item["token_logprobs"]), rel_tol=1e-5)
        assert math.isclose(item["mean"], item["sum"] / len(label), rel_tol=1e-6)
        assert item["sum"] < 0


def test_classification_picks_the_best_choice_and_normalises(server):
    choices = ["yes", "no", "maybe so"]
    r = post(server, {"inputs": ["Is it?", "Surely not"], "choices": choices})
    assert r.status_code == 200, r.text
    for item in r.json()["classifications"]:
        assert item["label"] == choices[item["index"]]
        assert item["index"] == max(range(3), key=item["logprobs"].__getitem__)
        assert math.isclose(sum(item["scores"]), 1.0, rel_tol=1e-6) and max(item["scores"]) == item["scores"][
            item["index"]]
    per_input = post(server, {"inputs": ["a", "b"], "choices": [["x", "y"], ["z", "w", "v"]], "normalize": "mean"})
    assert per_input.status_code == 200, per_input.text
    assert [len(c["scores"]) for c in per_input.json()["classifications"]] == [2, 3]
    # each pair scored alone gives the same sums
    alone = post(server, {"inputs": ["b"] * 3, "targets": ["z", "w", "v"]}).json()["scores"]
    sums = per_input.json()["classifications"][1]["logprobs"]
    assert all(math.isclose(a["sum"], b, rel_tol=1e-4, abs_tol=1e-5) for a, b in zip(alone, sums))


def test_scoring_runs_beside_generation(server):
    """Continuous batching scores between two decoding steps: the answers come while a long generation is
    still decoding. The static batcher scores between two batches: after it, but it still answers."""
    from serve_helpers import wait_until

    thread, result = server.post_in_thread({"inputs": ["long one"] * 3,
                                            "parameters": {"max_new_tokens": 250, "min_new_tokens": 250}})
    wait_until(lambda: server.metrics.value("t5kit_rows_running") == 3, "the long generation decoding")
    for _ in range(3):
        r = post(server, {"inputs": "x", "choices": ["a", "b"]})
        assert r.status_code == 200, r.text
    if server.app.state.batching == "continuous":
        assert thread.is_alive(), "the scores waited for the generation to end"
    thread.join(BOUND_S)
    assert result["status"] == 200


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"inputs": "x"}, 422, "either targets"),
    ({"inputs": "x", "targets": "y", "choices": ["a"]}, 422, "not both"),
    ({"inputs": ["x", "y"], "targets": ["a"]}, 422, "one target per input"),
    ({"inputs": "x", "targets": " "}, 422, "targets[0] is empty"),
    ({"inputs": "x", "choices": []}, 422, "choices: the list is empty"),
    ({"inputs": "x", "choices": ["a", ""]}, 422, "choices[1] is empty"),
    ({"inputs": "x", "choices": ["a", "a"]}, 422, "repeats 'a'"),
    ({"inputs": ["x", "y"], "choices": [["a"]]}, 422, "one list of candidates per input"),
    ({"inputs": "x", "choices": ["a", "b", "c", "d", "e", "f"]}, 422, "max_choices=5"),
    ({"inputs": "x", "targets": "word " * 300}, 422, "max_new_tokens"),
    ({"inputs": "x", "choices": ["a"], "normalize": "max"}, 422, "normalize"),
    ({"inputs": "", "targets": "a"}, 422, "inputs[0] is empty"),
    ({"inputs": "x", "targets": "a", "extra": 1}, 422, "extra"),
    ({"inputs": "x", "choices": ["a", "\u200b"]}, 422, "tokenizes to nothing"),
])
def test_bad_score_requests_are_answered_4xx(server, body, status, words):
    r = post(server, body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"] or words == r.json()["error"].get("limit")
