"""Does the span-corruption pipeline feed training faster than a model consumes it?

Measures, on one CPU thread (``torch.set_num_threads(1)``):

1. span corruption alone, examples/s for 512-token inputs (raw chunks of 568 tokens): one chunk at a time
   (``span_corrupt``, what :class:`SpanCorruptionStream` does) and batched (``span_corrupt_batch``);
2. the whole pipeline from text: tokenize (T5 vocabulary, no EOS) + concatenate + chunk + corrupt + EOS;
3. the model side: a measured forward+backward of a t5-small-shaped ``torch.nn.Transformer`` (d_model 512,
   6+6 layers, 8 heads, d_ff 2048, vocabulary 32128, relu) on 512 input / 114 target tokens on the same single
   thread, or ``--model-rate`` examples/s measured elsewhere (e.g. on the training GPU).

Prints both rates and their ratio. Example::

    .venv/bin/python benchmarks/data.py --seconds 5
    .venv/bin/python benchmarks/data.py --model-rate 1500   # a GPU's measured training throughput
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from t5kit.data import (
    ListSource,
    SpanCorruptionStream,
    span_corrupt,
    span_corrupt_batch,
    span_corruption_lengths,
)

VOCAB = "t5"  # the T5 vocabulary shipped in the package (t5kit.tokenizer.t5_vocabulary_path())


def rate(fn, seconds: float) -> float:
    """Items per second of ``fn() -> items`` over about ``seconds``."""
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += fn()
    return n / (time.perf_counter() - t0)


def corpus_texts(n_chars: int) -> list[str]:
    """English text: the Debian handbook or man pages if present, else a repeated paragraph."""
    texts: list[str] = []
    try:
        from t5kit.data.corpora.text import iter_handbook

        for _, text, _ in iter_handbook():
            texts.append(text)
            if sum(map(len, texts)) > n_chars:
                break
    except Exception:
        pass
    if not texts:
        texts = ["The quick brown fox jumps over the lazy dog while the river runs to the sea. " * 40] * 200
    return texts


def model_rate(seconds: float, batch: int, inputs_length: int, targets_length: int) -> float:
    torch.manual_seed(0)
    d, vocab = 512, 32128
    emb = torch.nn.Embedding(vocab, d)
    tr = torch.nn.Transformer(d, 8, 6, 6, 2048, dropout=0.1, activation="relu", batch_first=True, norm_first=True)
    params = list(emb.parameters()) + list(tr.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    src = torch.randint(0, 32000, (batch, inputs_length))
    tgt = torch.randint(0, 32000, (batch, targets_length))
    mask = torch.nn.Transformer.generate_square_subsequent_mask(targets_length)

    def step() -> int:
        out = tr(emb(src), emb(tgt), tgt_mask=mask, tgt_is_causal=True)
        logits = out @ emb.weight.t()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tgt.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch

    return rate(step, seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs-length", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    ap.add_argument("--batch", type=int, default=256, help="chunks per span_corrupt_batch call")
    ap.add_argument("--model-rate", type=float, default=None,
                    help="examples/s the model trains at (default: measured t5-small-shaped model, 1 thread)")
    ap.add_argument("--model-batch", type=int, default=2)
    ap.add_argument("--gpu-tflops", type=float, default=400.0,
                    help="effective training TFLOP/s for the analytic accelerator estimate (H200 bf16 at ~40%%)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="enable_nested_tensor")
    raw, targets = span_corruption_lengths(args.inputs_length)
    rng = np.random.default_rng(0)
    chunk = rng.integers(3, 32000, raw)
    chunks = rng.integers(3, 32000, (args.batch, raw))
    seed = iter(range(10**12))
    single = rate(lambda: (span_corrupt(chunk, next(seed)), 1)[1], args.seconds)
    batched = rate(lambda: (span_corrupt_batch(chunks, next(seed)), args.batch)[1], args.seconds)
    print(f"inputs {args.inputs_length} tokens (raw chunk {raw}, targets {targets}), one CPU thread")
    print(f"span corruption, one chunk at a time: {single:10.0f} examples/s")
    print(f"span corruption, batches of {args.batch}:     {batched:10.0f} examples/s")

    pipeline = None
    try:
        from t5kit.tokenizer import Tokenizer

        tok = Tokenizer.from_pretrained(VOCAB)
        docs = [{"text": t} for t in corpus_texts(3_000_000)]
        stream = SpanCorruptionStream(ListSource(docs * 50), tok, inputs_length=args.inputs_length)

        def pipe() -> int:
            next(stream)
            return 1

        pipeline = rate(pipe, args.seconds)
        print(f"full pipeline (tokenize+chunk+corrupt+EOS): {pipeline:6.0f} examples/s")
    except Exception as err:  # the tokenizer is optional for this benchmark
        print(f"full pipeline: skipped ({err})")

    if args.model_rate is None:
        consume = model_rate(args.seconds * 2, args.model_batch, args.inputs_length, targets)
        source = "measured: t5-small-shaped nn.Transformer forward+backward+AdamW, 1 CPU thread"
    else:
        consume = args.model_rate
        source = "given by --model-rate"
    print(f"model consumption:                   {consume:10.2f} examples/s ({source})")
    # Analytic accelerator estimate: training costs about 6 FLOPs per parameter per token (attention ignored).
    flops = 6 * 60_506_624 * (args.inputs_length + targets)
    gpu = args.gpu_tflops * 1e12 / flops
    feed = pipeline if pipeline is not None else single
    print(f"accelerator estimate (t5-small, {args.gpu_tflops:.0f} TFLOP/s effective): {gpu:8.0f} examples/s; "
          f"one pipeline core / accelerator: {feed / gpu:.2f}x")
    print(f"ratio pipeline/model: {feed / consume:,.0f}x  (corruption alone: {single / consume:,.0f}x)")


if __name__ == "__main__":
    main()
