"""Run directories: allocation under concurrency, lookup by name, file names, the per-run lock."""

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from iluvattnshun import rundir


def _allocate(logdir: str, barrier: Any, queue: Any) -> None:
    barrier.wait()
    queue.put(str(rundir.allocate(logdir, "same").path))


# fork is safe here: the children only call os.mkdir, no torch thread pools.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_concurrent_run_dir_allocation(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_allocate, args=(str(tmp_path), barrier, queue)) for _ in range(8)]
    for p in procs:
        p.start()
    dirs = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(set(dirs)) == 8
    assert sorted(os.listdir(tmp_path)) == sorted(f"run_{n}_same" for n in range(1, 9))


def test_matching_runs_and_names(tmp_path: Path) -> None:
    for name in ["a", "b", "a", ""]:
        rundir.allocate(tmp_path, name)

    def bases(run_name: str) -> list[str]:
        return [r.base for r in rundir.matching_runs(tmp_path, run_name)]

    assert bases("a") == ["run_3_a", "run_1_a"]
    assert bases("run_1_a") == ["run_1_a"]
    assert bases("") == ["run_4", "run_3_a", "run_2_b", "run_1_a"]
    assert bases(str(tmp_path / "run_2_b")) == ["run_2_b"]
    assert bases("c") == []
    run = rundir.RunDir(tmp_path / "run_3_a")
    assert (run.number, run.name, run.config_path.name, run.script_path.name) == (3, "a", "run_3_a.yaml", "run_3_a.py")
    assert [r.base for r in rundir.list_runs(tmp_path)] == ["run_1_a", "run_2_b", "run_3_a", "run_4"]


def test_checkpoint_names_and_listing(tmp_path: Path) -> None:
    for step in (10, 2, 300):
        (tmp_path / rundir.checkpoint_name(step)).write_bytes(b"")
    (tmp_path / ".ckpt_00000400.pt.123.abcd.tmp").write_bytes(b"")  # a write that was killed half-way
    assert [p.name for p in rundir.list_checkpoints(tmp_path)] == [
        "ckpt_00000002.pt",
        "ckpt_00000010.pt",
        "ckpt_00000300.pt",
    ]
    assert rundir.checkpoint_step(tmp_path / "ckpt_00000300.pt") == 300 and rundir.checkpoint_step("x.pt") is None


def test_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    run = rundir.allocate(tmp_path, "locked")
    script = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from pathlib import Path
from iluvattnshun.rundir import RunDir
with RunDir(Path({str(run.path)!r})).lock():
    print("held", flush=True)
    time.sleep(30)
"""
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="in use by another process"):
            with run.lock():
                pass
    finally:
        holder.kill()
        holder.wait()
    with run.lock():  # released when its holder died
        pass
