"""``t5kit train``, ``t5kit pretrain`` and ``t5kit plot``: thin calls into ``t5kit.train``."""

from __future__ import annotations

import argparse

_EXAMPLE = """example:
  t5kit data import gettext data/gettext
  t5kit train recipes/finetune_gettext_en_fr.yaml --set optim.lr=1e-3 --out runs/en-fr
  t5kit train recipes/finetune_gettext_en_fr.yaml --out runs/en-fr --resume     # after a crash
  t5kit train run.yaml --set eval=null     # no validation split: train without evaluation
  torchrun --nproc_per_node 2 -m t5kit train recipes/finetune_gettext_en_fr.yaml  # DDP
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML training config (see recipes/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-3 (repeatable; values are YAML)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest complete checkpoint in --out"
    )
    p.add_argument("--out", help="run directory (checkpoints, logs, curves); default: the config's 'out'")
    p.add_argument("--max-steps-this-run", type=int, default=None, help=argparse.SUPPRESS)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a T5 on a task or mixture",
        description="Fine-tune (or train from a preset) on tasks/mixtures from a YAML config.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(p)
    p.set_defaults(func=lambda args: _run(args, "finetune"))

    p = subparsers.add_parser(
        "pretrain",
        help="pre-train a T5 with span corruption on raw text",
        description="Span-corruption pre-training on raw text (data.source in the config).",
        epilog="example:\n  t5kit pretrain recipes/pretrain_tiny_man.yaml --out runs/pretrain\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(p)
    p.set_defaults(func=lambda args: _run(args, "pretrain"))

    p = subparsers.add_parser(
        "plot",
        help="draw the loss and validation curves of a run into a PNG",
        description="Write RUN_DIR/curves.png from RUN_DIR/metrics.jsonl.",
        epilog="example: t5kit plot runs/en-fr --output en-fr-curves.png",
    )
    p.add_argument("run_dir", help="a training run directory")
    p.add_argument("--output", help="PNG path (default: RUN_DIR/curves.png)")
    p.set_defaults(func=_plot)


def _run(args: argparse.Namespace, objective: str) -> int:
    from t5kit.train import TrainConfig, train

    cfg = TrainConfig.load(args.config, args.overrides)
    result = train(
        cfg, out=args.out, resume=args.resume, objective=objective, max_steps_this_run=args.max_steps_this_run
    )
    if result.checkpoint is not None:
        import os

        if int(os.environ.get("RANK", "0")) == 0:
            print(f"t5kit {objective}: step {result.step}, checkpoint {result.checkpoint}")
            if cfg.adapter is not None:  # the checkpoint holds only the adapter: say how to use it
                print(f"  an adapter: t5kit generate --model {cfg.model.checkpoint} --adapter {result.checkpoint}, "
                      f"or t5kit adapter merge {cfg.model.checkpoint} {result.checkpoint} OUT")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from t5kit.train.logging import plot_run

    print(plot_run(args.run_dir, args.output))
    return 0
