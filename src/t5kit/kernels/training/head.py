"""The head, the tied lookup and the loss in training: the largest tensors of a step, handled in place.

- :class:`RecycledBuffers`: logits, their gradient and the head's weight gradient reuse last step's memory.
- :class:`TiedGradient`: a tied head's dense weight gradient is handed to the lookup's backward, which adds
  its rows in place, instead of two dense gradients that autograd sums out of place.
- :func:`cross_entropy`: a log-sum-exp per row in forward, the gradient written once in backward.

:class:`TrainingT5Model` replaces :class:`t5kit.model.T5Model`'s ``embed``, ``lm_logits`` and ``loss`` with
these in a plain eager training pass; every other call runs the plain model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t5kit.ids import LABEL_PAD_ID
from t5kit.kernels.training import gemm
from t5kit.kernels.training.common import linear_dtype, plain_weights, training_pass
from t5kit.model.t5 import Seq2SeqOutput, T5Model


def _storage_use_count(storage: torch.UntypedStorage) -> int | None:
    count = getattr(torch._C, "_storage_Use_Count", None)  # private: without it nothing is reused
    return None if count is None else count(storage._cdata)


class RecycledBuffers:
    """The largest tensors of a training step (logits, their gradient, the head's weight gradient) reuse the
    previous step's memory instead of fresh allocations.

    torch's CPU allocator hands blocks of this size straight back to the operating system, and the next
    step faults them in again page by page: a fresh 64 MB matmul output (t5-small's vocab x d_model weight
    gradient) costs ~14 ms more than a reused one here, and these three tensors were ~32k of the ~40k page
    faults of a t5-small step. Measured on the whole step: ~1.5% together with the faster dropout words.

    A buffer is handed out again only when nothing but this pool refers to its storage (its use count is 1):
    a tensor that a caller kept (``output.logits``, a ``.grad`` not yet zeroed to None) is never written
    over; a new buffer is allocated instead. One pool per model; not for two forward passes running at
    once in two threads.
    """

    def __init__(self) -> None:
        self._storages: dict[str, torch.UntypedStorage] = {}

    def empty(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor for ``name``: last step's memory when it is free and the right size."""
        storage = self._storages.get(name)
        nbytes = math.prod(shape) * dtype.itemsize
        if (
            storage is not None
            and storage.device == device
            and storage.nbytes() == nbytes
            and _storage_use_count(storage) == 1
        ):
            return torch.empty(0, dtype=dtype, device=device).set_(storage, 0, shape)
        tensor = torch.empty(shape, dtype=dtype, device=device)
        self._storages[name] = tensor.untyped_storage()
        return tensor

    def clear(self) -> None:
        self._storages.clear()

    def __deepcopy__(self, memo: dict) -> RecycledBuffers:  # a copied model starts with its own, empty pool
        return RecycledBuffers()

    def __getstate__(self) -> dict:
        return {"_storages": {}}


_LOSS_ROWS = 16  # rows of logits per pass: 16 x 32128 float32 is 2 MB, which stays in cache


class _CrossEntropy(torch.autograd.Function):
    """Token-mean cross entropy over rows of logits, label -100 ignored, in float32 whatever the logits' dtype.

    ``F.cross_entropy`` writes a log-softmax as large as the logits in forward, and in backward a zero-filled
    one-hot gradient plus a third such tensor (each a fresh 33 MB for t5-small's batch, page faults
    included, and a float32 copy of bf16 logits first). Here the forward keeps one log-sum-exp per row and
    the backward writes the gradient once, softmax minus one-hot, a few cache-sized rows at a time.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, buffers: RecycledBuffers | None) -> Tensor:  # type: ignore[override]
        ctx.buffers = buffers
        valid = labels != LABEL_PAD_ID
        targets = torch.where(valid, labels, 0)
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], _LOSS_ROWS):
            lse[start : start + _LOSS_ROWS] = torch.logsumexp(logits[start : start + _LOSS_ROWS].float(), -1)
        target_logits = logits.gather(1, targets[:, None]).squeeze(1).float()
        count = valid.sum()
        ctx.save_for_backward(logits, lse, targets, valid, count)
        return ((lse - target_logits) * valid).sum() / count  # no valid label: 0 / 0 = nan, as torch gives

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        logits, lse, targets, valid, count = ctx.saved_tensors
        row_scale = valid * (grad_loss.float() / count)  # d loss / d (per-row loss); 0 on ignored rows
        if ctx.buffers is not None and logits.is_contiguous():
            grad = ctx.buffers.empty("logits_grad", tuple(logits.shape), logits.dtype, logits.device)
        else:
            grad = torch.empty_like(logits)
        rows = torch.arange(logits.shape[0], device=logits.device)
        for start in range(0, logits.shape[0], _LOSS_ROWS):
            end = min(start + _LOSS_ROWS, logits.shape[0])
            out = grad[start:end]
            work = out if out.dtype == torch.float32 else torch.empty(out.shape, device=out.device)
            torch.sub(logits[start:end], lse[start:end, None], out=work)
            work.exp_().mul_(row_scale[start:end, None])  # softmax x scale
            work[rows[: end - start], targets[start:end]] -= row_scale[start:end]  # minus one-hot x scale
            if work is not out:
                out.copy_(work)
        return grad, None, None


def cross_entropy(logits: Tensor, labels: Tensor, buffers: RecycledBuffers | None = None) -> Tensor:
    """Mean cross entropy of ``logits`` [N, vocab] against ``labels`` [N] (-100 = ignore), float32.

    With ``buffers`` the gradient of the logits reuses the previous step's memory (:class:`RecycledBuffers`).
    """
    if torch.compiler.is_compiling():
        return F.cross_entropy(logits.float(), labels, ignore_index=LABEL_PAD_ID)
    return _CrossEntropy.apply(logits, labels, buffers)


class TiedGradient:
    """Hands the tied head's dense weight gradient to the embedding's backward, which adds its rows in place.

    Without it the tied weight gets two gradients that autograd sums out of place: a dense vocab x d_model
    matrix from the head and another, zero-filled and scattered into, from the lookup (64 MB each for
    t5-small, plus the sum's 64 MB). The head's backward always runs before the lookup's (the lookup's
    output feeds everything the head reads), so the lookup finds the head's gradient ready; when the loss
    never reaches the head (say, a loss on the encoder output alone) it starts from zeros, as usual. One
    per forward pass.
    """

    def __init__(self) -> None:
        self.dense: Tensor | None = None

    def take(self) -> Tensor | None:
        dense, self.dense = self.dense, None
        return dense


class _Head(torch.autograd.Function):
    """``hidden @ weight.T`` in training: logits and weight gradient in :class:`RecycledBuffers`, and a tied
    weight's gradient handed to a :class:`TiedGradient` instead of autograd."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, tied: TiedGradient | None, buffers: RecycledBuffers) -> Tensor:  # type: ignore[override]
        device = hidden.device.type
        dtype = linear_dtype(device, weight.dtype)
        h, w = hidden.to(dtype), weight.to(dtype)  # what autocast would do to a linear layer's inputs
        ctx.save_for_backward(h, w)
        ctx.tied, ctx.buffers, ctx.hidden_dtype, ctx.weight_dtype = tied, buffers, hidden.dtype, weight.dtype
        rows = h.reshape(-1, h.shape[-1])
        logits = buffers.empty("logits", (rows.shape[0], w.shape[0]), dtype, h.device)
        with torch.autocast(device, enabled=False):
            gemm.mm_into(logits, rows, w.t())
        return logits.view(*h.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        h, w = ctx.saved_tensors
        grad = grad.to(w.dtype).reshape(-1, w.shape[0])
        grad_hidden = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_hidden = gemm.mm(grad, w).view(h.shape).to(ctx.hidden_dtype)
        if ctx.needs_input_grad[1]:
            rows = h.reshape(-1, h.shape[-1])
            weight_grad = ctx.buffers.empty("head_weight_grad", tuple(w.shape), ctx.weight_dtype, w.device)
            if w.dtype == ctx.weight_dtype:
                gemm.mm_into(weight_grad, grad.t(), rows)
            else:  # autocast: the product in the low precision, the gradient in the weight's
                weight_grad.copy_(grad.t().mm(rows))
            if ctx.tied is not None:
                ctx.tied.dense = weight_grad
            else:
                grad_weight = weight_grad
        return grad_hidden, grad_weight, None, None


class _TiedEmbedding(torch.autograd.Function):
    """Embedding lookup whose backward adds its rows into the head's gradient (see :class:`TiedGradient`)."""

    @staticmethod
    def forward(ctx, ids: Tensor, weight: Tensor, tied: TiedGradient) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(ids)
        ctx.tied, ctx.weight_shape, ctx.weight_dtype = tied, weight.shape, weight.dtype
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:  # type: ignore[override]
        (ids,) = ctx.saved_tensors
        dense = ctx.tied.take()
        if dense is None:
            dense = torch.zeros(ctx.weight_shape, dtype=ctx.weight_dtype, device=grad.device)
        dense.index_add_(0, ids.reshape(-1), grad.reshape(-1, dense.shape[1]).to(dense.dtype))
        return None, dense, None


class TrainingT5Model(T5Model):
    """:class:`T5Model` whose training pass takes the head, tied lookup and loss above."""

    def _trains(self, *layers: nn.Module) -> bool:
        """Whether the weights of ``layers`` get a gradient from this pass in plain eager training."""
        if not training_pass(self):
            return False
        weights = plain_weights(*layers)
        return weights is not None and all(w.requires_grad for w in weights)

    def forward(self, *args, **kwargs) -> Seq2SeqOutput:
        if not hasattr(self, "_recycled"):
            self._recycled = RecycledBuffers()
        self._tied = TiedGradient() if self.tied and self._trains(self.shared, self.lm_head) else None
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._tied = None

    def embed(self, ids: Tensor) -> Tensor:
        tied = getattr(self, "_tied", None)
        return super().embed(ids) if tied is None else _TiedEmbedding.apply(ids, self.shared.weight, tied)

    def lm_logits(self, decoder_hidden: Tensor) -> Tensor:
        tied = getattr(self, "_tied", None)
        if tied is None and not self._trains(self.lm_head):
            return super().lm_logits(decoder_hidden)
        if self.config.rescale_decoder_output:
            decoder_hidden = decoder_hidden * (self.config.d_model**-0.5)
        return _Head.apply(decoder_hidden, self.lm_head.weight, tied, self._recycled)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return super().loss(logits, labels)
        return cross_entropy(logits, labels, self._recycled if training_pass(self) else None)

    def train(self, mode: bool = True) -> TrainingT5Model:
        if not mode and hasattr(self, "_recycled"):  # evaluation and generation do not use the pool
            self._recycled.clear()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):  # .to(), .half(), ...: buffers of the old device or dtype go
        if hasattr(self, "_recycled"):
            self._recycled.clear()
        return super()._apply(fn, recurse)
