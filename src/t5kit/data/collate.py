"""Batches for training: dynamic padding, labels padded with -100 (``t5kit.ids.LABEL_PAD_ID``), optional packing.

Input examples are ``{"inputs": ..., "targets": ...}`` where each side is either text (encoded here with
the tokenizer, EOS appended) or a list of token ids (used as is, e.g. from span corruption). The batch is
a dict of ``torch.long`` tensors:

- ``input_ids`` [B, Ti], ``attention_mask`` [B, Ti] (1 = real token),
- ``labels`` [B, Tt] with -100 at padding (ignored by the loss),
- ``decoder_input_ids`` [B, Tt]: labels shifted right with the decoder start id 0 in front, -100 -> pad,
- ``decoder_attention_mask`` [B, Tt].

Dynamic padding pads to the longest example in the batch (rounded up to ``pad_to_multiple_of``), which
is what makes small fine-tuning batches cheap. Packing (``pack=True``) concatenates several short examples
into each row up to ``inputs_length``/``targets_length`` as the paper's pre-training did, and adds
``encoder_segment_ids``/``decoder_segment_ids`` (1, 2, ... per example, 0 = padding) and
``encoder_positions``/``decoder_positions``; the decoder inputs restart with the start id at every
segment. A model that ignores segment ids lets packed examples attend to each other (as the original
T5 Mesh TensorFlow code did not); use the segment ids to build block-diagonal masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from t5kit.errors import DataError
from t5kit.ids import DECODER_START_ID, EOS_ID, LABEL_PAD_ID, PAD_ID
from t5kit.model.masks import shift_right


class Collator:
    """Callable that turns a list of examples into a padded (or packed) batch of tensors.

    ``tokenizer`` is needed only for text examples (anything with ``encode(text)`` that appends EOS).
    ``max_inputs_length``/``max_targets_length`` truncate (keeping the final EOS) rather than fail.
    """

    def __init__(
        self,
        tokenizer: Any = None,
        *,
        max_inputs_length: int | None = None,
        max_targets_length: int | None = None,
        pad_id: int = PAD_ID,
        eos_id: int = EOS_ID,
        label_pad_id: int = LABEL_PAD_ID,
        decoder_start_id: int = DECODER_START_ID,
        pad_to_multiple_of: int | None = None,
        pack: bool = False,
        inputs_length: int | None = None,
        targets_length: int | None = None,
    ) -> None:
        if pack and (inputs_length is None or targets_length is None):
            raise DataError("packing needs inputs_length and targets_length (the row sizes)")
        self.tokenizer = tokenizer
        self.max_inputs_length = max_inputs_length
        self.max_targets_length = max_targets_length
        self.pad_id, self.eos_id, self.label_pad_id = pad_id, eos_id, label_pad_id
        self.decoder_start_id = decoder_start_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pack = pack
        self.inputs_length, self.targets_length = inputs_length, targets_length

    def _ids(self, value: Any, limit: int | None, which: str) -> list[int]:
        if isinstance(value, str):
            if self.tokenizer is None:
                raise DataError(f"example {which} are text: give the Collator a tokenizer to encode them")
            ids = list(self.tokenizer.encode(value))
        elif isinstance(value, torch.Tensor):
            ids = value.tolist()
        else:
            ids = [int(x) for x in value]
        if not ids:
            raise DataError(f"an example has empty {which}; remove it or check the task templates")
        if limit is not None and len(ids) > limit:
            ids = ids[: limit - 1] + [self.eos_id] if ids[-1] == self.eos_id else ids[:limit]
        return ids

    def encode(self, examples: Sequence[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
        out = []
        for ex in examples:
            if "inputs" not in ex or "targets" not in ex:
                raise DataError(f"an example lacks 'inputs' or 'targets' (keys: {sorted(ex)})")
            out.append((self._ids(ex["inputs"], self.max_inputs_length, "inputs"),
                        self._ids(ex["targets"], self.max_targets_length, "targets")))
        return out

    def _round(self, n: int) -> int:
        m = self.pad_to_multiple_of
        return n if not m else -(-n // m) * m

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise DataError("cannot collate an empty batch")
        pairs = self.encode(examples)
        if self.pack:
            return self._packed(pairs)
        ti = self._round(max(len(a) for a, _ in pairs))
        tt = self._round(max(len(b) for _, b in pairs))
        input_ids = torch.full((len(pairs), ti), self.pad_id, dtype=torch.long)
        labels = torch.full((len(pairs), tt), self.label_pad_id, dtype=torch.long)
        for i, (a, b) in enumerate(pairs):
            input_ids[i, : len(a)] = torch.tensor(a, dtype=torch.long)
            labels[i, : len(b)] = torch.tensor(b, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, (a, _) in enumerate(pairs):
            attention_mask[i, : len(a)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "decoder_input_ids": shift_right(labels, self.decoder_start_id, self.pad_id),
            "decoder_attention_mask": (labels != self.label_pad_id).long(),
        }

    def _packed(self, pairs: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        li, lt = int(self.inputs_length), int(self.targets_length)  # type: ignore[arg-type]
        rows: list[list[tuple[list[int], list[int]]]] = []
        used: list[list[int]] = []
        for a, b in pairs:
            a, b = a[:li], b[:lt]
            for r, (ui, ut) in enumerate(used):  # first fit, in order: deterministic
                if ui + len(a) <= li and ut + len(b) <= lt:
                    rows[r].append((a, b))
                    used[r] = [ui + len(a), ut + len(b)]
                    break
            else:
                rows.append([(a, b)])
                used.append([len(a), len(b)])
        n = len(rows)
        t = {k: torch.zeros((n, li if k.startswith("enc") or k == "input_ids" else lt), dtype=torch.long)
             for k in ("input_ids", "encoder_segment_ids", "encoder_positions",
                       "dec_labels", "decoder_segment_ids", "decoder_positions", "decoder_input_ids")}
        labels = torch.full((n, lt), self.label_pad_id, dtype=torch.long)
        for r, row in enumerate(rows):
            pi = pt = 0
            for s, (a, b) in enumerate(row, start=1):
                t["input_ids"][r, pi : pi + len(a)] = torch.tensor(a)
                t["encoder_segment_ids"][r, pi : pi + len(a)] = s
                t["encoder_positions"][r, pi : pi + len(a)] = torch.arange(len(a))
                labels[r, pt : pt + len(b)] = torch.tensor(b)
                t["decoder_segment_ids"][r, pt : pt + len(b)] = s
                t["decoder_positions"][r, pt : pt + len(b)] = torch.arange(len(b))
                t["decoder_input_ids"][r, pt] = self.decoder_start_id
                t["decoder_input_ids"][r, pt + 1 : pt + len(b)] = torch.tensor(b[:-1])
                pi += len(a)
                pt += len(b)
        del t["dec_labels"]
        t["labels"] = labels
        t["attention_mask"] = (t["encoder_segment_ids"] > 0).long()
        t["decoder_attention_mask"] = (t["decoder_segment_ids"] > 0).long()
        return t
