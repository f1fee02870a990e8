"""Training: ``train(config)`` fine-tunes or pre-trains a T5 with exact resume and torchrun scaling.

Modules: ``config`` (TrainConfig from YAML), ``optim`` (AdamW, Adafactor, AdamWScale), ``schedule``
(learning-rate shapes), ``loop`` (the loop), ``state`` (atomic checkpoints), ``distributed`` (DDP/FSDP),
``logging`` (progress, metrics files, curves).
"""

from t5kit.train.config import TrainConfig
from t5kit.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
