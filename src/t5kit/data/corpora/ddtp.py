"""Debian package descriptions and their human translations (the Debian Description Translation Project).

apt fetches the descriptions as ``Translation-<lang>`` index files into ``/var/lib/apt/lists/`` when asked
for the language (``apt-get update -o Acquire::Languages=fr``; each call replaces the other languages'
files, so the files of one language are copied out before the next call, as ``fetch_lists`` does).
Each file is a list of deb822 paragraphs ``Package`` / ``Description-md5`` / ``Description-<lang>``: the
first line of the description is the synopsis, the continuation lines (indented by one space) the long
description, whose paragraphs are separated by ``" ."`` lines.

Translations are aligned with the English text by ``Description-md5`` (the md5 of the English
description they translate, so a stale translation never pairs with a newer English text). Produced:
- ``en-<lang>``: the synopsis pair of every translated description and, where both sides have the same
  number of paragraphs, one pair per paragraph (a different count means the translator merged or split
  paragraphs, and pairing by position would misalign them);
- ``summarize``: the long English description -> its synopsis;
- ``section``: the English description -> the package's ``Section`` (from the ``Packages`` indexes),
  with readable label words.

Every record carries its source package (``Source`` in ``Packages``, else the package name) and the
split is :func:`split_by_package` of it: the descriptions of a source's binary packages are
near-duplicates, so a hash split of the text would put the same sentences on both sides.
"""

from __future__ import annotations

import bz2
import gzip
import importlib
import lzma
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from t5kit import metrics
from t5kit.data.corpora.common import SPLITS, split_by_package, write_jsonl, write_manifest
from t5kit.errors import DataError, T5kitError
from t5kit.io import write_text

APT_LISTS = "/var/lib/apt/lists"
APT_HELPER = "/usr/lib/apt/apt-helper"
COMPRESSIONS = ("", ".lz4", ".xz", ".gz", ".bz2", ".zst")

# Debian's archive sections (https://packages.debian.org/bookworm/) as words a model can generate;
# a section not listed here is its own label word.
SECTION_WORDS = {
    "admin": "administration", "cli-mono": "mono", "comm": "communication", "database": "database",
    "debug": "debug", "devel": "development", "doc": "documentation", "editors": "editors",
    "education": "education", "electronics": "electronics", "embedded": "embedded", "fonts": "fonts",
    "games": "games", "gnome": "gnome", "gnu-r": "r", "gnustep": "gnustep", "golang": "go",
    "graphics": "graphics", "hamradio": "ham radio", "haskell": "haskell", "httpd": "web server",
    "interpreters": "interpreters", "introspection": "introspection", "java": "java",
    "javascript": "javascript", "kde": "kde", "kernel": "kernel", "libdevel": "library development",
    "libs": "libraries", "lisp": "lisp", "localization": "localization", "mail": "mail", "math": "math",
    "metapackages": "metapackages", "misc": "miscellaneous", "net": "network", "news": "news",
    "ocaml": "ocaml", "oldlibs": "old libraries", "otherosfs": "other os", "perl": "perl", "php": "php",
    "python": "python", "ruby": "ruby", "rust": "rust", "science": "science", "shells": "shells",
    "sound": "sound", "tasks": "tasks", "tex": "tex", "text": "text processing", "utils": "utilities",
    "vcs": "version control", "video": "video", "web": "web", "x11": "x11", "xfce": "xfce", "zope": "zope",
}

LICENCE_NOTE = (
    "Package descriptions are written by each package's maintainers and ship in the package's "
    "debian/control, under the package's own licence; the DDTP translations are published by Debian in "
    "the archive (https://ddtp.debian.org/) as part of the same descriptions. TODO: no copyright file "
    "under /usr/share/doc on the machine this was written on mentions DDTP, so the translations' own "
    "terms are unconfirmed: check https://www.debian.org/international/l10n/ddtp before redistributing."
)


def fetch_command(lang: str) -> str:
    return f"sudo apt-get update -o Acquire::Languages={lang}"


# -- reading the index files -----------------------------------------------------------------------


def _decompress(path: Path) -> str:
    """The text of an index file in any compression apt writes."""
    suffix = path.suffix if path.suffix in COMPRESSIONS else ""
    if suffix == ".gz":
        data = gzip.decompress(path.read_bytes())
    elif suffix == ".xz":
        data = lzma.decompress(path.read_bytes())
    elif suffix == ".bz2":
        data = bz2.decompress(path.read_bytes())
    elif suffix in (".lz4", ".zst"):
        data = _external_decompress(path, suffix)
    else:
        data = path.read_bytes()
    return data.decode("utf-8", errors="replace")


def _external_decompress(path: Path, suffix: str) -> bytes:
    if suffix == ".lz4":
        try:
            frame = importlib.import_module("lz4.frame")  # optional: faster, no subprocess
            return frame.decompress(path.read_bytes())
        except ImportError:
            pass
    tools = [[APT_HELPER, "cat-file", str(path)]]
    tools.append(["lz4", "-dc", str(path)] if suffix == ".lz4" else ["zstd", "-dc", str(path)])
    for cmd in tools:
        if Path(cmd[0]).exists() or shutil.which(cmd[0]):
            res = subprocess.run(cmd, capture_output=True, check=False)
            if res.returncode == 0:
                return res.stdout
            raise DataError(f"{path}: {cmd[0]} could not decompress it: {res.stderr.decode(errors='replace')[:200]}")
    raise DataError(f"{path}: needs {APT_HELPER} (package apt), the lz4/zstd tool, or 'pip install lz4' to read")


def parse_deb822(text: str, where: str = "index") -> Iterator[dict[str, str]]:
    """deb822 paragraphs as {field: value}; continuation lines keep their newline and leading space.

    A line that is neither ``Field: value`` nor a continuation raises a DataError naming ``where`` and
    the line number."""
    para: dict[str, str] = {}
    last: str | None = None
    for lineno, line in enumerate(text.split("\n"), 1):
        # only spaces and tabs make a line blank: real indexes have continuation lines holding just a
        # no-break space (" \xa0"), which str.strip() would take for a paragraph end
        if not line.strip(" \t\r"):
            if para:
                yield para
            para, last = {}, None
            continue
        if line[0] in " \t":
            if last is None:
                raise DataError(f"{where}:{lineno}: a continuation line with no field before it: {line[:60]!r}")
            para[last] += "\n" + line
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or " " in name:
            raise DataError(f"{where}:{lineno}: not a 'Field: value' line: {line[:60]!r}")
        para[name] = value.strip()
        last = name
    if para:
        yield para


def split_description(value: str) -> tuple[str, list[str]]:
    """``"synopsis\\n long line\\n .\\n next"`` -> (synopsis, [paragraphs]); lines indented by two or
    more spaces (lists, code) keep their line breaks, the others are joined with spaces."""
    lines = value.split("\n")
    synopsis = lines[0].strip()
    paragraphs: list[str] = []
    current: list[str] = []
    verbatim = False

    def flush() -> None:
        nonlocal current, verbatim
        if current:
            paragraphs.append(("\n" if verbatim else " ").join(current))
        current, verbatim = [], False

    for raw in lines[1:]:
        line = raw[1:] if raw[:1] in " \t" else raw
        if line.strip() in (".", ""):  # " ." or a translator's " \xa0": the paragraph separator
            flush()
            continue
        if line[:1] in " \t":
            verbatim = True
        if line.strip():
            current.append(line.strip())
    flush()
    return synopsis, paragraphs


def _index_files(lists_dir: Path, pattern: str) -> list[Path]:
    """One file per index, preferring the uncompressed form when apt left both."""
    chosen: dict[str, Path] = {}
    for path in sorted(lists_dir.glob(pattern + "*")):
        base = path.name[: -len(path.suffix)] if path.suffix in COMPRESSIONS[1:] else path.name
        if base.endswith(pattern.lstrip("*")) and base not in chosen:
            chosen[base] = path
    return [chosen[k] for k in sorted(chosen)]


def _missing(lists_dir: Path, what: str, lang: str | None) -> DataError:
    how = (f"fetch it with '{fetch_command(lang)}' and copy the *_Translation-{lang}* files out of "
           f"{APT_LISTS} before fetching another language" if lang else "fetch it with 'sudo apt-get update'")
    return DataError(f"no {what} index files in {lists_dir}: {how}, or run 't5kit data import ddtp --fetch' "
                     f"as root (it does both), or point --lists-dir at a copy")


def read_translations(lists_dir: str | Path, lang: str) -> dict[str, dict[str, Any]]:
    """{Description-md5: {"package", "synopsis", "paragraphs"}} from the ``Translation-<lang>`` files."""
    lists_dir = Path(lists_dir)
    files = _index_files(lists_dir, f"*_Translation-{lang}")
    if not files:
        raise _missing(lists_dir, f"Translation-{lang}", lang)
    out: dict[str, dict[str, Any]] = {}
    field = f"Description-{lang}"
    for path in files:
        for para in parse_deb822(_decompress(path), where=str(path)):
            md5, desc = para.get("Description-md5"), para.get(field)
            if not md5 or desc is None:
                raise DataError(f"{path}: a paragraph (package {para.get('Package', '?')!r}) lacks "
                                f"'Description-md5' or '{field}'")
            if md5 not in out:  # one md5 is one English text, so which file's copy wins does not matter
                synopsis, paragraphs = split_description(desc)
                out[md5] = {"package": para.get("Package", ""), "synopsis": synopsis, "paragraphs": paragraphs}
    return out


def read_packages(lists_dir: str | Path) -> dict[str, dict[str, str]]:
    """{Description-md5: {"package", "source", "section"}} from the ``Packages`` indexes (first wins)."""
    lists_dir = Path(lists_dir)
    files = _index_files(lists_dir, "*_Packages")
    if not files:
        raise _missing(lists_dir, "Packages", None)
    out: dict[str, dict[str, str]] = {}
    for path in files:
        for para in parse_deb822(_decompress(path), where=str(path)):
            md5, pkg = para.get("Description-md5"), para.get("Package")
            if not md5 or not pkg or md5 in out:
                continue
            source = para.get("Source", pkg).split(" ", 1)[0] or pkg  # "Source: name (version)"
            section = para.get("Section", "").rsplit("/", 1)[-1]  # "contrib/net" -> "net"
            out[md5] = {"package": pkg, "source": source, "section": section}
    return out


def fetch_lists(dest: str | Path, langs: Sequence[str], apt_lists: str | Path = APT_LISTS) -> Path:
    """Run ``apt-get update`` once per language (root only), copying each language's files to ``dest``
    before the next call replaces them; a final plain ``apt-get update`` restores the normal lists."""
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise DataError("--fetch runs apt-get update and needs root: run it with sudo, or fetch the lists "
                        f"yourself ({fetch_command('fr')}, once per language, copying the files out)")
    dest, apt_lists = Path(dest), Path(apt_lists)
    dest.mkdir(parents=True, exist_ok=True)
    for lang in dict.fromkeys(["en", *langs]):
        res = subprocess.run(["apt-get", "update", "-o", f"Acquire::Languages={lang}"],
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise DataError(f"'{fetch_command(lang)}' failed: {res.stderr.strip()[-300:]}")
        for path in apt_lists.glob(f"*_Translation-{lang}*"):
            shutil.copy2(path, dest / path.name)
    for path in apt_lists.glob("*_Packages*"):
        shutil.copy2(path, dest / path.name)
    subprocess.run(["apt-get", "update"], capture_output=True, check=False)
    return dest


# -- records ---------------------------------------------------------------------------------------


def build_records(
    english: dict[str, dict[str, Any]], translations: dict[str, dict[str, dict[str, Any]]],
    packages: dict[str, dict[str, str]],
) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], dict[str, Any]]:
    """{dataset: {split: [records]}} for ``en-<lang>``, ``summarize`` and ``section``; and statistics."""
    data: dict[str, dict[str, list[dict[str, Any]]]] = {}
    stats: dict[str, Any] = {"english_descriptions": len(english), "translations": {}, "pairs": {}}

    def owner(md5: str) -> tuple[str, str]:
        info = packages.get(md5)
        if info:
            return info["package"], info["source"]
        pkg = english[md5]["package"]
        return pkg, pkg

    for lang, trans in translations.items():
        recs: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        count = Counter()
        for md5 in sorted(trans):
            if md5 not in english:
                count["no_english"] += 1  # translates a description no longer in the archive
                continue
            en, tr = english[md5], trans[md5]
            pkg, src = owner(md5)
            split = split_by_package(src)
            base = {"package": pkg, "source": src, "md5": md5}
            pairs = [("synopsis", en["synopsis"], tr["synopsis"])]
            if len(en["paragraphs"]) == len(tr["paragraphs"]):
                pairs += [("paragraph", a, b) for a, b in zip(en["paragraphs"], tr["paragraphs"])]
            elif en["paragraphs"]:
                count["paragraph_count_differs"] += 1
            for unit, a, b in pairs:
                if not a or not b or a == b:
                    count["untranslated"] += 1
                    continue
                recs[split].append({"en": a, lang: b, "unit": unit, **base})
                count[unit] += 1
            count["aligned"] += 1
        data[f"en-{lang}"] = recs
        stats["translations"][lang] = len(trans)
        stats["pairs"][f"en-{lang}"] = dict(sorted(count.items()))
    summ: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    sect: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for md5 in sorted(english):
        en = english[md5]
        pkg, src = owner(md5)
        split = split_by_package(src)
        long = "\n".join(en["paragraphs"])
        if long and en["synopsis"]:
            summ[split].append({"description": long, "synopsis": en["synopsis"], "package": pkg, "source": src})
        section = packages.get(md5, {}).get("section")
        if section:
            text = en["synopsis"] + ("\n" + long if long else "")
            sect[split].append({"description": text, "section": section, "package": pkg, "source": src})
    data["summarize"], data["section"] = summ, sect
    targets = {**{name: name[3:] for name in data if name.startswith("en-")},
               "summarize": "synopsis", "section": "section"}
    stats["deduplication"] = {}
    for name, target in targets.items():
        key = "en" if name.startswith("en-") else "description"
        data[name], stats["deduplication"][name] = _dedupe(data[name], key, target)
    stats["sections"] = dict(Counter(r["section"] for recs in data["section"].values() for r in recs).most_common())
    return data, stats


def _dedupe(by_split: dict[str, list[dict[str, Any]]], key: str, target: str
            ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """One record per input text, in the earliest split it occurs in (train < validation < test), with
    the target most of its copies there have (ties: the smallest). Boilerplate ("This package contains the
    development files") recurs across source packages; without this, about 8% of the test translation
    pairs had their exact English in train (measured on bookworm) and references were ambiguous."""
    groups: dict[str, list[dict[str, Any]]] = {}
    first_split: dict[str, str] = {}
    for split in SPLITS:
        for rec in by_split[split]:
            groups.setdefault(rec[key], []).append(rec)
            first_split.setdefault(rec[key], split)
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    moved = 0
    for text, recs in groups.items():
        split = first_split[text]
        # vote among the copies of packages on that side, so the kept record's "source" is on it too
        side = [r for r in recs if split_by_package(r["source"]) == split]
        votes = Counter(r[target] for r in side)
        best = min(votes.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        rec = next(r for r in side if r[target] == best)
        moved += any(split_by_package(r["source"]) != split for r in recs)
        out[split].append(rec)
    total = sum(len(v) for v in by_split.values())
    return out, {"duplicates_merged": total - len(groups), "moved_to_an_earlier_split": moved}


# -- baselines -------------------------------------------------------------------------------------


def _first_sentence(text: str) -> str:
    m = re.search(r"(?<=[.!?])\s", text)
    return text[: m.start()] if m else text


def baselines(data: dict[str, dict[str, list[dict[str, Any]]]], split: str = "test") -> dict[str, Any]:
    """Scores a model must beat, on ``split``: copy the English input (BLEU, chrF) for translation; the
    first sentence, and the first N words (N = the mean train synopsis length), of the description
    (ROUGE) for summarization; the train majority section (accuracy) for classification."""
    out: dict[str, Any] = {"split": split}
    try:
        for name, recs in data.items():
            test = recs.get(split, [])
            if not test:
                continue
            if name.startswith("en-"):
                lang = name[3:]
                src, ref = [r["en"] for r in test], [r[lang] for r in test]
                b, c = metrics.bleu(src, ref), metrics.chrf(src, ref)
                out[f"ddtp_en_{lang}"] = {"copy_bleu": round(b.score, 2), "copy_chrf": round(c.score, 2),
                                          "records": len(test), "bleu_signature": b.signature}
            elif name == "summarize":
                refs = [r["synopsis"] for r in test]
                train = recs["train"] or test
                n = max(1, round(sum(len(r["synopsis"].split()) for r in train) / len(train)))
                types = ("rouge1", "rouge2", "rougeL")
                lead = metrics.rouge([_first_sentence(r["description"]) for r in test], refs, types)
                words = metrics.rouge([" ".join(r["description"].split()[:n]) for r in test], refs, types)
                out["ddtp_summarize"] = {"lead_sentence": {k: round(v, 2) for k, v in lead.items()},
                                         f"lead_{n}_words": {k: round(v, 2) for k, v in words.items()},
                                         "records": len(test)}
            elif name == "section":
                majority = Counter(r["section"] for r in (recs["train"] or test)).most_common(1)[0][0]
                acc = 100.0 * sum(r["section"] == majority for r in test) / len(test)
                out["ddtp_section"] = {"majority_class": majority, "majority_accuracy": round(acc, 2),
                                       "records": len(test)}
    except T5kitError as err:  # sacrebleu / rouge-score not installed: say how to get the numbers
        out["not_computed"] = str(err)
    return out


# -- the importer ----------------------------------------------------------------------------------


def _tasks_yaml(langs: Sequence[str], section_words: dict[str, str]) -> str:
    def sources(d: str) -> str:
        return "{" + ", ".join(f"{s}: {d}/{s}.jsonl" for s in SPLITS) + "}"

    lines = ["tasks:"]
    for lang in langs:
        lines += [f"  - name: ddtp_en_{lang}", "    kind: translation", "    source_lang: en",
                  f"    target_lang: {lang}", f"    source: {sources('en-' + lang)}"]
    lines += ["  - name: ddtp_summarize", "    kind: summarization", "    text_field: description",
              "    summary_field: synopsis", f"    source: {sources('summarize')}"]
    words = ", ".join(f"{k!r}: {v!r}" for k, v in sorted(section_words.items()))
    lines += ["  - name: ddtp_section", "    kind: classification", "    prefix: debian section",
              "    text_fields: [description]", "    label_field: section", f"    label_words: {{{words}}}",
              f"    source: {sources('section')}"]
    return "\n".join(lines) + "\n"


def import_ddtp(
    out: str | Path, langs: Sequence[str] = ("fr", "de"), lists_dir: str | Path | None = None,
    fetch: bool = False,
) -> dict[str, Any]:
    """Write ``OUT/{en-<lang>,summarize,section}/{train,validation,test}.jsonl``, ``tasks.yaml`` and
    ``manifest.json`` (counts, split rule, baselines, sources, licence note); returns the manifest.

    Reads the index files in ``lists_dir`` (default ``/var/lib/apt/lists``); with ``fetch`` first runs
    ``apt-get update`` per language (root) into ``OUT/apt-lists`` and reads those."""
    out = Path(out)
    langs = list(dict.fromkeys(langs))
    if fetch:
        lists_dir = fetch_lists(out / "apt-lists", langs)
    lists = Path(lists_dir or APT_LISTS)
    if not lists.is_dir():
        raise DataError(f"apt lists directory {lists} does not exist: give --lists-dir, or --fetch as root")
    english = read_translations(lists, "en")
    translations = {lang: read_translations(lists, lang) for lang in langs}
    packages = read_packages(lists)
    data, stats = build_records(english, translations, packages)
    counts = {name: {s: write_jsonl(out / name / f"{s}.jsonl", recs[s]) for s in SPLITS}
              for name, recs in data.items()}
    words = {s: SECTION_WORDS.get(s, s) for s in stats["sections"]}
    write_text(out / "tasks.yaml", _tasks_yaml(langs, words))
    manifest: dict[str, Any] = {
        "kind": "ddtp", "langs": langs,
        "tasks": {**{f"ddtp_en_{lang}": f"translate English to {lang}: synopsis and paragraph pairs"
                     for lang in langs},
                  "ddtp_summarize": "summarize: <long description> -> synopsis",
                  "ddtp_section": "debian section description: <description> -> section word"},
        "records": counts, "stats": stats,
        "split": "by source package: sha256 of the source package name (split_by_package), "
                 "90% train, 5% validation, 5% test; an input text that several source packages share "
                 "(boilerplate) is kept once, in the earliest of their splits (train < validation < test), "
                 "so no test input is in train",
        "baselines": baselines(data),
        "apt_source": {"lists_dir": str(lists),
                       "files": sorted(p.name for p in lists.glob("*_Translation-*"))
                       + sorted(p.name for p in lists.glob("*_Packages*"))},
        "licence": LICENCE_NOTE,
    }
    write_manifest(out, manifest)
    return manifest
