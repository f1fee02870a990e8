"""`t5kit score`: targets scored and inputs classified from files, arguments and stdin, on a checkpoint built here."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest
import torch

from t5kit import T5Config, T5Model
from t5kit.cli import main

INPUTS = ["translate English to German: The house is wonderful.", "Hello world", "Good morning, how are you?"]
TARGETS = ["Das Haus ist wunderbar.", "Hallo Welt", "Guten Morgen, wie geht es dir?"]
CHOICES = ["ja", "nein", "vielleicht"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, t5_vocab_dir):
    """A random tiny T5 with the real T5 vocabulary."""
    torch.manual_seed(0)
    model = T5Model(T5Config.from_preset("tiny")).eval()
    path = tmp_path_factory.mktemp("tiny-t5-score")
    model.save_pretrained(path)
    shutil.copy(t5_vocab_dir / "spiece.model", path / "spiece.model")
    return path


@pytest.fixture(scope="module")
def generator(checkpoint):
    from t5kit import Generator

    return Generator.from_pretrained(str(checkpoint))


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["score", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_score_files_give_the_python_api_scores(checkpoint, generator, capsys, tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(INPUTS) + "\n")
    (tmp_path / "tg.txt").write_text("\n".join(TARGETS) + "\n")
    code, out, err = run(capsys, "--model", str(checkpoint), "--inputs", str(tmp_path / "in.txt"),
                         "--targets", str(tmp_path / "tg.txt"), "--json")
    assert code == 0, err
    rows = records(out)
    expected = generator.score(INPUTS, TARGETS)
    assert [r["input"] for r in rows] == INPUTS and [r["target"] for r in rows] == TARGETS
    for row, s in zip(rows, expected):
        assert row["sum"] == pytest.approx(s.sum, rel=1e-6) and row["mean"] == pytest.approx(s.mean, rel=1e-6)
        assert row["token_ids"] == s.token_ids and row["tokens"] == s.tokens and row["tokens"][-1] == "</s>"
        assert row["token_logprobs"] == pytest.approx(s.token_logprobs, rel=1e-6)
    # the readable table: a header, then sum, mean, token count, target | input per example
    code, out, err = run(capsys, "--model", str(checkpoint), "--inputs", str(tmp_path / "in.txt"),
                         "--targets", str(tmp_path / "tg.txt"))
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["sum", "mean", "tokens"] and len(lines) == 4
    for line, s, target in zip(lines[1:], expected, TARGETS):
        total, mean, count = line.split()[:3]
        assert float(total) == pytest.approx(s.sum, abs=1e-4) and int(count) == len(s.token_ids)
        assert target in line


def test_tsv_lines_from_stdin_and_arguments(checkpoint, generator, capsys, monkeypatch):
    lines = "".join(f"{i}\t{t}\n" for i, t in zip(INPUTS, TARGETS))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines.encode())))
    code, out, err = run(capsys, "--model", str(checkpoint), "--json")
    assert code == 0, err
    sums = [r["sum"] for r in records(out)]
    assert sums == pytest.approx([s.sum for s in generator.score(INPUTS, TARGETS)], rel=1e-6)
    code, out, err = run(capsys, "--model", str(checkpoint), "--json", *lines.splitlines())
    assert code == 0 and [r["sum"] for r in records(out)] == sums


def test_jsonl_inputs_with_their_target_field(checkpoint, generator, capsys, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"src": i, "tgt": t}) + "\n" for i, t in zip(INPUTS, TARGETS)))
    code, out, err = run(capsys, "--model", str(checkpoint), "--inputs", str(path), "--field", "src",
                         "--target-field", "tgt", "--json")
    assert code == 0, err
    assert [r["sum"] for r in records(out)] == pytest.approx([s.sum for s in generator.score(INPUTS, TARGETS)],
                                                               rel=1e-6)


def test_choices_classify_like_the_python_api(checkpoint, generator, capsys, tmp_path):
    for normalize in ("sum", "mean"):
        code, out, err = run(capsys, "--model", str(checkpoint), "--choices", ",".join(CHOICES), "--json",
                             "--normalize", normalize, *INPUTS)
        assert code == 0, err
        expected = generator.classify(INPUTS, CHOICES, normalize=normalize)
        for row, c in zip(records(out), expected):
            assert row["label"] == c.label and row["index"] == c.index
            assert list(row["scores"]) == CHOICES and sum(row["scores"].values()) == pytest.approx(1)
            assert list(row["logprobs"].values()) == pytest.approx(c.logprobs, rel=1e-6)
            assert list(row["mean_logprobs"].values()) == pytest.approx(c.mean_logprobs, rel=1e-6)
    (tmp_path / "choices.txt").write_text("\n".join(CHOICES) + "\n")
    code, out, err = run(capsys, "--model", str(checkpoint), "--choices-file", str(tmp_path / "choices.txt"), *INPUTS)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["label", "p", "input"] and len(lines) == 4
    for line, c in zip(lines[1:], generator.classify(INPUTS, CHOICES)):
        assert line.split()[0] == c.label and float(line.split()[1]) == pytest.approx(c.scores[c.index], abs=1e-3)


@pytest.mark.parametrize("args,message", [
    (["no tab here"], "the arguments:1: no TAB: each line is input<TAB>target"),
    (["--choices", "ja,nein", "--targets", "TARGETS", "x"], "not both"),
    (["--inputs", "INPUTS", "--targets", "SHORT"], "3 inputs but 1 targets"),
    (["--choices", "ja,,nein", "x"], r"choices[1] '' tokenizes to nothing"),
    (["--choices", "ja,ja", "x"], "are the same string"),
    (["--inputs", "/nonexistent/inputs.txt", "--choices", "a"], "does not exist"),
    (["--max-target-tokens", "2", "x\tein langes Ziel"], "over max_target_tokens=2"),
    (["--batch-size", "0", "x\ty"], "batch_size must be a positive integer"),
])
def test_bad_input_is_one_readable_line(checkpoint, capsys, tmp_path, args, message):
    (tmp_path / "in.txt").write_text("\n".join(INPUTS) + "\n")
    (tmp_path / "short.txt").write_text("one\n")
    files = {"INPUTS": str(tmp_path / "in.txt"), "TARGETS": str(tmp_path / "in.txt"),
             "SHORT": str(tmp_path / "short.txt")}
    code, out, err = run(capsys, "--model", str(checkpoint), *[files.get(a, a) for a in args])
    assert code == 1 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_the_command_line_entry_point(checkpoint):
    """Through ``python -m t5kit``: stdin TSV in, JSON out."""
    done = subprocess.run([sys.executable, "-m", "t5kit", "score", "--model", str(checkpoint), "--json"],
                          input=f"{INPUTS[1]}\t{TARGETS[1]}\n", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert records(done.stdout)[0]["target"] == TARGETS[1]


def test_a_bad_flag_value_is_a_usage_error(checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["score", "--model", str(checkpoint), "--normalize", "max", "x"])
    assert exit_.value.code == 2 and "invalid choice: 'max'" in capsys.readouterr().err
