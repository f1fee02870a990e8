"""Batch-encoding throughput: t5kit vs transformers' T5Tokenizer vs plain SentencePiece, same lines, same ids.

Usage (from the repository root):

    .venv/bin/python benchmarks/tokenizer_speed.py --lines 20000 --threads 2

The lines are real text gathered from this machine (man pages, licences, gettext catalogues), the same
way the tokenizer tests gather them. Every contender turns the same list of lines into the same list of
id lists (SentencePiece ids + EOS); the script checks that before timing. Reported: the best of
``--repeats`` runs, lines/s, and t5kit's speed relative to each contender (> 1 means t5kit is faster).

Contenders:
  transformers T5Tokenizer   ``tok(lines)["input_ids"]``, built from spiece.model (5.x: the Rust
                             ``tokenizers`` backend, multi-threaded, limited to --threads via RAYON_NUM_THREADS)
  sentencepiece, per line    ``[sp.encode(line) + [1] for line in lines]``: how the original T5 pipeline
                             and most scripts call SentencePiece
  sentencepiece, batch API   ``sp.encode(lines, add_eos=True, num_threads=N)``: the C++ batch call t5kit
                             itself makes; t5kit adds a scan for inline special tokens, and saves work
                             by encoding each distinct line once (real text repeats: see --distinct)
"""

from __future__ import annotations

import os
import sys

# This file is named like the standard library's ``tokenize`` module, which torch and transformers import:
# drop the script's folder from the import path before anything else is imported.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import gettext  # noqa: E402
import gzip  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

DEFAULT_VOCAB = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "t5-vocab"  # spiece.model + tokenizer.json


def gather_lines(n: int, max_chars: int = 2000, distinct: bool = False) -> list[str]:
    """``n`` real lines from this machine: man pages, licences, gettext catalogues (deterministic).

    Real text repeats itself (roff macros, country names in every language); ``distinct`` keeps only
    the first occurrence of each line, to time the case where no line repeats.
    """
    per_page = 400 if distinct else 60
    man: list[str] = []
    for path in sorted(Path("/usr/share/man").glob("*/*.gz")):
        try:
            text = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        except (OSError, EOFError):
            continue
        man.extend(line for line in text.splitlines()[:per_page] if line.strip())
        if len(man) >= 2 * n:
            break
    licences: list[str] = []
    root = Path("/usr/share/common-licenses")
    if root.is_dir():
        for path in sorted(p for p in root.iterdir() if p.is_file()):
            licences.extend(line for line in path.read_text("utf-8", "replace").splitlines() if line.strip())
    messages: list[str] = []
    for path in sorted(Path("/usr/share/locale").glob("*/LC_MESSAGES/*.mo")):
        try:
            with open(path, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog
        except (OSError, UnicodeDecodeError):
            continue
        messages.extend(v for _k, v in sorted((str(k), v) for k, v in catalog.items() if k and isinstance(v, str)))
        if len(messages) >= 2 * n:
            break
    if distinct:
        man, licences, messages = (list(dict.fromkeys(src)) for src in (man, licences, messages))
        seen = set(man)
        licences = [line for line in licences if line not in seen]
        seen.update(licences)
        messages = [line for line in messages if line not in seen]
    # a third from each source (as far as they go), interleaved
    sources = [man, licences, messages]
    out: list[str] = []
    for group in zip(*(src + [None] * (n - len(src)) for src in sources)):
        out.extend(line[:max_chars] for line in group if line is not None)
        if len(out) >= n:
            break
    if len(out) < n:  # one source ran short: top up from the others, in order
        taken = set(out) if distinct else None
        for line in (line[:max_chars] for src in sources for line in src):
            if len(out) >= n:
                break
            if taken is None or line not in taken:
                out.append(line)
                if taken is not None:
                    taken.add(line)
    return out[:n]


def best_of(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up (and the result, for the equality check)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20000, help="number of real lines (default 20000)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every contender (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender; best is kept")
    parser.add_argument("--vocab", type=Path, default=DEFAULT_VOCAB, help="directory holding spiece.model")
    parser.add_argument("--no-fast", action="store_true", help="skip T5TokenizerFast from tokenizer.json")
    parser.add_argument(
        "--distinct", action="store_true", help="no repeated lines (t5kit encodes a repeated text only once)"
    )
    args = parser.parse_args(argv)

    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before tokenizers starts its thread pool
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    import sentencepiece
    import transformers

    from t5kit.tokenizer import Tokenizer

    spiece = args.vocab / "spiece.model"
    if not spiece.is_file():
        print(f"no {spiece}: pass --vocab DIR holding the T5 spiece.model", file=sys.stderr)
        return 2
    start = time.perf_counter()
    lines = gather_lines(args.lines, distinct=args.distinct)
    print(
        f"{len(lines)} real lines, {len(set(lines))} distinct ({sum(map(len, lines)) / 1e6:.2f} M chars) "
        f"in {time.perf_counter() - start:.1f}s"
    )
    print(f"threads {args.threads}; best of {args.repeats}; transformers {transformers.__version__}, "
          f"sentencepiece {sentencepiece.__version__}")  # fmt: skip

    ours = Tokenizer.from_pretrained(args.vocab, num_threads=args.threads)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spiece))
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(spiece, Path(tmp) / "spiece.model")
        hf = transformers.T5Tokenizer.from_pretrained(tmp)
    contenders = {
        "t5kit Tokenizer.batch_encode": lambda: ours.batch_encode(lines),
        "transformers T5Tokenizer": lambda: hf(lines)["input_ids"],
        "sentencepiece, per line": lambda: [sp.encode(line) + [1] for line in lines],
        "sentencepiece, batch API": lambda: sp.encode(lines, add_eos=True, num_threads=args.threads),
    }
    if not args.no_fast and (args.vocab / "tokenizer.json").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(args.vocab / "tokenizer.json", Path(tmp) / "tokenizer.json")
            fast = transformers.T5TokenizerFast.from_pretrained(tmp)
        contenders["transformers T5TokenizerFast (tokenizer.json)"] = lambda: fast(lines)["input_ids"]

    results: dict[str, float] = {}
    reference = None
    for name, fn in contenders.items():
        seconds, ids = best_of(fn, args.repeats)
        if reference is None:
            reference = ids
        same = sum(a == b for a, b in zip(ids, reference))  # type: ignore[arg-type]
        results[name] = seconds
        rate = len(lines) / seconds
        print(f"{name:48s} {seconds * 1000:9.1f} ms  {rate:12,.0f} lines/s  same ids {same}/{len(lines)}")

    t5kit = results["t5kit Tokenizer.batch_encode"]
    print("\nt5kit speed relative to each (> 1: t5kit faster)")
    for name, seconds in results.items():
        if not name.startswith("t5kit"):
            print(f"  vs {name:46s} {seconds / t5kit:6.2f}x")
    best_other = min(results["transformers T5Tokenizer"], results["sentencepiece, per line"])
    print(f"  vs the faster of transformers T5Tokenizer and plain SentencePiece (per line): {best_other / t5kit:.2f}x")

    # the model-ready form: padded tensors, truncated to 512
    t_ours, _ = best_of(lambda: ours(lines, truncation=True, max_length=512), max(1, args.repeats // 2))
    t_hf, _ = best_of(
        lambda: hf(lines, padding=True, truncation=True, max_length=512, return_tensors="pt"), max(1, args.repeats // 2)
    )
    print(f"\npadded torch tensors (max_length 512): t5kit {len(lines) / t_ours:,.0f} lines/s, "
          f"transformers {len(lines) / t_hf:,.0f} lines/s: {t_hf / t_ours:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
