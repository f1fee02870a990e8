"""Sources, resumable streams, sharding, tasks, mixtures, the collator and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from t5kit.data import (
    Collator,
    FileSource,
    ListSource,
    Mixture,
    Task,
    get_task,
    load_tasks,
    open_source,
    register_task,
)
from t5kit.data.sources import HFDatasetSource
from t5kit.data.tasks import classification_task, qa_task, translation_task
from t5kit.errors import DataError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def strip(recs):
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in recs]


RECORDS = [{"en": f"hello {i}", "fr": f"bonjour {i}", "label": i % 2} for i in range(50)]


def test_formats_read_the_same_records(tmp_path):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"en": r["en"], "fr": r["fr"]} for r in RECORDS]
    write_jsonl(tmp_path / "a.jsonl", rows)
    for name, delim in (("a.csv", ","), ("a.tsv", "\t")):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["en", "fr"], delimiter=delim)
            w.writeheader()
            w.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet", row_group_size=7)
    for name in ("a.jsonl", "a.csv", "a.tsv", "a.parquet"):
        assert strip(FileSource(tmp_path / name)) == rows, name
    (tmp_path / "t.txt").write_text("first line\n\nsecond para\ncontinues\n", encoding="utf-8")
    assert strip(FileSource(tmp_path / "t.txt")) == [{"text": "first line"}, {"text": "second para"},
                                                     {"text": "continues"}]
    assert strip(FileSource(tmp_path / "t.txt", text_mode="paragraph")) == [
        {"text": "first line"}, {"text": "second para\ncontinues"}]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "text"])
def test_resume_each_format_from_every_position(tmp_path, fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": f"line {i}, with comma"} for i in range(23)]
    if fmt == "jsonl":
        paths = [write_jsonl(tmp_path / "a.jsonl", rows[:10]), write_jsonl(tmp_path / "b.jsonl", rows[10:])]
    elif fmt == "csv":
        (tmp_path / "a.csv").write_text("text\n" + "".join(f'"{r["text"]}"\n' for r in rows), encoding="utf-8")
        paths = [tmp_path / "a.csv"]
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet", row_group_size=4)
        paths = [tmp_path / "a.parquet"]
    else:
        (tmp_path / "a.txt").write_text("".join(r["text"] + "\n" for r in rows), encoding="utf-8")
        paths = [tmp_path / "a.txt"]
    for k in range(len(rows) + 1):
        src = FileSource(paths)
        head = src.take(k)
        state = json.loads(json.dumps(src.state_dict()))
        again = FileSource(paths)
        again.load_state_dict(state)
        assert strip(head) + strip(again) == rows, k


def test_shuffle_shard_resume_exact_and_disjoint(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"i": i} for i in range(200)])

    def make(rank=0, world=1):
        return FileSource(path).shard(rank, world).shuffle(buffer_size=16, seed=3)

    order = [r["i"] for r in make()]
    assert sorted(order) == list(range(200)) and order != list(range(200))
    assert [r["i"] for r in make()] == order  # same seed, same order
    assert [r["i"] for r in FileSource(path).shuffle(16, seed=4)] != order
    s = make()
    s.take(37)
    state = json.loads(json.dumps(s.state_dict()))
    expected = [r["i"] for r in s]
    t = make()
    t.load_state_dict(state)
    assert [r["i"] for r in t] == expected == order[37:]
    shards = [{r["i"] for r in make(rank, 3)} for rank in range(3)]
    assert set().union(*shards) == set(range(200))
    assert sum(len(x) for x in shards) == 200


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"en": "a", "fr": "b"}\n{"en": "c", "fr": \n\n{"en": "e", "fr": "f"}\n[1]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON.*skip_bad"):
        list(FileSource(path))
    src = FileSource(path, skip_bad=True)
    assert strip(src) == [{"en": "a", "fr": "b"}, {"en": "e", "fr": "f"}]
    assert src.bad == 2 and "bad.jsonl:5" in src.bad_messages[1]


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not valid utf-8 \(byte 0xe9 at column 14\)"):
        list(FileSource(path))
    assert strip(FileSource(path, encoding="latin-1"))[1] == {"text": "café"}
    src = FileSource(path, skip_bad=True)
    assert len(list(src)) == 1 and src.bad == 1


def test_missing_field_and_empty_text(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"en": "a", "fr": "b"}, {"en": "c", "fr_": "d"},
                                              {"en": " ", "fr": "e"}])
    task = translation_task("t_fr", str(path))
    stream = task.stream()
    assert next(stream) == {"inputs": "translate English to French: a", "targets": "b", "task": "t_fr"}
    with pytest.raises(DataError, match=r"p\.jsonl:2: task 't_fr' needs field 'fr'.*Did you mean 'fr_'"):
        next(stream)
    with pytest.raises(DataError, match=r"p\.jsonl:3: .*field 'en' is empty"):
        list(translation_task("t2", [{"en": "a", "fr": "b"}, {"en": " ", "fr": "e", "_where": "p.jsonl:3"}]).stream())
    s = task.stream(skip_bad=True)
    assert len(list(s)) == 1 and s.bad == 2


def test_csv_wrong_field_count(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n3\n4,5\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"x\.csv:3: 1 fields, but the header names 2"):
        list(FileSource(tmp_path / "x.csv"))


def test_unknown_task_name_suggests(tmp_path):
    register_task(Task("pipeline_wmt_en_de", ListSource([])), overwrite=True)
    with pytest.raises(DataError, match="unknown task 'pipeline_wmt_en_fr'.*Did you mean 'pipeline_wmt_en_de'"):
        get_task("pipeline_wmt_en_fr")


def test_missing_files_and_dataset_ids(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        FileSource(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="format"):
        FileSource(write_jsonl(tmp_path / "a.weird", []))
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="optional 'datasets' package"):
            next(HFDatasetSource("glue"))


def test_builtin_kinds():
    qa = qa_task("sq", ListSource([{"question": "Who?", "context": "Ann ran.", "answers": {"text": ["Ann"]}}]),
                 answer_field="answers")
    assert next(qa.stream()) == {"inputs": "question: Who? context: Ann ran.", "targets": "Ann", "task": "sq"}
    cola = classification_task("cola", ListSource([{"sentence": "Ran he.", "label": 0}]),
                               label_words=["unacceptable", "acceptable"])
    assert next(cola.stream())["inputs"] == "cola sentence: Ran he."
    assert next(cola.stream())["targets"] == "unacceptable"
    assert cola.postprocess("acceptable") == "1" and cola.postprocess("maybe") is None
    stsb = classification_task("stsb", [], text_fields=("sentence1", "sentence2"))
    assert stsb.inputs == "stsb sentence1: {sentence1} sentence2: {sentence2}"


def test_yaml_declaration(tmp_path):
    write_jsonl(tmp_path / "fr.jsonl", RECORDS)
    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n"
        "  - {name: y_en_fr, kind: translation, source: fr.jsonl, target_lang: fr}\n"
        "  - {name: y_sum, kind: summarization, source: {path: fr.jsonl}, text_field: en, summary_field: fr}\n"
        "mixtures:\n"
        "  - {name: y_mix, tasks: [y_en_fr, y_sum], rate: equal}\n", encoding="utf-8")
    loaded = load_tasks(tmp_path / "tasks.yaml")
    assert next(get_task("y_sum").stream())["inputs"] == "summarize: hello 0"
    assert loaded["mixtures"]["y_mix"].rates() == {"y_en_fr": 0.5, "y_sum": 0.5}
    (tmp_path / "bad.yaml").write_text("tasks:\n  - {name: z, kind: translaton, source: fr.jsonl}\n")
    with pytest.raises(DataError, match="unknown task kind 'translaton'.*Did you mean 'translation'"):
        load_tasks(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("tasks:\n  - {name: z, kind: translation, source: fr.jsonl, targt_lang: de}\n")
    with pytest.raises(DataError, match="no option 'targt_lang'.*Did you mean 'target_lang'"):
        load_tasks(tmp_path / "bad2.yaml")


def make_mixture(rate="proportional", **kw):
    a = Task("mix_a", ListSource([{"inputs": f"a{i}", "targets": "x"} for i in range(7)]), size=700)
    b = Task("mix_b", ListSource([{"inputs": f"b{i}", "targets": "y"} for i in range(3)]), size=300)
    return Mixture("m", [a, b], rate=rate, **kw)


def test_mixture_rates_and_sampling():
    # Sampling 20,000 examples at rates 0.7/0.3: the standard deviation of the observed fraction is
    # sqrt(0.7*0.3/20000) = 0.0032; the tolerance is 5 standard deviations (0.016).
    stream = make_mixture().stream(seed=11)
    examples = stream.take(20_000)
    frac_a = np.mean([e["task"] == "mix_a" for e in examples])
    assert abs(frac_a - 0.7) < 0.016
    # Within a task, examples come in order and repeat.
    assert [e["inputs"] for e in examples if e["task"] == "mix_b"][:5] == ["b0", "b1", "b2", "b0", "b1"]
    assert make_mixture(cap=300).rates() == {"mix_a": 0.5, "mix_b": 0.5}
    t = make_mixture("temperature", temperature=2.0).rates()
    assert abs(t["mix_a"] - 700**0.5 / (700**0.5 + 300**0.5)) < 1e-12
    assert make_mixture("explicit", weights=[1, 3]).rates()["mix_b"] == 0.75
    with pytest.raises(DataError, match="unknown rate 'temprature'.*Did you mean 'temperature'"):
        make_mixture("temprature").rates()


def test_mixture_resume_exact():
    s = make_mixture().stream(seed=5, shuffle_buffer=4)
    s.take(123)
    state = json.loads(json.dumps(s.state_dict()))
    expected = s.take(200)
    r = make_mixture().stream(seed=5, shuffle_buffer=4)
    r.load_state_dict(state)
    assert r.take(200) == expected


def test_collator_padding_and_packing():
    class Tok:
        def encode(self, text, add_eos=True):
            return [ord(c) for c in text] + ([1] if add_eos else [])

    examples = [{"inputs": "abc", "targets": "x"}, {"inputs": [5, 6, 1], "targets": [7, 8, 9, 1]}]
    batch = Collator(Tok())(examples)
    assert batch["input_ids"].tolist() == [[97, 98, 99, 1], [5, 6, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[120, 1, -100, -100], [7, 8, 9, 1]]
    assert batch["decoder_input_ids"].tolist() == [[0, 120, 1, 0], [0, 7, 8, 9]]
    assert Collator(Tok(), pad_to_multiple_of=8)(examples)["input_ids"].shape == (2, 8)
    assert Collator(Tok(), max_inputs_length=3)([{"inputs": "abcdef", "targets": "x"}])["input_ids"].tolist() == [
        [97, 98, 1]]
    packed = Collator(Tok(), pack=True, inputs_length=8, targets_length=6)(examples + examples)
    assert packed["input_ids"].shape == (2, 8)
    assert packed["input_ids"][0].tolist() == [97, 98, 99, 1, 5, 6, 1, 0]
    assert packed["encoder_segment_ids"][0].tolist() == [1, 1, 1, 1, 2, 2, 2, 0]
    assert packed["labels"][0].tolist() == [120, 1, 7, 8, 9, 1]
    assert packed["decoder_input_ids"][0].tolist() == [0, 120, 0, 7, 8, 9]
    assert packed["decoder_positions"][0].tolist() == [0, 1, 0, 1, 2, 3]
    assert packed["labels"].dtype == torch.long


def test_open_source_rejects_unknown_keys(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", RECORDS)
    with pytest.raises(DataError, match="unknown source key 'formt'.*Did you mean 'format'"):
        open_source({"path": "a.jsonl", "formt": "jsonl"}, base_dir=tmp_path)
