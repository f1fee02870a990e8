"""Inference precision: :data:`PRECISIONS` (the one definition), and copies of a model in fp32, bf16 or int8.

Every command that loads a model for inference (``t5kit generate``, ``eval``, ``demo``, ``serve``) takes
``--precision`` from :func:`add_precision_argument`, and ``t5kit.Generator(..., precision=)`` applies it
through :func:`inference_model`; search (``t5kit.generate``) decodes whatever model it is given.

``inference_model(model, precision)`` converts once and keeps the copy with the model (a second call is
free); the original is never modified, so training can go on with it. The copy is refreshed when the
original's parameters are changed in place (an optimizer step), detected through their version counters.

int8 is dynamic quantization of the ``nn.Linear`` layers (``torch.ao.quantization.quantize_dynamic``: int8
weights, activations quantized per call). The embedding and the output head stay fp32: measured here
(2 threads), the quantized kernel for the 512 x 32128 head at batch 1 took 3.9 ms against 1.5 ms for the
fp32 one, while the layers' 512 x 2048 projections ran in 49 us instead of 110 us. The alternative int8
matmul path (``torch._weight_int8pack_mm``, int8 weights with bf16 activations) measured no faster (45 us
and 5.8 ms) and needs bf16 activations.
"""

from __future__ import annotations

import argparse
import copy
import warnings
from typing import Any

import torch
from torch import nn

from t5kit.errors import T5kitError
from t5kit.generate.search import register_precision_converter
from t5kit.kernels import install as install_kernels

PRECISIONS = ("fp32", "bf16", "int8")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class PrecisionError(T5kitError, ValueError):
    """An unknown precision name."""


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
                        help=f"inference precision: fp32, bf16, or int8 weights (default: {said})")


def _version(model: nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def inference_model(model: Any, precision: str) -> Any:
    """``model`` itself when it already is in ``precision``, else a converted copy (cached on the model)."""
    check_precision(precision)
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
    check_precision(precision)
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
    return install_kernels(quantize_int8(clone), "inference")


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization of the Linear layers, in place (returns ``model``)."""
    engine = "x86" if "x86" in torch.backends.quantized.supported_engines else torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    names = {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != "lm_head"}
    with warnings.catch_warnings():  # torch.ao's deprecation notices: the API still works in this torch
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(model, names, dtype=torch.qint8, inplace=True)
    quantized._t5kit_quantized = True
    return quantized


register_precision_converter(inference_model)  # generate(..., precision=) without decoding importing upwards
