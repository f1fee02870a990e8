"""Rank classification: one encoder pass plus one decoder pass over N candidates, against N independent scores.

    python benchmarks/score.py [--preset t5-small] [--source 64] [--candidates 8 32] [--threads 2] [--repeat 9]

A random t5-small-shaped model (``T5Model.from_preset``, the inference kernels installed as the text pipeline
installs them), one source of ``--source`` tokens and N candidates of 4-8 tokens (EOS last). Contenders:

- ``rank``: ``t5kit.generate.rank``: the encoder once, the source's cross-attention keys/values once, the N
  candidates as one teacher-forced decoder pass;
- ``N x score``: ``t5kit.generate.score`` called once per candidate (encoder, cross keys/values, decoder
  each time): what a caller without rank does;
- ``score, batch N``: one ``score`` call over N rows, the source repeated per row (one pass, but N encoder
  rows and N cross-attention projections);
- ``encoder alone`` and ``one score``: the parts, to show rank costs about one encoder pass plus N short
  decoder rows.

Calls alternate between the contenders (a drift in the machine's load hits all alike); the figure is each
one's median over ``--repeat`` rounds. ``T5KIT_THREADS`` is fixed to ``--threads`` (its adaptive default
would change the count mid-run on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, set_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="t5-small")
    parser.add_argument("--source", type=int, default=64)
    parser.add_argument("--candidates", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=9, help="timed rounds (median)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16w", "int8"])
    args = parser.parse_args()
    set_threads(args.threads)
    os.environ["T5KIT_THREADS"] = str(args.threads)

    from t5kit import T5Model
    from t5kit.generate import rank, score
    from t5kit.kernels import install
    from t5kit.kernels.inference.precision import inference_model

    print(machine_line(args.threads))
    torch.manual_seed(0)
    model = inference_model(install(T5Model.from_preset(args.preset).eval(), "inference"), args.precision)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(3, 32000, (1, args.source), generator=g)
    ids[0, -1] = 1
    print(f"{args.preset} (random), {args.precision}, one source of {args.source} tokens, candidates of 4-8 tokens "
          f"(EOS last), vocab {vocab}, {args.threads} threads, median of {args.repeat} alternating rounds")
    print(f"{'N':>3} {'rank':>10} {'N x score':>10} {'ratio':>6} {'score, batch N':>15} {'ratio':>6} "
          f"{'encoder alone':>14} {'one score':>10}")
    for n in args.candidates:
        lengths = torch.randint(4, 9, (n,), generator=g).tolist()
        candidates = [torch.randint(3, 32000, (k - 1,), generator=g).tolist() + [1] for k in lengths]
        labels = torch.full((n, max(lengths)), -100)
        for r, c in enumerate(candidates):
            labels[r, : len(c)] = torch.tensor(c)
        singles = [torch.tensor([c]) for c in candidates]

        def run_rank(candidates=candidates):
            return rank(model, ids, None, [candidates])

        def run_each(singles=singles):
            return [score(model, ids, None, c) for c in singles]

        def run_batch(labels=labels, n=n):
            return score(model, ids.expand(n, -1), None, labels)

        def run_encoder():
            with torch.inference_mode():
                return model.encode(ids, torch.ones_like(ids))

        def run_one(single=singles[0]):
            return score(model, ids, None, single)

        # the same numbers from all three ways of scoring, up to rounding (int8 quantizes activations per call,
        # over all of its rows: its scores move with the batch, by up to a few percent on random weights)
        ranked, each, batch = run_rank()[0].sums, torch.cat([o.sum for o in run_each()]), run_batch().sum
        rtol = 1e-4 if args.precision in ("fp32", "fp16w") else 0.05
        assert torch.allclose(ranked, each, rtol=rtol) and torch.allclose(batch, each, rtol=rtol)
        contenders = {"rank": run_rank, "each": run_each, "batch": run_batch, "encoder": run_encoder, "one": run_one}
        for fn in contenders.values():  # warm-up: kernel choices, allocator
            fn()
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.repeat):
            for name, fn in contenders.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        print(f"{n:>3} {ms['rank']:>8.1f}ms {ms['each']:>8.1f}ms {ms['each'] / ms['rank']:>5.1f}x "
              f"{ms['batch']:>13.1f}ms {ms['batch'] / ms['rank']:>5.1f}x {ms['encoder']:>12.1f}ms "
              f"{ms['one']:>8.1f}ms")
        print(f"    rank = encoder + {ms['rank'] - ms['encoder']:.1f} ms of decoder for {n} candidates "
              f"({(ms['rank'] - ms['encoder']) / n:.2f} ms each; one whole score call: {ms['one']:.1f} ms)")


if __name__ == "__main__":
    main()
