"""`t5kit generate` and `t5kit eval` end to end through the real command line, on a checkpoint built here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from t5kit import T5Config, T5Model


def t5kit(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t5kit", *args], capture_output=True, text=True, timeout=300,
                          input=stdin)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, t5_vocab_dir):
    """A random tiny T5 with the real T5 vocabulary; a boosted EOS row makes outputs end at varied steps."""
    torch.manual_seed(0)
    model = T5Model(T5Config.from_preset("tiny")).eval()
    with torch.no_grad():
        model.lm_head.weight[1] += 0.35 * model.lm_head.weight.std()
    path = tmp_path_factory.mktemp("tiny-t5")
    model.save_pretrained(path)
    shutil.copy(t5_vocab_dir / "spiece.model", path / "spiece.model")
    return path


def _generator(path):
    from t5kit import Generator

    return Generator.from_pretrained(str(path))


def test_generate_from_jsonl_keeps_order_and_writes_files(checkpoint, tmp_path):
    words = ["house", "garden", "window", "table", "river", "mountain", "city", "music", "bread", "school"]
    texts = [f"translate English to German: The {words[i % 10]} number {i} is {'very ' * (i % 4)}nice."
             for i in range(100)]
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    out = t5kit("generate", "--model", str(checkpoint), "--input", str(inputs), "--field", "text",
                "--output", str(tmp_path / "out.jsonl"), "--batch-size", "16", "--max-new-tokens", "12")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == texts
    # Each output equals what the Python API gives for that input alone: the order was kept.
    generator = _generator(checkpoint)
    for i in (0, 7, 33, 64, 99):
        alone = generator.generate([texts[i]], max_new_tokens=12)[0]
        assert rows[i]["output"] == alone.text and rows[i]["stop_reason"] == alone.stop_reason
    assert len({r["output"] for r in rows}) > 10  # a varied reference, not one string for everything
    assert {r["stop_reason"] for r in rows} <= {"eos", "length"}


def test_generate_from_arguments_and_stdin(checkpoint):
    a = t5kit("generate", "--model", str(checkpoint), "--max-new-tokens", "8", "Hello world", "Good morning")
    assert a.returncode == 0, a.stderr
    b = t5kit("generate", "--model", str(checkpoint), "--max-new-tokens", "8", stdin="Hello world\nGood morning\n")
    assert b.returncode == 0, b.stderr
    assert a.stdout == b.stdout and len(a.stdout.splitlines()) == 2


def test_eval_on_a_small_task_writes_predictions_and_metrics(checkpoint, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pairs = [("The house is small.", "Das Haus ist klein."), ("Open the file.", "Öffne die Datei."),
             ("Save changes?", "Änderungen speichern?"), ("Good morning", "Guten Morgen")]
    (data / "test.jsonl").write_text("".join(json.dumps({"en": e, "de": d}) + "\n" for e, d in pairs))
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  - name: tiny_en_de\n    kind: translation\n    source: {test: data/test.jsonl}\n"
        "    source_lang: en\n    target_lang: de\n")
    out = t5kit("eval", "--model", str(checkpoint), "--task", "tiny_en_de", "--tasks", str(tmp_path / "tasks.yaml"),
                "--split", "test", "--max-new-tokens", "10", "--output-dir", str(tmp_path / "eval"))
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 4 and set(metrics["metrics"]) == {"bleu", "chrf"}
    predictions = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [p["target"] for p in predictions] == [d for _, d in pairs]
    assert all(p["inputs"].startswith("translate English to German: ") for p in predictions)
    assert "bleu" in out.stdout


@pytest.mark.parametrize("args,code,message", [
    (["generate", "--model", "/nonexistent/model/dir", "hi"], 1, "no checkpoint directory"),
    (["generate", "--model", "CKPT", "--input", "/nonexistent/inputs.txt"], 1, "does not exist"),
    (["generate", "--model", "CKPT", "--input", "BADJSONL", "--field", "text"], 1, ":2: no field 'text'"),
    (["generate", "--model", "CKPT", "--frobnicate", "hi"], 2, "unrecognized arguments"),
    (["eval", "--model", "CKPT", "--task", "no_such_task"], 1, "unknown task"),
    (["generate", "--model", "CKPT", "--max-new-tokens", "0", "hi"], 1, "max_new_tokens"),
    (["generate", "--model", "CKPT", "--do-sample", "--temperature", "0", "hi"], 1,
     "temperature must be a finite number in [0.001, 1000.0], got 0.0"),  # the GenerationConfig message, before loading
    (["generate", "--model", "CKPT", "--input", "LATIN1"], 1, "latin1.txt:2: not UTF-8 text (byte 0xe9 at column 4)"),
    (["generate", "--model", "CKPT", "--precision", "fp8", "hi"], 2, "invalid choice: 'fp8'"),
])
def test_bad_input_is_one_readable_line(checkpoint, tmp_path, args, code, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"other": "no text here"}\n')
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("fine\nCaf\u00e9 au lait\n".encode("latin-1"))
    files = {"CKPT": str(checkpoint), "BADJSONL": str(bad), "LATIN1": str(latin1)}
    args = [files.get(a, a) for a in args]
    out = t5kit(*args)
    assert out.returncode == code, out.stderr
    assert message in out.stderr
    if code == 1:
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_evaluate_batches_by_length_over_the_whole_split_and_keeps_file_order(tmp_path):
    """A generator that answers each input with itself (the copy baseline of recipes/builtin) shows which
    inputs were batched together and whether the predictions come back in file order."""
    from t5kit.data import get_task, load_tasks
    from t5kit.evaluate import evaluate

    words = ["a", "bbbbbbbbbbbb", "cc", "ddddddddd", "eeee", "f", "gggggggggggggggg", "hhh", "iiiiiii"]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"en": w, "de": w.upper()}) + "\n" for w in words))
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  - name: echo_order\n    kind: translation\n    source: {test: test.jsonl}\n"
        "    source_lang: en\n    target_lang: de\n    metrics: [exact_match]\n")
    load_tasks(tmp_path / "tasks.yaml")

    class Echo:
        def __init__(self):
            self.batches: list[list[str]] = []

        def generate(self, texts, batch_size=32, **_):
            self.batches.append(list(texts))
            return [type("R", (), {"text": t, "stop_reason": "eos"})() for t in texts]

    echo = Echo()
    result = evaluate(echo, get_task("echo_order"), "test", batch_size=3, progress=False)
    assert [row["prediction"] for row in result.predictions] == [row["inputs"] for row in result.predictions]
    assert [row["target"] for row in result.predictions] == [w.upper() for w in words]  # file order
    lengths = [[len(t) for t in batch] for batch in echo.batches]
    assert [len(b) for b in lengths] == [3, 3, 3]
    flat = [n for b in lengths for n in b]
    assert flat == sorted(flat)  # batches cut from the whole split sorted by length
    assert result.metrics["exact_match"] == 0.0


def test_seed_and_precision_flags_reach_the_generator(checkpoint, capsys):
    """``--seed`` makes sampling reproducible and ``--precision int8`` decodes with the int8 copy (in-process,
    so the outputs can be compared with the Python API's)."""
    from t5kit.cli import main

    texts = ["Hello world", "Good morning"]
    runs = []
    for seed in ("3", "3", "4"):
        assert main(["generate", "--model", str(checkpoint), "--do-sample", "--seed", seed, "--max-new-tokens", "8",
                     *texts]) == 0
        runs.append(capsys.readouterr().out)
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert main(["generate", "--model", str(checkpoint), "--precision", "int8", "--max-new-tokens", "8", *texts]) == 0
    from t5kit import Generator

    int8 = Generator.from_pretrained(str(checkpoint), precision="int8")
    expected = [r.text for r in int8.generate(texts, max_new_tokens=8)]
    assert capsys.readouterr().out.splitlines() == expected


def test_choices_flag_keeps_every_output_in_the_set(checkpoint, capsys):
    from t5kit.cli import main

    texts = ["Hello world", "Good morning", "A longer sentence about a house."]
    for extra in ([], ["--num-beams", "3"], ["--do-sample", "--seed", "1"]):
        assert main(["generate", "--model", str(checkpoint), "--choices", "yes;no;maybe not", "--choice-separator",
                     ";", *extra, *texts]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 3 and set(lines) <= {"yes", "no", "maybe not"}, lines
    assert main(["generate", "--model", str(checkpoint), "--choices", "a,,b", "x"]) != 0
    assert "tokenizes to nothing" in capsys.readouterr().err
