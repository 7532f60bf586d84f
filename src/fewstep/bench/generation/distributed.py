"""The process group: torch.distributed from torchrun's environment, or one process without it.

Under ``torchrun`` (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` set) the default group
is initialised from the environment with NCCL when CUDA is available, else gloo, and each rank uses
``cuda:LOCAL_RANK`` (or the CPU). A group the caller initialised is used as it is and left open. Without torchrun
the run is world size 1 and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Group", "join"]


@dataclass
class Group:
    """This process's place in the run: ``rank`` of ``world_size``, its device, and whether it opened the group."""

    rank: int
    world_size: int
    device: torch.device
    opened: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def _flag_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def all_true(self, ok: bool) -> bool:
        """Whether ``ok`` holds on every rank (a collective: every rank must call it)."""
        if not self.active:
            return ok
        flag = torch.tensor([0 if ok else 1], device=self._flag_device())
        dist.all_reduce(flag, op=dist.ReduceOp.SUM)
        return int(flag.item()) == 0

    def gather(self, values: list[float]) -> list[list[float]]:
        """Every rank's ``values`` (the same length on each), in rank order."""
        if not self.active:
            return [values]
        mine = torch.tensor(values, dtype=torch.float64, device=self._flag_device())
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(out, mine)
        return [t.tolist() for t in out]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        """Destroy the group if this run opened it."""
        if self.opened and dist.is_initialized():
            dist.destroy_process_group()
            self.opened = False


def join(device: str | torch.device | None = None) -> Group:
    """This process's :class:`Group` (module docstring). ``device``: the device to sample on (default: this rank's
    CUDA device when CUDA is available, else the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    where = torch.device(device) if device is not None else torch.device("cuda" if cuda else "cpu")
    if where.type == "cuda" and where.index is None:
        where = torch.device("cuda", local % max(torch.cuda.device_count(), 1))
    if where.type == "cuda":
        torch.cuda.set_device(where)
    opened = False
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    elif world > 1:
        dist.init_process_group(backend="nccl" if where.type == "cuda" else "gloo")
        opened = True
    return Group(rank, world, where, opened)
