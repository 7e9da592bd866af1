"""Dataset caches (``iluvattnshun.datasets``): hashing, determinism, caching, integrity, concurrency, leakage."""

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from examples.var_rename import VarRenameConfig, VarRenamePrompter
from iluvattnshun import compat
from iluvattnshun.datasets import (
    DatasetCacheWarning,
    _file_record,
    data_hash,
    dataset_arrays,
    dataset_dir,
    leakage_stats,
    make_dataset,
    row_hashes,
)
from test_prompter import ToyConfig, ToyPrompter


class FailingPrompter(ToyPrompter):
    """Dies in the middle of generation, like a Ctrl-C."""

    def get_prompts(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        if type(self).calls > 100:
            raise KeyboardInterrupt
        return super().get_prompts(rng, n)


def _dirs(root: Path) -> list[str]:
    """Entries of a dataset root, without the (empty, hidden) build lock files."""
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".lock-"))


def _toy(root: Path, train_size: int, test_size: int, **fields: object) -> ToyPrompter:
    return ToyPrompter(ToyConfig(dataset_path=str(root), train_size=train_size, test_size=test_size, **fields))


# --- hash -----------------------------------------------------------------------------------------------


def test_hash_is_stable_and_covers_exactly_the_data_params() -> None:
    base = ToyPrompter(ToyConfig())
    # A pure function of the documented spec: no dependence on the process (PYTHONHASHSEED) or the run.
    spec = {
        "chunk_size": 64,
        "generator_version": 1,
        "params": {"max_length": 6},
        "prompter": "ToyPrompter",
        "train_size": 10_000,
        "test_size": 1_000,
        "seed": 42,
        "keep_strings": False,
        "dedup_test": False,
    }
    expected = hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert data_hash(base) == expected
    assert data_hash(ToyPrompter(ToyConfig(note="other", dataset_path="elsewhere"))) == data_hash(base)
    for changed in ({"max_length": 7}, {"train_size": 5}, {"data_seed": 1}, {"dedup_test": True}):
        assert data_hash(ToyPrompter(ToyConfig(**changed))) != data_hash(base), changed

    class Bumped(ToyPrompter):
        GENERATOR_VERSION = 2

    class Renamed(ToyPrompter):
        pass

    assert data_hash(Bumped(ToyConfig())) != data_hash(base)
    assert data_hash(Renamed(ToyConfig())) != data_hash(base)
    assert data_hash(base, keep_strings=True) != data_hash(base)


# --- cached datasets -----------------------------------------------------------------------------------


def test_make_dataset_is_deterministic_and_cached(tmp_path: Path) -> None:
    # The prompter's original call form: arguments replace the config's path, sizes and seed.
    p = ToyPrompter(ToyConfig())
    a = compat.make_dataset(p, tmp_path / "a", train_size=300, test_size=40, seed=1, progress=False)
    b = make_dataset(_toy(tmp_path / "b", 300, 40, data_seed=1), progress=False)
    c = make_dataset(_toy(tmp_path / "c", 300, 40, data_seed=2), progress=False)
    arrays = {k: dataset_arrays(d["train"]) for k, d in {"a": a, "b": b, "c": c}.items()}
    assert np.array_equal(arrays["a"]["prompt"], arrays["b"]["prompt"])
    assert not np.array_equal(arrays["a"]["prompt"], arrays["c"]["prompt"])
    assert arrays["a"]["prompt"].dtype == np.uint8 and arrays["a"]["position"].dtype == np.int8
    assert (a["train"].num_rows, a["test"].num_rows) == (300, 40)

    calls = ToyPrompter.calls
    again = make_dataset(_toy(tmp_path / "a", 300, 40, data_seed=1, note="changed"), progress=False)
    assert ToyPrompter.calls == calls, "a non-hash parameter must not regenerate"
    assert np.array_equal(dataset_arrays(again["train"])["prompt"], arrays["a"]["prompt"])
    make_dataset(_toy(tmp_path / "a", 300, 40, data_seed=1, max_length=5), progress=False)
    assert ToyPrompter.calls > calls, "a hash parameter change must regenerate"
    assert len(_dirs(tmp_path / "a")) == 2
    assert dataset_dir(_toy(tmp_path / "a", 300, 40, data_seed=1)).is_dir()


def test_multiprocess_generation_gives_the_same_dataset(tmp_path: Path) -> None:
    one = make_dataset(_toy(tmp_path / "one", 400, 64), num_proc=1, progress=False)
    two = make_dataset(_toy(tmp_path / "two", 400, 64), num_proc=2, progress=False)
    for split in ("train", "test"):
        x, y = dataset_arrays(one[split]), dataset_arrays(two[split])
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def _same_size_garbage(arrow: Path) -> None:
    """Overwrite the middle of a file with 0xFF bytes (token id 255, outside the toy vocabulary), keeping its size."""
    data = bytearray(arrow.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = b"\xff" * 64
    arrow.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncate_arrow", "bytes"),
        ("delete_arrow", "bytes"),
        ("garbage_meta", "cannot read"),
        ("other_spec", "differs"),
        ("same_size_garbage", "checksum mismatch"),
        ("garbage_with_matching_checksum", "outside the vocabulary"),
    ],
)
def test_corrupted_cache_is_rebuilt_with_a_warning(tmp_path: Path, damage: str, reason: str) -> None:
    p = _toy(tmp_path, 200, 20)
    good = dataset_arrays(make_dataset(p, progress=False)["train"])
    ds_dir = dataset_dir(p)
    arrow = next((ds_dir / "train").glob("*.arrow"))
    meta = ds_dir / "iluvattnshun_dataset.json"
    if damage == "truncate_arrow":
        arrow.write_bytes(arrow.read_bytes()[:100])
    elif damage == "delete_arrow":
        arrow.unlink()
    elif damage == "garbage_meta":
        meta.write_text("{not json")
    elif damage == "other_spec":
        recorded = json.loads(meta.read_text())
        recorded["spec"]["params"]["max_length"] = 99
        meta.write_text(json.dumps(recorded))
    else:
        _same_size_garbage(arrow)
        if damage == "garbage_with_matching_checksum":  # a cache whose record was rewritten to match: ids checked
            recorded = json.loads(meta.read_text())
            recorded["files"][str(arrow.relative_to(ds_dir))] = _file_record(arrow)
            meta.write_text(json.dumps(recorded))
    calls = ToyPrompter.calls
    with pytest.warns(DatasetCacheWarning, match=reason):
        rebuilt = make_dataset(p, progress=False)
    assert ToyPrompter.calls > calls
    assert np.array_equal(dataset_arrays(rebuilt["train"])["prompt"], good["prompt"])
    assert _dirs(tmp_path) == [ds_dir.name], "no temporary or trash directory may remain"


def test_interrupted_generation_leaves_nothing(tmp_path: Path) -> None:
    FailingPrompter.calls = 0
    with pytest.raises(KeyboardInterrupt):
        make_dataset(FailingPrompter(_toy(tmp_path, 1000, 10).config), progress=False)
    assert _dirs(tmp_path) == []


def test_killed_generation_leaves_no_dataset_and_is_cleaned_up(tmp_path: Path) -> None:
    script = f"""
import sys, time
sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parents[1])]!r}
import numpy as np
from test_prompter import ToyConfig, ToyPrompter
from iluvattnshun.datasets import make_dataset

class Slow(ToyPrompter):
    def get_prompts(self, rng, n):
        time.sleep(0.2)
        return super().get_prompts(rng, n)

make_dataset(Slow(ToyConfig(dataset_path={str(tmp_path)!r}, train_size=100_000, test_size=10)), progress=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not any(tmp_path.glob(".tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(tmp_path.glob(".tmp-*")), "generation never started"
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert [d for d in _dirs(tmp_path) if not d.startswith(".")] == []
    make_dataset(_toy(tmp_path, 50, 10), progress=False)
    assert [d for d in _dirs(tmp_path) if d.startswith(".")] == [], "the dead build's temp dir is removed"


def test_concurrent_builds_generate_once(tmp_path: Path) -> None:
    script = f"""
import sys
sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parents[1])]!r}
from test_prompter import ToyConfig, ToyPrompter
from iluvattnshun.datasets import make_dataset
make_dataset(ToyPrompter(ToyConfig(dataset_path={str(tmp_path)!r}, train_size=3000, test_size=100)), progress=False)
print(ToyPrompter.calls)
"""
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    calls = sorted(int(proc.communicate()[0]) for proc in procs)
    assert all(proc.returncode == 0 for proc in procs)
    assert calls[:2] == [0, 0] and calls[2] == 3100, "one process generates, the others wait and load"
    assert [d for d in _dirs(tmp_path) if not d.startswith(".lock-")] == [dataset_dir(_toy(tmp_path, 3000, 100)).name]


# --- leakage ---------------------------------------------------------------------------------------------


def test_leakage_stats_match_a_python_count(tmp_path: Path) -> None:
    config = VarRenameConfig(num_chains=2, num_renames=2, train_size=2000, test_size=500, dataset_path=str(tmp_path))
    dsd = make_dataset(VarRenamePrompter(config), keep_strings=True, progress=False)  # ~2,700 distinct prompts
    train, test = list(dsd["train"]["prompt_text"]), list(dsd["test"]["prompt_text"])
    stats = leakage_stats(dsd)
    train_set = set(train)
    assert stats["train_duplicates"] == len(train) - len(train_set) > 0
    assert stats["test_in_train"] == sum(t in train_set for t in test) > 0
    assert stats["test_unique"] == len(set(test))

    deduped = make_dataset(
        VarRenamePrompter(dataclasses.replace(config, dedup_test=True)), keep_strings=True, progress=False
    )
    assert np.array_equal(dataset_arrays(deduped["train"])["prompt"], dataset_arrays(dsd["train"])["prompt"])
    assert deduped["test"].num_rows == 500 - stats["test_in_train"]
    assert leakage_stats(deduped)["test_in_train"] == 0


def test_row_hashes() -> None:
    rows = np.random.default_rng(0).integers(0, 40, size=(1000, 13), dtype=np.uint8)
    rows[500] = rows[3]
    h = row_hashes(rows)
    assert h[500] == h[3] and len(np.unique(h)) == 999
    assert np.array_equal(row_hashes(rows.astype(np.uint16)[:10]), row_hashes(rows.astype(np.uint16)[:10]))
