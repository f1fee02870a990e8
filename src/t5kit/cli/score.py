"""``t5kit score``: the log-likelihood of given targets, or rank classification into a set of choices."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from t5kit.cli.generate import add_model_arguments, load_generator, read_inputs
from t5kit.errors import DataError
from t5kit.pipeline import MAX_SCORE_INPUT_TOKENS, MAX_SCORE_TARGET_TOKENS


def _inputs_and_targets(args: argparse.Namespace) -> tuple[list[str], list[str] | None]:
    """The inputs and (unless --choices) their targets: --targets FILE beside the inputs, the --target-field of
    a .jsonl --inputs file, or ``input<TAB>target`` lines (arguments, --inputs .txt or stdin)."""
    if args.choices is not None and args.targets:
        raise DataError("give --targets (score these targets) or --choices (classify into these), not both")
    jsonl = args.inputs is not None and args.inputs.lower().endswith((".jsonl", ".json"))
    texts = read_inputs(argparse.Namespace(texts=args.texts, input=args.inputs, field=args.field))
    if args.choices is not None:
        return texts, None
    if args.targets:
        targets = read_inputs(argparse.Namespace(texts=[], input=args.targets, field=args.target_field))
        if len(targets) != len(texts):
            raise DataError(f"{len(texts)} inputs but {len(targets)} targets in {args.targets}: give one target "
                            "line per input line")
        return texts, targets
    if jsonl:
        return texts, read_inputs(argparse.Namespace(texts=[], input=args.inputs, field=args.target_field))
    name = args.inputs or ("the arguments" if args.texts else "<stdin>")
    inputs, targets = [], []
    for number, line in enumerate(texts, start=1):
        text, tab, target = line.rpartition("\t")
        if not tab:
            raise DataError(f"{name}:{number}: no TAB: each line is input<TAB>target (or give --targets FILE, or "
                            "--choices 'a,b' to classify)")
        inputs.append(text)
        targets.append(target)
    return inputs, targets


def _choices(args: argparse.Namespace) -> list[str]:
    if args.choices_file:
        return read_inputs(argparse.Namespace(texts=[], input=args.choices_file, field=args.field))
    return [c.strip() for c in args.choices.split(args.separator)]


def _one_line(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_score(args: argparse.Namespace) -> int:
    if args.choices_file and args.choices is None:
        args.choices = ""  # classification, the choices from the file
    inputs, targets = _inputs_and_targets(args)
    choices = _choices(args) if args.choices is not None else None
    generator = load_generator(args)
    limits = dict(max_input_tokens=args.max_input_tokens, max_target_tokens=args.max_target_tokens)
    out = sys.stdout
    if choices is None:
        scores = generator.score(inputs, targets, task=args.task, batch_size=args.batch_size, **limits)
        if not args.json:
            out.write(f"{'sum':>10} {'mean':>8} {'tokens':>6}  target | input\n")
        for text, s in zip(inputs, scores):
            if args.json:
                record: dict[str, Any] = {"input": text, "target": s.target, "sum": s.sum, "mean": s.mean,
                                          "tokens": s.tokens, "token_ids": s.token_ids,
                                          "token_logprobs": s.token_logprobs}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                out.write(f"{s.sum:10.4f} {s.mean:8.4f} {len(s.token_ids):6d}  {_one_line(s.target, 30)} | "
                          f"{_one_line(text)}\n")
        return 0
    results = generator.classify(inputs, choices, task=args.task, normalize=args.normalize,
                                 batch_size=args.batch_size, **limits)
    width = max(5, min(30, max(len(" ".join(c.split())) for c in choices)))
    if not args.json:
        out.write(f"{'label':<{width}} {'p':>6}  input\n")
    for text, c in zip(inputs, results):
        if args.json:
            record = {"input": text, "label": c.label, "index": c.index,
                      "scores": dict(zip(c.choices, c.scores)), "logprobs": dict(zip(c.choices, c.logprobs)),
                      "mean_logprobs": dict(zip(c.choices, c.mean_logprobs))}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            out.write(f"{_one_line(c.label, width):<{width}} {c.scores[c.index]:6.3f}  {_one_line(text)}\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "score", help="score targets (log-likelihood) or classify inputs into a set of choices",
        description="Score each target given its input: the summed and mean log-probability of its tokens, EOS "
                    "included (per token with --json). With --choices, rank classification: each input gets the "
                    "choice with the highest likelihood, and every choice's normalised score.",
        epilog="examples:\n"
               "  t5kit score --inputs sources.txt --targets outputs.txt\n"
               "  printf 'translate English to German: Hello\\tHallo\\n' | t5kit score --json\n"
               "  t5kit score --choices 'positive,negative' 'sst2 sentence: a great film'\n"
               "  t5kit score --inputs data.jsonl --field inputs --target-field targets",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", nargs="*", help="inputs (input<TAB>target unless --targets / --choices), or use "
                                            "--inputs / stdin")
    p.add_argument("--inputs", "-i", help="a .txt file (one input per line) or .jsonl file (see --field)")
    p.add_argument("--targets", help="a .txt file of targets, one per input line (or .jsonl, see --target-field)")
    p.add_argument("--field", default="inputs", help="the jsonl field holding the input text (default: inputs)")
    p.add_argument("--target-field", default="targets",
                   help="the jsonl field holding the target text (default: targets)")
    p.add_argument("--choices", default=None, help="classify into these choices, separated by --separator")
    p.add_argument("--choices-file", default=None, help="classify into the choices of this file, one per line")
    p.add_argument("--separator", default=",", help="what separates the --choices (default: ,)")
    p.add_argument("--normalize", choices=["sum", "mean"], default="sum",
                   help="rank choices by their summed log-probability (default) or its per-token mean")
    p.add_argument("--task", default=None, help="put a task's prefix before each input (see t5kit generate)")
    p.add_argument("--json", action="store_true", help="one JSON object per input, with per-token scores")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-input-tokens", type=int, default=MAX_SCORE_INPUT_TOKENS,
                   help=f"refuse longer inputs, task prefix and EOS counted (default: {MAX_SCORE_INPUT_TOKENS})")
    p.add_argument("--max-target-tokens", type=int, default=MAX_SCORE_TARGET_TOKENS,
                   help=f"refuse longer targets and choices, EOS counted (default: {MAX_SCORE_TARGET_TOKENS})")
    add_model_arguments(p)
    p.set_defaults(func=cmd_score)
