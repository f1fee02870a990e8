"""Generation speed: t5kit against `transformers` and CTranslate2 on the same random weights, in one run.

    python benchmarks/generate.py [--presets t5-small t5-v1_1-small] [--threads 2] [--quick]

For each preset one random checkpoint is saved (``common.save_random_hf_checkpoint``) and every engine
loads it: t5kit fp32 / bf16 / int8, transformers fp32 / bf16, CTranslate2 float32 / int8 (converted from
that checkpoint). Scenarios: greedy batch 1, greedy batch 16, beam 4 batch 1; source 64 tokens, exactly
64 new tokens (EOS suppressed in every engine). Each engine runs in its own process, so its peak memory
(max RSS) is its own and no engine's thread pool disturbs another's. Prints new tokens/s, peak memory,
the ratios the issue sets targets for, and greedy batch-1 fp32 speed as a fraction of the memory-bandwidth
bound (decoder + head weight bytes read per step / measured copy bandwidth of a 512 MiB tensor).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from t5kit.tokenizer import t5_vocabulary_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, peak_rss_mb, save_random_hf_checkpoint, set_threads, time_it  # noqa: E402


def peak_memory_mb() -> float:
    """This process's own peak RSS (VmHWM; ru_maxrss would carry over the parent's peak across fork+exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()

ENGINES = ["t5kit-fp32", "t5kit-bf16", "t5kit-int8", "transformers-fp32", "transformers-bf16", "ct2-float32",
           "ct2-int8"]
SCENARIOS = [("greedy-b1", 1, 1), ("greedy-b16", 16, 1), ("beam4-b1", 1, 4)]  # name, batch, beams
SOURCE, NEW = 64, 64
VOCAB_DIR = t5_vocabulary_path()  # spiece.model, shipped in the package
# tokenizer.json, which the CTranslate2 converter reads: the tests' copy of the T5 vocabulary
TOKENIZER_JSON = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "t5-vocab" / "tokenizer.json"


def make_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(3, 32000, (batch, SOURCE), generator=g)
    ids[:, -1] = 1
    return ids, torch.ones_like(ids)


def engine_runner(engine: str, directory: Path):
    """A function (batch ids, mask, beams) -> generated ids [batch, NEW] for the engine."""
    if engine.startswith("t5kit"):
        from t5kit import T5Model
        from t5kit.generate import generate

        precision = engine.split("-")[1]
        from t5kit.kernels import install
        from t5kit.kernels.inference.precision import inference_model

        # As t5kit.Generator prepares it: converted to the precision, with the inference kernels installed.
        model = install(inference_model(T5Model.from_pretrained(directory).eval(), precision), "inference")

        def run(ids, mask, beams):
            out = generate(model, ids, mask, max_new_tokens=NEW, num_beams=beams, suppress_tokens=[1])
            return out.sequences[:, 1:]
        return run
    if engine.startswith("transformers"):
        import transformers

        dtype = torch.bfloat16 if engine.endswith("bf16") else torch.float32
        hf = transformers.T5ForConditionalGeneration.from_pretrained(directory, dtype=dtype).eval()

        def run(ids, mask, beams):
            with torch.inference_mode():
                out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, num_beams=beams,
                                  do_sample=False, suppress_tokens=[1])
            return out[:, 1:]
        return run
    import ctranslate2

    compute_type = engine.split("-")[1]
    translator = ctranslate2.Translator(str(directory / "ct2"), device="cpu", compute_type=compute_type,
                                        inter_threads=1, intra_threads=torch.get_num_threads())
    from t5kit.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(VOCAB_DIR)

    def run(ids, mask, beams):
        source = [tokenizer.convert_ids_to_tokens(row[m.bool()].tolist()) for row, m in zip(ids, mask)]
        results = translator.translate_batch(source, beam_size=beams, max_decoding_length=NEW,
                                             min_decoding_length=NEW, suppress_sequences=[["</s>"]],
                                             max_batch_size=len(source))
        return torch.tensor([[tokenizer.piece_to_id(t) for t in r.hypotheses[0]] for r in results])
    return run


def run_engine(engine: str, directory: Path, repeat: int) -> dict:
    """Child process: time every scenario for one engine; returns tokens/s, seconds and peak RSS."""
    run = engine_runner(engine, directory)
    results = {}
    for name, batch, beams in SCENARIOS:
        ids, mask = make_inputs(batch)
        out = run(ids, mask, beams)
        assert out.shape == (batch, NEW), (engine, name, tuple(out.shape))  # exactly NEW new tokens
        seconds = time_it(lambda ids=ids, mask=mask, beams=beams: run(ids, mask, beams), warmup=1, repeat=repeat)
        results[name] = {"seconds": seconds, "tokens_per_s": batch * NEW / seconds}
    results["peak_rss_mb"] = peak_memory_mb()
    return results


def copy_bandwidth_gbs() -> float:
    """Copy bandwidth (read + write bytes per second) of a 512 MiB tensor, best of 5."""
    src = torch.ones(128 * 1024 * 1024)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def step_weight_bytes(directory: Path) -> int:
    """fp32 bytes of the weights one greedy decoding step reads: decoder layers (cross-attention k/v are
    computed once per source, so not counted) and the output head."""
    from t5kit import T5Config

    c = T5Config.from_json_file(directory / "config.json")
    attn = 4 * c.d_model * c.inner_dim + 2 * c.d_model * c.inner_dim
    ffn = (3 if c.is_gated else 2) * c.d_model * c.d_ff
    return 4 * (c.num_decoder_layers * (attn + ffn) + c.vocab_size * c.d_model)


def prepare_checkpoint(preset: str) -> Path:
    directory = save_random_hf_checkpoint(preset)
    shutil.copy(VOCAB_DIR / "spiece.model", directory / "spiece.model")
    shutil.copy(TOKENIZER_JSON, directory / "tokenizer.json")  # the CTranslate2 converter reads the vocabulary
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(directory)).convert(str(directory / "ct2"), force=True)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["t5-small", "t5-v1_1-small"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engines", nargs="+", default=ENGINES)
    parser.add_argument("--quick", action="store_true", help="one preset (t5-small), one timed repeat")
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_threads(args.threads)
    if args.child:
        print(json.dumps(run_engine(args.child[0], Path(args.child[1]), args.repeat)))
        return
    if args.quick:
        args.presets, args.repeat = args.presets[:1], 1

    print(machine_line(args.threads))
    bandwidth = copy_bandwidth_gbs()
    print(f"copy bandwidth (512 MiB tensor): {bandwidth:.1f} GB/s; source {SOURCE} tokens, {NEW} new tokens "
          "(EOS suppressed); median of", args.repeat, "runs")
    for preset in args.presets:
        directory = prepare_checkpoint(preset)
        table: dict[str, dict] = {}
        for engine in args.engines:
            cmd = [sys.executable, __file__, "--child", engine, str(directory), "--threads", str(args.threads),
                   "--repeat", str(args.repeat)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"  {engine}: failed\n{done.stderr[-2000:]}")
                continue
            table[engine] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"\n{preset}: new tokens/s (peak RSS MiB)")
        print(f"{'engine':<20}" + "".join(f"{name:>14}" for name, _, _ in SCENARIOS) + f"{'peak MiB':>10}")
        for engine, row in table.items():
            cells = "".join(f"{row[name]['tokens_per_s']:>14.1f}" for name, _, _ in SCENARIOS)
            print(f"{engine:<20}{cells}{row['peak_rss_mb']:>10.0f}")

        print("targets:")
        checks = [("t5kit-fp32", "transformers-fp32", "greedy-b1", 3.0), ("t5kit-fp32", "transformers-fp32",
                  "beam4-b1", 3.0), ("t5kit-fp32", "ct2-float32", "greedy-b1", 1.3)]
        checks += [("t5kit-int8", "ct2-int8", name, 1.0) for name, _, _ in SCENARIOS]
        for a, b, scenario, target in checks:
            if a in table and b in table:
                r = table[a][scenario]["tokens_per_s"] / table[b][scenario]["tokens_per_s"]
                verdict = "met" if r >= target else "NOT met"
                print(f"  {a} / {b} at {scenario}: {r:.2f}x (target >= {target}x) {verdict}")
        if "t5kit-fp32" in table:
            bound = bandwidth * 1e9 / step_weight_bytes(directory)
            got = table["t5kit-fp32"]["greedy-b1"]["tokens_per_s"]
            print(f"  t5kit fp32 greedy batch 1: {got:.1f} tokens/s = {got / bound:.2f} of the memory-bandwidth bound "
                  f"({bound:.1f} tokens/s: {step_weight_bytes(directory) / 1e6:.0f} MB of weights per step); above 1 "
                  "means the weights are served from cache, not DRAM")
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
