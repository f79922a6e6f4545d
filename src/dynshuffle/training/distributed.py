"""Single process or PyTorch DDP under `torchrun` (env:// rendezvous), behind one small interface.

`setup()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): with
WORLD_SIZE > 1 it joins the process group (nccl on CUDA, gloo on CPU); otherwise nothing is initialised
and every collective below is a no-op, so the same training code runs as one plain process.

`timeout` (config key `train.dist_timeout`) bounds how long a collective waits for the other processes.
Under gloo a collective that runs out of time raises a RuntimeError that names neither the operation nor
the rank ("Timed out waiting 3000ms for recv operation to complete"); `timed_out` recognises it, and the
training loop re-raises it as `CollectiveTimeoutError` naming what it was waiting in. Under nccl the
watchdog aborts the process itself, with a message naming the collective.
"""
from __future__ import annotations

import datetime
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
    timeout: float | None = None  # seconds (train.dist_timeout); None: the backend's default
    # what the training loop waits in, named when a collective times out (set by the loop as it goes)
    phase: str = "the start-up (joining the process group, comparing the run folder, DDP's weight broadcast)"

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


class CollectiveTimeoutError(TimeoutError):
    """A collective did not complete within `train.dist_timeout`: another process hung or was lost.
    A TimeoutError is an OSError, so the CLI prints it as one line."""


def timed_out(err: BaseException) -> bool:
    """Whether `err` is a process-group timeout (gloo: "Timed out waiting 3000ms for recv operation to
    complete", or, when the peer's connection closes on the timeout first, "Application timeout caused pair
    closure"; nccl: "... ran for 600000 milliseconds before timing out")."""
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        phrase in text for phrase in ("timed out waiting", "before timing out", "application timeout"))


def setup(device: str = "auto", timeout: float | None = None) -> DistContext:
    """Join the process group when torchrun started several processes; `timeout` in seconds (None: the
    backend's default)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    ctx = DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, timeout=timeout)
    if world_size > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            kwargs = {"timeout": datetime.timedelta(seconds=timeout)} if timeout is not None else {}
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://", **kwargs)
            ctx.initialized_here = True
    return ctx


def restart_store_note() -> str | None:
    """A warning when torchrun may restart the workers (--max-restarts) and shares its TCPStore with them:
    since torch 2.5 that store outlives the workers with the previous attempt's keys, so a restarted process
    group reads dead addresses and fails to connect (pytorch/pytorch#135712). None when that cannot happen."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or \
            int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) < 1:
        return None
    return ("warning: torchrun --max-restarts shares its TCPStore with the workers, and restarted workers may "
            "fail to connect to each other (pytorch/pytorch#135712); launch torchrun with "
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment")


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


def all_gather_object(obj, ctx: DistContext) -> list:
    """Every process's `obj`, in rank order, on every process; [obj] in a single process."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
