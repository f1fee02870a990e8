"""Data for T5: span corruption, text-to-text tasks and mixtures, streaming sources, batching.

Stream shapes (what training consumes):
- text tasks yield ``{"inputs": str, "targets": str, "task": str}``;
- span corruption yields ``{"inputs": list[int], "targets": list[int]}`` (plus ``"task"`` inside a task or
  mixture) of exactly the lengths given by :func:`span_corruption_lengths`, both ending with EOS (1).
Every stream has ``state_dict()``/``load_state_dict()`` for exact resume; sharding by ``rank``/``world_size``
gives disjoint records per distributed rank. :class:`Collator` turns examples into padded tensors.
"""

from t5kit.data.collate import Collator, shift_right
from t5kit.data.sources import (
    FileSource,
    HFDatasetSource,
    ListSource,
    Map,
    Repeat,
    Shard,
    Shuffle,
    Stream,
    open_source,
)
from t5kit.data.span_corruption import (
    SpanCorruptionStream,
    random_spans_noise_mask,
    span_corrupt,
    span_corrupt_batch,
    span_corruption_lengths,
)
from t5kit.data.tasks import (
    TASK_KINDS,
    Mixture,
    MixtureStream,
    Task,
    TaskStream,
    get_mixture,
    get_task,
    list_mixtures,
    list_tasks,
    load_tasks,
    register_mixture,
    register_task,
    task_from_dict,
)

__all__ = [
    "Collator", "FileSource", "HFDatasetSource", "ListSource", "Map", "Mixture", "MixtureStream", "Repeat",
    "Shard", "Shuffle", "SpanCorruptionStream", "Stream", "TASK_KINDS", "Task", "TaskStream", "get_mixture",
    "get_task", "list_mixtures", "list_tasks", "load_tasks", "open_source", "random_spans_noise_mask",
    "register_mixture", "register_task", "shift_right", "span_corrupt", "span_corrupt_batch",
    "span_corruption_lengths", "task_from_dict",
]
