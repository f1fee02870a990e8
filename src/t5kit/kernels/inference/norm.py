"""RMS norm for inference in six operations instead of torch's composite (replaces
:meth:`t5kit.model.layers.RMSNorm.forward` outside autograd).

torch's CPU ``rms_norm`` is a composite that dispatches about twenty operations (conversions, pow, mean as
a sum and a division, add, rsqrt, two products, type_as). In a decoding step every norm comes right after a
large matrix product, which leaves the caches cold, and then each dispatched operation costs several
microseconds: one norm of a [1, 512] row took 10 us alone and 69 us right after a 512 -> 2048 linear
(2 threads, Intel Xeon). The same arithmetic in the same order (x * x, mean = sum then division, + eps,
rsqrt, the product, the cast, the weight) gives bit-identical results in fewer operations. t5-small
decoding, 64 new tokens, in-process A/B over three runs (per-step floors): float32 greedy batch 1
1.01-1.03x, batch 16 1.01-1.04x, beam 4 1.04x; bfloat16 1.00x, 1.02x, 1.01x.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.compiler import is_compiling as compiling

from t5kit.model.layers import RMSNorm

HALF = (torch.float16, torch.bfloat16)


class InferenceRMSNorm(RMSNorm):
    """:class:`RMSNorm` whose forward, when autograd does not record, is the six operations above."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight
        if torch.is_grad_enabled() or compiling() or x.dtype != weight.dtype:
            return super().forward(x)
        if weight.dtype == torch.float32:
            rstd = torch.mul(x, x).mean(-1, keepdim=True).add_(self.eps).rsqrt_()
            return torch.mul(x, rstd).mul_(weight)
        if weight.dtype in HALF:  # the statistic and the product in float32, rounded before the weight
            x32 = x.float()
            rstd = torch.mul(x32, x32).mean(-1, keepdim=True).add_(self.eps).rsqrt_()
            return torch.mul(x32, rstd).to(weight.dtype).mul_(weight)
        return super().forward(x)
