"""Process-group setup for ``torchrun`` launches, and the few collectives the engine needs.

§ numbers refer to docs/reference.md.

The published runs used 4 GPUs with DDP and SyncBN (docs/reference.md §3.5); we accept any number of
processes and nodes. ``torchrun`` exports ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; without
them the process trains alone (no process group, plain BN). NCCL is used when CUDA is available,
gloo otherwise (CPU tests run two gloo processes).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


class DistributedSetupError(RuntimeError):
    """The torchrun environment is inconsistent (bad RANK / WORLD_SIZE / LOCAL_RANK)."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None: single process, no process group

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise DistributedSetupError(
            f"environment variable {name}={value!r} is not an integer; launch with torchrun or "
            f"unset {name}"
        ) from e


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group ``torchrun`` describes, or set up a single process.

    Args:
        device: ``"cpu"`` or ``"cuda"`` to force a device; default: CUDA when available.

    Returns:
        The rank, local rank, world size, this process's device and the backend (``None`` when
        there is no process group).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedSetupError(
            f"RANK={rank} is not in [0, WORLD_SIZE={world_size}); launch with torchrun"
        )
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise DistributedSetupError("device 'cuda' requested but CUDA is not available")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DistributedSetupError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "use --nproc-per-node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size == 1:
        return DistInfo(rank=0, local_rank=0, world_size=1, device=dev, backend=None)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        # MASTER_ADDR / MASTER_PORT come from torchrun (env:// rendezvous).
        kwargs: dict[str, Any] = {"backend": backend}
        if use_cuda:
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    logger.info("process group: backend %s, rank %d/%d, device %s", backend, rank, world_size, dev)
    return DistInfo(
        rank=rank, local_rank=local_rank, world_size=world_size, device=dev, backend=backend
    )


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the process group in force; ``(0, 1)`` without one.

    For code that runs inside a group someone else created -- evaluation called by the train
    loop, or by a test's ``mp.spawn`` workers -- rather than through :func:`init_distributed`.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def cleanup(info: DistInfo) -> None:
    """Leave the process group (if this module created one)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def reduce_max(value: float, info: DistInfo) -> float:
    """MAX across ranks (mmcv reduces the logged memory this way, §5.5)."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean across ranks of a small float tensor (mmseg ``_parse_losses`` averages log values)."""
    if not info.distributed:
        return values
    t = values.detach().to(_comm_device(info), torch.float64).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / info.world_size).cpu()


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` for a single process)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _comm_device(info: DistInfo) -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    return info.device if info.backend == "nccl" else torch.device("cpu")
