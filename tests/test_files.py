"""files.py: atomic writes and writability probes, including probes that race each other."""

import multiprocessing as mp
import os
from pathlib import Path

import pytest

from iluvattnshun.files import atomic_write, check_writable


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    assert target.read_text() == "second"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_probe_creates_nothing_and_names_the_field(tmp_path: Path) -> None:
    check_writable(tmp_path / "a" / "b", "dataset_path")
    assert list(tmp_path.iterdir()) == []  # the directories it made for the probe are gone again

    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"^save_model_path: cannot write to .*file/sub"):
        check_writable(tmp_path / "file" / "sub", "save_model_path")


def _probe_together(barrier: "mp.synchronize.Barrier", root: str, rounds: int, failures: "mp.Queue[str]") -> None:
    for i in range(rounds):
        barrier.wait()
        try:
            check_writable(Path(root) / f"round{i}" / "data" / "var_rename", "dataset_path")
        except ValueError as e:
            failures.put(str(e))


def test_probes_started_together_all_succeed(tmp_path: Path) -> None:
    """A sweep starts its runs at once: their probes create and remove the same new parent directories, and
    none of them may fail because another removed a directory under it."""
    workers, rounds = 6, 30
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(workers)
    failures: "mp.Queue[str]" = ctx.Queue()
    procs = [
        ctx.Process(target=_probe_together, args=(barrier, str(tmp_path), rounds, failures)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    assert errors == []
    # No probe is left behind (a directory another run was still using at clean-up may stay, empty).
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []
