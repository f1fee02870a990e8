"""WordNet definitions: ``"define: word"`` -> gloss, from the Debian package ``wordnet-base``; and the same
records as a labelled task, ``wordnet_pos`` (a gloss -> its part of speech), for classification.

One record per lemma, with the gloss of its most frequent sense (WordNet lists senses by frequency; across
parts of speech the one with the most sense-tagged occurrences wins, ties noun > verb > adjective >
adverb), so each input has one target; all senses are kept in ``senses`` for other uses. Usage examples
(the quoted parts of a gloss) go to ``examples``. The split is a hash of the lemma.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from t5kit.data.corpora.common import SPLITS, package_licence, require_package, split_of, write_jsonl, write_manifest
from t5kit.io import write_text

WORDNET_DIR = "/usr/share/wordnet"
POS_FILES = (("noun", "noun"), ("verb", "verb"), ("adj", "adjective"), ("adv", "adverb"))


def split_gloss(gloss: str) -> tuple[str, list[str]]:
    """``'a domestic dog; "the dog barked"'`` -> ("a domestic dog", ["the dog barked"])."""
    examples = re.findall(r'"([^"]+)"', gloss)
    definition = re.split(r';\s*"', gloss, maxsplit=1)[0].strip().rstrip(";").strip()
    return definition, examples


def _read_data(path: Path) -> dict[int, str]:
    glosses = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  ") or "|" not in line:
                continue  # licence header lines start with two spaces
            head, gloss = line.split("|", 1)
            glosses[int(head.split(" ", 1)[0])] = gloss.strip()
    return glosses


def read_wordnet(wordnet_dir: str | Path = WORDNET_DIR) -> list[dict[str, Any]]:
    """All lemmas with their senses, sorted by lemma."""
    root = require_package(wordnet_dir, "wordnet-base", "WordNet database")
    lemmas: dict[str, list[tuple[int, int, str, list[tuple[str, list[str]]]]]] = {}
    for order, (suffix, pos) in enumerate(POS_FILES):
        data = require_package(root / f"data.{suffix}", "wordnet-base", "WordNet data file")
        glosses = _read_data(data)
        with open(root / f"index.{suffix}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                parts = line.split()
                lemma, synset_cnt, p_cnt = parts[0], int(parts[2]), int(parts[3])
                tagged = int(parts[5 + p_cnt])
                offsets = [int(x) for x in parts[6 + p_cnt : 6 + p_cnt + synset_cnt]]
                senses = [split_gloss(glosses[o]) for o in offsets if o in glosses]
                if senses:
                    lemmas.setdefault(lemma, []).append((tagged, order, pos, senses))
    out = []
    for lemma in sorted(lemmas):
        entries = sorted(lemmas[lemma], key=lambda e: (-e[0], e[1]))
        _, _, pos, senses = entries[0]
        out.append({
            "word": lemma.replace("_", " "),
            "pos": pos,
            "definition": senses[0][0],
            "examples": senses[0][1],
            "senses": [{"pos": p, "definition": d} for _, _, p, ss in entries for d, _ in ss],
        })
    return out


def import_wordnet(out: str | Path, wordnet_dir: str | Path = WORDNET_DIR) -> dict[str, Any]:
    """Write ``OUT/{train,validation,test}.jsonl``, ``tasks.yaml`` and ``manifest.json``."""
    out = Path(out)
    records = [r for r in read_wordnet(wordnet_dir) if r["definition"]]
    by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for r in records:
        by_split[split_of(r["word"])].append(r)
    counts = {s: write_jsonl(out / f"{s}.jsonl", recs) for s, recs in by_split.items()}
    sources = "{" + ", ".join(f"{s}: {s}.jsonl" for s in SPLITS) + "}"
    words = ", ".join(f"{pos}: {pos}" for _, pos in POS_FILES)
    write_text(
        out / "tasks.yaml",
        f"tasks:\n  - name: wordnet_define\n    kind: definition\n    source: {sources}\n"
        # the part of speech of a gloss: a real labelled task (rank classification, t5kit eval --rank)
        f"  - name: wordnet_pos\n    kind: classification\n    prefix: wordnet pos\n    text_fields: [definition]\n"
        f"    label_field: pos\n    label_words: {{{words}}}\n    source: {sources}\n",
    )
    manifest = {
        "kind": "wordnet", "task": "define: <word> -> gloss of the most frequent sense",
        "tasks": {"wordnet_define": "define: <word> -> gloss",
                  "wordnet_pos": "wordnet pos definition: <gloss> -> noun / verb / adjective / adverb"},
        "definitions": counts, "total": sum(counts.values()),
        "split": "sha256 of the word: 90% train, 5% validation, 5% test",
        "source_packages": {"wordnet-base": package_licence("wordnet-base")},
    }
    write_manifest(out, manifest)
    return manifest
