"""The layers on their own (the whole model against transformers is in test_t5.py)."""

from __future__ import annotations

import torch

from t5kit import T5Config
from t5kit.model import Attention, RelativePositionBias


def test_a_layer_built_on_its_own_holds_no_uninitialised_memory():
    """An Attention (or its position table) built outside T5Model is defined: its table is zeros until
    T5Model.reset_parameters draws the paper's init. It once came from torch.empty, and a kernel test built
    that way read NaN in about 3% of runs."""
    config = T5Config.from_preset("tiny")
    for _ in range(20):
        torch.empty(config.relative_attention_num_buckets, config.num_heads).fill_(float("nan"))  # dirty the pool
        table = RelativePositionBias(config, bidirectional=True)
        assert torch.equal(table.weight, torch.zeros_like(table.weight))
        attn = Attention(config, has_relative_bias=True)
        assert all(torch.isfinite(p).all() for p in attn.parameters())
