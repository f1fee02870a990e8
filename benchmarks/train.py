"""Training throughput: t5kit against `transformers`' T5ForConditionalGeneration, same weights, batch and
optimiser (torch AdamW, fused kernel for both), in fp32 and under bf16 autocast.

    python benchmarks/train.py [--preset t5-small] [--batch 8] [--source 128] [--target 32] [--threads 2]
                               [--steps 24] [--block 3] [--rounds 1] [--compile] [--precisions fp32 bf16]

Each engine and precision runs in its own subprocess (a fair peak RSS). The processes of one precision
live side by side and take turns: one untimed step (the other's turn has pushed this one's weights and
optimiser state out of the caches), then ``--block`` timed steps; only one computes at a time, and who
goes first alternates. Two turns side by side share the host's load of that moment (other tenants of a
shared machine move a step by 10-20% within minutes), so "vs hf" is the median over turns of the paired
ratios, and their quartiles show the spread.

A step is forward + loss, backward, optimiser step, zero_grad; tokens/s counts source + target tokens and
uses the median step. Model FLOP utilisation (MFU) divides the model's matmul FLOPs per step (forward
x 3, counted from the shapes) by the step time and by this machine's measured matmul peak (a large
fp32 / bf16 matmul with the same threads).

``--adapter lora`` (issue 20) trains a LoRA adapter instead (``--lora-r``, ``--lora-alpha``, ``--lora-targets``;
peft's T5 defaults r 8, alpha 8, q and v): transformers + peft (``get_peft_model``), t5kit as its trainer
prepares an adapter run (``add_lora``, then the kernels), and t5kit's full fine-tuning beside them; AdamW
takes the trainable parameters only. It prints each engine's trainable parameters and the two targets:
t5kit LoRA peak RSS against t5kit full fine-tuning, tokens/s against transformers + peft (paired turns).
``--lora-base-storages fp32 bf16 int8`` adds a t5kit LoRA engine per storage of the frozen base
(``adapter.base_storage``, :mod:`t5kit.adapters.frozen`).

    python benchmarks/train.py --adapter lora [--lora-r 16 --lora-targets q k v o wi wo]
    python benchmarks/train.py --adapter lora --precisions fp32 --lora-base-storages fp32 bf16 int8
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TurnTaker, machine_line, peak_rss_mb, save_random_hf_checkpoint, set_threads, time_it  # noqa: E402

PRECISIONS = ("fp32", "bf16")  # fp32, and bf16 under autocast

WARMUP_STEPS = 2  # per process, before the first turn


def batch(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (args.batch, args.source), generator=g)
    labels = torch.randint(3, 32000, (args.batch, args.target), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def child(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    torch.manual_seed(0)
    data = batch(args)
    if args.engine.startswith("transformers"):
        import transformers

        model = transformers.T5ForConditionalGeneration.from_pretrained(args.checkpoint, dtype=torch.float32)
        if args.engine == "transformers-lora":
            import peft

            model = peft.get_peft_model(model, peft.LoraConfig(
                r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules=list(args.lora_targets),
                task_type="SEQ_2_SEQ_LM"))
    else:
        from t5kit import T5Model
        from t5kit.adapters import LoRAConfig, add_lora
        from t5kit.kernels import install

        # As t5kit's trainer prepares it (t5kit.train.setup.build_model): the adapters first (every other weight
        # frozen), then the CPU training kernels swapped in (t5kit.kernels).
        model = T5Model.from_pretrained(args.checkpoint, dtype=torch.float32)
        if args.engine.startswith("t5kit-lora"):
            add_lora(model, LoRAConfig(r=args.lora_r, alpha=args.lora_alpha, targets=tuple(args.lora_targets)))
            if args.engine != "t5kit-lora":  # t5kit-lora-bf16 / -int8: the frozen base stored so (as the trainer)
                from t5kit.adapters.frozen import store_frozen_base

                store_frozen_base(model, args.engine.rpartition("-")[2])
        model = install(model)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
    forward = torch.compile(model) if args.engine == "t5kit-compiled" else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    losses = []

    def step() -> None:
        with autocast:
            loss = forward(**data).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))

    # Steps on request: "run N" on stdin runs one untimed step (the other engine's turn has just pushed this
    # one's weights and optimiser state out of the caches), then N timed ones, and answers their seconds.
    # End of input answers the summary.
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if len(words) != 2 or words[0] != "run":
            break
        step()
        seconds = []
        for _ in range(int(words[1])):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
        print(json.dumps({"seconds": seconds}), flush=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "first_loss": losses[0] if losses else None,
                      "trainable": sum(p.numel() for p in trainable)}), flush=True)


def model_flops(preset: str, batch: int, source: int, target: int) -> float:
    """Matmul FLOPs of one training step (forward counted from the shapes, backward = 2 x forward)."""
    from t5kit import T5Config

    c = T5Config.from_preset(preset)
    d, inner, ff, vocab = c.d_model, c.inner_dim, c.d_ff, c.vocab_size
    ffn = (3 if c.is_gated else 2) * 2 * d * ff
    enc = source * (8 * d * inner + ffn) + 4 * source * source * inner
    dec = (
        target * (8 * d * inner + 4 * d * inner + ffn) + 4 * d * inner * source
    )  # self, cross q/o, cross k/v
    dec += 4 * target * target * inner + 4 * target * source * inner
    forward = batch * (c.num_layers * enc + c.num_decoder_layers * dec + target * 2 * d * vocab)
    return 3.0 * forward


def matmul_peak(threads: int, dtype: torch.dtype, n: int = 2048) -> float:
    set_threads(threads)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    seconds = time_it(lambda: a @ b, warmup=2, repeat=5)
    return 2 * n**3 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="t5-small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--source", type=int, default=128)
    parser.add_argument("--target", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=24, help="timed steps per engine and round")
    parser.add_argument("--block", type=int, default=3, help="timed steps per turn, after one untimed step")
    parser.add_argument("--rounds", type=int, default=1, help="start the processes anew N times; steps pool")
    parser.add_argument("--compile", action="store_true", help="also time t5kit under torch.compile")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                        help="fp32 and/or bf16 (autocast); bf16 is emulated, and slow, on CPUs without native bf16")
    parser.add_argument("--adapter", choices=["lora"], help="train a LoRA adapter: t5kit against transformers + "
                        "peft (same rank, alpha, targets), with t5kit's full fine-tuning beside them for memory")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=8.0)
    parser.add_argument("--lora-targets", nargs="+", default=["q", "v"], help="peft's T5 default: q v")
    parser.add_argument("--lora-base-storages", nargs="+", choices=["fp32", "bf16", "int8"], default=["fp32"],
                        help="the frozen base's storage (adapter.base_storage); each one a t5kit LoRA engine")
    parser.add_argument(
        "--child", nargs=3, metavar=("ENGINE", "PRECISION", "CHECKPOINT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        args.engine, args.precision, args.checkpoint = args.child
        return child(args)

    print(machine_line(args.threads))
    print(
        f"{args.preset}, batch {args.batch}, {args.source} source / {args.target} target tokens, "
        f"AdamW (fused) step; {args.rounds} x {args.steps} timed steps per engine, in turns of {args.block} "
        f"(after one untimed step)"
    )
    directory = save_random_hf_checkpoint(args.preset)
    try:
        run_engines(args, directory)
    finally:  # the checkpoint is ~230 MB of temporary files
        shutil.rmtree(directory, ignore_errors=True)


class Engine(TurnTaker):
    """One engine's process: each request runs one turn of training steps and answers their seconds."""

    def __init__(self, args: argparse.Namespace, engine: str, precision: str, directory: Path):
        super().__init__(engine, [
            sys.executable, __file__, "--child", engine, precision, str(directory), "--threads", str(args.threads),
            "--batch", str(args.batch), "--source", str(args.source), "--target", str(args.target), "--lora-r",
            str(args.lora_r), "--lora-alpha", str(args.lora_alpha), "--lora-targets", *args.lora_targets])

    def run(self, steps: int) -> list[float]:
        return self.ask(f"run {steps}")["seconds"]

    def finish(self) -> dict:
        return self.close(last_answer=True)


def interleaved_round(args: argparse.Namespace, engines: list[str], precision: str, directory: Path
                      ) -> tuple[dict[str, list[list[float]]], dict[str, dict]]:
    """Per engine, the seconds of its timed steps turn by turn (turn i of each engine: side by side in time),
    and each one's summary."""
    procs = [Engine(args, engine, precision, directory) for engine in engines]
    try:
        for proc in procs:
            proc.answer()  # ready: loaded, nothing timed yet
        for proc in procs:  # the first steps allocate, and torch.compile compiles
            proc.run(WARMUP_STEPS)
        turns: dict[str, list[list[float]]] = {engine: [] for engine in engines}
        for turn in range(max(1, args.steps // args.block)):
            for proc in procs if turn % 2 == 0 else procs[::-1]:  # who goes first alternates
                turns[proc.name].append(proc.run(args.block))
        return turns, {proc.name: proc.finish() for proc in procs}
    finally:
        for proc in procs:
            proc.kill()


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return q1, median, q3


def run_engines(args: argparse.Namespace, directory: Path) -> None:
    if args.adapter:  # the first engine is the one the others are paired against
        engines = ["transformers-lora", *(f"t5kit-lora-{s}" if s != "fp32" else "t5kit-lora"
                                          for s in args.lora_base_storages), "t5kit"]
    else:
        engines = ["transformers", "t5kit"] + (["t5kit-compiled"] if args.compile else [])
    base_engine = engines[0]
    flops = model_flops(args.preset, args.batch, args.source, args.target)
    tokens = args.batch * (args.source + args.target)
    turns: dict[tuple[str, str], list[list[float]]] = {}  # per engine and precision: each turn's step seconds
    summaries: dict[tuple[str, str], dict] = {}
    for _ in range(args.rounds):
        for precision in args.precisions:
            try:
                round_turns, round_summaries = interleaved_round(args, engines, precision, directory)
            except RuntimeError as error:
                print(f"{precision} failed: {error}")
                continue
            for engine in engines:
                turns.setdefault((engine, precision), []).extend(round_turns[engine])
                previous = summaries.get((engine, precision), {"peak_rss_mb": 0.0})
                if round_summaries[engine]["peak_rss_mb"] >= previous["peak_rss_mb"]:
                    summaries[(engine, precision)] = round_summaries[engine]

    def paired_ratios(engine: str, precision: str) -> list[float]:
        """transformers' median step over this engine's, turn by turn (the two turns ran side by side)."""
        base, ours = turns.get((base_engine, precision)), turns.get((engine, precision))
        if not base or not ours:
            return []
        return [statistics.median(hf) / statistics.median(mine) for hf, mine in zip(base, ours)]

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {precision: matmul_peak(args.threads, dtypes[precision]) for precision in args.precisions}
    print(
        f"matmul peak ({args.threads} threads): "
        + ", ".join(f"{precision} {peak / 1e9:.1f} GFLOP/s" for precision, peak in peaks.items())
        + f"; model {flops / 1e9:.1f} GFLOP per step"
    )
    print(
        f"{'precision':9} {'engine':20} {'ms/step':>8} {'tokens/s':>9} {'vs hf':>6} {'peak RSS MiB':>13} "
        f"{'mem vs hf':>9} {'MFU':>6} {'trainable':>11}"
    )
    for precision in args.precisions:
        for engine in engines:
            if not turns.get((engine, precision)):
                continue
            seconds = statistics.median(s for turn in turns[(engine, precision)] for s in turn)
            ratios = paired_ratios(engine, precision)
            ratio = statistics.median(ratios) if ratios else float("nan")
            rss = summaries[(engine, precision)]["peak_rss_mb"]
            base = summaries.get((base_engine, precision))
            mem = rss / base["peak_rss_mb"] if base else float("nan")
            trainable = summaries[(engine, precision)].get("trainable", 0)
            print(
                f"{precision:9} {engine:20} {seconds * 1000:8.1f} {tokens / seconds:9.0f} {ratio:5.2f}x "
                f"{rss:13.0f} {mem:8.2f}x {flops / seconds / peaks[precision]:6.1%} {trainable:11,}"
            )
    print(f"ms/step: median step; vs hf: median over turns of {base_engine}'s median step / this engine's"
          + ("; MFU counts the full model's FLOPs (an adapter's backward skips the frozen weights' gradients)"
             if args.adapter else ""))
    for precision in args.precisions:
        for engine in engines[1:]:
            ratios = paired_ratios(engine, precision)
            if ratios:
                q1, median, q3 = quartiles(ratios)
                print(f"{precision} {engine} vs {base_engine} over {len(ratios)} paired turns: median {median:.2f}x, "
                      f"quartiles {q1:.2f}x-{q3:.2f}x, range {min(ratios):.2f}x-{max(ratios):.2f}x")
    if args.adapter:  # issue 20's targets
        for precision, engine in [(p, e) for p in args.precisions for e in engines if e.startswith("t5kit-lora")]:
            lora, full = summaries.get((engine, precision)), summaries.get(("t5kit", precision))
            ratios = paired_ratios(engine, precision)
            if lora and full and ratios:
                memory = lora["peak_rss_mb"] / full["peak_rss_mb"]
                speed = statistics.median(ratios)
                print(f"targets ({precision}, {engine}): peak RSS / t5kit full fine-tuning {memory:.2f}x "
                      f"(target <= 0.6x: {'met' if memory <= 0.6 else 'NOT met'}); t5kit LoRA tokens/s / "
                      f"transformers + peft {speed:.2f}x (target >= 1.3x: {'met' if speed >= 1.3 else 'NOT met'})")


if __name__ == "__main__":
    main()
