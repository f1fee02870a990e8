"""``t5kit info`` and ``t5kit convert``: look inside a checkpoint, re-save it in another layout or dtype."""

from __future__ import annotations

import argparse
import json

from t5kit.kernels.inference.precision import add_precision_argument


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{int(n)}"
        n /= 1000
    return f"{n:.1f}P"


def cmd_backend(args: argparse.Namespace) -> int:
    """The GEMM kernel each linear layer runs on this CPU (timed now unless cached), like CTranslate2's log."""
    import dataclasses

    from t5kit.cli.generate import load_generator
    from t5kit.kernels.inference import linear
    from t5kit.kernels.training import gemm

    if args.retime:
        linear.forget_machine()
        gemm.reset()
    generator = load_generator(args)
    model = generator.decoding_model
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in linear.report(model)], indent=2))
    else:
        print(linear.summary(model))
        print(gemm.describe())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from t5kit.checkpoint import checkpoint_info
    from t5kit.errors import T5kitError

    if args.backend:
        return cmd_backend(args)
    if args.model is None:
        raise T5kitError("t5kit info needs a checkpoint: t5kit info DIR (or --backend for this CPU's kernels)")
    info = checkpoint_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}")
    preset = f" (shapes of {info['matches_preset']})" if info["matches_preset"] else ""
    print(f"  variant     {info['family']}{preset}")
    print(f"  shapes      d_model {info['d_model']}, d_ff {info['d_ff']}, "
          f"heads {info['num_heads']} x d_kv {info['d_kv']}, "
          f"layers {info['encoder_layers']} enc / {info['decoder_layers']} dec, {info['feed_forward_proj']}")
    print(f"  head        {'tied' if info['tied_head'] else 'untied'}, decoder output "
          f"{'rescaled by d_model^-0.5' if info['rescaled_decoder_output'] else 'not rescaled'}")
    print(f"  parameters  {_human(info['parameters_stored'])} stored ({info['parameters_stored']:,})")
    print(f"  dtype       {', '.join(f'{k} ({_human(v)})' for k, v in info['dtypes'].items()) or 'unknown'}")
    print(f"  vocabulary  {info['vocab_size']} ids; tokenizer file: {info['tokenizer'] or 'none'}")
    print("  files")
    for name, size in info["files"].items():
        print(f"    {name:40s} {_human(size)}B")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from t5kit.checkpoint import convert_checkpoint
    from t5kit.model import parameter_shapes

    out = convert_checkpoint(args.source, args.destination, dtype=args.dtype, max_shard_size=args.max_shard_size,
                             expected_shapes=parameter_shapes)
    print(f"wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info", help="show a checkpoint's variant, shapes, parameter count, dtype and files, or (--backend) "
                        "the GEMM kernels this CPU runs it with",
        description="Show what a checkpoint holds without loading its weights.",
        epilog="examples:\n  t5kit info runs/my-model/final\n  t5kit info --backend            # the built-in model\n"
               "  t5kit info --backend --precision int8 runs/my-model/final",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="checkpoint directory or Hugging Face repo id (with --backend: "
                   "default the built-in model)")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.add_argument("--backend", action="store_true",
                   help="show the GEMM kernel each linear layer of the model runs on this CPU per row count "
                        "(timed once per machine, then cached; T5KIT_LINEAR_BACKEND=mkl forces MKL)")
    p.add_argument("--retime", action="store_true", help="with --backend: forget this machine's cached choices "
                   "and time the kernels again (after a choice was made on a busy machine)")
    add_precision_argument(p)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    p.set_defaults(func=cmd_info)

    p = subparsers.add_parser(
        "convert", help="re-save a checkpoint as safetensors, in another dtype, or sharded",
        description="Read any supported checkpoint layout (safetensors, sharded, legacy pytorch_model.bin) and "
                    "write config.json + safetensors (plus the tokenizer files) to a new directory.",
        epilog="examples:\n  t5kit convert old-bin-model new-model\n"
               "  t5kit convert my-model my-model-bf16 --dtype bf16\n"
               "  t5kit convert big-model big-model-sharded --max-shard-size 2GB",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="checkpoint directory or Hugging Face repo id")
    p.add_argument("destination", help="new directory to write")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weights' dtype in the output (default: as stored)")
    p.add_argument("--max-shard-size", default=None, help="split weights into shards of at most this size, e.g. 2GB")
    p.set_defaults(func=cmd_convert)
