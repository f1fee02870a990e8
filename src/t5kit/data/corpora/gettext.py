"""English -> French/German pairs from the gettext catalogues installed on a Debian machine.

Every translated program ships ``/usr/share/locale/<lang>/LC_MESSAGES/<domain>.mo``: compiled pairs of an
English message and its translation, written by human translators. They are short (menu items, error
messages, help text) but real and license-clean (each package's own licence, listed in the manifest).

Cleaning, and why:
- accelerator marks (``_File`` in GTK, ``&File`` in Qt/KDE, ``(_F)`` suffixes) are keyboard hints, not
  text: removed on both sides;
- printf placeholders (``%s``, ``%1$d``, ``%(name)s``, ``%<PRIu64>``, ``{0}``) are kept verbatim so the model
  learns to copy them, but a pair whose two sides do not hold the same placeholders is dropped
  (``--placeholders drop`` drops every pair that has any);
- identical source and target (untranslated copies), empty translations, strings without letters and
  over-long strings are dropped;
- de-duplication: one target per English source, the one most catalogues agree on (ties: the
  lexicographically smallest), so an evaluation reference is unambiguous;
- the split (90/5/5) comes from a hash of the English string: a string never crosses splits, and the
  same English string is in the same split for French and German. ``split_by="package"`` holds out whole
  catalogues instead (:func:`split_by_package` of the domain, the catalogue's file name, which is the
  package's gettext name): a string shared by domains on different sides goes to the earliest of their
  splits (train, then validation, then test), so a test string is never seen in training and a test
  score measures packages the model has not read. The string split stays the default because the
  built-in model recipe and its published scores were made with it.
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter, defaultdict
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
    write_jsonl,
    write_manifest,
)
from t5kit.errors import DataError
from t5kit.io import write_text

LOCALE_DIR = "/usr/share/locale"
SPLIT_RULES = {
    "string": "sha256 of the English string: 90% train, 5% validation, 5% test",
    "package": "by package: sha256 of each catalogue's domain (split_by_package), 90/5/5; a string in "
               "domains on several sides goes to the earliest (train < validation < test)",
}

_PRINTF = re.compile(
    r"%%"
    r"|%\([A-Za-z_][\w.]*\)[-+ #0]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]"
    r"|%<\w+>"
    r"|%(?:\d+\$)?[-+ #0'I]*(?:\d+|\*(?:\d+\$)?)?(?:\.(?:\d+|\*(?:\d+\$)?))?(?:hh|h|ll|l|L|q|j|z|Z|t)?"
    r"[diouxXeEfFgGaAcCsSpnm]"
    r"|\{[A-Za-z_0-9]*\}"
)
_PAREN_ACCEL = re.compile(r"\s*\((?:_|&)[A-Za-z0-9]\)")


def read_mo(path: str | Path) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Parse a compiled gettext catalogue: (header fields, [(msgid, msgstr)]) for singular messages.

    Contexts (``ctxt\\x04msgid``) are stripped; for plural entries the singular form and the first
    translation are kept. The charset comes from the header.
    """
    data = Path(path).read_bytes()
    if len(data) < 28:
        raise DataError(f"{path}: too short to be a gettext .mo file")
    magic = struct.unpack("<I", data[:4])[0]
    if magic == 0x950412DE:
        end = "<"
    elif magic == 0xDE120495:
        end = ">"
    else:
        raise DataError(f"{path}: not a gettext .mo file (bad magic number)")
    _, n, orig, trans = struct.unpack(end + "4I", data[4:20])
    raw = []
    for i in range(n):
        ol, oo = struct.unpack(end + "2I", data[orig + 8 * i : orig + 8 * i + 8])
        tl, to = struct.unpack(end + "2I", data[trans + 8 * i : trans + 8 * i + 8])
        raw.append((data[oo : oo + ol], data[to : to + tl]))
    header: dict[str, str] = {}
    charset = "utf-8"
    for mid, mstr in raw:
        if mid == b"":
            for line in mstr.decode("utf-8", errors="replace").splitlines():
                if ":" in line:
                    k, v = line.split(":", 1)
                    header[k.strip().lower()] = v.strip()
            m = re.search(r"charset=([\w.-]+)", header.get("content-type", ""))
            if m and m.group(1).upper() not in ("CHARSET", "ASCII"):
                charset = m.group(1)
    pairs = []
    for mid, mstr in raw:
        if mid == b"":
            continue
        try:
            source = mid.decode(charset)
            target = mstr.decode(charset)
        except (UnicodeDecodeError, LookupError):
            continue
        source = source.split("\x04", 1)[-1].split("\x00", 1)[0]
        target = target.split("\x00", 1)[0]
        pairs.append((source, target))
    return header, pairs


def strip_accelerators(text: str) -> str:
    """Remove keyboard accelerator marks: ``_File``/``Fi_le``, ``&File``, ``(_F)``; ``&&`` -> ``&``.

    An underscore between two lower-case letters in a lower-case word (``file_name``) is an identifier,
    not an accelerator, and stays; so do strings with several underscores."""
    text = _PAREN_ACCEL.sub("", text)
    if text.count("_") == 1:
        i = text.index("_")
        nxt = text[i + 1 : i + 2]
        prev = text[i - 1 : i]
        if nxt.isalnum():
            start = text.rfind(" ", 0, i) + 1
            stop = text.find(" ", i)
            word = text[start : stop if stop >= 0 else len(text)]
            identifier = prev.islower() and nxt.islower() and word.replace("_", "").islower() and len(word) > 1
            if not identifier or word[0] == "_":
                text = text[:i] + text[i + 1 :]
    if "&" in text:
        amps = [m.start() for m in re.finditer(r"(?<!&)&(?=[^\W_])(?![a-zA-Z]+;|#\d+;)", text)]
        if len(amps) == 1 and "&&" not in text.replace("&&", "", 1):
            i = amps[0]
            text = text[:i] + text[i + 1 :]
        text = text.replace("&&", "&")
    return text


def placeholders(text: str) -> Counter:
    """The multiset of placeholders (conversion only: widths and ``N$`` positions may differ)."""
    out: Counter = Counter()
    for m in _PRINTF.finditer(text):
        tok = m.group(0)
        if tok == "%%":
            continue
        if tok.startswith("%(") or tok.startswith("%<") or tok.startswith("{"):
            out[tok] += 1
            continue
        conv = re.sub(r"^%(?:\d+\$)?[-+ #0'I]*(?:\d+|\*(?:\d+\$)?)?(?:\.(?:\d+|\*(?:\d+\$)?))?", "%", tok)
        out[conv] += 1
    return out


def clean_pair(source: str, target: str, mode: str = "keep", max_chars: int = 400) -> tuple[str, str] | str:
    """The cleaned pair, or the reason (a short string) it is dropped."""
    s = strip_accelerators(source).strip()
    t = strip_accelerators(target).strip()
    if not t:
        return "untranslated"
    if not any(c.isalpha() for c in s):
        return "no_letters"
    if len(s) > max_chars or len(t) > 2 * max_chars:
        return "too_long"
    if s == t:
        return "identical"
    ps, pt = placeholders(s), placeholders(t)
    if ps != pt:
        return "placeholder_mismatch"
    if mode == "drop" and ps:
        return "has_placeholders"
    return s, t


def _catalogues(locale_dir: Path, lang: str) -> list[Path]:
    return sorted((locale_dir / lang / "LC_MESSAGES").glob("*.mo"))


def collect_pairs(
    locale_dir: str | Path = LOCALE_DIR, lang: str = "fr", placeholder_mode: str = "keep", max_chars: int = 400
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """De-duplicated pairs for one language: {english: {"target", "domains"}} and statistics."""
    locale_dir = Path(locale_dir)
    files = _catalogues(locale_dir, lang)
    candidates: dict[str, Counter] = defaultdict(Counter)
    domains: dict[str, set[str]] = defaultdict(set)
    dropped: Counter = Counter()
    raw_pairs = 0
    for mo in files:
        try:
            _, pairs = read_mo(mo)
        except DataError:
            dropped["unreadable_catalogue"] += 1
            continue
        for source, target in pairs:
            raw_pairs += 1
            res = clean_pair(source, target, placeholder_mode, max_chars)
            if isinstance(res, str):
                dropped[res] += 1
                continue
            candidates[res[0]][res[1]] += 1
            domains[res[0]].add(mo.stem)
    chosen = {}
    duplicates = 0
    for s, counts in candidates.items():
        best = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        duplicates += sum(counts.values()) - 1
        chosen[s] = {"target": best, "domains": sorted(domains[s]), "alternatives": len(counts) - 1}
    stats = {"catalogues": len(files), "raw_pairs": raw_pairs, "dropped": dict(sorted(dropped.items())),
             "duplicates_merged": duplicates, "unique_sources": len(chosen)}
    return chosen, stats


def import_gettext(
    out: str | Path,
    langs: Sequence[str] = ("fr", "de"),
    locale_dir: str | Path = LOCALE_DIR,
    placeholder_mode: str = "keep",
    max_chars: int = 400,
    source_lang: str = "en",
    split_by: str = "string",
) -> dict[str, Any]:
    """Write ``OUT/en-<lang>/{train,validation,test}.jsonl`` (records ``{"en", "<lang>", "domains"}``), a
    ``tasks.yaml`` declaring one translation task per pair, and ``manifest.json``; returns the manifest.

    ``split_by``: ``"string"`` (a hash of the English string) or ``"package"`` (held-out catalogues)."""
    if placeholder_mode not in ("keep", "drop"):
        raise DataError(f"placeholders must be 'keep' or 'drop', got {placeholder_mode!r}")
    if split_by not in SPLIT_RULES:
        raise DataError(f"split_by must be one of {', '.join(SPLIT_RULES)}, got {split_by!r}")
    locale_dir = require_package(locale_dir, "gettext-base (or any translated package)", "gettext locale directory")
    out = Path(out)
    manifest: dict[str, Any] = {"kind": "gettext", "source_lang": source_lang, "locale_dir": str(locale_dir),
                                "split": SPLIT_RULES[split_by], "split_by": split_by,
                                "placeholders": placeholder_mode, "pairs": {}, "stats": {}}
    all_files: list[Path] = []
    tasks_yaml = ["tasks:"]
    collected = {}
    for lang in langs:
        files = _catalogues(locale_dir, lang)
        if not files:
            raise DataError(f"no gettext catalogues for language {lang!r} under {locale_dir}/{lang}/LC_MESSAGES; "
                            f"install translated packages or pick another --lang")
        all_files.extend(files)
        collected[lang] = collect_pairs(locale_dir, lang, placeholder_mode, max_chars)
    # by package, every language's domains of a string count, so it lands on one side for all of them
    domains: dict[str, set[str]] = defaultdict(set)
    for chosen, _ in collected.values():
        for s, rec in chosen.items():
            domains[s].update(rec["domains"])

    def split(s: str) -> str:
        if split_by == "string":
            return split_of(s)
        return min((split_by_package(d) for d in domains[s]), key=SPLITS.index)

    for lang, (chosen, stats) in collected.items():
        by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        for s in sorted(chosen):
            by_split[split(s)].append({source_lang: s, lang: chosen[s]["target"],
                                       "domains": chosen[s]["domains"]})
        pair = f"{source_lang}-{lang}"
        manifest["pairs"][pair] = {split: write_jsonl(out / pair / f"{split}.jsonl", recs)
                                   for split, recs in by_split.items()}
        manifest["stats"][pair] = stats
        tasks_yaml += [
            f"  - name: gettext_{source_lang}_{lang}",
            "    kind: translation",
            f"    source_lang: {source_lang}",
            f"    target_lang: {lang}",
            "    source: {" + ", ".join(f"{s}: {pair}/{s}.jsonl" for s in SPLITS) + "}",
        ]
    owners = owning_packages(all_files)
    packages = sorted(set(owners.values()))
    manifest["source_packages"] = {p: package_licence(p) for p in packages}
    manifest["catalogues_without_package"] = len([f for f in all_files if str(f) not in owners])
    write_text(out / "tasks.yaml", "\n".join(tasks_yaml) + "\n")
    write_manifest(out, manifest)
    return manifest


def iter_pairs(out: str | Path, lang: str, split: str, source_lang: str = "en") -> Iterator[dict[str, Any]]:
    """Read back one split written by :func:`import_gettext`."""
    with open(Path(out) / f"{source_lang}-{lang}" / f"{split}.jsonl", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
