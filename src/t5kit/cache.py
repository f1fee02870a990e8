"""Moved: the decoder cache is :mod:`t5kit.model.cache`. This alias keeps the pre-#16 import path working."""

from t5kit.model.cache import DecoderCache  # noqa: F401
