"""Batches: moving a (nested) batch of tensors to a device, finding its tensors, its size and its token count."""

from typing import Any, Iterator, TypeVar

import torch

T = TypeVar("T")


def move_to_device(batch: T, device: str | torch.device) -> T:
    """Move every tensor in a (nested) dict / list / tuple to ``device`` (non-blocking); other leaves stay.

    CPU tensors bound for a GPU are pinned first: a copy from pageable memory makes the host wait for the
    GPU to finish its queued work (a stream synchronisation per batch), a copy from pinned memory does not.
    """
    if isinstance(batch, torch.Tensor):
        if batch.device.type == "cpu" and torch.device(device).type == "cuda" and not batch.is_pinned():
            batch = batch.pin_memory()  # type: ignore[assignment]
        return batch.to(device, non_blocking=True)  # type: ignore[return-value]
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}  # type: ignore[return-value]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # NamedTuple
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def iter_tensors(batch: Any) -> Iterator[torch.Tensor]:
    """The tensors of a (nested) dict / list / tuple batch, depth first in insertion order."""
    if isinstance(batch, torch.Tensor):
        yield batch
        return
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for v in values:
        yield from iter_tensors(v)


def first_tensor(batch: Any) -> torch.Tensor | None:
    """The first tensor in a (nested) batch, in insertion order, or None."""
    return next(iter_tensors(batch), None)


def batch_size_of(batch: Any) -> int:
    """Size of dimension 0 of the first tensor in the batch."""
    t = first_tensor(batch)
    if t is None or t.dim() == 0:
        raise ValueError("cannot infer the batch size: the batch holds no tensor with a batch dimension")
    return int(t.shape[0])


def first_token_count(batch: Any) -> int | None:
    """Elements of the first int64 2-D tensor of a batch (its token ids), or None."""
    return next((t.numel() for t in iter_tensors(batch) if t.dtype == torch.int64 and t.dim() == 2), None)
