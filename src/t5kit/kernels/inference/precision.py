"""Inference precision: :data:`PRECISIONS` (the one definition), and copies of a model in each of them.

Every command that loads a model for inference (``t5kit generate``, ``eval``, ``demo``, ``serve``) takes
``--precision`` from :func:`add_precision_argument`, and ``t5kit.Generator(..., precision=)`` applies it
through :func:`inference_model`; search (``t5kit.generate``) decodes whatever model it is given.

``inference_model(model, precision)`` converts once and keeps the copy with the model (a second call is
free); the original is never modified, so training can go on with it. The copy is refreshed when the
original's parameters are changed in place (an optimizer step), detected through their version counters.

- ``fp32``: the model as it is.
- ``bf16``: bf16 weights and activations, only where the CPU computes bf16 in hardware
  (:func:`~t5kit.kernels.inference.cpu.native_bf16`: AVX512-BF16 / AMX); elsewhere PyTorch emulates it,
  slower than fp32, so the copy stays fp32 with a :class:`PrecisionWarning` (``T5KIT_BF16=emulate`` insists).
- ``fp16w``: fp16 weight storage, fp32 activations and accumulation (fbgemm): half the bytes a batch-1 step
  reads from memory, for a weight rounding of 2^-11.
- ``int8``: per-channel int8 weights, activations quantized per call. The output head gets an int8 copy
  beside its fp32 weight, and the backend uses whichever is faster per row count (measured on this Xeon:
  int8 0.5 ms against fp32 1.4 ms at one row; the fp32 weight is the tied embedding anyway).

Every linear layer then runs the kernel :mod:`t5kit.kernels.inference.linear` chooses for this CPU.
"""

from __future__ import annotations

import argparse
import copy
import os
import warnings
from typing import Any

import torch
from torch import nn

from t5kit.errors import T5kitError
from t5kit.generate.search import register_precision_converter
from t5kit.kernels import install as install_kernels
from t5kit.kernels.inference.cpu import cpu_model, native_bf16
from t5kit.kernels.inference.linear import candidates, plain_linear, set_storages

PRECISIONS = ("fp32", "bf16", "fp16w", "int8")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_STORED = {"fp16w": "fp16", "int8": "int8"}  # precision -> the weight format its linear layers hold
BF16_ENV = "T5KIT_BF16"


class PrecisionError(T5kitError, ValueError):
    """An unknown precision name, or a precision this device cannot run."""


class PrecisionWarning(UserWarning):
    """A precision was asked for that this CPU only emulates; the model runs in fp32 instead."""


def bf16_is_native() -> bool:
    """Whether ``bf16`` converts to bf16 here: the CPU computes it natively, or ``T5KIT_BF16=emulate``."""
    return native_bf16() or os.environ.get(BF16_ENV, "").strip().lower() == "emulate"


def effective_precision(precision: str, warn: bool = True, device: str = "cpu") -> str:
    """The precision that will run for ``precision`` on ``device`` (on CPU, ``bf16`` -> ``fp32`` where
    emulated; GPUs are left to their own bf16)."""
    check_precision(precision)
    if precision == "bf16" and device == "cpu" and not bf16_is_native():
        if warn:
            warnings.warn(f"this CPU ({cpu_model()}) has no native bf16 (AVX512-BF16 or AMX), so PyTorch would "
                          "emulate it, slower than fp32: running in fp32 instead (int8 or fp16w also save memory; "
                          f"{BF16_ENV}=emulate forces bf16)", PrecisionWarning, stacklevel=3)
        return "fp32"
    return precision


def check_precision(precision: str) -> str:
    """``precision`` itself when it is one of :data:`PRECISIONS`, else :class:`PrecisionError`."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def add_precision_argument(parser: argparse.ArgumentParser | Any, default: str | None = "fp32") -> None:
    """``--precision {fp32,bf16,int8}``: the one flag, for every command that runs a model for inference
    (``default=None``: the model as loaded)."""
    said = default if default is not None else "the model as loaded"
    parser.add_argument("--precision", default=default, choices=list(PRECISIONS),
                        help="inference precision: fp32; bf16 (where the CPU computes it natively); fp16w (fp16 "
                             f"weights, fp32 compute); int8 weights (default: {said})")


def _version(model: nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def inference_model(model: Any, precision: str) -> Any:
    """``model`` itself when it already is in ``precision``, else a converted copy (cached on the model)."""
    precision = effective_precision(precision, device=model.device.type)
    if precision in _DTYPES and model.dtype == _DTYPES[precision] and not getattr(model, "_t5kit_quantized", False):
        return model
    store = model.__dict__.setdefault("_t5kit_inference_copies", {})
    version = _version(model)
    cached = store.get(precision)
    if cached is not None and cached[0] == version:
        return cached[1]
    converted = convert(model, precision)
    store[precision] = (version, converted)
    return converted


def convert(model: Any, precision: str) -> Any:
    """A new model in ``precision`` (eval mode); the original is untouched."""
    precision = effective_precision(precision, device=model.device.type)
    if precision in _STORED and model.device.type != "cpu":
        raise PrecisionError(f"precision {precision} runs on CPU only (its kernels are fbgemm / oneDNN); on "
                             f"{model.device.type} use fp32 or bf16")
    store = model.__dict__.pop("_t5kit_inference_copies", None)
    try:
        clone = copy.deepcopy(model)
    finally:
        if store is not None:
            model.__dict__["_t5kit_inference_copies"] = store
    clone.eval()
    if precision in _DTYPES:
        return install_kernels(clone.set_dtype(_DTYPES[precision]), "inference")
    clone.set_dtype(torch.float32)
    return install_kernels(store_weights(clone, precision), "inference")


def store_weights(model: Any, precision: str) -> Any:
    """Give every linear layer of ``model`` (in place) the weight format of ``precision`` ("fp16w", "int8"),
    dropping its fp32 weight; the output head keeps its fp32 weight too (tied: it is the embedding) so the
    backend may choose either."""
    stored = _STORED[precision]
    if not candidates((stored,)):
        raise PrecisionError(f"precision {precision} needs a {stored} kernel (fbgemm or oneDNN), which this "
                             f"build of torch {torch.__version__} lacks: use fp32")
    for name, module in model.named_modules():
        if plain_linear(module) and module.bias is None:  # the kernels take no bias: such layers stay fp32
            head = name == "lm_head"
            set_storages(module, (stored, "fp32") if head else (stored,), keep_plain=head)
    model._t5kit_quantized = True
    return model


def quantize_int8(model: Any) -> Any:
    """int8 weights for every linear layer, in place (returns ``model``): ``store_weights(model, "int8")``."""
    return store_weights(model, "int8")


register_precision_converter(inference_model)  # generate(..., precision=) without decoding importing upwards
