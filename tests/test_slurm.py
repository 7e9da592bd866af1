"""The SLURM backend of the sweep: option parsing and states without a cluster; with a real one (``bash .ci/slurm.sh
start``, ``SLURM_CONF`` exported), a grid through the scheduler matching tmux, a run requeued at its time limit,
a cancelled sweep and options refused before submission."""

import collections
import csv
import glob
import io
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from iluvattnshun import sweep
from iluvattnshun.sweep import slurm
from iluvattnshun.sweep.plan import SweepError

REPO = Path(__file__).resolve().parents[1]
TINY = " --max_minutes=none --batch_size=8 --dim_model=16 --train_size=256 --test_size=32 --device=cpu"


def _no_cluster_reason() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no SLURM cluster: SLURM is not installed (bash .ci/slurm.sh install; bash .ci/slurm.sh start)"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed (pip install -e '.[slurm]')"
    if not os.environ.get("SLURM_CONF") and not Path("/etc/slurm/slurm.conf").exists():
        # Without a config, SLURM's clients look for one in DNS, which can take long to fail.
        return (
            "no SLURM cluster: SLURM_CONF is not set and there is no /etc/slurm/slurm.conf (`bash .ci/slurm.sh start`"
            " starts a one-node cluster and prints the SLURM_CONF to export)"
        )
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "no SLURM cluster: sinfo did not answer within 15 s"
    if proc.returncode != 0 or not proc.stdout.strip():
        why = (proc.stderr.strip().splitlines() or ["no nodes"])[-1]
        return (
            f"no SLURM cluster answers (sinfo: {why}); start one with `bash .ci/slurm.sh start` and export the "
            "SLURM_CONF it prints"
        )
    return None


NO_CLUSTER = _no_cluster_reason()
requires_cluster = pytest.mark.skipif(NO_CLUSTER is not None, reason=NO_CLUSTER or "")


def var_rename_cmd(logdir: Path, data: Path, steps: int, extra: str = " --eval_every_n_samples=none") -> str:
    return (
        f"env PYTHONPATH={shlex.quote(str(REPO))} {shlex.quote(sys.executable)} -m examples.var_rename"
        f" --tensorboard_logdir={shlex.quote(str(logdir))} --dataset_path={shlex.quote(str(data))}"
        f" --max_steps={steps}{TINY}{extra}"
    )


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def run_events(run_dir: Path) -> collections.Counter[tuple[str, int]]:
    """(tag, step) -> how often it was logged, over every events file of a run directory."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    counts: collections.Counter[tuple[str, int]] = collections.Counter()
    for path in sorted(glob.glob(str(run_dir / "events.out.tfevents.*"))):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                counts[(value.tag, int(event.step))] += 1
    return counts


# --------------------------------------------------------------------------------------------
# Without a cluster


def test_time_memory_and_sbatch_options_parse_as_slurm_writes_them() -> None:
    assert [slurm.parse_time(t) for t in ("90", "1:30", "1:30:00", "2-00:00:00", "1-12", "0:20")] == [
        90,
        2,
        90,
        2880,
        2160,
        1,
    ]
    assert [slurm.parse_mem(m) for m in ("16", "16G", "16GB", "512M", "1T")] == [16.0, 16.0, 16.0, 0.5, 1024.0]
    assert slurm.parse_sbatch(["constraint=a100", "exclusive", "--mail_type=END"]) == {
        "constraint": "a100",
        "exclusive": True,
        "mail-type": "END",
    }
    options = slurm.parse_options("--partition=gpu --time=1:00:00 --gpus-per-run=2 --mem=32G --max-parallel=3")
    assert options.sbatch_flags(8) == [
        "--time=60",
        "--cpus-per-task=1",
        "--array=0-7%3",
        "--gpus-per-node=2",
        "--partition=gpu",
        "--mem=32G",
    ]
    params = options.submitit_parameters("lh")
    assert params["gpus_per_node"] == 2 and params["array_parallelism"] == 3 and params["time"] == 60
    for bad, message in [
        ("--time=0", "at least 1 minute"),
        ("--time=soon", "--time 'soon'"),
        ("--mem=lots", "--mem 'lots'"),
        ("--cpus-per-run=0", "--cpus-per-run 0"),
        ("--time=1 --signal-delay=90", "--signal-delay 90"),
        ("--sbatch=array=0-3", "set by the launcher"),
        ("--partition=a;b", "--partition 'a;b'"),
    ]:
        with pytest.raises(SweepError, match=message):
            slurm.parse_options(bad).check(4)


def test_states_are_honest_a_cancelled_or_timed_out_run_is_never_finished() -> None:
    job = slurm.JobState
    assert slurm.describe(job("1_0", "PENDING"), None, None) == "pending"
    assert slurm.describe(job("1_0", "PENDING", 1), None, 40) == "requeued, pending (requeued 1x)"
    assert slurm.describe(job("1_0", "RUNNING", 2), None, 40) == "running (requeued 2x)"
    assert slurm.describe(job("1_0", "CANCELLED"), 143, 40) == "cancelled at step 40"
    assert slurm.describe(job("1_0", "CANCELLED"), None, None) == "cancelled"
    assert slurm.describe(job("1_0", "TIMEOUT", 3), 143, 90) == "timed out at step 90 (requeued 3x)"
    assert slurm.describe(job("1_0", "FAILED", 3), 140, 90) == "timed out at step 90 (no requeue left) (requeued 3x)"
    assert slurm.describe(job("1_0", "FAILED"), 1, None) == "crashed (exit 1)"
    assert slurm.describe(job("1_0", "OUT_OF_MEMORY"), None, None) == "failed (out of memory)"
    assert slurm.describe(job("1_0", "COMPLETED"), 0, 6) is None  # the run's own status says finished
    assert slurm.describe(None, 0, 6) is None


_WARNED_AFTER_THE_END = """
import os, signal, sys, time
from submitit.core import job_environment, utils
from iluvattnshun.sweep.slurm import RunJob

job = RunJob(index=0, run_name="w_0", line=sys.argv[1], cwd=os.getcwd(), env={}, rdir=sys.argv[2], logdir=None,
             grace_s=5.0)
delayed = utils.DelayedSubmission(job)
delayed.set_timeout(1, 3)
env = job_environment.JobEnvironment()
env._handle_signals(env.paths, delayed)  # as submitit's process_job does on the node
code = delayed.result()
os.kill(os.getpid(), signal.SIGUSR2)  # the time limit's warning, while submitit writes the result
time.sleep(0.2)
print(f"returned {code}")
"""


@pytest.mark.parametrize("line, status", [("true", 0), ("exit 3", 3)])
def test_a_warning_that_comes_after_the_run_ended_changes_nothing(tmp_path: Path, line: str, status: int) -> None:
    """The limit's warning (USR2) can reach submitit after the run has ended and written its status, while submitit
    writes its result: the task must still end as the run did (a finished run never reads "crashed (exit 0)")."""
    pytest.importorskip("submitit")
    rdir = tmp_path / "rec"
    env = {"SUBMITIT_EXECUTOR": "slurm", "SUBMITIT_FOLDER": str(tmp_path / "slurm"), "SLURM_JOB_ID": "7"}
    env |= {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _WARNED_AFTER_THE_END, line, str(rdir)],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sweep.read_status(rdir, 0) == status
    if status == 0:
        assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "returned 0", proc.stderr[-2000:]
    else:  # a crash is a crash: the task fails with the run's error, never a requeue
        assert proc.returncode != 0 and "exited with status 3" in proc.stderr and "requeue" not in proc.stderr.lower()


def test_slurm_options_need_the_slurm_backend_and_tmux_options_the_tmux_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--cmd", "python -m task", "--grid", "num_layers=1,2", "--skip-validation", "--dry-run"]
    assert "--partition is a SLURM option" in error_of([*base, "--partition=gpu"], capsys)
    assert "--sbatch is a SLURM option" in error_of([*base, "--sbatch=constraint=a100"], capsys)
    assert "--gpus is a tmux option" in error_of([*base, "--backend=slurm", "--gpus=0,1"], capsys)
    assert "--time 'x'" in error_of([*base, "--backend=slurm", "--time=x"], capsys)
    capsys.readouterr()
    assert sweep.main([*base, "--backend=slurm", "--time=30", "--max-parallel=1"]) == 0
    out = capsys.readouterr().out
    assert "--array=0-1%1" in out and "OMP_NUM_THREADS=1 python -m task --num_layers=2 --run_name=sweep_1" in out


def test_cancel_of_a_tmux_sweep_says_how_to_stop_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rdir = sweep.record_dir(tmp_path, "tm")
    runs = sweep.plan_runs([[("num_layers", "1")]], "tm", [])
    sweep.write_record(rdir, runs, cmd="true", extra=[], cwd=str(tmp_path), session="s", prefix="tm", logdir=tmp_path)
    assert "tmux kill-session" in error_of(["cancel", str(tmp_path), "--prefix", "tm"], capsys)


# --------------------------------------------------------------------------------------------
# On a real cluster


@pytest.fixture(scope="module")
def requeued_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A run that outlives its 1-minute limit, submitted first so that it runs while the other tests do.

    SLURM checks time limits about every 30 s and warns a job ``--signal-delay`` (10 s) before its limit once
    elapsed >= limit - delay - 30 s: each attempt is warned 20-50 s after it starts, so the run (about 45 s of
    training) is requeued at least once and continues from its checkpoint. On a loaded machine the training takes
    two or three times as long and needs more attempts: 8 requeues and a 15-minute wait leave room for that.
    """
    tmp = tmp_path_factory.mktemp("requeue")
    logdir = tmp / "logs"
    cmd = var_rename_cmd(logdir, tmp / "data", 6000, " --eval_every_n_samples=8000 --log_every_n_seconds=1")
    argv = ["--backend=slurm", "--cmd", cmd, "--grid", "num_layers=1", "--prefix", "rq", "--time=1"]
    assert sweep.main([*argv, "--signal-delay=10", "--max-requeues=8"]) == 0
    yield logdir
    record = sweep.read_record(sweep.record_dir(logdir, "rq"))
    if record is not None:
        subprocess.run(["scancel", str(record["slurm"]["array_job_id"])], capture_output=True)


@requires_cluster
@pytest.mark.slurm
@pytest.mark.slow
def test_grid_through_slurm_matches_the_same_grid_through_tmux(
    tmp_path: Path, requeued_sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """4 tiny var_rename runs as a SLURM job array and in tmux: the same metrics per run, read from TensorBoard."""
    data = tmp_path / "data"
    grid = ["--grid", "num_layers=1,2", "--grid", "num_heads=1,2"]
    t0 = time.monotonic()
    s_logs, t_logs = tmp_path / "slurm", tmp_path / "tmux"
    assert sweep.main(["--backend=slurm", "--cmd", var_rename_cmd(s_logs, data, 6), *grid, "--prefix", "g"]) == 0
    assert "submitted 4 runs as SLURM job array" in capsys.readouterr().out
    session = f"pytest-slurm-{uuid.uuid4().hex[:8]}"
    try:
        if shutil.which("tmux"):
            argv = ["--cmd", var_rename_cmd(t_logs, data, 6), *grid, "--prefix", "g", "--session", session]
            t_rdir = str(tmp_path / "tmux-record")  # the tmux grid is the reference: its flags are the same
            assert sweep.main([*argv, "--gpus", "none", "--skip-validation", "--status-dir", t_rdir]) == 0
        capsys.readouterr()
        assert sweep.main(["status", str(s_logs), "--prefix", "g"]) == 0
        status = capsys.readouterr().out
        assert status.splitlines()[0].split()[:3] == ["run", "job", "state"] and "g_3" in status
        statuses = slurm.wait_for_runs(sweep.record_dir(s_logs, "g"), timeout=300)
        assert statuses == {0: 0, 1: 0, 2: 0, 3: 0}
        print(f"SLURM grid of 4 ended after {time.monotonic() - t0:.0f} s")
        assert sweep.main(["summarize", str(s_logs), "--prefix", "g", "--csv", str(tmp_path / "s.csv")]) == 0
        s_rows = {r["run"]: r for r in csv.DictReader(io.StringIO((tmp_path / "s.csv").read_text()))}
        assert sorted((r["num_layers"], r["num_heads"], r["state"]) for r in s_rows.values()) == [
            (layers, heads, "finished") for layers in "12" for heads in "12"
        ]
        assert all(r["final val/accuracy"] and r["final val/loss"] for r in s_rows.values())
        if not shutil.which("tmux"):
            pytest.skip("tmux is not installed: the SLURM grid ran, the tmux comparison did not")
        assert sweep.wait_for_runs(Path(t_rdir), timeout=300) == {0: 0, 1: 0, 2: 0, 3: 0}
        t_csv = str(tmp_path / "t.csv")
        assert sweep.main(["summarize", str(t_logs), "--prefix", "g", "--csv", t_csv, "--status-dir", t_rdir]) == 0
        t_rows = {r["run"]: r for r in csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text()))}
    finally:
        subprocess.run(["tmux", "kill-session", "-t", f"={session}"], capture_output=True)
    same = [k for k in s_rows["g_0"] if k not in ("run_dir",)]
    assert {n: [r[k] for k in same] for n, r in s_rows.items()} == {n: [r[k] for k in same] for n, r in t_rows.items()}


@requires_cluster
@pytest.mark.slurm
@pytest.mark.slow
def test_depth_law_paper_grid_through_slurm_writes_its_results(tmp_path: Path) -> None:
    """``depth_law --scale=paper --backend=slurm`` at toy size (2 layers x 1-2 heads): one job array, then results."""
    toy = (
        "--extra=--dim_model=16 --num_renames=12 --train_size=256 --test_size=64 --max_steps=10 --num_epochs=-1 "
        f"--warmup_steps=2 --eval_every_n_samples=none --device=cpu --dataset_path={tmp_path / 'data'}"
    )
    out = tmp_path / "p"
    args = ["--scale=paper", "--backend=slurm", "--slurm=--time=10", "--layers=2", "--seeds=1", "--eval_prompts=40"]
    command = [sys.executable, "-m", "examples.var_rename.depth_law", *args, f"--out={out}", toy]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submitted 2 runs to SLURM" in proc.stdout and "statuses {0: 0, 1: 0}" in proc.stdout
    rows = list(csv.DictReader((out / "accuracy_per_depth.csv").open()))
    assert {(r["num_layers"], r["num_heads"]) for r in rows} == {("2", "1"), ("2", "2")}
    assert "| 2L2H | 1 | 0.25 |" in (out / "results.md").read_text()  # 4 chains: chance 0.25
    record = sweep.read_record(sweep.record_dir(out / "runs", "law"))
    assert record is not None and slurm.is_slurm(record)


@requires_cluster
@pytest.mark.slurm
@pytest.mark.slow
def test_cancelled_runs_are_shown_cancelled_never_finished(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A running run and a pending one, cancelled: the running one saved and stopped, both say cancelled."""
    logdir = tmp_path / "logs"
    cmd = var_rename_cmd(logdir, tmp_path / "data", 1_000_000, " --eval_every_n_samples=none --save_every_n_seconds=0")
    argv = ["--backend=slurm", "--cmd", cmd, "--grid", "num_layers=1,2", "--prefix", "c", "--max-parallel=1"]
    assert sweep.main([*argv, "--skip-validation", "--status-dir", str(tmp_path / "rec")]) == 0
    rdir = tmp_path / "rec"
    deadline = time.monotonic() + 180
    while not list(logdir.glob("run_*_c_0/events.out.tfevents.*")) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3.0)  # training, past its first steps
    capsys.readouterr()
    assert sweep.main(["cancel", str(logdir), "--prefix", "c", "--status-dir", str(rdir)]) == 0
    assert "cancelled" in capsys.readouterr().out
    # Run 0 saves on SIGTERM, but srun may kill its wrapper before it records 143; run 1 never started. Either way
    # the run has ended, and not well.
    statuses = slurm.wait_for_runs(rdir, timeout=120)
    assert sorted(statuses) == [0, 1] and statuses[0] in (143, 1) and statuses[1] == 1
    results, _ = sweep.load_sweep(logdir, "c", status_dir=rdir)
    states = {r.run_name: r.state for r in results}
    assert states["c_0"].startswith("cancelled at step ") and states["c_1"] == "cancelled", states
    step = int(states["c_0"].split()[3])
    assert step > 0 and list(logdir.glob(f"run_*_c_0/ckpt_{step:08d}.pt"))
    assert sweep.main(["summarize", str(logdir), "--prefix", "c", "--status-dir", str(rdir)]) == 0
    out = capsys.readouterr().out
    assert "2 cancelled" in out.splitlines()[0] and "finished" not in out


@requires_cluster
@pytest.mark.slurm
def test_bad_options_are_refused_before_anything_is_submitted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logdir = tmp_path / "logs"
    cmd = var_rename_cmd(logdir, tmp_path / "data", 6)
    base = ["--backend=slurm", "--cmd", cmd, "--grid", "num_layers=1,2", "--prefix", "bad"]
    err = error_of([*base, "--partition=nosuchpartition"], capsys)
    assert "SLURM refused the job array before submission" in err and "partition" in err.lower()
    one = ["--backend=slurm", "--cmd", cmd, "--grid", "num_layers=1", "--prefix", "bad"]
    err = error_of([*one, "--grid", "num_headz=1"], capsys)  # the task's own check of every run's flags
    assert "rejected before launch" in err and "num_heads" in err
    assert "--cpus-per-run 0" in error_of([*base, "--cpus-per-run=0"], capsys)
    assert not sweep.record_dir(logdir, "bad").exists()
    queued = subprocess.run(["squeue", "-h", "-n", "bad", "-o", "%i"], capture_output=True, text=True).stdout
    assert queued.strip() == ""


@requires_cluster
@pytest.mark.slurm
@pytest.mark.slow
def test_a_run_at_its_time_limit_is_requeued_and_finishes_with_every_step_logged_once(requeued_sweep: Path) -> None:
    logdir = requeued_sweep
    rdir = sweep.record_dir(logdir, "rq")
    assert slurm.wait_for_runs(rdir, timeout=900) == {0: 0}
    results, _ = sweep.load_sweep(logdir, "rq")
    (result,) = results
    assert result.job is not None and result.job.requeues >= 1, result.state
    assert result.state == f"finished (requeued {result.job.requeues}x)"
    assert result.run_dir is not None and [p.name for p in logdir.glob("run_*")] == [result.run_dir.name]
    logs = "".join(p.read_text() for p in (rdir / "slurm").glob("*/*_log.out"))
    assert "--resume" in logs and "resumed from" in logs
    counts = run_events(result.run_dir)
    repeated = {k: n for k, n in counts.items() if n > 1 and k[0].split("/")[0] in ("train", "val")}
    assert not repeated, sorted(repeated)[:5]
    steps = sorted(step for tag, step in counts if tag == "train/loss")
    assert len(steps) > 10 and steps[-1] > 5000
    assert sorted(step for tag, step in counts if tag == "val/accuracy")[-1] == 6000
