"""The decoder's key/value cache for incremental decoding: allocation, update, row selection, beam reordering.

Self-attention keys/values live in buffers preallocated to the longest sequence the caller asks for and
are filled one step at a time (no reallocation per token). Cross-attention keys/values depend only on
the encoder output, so they are computed once per source and reused at every step.

Rows of the batch can be reordered or dropped (finished sequences stop costing anything) with
:meth:`DecoderCache.select`, which touches only the filled part of the self-attention buffers.

Beam search keeps one cross-attention row per input item, shared by its ``beams`` consecutive decoder
rows (:meth:`expand_beams`, :meth:`reorder_beams`): the beams of an item attend to the same encoder
output, so their cross keys/values are never copied per beam or reordered, and the decoder step attends
with all of an item's beams as queries of one small matrix product.
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
    beams: int = 1  # consecutive decoder rows that share one cross-attention row (beam search)

    @classmethod
    def allocate(
        cls,
        cross_k: list[torch.Tensor],
        cross_v: list[torch.Tensor],
        cross_bias: torch.Tensor,
        self_bias_by_distance: list[torch.Tensor],
        max_length: int,
    ) -> DecoderCache:
        """Empty self-attention buffers of ``max_length`` positions, shaped and typed like the cross keys."""
        batch, heads, _, d_kv = cross_k[0].shape
        like = cross_k[0]
        shape = (batch, heads, max_length, d_kv)
        return cls(
            self_k=[like.new_empty(shape) for _ in cross_k],
            self_v=[like.new_empty(shape) for _ in cross_k],
            cross_k=cross_k,
            cross_v=cross_v,
            cross_bias=cross_bias,
            self_bias_by_distance=self_bias_by_distance,
        )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys/values [batch, heads, new, d_kv] of ``layer`` after the ``length`` positions
        already there; return the keys/values of every position so far. The decoder advances ``length``
        once all its layers have written (:meth:`advance`)."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"decoder cache holds {self.max_length} positions; this step would reach {end}")
        k_buf, v_buf = self.self_k[layer], self.self_v[layer]
        k_buf[:, :, start:end] = k
        v_buf[:, :, start:end] = v
        return k_buf[:, :, :end], v_buf[:, :, :end]

    def advance(self, new: int) -> None:
        """Count ``new`` positions as written (after every layer's :meth:`update`)."""
        self.length += new

    @property
    def max_length(self) -> int:
        return self.self_k[0].shape[2]

    @property
    def batch_size(self) -> int:
        """Decoder rows (input items x beams)."""
        return self.cross_bias.shape[0] * self.beams

    def _take_self(self, buf: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        out = buf.new_empty((index.numel(), *buf.shape[1:]))
        if self.length:
            out[:, :, : self.length] = buf[:, :, : self.length].index_select(0, index)
        return out

    def select(self, index: torch.Tensor) -> DecoderCache:
        """Keep (and reorder) batch rows by ``index``; returns a new cache, shares nothing mutable.

        Only the filled prefix of the self-attention buffers is copied: the cost of a beam reorder
        grows with the tokens generated so far, not with the preallocated length.
        """
        if self.beams != 1:
            raise ValueError("a beam cache reorders with reorder_beams(rows, items)")
        return DecoderCache(
            self_k=[self._take_self(k, index) for k in self.self_k],
            self_v=[self._take_self(v, index) for v in self.self_v],
            cross_k=[k.index_select(0, index) for k in self.cross_k],
            cross_v=[v.index_select(0, index) for v in self.cross_v],
            cross_bias=self.cross_bias.index_select(0, index),
            self_bias_by_distance=self.self_bias_by_distance,
            length=self.length,
        )

    def expand_beams(self, beams: int) -> DecoderCache:
        """Give each row ``beams`` decoder rows (copies of its self-attention state) sharing its cross row."""
        if self.beams != 1:
            raise ValueError("cache already holds beams")
        rows = torch.arange(self.cross_bias.shape[0], device=self.cross_bias.device).repeat_interleave(beams)
        return DecoderCache(
            self_k=[self._take_self(k, rows) for k in self.self_k],
            self_v=[self._take_self(v, rows) for v in self.self_v],
            cross_k=self.cross_k,
            cross_v=self.cross_v,
            cross_bias=self.cross_bias,
            self_bias_by_distance=self.self_bias_by_distance,
            length=self.length,
            beams=beams,
        )

    def reorder_beams(self, rows: torch.Tensor, items: torch.Tensor | None = None) -> DecoderCache:
        """Beam search reorder: new decoder row r continues old row ``rows[r]``; ``items`` (old item
        indices, in order) keeps only those items' cross rows, None keeps them all. Each new group of
        ``beams`` rows must come from the one item the group belongs to."""
        cross_k, cross_v, cross_bias = self.cross_k, self.cross_v, self.cross_bias
        if items is not None:
            cross_k = [k.index_select(0, items) for k in cross_k]
            cross_v = [v.index_select(0, items) for v in cross_v]
            cross_bias = cross_bias.index_select(0, items)
        return DecoderCache(
            self_k=[self._take_self(k, rows) for k in self.self_k],
            self_v=[self._take_self(v, rows) for v in self.self_v],
            cross_k=cross_k,
            cross_v=cross_v,
            cross_bias=cross_bias,
            self_bias_by_distance=self.self_bias_by_distance,
            length=self.length,
            beams=self.beams,
        )
