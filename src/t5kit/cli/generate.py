"""``t5kit generate`` and ``t5kit eval``: text in, text out, from the shell and from files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from t5kit.errors import DataError, T5kitError


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --adapter, --precision (the one flag of t5kit.kernels.inference.precision) and --threads."""
    from t5kit.kernels.inference.precision import add_precision_argument

    p.add_argument("--model", "-m", default=None,
                   help="checkpoint directory or Hugging Face repo id (default: the built-in model)")
    p.add_argument("--adapter", default=None,
                   help="a LoRA adapter directory (peft's layout: adapter_config.json + adapter_model.safetensors) "
                        "trained over --model; merged into the weights at load, so decoding is as fast as without")
    add_precision_argument(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per decoding option, derived from t5kit.generate.GenerationConfig."""
    from t5kit.generate.options import add_generation_arguments

    add_generation_arguments(p)


def decoding_options(args: argparse.Namespace) -> dict[str, Any]:
    """Only the options the user gave (checked): the task's and the library's defaults fill in the rest."""
    from t5kit.generate.options import options_from_args

    return options_from_args(args)


def load_generator(args: argparse.Namespace):
    """The model named by --model (or the built-in one) wrapped in a text-level Generator."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from t5kit.pipeline import Generator

    if args.model is None:
        try:
            from t5kit.builtin import load_builtin
        except ImportError:
            raise T5kitError("no built-in model is installed in this copy of t5kit; pass --model DIR") from None
        if getattr(args, "adapter", None) is not None:  # an adapter trained over the built-in model
            from t5kit.builtin import BUILTIN_DIR

            return Generator.from_pretrained(str(BUILTIN_DIR), precision=args.precision, adapter=args.adapter)
        return load_builtin(precision=args.precision)
    return Generator.from_pretrained(args.model, precision=args.precision, adapter=getattr(args, "adapter", None))


def decode_lines(data: bytes, name: str) -> list[str]:
    """The lines of ``data`` as UTF-8 text; a byte that is not UTF-8 is one error naming the file and line."""
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(f"{name}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at column {column}); "
                        "convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8") from None


def read_inputs(args: argparse.Namespace) -> list[str]:
    """Texts from arguments, from --input (txt: one per line; jsonl: the --field of each line) or stdin."""
    if args.texts and args.input:
        raise DataError("give input texts as arguments or with --input, not both")
    if args.texts:
        return list(args.texts)
    if args.input:
        path = Path(args.input)
        if not path.exists():
            raise DataError(f"input file {path} does not exist")
        name = str(path)
        lines = decode_lines(path.read_bytes(), name)
    else:
        if sys.stdin.isatty():
            raise DataError("no input: give texts as arguments, --input FILE, or pipe lines into stdin")
        name = "<stdin>"
        lines = decode_lines(sys.stdin.buffer.read(), name)
    jsonl = args.input is not None and path.suffix.lower() in (".jsonl", ".json")
    texts = []
    for number, line in enumerate(lines, start=1):
        if jsonl:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{name}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or args.field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"{name}:{number}: no field {args.field!r} (has {keys}); choose one with --field")
            value = record[args.field]
            if not isinstance(value, str):
                raise DataError(f"{name}:{number}: field {args.field!r} is {type(value).__name__}, not text")
            texts.append(value)
        else:
            texts.append(line)
    if not texts:
        raise DataError(f"{name} holds no inputs")
    return texts


def _quiet_length_warnings() -> None:
    """The commands report outputs cut at the length limit themselves, once, instead of a Python warning."""
    import warnings

    from t5kit.generate.search import LengthLimitWarning

    warnings.filterwarnings("ignore", category=LengthLimitWarning)


def cmd_generate(args: argparse.Namespace) -> int:
    _quiet_length_warnings()
    texts = read_inputs(args)
    options = decoding_options(args)  # a bad value fails before the model loads
    if args.choices is not None:  # "one of these strings" (Generator.generate(choices=): a trie over their tokens)
        options["choices"] = [c.strip() for c in args.choices.split(args.choice_separator)]
    generator = load_generator(args)
    if len(texts) == 1 and not args.output and (args.stream or sys.stdout.isatty()):
        for piece in generator.stream(texts[0], task=args.task, **options):
            print(piece, end="", flush=True)
        print()
        return 0
    results = generator.generate(texts, task=args.task, batch_size=args.batch_size, **options)
    per_input = len(results) // len(texts)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    jsonl = args.output is not None and args.output.endswith(".jsonl")
    try:
        for i, result in enumerate(results):
            if jsonl:
                out.write(json.dumps({"input": texts[i // per_input], "output": result.text,
                                      "stop_reason": result.stop_reason, "output_tokens": result.output_tokens},
                                     ensure_ascii=False) + "\n")
            else:
                out.write(result.text.replace("\n", " ") + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    stopped = sum(r.stop_reason == "length" for r in results)
    if stopped:
        print(f"t5kit generate: {stopped} of {len(results)} outputs stopped at the length limit, not at EOS "
              "(raise --max-new-tokens)", file=sys.stderr)
    return 0


def resolve_task(name: str, tasks_file: str | None):
    from t5kit.data import get_task, load_tasks

    if tasks_file:
        load_tasks(tasks_file)
    elif name.endswith((".yaml", ".yml", ".json")) and Path(name).exists():
        loaded = load_tasks(name)
        tasks = loaded.get("tasks", loaded)
        if len(tasks) != 1:
            raise DataError(f"{name} declares {len(tasks)} tasks; name one with --task NAME --tasks {name}")
        return next(iter(tasks.values())) if isinstance(tasks, dict) else tasks[0]
    return get_task(name)


def cmd_eval(args: argparse.Namespace) -> int:
    from t5kit.evaluate import evaluate

    _quiet_length_warnings()
    task = resolve_task(args.task, args.tasks)
    options = decoding_options(args)
    generator = load_generator(args)
    metrics = args.metrics.split(",") if args.metrics else None
    rank = {}
    if args.rank or args.choices:  # rank classification: the most likely member of the label set
        if options:
            raise DataError(f"--rank takes no decoding options, got {', '.join(sorted(options))}")
        choices = [c.strip() for c in args.choices.split(",")] if args.choices else None
        rank = {"mode": "rank", "choices": choices}
    result = evaluate(generator, task, args.split, metrics=metrics, max_examples=args.max_examples,
                      batch_size=args.batch_size, skip_bad=args.skip_bad, **rank, **options)
    out_dir = Path(args.output_dir or f"eval-{task.name}-{args.split}")
    predictions, metrics_path = result.save(out_dir)
    stopped = sum(p["stop_reason"] == "length" for p in result.predictions)
    if stopped:
        print(f"t5kit eval: {stopped} of {len(result.predictions)} outputs stopped at the length limit",
              file=sys.stderr)
    for name, value in result.metrics.items():
        print(f"{name:12s} {value:8.2f}")
    print(f"{len(result.predictions)} examples in {result.seconds:.1f} s; wrote {predictions} and {metrics_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate", help="generate outputs for texts, a file or stdin",
        description="Generate an output for each input text. Outputs come in the order of the inputs.",
        epilog="examples:\n"
               "  t5kit generate 'translate English to German: The house is wonderful.'\n"
               "  t5kit generate --model my-model --input inputs.jsonl --field text --output out.jsonl\n"
               "  cat lines.txt | t5kit generate --num-beams 4 > outputs.txt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", nargs="*", help="input texts (or use --input / stdin)")
    p.add_argument("--input", "-i", help="a .txt file (one input per line) or .jsonl file (see --field)")
    p.add_argument("--field", default="inputs", help="the jsonl field holding the input text (default: inputs)")
    p.add_argument("--output", "-o", help="write outputs here (.jsonl: with stop reasons; else one per line)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--task", default=None,
                   help="apply a task's prefix and decoding defaults (the model's task_specific_params) or a "
                        "preset's prefix (t5kit.data.prefixes: translate_en_de, summarize ...)")
    p.add_argument("--stream", action="store_true", help="stream a single output token by token")
    p.add_argument("--choices", default=None,
                   help="the output must be one of these comma-separated strings (e.g. 'yes,no'): constrained "
                        "decoding over a trie of their tokens; see `t5kit score --choices` for ranking them")
    p.add_argument("--choice-separator", default=",", help="what separates --choices (default: a comma)")
    add_model_arguments(p)
    add_decoding_arguments(p)
    p.set_defaults(func=cmd_generate)

    p = subparsers.add_parser(
        "eval", help="evaluate a model on a task's split with the task's metrics",
        description="Generate for every example of a task's split and report its metrics (BLEU/chrF via "
                    "sacrebleu, ROUGE via rouge-score, SQuAD EM/F1, accuracy). Writes predictions.jsonl "
                    "and metrics.json.",
        epilog="example:\n  t5kit eval --model my-model --task en_fr --tasks tasks.yaml --split test",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", "-t", required=True, help="a registered task name, or a YAML/JSON file with one task")
    p.add_argument("--tasks", default=None, help="a YAML/JSON file declaring tasks (then --task names one)")
    p.add_argument("--split", default="test")
    p.add_argument("--metrics", default=None, help="comma-separated metric names (default: the task's)")
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--skip-bad", action="store_true", help="skip records with a missing or empty field")
    p.add_argument("--output-dir", "-o", default=None, help="where to write predictions and metrics")
    p.add_argument("--rank", action="store_true",
                   help="classify by ranking the task's label set (its label words) instead of generating: "
                        "each prediction is the most likely label (one encoder pass per input)")
    p.add_argument("--choices", default=None,
                   help="with --rank (implied): the comma-separated label set, instead of the task's label words")
    add_model_arguments(p)
    add_decoding_arguments(p)
    p.set_defaults(func=cmd_eval)
