#!/usr/bin/env bash
# Build t5kit's built-in model v2 from text on a Debian machine plus the package descriptions apt fetches.
#
#   bash recipes/builtin-v2/build.sh                  # every stage; finished stages are skipped, broken ones resume
#   WORK=/var/tmp/bw2 THREADS=1 PRECISION=bf16 bash recipes/builtin-v2/build.sh
#
# Stages: import corpora, held out by package (gettext catalogues, DDTP descriptions via `apt-get update`,
# WordNet, English text) -> SentencePiece vocabulary -> span-corruption pre-training on the English text ->
# fine-tuning on the seven-task mixture of tasks.yaml (two phases) -> `t5kit convert --dtype bf16` -> `t5kit eval` on the
# TEST splits -> baselines (copy the input, lead words, majority class) scored by the same evaluate().
# Everything lands in $WORK; the last stage leaves $WORK/model ready to ship and $WORK/scores.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"
WORK="${WORK:-runs/builtin-v2-work}"
T5KIT="${T5KIT:-t5kit}"
THREADS="${THREADS:-2}"
# fp32 (the configs' own), or bf16 autocast where the CPU computes bf16 natively (t5kit warns and keeps fp32
# elsewhere): 1.6-1.8x fp32's speed on a Zen 5 EPYC (benchmarks/README.md), several times slower on a Zen 3.
PRECISION="${PRECISION:-fp32}"
DECODING_TRANSLATION="${DECODING_TRANSLATION:---num-beams 4}"
DECODING_OTHER="${DECODING_OTHER:-}"
TASKS=(gettext_en_fr gettext_en_de ddtp_en_fr ddtp_en_de ddtp_summarize ddtp_section wordnet_define)
mkdir -p "$WORK"
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

# -- 1. corpora, every split by package --------------------------------------------------------------
[ -f "$WORK/gettext/manifest.json" ] || $T5KIT data import gettext --out "$WORK/gettext" --lang fr --lang de --split-by package
# --fetch runs `apt-get update -o Acquire::Languages=<lang>` for en, fr, de (root), copying each language's
# Translation files out before the next call replaces them.
[ -f "$WORK/ddtp/manifest.json" ] || $T5KIT data import ddtp --out "$WORK/ddtp" --lang fr --lang de --fetch
[ -f "$WORK/wordnet/manifest.json" ] || $T5KIT data import wordnet --out "$WORK/wordnet"
[ -f "$WORK/text/manifest.json" ] || $T5KIT data import text --out "$WORK/text" --split-by package
cp "$HERE/tasks.yaml" "$WORK/tasks.yaml"
stamp "corpora ready"

# -- 2. vocabulary: TRAIN splits only, flattened to lines (the tokenizer reads plain text) -------------------
if [ ! -f "$WORK/tokenizer/spiece.model" ]; then
  python - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
out = open(work / "tokenizer-corpus.txt", "w", encoding="utf-8")


def lines(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


n = 0
for rec in lines(work / "text/train.jsonl"):  # English running text, thinned so French and German count
    for text in rec["text"].split("\n"):
        if text.strip():
            if n % 12 == 0:
                out.write(text.strip() + "\n")
            n += 1
for corpus in ("gettext", "ddtp"):
    for lang in ("fr", "de"):
        for rec in lines(work / corpus / f"en-{lang}" / "train.jsonl"):
            out.write(rec["en"].replace("\n", " ") + "\n" + rec[lang].replace("\n", " ") + "\n")
for i, rec in enumerate(lines(work / "wordnet/train.jsonl")):
    if i % 3 == 0:
        out.write(rec["word"] + ": " + rec["definition"] + "\n")
out.close()
PY
  $T5KIT tokenizer train --input "$WORK/tokenizer-corpus.txt" --vocab-size 15900 --num-sentinels 100 \
    --input-sentence-size 800000 --character-coverage 0.9999 --threads "$THREADS" --out "$WORK/tokenizer"
fi
stamp "vocabulary ready"

# -- 3. span-corruption pre-training on the English text ---------------------------------------------------
resume() { ls -d "$1"/step-* >/dev/null 2>&1 && echo --resume || true; }
$T5KIT pretrain "$HERE/pretrain.yaml" --out "$WORK/pretrain" $(resume "$WORK/pretrain") \
  --set data.source="$WORK/text/train.jsonl" --set data.tokenizer="$WORK/tokenizer" --set train.threads="$THREADS" \
  --set train.precision="$PRECISION"
PRETRAINED="$(ls -d "$WORK"/pretrain/step-* | sort -V | tail -1)"
stamp "pre-trained: $PRETRAINED"

# -- 4. fine-tuning on the seven-task mixture, two phases ---------------------------------------------------
# finetune CONFIG OUT FROM: one phase from checkpoint FROM (resumed if OUT has checkpoints); prints its last one.
finetune() {
  $T5KIT train "$HERE/$1" --out "$WORK/$2" $(resume "$WORK/$2") \
    --set model.checkpoint="$3" --set data.tokenizer="$WORK/tokenizer" \
    --set data.tasks_file="$WORK/tasks.yaml" --set train.threads="$THREADS" --set train.precision="$PRECISION" >&2
  ls -d "$WORK/$2"/step-* | sort -V | tail -1
}
PHASE1="$(finetune finetune.yaml finetune "$PRETRAINED")"
stamp "fine-tuned, phase 1: $PHASE1"
FINETUNED="$(finetune finetune2.yaml finetune2 "$PHASE1")"
stamp "fine-tuned, phase 2: $FINETUNED"

# -- 5. the shippable directory: bf16 weights (t5kit loads them back as fp32), vocabulary, task params ----
if [ ! -f "$WORK/model/model.safetensors" ]; then
  rm -rf "$WORK/model-fp32" && mkdir -p "$WORK/model-fp32"
  cp "$FINETUNED/config.json" "$FINETUNED/model.safetensors" "$WORK/model-fp32/"
  cp "$WORK"/tokenizer/* "$WORK/model-fp32/"
  $T5KIT convert "$WORK/model-fp32" "$WORK/model" --dtype bf16
  python - "$WORK/model/config.json" <<'PY'
import json, sys

path = sys.argv[1]
config = json.load(open(path, encoding="utf-8"))
from t5kit.data.prefixes import PREFIXES

# `t5kit generate --task NAME TEXT`, the server and the playground add the prefix and these decoding options;
# the names are t5kit's prefix registry's. Beam 4 for translation, as the card's scores were measured.
options = {"translate_en_fr": {"max_length": 128, "num_beams": 4},
           "translate_en_de": {"max_length": 128, "num_beams": 4},
           "summarize": {"max_length": 64}, "debian_section": {"max_length": 8}, "define": {"max_length": 64}}
config["task_specific_params"] = {name: {"prefix": PREFIXES[name], **opts} for name, opts in options.items()}
json.dump(config, open(path, "w", encoding="utf-8"), indent=2)
PY
fi
python - "$WORK" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
out = {}
for corpus in ("text", "gettext", "wordnet", "ddtp"):
    manifest = json.loads((work / corpus / "manifest.json").read_text(encoding="utf-8"))
    out[corpus] = manifest.get("source_packages", {}) or manifest.get("licence", "")
(work / "model" / "DATA_LICENCES.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n", encoding="utf-8")
PY
stamp "model assembled: $WORK/model"

# -- 6. held-out evaluation (TEST splits) and baselines, scored by the same evaluate() -------------------------
for task in "${TASKS[@]}"; do
  decoding="$DECODING_OTHER"
  case "$task" in *_en_fr|*_en_de) decoding="$DECODING_TRANSLATION" ;; esac
  # shellcheck disable=SC2086  # the decoding options are several words on purpose
  [ -f "$WORK/eval/$task/metrics.json" ] || $T5KIT eval --model "$WORK/model" --tasks "$WORK/tasks.yaml" \
    --task "$task" --split test --batch-size 64 --max-new-tokens 128 $decoding --threads "$THREADS" \
    --output-dir "$WORK/eval/$task"
done
python "$HERE/baselines.py" "$WORK" "${TASKS[@]}" | tee "$WORK/scores.md"
stamp "done: $WORK/model, $WORK/scores.md"
