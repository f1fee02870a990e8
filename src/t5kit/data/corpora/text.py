"""Plain English text for span-corruption pre-training, from documentation already on a Debian machine.

Sources (each optional, named by the apt package that provides it):
- ``man``: the English manual pages in ``/usr/share/man/man[1-9]`` (package ``man-db`` plus whatever
  installed the pages), roff markup stripped;
- ``gcide``: the GNU Collaborative International Dictionary of English (``dict-gcide``), one document
  per entry;
- ``handbook``: The Debian Administrator's Handbook (``debian-handbook``), English HTML, one document
  per chapter.

Output: ``OUT/{train,validation,test}.jsonl`` records ``{"text", "source"}`` (split 98/1/1 by a hash of
the document id), ``tasks.yaml`` declaring a span-corruption task and ``manifest.json`` with documents,
characters and bytes per source and split.

``split_by="package"`` holds out by package instead: a manual page goes to the split of the Debian package
that installed it (:func:`split_by_package`, same 98/1/1), so the pages of one package, which share their
boilerplate (options, "see also", the same authors' phrasing), are never on two sides; a page no package owns
keeps its document split. The dictionary and the handbook are each one package: held out by package, either
would lie whole in one split, so they keep the document split (entries, chapters) and the manifest says so.
"""

from __future__ import annotations

import contextlib
import gzip
import html.parser
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from t5kit.data.corpora.common import (
    SPLITS,
    owning_packages,
    package_licence,
    require_package,
    split_by_package,
    split_of,
    write_manifest,
)
from t5kit.errors import DataError, closest_names
from t5kit.io import atomic_open, write_text

MAN_DIR = "/usr/share/man"
GCIDE_DIR = "/usr/share/dictd"
HANDBOOK_DIR = "/usr/share/doc/debian-handbook/html/en-US"
TEXT_SOURCES = ("man", "gcide", "handbook")
TEXT_FRACTIONS = (0.98, 0.01, 0.01)
SPLIT_BY = ("document", "package")
DPKG_INFO = "/var/lib/dpkg/info"

_ROFF_ESCAPES = [
    (re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)"), ""),
    (re.compile(r"\\s[+-]?\d"), ""),
    (re.compile(r"\\\*(?:\[[^\]]*\]|\(..|.)"), ""),
    (re.compile(r"\\\((?:em|en)"), "-"),
    (re.compile(r"\\\((?:aq|cq|oq)"), "'"),
    (re.compile(r"\\\((?:dq|lq|rq)"), '"'),
    (re.compile(r"\\\(bu"), "*"),
    (re.compile(r"\\\(..|\\\[[^\]]*\]"), ""),
    (re.compile(r"\\[-]"), "-"),
    (re.compile(r"\\[e\\]"), "\\\\"),
    (re.compile(r"\\[&|^%c:]"), ""),
    (re.compile(r"\\ "), " "),
    (re.compile(r"\\[ntkhvwoXNZ]'[^']*'"), ""),
]
_TEXT_MACROS = {"B", "I", "BR", "BI", "IB", "IR", "RB", "RI", "SM", "SB", "SH", "SS", "Nm", "Nd", "Sh", "Ss"}


def roff_to_text(src: str) -> str:
    """Readable text from a man page's roff source: macros dropped or unwrapped, escapes resolved."""
    paras: list[str] = []
    cur: list[str] = []

    def flush() -> None:
        if cur:
            paras.append(" ".join(cur))
            cur.clear()

    for line in src.splitlines():
        if line.startswith(('.\\"', "'\\\"", '.\\\\"')) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            parts = line[1:].strip().split(None, 1)
            if not parts:
                continue
            macro, rest = parts[0], parts[1] if len(parts) > 1 else ""
            if macro in ("SH", "SS", "Sh", "Ss"):
                flush()
                cur.append(rest.strip('"'))
                flush()
            elif macro in _TEXT_MACROS and rest:
                words = re.findall(r'"([^"]*)"|(\S+)', rest)
                joiner = " " if macro in ("B", "I", "SM", "SB", "Nm", "Nd") else ""
                cur.append(joiner.join(a or b for a, b in words))
            elif macro in ("PP", "P", "LP", "TP", "IP", "Pp", "sp", "br", "HP", "RS", "RE"):
                flush()
                if macro == "IP" and rest:
                    cur.append(rest.split('"')[1] if rest.startswith('"') else rest.split()[0])
            continue
        if line.strip():
            cur.append(line.strip())
        else:
            flush()
    flush()
    text = "\n\n".join(paras)
    for pat, rep in _ROFF_ESCAPES:
        text = pat.sub(rep, text)
    text = re.sub(r"(?m)^[ \t]*[{}][{} \t]*$\n?", "", text.replace("\\", ""))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def iter_man(man_dir: str | Path = MAN_DIR, limit: int | None = None) -> Iterator[tuple[str, str, Path]]:
    root = require_package(man_dir, "man-db (and manpages)", "manual page directory")
    files = sorted(p for p in root.glob("man[1-9]*/*") if p.is_file())
    n = 0
    for p in files:
        try:
            raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        except (OSError, EOFError):
            continue
        src = raw.decode("utf-8", errors="replace")
        if src.lstrip().startswith(".so ") and len(src) < 200:
            continue  # a redirect to another page
        text = roff_to_text(src)
        if len(text) < 200:
            continue
        yield f"man:{p.name.removesuffix('.gz')}", text, p
        n += 1
        if limit is not None and n >= limit:
            return


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64num(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64.index(c)
    return n


def iter_gcide(gcide_dir: str | Path = GCIDE_DIR, limit: int | None = None) -> Iterator[tuple[str, str, Path]]:
    root = Path(gcide_dir)
    dz = require_package(root / "gcide.dict.dz", "dict-gcide", "GCIDE dictionary")
    index = require_package(root / "gcide.index", "dict-gcide", "GCIDE index")
    data = gzip.decompress(dz.read_bytes())  # dictzip is gzip-compatible
    seen: set[tuple[int, int]] = set()
    n = 0
    with open(index, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or parts[0].startswith("00-database"):
                continue
            off, size = _b64num(parts[1]), _b64num(parts[2])
            if (off, size) in seen:
                continue
            seen.add((off, size))
            text = data[off : off + size].decode("utf-8", errors="replace")
            text = re.sub(r"[{}]", "", text)
            text = re.sub(r"[ \t]+", " ", text).strip()
            if len(text) < 40:
                continue
            yield f"gcide:{parts[0]}:{off}", text, dz
            n += 1
            if limit is not None and n >= limit:
                return


class _HTMLText(html.parser.HTMLParser):
    _BLOCK = {"p", "div", "li", "h1", "h2", "h3", "h4", "pre", "tr", "dt", "dd", "br", "table", "section"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head") and self._skip:
            self._skip -= 1
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)

    def text(self) -> str:
        raw = "".join(self.parts)
        paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", raw)]
        return "\n\n".join(p for p in paras if p)


def html_to_text(src: str) -> str:
    parser = _HTMLText()
    parser.feed(src)
    return parser.text()


def iter_handbook(handbook_dir: str | Path = HANDBOOK_DIR, limit: int | None = None) -> Iterator[tuple[str, str, Path]]:
    root = require_package(handbook_dir, "debian-handbook", "Debian Administrator's Handbook (English HTML)")
    n = 0
    for p in sorted(root.glob("*.html")):
        text = html_to_text(p.read_text(encoding="utf-8", errors="replace"))
        if len(text) < 200:
            continue
        yield f"handbook:{p.stem}", text, p
        n += 1
        if limit is not None and n >= limit:
            return


_READERS = {"man": (iter_man, MAN_DIR), "gcide": (iter_gcide, GCIDE_DIR), "handbook": (iter_handbook, HANDBOOK_DIR)}


def import_text(
    out: str | Path,
    sources: Sequence[str] = TEXT_SOURCES,
    limit: int | None = None,
    dirs: dict[str, str] | None = None,
    split_by: str = "document",
    dpkg_info: str = DPKG_INFO,
) -> dict[str, Any]:
    """Write the pre-training text corpus; ``limit`` caps documents per source (quick trials, tests);
    ``split_by`` "document" or "package" (module doc; ``dpkg_info`` is where dpkg's file lists are)."""
    for s in sources:
        if s not in _READERS:
            raise DataError(f"unknown text source {s!r}; use {', '.join(TEXT_SOURCES)}." + closest_names(s, _READERS))
    if split_by not in SPLIT_BY:
        raise DataError(f"split_by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, Any] = {}
    used_files: set[str] = set()
    # The three splits appear together once every source was read (t5kit.io: a failed import leaves none).
    with contextlib.ExitStack() as stack:
        files = {s: stack.enter_context(atomic_open(out / f"{s}.jsonl")) for s in SPLITS}
        for name in sources:
            fn, default = _READERS[name]
            directory = (dirs or {}).get(name, default)
            page_owners: dict[str, str] = {}
            if split_by == "package" and name == "man":  # every page's package, from one read of dpkg's lists
                pages = [p for p in Path(directory).glob("man[1-9]*/*") if p.is_file()]
                page_owners = owning_packages(pages, dpkg_info)
            st = {s: {"documents": 0, "characters": 0, "bytes": 0} for s in SPLITS}
            for doc_id, text, path in fn(directory, limit=limit):
                owner = page_owners.get(str(path)) or page_owners.get(os.path.realpath(path))
                split = split_by_package(owner, TEXT_FRACTIONS) if owner else split_of(doc_id, TEXT_FRACTIONS)
                line = json.dumps({"text": text, "source": doc_id}, ensure_ascii=False)
                files[split].write(line + "\n")
                st[split]["documents"] += 1
                st[split]["characters"] += len(text)
                st[split]["bytes"] += len(text.encode("utf-8"))
                used_files.add(str(path))
            stats[name] = st
    owners = owning_packages(used_files, dpkg_info)
    pkgs = sorted(set(owners.values()))
    write_text(
        out / "tasks.yaml",
        "tasks:\n  - name: text_span_corruption\n    kind: span_corruption\n    inputs_length: 512\n"
        "    source: {" + ", ".join(f"{s}: {s}.jsonl" for s in SPLITS) + "}\n",
    )
    totals = {k: sum(st[s][k] for st in stats.values() for s in SPLITS) for k in ("documents", "characters", "bytes")}
    manifest = {
        "kind": "text", "sources": stats, "totals": totals, "limit_per_source": limit,
        "split": "sha256 of the document id: 98% train, 1% validation, 1% test" if split_by == "document" else
                 "by package: a manual page in the split of the package that installed it (sha256 of the package "
                 "name, split_by_package, 98/1/1; a page no package owns by its document id); dict-gcide and "
                 "debian-handbook are one package each and keep the document split (entries, chapters)",
        "source_packages": {p: package_licence(p) for p in pkgs},
        "files_without_package": len([f for f in used_files if f not in owners]),
    }
    write_manifest(out, manifest)
    return manifest
