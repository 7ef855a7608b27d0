"""Data-parallel training across processes (``torchrun``): the process group, and the
few collective operations the trainer needs. One process per rank; gloo on CPU, NCCL
on CUDA. Single-process runs never touch ``torch.distributed``."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

from darkknowledge.errors import UserError


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) outside it."""
    try:
        return (
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError:
        raise UserError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun)") from None


def is_main_process() -> bool:
    return env_world()[0] == 0


def setup(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun; return (rank, world_size, device)."""
    rank, world_size, local_rank = env_world()
    if world_size <= 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            raise UserError(
                f"WORLD_SIZE={world_size} asks for {world_size} processes but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} "
                "not set; launch with torchrun (it sets them), or unset RANK/WORLD_SIZE for one process"
            )
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise UserError("the process group does not match RANK / WORLD_SIZE; launch with torchrun")
    return rank, world_size, device


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The student as a DistributedDataParallel module (gradients averaged across ranks)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def average_gradients(params) -> None:
    """All-reduce-average the gradients of parameters outside the DDP module (e.g. a method's)."""
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world


def sum_across(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Element-wise sums over ranks of a dict of tensors (same keys on every rank)."""
    keys = sorted(values)
    if not keys:
        return values
    stacked = torch.stack([values[k].float().reshape(()) for k in keys])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return dict(zip(keys, stacked.unbind()))


def all_finite(loss: Tensor) -> bool:
    """Whether ``loss`` is finite on every rank: one decision for all, since ranks must step together."""
    finite = torch.isfinite(loss.detach()).float().reshape(1)
    if dist.is_initialized():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
