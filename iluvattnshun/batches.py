"""Batches: moving a (nested) batch of tensors to a device, finding its tensors, its size and its token count; the
stream of batches over epochs that the trainer draws from a loader, and the time spent waiting for them.

Loader protocol (all optional, for exact resume): ``set_epoch(epoch)`` is called before each epoch is iterated; on a
mid-epoch resume ``skip(n)`` is called (after ``set_epoch``) so that the next iteration starts at batch ``n``; without
``skip`` the first ``n`` batches are drawn and dropped.
"""

import collections.abc
import time
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

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


def batch_stream(loader: Iterable[Any], epoch: int, start: int, num_epochs: int) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(epoch, position after this batch, batch)`` from batch ``start`` of ``epoch`` to the end of the last
    epoch (``num_epochs`` < 0: forever), following the loader protocol above.

    Raises:
        ValueError: when the loader yields no batches in an epoch it starts from the beginning.
    """
    length = len(loader) if isinstance(loader, collections.abc.Sized) else None
    if length is not None and start >= length > 0:
        epoch, start = epoch + 1, 0
    while num_epochs < 0 or epoch < num_epochs:
        set_epoch: Callable[[int], None] | None = getattr(loader, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        skip: Callable[[int], None] | None = getattr(loader, "skip", None)
        idx = 0
        if start and callable(skip):
            skip(start)
            idx = start
        it = iter(loader)
        for _ in range(start - idx):
            if next(it, None) is None:
                break
            idx += 1
        produced = False
        for batch in it:
            produced = True
            idx += 1
            yield epoch, idx, batch
        if not produced and start == 0:
            raise ValueError(f"get_train_dataloader() yielded no batches in epoch {epoch}")
        epoch, start = epoch + 1, 0


class WaitTimer(Generic[T]):
    """Iterates over ``iterable`` and records how long each ``next()`` took (the consumer's data wait).

    ``wait_s`` and ``batches`` accumulate over every pass until ``reset()``.
    """

    def __init__(self, iterable: Iterable[T]) -> None:
        self.iterable = iterable
        self.wait_s = 0.0
        self.batches = 0

    def reset(self) -> None:
        """Zero the counters (e.g. at every logging interval)."""
        self.wait_s = 0.0
        self.batches = 0

    def __len__(self) -> int:
        return len(self.iterable)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[T]:
        start = time.perf_counter()
        it = iter(self.iterable)
        while True:
            try:
                item = next(it)
            except StopIteration:
                self.wait_s += time.perf_counter() - start
                return
            self.wait_s += time.perf_counter() - start
            self.batches += 1
            yield item
            start = time.perf_counter()
