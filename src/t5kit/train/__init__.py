"""Training: ``train(config)`` fine-tunes or pre-trains a T5 with exact resume and torchrun scaling.

Modules: ``config`` (TrainConfig from YAML), ``setup`` (tokenizer, model, streams, optimiser and schedule:
everything built before the first step), ``loop`` (the step loop; validation through ``t5kit.evaluate``),
``optim`` (AdamW, Adafactor, AdamWScale, SGD), ``schedule`` (learning-rate shapes), ``state`` (atomic
checkpoints), ``distributed`` (DDP/FSDP), ``logging`` (progress, metrics files, curves).
"""

from t5kit.train.config import TrainConfig
from t5kit.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
