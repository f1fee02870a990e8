"""A decoder layer whose decoding steps add the residuals and take the RMS norms in native calls (replaces
:meth:`t5kit.model.t5.DecoderLayer.forward` in decoding steps).

In a one-row decoding step the matrix products are the work and everything between them is dispatch: a plain
decoder layer runs three residual adds and three RMS norms of five operations each, ~20 small PyTorch
operations of several microseconds each, more right after a large product has left the caches cold (one
norm of a [1, 512] row: 10 us alone, 69 us after a 512 -> 2048 linear; see ``norm.py``). Here each add and the
norm after it are one call of ``norm.c`` (``native.add_rms_norm``). Only a step with a cache takes this path,
with float32 activations (fp32, fp16-weight and int8-weight modes) and at most :data:`SMALL_ROWS` rows: a
prompt, training, scoring and the encoder keep the plain layer and its rounding. The norm rounds in another
order than the reference (its sum of squares in double): tests/kernels/test_decoder_step.py bounds it against
float64.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.compiler import is_compiling as compiling

from t5kit.kernels.inference import native
from t5kit.model.cache import DecoderCache
from t5kit.model.t5 import DecoderLayer

# A decoding step's rows: 1 per sequence (beams included); the gemv kernels' largest bucket is the same 16.
SMALL_ROWS = 16


class InferenceDecoderLayer(DecoderLayer):
    """:class:`DecoderLayer` whose decoding steps run each residual add and the norm after it in one call."""

    def forward(self, x: Tensor, self_bias: Tensor, memory: Tensor | None, cross_bias: Tensor | None,
                cache: DecoderCache | None = None, index: int = 0) -> Tensor:
        norms = (self.self_attn_norm, self.cross_attn_norm, self.ffn_norm)
        if (cache is None or x.dtype != torch.float32 or x.device.type != "cpu"
                or x.numel() > SMALL_ROWS * x.shape[-1] or torch.is_grad_enabled()
                or (self.training and self.dropout.p) or compiling()
                or any(norm.weight.dtype != torch.float32 for norm in norms)):
            return super().forward(x, self_bias, memory, cross_bias, cache, index)
        lib = native.library()
        if lib is None:
            return super().forward(x, self_bias, memory, cross_bias, cache, index)
        first, cross, ffn = norms
        x = x.contiguous()
        _, normed = native.add_rms_norm(lib, x, None, first.weight, first.eps)
        h = self.self_attn(normed, self_bias, cache=cache, layer=index)
        x, normed = native.add_rms_norm(lib, x, h.contiguous(), cross.weight, cross.eps)
        h = self.cross_attn(normed, cross_bias, memory, cache=cache, layer=index)
        x, normed = native.add_rms_norm(lib, x, h.contiguous(), ffn.weight, ffn.eps)
        return x + self.ffn(normed)
