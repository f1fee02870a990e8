"""Fast paths, installed from outside the model by one rule: :data:`KERNELS` and :func:`install`.

The model (:mod:`t5kit.model`) is plain PyTorch. Each fast path here is a subclass of the plain module it
replaces, written next to the computation it stands for, and falls back to the plain ``forward`` whenever
its own conditions (training with dropout, plain weights, a decoding step ...) do not hold. :func:`install`
swaps a module's class in place (``module.__class__``), so parameters, their names, the optimiser's
references and the checkpoint layout are untouched, and :func:`uninstall` swaps it back.

Who installs them: the trainer (``t5kit.train``) installs the training and inference kernels, the text
pipeline (``t5kit.Generator``) and the server's engine the inference ones; a model used directly
(``T5Model.generate``, a user's loop) stays plain until ``install`` is called on it. ``T5Model.train()``
does not install them: ``train()`` / ``eval()`` flip modes many times a run, while a swap is a structural
change made once, and a user's own training loop over ``T5Model`` gets exactly the plain model unless it
calls ``t5kit.kernels.install(model)``.

Devices: every kernel was measured on CPU only (float32 and bfloat16 autocast). On CUDA and other devices
the plain path runs (SDPA, autocast), so :func:`install` leaves a model there untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from t5kit.kernels.inference.attention import InferenceAttention
from t5kit.kernels.inference.decoder import InferenceDecoder, InferenceDecoderLayer, forget_step_plans
from t5kit.kernels.inference.feedforward import InferenceFeedForward
from t5kit.kernels.inference.fused import forget_fused
from t5kit.kernels.inference.linear import BackendLinear, forget_plans
from t5kit.kernels.inference.norm import InferenceRMSNorm
from t5kit.kernels.training.attention import TrainingAttention
from t5kit.kernels.training.dropout import FastDropout
from t5kit.kernels.training.feedforward import TrainingFeedForward
from t5kit.kernels.training.head import TrainingT5Model
from t5kit.kernels.training.linear import TrainingLinear
from t5kit.kernels.training.norm import TrainingRMSNorm
from t5kit.model import Attention, Decoder, DecoderLayer, Dropout, FeedForward, RMSNorm, T5Model

MODES = ("train", "inference")


@dataclass(frozen=True)
class Kernel:
    """One fast path: the plain class it replaces, the subclass that replaces it, where it applies."""

    replaces: type[nn.Module]
    fast: type[nn.Module]
    mode: str  # "train" or "inference"
    devices: tuple[str, ...]
    dtypes: str  # documentation: the parameter / autocast dtypes it was measured in (others fall back)


# The one rule. Order matters only between two kernels of one plain class: the first listed comes first in
# the swapped class's method order, and each defers to the next (``super()``) when it does not apply.
KERNELS: tuple[Kernel, ...] = (
    Kernel(Dropout, FastDropout, "train", ("cpu",), "any"),
    Kernel(RMSNorm, TrainingRMSNorm, "train", ("cpu",), "float32"),
    Kernel(Attention, TrainingAttention, "train", ("cpu",), "float32, bfloat16 (and bf16 autocast)"),
    Kernel(FeedForward, TrainingFeedForward, "train", ("cpu",), "float32, bfloat16 (and bf16 autocast)"),
    Kernel(T5Model, TrainingT5Model, "train", ("cpu",), "float32, bfloat16 (and bf16 autocast)"),
    # every other linear layer's float32 training products on the backend timed for this CPU (training.gemm)
    Kernel(nn.Linear, TrainingLinear, "train", ("cpu",), "float32"),
    # The decoding step's attention is the plain fused kernel. A two-matmul path for up to 4 rows, once faster,
    # measured slower in torch 2.13 (2 threads, Intel Xeon): alone, at 1-16 rows and 16-128 cached positions,
    # float32 0.85-1.9x the fused kernel's time (below 1 only at 128 positions), bfloat16 1.5-7.7x; t5-small
    # decoding end to end, float32 0.98-1.00x, bfloat16 0.88-0.95x the speed.
    Kernel(RMSNorm, InferenceRMSNorm, "inference", ("cpu",), "float32, bfloat16, float16"),
    # q/k/v and a gated wi_0/wi_1 in one call where its timing says it pays (t5kit.kernels.inference.fused)
    Kernel(Attention, InferenceAttention, "inference", ("cpu",), "float32, bfloat16; the fp16 / int8 copies"),
    Kernel(FeedForward, InferenceFeedForward, "inference", ("cpu",), "float32, bfloat16; the fp16 / int8 copies"),
    Kernel(nn.Linear, BackendLinear, "inference", ("cpu",), "float32, bfloat16; the fp16 / int8 inference copies"),
    # a decoding step's whole layer in one native call, else its residual adds and norms one call each
    # (t5kit.kernels.inference.decoder)
    Kernel(DecoderLayer, InferenceDecoderLayer, "inference", ("cpu",), "float32 activations"),
    # a one-position decoding step's layers, their native steps called with arguments built once per cache
    Kernel(Decoder, InferenceDecoder, "inference", ("cpu",), "float32 activations"),
)

_COMBINED: dict[tuple[type, ...], type] = {}


def _swapped_class(plain: type[nn.Module], fast: list[type[nn.Module]]) -> type[nn.Module]:
    """``fast[0]`` alone, or one class whose method order runs ``fast[0]``, ``fast[1]`` ... then ``plain``."""
    if len(fast) == 1:
        return fast[0]
    key = tuple(fast)
    if key not in _COMBINED:
        name = "".join(cls.__name__.replace(plain.__name__, "") for cls in fast) + plain.__name__
        combined = type(name, key, {"__module__": __name__, "__doc__": f"{plain.__name__} with {name}."})
        globals()[name] = combined  # importable by name, so a pickled module finds its class again
        _COMBINED[key] = combined
    return _COMBINED[key]


def install(model: nn.Module, modes: str | tuple[str, ...] = MODES) -> nn.Module:
    """Swap in the kernels of ``modes`` ("train", "inference" or both) that apply to ``model``'s device.

    Returns ``model`` (changed in place). Installing twice, or over a partly installed model, is harmless.
    """
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown kernel mode {sorted(unknown)[0]!r}: choose from {', '.join(MODES)}")
    uninstall(model)
    parameter = next(model.parameters(), None)
    device = parameter.device.type if parameter is not None else "cpu"
    for module in model.modules():
        chosen = [k.fast for k in KERNELS if type(module) is k.replaces and k.mode in modes and device in k.devices]
        if chosen:
            module.__class__ = _swapped_class(type(module), chosen)
    return model


def uninstall(model: nn.Module) -> nn.Module:
    """Give every module of ``model`` its plain class back."""
    plain_of = {k.fast: k.replaces for k in KERNELS}
    for module in model.modules():
        cls = type(module)
        if issubclass(cls, BackendLinear):
            forget_plans(module)
        forget_fused(module)
        forget_step_plans(module)
        if cls in plain_of:
            module.__class__ = plain_of[cls]
        elif cls in _COMBINED.values():
            module.__class__ = plain_of[cls.__mro__[1]]
    return model


def installed(model: nn.Module) -> list[str]:
    """Names of the fast classes now in ``model`` (for logs and tests)."""
    fast = {k.fast for k in KERNELS} | set(_COMBINED.values())
    return sorted({type(m).__name__ for m in model.modules() if type(m) in fast})
