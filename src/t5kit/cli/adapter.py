"""``t5kit adapter merge`` and ``t5kit adapter info``: LoRA adapters in peft's layout (``t5kit.adapters``)."""

from __future__ import annotations

import argparse
import json


def cmd_merge(args: argparse.Namespace) -> int:
    from t5kit.adapters import merge_adapter

    out = merge_adapter(args.base, args.adapter, args.out)
    print(f"wrote {out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from t5kit.adapters import adapter_info

    info = adapter_info(args.adapter)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(info["path"])
    print(f"  kind        LoRA, r {info['r']}, alpha {info['alpha']:g} (scale {info['scale']:g}), "
          f"dropout {info['dropout']:g}")
    print(f"  targets     {', '.join(info['targets'])} ({info['layers']} layers)")
    print(f"  parameters  {info['parameters']:,} trainable in {info['tensors']} tensors ({', '.join(info['dtypes'])})")
    print(f"  base model  {info['base_model_name_or_path'] or 'not recorded'}")
    print("  files")
    for name, size in info["files"].items():
        print(f"    {name:40s} {size:,} B")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "adapter", help="LoRA adapters in peft's layout: merge one into its base model, or show what one holds",
        description="LoRA adapters saved by t5kit or peft (adapter_config.json + adapter_model.safetensors).",
        epilog="examples:\n  t5kit adapter info runs/lora/adapter\n"
               "  t5kit adapter merge google/flan-t5-small runs/lora/adapter flan-t5-small-merged",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="adapter_command", metavar="ACTION", required=True)
    merge = commands.add_parser(
        "merge", help="write BASE with ADAPTER merged in as a plain checkpoint (float32, tokenizer files copied)",
        description="Fold the adapter into the base weights (W += alpha/r * B A) and write a plain checkpoint "
                    "that T5Model.from_pretrained and transformers load; re-save it in bf16 with "
                    "t5kit convert --dtype bf16.")
    merge.add_argument("base", help="base checkpoint directory or Hugging Face repo id")
    merge.add_argument("adapter", help="adapter directory (adapter_config.json + adapter_model.safetensors)")
    merge.add_argument("out", help="new directory to write")
    merge.set_defaults(func=cmd_merge)
    info = commands.add_parser("info", help="show an adapter's config, targets, rank and parameter count",
                               description="Show what an adapter directory holds, without loading a base model.")
    info.add_argument("adapter", help="adapter directory")
    info.add_argument("--json", action="store_true", help="print the facts as JSON")
    info.set_defaults(func=cmd_info)
