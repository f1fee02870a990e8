"""Decoder key/value cache for incremental decoding.

Self-attention keys/values live in buffers preallocated to the longest sequence the caller asks for and
are filled one step at a time (no reallocation per token). Cross-attention keys/values depend only on
the encoder output, so they are computed once per source and reused at every step.

Rows of the batch can be reordered (beam search) or dropped (finished sequences stop costing anything)
with :meth:`DecoderCache.select`, which touches only the filled part of the self-attention buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DecoderCache:
    self_k: list[torch.Tensor]  # per decoder layer: [batch, heads, max_length, d_kv]
    self_v: list[torch.Tensor]
    cross_k: list[torch.Tensor]  # per decoder layer: [batch, heads, source_length, d_kv]
    cross_v: list[torch.Tensor]
    cross_bias: torch.Tensor  # [batch, 1, 1, source_length] additive mask of the encoder padding
    # Causal position bias by distance, reversed: row for query position p is [..., -(p+1):] of it.
    # One entry for T5/mT5 (shared by all layers), one per layer for UMT5. [heads, max_length]
    self_bias_by_distance: list[torch.Tensor]
    length: int = 0  # positions already written

    @property
    def max_length(self) -> int:
        return self.self_k[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.cross_bias.shape[0]

    def select(self, index: torch.Tensor) -> DecoderCache:
        """Keep (and reorder) batch rows by ``index``; returns a new cache, shares nothing mutable.

        Only the filled prefix of the self-attention buffers is copied: the cost of a beam reorder
        grows with the tokens generated so far, not with the preallocated length.
        """
        filled = self.length

        def take_self(buf: torch.Tensor) -> torch.Tensor:
            out = buf.new_empty((index.numel(), *buf.shape[1:]))
            if filled:
                out[:, :, :filled] = buf[:, :, :filled].index_select(0, index)
            return out

        return DecoderCache(
            self_k=[take_self(k) for k in self.self_k],
            self_v=[take_self(v) for v in self.self_v],
            cross_k=[k.index_select(0, index) for k in self.cross_k],
            cross_v=[v.index_select(0, index) for v in self.cross_v],
            cross_bias=self.cross_bias.index_select(0, index),
            self_bias_by_distance=self.self_bias_by_distance,
            length=self.length,
        )
