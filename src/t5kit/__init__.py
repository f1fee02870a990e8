"""t5kit: T5, the Text-to-Text Transfer Transformer, end to end in plain PyTorch.

The public API; everything else is reachable through its module (``t5kit.data``, ``t5kit.metrics`` ...).
"""

from t5kit.config import PRESETS, T5Config
from t5kit.errors import T5kitError
from t5kit.model import T5Model
from t5kit.pipeline import Generator
from t5kit.tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = ["PRESETS", "Generator", "T5Config", "T5Model", "T5kitError", "Tokenizer", "__version__"]
