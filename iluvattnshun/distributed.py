"""Thin helpers over ``torch.distributed`` for ``torchrun`` launches (all no-ops in a single process).

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; a run with ``WORLD_SIZE`` > 1 joins a process
group (NCCL on CUDA, Gloo on CPU). Every collective here must be reached by all ranks in the same order, so
callers only use them at points every rank reaches deterministically.
"""

import os
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def env_rank() -> int:
    """Global rank from the environment (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def env_local_rank() -> int:
    """Rank within this node (selects the GPU)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def env_world_size() -> int:
    """Number of processes from the environment (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    """Whether a process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_process_group(device: torch.device) -> bool:
    """Join the process group described by the environment if ``WORLD_SIZE`` > 1.

    Returns:
        True if this call created the group (so the caller should destroy it), else False.
    """
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed support")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        dist.init_process_group(backend="gloo")
    return True


def destroy_process_group() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return ``src``'s ``obj`` on every rank (identity in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, indexed by rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """Element-wise maximum of ``values`` over ranks (used to agree on stop/save flags)."""
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [float(v) for v in t.tolist()]


def barrier() -> None:
    """Wait for all ranks (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def resolve_device(name: str, world_size: int, local_rank: int) -> torch.device:
    """The device a ``--device`` value names: auto is cuda when available, else cpu; under ``torchrun`` each
    process takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", local_rank)
    return device


def check_device(device: torch.device, name: str) -> None:
    """Refuse a device that this machine does not have (``name``: the ``--device`` value asked for).

    Raises:
        ValueError: naming the device and what is available instead.
    """
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} was asked for, but no CUDA GPU is available (--device=cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device: {name!r}, but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device: {name!r} was asked for, but MPS is not available here (--device=cpu)")


def on_main_then_broadcast(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank.

    Raises:
        ValueError: on every rank, with the message of the ``ValueError`` or ``OSError`` that ``fn`` raised.
    """
    error, result = None, None
    if env_rank() == 0:
        try:
            result = fn()
        except (ValueError, OSError) as e:
            error = str(e)
    error, result = broadcast_object((error, result))
    if error is not None:
        raise ValueError(error)
    value: T = result
    return value
