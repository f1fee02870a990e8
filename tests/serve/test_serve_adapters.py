"""A server holding several LoRA adapters over one base (issue 20): a request names its adapter, and rows of
different adapters (and of the base) decode in one step, each with the output its own model gives alone."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
import torch
from serve_helpers import BOUND_S, LiveServer, cli_app, save_tiny_checkpoint, wait_until

from t5kit import T5Model
from t5kit.adapters import LoRAConfig, add_lora, lora_layers, save_adapter
from t5kit.serve.batcher import Batcher, Row, RowEvent, ScoreWork, Ticket
from t5kit.serve.continuous import ContinuousBatcher
from t5kit.serve.engine import DecodingSettings, Engine

pytest.importorskip("fastapi")

TARGETS = {"a": ("q", "v"), "b": ("q", "k", "o", "wo")}  # tiny is gated: wo, not wi


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    checkpoint = save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-t5"))
    root = tmp_path_factory.mktemp("adapters")
    dirs = {}
    for seed, (name, targets) in enumerate(TARGETS.items()):
        model = T5Model.from_pretrained(str(checkpoint))
        add_lora(model, LoRAConfig(r=4, alpha=8, targets=targets))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # a fresh adapter is the identity (B = 0): give it an effect
            for layer in lora_layers(model).values():
                layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.3)
        dirs[name] = save_adapter(model, root / name)
    return checkpoint, dirs


@pytest.fixture(scope="module")
def engine(saved) -> Engine:
    checkpoint, dirs = saved
    return Engine.load(str(checkpoint), name="tiny", adapters=dirs)


class Collected:
    """The rows of one request and what their sinks got."""

    def __init__(self, ids, max_new_tokens, adapter, **options):
        seed = options.pop("seed", None)
        settings = DecodingSettings.of(options, max_new_tokens, seed=seed, adapter=adapter)
        self.tokens = {i: [] for i in range(len(ids))}
        self.ends: dict[int, RowEvent] = {}
        self.done = threading.Event()
        ticket = Ticket()
        self.rows = [Row(ids=r, max_new_tokens=max_new_tokens, settings=settings, sink=self.sink, index=i,
                         ticket=ticket) for i, r in enumerate(ids)]

    def sink(self, event: RowEvent) -> None:
        if event.kind == "token":
            self.tokens[event.index].append(event.token_id)
        else:
            self.ends[event.index] = event
            if len(self.ends) == len(self.rows):
                self.done.set()

    def result(self) -> dict[int, list[int]]:
        assert self.done.wait(BOUND_S), "the request was not answered"
        assert all(e.kind == "end" for e in self.ends.values()), [e.error for e in self.ends.values()]
        return self.tokens


CASES = [  # (texts, max_new_tokens, adapter, options)
    (["The house is wonderful.", "Hi"], 12, "a", {}),
    (["The house is wonderful."], 12, "b", {}),
    (["The house is wonderful."], 12, None, {}),
    (["A much longer input sentence with many tokens in it."], 10, "a", {"num_beams": 3}),
    (["Yes", "No"], 8, "b", {"do_sample": True, "top_k": 20, "seed": 5}),
]


def _run(batcher, requests: list[Collected]) -> list[dict[int, list[int]]]:
    """Queue every request before the worker starts (so they share the first steps), run, return outputs."""
    widths: list[int] = []
    batcher.on_batch = lambda rows, seconds: widths.append(rows)
    for request in requests:
        batcher.submit(request.rows)
    batcher.start()
    try:
        return [r.result() for r in requests], widths
    finally:
        assert batcher.close(BOUND_S)


def test_rows_of_two_adapters_and_the_base_share_steps_and_equal_each_model_alone(saved, engine):
    checkpoint, dirs = saved
    cases = [(engine.encode(texts), n, adapter, options) for texts, n, adapter, options in CASES]
    mixed, widths = _run(ContinuousBatcher(engine, max_batch_size=32, max_new_tokens=64),
                         [Collected(ids, n, adapter, **dict(o)) for ids, n, adapter, o in cases])
    assert widths[0] == 2 + 1 + 1 + 3 + 2, f"the requests did not share the first step: {widths[:3]}"
    alone_engines = {None: Engine.load(str(checkpoint))}
    alone_engines.update({name: Engine.load(str(checkpoint), adapters={name: d}) for name, d in dirs.items()})
    for (ids, n, adapter, options), got in zip(cases, mixed):
        own = alone_engines[adapter]
        want, _ = _run(ContinuousBatcher(own, max_batch_size=32, max_new_tokens=64),
                       [Collected(ids, n, adapter, **dict(options))])
        assert got == want[0], f"adapter {adapter} {options}"
    # The adapters change the output: the same greedy input under a, b and the base gives three answers.
    assert len({tuple(mixed[0][0]), tuple(mixed[1][0]), tuple(mixed[2][0])}) == 3


def test_the_static_batcher_batches_each_adapter_apart_with_the_same_outputs(saved, engine):
    ids = engine.encode(["The house is wonderful."])
    requests = [Collected(ids, 12, adapter) for adapter in ("a", "b", None)]
    continuous, _ = _run(ContinuousBatcher(engine, max_batch_size=32, max_new_tokens=64),
                         [Collected(ids, 12, adapter) for adapter in ("a", "b", None)])
    static, _ = _run(Batcher(engine, max_batch_size=32, batch_wait_ms=0), requests)
    assert static == continuous


def test_scoring_with_each_adapter_in_one_call(saved, engine):
    ids = engine.encode(["The house is wonderful."])
    candidates = [engine.tokenizer.batch_encode(["Das Haus", "La maison"])]
    noop = lambda result, error: None  # noqa: E731
    works = [ScoreWork(ids, candidates, noop, adapter=a) for a in ("a", None, "b", "a")]
    results = engine.score_works(works)
    sums = [r[0].sums for r in results]
    assert sums[0] == pytest.approx(sums[3], rel=1e-6)
    assert len({round(s[0], 3) for s in sums[:3]}) == 3  # each adapter scores differently
    alone = Engine.load(str(saved[0]), adapters={"b": saved[1]["b"]}).score_works([works[2]])
    assert alone[0][0].sums == pytest.approx(sums[2], rel=1e-5)


def test_http_requests_pick_adapters_by_name_and_unknown_names_get_a_422(saved):
    checkpoint, dirs = saved
    server = LiveServer(cli_app(checkpoint, "--adapter", f"a={dirs['a']}", "--adapter", str(dirs["b"])))
    try:
        models = httpx.get(server.url + "/v1/models", timeout=BOUND_S).json()
        assert models["data"][0]["adapters"] == ["a", "b"]
        server.gate.shut()  # hold the worker at its next step: the three requests queue, then join one step
        blocker = server.post_in_thread({"inputs": "Wait.", "parameters": {"max_new_tokens": 20,
                                                                           "min_new_tokens": 20}})
        wait_until(server.gate.held.is_set, "the first step reaching the gate")
        body = {"inputs": "The house is wonderful.", "parameters": {"max_new_tokens": 8}}
        posted = [server.post_in_thread({**body, "adapter": a} if a else body) for a in ("a", "b", None)]
        wait_until(lambda: server.app.state.batcher.queue_depth == 3, "three rows queued")
        server.gate.open()
        texts = []
        for thread, result in [*posted, blocker]:
            thread.join(BOUND_S)
            assert result["status"] == 200, result
            texts.append(result["body"]["outputs"][0]["token_ids"])
        assert server.gate.sizes[:2] == [1, 3], server.gate.sizes  # admitted: the blocker, then all three
        texts.pop()
        assert len({tuple(t) for t in texts}) == 3
        bad = httpx.post(server.url + "/v1/generate", json={**body, "adapter": "c"}, timeout=BOUND_S)
        assert bad.status_code == 422
        assert bad.json()["error"]["code"] == "unknown_adapter"
        assert "loaded: a, b" in bad.json()["error"]["message"]
        score = httpx.post(server.url + "/v1/score", json={"inputs": "x", "targets": "y", "adapter": "nope"},
                           timeout=BOUND_S)
        assert score.status_code == 422 and score.json()["error"]["code"] == "unknown_adapter"
        ok = httpx.post(server.url + "/v1/score", json={"inputs": "x", "targets": "y", "adapter": "b"},
                        timeout=BOUND_S)
        assert ok.status_code == 200, ok.text
    finally:
        server.stop()


def test_a_server_without_adapters_says_so(saved):
    checkpoint, _ = saved
    server = LiveServer(cli_app(checkpoint))
    try:
        r = httpx.post(server.url + "/v1/generate", json={"inputs": "x", "adapter": "a"}, timeout=BOUND_S)
        assert r.status_code == 422 and "holds none" in r.json()["error"]["message"]
    finally:
        server.stop()
