"""Serving T5 over HTTP: FastAPI app, dynamic batcher, model engine and a browser playground.

``create_app(Engine.load(path), Limits())`` gives an ASGI app; ``t5kit serve`` runs it under uvicorn.
Needs the ``serve`` extra (fastapi, uvicorn).
"""

from t5kit.serve.app import Limits, create_app
from t5kit.serve.batching import Batcher
from t5kit.serve.engine import DecodingSettings, Engine

__all__ = ["Batcher", "DecodingSettings", "Engine", "Limits", "create_app"]
