"""`t5kit adapter merge` and `t5kit adapter info` through the real command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import T5_VOCAB
from hf_models import build_hf_model, padded_batch

from t5kit import T5Model
from t5kit.adapters import LoRAConfig, add_lora, lora_parameters, save_adapter

RELATIVE = 1e-5  # as tests/adapters/test_lora.py: 1e-5 of the largest logit


def t5kit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t5kit", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """(base directory with a tokenizer file, adapter directory, the adapted model's logits, the batch)."""
    hf = build_hf_model("v1.1-gated-untied")
    base = tmp_path_factory.mktemp("base")
    hf.save_pretrained(base)
    shutil.copyfile(T5_VOCAB / "spiece.model", base / "spiece.model")
    model = T5Model.from_pretrained(base).eval()
    add_lora(model, LoRAConfig(r=4, alpha=16, targets=("q", "v", "wo")))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    adapter = save_adapter(model, tmp_path_factory.mktemp("adapter"), base_model_name_or_path=str(base))
    ids, mask, labels = padded_batch(hf.config.vocab_size)
    batch = dict(input_ids=ids, attention_mask=mask, labels=labels)
    with torch.no_grad():
        logits = model(**batch).logits
    return base, adapter, logits, batch


def test_merge_writes_a_plain_checkpoint_both_libraries_load(adapted, tmp_path):
    import transformers

    base, adapter, logits, batch = adapted
    out = tmp_path / "merged"
    result = t5kit("adapter", "merge", str(base), str(adapter), str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "spiece.model").is_file() and not (out / "adapter_config.json").exists()
    scale = float(logits.abs().max())
    with torch.no_grad():
        ours = T5Model.from_pretrained(out).eval()(**batch).logits
        theirs = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()(**batch).logits
    assert float((ours - logits).abs().max()) <= RELATIVE * scale
    assert float((theirs - logits).abs().max()) <= RELATIVE * scale
    with torch.no_grad():
        plain = T5Model.from_pretrained(base).eval()(**batch).logits
    assert float((plain - logits).abs().max()) > 1e-2 * scale  # the merge changed the weights

    again = t5kit("adapter", "merge", str(base), str(adapter), str(out))
    assert again.returncode == 1 and "exists and is not empty" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_info_reports_config_targets_and_parameters(adapted, tmp_path):
    base, adapter, _, _ = adapted
    result = t5kit("adapter", "info", str(adapter), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["r"] == 4 and info["alpha"] == 16 and info["scale"] == 4 and info["targets"] == ["q", "v", "wo"]
    # q and v in 2 encoder self, 2 decoder self and 2 cross attentions (in 32, out 48); wo in 4 feed-forwards
    assert info["layers"] == 16 and info["tensors"] == 32
    assert info["parameters"] == 12 * 4 * (32 + 48) + 4 * 4 * (40 + 32)
    assert info["base_model_name_or_path"] == str(base)
    text = t5kit("adapter", "info", str(adapter))
    assert text.returncode == 0 and "r 4, alpha 16 (scale 4)" in text.stdout and "q, v, wo (16 layers)" in text.stdout

    broken = tmp_path / "dora"
    shutil.copytree(adapter, broken)
    config = json.loads((broken / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    result = t5kit("adapter", "info", str(broken))
    assert result.returncode == 1 and "DoRA" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_generate_with_adapter_equals_the_merged_model(tmp_path, t5_vocab_dir):
    """``t5kit generate --adapter`` (``Generator.from_pretrained(..., adapter=)``) decodes as the merged checkpoint
    does, and not as the base does."""
    from t5kit import Generator, T5Config
    from t5kit.adapters import merge_adapter

    torch.manual_seed(0)
    model = T5Model(T5Config.from_preset("tiny")).eval()
    base = tmp_path / "base"
    model.save_pretrained(base)
    shutil.copyfile(t5_vocab_dir / "spiece.model", base / "spiece.model")
    add_lora(model, LoRAConfig(r=4, alpha=8, targets=("q", "v", "wo")))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    adapter = save_adapter(model, tmp_path / "adapter")
    merged = merge_adapter(base, adapter, tmp_path / "merged")
    texts = ["translate English to German: The house is wonderful.", "summarize: a river runs through the city"]
    options = dict(max_new_tokens=8)
    expected = [r.text for r in Generator.from_pretrained(merged).generate(texts, **options)]
    assert [r.text for r in Generator.from_pretrained(base, adapter=adapter).generate(texts, **options)] == expected
    unmerged = Generator.from_pretrained(base, adapter=adapter, merge_adapter=False)
    assert [r.text for r in unmerged.generate(texts, **options)] == expected
    assert [r.text for r in unmerged.generate(texts, num_beams=3, **options)] == [
        r.text for r in Generator.from_pretrained(merged).generate(texts, num_beams=3, **options)]
    assert [r.text for r in Generator.from_pretrained(base).generate(texts, **options)] != expected
    out = t5kit("generate", "--model", str(base), "--adapter", str(adapter), "--max-new-tokens", "8", *texts)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == expected
