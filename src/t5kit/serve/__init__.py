"""Serving T5 over HTTP: routes, request schema, Prometheus metrics, dynamic batcher and model engine.

``create_app(Engine.load(path), Limits())`` gives an ASGI app; ``t5kit serve`` runs it under uvicorn.
Needs the ``serve`` extra (fastapi, uvicorn, prometheus_client).

- ``app``: the routes; ``schema``: what a request may say, the error shape, the limits;
  ``metrics``: the Prometheus registry of one app; ``batcher``: rows from many requests into batches on
  one worker thread; ``engine``: the model side (tokens in and out, one batch at a time).
"""

from t5kit.serve.app import create_app
from t5kit.serve.batcher import Batcher
from t5kit.serve.engine import DecodingSettings, Engine
from t5kit.serve.metrics import Metrics
from t5kit.serve.schema import Limits

__all__ = ["Batcher", "DecodingSettings", "Engine", "Limits", "Metrics", "create_app"]
