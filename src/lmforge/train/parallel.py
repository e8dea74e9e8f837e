"""Distribution and compilation, applied to a built model from outside (as torchtitan does).

Models know nothing of parallelism. Under `torchrun`, `setup_distributed` joins the process
group (NCCL on GPUs, Gloo on CPU) and `parallelize` wraps the model: DDP first, then
torch.compile over the wrapped module (PyTorch's recommended order, so DDP's bucketing is
compiled in). FSDP2 and tensor parallelism plug in here, in that fixed order, when added.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lmforge.utils.device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup_distributed(device_spec: str) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_spec)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, local_rank, world), device


def teardown_distributed(*, finished: bool = True) -> None:
    """Leave the process group. After a run that `finished`, all ranks leave together (a rank that
    tears its connections down while another still reads its last message makes that one abort);
    after a failure they do not wait for each other, so that a failing rank cannot hang the job."""
    if dist.is_initialized():
        # DDP wrappers left in reference cycles hold work on the group's threads: free them while
        # the group still exists, not at interpreter exit after it is gone (where gloo aborts).
        gc.collect()
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def parallelize(model: nn.Module, info: DistInfo, device: torch.device, *, compile: bool) -> nn.Module:
    """The module the training step calls: DDP-wrapped and/or compiled views of `model`.

    DDP runs without `find_unused_parameters`, and must: objectives apply the output layer (and a
    CRF, an ELECTRA generator head) to what `forward` returned, outside it, and with that option
    DDP would take those parameters for unused at the end of forward and then fail on their
    gradients arriving later.
    """
    wrapped: nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t
