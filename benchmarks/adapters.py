"""Generation with LoRA adapters: unmerged against merged, in one process, paired run by run (issue 20).

    python benchmarks/adapters.py [--preset t5-small] [--rounds 4] [--new 64] [--threads 2] [--no-peft]

One random checkpoint (``common.save_random_hf_checkpoint``) and two random adapters over it, ``a`` and ``b``
(each r 8 on q and v: peft's T5 default). Engines, all on the same weights and inputs:

- ``t5kit merged``: ``Generator.from_pretrained(ckpt, adapter=a)`` (the product folded into the weights);
- ``t5kit unmerged``: ``merge_adapter=False``: the base matmul plus the two rank-r ones, as the server runs
  an adapter (``t5kit.adapters.multi``);
- ``t5kit a+b mixed`` (greedy batch 16 only): adapters a and b attached to one model, half of the rows on
  each: what a server holding two adapters runs when both are asked for at once;
- ``t5kit LoRALinear``: the training module (``t5kit.adapters.LoRALinear``) left in place, unmerged;
- ``transformers+peft merged`` / ``unmerged`` (``merge_and_unload`` or not), for context (peft issue 217
  reported ~10x slower generation until merged); peft comes with the dev extra (``pip install -e '.[dev]'``),
  ``--no-peft`` leaves it out.

Scenarios: greedy batch 1, greedy batch 16, beam 4 batch 1; 64 source tokens, exactly ``--new`` new tokens (EOS
suppressed). Each round runs every engine once per scenario, in a rotating order, so a change in the host's
speed falls on all engines alike; the figures are the medians over rounds, and each ratio against the merged
model is the median of the per-round ratios (with their range). Prints the CPU (model name, ISA) first.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from t5kit.tokenizer import t5_vocabulary_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, save_random_hf_checkpoint, set_threads  # noqa: E402

SOURCE = 64
SCENARIOS = {"greedy b1": (1, 1), "greedy b16": (16, 1), "beam4 b1": (1, 4)}
# name -> r, alpha, targets: b has a's shape (other values), so "a+b mixed" costs only the routing more
ADAPTERS = {"a": (8, 16, ("q", "v")), "b": (8, 16, ("q", "v"))}


def make_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(3, 32000, (batch, SOURCE), generator=g)
    ids[:, -1] = 1
    return ids, torch.ones_like(ids)


def save_adapters(checkpoint: Path, root: Path) -> dict[str, Path]:
    from t5kit import T5Model
    from t5kit.adapters import LoRAConfig, add_lora, lora_layers, save_adapter

    out = {}
    for seed, (name, (r, alpha, targets)) in enumerate(ADAPTERS.items()):
        model = T5Model.from_pretrained(str(checkpoint))
        add_lora(model, LoRAConfig(r=r, alpha=alpha, targets=targets))
        g = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():  # B = 0 would make the adapter the identity: a trained adapter's size instead
            for layer in lora_layers(model).values():
                layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.02)
        out[name] = save_adapter(model, root / name)
    return out


def t5kit_engines(checkpoint: Path, adapters: dict[str, Path], new: int) -> dict:
    from t5kit.adapters import load_adapter
    from t5kit.adapters.multi import attach_adapters
    from t5kit.generate import generate
    from t5kit.kernels import install
    from t5kit.model import T5Model
    from t5kit.pipeline import Generator

    def runner(model, route=None):
        def run(ids, mask, beams):
            if route is not None:
                route(len(ids))
            return generate(model, ids, mask, max_new_tokens=new, num_beams=beams, suppress_tokens=[1]).sequences
        return run

    merged = Generator.from_pretrained(str(checkpoint), adapter=adapters["a"]).decoding_model
    unmerged = Generator.from_pretrained(str(checkpoint), adapter=adapters["a"], merge_adapter=False).decoding_model
    module = install(load_adapter(T5Model.from_pretrained(str(checkpoint)).eval(), adapters["a"]), "inference")
    both_model = T5Model.from_pretrained(str(checkpoint)).eval()
    both = attach_adapters(both_model, adapters)
    install(both_model, "inference")

    def half_and_half(rows: int) -> None:
        both.route([both.index_of("a")] * (rows - rows // 2) + [both.index_of("b")] * (rows // 2))

    return {"t5kit merged": runner(merged), "t5kit unmerged": runner(unmerged),
            "t5kit a+b mixed": runner(both_model, half_and_half), "t5kit LoRALinear": runner(module)}


def peft_engines(checkpoint: Path, adapters: dict[str, Path], new: int) -> dict:
    import peft
    import transformers

    def runner(hf):
        def run(ids, mask, beams):
            with torch.inference_mode():
                return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, num_beams=beams,
                                   do_sample=False, suppress_tokens=[1])
        return run

    def load():
        base = transformers.T5ForConditionalGeneration.from_pretrained(checkpoint).eval()
        return peft.PeftModel.from_pretrained(base, str(adapters["a"])).eval()

    return {"transformers+peft merged": runner(load().merge_and_unload()),
            "transformers+peft unmerged": runner(load())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="t5-small")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-peft", action="store_true", help="leave transformers + peft out")
    args = p.parse_args()
    set_threads(args.threads)
    print(machine_line(args.threads), flush=True)
    print(f"command: {' '.join(sys.argv)}", flush=True)
    checkpoint = save_random_hf_checkpoint(args.preset)
    shutil.copy(Path(t5_vocabulary_path()) / "spiece.model", checkpoint / "spiece.model")  # Generator loads one
    adapters = save_adapters(checkpoint, Path(tempfile.mkdtemp(prefix="t5kit-bench-adapters-")))
    engines = t5kit_engines(checkpoint, adapters, args.new)
    if not args.no_peft:
        engines.update(peft_engines(checkpoint, adapters, args.new))
    inputs = {name: make_inputs(batch) for name, (batch, _) in SCENARIOS.items()}
    plan = [(s, e) for s in SCENARIOS for e in engines if e != "t5kit a+b mixed" or s == "greedy b16"]
    for scenario, engine in plan:  # warm-up: kernel choices, first allocations; checks the output length
        batch, beams = SCENARIOS[scenario]
        out = engines[engine](*inputs[scenario], beams)
        assert out.shape == (batch, args.new + 1), (engine, scenario, tuple(out.shape))
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in plan}
    for round_ in range(args.rounds):
        for scenario in SCENARIOS:
            batch, beams = SCENARIOS[scenario]
            names = [e for s, e in plan if s == scenario]
            names = names[round_ % len(names):] + names[: round_ % len(names)]  # rotate the order
            for engine in names:
                start = time.perf_counter()
                engines[engine](*inputs[scenario], beams)
                seconds[(scenario, engine)].append(time.perf_counter() - start)
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"\n{args.preset}, {SOURCE} source tokens, {args.new} new tokens, {args.rounds} rounds; adapter a: r "
          f"{ADAPTERS['a'][0]} on {'/'.join(ADAPTERS['a'][2])}, b: r {ADAPTERS['b'][0]} on "
          f"{'/'.join(ADAPTERS['b'][2])}")
    print(f"{'scenario':<12} {'engine':<27} {'new tok/s':>10} {'vs merged (median, range)':>28}")
    for scenario, (batch, _) in SCENARIOS.items():
        for reference_name in ("t5kit merged", "transformers+peft merged"):
            if (scenario, reference_name) not in seconds:
                continue
            family = reference_name.split()[0]
            reference = seconds[(scenario, reference_name)]
            for s, engine in plan:
                if s != scenario or engine.split()[0] != family:
                    continue
                times = seconds[(scenario, engine)]
                speed = batch * args.new / statistics.median(times)
                ratios = sorted(r / t for r, t in zip(reference, times))
                versus = "" if engine == reference_name else (
                    f"{statistics.median(ratios):.3f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})")
                print(f"{scenario:<12} {engine:<27} {speed:>10.1f} {versus:>28}")


if __name__ == "__main__":
    main()
