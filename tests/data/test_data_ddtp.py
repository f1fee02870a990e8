"""The DDTP importer on an index built in code, the by-package split, and gettext's package split."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import missing_system_part

from t5kit import metrics
from t5kit.data.corpora import import_ddtp, import_gettext, split_by_package, split_of
from t5kit.data.corpora.common import SPLITS
from t5kit.data.corpora.ddtp import parse_deb822, read_translations, split_description
from t5kit.data.prefixes import PREFIXES
from t5kit.data.tasks import get_task, load_tasks
from t5kit.errors import DataError

SECTIONS = ("libs", "libs", "libs", "net", "games", "python")


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def field(lang: str, synopsis: str, paragraphs: list[str]) -> str:
    body = "\n .\n".join("\n".join(" " + line for line in p.split("\n")) for p in paragraphs)
    return f"Description-{lang}: {synopsis}\n" + (body + "\n" if body else "")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def build_lists(root: Path, n: int = 80) -> dict:
    """Translation-en (plain), -fr (gz), -de (xz) and a Packages index for ``n`` source packages, each with
    two binary packages (``srcN`` and ``srcN-data``, one description each)."""
    en, fr, de, pkgs = [], [], [], []
    facts: dict = {"md5": {}, "para_counts": {}}
    for i in range(n):
        src = f"src{i}"
        for j, pkg in enumerate((src, f"{src}-data")):
            syn = f"tool number {i} part {j} for testing"
            paras = [f"Tool {i}.{j} does a first useful thing. It is fast.",
                     f"This package contains part {j}\nof tool {i}."]
            if i == 7 and j == 0:
                paras.append("Features:\n  * one\n  * two")  # a verbatim list keeps its line breaks
            if i % 10 == 3:
                paras.append("This package contains the shared boilerplate text.")  # across sources
            desc_en = field("en", syn, paras)
            h = md5(desc_en)
            facts["md5"][pkg] = h
            en.append(f"Package: {pkg}\nDescription-md5: {h}\n{desc_en}")
            fr_paras = [f"L'outil {i}.{j} fait une chose. Il est rapide.", f"Ce paquet contient la partie {j}."]
            fr_paras += [f"extra fr {k}" for k in range(len(paras) - 2)]
            if i == 5 and j == 0:
                fr_paras = fr_paras[:1]  # the translator merged paragraphs: only the synopsis pairs
            fr.append(f"Package: {pkg}\nDescription-md5: {h}\n" + field("fr", f"outil {i} partie {j}", fr_paras))
            if i % 2 == 0:
                de.append(f"Package: {pkg}\nDescription-md5: {h}\n"
                          + field("de", f"Werkzeug {i} Teil {j}", [f"Werkzeug {i}.{j}.", f"Teil {j}."]
                                  + [f"extra de {k}" for k in range(len(paras) - 2)]))
            source = "" if j == 0 else f"Source: {src} (1.0-{i})\n"
            pkgs.append(f"Package: {pkg}\n{source}Version: 1.0\nSection: {'contrib/' if i == 9 else ''}"
                        f"{SECTIONS[i % len(SECTIONS)]}\nDescription: {syn}\nDescription-md5: {h}\n")
            facts["para_counts"][pkg] = len(paras)
    fr.append(f"Package: gone\nDescription-md5: {md5('old')}\nDescription-fr: paquet disparu\n")
    fr.reverse()  # alignment is by md5, not by position or file order
    (root / "x_dists_bookworm_main_i18n_Translation-en").write_text("\n".join(en), encoding="utf-8")
    (root / "x_dists_bookworm_main_i18n_Translation-fr.gz").write_bytes(gzip.compress("\n".join(fr).encode()))
    (root / "x_dists_bookworm_main_i18n_Translation-de.xz").write_bytes(lzma.compress("\n".join(de).encode()))
    (root / "x_dists_bookworm_main_binary-amd64_Packages").write_text("\n".join(pkgs), encoding="utf-8")
    return facts


@pytest.fixture(scope="module")
def ddtp(tmp_path_factory):
    lists = tmp_path_factory.mktemp("lists")
    facts = build_lists(lists)
    out = tmp_path_factory.mktemp("ddtp")
    manifest = import_ddtp(out, langs=("fr", "de"), lists_dir=lists)
    data = {name: {s: read_jsonl(out / name / f"{s}.jsonl") for s in SPLITS}
            for name in ("en-fr", "en-de", "summarize", "section")}
    return out, manifest, data, facts, lists


def test_deb822_and_description_parsing():
    paras = list(parse_deb822("A: 1\nB: two\n more\n\n\nA: 3\n", where="f"))
    assert paras == [{"A": "1", "B": "two\n more"}, {"A": "3"}]
    syn, body = split_description("short\n first line\n second line\n .\n  * item\n  * item2\n \xa0\n last")
    assert syn == "short"
    assert body == ["first line second line", "* item\n* item2", "last"]
    with pytest.raises(DataError, match=r"f:2: not a 'Field: value' line"):
        list(parse_deb822("A: 1\nbroken line\n", where="f"))
    with pytest.raises(DataError, match=r"f:1: a continuation line"):
        list(parse_deb822(" orphan\n", where="f"))


def test_alignment_by_md5_and_paragraph_pairing(ddtp):
    _, manifest, data, facts, _ = ddtp
    fr = [r for recs in data["en-fr"].values() for r in recs]
    by_pkg = {}
    for r in fr:
        by_pkg.setdefault(r["package"], []).append(r)
    syn = {r["en"]: r["fr"] for r in fr if r["unit"] == "synopsis"}
    assert syn["tool number 12 part 1 for testing"] == "outil 12 partie 1"  # the file order was reversed
    assert all(r["md5"] == facts["md5"][r["package"]] for r in fr)
    # src5 (part 0): French merged two paragraphs into one -> only its synopsis
    assert [r["unit"] for r in by_pkg["src5"]] == ["synopsis"]
    assert Counter(r["unit"] for r in by_pkg["src6"]) == {"synopsis": 1, "paragraph": 2}
    assert ("Tool 6.0 does a first useful thing. It is fast.", "L'outil 6.0 fait une chose. Il est rapide.") in {
        (r["en"], r["fr"]) for r in by_pkg["src6"]}
    stats = manifest["stats"]["pairs"]["en-fr"]
    assert stats["paragraph_count_differs"] == 1 and stats["no_english"] == 1
    assert manifest["stats"]["english_descriptions"] == 160
    assert manifest["stats"]["translations"] == {"fr": 161, "de": 80}
    de = [r for recs in data["en-de"].values() for r in recs]
    assert {r["package"] for r in de} == {p for p in facts["md5"] if int(p[3:].split("-")[0]) % 2 == 0}
    # the shared boilerplate paragraph is kept once, in the earliest split of its sources
    shared = [(s, r) for s, recs in data["en-fr"].items() for r in recs
              if r["en"] == "This package contains the shared boilerplate text."]
    assert len(shared) == 1
    sides = {split_by_package(f"src{i}") for i in range(3, 80, 10)}
    assert shared[0][0] == min(sides, key=SPLITS.index)


def test_summarization_and_classification_records(ddtp):
    out, manifest, data, _, _ = ddtp
    summ = {r["package"]: r for recs in data["summarize"].values() for r in recs}
    assert summ["src7"]["synopsis"] == "tool number 7 part 0 for testing"
    assert summ["src7"]["description"].endswith("Features:\n* one\n* two")
    sect = {r["package"]: r for recs in data["section"].values() for r in recs}
    assert len(sect) == 160
    assert sect["src3-data"]["section"] == "net" and sect["src3-data"]["source"] == "src3"
    assert sect["src9"]["section"] == "net"  # "contrib/net": the area is not part of the section
    assert sect["src1"]["description"].startswith("tool number 1 part 0 for testing\nTool 1.0")
    assert manifest["stats"]["sections"] == {"libs": 82, "net": 26, "games": 26, "python": 26}
    load_tasks(out / "tasks.yaml")
    ex = next(get_task("ddtp_section").stream("train"))
    # the importer's task writes the registry's prefix (the built-in model and the server name it "debian_section")
    assert ex["inputs"].startswith(PREFIXES["debian_section"] + "tool number")
    assert ex["targets"] in {"libraries", "network", "games", "python"}
    assert get_task("ddtp_section").options["choices"] == ["games", "libraries", "network", "python"]
    assert next(get_task("ddtp_summarize").stream("train"))["inputs"].startswith("summarize: Tool ")
    assert next(get_task("ddtp_en_de").stream("train"))["inputs"].startswith("translate English to German: ")


def test_split_by_source_package(ddtp):
    _, manifest, data, _, _ = ddtp
    assert "by source package" in manifest["split"]
    for name, recs in data.items():
        assert all(recs[s] for s in SPLITS) or name == "en-de", (name, {s: len(v) for s, v in recs.items()})
        sides: dict[str, set[str]] = {}
        for split, rs in recs.items():
            for r in rs:
                sides.setdefault(r["source"], set()).add(split)
                assert r["source"] == r["package"].removesuffix("-data")
        assert all(len(v) == 1 for v in sides.values()), name  # no source package on two sides
        assert all(next(iter(v)) == split_by_package(src) for src, v in sides.items())
    for key in ("glib2.0", "src1", "x"):
        assert split_by_package(key) in SPLITS
    names = [f"pkg{i}" for i in range(4000)]
    share = Counter(split_by_package(n) for n in names)
    assert 0.87 < share["train"] / 4000 < 0.93 and share["test"] > 120  # split_of's 90/5/5
    assert sum(split_by_package(n) != split_of(n) for n in names) > 300  # its own salt: not the text split


def test_manifest_baselines(ddtp):
    out, manifest, data, _, _ = ddtp
    base = manifest["baselines"]
    assert json.loads((out / "manifest.json").read_text())["baselines"] == base
    test = data["en-fr"]["test"]
    b = metrics.bleu([r["en"] for r in test], [r["fr"] for r in test])
    assert base["ddtp_en_fr"]["copy_bleu"] == round(b.score, 2) and base["ddtp_en_fr"]["records"] == len(test)
    assert 0 <= base["ddtp_en_fr"]["copy_chrf"] < 100
    train_major = Counter(r["section"] for r in data["section"]["train"]).most_common(1)[0][0]
    st = data["section"]["test"]
    assert base["ddtp_section"]["majority_class"] == train_major == "libs"
    hits = sum(r["section"] == "libs" for r in st)
    assert base["ddtp_section"]["majority_accuracy"] == round(100 * hits / len(st), 2)
    summ = base["ddtp_summarize"]
    lead = metrics.rouge([r["description"].split(". ")[0] + "." for r in data["summarize"]["test"]],
                         [r["synopsis"] for r in data["summarize"]["test"]], ("rouge1", "rouge2", "rougeL"))
    assert summ["lead_sentence"]["rougeL"] == round(lead["rougeL"], 2)
    # as many words as the mean train synopsis: "tool number N part J for testing" has 7
    words = metrics.rouge([" ".join(r["description"].split()[:7]) for r in data["summarize"]["test"]],
                          [r["synopsis"] for r in data["summarize"]["test"]], ("rougeL",))
    assert summ["lead_7_words"]["rougeL"] == round(words["rougeL"], 2)
    assert "TODO" in manifest["licence"] and manifest["apt_source"]["files"]


def test_missing_and_malformed_files(tmp_path):
    facts_dir = tmp_path / "lists"
    facts_dir.mkdir()
    build_lists(facts_dir, n=4)
    with pytest.raises(DataError, match=r"Translation-it.*apt-get update -o Acquire::Languages=it.*--fetch"):
        import_ddtp(tmp_path / "o", langs=("it",), lists_dir=facts_dir)
    (facts_dir / "x_dists_bookworm_main_binary-amd64_Packages").unlink()
    with pytest.raises(DataError, match=r"no Packages index files .*sudo apt-get update"):
        import_ddtp(tmp_path / "o", langs=("fr",), lists_dir=facts_dir)
    with pytest.raises(DataError, match="does not exist"):
        import_ddtp(tmp_path / "o", lists_dir=tmp_path / "nowhere")
    bad = facts_dir / "y_i18n_Translation-en"
    bad.write_text("Package: a\nDescription-md5: 00\nDescription-en: s\n long\n\nPackage b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"y_i18n_Translation-en:6: not a 'Field: value' line: 'Package b'"):
        read_translations(facts_dir, "en")
    bad.write_text("Package: a\nDescription-en: s\n", encoding="utf-8")
    with pytest.raises(DataError, match="package 'a'.*lacks 'Description-md5'"):
        read_translations(facts_dir, "en")


def test_lz4_index(tmp_path):
    """apt's own compression (the real lists are .lz4), written with the lz4 tool (.ci/run installs it)."""
    if not shutil.which("lz4"):
        missing_system_part("the lz4 tool (apt package lz4) is not installed")
    text = "Package: p\nDescription-md5: 1\nDescription-fr: synopsis\n un\n .\n deux\n"
    raw = tmp_path / "z_i18n_Translation-fr"
    raw.write_text(text, encoding="utf-8")
    subprocess.run(["lz4", "-q", str(raw), str(raw) + ".lz4"], check=True)
    raw.unlink()
    assert read_translations(tmp_path, "fr") == {"1": {"package": "p", "synopsis": "synopsis",
                                                       "paragraphs": ["un", "deux"]}}


# -- gettext split by package ----------------------------------------------------------------------


def write_mo(path: Path, pairs: dict[str, str]) -> None:
    """A little-endian .mo catalogue (no hash table) holding ``pairs`` and a UTF-8 header."""
    entries = sorted({"": "Content-Type: text/plain; charset=UTF-8\n", **pairs}.items())
    ids = [k.encode() for k, _ in entries]
    strs = [v.encode() for _, v in entries]
    n = len(entries)
    orig_at, trans_at = 28, 28 + 8 * n
    data_at = 28 + 16 * n
    blob, otab, ttab = b"", b"", b""
    for table, items in (("o", ids), ("t", strs)):
        for s in items:
            entry = struct.pack("<2I", len(s), data_at + len(blob))
            blob += s + b"\x00"
            if table == "o":
                otab += entry
            else:
                ttab += entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<7I", 0x950412DE, 0, n, orig_at, trans_at, 0, 0) + otab + ttab + blob)


def test_gettext_split_by_package(tmp_path):
    locale = tmp_path / "locale"
    domains = [f"dom{i}" for i in range(60)]
    for lang, word in (("fr", "Ouvrir"), ("de", "Öffnen")):
        for d in domains:
            write_mo(locale / lang / "LC_MESSAGES" / f"{d}.mo",
                     {f"Open the {d} window": f"{word} la fenêtre {d}", "Shared message": f"{word} partagé"})
    out = tmp_path / "out"
    m = import_gettext(out, langs=("fr", "de"), locale_dir=locale, split_by="package")
    assert m["split_by"] == "package" and "by package" in m["split"]
    for lang in ("fr", "de"):
        recs = {s: read_jsonl(out / f"en-{lang}" / f"{s}.jsonl") for s in SPLITS}
        for split, rs in recs.items():
            for r in rs:
                if r["en"] == "Shared message":
                    assert split == "train"  # in every domain, so on the earliest side
                    assert len(r["domains"]) == 60
                else:
                    assert r["domains"] == [r["en"].split()[2]] and split_by_package(r["domains"][0]) == split
        assert all(recs[s] for s in SPLITS)
    default = import_gettext(tmp_path / "by_string", langs=("fr",), locale_dir=locale)
    assert default["split_by"] == "string"
    for split in SPLITS:
        assert all(split_of(r["en"]) == split for r in read_jsonl(tmp_path / "by_string" / "en-fr" / f"{split}.jsonl"))
    with pytest.raises(DataError, match="split_by must be one of string, package"):
        import_gettext(tmp_path / "x", langs=("fr",), locale_dir=locale, split_by="domain")
