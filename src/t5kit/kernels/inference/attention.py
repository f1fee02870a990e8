"""One decoding step of a small batch: two small matmuls instead of the fused attention kernel.

With one query per row and few rows, ``F.scaled_dot_product_attention``'s fixed cost on CPU exceeds the
work (measured in session 3 on t5-small greedy decoding, batch 1); the softmax stays in float32 as in the
fused path. Replaces :meth:`t5kit.model.layers.Attention.attend` outside training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from t5kit.model.layers import Attention

MAX_ROWS = 4  # above this many rows the fused kernel was as fast or faster


class DecodeStepAttention(Attention):
    """:class:`Attention` with the small-step path above."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        if self.training or q.shape[2] != 1 or q.shape[0] > MAX_ROWS:
            return super().attend(q, k, v, bias)
        scores = torch.matmul(q, k.transpose(-1, -2)) + bias
        out = torch.matmul(scores.float().softmax(-1).to(v.dtype), v)
        return self.o(out.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.num_heads * self.d_kv))
