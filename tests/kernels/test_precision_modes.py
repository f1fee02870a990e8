"""Precision modes (t5kit.kernels.inference.precision): bf16 only where the CPU computes it, fp16w and int8
copies on the chosen kernels, CPU only."""

from __future__ import annotations

import pytest
import torch

from t5kit import T5Config, T5Model
from t5kit.kernels.inference import precision as precision_module
from t5kit.kernels.inference.precision import (
    PRECISIONS,
    PrecisionError,
    PrecisionWarning,
    effective_precision,
    inference_model,
)


@pytest.fixture
def model() -> T5Model:
    torch.manual_seed(0)
    return T5Model(T5Config.from_preset("tiny")).eval()


def test_bf16_falls_back_to_fp32_with_a_warning_where_the_cpu_emulates_it(model, monkeypatch):
    monkeypatch.setattr(precision_module, "native_bf16", lambda: False)
    monkeypatch.delenv("T5KIT_BF16", raising=False)
    with pytest.warns(PrecisionWarning, match="no native bf16 .* running in fp32 instead"):
        copy = inference_model(model, "bf16")
    assert copy is model and model.dtype == torch.float32
    monkeypatch.setenv("T5KIT_BF16", "emulate")  # insisting gives bf16
    assert inference_model(model, "bf16").dtype == torch.bfloat16


def test_bf16_is_kept_where_native(monkeypatch):
    monkeypatch.setattr(precision_module, "native_bf16", lambda: True)
    monkeypatch.delenv("T5KIT_BF16", raising=False)
    assert effective_precision("bf16") == "bf16"
    assert [effective_precision(p) for p in PRECISIONS] == list(PRECISIONS)


def test_weight_formats_run_on_cpu_only(model):
    with torch.device("meta"):
        meta = T5Model(T5Config.from_preset("tiny"))
    for precision in ("fp16w", "int8"):
        with pytest.raises(PrecisionError, match=f"precision {precision} runs on CPU only"):
            precision_module.convert(meta, precision)


def test_fp16w_halves_the_weight_bytes_of_the_layers(model):
    copy = inference_model(model, "fp16w")
    layers = [m for n, m in copy.named_modules() if hasattr(m, "weight_fp16") and n != "lm_head"]
    fp32 = sum(model.get_submodule(n).weight.numel() * 4 for n, m in copy.named_modules() if m in layers)
    held = sum(m.weight_fp16.numel() * m.weight_fp16.element_size() + m.weight.numel() * 4 for m in layers)
    assert layers and held == fp32 // 2


def test_layers_with_a_bias_keep_their_fp32_weights():
    """The weight-format kernels take no bias: a user's biased layer stays plain rather than lose its bias."""
    from torch import nn

    from t5kit.kernels.inference.precision import store_weights

    layer = nn.Linear(8, 4)
    store_weights(nn.Sequential(layer), "int8")
    assert "_t5kit_storages" not in layer.__dict__ and layer.weight.shape == (4, 8)
