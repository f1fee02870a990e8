"""torchrun support: the same command trains on one process or N, with DDP (default) or FSDP.

Why this shape: ``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; when they are present we join
the process group (gloo on CPU, nccl on GPU) and wrap the model, otherwise everything is a no-op, so
the loop has one code path. Only rank 0 writes files; the others send it what it must save (their data
positions and RNG states) through :func:`gather`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from t5kit.model import DecoderLayer, EncoderLayer


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_sum(info: DistInfo, value: float) -> float:
    """The sum of ``value`` over ranks (e.g. the global count of target tokens in a step)."""
    if not info.enabled:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item())


def gather(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. an error raised while rank 0 was writing)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model: nn.Module, info: DistInfo, mode: str = "ddp") -> nn.Module:
    """DDP (a full replica per rank, gradients averaged) or FSDP (parameters sharded per layer)."""
    if not info.enabled:
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard  # optional: FSDP2, torch >= 2.6 built with distributed

        # One shard group per layer, except layers owning the relative-position table: the stack computes
        # their bias before calling them, so their parameters stay in the root group (gathered first).
        for module in model.modules():
            if isinstance(module, (EncoderLayer, DecoderLayer)) and module.self_attn.relative_bias is None:
                fully_shard(module)
        fully_shard(model)
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    # A T5's buffers never change while it trains (a frozen base stored in bf16 / int8 is held in buffers:
    # t5kit.adapters.frozen), so they are sent once, when DDP starts, not from rank 0 before every forward
    # (88 MB a step for t5-small's base in bf16).
    return DDP(model, device_ids=ids, broadcast_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    """The T5Model inside a DDP wrapper (FSDP2 shards in place, so the model is its own module)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def set_grad_sync(model: nn.Module, enabled: bool) -> Any:
    """A context that skips the gradient all-reduce for all but the last micro-batch (accumulation)."""
    if hasattr(model, "no_sync") and not enabled:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, mode: str, info: DistInfo
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(full model state on CPU, or None when not sharded; full optimiser state). Collective (FSDP)."""
    if info.enabled and mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import (  # optional: torch built with distributed
            StateDictOptions,
            get_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state, optim_state = get_state_dict(model, optimizer, options=options)
        return model_state, optim_state
    return None, optimizer.state_dict()


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], mode: str, info: DistInfo
) -> None:
    if info.enabled and mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import (  # optional: torch built with distributed
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)
