"""Additive attention masks and the decoder's shifted inputs: padding, packed segments, causality."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from t5kit.ids import DECODER_START_ID, LABEL_PAD_ID, PAD_ID


def padding_bias(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[batch, length] 1/0 mask -> [batch, 1, 1, length] additive bias (0 where kept, dtype's min where masked)."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def causal_bias(query_length: int, key_length: int, query_offset: int, device: torch.device) -> Tensor:
    """[query_length, key_length] float32 bias: query ``query_offset + i`` sees keys ``0 .. query_offset + i``."""
    return torch.full((query_length, key_length), torch.finfo(torch.float32).min, device=device).triu(query_offset + 1)


def segment_bias(query_segments: Tensor, key_segments: Tensor, causal: bool = False) -> Tensor:
    """[batch, 1, q, k] additive mask for packed rows: attend only within the same example (segment id > 0)."""
    allowed = (query_segments[:, :, None] == key_segments[:, None, :]) & (key_segments[:, None, :] > 0)
    if causal:
        q, k = query_segments.shape[1], key_segments.shape[1]
        allowed = allowed & torch.ones(q, k, dtype=torch.bool, device=allowed.device).tril()
    return (~allowed)[:, None].to(torch.float32) * torch.finfo(torch.float32).min


class Packing(NamedTuple):
    """Segment ids (1, 2, ... per packed example, 0 = padding) and positions within each example."""

    encoder_segment_ids: Tensor
    encoder_positions: Tensor
    decoder_segment_ids: Tensor
    decoder_positions: Tensor


def bias_in(bias: Tensor, dtype: torch.dtype) -> Tensor:
    """An additive bias built in float32, in the activations' dtype (masked entries stay finite in fp16)."""
    if dtype == torch.float16:
        bias = bias.clamp(min=torch.finfo(torch.float16).min)
    return bias.to(dtype)


def shift_right(labels: Tensor, decoder_start_token_id: int = DECODER_START_ID, pad_token_id: int = PAD_ID) -> Tensor:
    """Decoder inputs from labels: start token in front, last label dropped, -100 replaced by pad."""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == LABEL_PAD_ID, pad_token_id)
