"""Training batches: ArrayLoader (epochs, shards, resume), StreamingDataset (disjoint streams), WaitTimer."""

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import torch.utils.data

from examples.var_rename import VarRenameConfig, VarRenamePrompter
from iluvattnshun import compat
from iluvattnshun.data import ArrayLoader, StreamingDataset, StreamingLoader, WaitTimer, batch_rows
from iluvattnshun.datasets import dataset_arrays, make_dataset


def _ids(loader: ArrayLoader) -> list[int]:
    return [int(i) for batch in loader for i in batch["id"]]


def _columns(n: int) -> dict[str, np.ndarray]:
    ids = np.arange(n)
    return {"id": ids, "tokens": np.stack([ids % 7, ids % 11], axis=1).astype(np.uint8)}


def test_batches_are_int64_tensors_and_cover_each_row_once() -> None:
    loader = ArrayLoader(_columns(103), batch_size=10, seed=3)
    assert len(loader) == 10
    batches = list(loader)
    assert all(b["tokens"].dtype == torch.int64 and b["tokens"].shape == (10, 2) for b in batches)
    ids = [int(i) for b in batches for i in b["id"]]
    assert len(set(ids)) == 100 and ids != sorted(ids)
    for b in batches:  # rows stay together
        assert torch.equal(b["tokens"][:, 0], b["id"] % 7)


def test_epochs_reshuffle_deterministically() -> None:
    a, b = ArrayLoader(_columns(100), 10, seed=1), ArrayLoader(_columns(100), 10, seed=1)
    first, second = _ids(a), _ids(a)  # iterating to the end advances the epoch
    assert first != second and sorted(first) == sorted(second)
    b.set_epoch(1)
    assert _ids(b) == second
    assert _ids(ArrayLoader(_columns(100), 10, seed=2)) != first
    assert _ids(ArrayLoader(_columns(100), 10, shuffle=False)) == list(range(100))


def test_ranks_get_disjoint_equal_shards() -> None:
    loaders = [ArrayLoader(_columns(103), 5, seed=0, rank=r, world_size=3) for r in range(3)]
    shards = [_ids(loader) for loader in loaders]
    assert [len(s) for s in shards] == [30, 30, 30]
    assert len(set().union(*shards)) == 90
    padded = [ArrayLoader(_columns(103), 5, drop_last=False, rank=r, world_size=3) for r in range(3)]
    assert len({len(loader) for loader in padded}) == 1, "every rank must run the same number of steps"
    assert set().union(*[set(_ids(loader)) for loader in padded]) == set(range(103))


def test_skip_resumes_mid_epoch() -> None:
    full = ArrayLoader(_columns(100), 10, seed=5)
    full.set_epoch(4)
    expected = _ids(full)[30:]
    resumed = ArrayLoader(_columns(100), 10, seed=5)
    resumed.set_epoch(4)
    resumed.skip(3)
    assert _ids(resumed) == expected
    assert resumed.epoch == 5 and len(_ids(resumed)) == 100, "skip applies to one pass only"
    with pytest.raises(ValueError, match="skip"):
        resumed.skip(11)


def test_bad_loader_arguments() -> None:
    with pytest.raises(ValueError, match="same length"):
        ArrayLoader({"a": np.zeros(3), "b": np.zeros(4)}, 1)
    with pytest.raises(ValueError, match="rank"):
        ArrayLoader(_columns(10), 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="no full batch"):
        ArrayLoader(_columns(10), 11)


def test_from_dataset_keeps_dtypes_and_rows(tmp_path: Path) -> None:
    p = VarRenamePrompter(VarRenameConfig(num_chains=2, num_renames=4))
    dsd = compat.make_dataset(p, tmp_path, 200, 20, keep_strings=True, progress=False)
    arrays = dataset_arrays(dsd["train"])
    assert set(arrays) == {"prompt", "answer", "depth"}, "string columns are skipped"
    assert arrays["prompt"].dtype == np.uint8 and arrays["prompt"].shape == (200, 16)
    view = dataset_arrays(dsd["train"].select([5, 2]))
    assert np.array_equal(view["prompt"], arrays["prompt"][[5, 2]])
    loader = ArrayLoader.from_dataset(dsd["test"], batch_size=20, shuffle=False)
    (batch,) = list(loader)
    assert p.detokenize(batch["prompt"][0]) == dsd["test"][0]["prompt_text"]


def test_wait_timer_counts_waits() -> None:
    def slow() -> Iterator[int]:
        for i in range(5):
            time.sleep(0.01)  # the time a consumer waits for each item
            yield i

    timer = WaitTimer(slow())
    assert list(timer) == [0, 1, 2, 3, 4] and timer.batches == 5 and timer.wait_s >= 0.05
    timer.reset()
    assert timer.batches == 0 and timer.wait_s == 0


def _rows(batches: list[dict[str, torch.Tensor]]) -> list[bytes]:
    return [row.numpy().tobytes() for b in batches for row in b["prompt"]]


def test_streaming_workers_and_ranks_never_overlap() -> None:
    p = VarRenamePrompter(VarRenameConfig(num_chains=3, num_renames=20, data_seed=7))
    streams = []
    for rank in range(2):
        loader = StreamingLoader(StreamingDataset(p, 16, rank=rank, world_size=2, batches_per_call=2), num_workers=2)
        it = iter(loader)
        streams.append([next(it) for _ in range(6)])  # 3 batches from each worker
    rows = _rows(streams[0]) + _rows(streams[1])
    assert len(rows) == 2 * 6 * 16 and len(set(rows)) == len(rows)
    batch = streams[0][0]
    assert batch["prompt"].dtype == torch.int64 and batch["prompt"].shape == (16, 80)

    # deterministic, and a new epoch is a new stream
    stream = StreamingDataset(p, batch_size=16, rank=0, world_size=2, batches_per_call=2)
    assert _rows([next(iter(stream))]) == _rows([streams[0][0]])
    stream.set_epoch(1)
    assert not set(_rows([next(iter(stream))])) & set(rows)


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_skip_resumes_the_same_stream(workers: int) -> None:
    p = VarRenamePrompter(VarRenameConfig(num_chains=2, num_renames=6, data_seed=3))
    loader = StreamingLoader(StreamingDataset(p, batch_size=8, batches_per_call=3), num_workers=workers)
    it = iter(loader)
    full = [next(it) for _ in range(10)]
    loader.skip(4)
    it = iter(loader)
    resumed = [next(it) for _ in range(6)]
    assert _rows(resumed) == _rows(full[4:])
    it = iter(loader)
    assert _rows([next(it)]) == _rows(full[:1]), "skip applies to one iteration only"


def test_stream_differs_from_the_cached_dataset_of_the_same_seed(tmp_path: Path) -> None:
    p = VarRenamePrompter(VarRenameConfig(num_chains=3, num_renames=20, data_seed=7))
    dsd = compat.make_dataset(p, tmp_path, 64, 16, progress=False)
    cached = {r.tobytes() for r in dataset_arrays(dsd["train"])["prompt"].astype(np.int64)}
    streamed = _rows([next(iter(StreamingDataset(p, batch_size=64)))])
    assert not cached & set(streamed)


def test_prompter_make_dataset_keeps_its_call_form(tmp_path: Path) -> None:
    # prompter.make_dataset(path, train_size, test_size, seed): the arguments replace the config's values.
    p = VarRenamePrompter(VarRenameConfig(num_chains=2, num_renames=6, data_seed=1))
    dsd = p.make_dataset(tmp_path, 48, 12, 5, progress=False)
    assert (len(dsd["train"]), len(dsd["test"])) == (48, 12) and any(tmp_path.iterdir())
    config = VarRenameConfig(num_chains=2, num_renames=6, data_seed=5, train_size=48, test_size=12)
    same = make_dataset(VarRenamePrompter(dataclasses.replace(config, dataset_path=str(tmp_path))), progress=False)
    assert dataset_arrays(same["train"])["prompt"].tolist() == dataset_arrays(dsd["train"])["prompt"].tolist()
    other = p.make_dataset(tmp_path, 48, 12, 6, progress=False)
    assert dataset_arrays(other["train"])["prompt"].tolist() != dataset_arrays(dsd["train"])["prompt"].tolist()


def test_streamed_curriculum_grows_the_prompts_and_resumes_on_the_same_schedule() -> None:
    config = VarRenameConfig(num_chains=2, num_renames=12, min_renames=4, renames_growth_steps=2, streaming=True)
    stream = StreamingDataset(VarRenamePrompter(config), batch_size=3, batches_per_call=1)
    batches = list(itertools.islice(iter(stream), 8))
    assert [b["prompt"].shape[1] for b in batches] == [16, 16, 24, 24, 36, 36, 48, 48]  # renames 4, 6, 9, 12
    stream.skip(5)
    assert torch.equal(next(iter(stream))["prompt"], batches[5]["prompt"])
    accumulating = StreamingDataset(VarRenamePrompter(config), batch_size=3, batches_per_call=1, batches_per_step=2)
    assert [b["prompt"].shape[1] for b in itertools.islice(iter(accumulating), 8)] == [16] * 4 + [24] * 4


def test_batch_tokens_caps_the_tokens_of_a_curriculum_batch_and_resumes_the_same_rows() -> None:
    config = VarRenameConfig(num_chains=2, num_renames=12, min_renames=4, renames_growth_steps=2, streaming=True)
    stream = StreamingDataset(VarRenamePrompter(config), batch_size=6, batches_per_call=2, batch_tokens=100)
    batches = list(itertools.islice(iter(stream), 8))
    shapes = [tuple(b["prompt"].shape) for b in batches]
    assert shapes == [(6, 16)] * 2 + [(4, 24)] * 2 + [(2, 36)] * 2 + [(2, 48)] * 2  # min(6, 100 // T) rows
    stream.skip(5)  # mid-block: the block's rows follow its prompt length, not batch_size
    assert torch.equal(next(iter(stream))["prompt"], batches[5]["prompt"])
    assert [batch_rows(6, 0, 48), batch_rows(6, 10, 48), batch_rows(6, 100, None)] == [6, 1, 6]
