"""Moved: precision conversion is an inference kernel, in :mod:`t5kit.kernels.inference.precision`.

This alias keeps ``from t5kit.quantize import inference_model, PRECISIONS ...`` (the import path before
#16) working; new code imports from the kernels package.
"""

from t5kit.kernels.inference.precision import (  # noqa: F401
    PRECISIONS,
    PrecisionError,
    convert,
    inference_model,
    quantize_int8,
)
