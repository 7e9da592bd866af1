"""Batches for training: in-memory arrays (cached datasets) and fresh examples (streaming).

- ``ArrayLoader``: shuffled, rank-sharded batches gathered from numpy arrays with one fancy index per
  column per batch (no per-row Python). Build it from a Hugging Face split with ``from_dataset``.
- ``StreamingDataset``: an infinite ``IterableDataset`` of freshly generated batches, with a seed
  per (epoch, rank, worker, block) so that no two workers or ranks ever produce the same stream;
  ``StreamingLoader`` is the ``DataLoader`` for it (forwards ``set_epoch`` and ``skip`` for resuming).
- ``WaitTimer`` (from ``batches.py``, where the trainer takes it): wraps any iterable and adds up the time its
  consumer waits in ``next()``.

Integer columns come out as int64 (``torch.long``) tensors, floating columns as float32/64, bools as bool.
"""

import copy
from typing import Any, Iterator, Mapping, Sequence, TypeVar

import datasets
import numpy as np
import torch
import torch.utils.data

from iluvattnshun.batches import WaitTimer as WaitTimer
from iluvattnshun.datasets import dataset_arrays
from iluvattnshun.prompter import Prompter

T = TypeVar("T")

STREAM_SPLIT = 2
"""Split index of streaming seeds (0 and 1 are the cached train/test splits): streams never repeat them."""


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """A batch array as a tensor: integers widened to int64, other dtypes kept."""
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.long() if arr.dtype.kind in "iu" else t


class ArrayLoader:
    """Shuffled, rank-sharded batches from equal-length arrays held in memory.

    Every epoch draws one permutation of all rows from ``(seed, epoch)``; rank ``r`` of ``world_size``
    takes every ``world_size``-th index of it, so ranks see disjoint parts of the same epoch and all
    ranks get the same number of batches (the remainder is dropped, or, with ``drop_last=False``,
    padded by wrapping around, as ``DistributedSampler`` does).

    Iterating to the end advances the epoch;
    ``set_epoch`` picks one explicitly and ``skip`` resumes in the middle of one.
    """

    def __init__(
        self,
        columns: Mapping[str, np.ndarray | torch.Tensor],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
    ) -> None:
        """Args:
        columns: name -> array with the examples along the first axis (all the same length).
        batch_size: rows per batch (per rank).
        shuffle: permute rows each epoch; otherwise keep their order.
        seed: base seed of the per-epoch permutations.
        drop_last: drop the last incomplete batch (and the rows that do not divide among ranks).
        rank, world_size: this process's shard of each epoch.
        pin_memory: pin batch tensors (for non-blocking copies to a GPU).
        """
        if not columns:
            raise ValueError("ArrayLoader needs at least one column")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.columns = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in columns.items()}
        lengths = {k: len(v) for k, v in self.columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"all columns must have the same length, got {lengths}")
        self.num_rows = next(iter(lengths.values()))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.pin_memory = pin_memory
        self.epoch = 0
        self._skip = 0
        if self.drop_last and len(self) == 0:
            raise ValueError(
                f"batch_size={batch_size} is more than the {self.num_rows} rows give each of {world_size} rank(s): "
                "no full batch"
            )

    @classmethod
    def from_dataset(
        cls, dataset: datasets.Dataset, batch_size: int, columns: Sequence[str] | None = None, **kwargs: Any
    ) -> "ArrayLoader":
        """A loader over the numeric columns of a Hugging Face split (read once into memory via Arrow).

        Args:
            dataset: a split, e.g. ``make_dataset(...)["train"]``.
            batch_size: rows per batch.
            columns: column names (default: every numeric column).
            **kwargs: passed to ``ArrayLoader``.
        """
        return cls(dataset_arrays(dataset, columns), batch_size, **kwargs)

    @property
    def rows_per_rank(self) -> int:
        """Rows each rank sees per epoch."""
        if self.drop_last:
            return self.num_rows // self.world_size
        return -(-self.num_rows // self.world_size)

    def __len__(self) -> int:
        """Batches per epoch for this rank (ignoring ``skip``)."""
        rows = self.rows_per_rank
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` for the next pass."""
        self.epoch = epoch

    def skip(self, n_batches: int) -> None:
        """Start the next pass at batch ``n_batches`` of the epoch (to resume mid-epoch)."""
        if not 0 <= n_batches <= len(self):
            raise ValueError(f"can skip 0..{len(self)} batches, got {n_batches}")
        self._skip = n_batches

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Row indices this rank visits in ``epoch``, in order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
        else:
            order = np.arange(self.num_rows)
        total = self.rows_per_rank * self.world_size
        if total > self.num_rows:  # wrap around so every rank gets the same number of rows
            order = np.concatenate([order, order[: total - self.num_rows]])
        return order[:total][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        indices = self.epoch_indices(self.epoch)
        first, self._skip = self._skip, 0
        for b in range(first, len(self)):
            idx = indices[b * self.batch_size : (b + 1) * self.batch_size]
            # Sorted indices read the source arrays in memory order; the batch's order does not matter
            # since it is already a random draw.
            if self.shuffle:
                idx = np.sort(idx)
            batch = {k: to_tensor(v[idx]) for k, v in self.columns.items()}
            if self.pin_memory:
                batch = {k: v.pin_memory() for k, v in batch.items()}
            yield batch
        self.epoch += 1


def batch_rows(batch_size: int, batch_tokens: int, length: int | None) -> int:
    """Prompts in a batch of prompts ``length`` tokens long: ``batch_size``, or fewer (at least 1) when they would
    hold more than ``batch_tokens`` tokens (0: no token limit; a length of None: unknown, no limit)."""
    if not batch_tokens or length is None:
        return batch_size
    return max(1, min(batch_size, batch_tokens // length))


class StreamingDataset(torch.utils.data.IterableDataset[dict[str, torch.Tensor]]):
    """An endless stream of freshly generated batches (no fixed dataset, no repeats across workers).

    Iterate it through ``StreamingLoader`` (a ``DataLoader`` that forwards ``set_epoch`` and ``skip``);
    items are already batches. Examples are generated in blocks of ``batches_per_call`` batches; block
    ``b`` of worker ``w`` draws from ``SeedSequence(seed, spawn_key=(2, epoch, rank, w, b))``: independent
    of every other block, worker and rank, and of the cached dataset's train/test streams (spawn keys
    ``(0, chunk)`` and ``(1, chunk)``). Seeding per block makes ``skip`` cheap: resuming after ``n``
    batches jumps straight to the right block. A block is generated by ``prompter.at_step(step)`` for the
    training step of its first batch (``batches_per_step`` batches a step), so a prompter with a curriculum
    (say, longer prompts as training goes on) follows it, and a resumed stream follows the same one.
    """

    def __init__(
        self,
        prompter: Prompter[Any],
        batch_size: int,
        seed: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        batches_per_call: int = 0,
        batches_per_step: int = 1,
        batch_tokens: int = 0,
    ) -> None:
        """Args:
        prompter: generates examples with ``get_prompts``.
        batch_size: rows per batch.
        batch_tokens: at most this many tokens per batch: a block's batches hold ``batch_rows(batch_size,
            batch_tokens, T)`` rows at its prompt length T (0: always ``batch_size``).
        seed: stream seed (default: the prompter's ``data_seed``).
        rank, world_size: this process's rank.
        batches_per_call: batches generated per ``get_prompts`` call (vectorised generators are faster
            on bigger blocks); 0 picks enough for about 4096 examples.
        batches_per_step: batches this rank trains on per optimizer step (gradient accumulation).
        """
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.prompter = prompter
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.seed = prompter.config.data_seed if seed is None else seed
        self.rank = rank
        self.world_size = world_size
        self.batches_per_call = batches_per_call or max(1, 4096 // batch_size)
        self.batches_per_step = batches_per_step
        self.epoch = 0
        self._skip = 0
        self._numpy = False  # set by StreamingLoader: batches cross process boundaries as compact numpy

    def set_epoch(self, epoch: int) -> None:
        """Start a new, different stream on the next iteration (otherwise a restart repeats examples)."""
        self.epoch = epoch

    def skip(self, n_batches: int) -> None:
        """Make the next iteration start after the first ``n_batches`` batches it would have yielded.

        Counted as the consumer sees them: with k DataLoader workers, batch i comes from worker i % k.
        """
        if n_batches < 0:
            raise ValueError(f"n_batches must be >= 0, got {n_batches}")
        self._skip = n_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # Read the state now, not at the first next(): the loader resets _skip right after creating iterators.
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        local_skip = max(0, -(-(self._skip - worker) // workers))  # batches i < skip with i % workers == worker
        return self._batches(worker, workers, local_skip)

    def _batches(self, worker: int, workers: int, skip: int) -> Iterator[Any]:
        block, first = divmod(skip, self.batches_per_call)
        while True:
            key = (STREAM_SPLIT, self.epoch, self.rank, worker, block)
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=key))
            step = (block * self.batches_per_call * workers + worker) // self.batches_per_step
            prompter = self.prompter.at_step(step)
            rows = batch_rows(self.batch_size, self.batch_tokens, prompter.max_seq_len)
            cols = prompter.sample_batch(rng, rows * self.batches_per_call)
            for b in range(first, self.batches_per_call):
                part = slice(b * rows, (b + 1) * rows)
                yield {k: v[part] if self._numpy else to_tensor(v[part]) for k, v in cols.items()}
            block, first = block + 1, 0


class StreamingLoader:
    """Iterates a ``StreamingDataset`` through a ``DataLoader``; ``set_epoch`` and ``skip`` act on its stream.

    ``num_workers`` processes generate in parallel (0: in the training process, usually best on a
    small CPU, where a worker competes with the training step for the same cores). Workers send their
    batches as compact numpy arrays, which are pickled through a pipe; they become int64 tensors in the
    training process (cheaper than tensors through shared memory for such small batches).
    """

    def __init__(self, stream: StreamingDataset, num_workers: int = 0, pin_memory: bool = False) -> None:
        self.stream = copy.copy(stream)  # the caller's stream keeps yielding tensors
        self.stream._numpy = True
        self.pin = pin_memory
        self.loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
            self.stream, batch_size=None, num_workers=num_workers, collate_fn=_unchanged
        )

    def set_epoch(self, epoch: int) -> None:
        """See ``StreamingDataset.set_epoch``."""
        self.stream.set_epoch(epoch)

    def skip(self, n_batches: int) -> None:
        """See ``StreamingDataset.skip``; applies to the next iteration only."""
        self.stream.skip(n_batches)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        it = iter(self.loader)  # workers received their copy of the stream (with its skip) by now
        self.stream._skip = 0
        return self._tensors(it)

    def _tensors(self, it: Iterator[Mapping[str, np.ndarray]]) -> Iterator[dict[str, torch.Tensor]]:
        for cols in it:
            batch = {k: to_tensor(v) for k, v in cols.items()}
            yield {k: v.pin_memory() for k, v in batch.items()} if self.pin else batch


def _unchanged(batch: T) -> T:
    return batch
