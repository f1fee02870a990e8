"""Shared pieces of the corpus importers: hash splits, owning packages, licences, jsonl and manifests."""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from t5kit.errors import DataError
from t5kit.io import write_json
from t5kit.io import write_jsonl as write_jsonl  # the importers write their splits through it

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.90, 0.05, 0.05)


def split_of(key: str, fractions: Sequence[float] = DEFAULT_FRACTIONS, salt: str = "t5kit") -> str:
    """Deterministic split of ``key`` by its SHA-256: the same string lands in the same split on every
    machine and in every language pair, so a source string can never cross splits."""
    h = int.from_bytes(hashlib.sha256(f"{salt}\x00{key}".encode()).digest()[:8], "big") / 2.0**64
    acc = 0.0
    for name, frac in zip(SPLITS, fractions):
        acc += frac
        if h < acc:
            return name
    return SPLITS[len(fractions) - 1]


def split_by_package(name: str, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """Held-out split of everything that comes from the (source) package ``name``: the same hash and
    proportions as :func:`split_of`, keyed on the package, so no package has text on two sides and a
    test score measures text from packages the model never saw."""
    return split_of(name, fractions, salt="t5kit-package")


def require_package(path: str | os.PathLike, package: str, what: str) -> Path:
    """``path``, or a DataError naming the apt package that provides it."""
    p = Path(path)
    if not p.exists():
        raise DataError(
            f"{what} not found at {p}: install the Debian package with 'apt-get install {package}' "
            f"(or point the importer at another location)"
        )
    return p


def owning_packages(paths: Iterable[str | os.PathLike], dpkg_info: str = "/var/lib/dpkg/info") -> dict[str, str]:
    """Map each path to the Debian package that installed it (reads dpkg's file lists once)."""
    wanted = {os.path.realpath(str(p)) for p in paths} | {str(p) for p in paths}
    found: dict[str, str] = {}
    for lst in glob.glob(os.path.join(dpkg_info, "*.list")):
        pkg = os.path.basename(lst)[: -len(".list")].split(":")[0]
        try:
            with open(lst, encoding="utf-8", errors="replace") as f:
                for line in f:
                    line = line.rstrip("\n")
                    if line in wanted:
                        found[line] = pkg
        except OSError:
            continue
    return found


def package_licence(package: str, doc_root: str = "/usr/share/doc") -> str:
    """The licence names in the package's machine-readable copyright file (or a pointer to the file)."""
    path = Path(doc_root) / package / "copyright"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown (no copyright file)"
    names = []
    for m in re.finditer(r"^License:[ \t]*(\S[^\n]*)$", text, flags=re.M):
        name = m.group(1).strip()
        if name not in names:
            names.append(name)
    return ", ".join(names[:6]) if names else f"see {path}"


def write_manifest(out: Path, manifest: dict[str, Any]) -> Path:
    """``out/manifest.json`` (indented, non-ASCII kept), written atomically."""
    return write_json(Path(out) / "manifest.json", manifest)
