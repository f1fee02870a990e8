"""t5kit.threads: the /proc parsing on fixture text, T5KIT_THREADS, the restore of the caller's count, the
policy following the load, decoding under it, and a real busy neighbour seen by a look."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from t5kit import threads
from t5kit.errors import ConfigError
from t5kit.generate import generate, stream

LOADAVG = "0.52 0.31 0.20 5/245 1234\n"
# a thread whose command name holds ") S (": the state is the field after the last ")"
STAT_R = "4242 (py) S (thread) R 4240 4240 9160 0 -1 4194304 139 0 0 0 0 0 0 0 20 0 1 0 795176\n"
STAT_S = "4243 (python3) S 4240 4240 9160 0 -1 4194304 139 0 0 0 0 0 0 0 20 0 1 0 795176\n"


@pytest.fixture
def caller_threads():
    """torch's count set to 2 for the test and put back after (the tests change it on purpose)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


@pytest.fixture
def fake_load(monkeypatch):
    """A machine of 2 cores whose other processes' runnable tasks are ``load.others``; every tick looks."""
    load = SimpleNamespace(others=0)
    monkeypatch.setattr(threads, "look", lambda: load.others)
    monkeypatch.setattr(threads, "_cores", lambda: 2)
    monkeypatch.setattr(threads, "_online", lambda cores: 2)
    monkeypatch.setattr(threads, "_load", threads._Load())
    monkeypatch.setattr(threads, "LOOK_S", 0.0)
    monkeypatch.setattr(threads, "LOOK_SHARE", float("inf"))
    monkeypatch.setattr(threads, "WINDOW_S", 0.0)  # the latest look only
    monkeypatch.delenv(threads.ENV, raising=False)
    return load


# ---------------------------------------------------------------------------------------------- /proc text


def test_parsing_of_proc_text():
    assert threads.runnable_tasks(LOADAVG) == 5
    assert threads.task_state(STAT_R) == "R"
    assert threads.task_state(STAT_S) == "S"
    own = {"4242": STAT_R, "4243": STAT_S}
    assert threads.other_runnable(LOADAVG, own, own) == 4  # 5 runnable, one of them this process's
    assert threads.other_runnable("0.00 0.00 0.00 1/99 7\n", own, own) == 0  # never negative
    # a thread that stopped running between the two reads of own threads: no answer, look again
    assert threads.other_runnable(LOADAVG, own, {"4242": STAT_S, "4243": STAT_S}) is None


def test_free_cores_from_counts():
    assert threads.free_from(2, 2, 0) == 2
    assert threads.free_from(2, 2, 1) == 1
    assert threads.free_from(2, 2, 5) == 0
    assert threads.free_from(2, 2, 0.4) == 2  # busy less than half the window: the core is free
    assert threads.free_from(2, 2, 0.5) == 1
    # a CPU set of 4 of 64 cores: 32 other tasks on the machine take 2 of its cores, not all 4
    assert threads.free_from(4, 64, 32) == 2


# ---------------------------------------------------------------------------------------------- T5KIT_THREADS


@pytest.mark.parametrize("raw,expected", [("", None), ("auto", None), (" AUTO ", None), ("3", 3), ("1", 1)])
def test_setting(raw, expected):
    assert threads.setting({threads.ENV: raw}) == expected
    assert threads.setting({}) is None


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_invalid_setting_names_the_variable_and_the_values(raw):
    with pytest.raises(ConfigError, match=r"T5KIT_THREADS=.*'auto'.*whole number >= 1"):
        threads.setting({threads.ENV: raw})


def test_fixed_setting_applies_inside_and_restores_after(monkeypatch, caller_threads):
    monkeypatch.setenv(threads.ENV, "1")
    with threads.decoding_threads() as count:
        assert count == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == caller_threads
    with pytest.raises(RuntimeError, match="boom"), threads.decoding_threads():
        raise RuntimeError("boom")
    assert torch.get_num_threads() == caller_threads


def test_fixed_setting_is_not_capped_by_the_callers_count(monkeypatch, caller_threads):
    monkeypatch.setenv(threads.ENV, "3")
    with threads.decoding_threads():
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == caller_threads


# ---------------------------------------------------------------------------------------------- auto


def test_auto_follows_the_load_under_the_callers_count(fake_load, caller_threads):
    with threads.decoding_threads() as count:
        assert count == 2
        fake_load.others = 1  # a neighbour starts
        threads.tick()
        assert torch.get_num_threads() == 1
        fake_load.others = 0  # and stops
        threads.tick()
        assert torch.get_num_threads() == 2
    torch.set_num_threads(1)  # the caller's count is the ceiling
    with threads.decoding_threads() as count:
        assert count == 1
    fake_load.others = 7
    torch.set_num_threads(2)
    with threads.decoding_threads() as count:
        assert count == 1  # at least one thread
    assert torch.get_num_threads() == 2


def test_auto_averages_the_looks_of_the_window(fake_load, caller_threads, monkeypatch):
    monkeypatch.setattr(threads, "WINDOW_S", 60.0)
    fake_load.others = 1
    with threads.decoding_threads() as count:
        assert count == 1
        for _ in range(3):  # the neighbour is gone at 3 of 4 looks: busy a quarter of the time, a free core
            fake_load.others = 0
            threads.tick()
        assert torch.get_num_threads() == 2


def test_tick_outside_a_decoding_call_changes_nothing(fake_load, caller_threads):
    fake_load.others = 1
    threads.tick()
    assert torch.get_num_threads() == caller_threads


def test_each_step_holds_the_count_only_inside_steps(fake_load, caller_threads):
    seen = []

    def steps():
        for i in range(3):
            seen.append(torch.get_num_threads())
            yield i

    fake_load.others = 1
    a, b = threads.each_step(steps()), threads.each_step(steps())
    for x, y in zip(a, b):  # two interleaved streams
        assert x == y and torch.get_num_threads() == caller_threads  # the consumer runs under its own count
    assert seen == [1] * 6 and torch.get_num_threads() == caller_threads


# ---------------------------------------------------------------------------------------------- decoding


class _Cache:
    def select(self, rows):
        return self

    def expand_beams(self, beams):
        return self

    def reorder_beams(self, rows, items=None):
        return self


class _Counting:
    """A DecodingModel over 8 tokens that records torch's thread count at each step."""

    config = SimpleNamespace(vocab_size=8, eos_token_id=1, pad_token_id=0, decoder_start_token_id=0)
    device = torch.device("cpu")

    def __init__(self):
        self.counts = []

    def encode(self, input_ids, attention_mask):
        return torch.zeros(input_ids.shape[0], input_ids.shape[1], 4)

    def new_cache(self, encoder_hidden, attention_mask, max_length):
        return _Cache()

    def decode_step(self, decoder_input_ids, cache):
        self.counts.append(torch.get_num_threads())
        logits = torch.zeros(decoder_input_ids.shape[0], 1, 8)
        logits[..., 3] = 1.0
        return logits


@pytest.mark.parametrize("beams", [1, 4])
def test_generate_and_stream_decode_under_the_setting(monkeypatch, caller_threads, beams):
    monkeypatch.setenv(threads.ENV, "1")
    model = _Counting()
    generate(model, [[3, 1]], max_new_tokens=4, num_beams=beams, warn_on_length_limit=False)
    assert model.counts and set(model.counts) == {1}
    assert torch.get_num_threads() == caller_threads
    if beams == 1:
        model.counts.clear()
        for _ in stream(model, [[3, 1]], max_new_tokens=4):
            assert torch.get_num_threads() == caller_threads
        assert len(model.counts) == 4 and set(model.counts) == {1}
    monkeypatch.setenv(threads.ENV, "many")
    with pytest.raises(ConfigError, match="T5KIT_THREADS"):
        generate(model, [[3, 1]], max_new_tokens=4, num_beams=beams)


# ---------------------------------------------------------------------------------------------- a real neighbour


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="looks at the load through Linux's /proc")
def test_a_busy_neighbour_takes_a_core():
    cores = threads._cores()
    assert threads.look() is not None
    spinner = subprocess.Popen([sys.executable, "-c", "print('go', flush=True)\nwhile True: pass"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert spinner.stdout.readline() == "go\n"  # it is in its loop: runnable at every look from here on
        # other work on the machine can only add runnable tasks, so every look must miss at least one core
        assert max(threads.free_cores() for _ in range(5)) < cores
    finally:
        spinner.kill()
        spinner.wait()


def test_looks_that_cost_more_are_spaced_out(fake_load, caller_threads, monkeypatch):
    def slow_look():
        time.sleep(0.01)  # a look of 10 ms (a big pool): at a 1% share the next one waits >= 1 s
        return fake_load.others

    monkeypatch.setattr(threads, "look", slow_look)
    monkeypatch.setattr(threads, "LOOK_SHARE", 0.01)
    with threads.decoding_threads() as count:
        assert count == 2
        fake_load.others = 1
        threads.tick()
        assert torch.get_num_threads() == 2  # not looked yet


def test_calls_on_two_threads_restore_the_programs_count(monkeypatch, caller_threads):
    monkeypatch.setenv(threads.ENV, "1")
    entered, release = threading.Event(), threading.Event()

    def other_call():
        with threads.decoding_threads():
            entered.set()
            release.wait(5)

    worker = threading.Thread(target=other_call)
    worker.start()
    entered.wait(5)
    with threads.decoding_threads():
        release.set()  # the other call ends first, while this one still runs
        worker.join(5)
    # torch's count is the process's: restored to the program's, not to the other call's 1
    assert torch.get_num_threads() == caller_threads
