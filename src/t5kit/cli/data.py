"""``t5kit data``: import offline corpora, look at data files, preview what a task feeds the model."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from itertools import islice
from typing import Any

EXAMPLE = """examples:
  t5kit data import gettext --out data/gettext --lang fr --lang de
  t5kit data import gettext --out data/gettext-pkg --split-by package
  t5kit data import ddtp --out data/ddtp --lang fr --lang de --lists-dir /tmp/apt-lists
  sudo t5kit data import ddtp --out data/ddtp --fetch
  t5kit data import wordnet --out data/wordnet
  t5kit data import text --out data/text --source man --source handbook
  t5kit data stats data/gettext/en-fr/train.jsonl
  t5kit data preview --tasks data/gettext/tasks.yaml --task gettext_en_fr -n 3
  t5kit data preview --tasks data/text/tasks.yaml --task text_span_corruption --tokenizer t5-small
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "data", help="import offline corpora, inspect data files, preview tasks",
        description="Build datasets from text on this machine, and check what tasks produce.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")

    imp = sub.add_parser("import", help="build a dataset from an offline corpus", epilog=EXAMPLE,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    isub = imp.add_subparsers(dest="corpus", metavar="CORPUS")
    g = isub.add_parser("gettext", help="English->French/German pairs from /usr/share/locale")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--lang", action="append", help="target language code (repeatable; default fr and de)")
    g.add_argument("--locale-dir", default="/usr/share/locale")
    g.add_argument("--placeholders", choices=("keep", "drop"), default="keep",
                   help="keep printf placeholders (pairs must agree on them) or drop pairs that have any")
    g.add_argument("--max-chars", type=int, default=400, help="drop English strings longer than this")
    g.add_argument("--split-by", choices=("string", "package"), default="string",
                   help="hash of the English string (default), or held-out catalogues (by package)")
    g.set_defaults(func=_import_gettext)
    d = isub.add_parser("ddtp", help="Debian package descriptions and their translations (DDTP): "
                                     "translation, summarization, section classification")
    d.add_argument("--out", required=True, help="output directory")
    d.add_argument("--lang", action="append", help="translation language (repeatable; default fr and de)")
    d.add_argument("--lists-dir", default=None,
                   help="directory holding the *_Translation-<lang> and *_Packages index files "
                        "(default /var/lib/apt/lists)")
    d.add_argument("--fetch", action="store_true",
                   help="run apt-get update once per language first (root), copying the files to OUT/apt-lists")
    d.set_defaults(func=_import_ddtp)
    w = isub.add_parser("wordnet", help="'define: word' -> gloss from wordnet-base")
    w.add_argument("--out", required=True)
    w.add_argument("--wordnet-dir", default="/usr/share/wordnet")
    w.set_defaults(func=_import_wordnet)
    t = isub.add_parser("text", help="English text for pre-training: man pages, dict-gcide, debian-handbook")
    t.add_argument("--out", required=True)
    t.add_argument("--source", action="append", choices=("man", "gcide", "handbook"),
                   help="repeatable; default all three")
    t.add_argument("--limit", type=int, default=None, help="at most this many documents per source")
    t.add_argument("--split-by", choices=("document", "package"), default="document",
                   help="hold out by document (default) or by package: a manual page in the split of the package "
                        "that installed it, so no package's pages are on two sides")
    t.set_defaults(func=_import_text)
    imp.set_defaults(func=lambda a: _usage(imp))

    st = sub.add_parser("stats", help="count records, fields and text lengths of data files")
    st.add_argument("paths", nargs="+", help="files, directories or globs (jsonl, csv, tsv, parquet, txt)")
    st.add_argument("--skip-bad", action="store_true", help="skip and count malformed records")
    st.add_argument("--limit", type=int, default=None, help="read at most this many records")
    st.set_defaults(func=_stats)

    pv = sub.add_parser("preview", help="show the first examples a task or mixture produces")
    pv.add_argument("--tasks", action="append", default=[], help="YAML/JSON task file (repeatable)")
    pv.add_argument("--task", help="task name")
    pv.add_argument("--mixture", help="mixture name")
    pv.add_argument("--split", default="train")
    pv.add_argument("-n", type=int, default=5, help="number of examples")
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--shuffle-buffer", type=int, default=0)
    pv.add_argument("--skip-bad", action="store_true")
    pv.add_argument("--tokenizer", help="tokenizer directory or name (needed for span corruption)")
    pv.add_argument("--json", action="store_true", help="one JSON object per line")
    pv.set_defaults(func=_preview)
    p.set_defaults(func=lambda a: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _print_manifest(m: dict[str, Any]) -> None:
    keep = {k: v for k, v in m.items() if k not in ("source_packages",)}
    print(json.dumps(keep, indent=2, ensure_ascii=False))
    print(f"source packages: {len(m.get('source_packages', {}))} (licences in manifest.json)")


def _import_gettext(args: argparse.Namespace) -> int:
    from t5kit.data.corpora.gettext import import_gettext

    m = import_gettext(args.out, langs=args.lang or ["fr", "de"], locale_dir=args.locale_dir,
                       placeholder_mode=args.placeholders, max_chars=args.max_chars, split_by=args.split_by)
    _print_manifest(m)
    return 0


def _import_ddtp(args: argparse.Namespace) -> int:
    from t5kit.data.corpora.ddtp import import_ddtp

    m = import_ddtp(args.out, langs=args.lang or ["fr", "de"], lists_dir=args.lists_dir, fetch=args.fetch)
    keep = {k: m[k] for k in ("records", "baselines", "split", "licence")}
    keep["stats"] = {k: v for k, v in m["stats"].items() if k != "sections"}
    keep["sections"] = len(m["stats"]["sections"])
    print(json.dumps(keep, indent=2, ensure_ascii=False))
    return 0


def _import_wordnet(args: argparse.Namespace) -> int:
    from t5kit.data.corpora.wordnet import import_wordnet

    _print_manifest(import_wordnet(args.out, args.wordnet_dir))
    return 0


def _import_text(args: argparse.Namespace) -> int:
    from t5kit.data.corpora.text import TEXT_SOURCES, import_text

    _print_manifest(import_text(args.out, sources=args.source or TEXT_SOURCES, limit=args.limit,
                                split_by=args.split_by))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from t5kit.data.sources import FileSource

    src = FileSource(args.paths, skip_bad=args.skip_bad)
    n = 0
    fields: Counter = Counter()
    chars: Counter = Counter()
    for rec in islice(src, args.limit):
        n += 1
        for k, v in rec.items():
            if not k.startswith("_"):
                fields[k] += 1
                if isinstance(v, str):
                    chars[k] += len(v)
    print(f"files: {len(src.paths)}  records: {n}  bad records skipped: {src.bad}")
    for k, c in fields.most_common():
        avg = f"  mean chars {chars[k] / c:.1f}" if chars[k] else ""
        print(f"  {k}: {c}{avg}")
    for msg in src.bad_messages[:5]:
        print(f"  bad: {msg}", file=sys.stderr)
    return 0


def _preview(args: argparse.Namespace) -> int:
    from t5kit.data.tasks import get_mixture, get_task, load_tasks
    from t5kit.errors import DataError

    for path in args.tasks:
        load_tasks(path)
    if bool(args.task) == bool(args.mixture):
        raise DataError("give exactly one of --task NAME or --mixture NAME (and --tasks FILE to declare them)")
    tokenizer = None
    if args.tokenizer:
        from t5kit.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    kw = {"tokenizer": tokenizer, "shuffle_buffer": args.shuffle_buffer, "skip_bad": args.skip_bad}
    if args.task:
        stream = get_task(args.task).stream(args.split, seed=args.seed, **kw)
    else:
        stream = get_mixture(args.mixture).stream(args.split, seed=args.seed, **kw)
    for ex in islice(stream, args.n):
        if args.json:
            print(json.dumps(ex, ensure_ascii=False))
            continue
        for key in ("inputs", "targets"):
            v = ex[key]
            if isinstance(v, list) and tokenizer is not None:
                v = f"{tokenizer.decode(v)}  [{len(v)} ids]"
            print(f"{key:>8}: {v}")
        print()
    return 0
