"""Moved: the batcher is :mod:`t5kit.serve.batcher`. This alias keeps the pre-#16 import path working."""

from t5kit.serve.batcher import *  # noqa: F401,F403
from t5kit.serve.batcher import Batcher  # noqa: F401
