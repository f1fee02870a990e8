"""Importers on the machine's real data, the ``t5kit data`` command, span corruption with the T5 vocabulary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import T5_VOCAB, missing_system_part

from t5kit.data import ListSource, span_corruption_lengths
from t5kit.data.corpora import import_gettext, import_text, import_wordnet, read_mo, split_of, strip_accelerators
from t5kit.data.corpora.gettext import clean_pair, placeholders
from t5kit.data.tasks import get_task, load_tasks, span_corruption_task
from t5kit.errors import DataError
from t5kit.tokenizer import Tokenizer

VOCAB = T5_VOCAB


def t5_tokenizer() -> Tokenizer:
    return Tokenizer.from_pretrained(VOCAB)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def gettext_out(tmp_path_factory):
    if not list(Path("/usr/share/locale/fr/LC_MESSAGES").glob("*.mo")):
        missing_system_part("no French gettext catalogues on this machine")
    out = tmp_path_factory.mktemp("gettext")
    return out, import_gettext(out, langs=("fr", "de"))


def test_gettext_import_real_catalogues(gettext_out):
    out, manifest = gettext_out
    for pair in ("en-fr", "en-de"):
        counts = manifest["pairs"][pair]
        total = sum(counts.values())
        assert total > 1000, counts
        assert 0.85 < counts["train"] / total < 0.95
        splits = {s: read_jsonl(out / pair / f"{s}.jsonl") for s in counts}
        assert {s: len(v) for s, v in splits.items()} == counts
        sources = {s: [r["en"] for r in v] for s, v in splits.items()}
        flat = [x for v in sources.values() for x in v]
        assert len(flat) == len(set(flat)), "de-duplicated: one record per English string"
        for s, items in sources.items():
            assert all(split_of(x) == s for x in items[:2000])  # the split is the hash's
        lang = pair[3:]
        for r in splits["train"][:3000]:
            assert r["en"] != r[lang] and r[lang].strip()
            assert placeholders(r["en"]) == placeholders(r[lang])
    assert manifest["source_packages"], "the owning packages and their licences are listed"
    assert json.loads((out / "manifest.json").read_text())["pairs"] == manifest["pairs"]
    fr_test = {r["en"] for r in read_jsonl(out / "en-fr" / "test.jsonl")}
    de_train = {r["en"] for r in read_jsonl(out / "en-de" / "train.jsonl")}
    assert not fr_test & de_train, "a string is in the same split for every language"


def test_gettext_tasks_file_feeds_a_task(gettext_out):
    out, _ = gettext_out
    load_tasks(out / "tasks.yaml")
    ex = next(get_task("gettext_en_fr").stream("validation"))
    assert ex["inputs"].startswith("translate English to French: ") and ex["targets"]


def test_mo_parsing_and_cleaning(tmp_path):
    mo = sorted(Path("/usr/share/locale/fr/LC_MESSAGES").glob("*.mo"))
    if not mo:
        missing_system_part("no French gettext catalogues on this machine")
    header, pairs = read_mo(mo[0])
    assert pairs and all(isinstance(a, str) and "\x00" not in a for a, _ in pairs)
    assert strip_accelerators("_File") == "File"
    assert strip_accelerators("Save _As…") == "Save As…"
    assert strip_accelerators("&Open") == "Open"
    assert strip_accelerators("ファイル(_F)") == "ファイル"
    assert strip_accelerators("file_name") == "file_name"
    assert strip_accelerators("Tom && Jerry") == "Tom & Jerry"
    assert placeholders("%1$s has %2$-10d items %%") == placeholders("%d items for %s")
    assert clean_pair("Delete %s?", "Supprimer ?") == "placeholder_mismatch"
    assert clean_pair("_Open %s", "_Ouvrir %s") == ("Open %s", "Ouvrir %s")
    assert clean_pair("OK", "OK") == "identical"
    (tmp_path / "bad.mo").write_bytes(b"not a catalogue at all, clearly")
    with pytest.raises(DataError, match="not a gettext .mo file"):
        read_mo(tmp_path / "bad.mo")


def test_wordnet_import(tmp_path):
    if not Path("/usr/share/wordnet/data.noun").exists():
        missing_system_part("apt package wordnet-base is not installed")
    m = import_wordnet(tmp_path)
    assert m["total"] > 100_000
    recs = {r["word"]: r for s in ("train", "validation", "test") for r in read_jsonl(tmp_path / f"{s}.jsonl")}
    assert len(recs) == m["total"]
    assert "domesticated" in recs["dog"]["definition"] and recs["dog"]["pos"] == "noun"
    assert recs["dog"]["examples"] == ["the dog barked all night"]
    assert '"' not in recs["dog"]["definition"]


def test_missing_package_names_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install wordnet-base"):
        import_wordnet(tmp_path, wordnet_dir=tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dict-gcide"):
        import_text(tmp_path, sources=["gcide"], dirs={"gcide": str(tmp_path / "nowhere")})


@pytest.mark.parametrize("source,package,path", [
    ("gcide", "dict-gcide", "/usr/share/dictd/gcide.dict.dz"),
    ("handbook", "debian-handbook", "/usr/share/doc/debian-handbook/html/en-US"),
    ("man", "man-db", "/usr/share/man/man1"),
])
def test_text_import(tmp_path, source, package, path):
    if not Path(path).exists():
        missing_system_part(f"apt package {package} is not installed")
    m = import_text(tmp_path, sources=[source], limit=40)
    docs = [r for s in ("train", "validation", "test") for r in read_jsonl(tmp_path / f"{s}.jsonl")]
    assert len(docs) == m["totals"]["documents"] == 40
    assert all(d["source"].startswith(source + ":") and len(d["text"]) >= 40 for d in docs)
    text = " ".join(d["text"] for d in docs)
    assert "\\fB" not in text and "</p>" not in text and "</div>" not in text and "\\-" not in text
    assert m["source_packages"]


def test_span_corruption_with_t5_vocabulary(tmp_path):
    tok = t5_tokenizer()
    docs = [{"text": f"The quick brown fox number {i} jumps over the lazy dog near the river bank."}
            for i in range(120)]
    task = span_corruption_task("sc_test", ListSource(docs), inputs_length=64)
    raw, tl = span_corruption_lengths(64)
    stream = task.stream(tokenizer=tok, seed=1)
    examples = stream.take(6)
    for ex in examples:
        assert len(ex["inputs"]) == 64 and len(ex["targets"]) == tl
        assert ex["targets"][0] == 32099 and ex["inputs"][-1] == 1
    text = tok.decode(examples[0]["inputs"])
    assert "<extra_id_0>" in text and "fox" in text
    state = json.loads(json.dumps(stream.state_dict()))
    expected = stream.take(3)
    again = task.stream(tokenizer=tok, seed=1)
    again.load_state_dict(state)
    assert again.take(3) == expected


def test_cli_import_stats_preview(tmp_path, capsys):
    import argparse

    from t5kit.cli import data as data_cli

    parser = argparse.ArgumentParser(prog="t5kit")
    sub = parser.add_subparsers(dest="command")
    data_cli.register(sub)
    if not shutil.which("dpkg") or not Path("/usr/share/doc/debian-handbook/html/en-US").exists():
        missing_system_part("apt package debian-handbook is not installed")
    args = parser.parse_args(["data", "import", "text", "--out", str(tmp_path), "--source", "handbook",
                              "--limit", "3"])
    assert args.func(args) == 0
    assert '"documents": 3' in capsys.readouterr().out
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops\n', encoding="utf-8")
    args = parser.parse_args(["data", "stats", str(tmp_path / "bad.jsonl"), "--skip-bad"])
    assert args.func(args) == 0
    assert "records: 1  bad records skipped: 1" in capsys.readouterr().out
    args = parser.parse_args(["data", "preview", "--tasks", str(tmp_path / "tasks.yaml"),
                              "--task", "text_span_corruption", "--tokenizer", str(VOCAB), "-n", "1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "<extra_id_0>" in out and "[512 ids]" in out


def test_text_split_by_package_keeps_each_package_s_man_pages_on_one_side(tmp_path):
    """``import_text(split_by="package")``: a manual page goes to the split of the package that installed it
    (dpkg's file lists), a page no package owns to its document split; the manifest says which rule ran."""
    from t5kit.data.corpora import split_by_package
    from t5kit.data.corpora.text import TEXT_FRACTIONS

    wanted = {"train": 2, "validation": 1, "test": 1}  # packages whose hash lands in each split
    packages: list[str] = []
    for i in range(10_000):
        name = f"pkg{i}"
        split = split_by_package(name, TEXT_FRACTIONS)
        if wanted[split]:
            wanted[split] -= 1
            packages.append(name)
        if not any(wanted.values()):
            break
    man, dpkg = tmp_path / "man", tmp_path / "dpkg"
    (man / "man1").mkdir(parents=True)
    dpkg.mkdir()
    body = "\n".join(f"This is sentence {j} of a manual page about a tool and its options." for j in range(8))
    for name in packages:
        pages = []
        for k in range(4):
            page = man / "man1" / f"{name}-tool{k}.1"
            page.write_text(f'.TH {name.upper()} 1\n.SH NAME\n{name}-tool{k} \\- a tool\n.SH DESCRIPTION\n{body}\n')
            pages.append(str(page))
        (dpkg / f"{name}.list").write_text("\n".join(pages) + "\n")
    (man / "man1" / "orphan.1").write_text(f".TH ORPHAN 1\n.SH DESCRIPTION\n{body}\n")
    manifest = import_text(tmp_path / "out", sources=["man"], dirs={"man": str(man)}, split_by="package",
                           dpkg_info=str(dpkg))
    where = {r["source"]: s for s in ("train", "validation", "test")
             for r in read_jsonl(tmp_path / "out" / f"{s}.jsonl")}
    assert len(where) == 4 * len(packages) + 1
    for name in packages:
        sides = {where[f"man:{name}-tool{k}.1"] for k in range(4)}
        assert sides == {split_by_package(name, TEXT_FRACTIONS)}, (name, sides)
    assert set(where.values()) == {"train", "validation", "test"}
    assert where["man:orphan.1"] == split_of("man:orphan.1", TEXT_FRACTIONS)
    assert manifest["split"].startswith("by package") and set(manifest["source_packages"]) == set(packages)
    with pytest.raises(DataError, match="split_by must be one of document, package"):
        import_text(tmp_path / "bad", sources=["man"], dirs={"man": str(man)}, split_by="lemma")
