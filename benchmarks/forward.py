"""Teacher-forced forward + loss: t5kit against `transformers` on the same weights and batch.

    python benchmarks/forward.py [--preset t5-small] [--batch 8] [--source 128] [--target 32] [--threads 2]

Prints the median time per pass of each engine in fp32 and bf16 and the ratio t5kit / transformers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, save_random_hf_checkpoint, set_threads, time_it  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="t5-small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--source", type=int, default=128)
    parser.add_argument("--target", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=15, help="timed passes of each engine (median)")
    args = parser.parse_args()
    set_threads(args.threads)

    import transformers

    from t5kit import T5Model

    print(machine_line(args.threads))
    print(f"{args.preset}, batch {args.batch}, {args.source} source / {args.target} target tokens, forward + loss")
    directory = save_random_hf_checkpoint(args.preset)
    g = torch.Generator().manual_seed(0)
    vocab = 32000
    ids = torch.randint(3, vocab, (args.batch, args.source), generator=g)
    mask = torch.ones_like(ids)
    mask[1::2, args.source * 3 // 4 :] = 0
    labels = torch.randint(3, vocab, (args.batch, args.target), generator=g)

    results = {}
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        hf = transformers.T5ForConditionalGeneration.from_pretrained(directory, dtype=dtype).eval()
        ours = T5Model.from_pretrained(directory, dtype=dtype)
        with torch.inference_mode():
            ref = hf(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
            got = ours(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
            # Calls alternate between the engines, so a drift in machine load hits both alike.
            def run_hf(m=hf):
                return m(input_ids=ids, attention_mask=mask, labels=labels)

            def run_ours(m=ours):
                return m(input_ids=ids, attention_mask=mask, labels=labels)

            run_hf(), run_ours()
            hf_times, our_times = [], []
            for _ in range(args.repeat):
                hf_times.append(time_it(run_hf, warmup=0, repeat=1))
                our_times.append(time_it(run_ours, warmup=0, repeat=1))
            t_hf, t_ours = statistics.median(hf_times), statistics.median(our_times)
        results[dtype_name] = (t_hf, t_ours)
        print(f"{dtype_name}: transformers {t_hf * 1000:8.1f} ms   t5kit {t_ours * 1000:8.1f} ms   "
              f"speed-up {t_hf / t_ours:5.2f}x   (loss {ref:.5f} vs {got:.5f})")
        del hf, ours


if __name__ == "__main__":
    main()
