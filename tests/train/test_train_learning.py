"""Learning on real data: a tiny T5 trained from scratch for about a minute on short English->French
message pairs from the machine's gettext catalogues lowers its held-out validation loss clearly, and its
greedy outputs start to match the references.

The data: the 600 shortest-form train pairs (one or two English words, e.g. "ACE archive" -> "archive ACE")
from ``t5kit data import gettext``; validation on 64 held-out pairs (strings never seen in training) and on
64 of the training pairs. The run is a fixed number of steps on one thread, so its numbers do not depend
on the machine's load. Measured (torch 2.13 CPU): held-out loss 10.75 -> 5.43, held-out chrF 2.0 -> 12.6,
training pairs exact match 0 -> 12.5 % (chrF 1.7 -> 16.6); the thresholds sit well below these.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import missing_system_part
from train_support import require_vocab, restore_threads  # noqa: F401

from t5kit.data import Collator
from t5kit.evaluate import validate
from t5kit.train import TrainConfig, train
from t5kit.train.setup import build_model, build_streams, build_tokenizer

LOCALE = Path("/usr/share/locale/fr/LC_MESSAGES")


def _short(record: dict) -> bool:
    en, fr = record["en"], record["fr"]
    return len(en.split()) <= 2 and len(en) <= 16 and len(fr) <= 20 and en[:1].isalpha()


@pytest.fixture(scope="module")
def gettext_task(tmp_path_factory) -> Path:
    if not LOCALE.is_dir() or len(list(LOCALE.glob("*.mo"))) < 10:
        missing_system_part("no French gettext catalogues on this machine")
    from t5kit.data.corpora.gettext import import_gettext, iter_pairs

    root = tmp_path_factory.mktemp("gettext")
    import_gettext(root / "import", langs=("fr",))
    train_pairs = [r for r in iter_pairs(root / "import", "fr", "train") if _short(r)][:600]
    held_out = [r for r in iter_pairs(root / "import", "fr", "validation") if _short(r)][:64]
    assert len(train_pairs) == 600 and len(held_out) == 64
    for name, records in (("train", train_pairs), ("held_out", held_out), ("seen", train_pairs[:64])):
        with open(root / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(
                json.dumps({"en": r["en"], "fr": r["fr"]}, ensure_ascii=False) + "\n" for r in records
            )
    metrics = ["chrf", "exact_match"]
    tasks = [
        {
            "name": "en_fr",
            "kind": "translation",
            "source_lang": "en",
            "target_lang": "fr",
            "metrics": metrics,
            "source": {"train": "train.jsonl", "validation": "held_out.jsonl"},
        },
        {
            "name": "en_fr_seen",
            "kind": "translation",
            "source_lang": "en",
            "target_lang": "fr",
            "metrics": metrics,
            "source": {"train": "train.jsonl", "validation": "seen.jsonl"},
        },
    ]
    (root / "tasks.yaml").write_text(yaml.safe_dump({"tasks": tasks}), encoding="utf-8")
    return root / "tasks.yaml"


@pytest.mark.usefixtures("restore_threads")
def test_tiny_model_learns_gettext_en_fr(gettext_task: Path, tmp_path: Path) -> None:
    cfg = TrainConfig.from_dict(
        {
            "model": {
                "preset": "tiny",
                "overrides": {
                    "d_model": 64,
                    "d_ff": 128,
                    "num_heads": 4,
                    "d_kv": 16,
                    "tie_word_embeddings": True,
                },
            },
            "data": {
                "tokenizer": str(require_vocab()),
                "tasks_file": str(gettext_task),
                "train": "en_fr",
                "validation": ["en_fr", "en_fr_seen"],
                "max_inputs_length": 24,
                "max_targets_length": 24,
                "shuffle_buffer": 600,
            },
            "optim": {"name": "adamw", "lr": 3e-3},
            "schedule": {"name": "constant", "warmup_steps": 10},
            "train": {"steps": 350, "batch_size": 16, "threads": 1, "seed": 0},
            "eval": {
                "every": 0,
                "max_examples": 64,
                "batch_size": 64,
                "max_new_tokens": 12,
                "best_metric": "chrf",
            },
            "checkpoint": {"every": 0, "keep_last": 1},
            "log": {"every": 50, "progress": False, "tensorboard": False, "plot": True},
            "out": str(tmp_path / "run"),
        }
    )
    torch.set_num_threads(1)
    tokenizer = build_tokenizer(cfg)
    torch.manual_seed(cfg.train.seed)
    _, val_sets = build_streams(cfg, tokenizer, "finetune", 0, 1)
    collator = Collator(tokenizer, max_inputs_length=24, max_targets_length=24)
    before, _ = validate(build_model(cfg, tokenizer), val_sets, collator, tokenizer, batch_size=64, max_new_tokens=12)

    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    after = result.last_eval
    print(
        f"learning: {seconds:.0f} s; held-out val loss {before['en_fr/val_loss']:.2f} -> "
        f"{after['en_fr/val_loss']:.2f}, chrF {before['en_fr/chrf']:.1f} -> {after['en_fr/chrf']:.1f}, "
        f"exact {before['en_fr/exact_match']:.1f} -> {after['en_fr/exact_match']:.1f}; seen pairs: exact "
        f"{before['en_fr_seen/exact_match']:.1f} -> {after['en_fr_seen/exact_match']:.1f}, chrF "
        f"{before['en_fr_seen/chrf']:.1f} -> {after['en_fr_seen/chrf']:.1f}"
    )
    # held-out loss falls clearly (strings never seen in training)
    assert after["en_fr/val_loss"] < 0.65 * before["en_fr/val_loss"]
    # greedy outputs start to match the references. Held-out chrF after 350 steps moves with the training
    # products' rounding order: on one 2-core AMD EPYC (Zen 4) 2.0 -> 7.9 with MKL and 2.0 -> 12.6 with oneDNN
    # (T5KIT_TRAINING_GEMM; the timed choice flips between them there, 18.0 against 17.7 ms), the same loss
    # 5.53 / 5.46: a gain of 3 holds for both; the seen pairs below carry the larger margin.
    assert after["en_fr/chrf"] > before["en_fr/chrf"] + 3
    assert after["en_fr_seen/chrf"] > before["en_fr_seen/chrf"] + 8
    assert after["en_fr_seen/exact_match"] >= 6.0 > before["en_fr_seen/exact_match"]  # at least 4 of 64 exact
    assert (result.run_dir / "curves.png").stat().st_size > 1000
    assert (result.run_dir / "best").is_dir()
