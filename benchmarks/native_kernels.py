"""t5kit's native small-row kernels against PyTorch's, on the weights one t5-small decoding step reads.

    python benchmarks/native_kernels.py [--threads 2] [--repeat 9]

The 48 decoder weights of t5-small (6 layers x q, k, v, o, cross q, cross o, wi, wo) and the 32128 x 512 head,
random, each product run once per pass at 1, 4, 16 and 64 rows: the weights (154 MB in fp32) stream from DRAM as
in a one-row decoding step. Kernels: MKL (F.linear), oneDNN with a prepacked weight, t5kit's avx2-gemv and
avx2-packed (fp32), fbgemm fp16 and t5kit's avx2-gemv-fp16 and avx2-packed-fp16, fbgemm int8 and t5kit's
avx2-gemv-int8; a torch.sum over the same tensors is the read-bandwidth reference. The kernels take turns within
each pass (a slow moment of the host hits all); the figure is each one's median over the passes. Prints the CPU
model and ISA first.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import machine_line

from t5kit.kernels.inference import native
from t5kit.kernels.inference.linear import store_int8

DECODER = [(512, 512)] * 6 + [(2048, 512), (512, 2048)]  # one layer's weights (out, in), 6 layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    lib = native.library()
    if lib is None:
        raise SystemExit(f"t5kit's native kernels are not available here: {native.unavailable()}")
    torch.manual_seed(0)
    weights = [torch.randn(o, i) * 0.05 for _ in range(6) for o, i in DECODER] + [torch.randn(32128, 512) * 0.05]
    int8 = []
    for w in weights:
        layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(w)
        store_int8(layer)
        int8.append(layer.weight_int8)
    fp16 = [w.half() for w in weights]
    onednn = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in weights]
    fb16 = [torch.ops.quantized.linear_prepack_fp16(w, None) for w in weights]
    fb8 = [torch.ops.quantized.linear_prepack(q, None) for q in int8]
    g8 = [native.pack_int8(q) for q in int8]
    blocks = [native.pack_blocks(w) for w in weights]
    blocks16 = [native.pack_blocks(w) for w in fp16]
    fp32_bytes = sum(w.numel() for w in weights) * 4
    print(f"{len(weights)} weights, {fp32_bytes / 1e6:.0f} MB in fp32; {args.threads} threads; median of "
          f"{args.repeat} passes, milliseconds per pass (all weights once)")
    for rows in (1, 4, 16, 64):
        cases = products({k: torch.randn(rows, k) for k in (512, 2048)}, weights, fp16, onednn, fb16, fb8, g8, lib,
                         blocks, blocks16)
        times: dict[str, list[float]] = {name: [] for name in cases}
        with torch.inference_mode():
            for run in cases.values():
                run()  # warm-up: packs, first-call allocations
            for _ in range(args.repeat):
                for name, run in cases.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
        print(f"\nrows {rows}:")
        for name, ts in times.items():
            ms = statistics.median(ts) * 1e3
            print(f"  {name:24s} {ms:8.2f} ms   {fp32_bytes / (ms / 1e3) / 1e9:6.1f} GB/s fp32-equivalent")


def products(xs, weights, fp16, onednn, fb16, fb8, g8, lib, blocks, blocks16) -> dict:
    """One pass over every weight per kernel, on the inputs ``xs`` (by width)."""
    return {
        "torch.sum (read bound)": lambda: [torch.sum(w) for w in weights],
        "mkl fp32": lambda: [F.linear(xs[w.shape[1]], w) for w in weights],
        "onednn fp32": lambda: [torch.ops.mkldnn._linear_pointwise(xs[w.shape[1]], p, None, "none", [], "")
                                for w, p in zip(weights, onednn)],
        "avx2-gemv fp32": lambda: [native.gemm(lib, xs[w.shape[1]], w) for w in weights],
        "avx2-packed fp32": lambda: [native.gemm_packed(lib, xs[w.shape[1]], p) for w, p in zip(weights, blocks)],
        "fbgemm fp16": lambda: [torch.ops.quantized.linear_dynamic_fp16(xs[w.shape[1]], p)
                                for w, p in zip(weights, fb16)],
        "avx2-gemv fp16": lambda: [native.gemm(lib, xs[w.shape[1]], w) for w in fp16],
        "avx2-packed fp16": lambda: [native.gemm_packed(lib, xs[w.shape[1]], p) for w, p in zip(fp16, blocks16)],
        "fbgemm int8": lambda: [torch.ops.quantized.linear_dynamic(xs[w.shape[1]], p, True)
                                for w, p in zip(weights, fb8)],
        "avx2-gemv int8": lambda: [native.gemm_i8(lib, xs[w.shape[1]], p) for w, p in zip(weights, g8)],
    }


if __name__ == "__main__":
    main()
