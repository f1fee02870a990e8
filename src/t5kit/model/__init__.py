"""The T5 model: layers (``layers.py``), the encoder-decoder (``t5.py``), its cache and masks.

Plain PyTorch, one eager path per layer; the CPU fast paths are installed from outside by
:mod:`t5kit.kernels`.
"""

from t5kit.model.cache import DecoderCache
from t5kit.model.layers import (
    ACTIVATIONS,
    Attention,
    Dropout,
    FeedForward,
    RelativePositionBias,
    RMSNorm,
    clamp_fp16,
    relative_position_bucket,
)
from t5kit.model.loading import hf_state_dict, load_model, parameter_shapes, save_model
from t5kit.model.masks import Packing, bias_in, causal_bias, padding_bias, segment_bias, shift_right
from t5kit.model.t5 import Decoder, DecoderLayer, Encoder, EncoderLayer, Seq2SeqOutput, T5Model

__all__ = [
    "ACTIVATIONS", "Attention", "Decoder", "DecoderCache", "DecoderLayer", "Dropout", "Encoder", "EncoderLayer",
    "FeedForward", "Packing", "RMSNorm", "RelativePositionBias", "Seq2SeqOutput", "T5Model", "bias_in",
    "causal_bias", "clamp_fp16", "padding_bias", "relative_position_bucket", "segment_bias", "shift_right",
    "hf_state_dict", "load_model", "parameter_shapes", "save_model",
]
