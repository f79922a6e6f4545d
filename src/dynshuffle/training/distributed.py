"""Single process or PyTorch DDP under `torchrun` (env:// rendezvous), behind one small interface.

`setup()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): with
WORLD_SIZE > 1 it joins the process group (nccl on CUDA, gloo on CPU); otherwise nothing is initialised
and every collective below is a no-op, so the same training code runs as one plain process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"config key 'train.device': {name!r} asked for but CUDA is not available")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    return torch.device(name)


def setup(device: str = "auto") -> DistContext:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    ctx = DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)
    if world_size > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://")
            ctx.initialized_here = True
    return ctx


def cleanup(ctx: DistContext) -> None:
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over processes, in place (returns the tensor)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def average_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Average floating buffers (BatchNorm running statistics) over processes, so that every rank ends an
    epoch with the same model and evaluates it the same way (not needed with SyncBatchNorm, harmless)."""
    if not ctx.distributed:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(ctx.world_size)


def broadcast_object(obj, ctx: DistContext, src: int = 0):
    if not ctx.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]
