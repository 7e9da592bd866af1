"""Tests of the sweep launcher and summary, with real tmux and a real (tiny) task script."""

import csv
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import yaml

import sweep_dummy
from forked import python_m
from iluvattnshun import sweep
from iluvattnshun.sweep.plan import available_cores

DUMMY = Path(__file__).with_name("sweep_dummy.py")
REPO = Path(__file__).resolve().parents[1]

requires_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def dummy_cmd(logdir: Path) -> str:
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(DUMMY))} --tensorboard_logdir={shlex.quote(str(logdir))}"


def tmux(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", *args], capture_output=True, text=True)


@pytest.fixture
def session() -> Iterator[str]:
    name = f"pytest-sweep-{uuid.uuid4().hex[:8]}"
    yield name
    tmux("kill-session", "-t", f"={name}")


def run_dirs(logdir: Path, prefix: str) -> dict[str, Path]:
    """run name -> run directory."""
    return {p.name.split("_", 2)[2]: p for p in logdir.iterdir() if p.name.startswith("run_")}


# --------------------------------------------------------------------------------------------
# Planning


def test_grid_is_a_cartesian_product_with_the_last_key_fastest() -> None:
    grid = sweep.parse_grid(["num_layers=1,2", "--num_heads=1,2,4"])
    sets = sweep.expand(grid)
    assert [dict(s) for s in sets][:4] == [
        {"num_layers": "1", "num_heads": "1"},
        {"num_layers": "1", "num_heads": "2"},
        {"num_layers": "1", "num_heads": "4"},
        {"num_layers": "2", "num_heads": "1"},
    ]
    assert len(sets) == 6


def test_overrides_file_sets_are_crossed_with_the_grid(tmp_path: Path) -> None:
    path = tmp_path / "runs.txt"
    path.write_text("# architectures\n--num_layers=2 --fail\n\nnum_layers=4 lr='1e-3'  # big\n")
    sets = sweep.expand(sweep.parse_grid(["num_heads=1,2"]), sweep.read_overrides_file(path))
    assert sets == [
        [("num_layers", "2"), ("fail", None), ("num_heads", "1")],
        [("num_layers", "2"), ("fail", None), ("num_heads", "2")],
        [("num_layers", "4"), ("lr", "1e-3"), ("num_heads", "1")],
        [("num_layers", "4"), ("lr", "1e-3"), ("num_heads", "2")],
    ]
    runs = sweep.plan_runs(sets, "p", ["0"])
    assert runs[0].shell_command("python x.py") == (
        "CUDA_VISIBLE_DEVICES=0 python x.py --num_layers=2 --fail --num_heads=1 --run_name=p_0"
    )


def test_cpu_runs_split_the_cores_and_costs_balance_the_panes() -> None:
    sets = [[("num_layers", str(n))] for n in (4, 1, 2, 3)]
    cores = sweep.plan.available_cores()
    runs = sweep.plan_runs(sets, "c", [])
    assert {r.threads for r in runs} == {sweep.plan.CPU_THREADS_PER_RUN}
    assert len({r.pane for r in runs}) == min(4, cores // sweep.plan.CPU_THREADS_PER_RUN)
    assert runs[0].shell_command("python x.py").startswith("OMP_NUM_THREADS=1 python x.py --num_layers=4")
    two = sweep.plan_runs(sets, "c", [], max_parallel=2, threads_per_run=3)
    assert [r.pane for r in two] == [0, 1, 0, 1] and {r.threads for r in two} == {3}
    # Longest first onto the least loaded pane: 4 layers alone, 1 + 2 + 3 layers on the other pane.
    balanced = sweep.plan_runs(sets, "c", [], max_parallel=2, costs=[6.0, 1.0, 2.0, 3.0])
    assert [r.pane for r in balanced] == [0, 1, 1, 1]
    with pytest.raises(sweep.SweepError, match="threads-per-run"):
        sweep.plan_runs(sets, "c", [], threads_per_run=0)


@pytest.mark.parametrize(
    "specs, message",
    [
        (["num_layers"], "expected KEY=V1,V2"),
        (["num_layers="], "empty value for 'num_layers'"),
        (["num_layers=1,,2"], "empty value"),
        (["num_layers=1", "num_layers=2"], "given twice"),
        (["run_name=a,b"], "run_name cannot be swept"),
        (["bad key=1"], "not a valid field name"),
        (["lr=1e-3\n--bogus"], r"'1e-3\\n--bogus' holds a control character"),
    ],
)
def test_bad_grid_specs_are_rejected(specs: list[str], message: str) -> None:
    with pytest.raises(sweep.SweepError, match=message):
        sweep.parse_grid(specs)


def test_overrides_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "runs.txt"
    path.write_text("--num_layers=1\nnum_layers\n")
    with pytest.raises(sweep.SweepError, match=r"runs.txt:2: expected --key=value"):
        sweep.read_overrides_file(path)
    path.write_text("--num_layers=1\n--num_heads=1 --grid\n--num_heads=1 --num_heads=2\n")
    with pytest.raises(sweep.SweepError, match=r"runs.txt:3: 'num_heads' is given twice"):
        sweep.read_overrides_file(path)
    path.write_text("--num_heads=1\n")
    with pytest.raises(sweep.SweepError, match="both in the overrides file and in --grid"):
        sweep.expand({"num_heads": ["1"]}, sweep.read_overrides_file(path))


def test_dry_run_assigns_gpus_round_robin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logdir = tmp_path / "logs"
    argv = ["--cmd", dummy_cmd(logdir), "--grid", "num_layers=1,2,3,4,5", "--gpus", "0,1", "--prefix", "rr"]
    assert sweep.main([*argv, "--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(lines) == 5
    for i, line in enumerate(lines):
        assert line.startswith(f"CUDA_VISIBLE_DEVICES={i % 2} {dummy_cmd(logdir)} ")
        assert f"--num_layers={i + 1} --run_name=rr_{i}  # pane {i}, gpu {i % 2}" in line
    assert not logdir.exists(), "a dry run must create nothing"

    # Two slots (one per GPU): runs queue in the pane of their GPU.
    assert sweep.main(["launch", *argv, "--dry-run", "--max-parallel=1", "--skip-validation"]) == 0
    out = capsys.readouterr().out
    assert "5 runs in 2 panes on GPUs 0,1" in out
    panes = [line.rsplit("# ", 1)[1] for line in out.splitlines() if not line.startswith("#")]
    assert panes == ["pane 0, gpu 0", "pane 1, gpu 1", "pane 0, gpu 0", "pane 1, gpu 1", "pane 0, gpu 0"]


def test_dry_run_on_cpu_sets_threads_and_no_cuda_devices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--cmd", "python -m task", "--grid", "num_heads=1,2,4", "--gpus", "none", "--max-parallel", "2"]
    assert sweep.main([*argv, "--dry-run", "--skip-validation", "--extra=--preset=quick --steps=2"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    run = "OMP_NUM_THREADS=1 python -m task --preset=quick --steps=2"
    assert lines == [
        f"{run} --num_heads=1 --run_name=sweep_0  # pane 0, cpu, 1 thread(s)",
        f"{run} --num_heads=2 --run_name=sweep_1  # pane 1, cpu, 1 thread(s)",
        f"{run} --num_heads=4 --run_name=sweep_2  # pane 0, cpu, 1 thread(s)",
    ]


def test_var_rename_sweep_script_launches_the_layers_by_heads_grid() -> None:
    script = REPO / "examples" / "var_rename" / "sweep.sh"
    proc = subprocess.run(
        ["bash", str(script), "--dry-run", "--skip-validation", "--gpus", "0,1,2"],
        env={**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("#")]
    grid = {(line.split("--num_layers=")[1].split()[0], line.split("--num_heads=")[1].split()[0]) for line in lines}
    assert grid == {(str(layers), str(heads)) for layers in (1, 2, 3, 4) for heads in (1, 2, 4)}
    assert len(lines) == 12 and all(" -m examples.var_rename " in line for line in lines)
    assert lines[11].startswith("CUDA_VISIBLE_DEVICES=2 ") and "--run_name=layers_heads_11" in lines[11]


# --------------------------------------------------------------------------------------------
# Errors (exit 2, one line)


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_empty_grid_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "empty sweep" in error_of(["--cmd", dummy_cmd(tmp_path), "--gpus=none"], capsys)
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    argv = ["--cmd", dummy_cmd(tmp_path), "--overrides-file", str(tmp_path / "empty.txt"), "--dry-run"]
    assert "empty sweep" in error_of(argv, capsys)
    assert "empty value for 'num_layers'" in error_of(["--cmd", "x", "--grid", "num_layers=", "--dry-run"], capsys)
    argv = ["--cmd", "x", "--grid", "num_layers=1", "--panes-per-window=0", "--dry-run", "--skip-validation"]
    assert "--panes-per-window 0: must be >= 1" in error_of(argv, capsys)  # the dry run checks what launch checks


def test_unknown_grid_key_is_relayed_from_print_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--cmd", dummy_cmd(tmp_path), "--grid", "num_layers=1,2", "--grid", "num_hedas=2", "--gpus=none"]
    err = error_of([*argv, "--session", f"pytest-never-{uuid.uuid4().hex[:8]}"], capsys)
    assert "unknown field 'num_hedas'" in err and "run 0" in err
    assert not tmp_path.joinpath(".sweeps").exists()
    # A bad value is caught too, for the run that has it.
    err = error_of(["--cmd", dummy_cmd(tmp_path), "--grid", "num_layers=1,x", "--gpus=none", "--dry-run"], capsys)
    assert "run 1 (--num_layers=x)" in err and "expected int" in err


def test_a_command_that_is_not_a_run_command_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Exit 0 is not enough: the command must print the run's resolved config, with the run name it was given.
    for cmd, shown in (("echo hi", "'hi --num_layers=1 --run_name=p_0 --print_config'"), ("true", "'nothing'")):
        err = error_of(["--cmd", cmd, "--grid", "num_layers=1,2", "--gpus=none", "--prefix=p", "--dry-run"], capsys)
        assert f"run 0: {cmd!r} exited 0 with --print_config but printed {shown}" in err, err
        assert "is it a run command of this library?" in err
    assert not tmp_path.joinpath(".sweeps").exists()
    assert sweep.main(["--cmd", dummy_cmd(tmp_path), "--grid", "num_layers=1,2", "--gpus=none", "--dry-run"]) == 0


def test_a_field_swept_under_two_names_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # lr and learning_rate (its earlier name) name one field: the task refuses the pair, so the sweep stops before
    # any run instead of planning runs whose lr values never apply.
    cmd = f"{shlex.quote(sys.executable)} -m examples.var_rename --tensorboard_logdir={shlex.quote(str(tmp_path))}"
    argv = ["--cmd", cmd, "--grid", "lr=0.1", "--grid", "learning_rate=0.2", "--gpus=none", "--dry-run"]
    err = error_of(argv, capsys)
    assert "--lr and --learning_rate both set --lr" in err, err


def test_two_spellings_of_one_run_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Distinct as typed, identical as the task resolves them: the sweep would train the same run twice.
    base = ["--cmd", dummy_cmd(tmp_path), "--gpus=none", "--dry-run"]
    err = error_of([*base, "--grid", "lr=0.001,1e-3"], capsys)
    assert "runs 0 (--lr=0.001) and 1 (--lr=1e-3) resolve to the same config: identical runs" in err, err
    (tmp_path / "runs.txt").write_text("--num_layers=2\n--num_layers=1\n--num_layers=2\n")
    err = error_of([*base, "--overrides-file", str(tmp_path / "runs.txt")], capsys)
    assert "runs 0 (--num_layers=2) and 2 (--num_layers=2)" in err, err
    assert sweep.main([*base, "--grid", "lr=0.001,1e-2"]) == 0


def test_an_overrides_file_that_is_not_text_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "runs.bin"
    path.write_bytes(b"--lr=0.1\xff\n")
    with pytest.raises(sweep.SweepError, match=r"runs.bin' is not UTF-8 text: byte 8 is 0xff"):
        sweep.read_overrides_file(path)
    with pytest.raises(sweep.SweepError, match="is larger than 1,048,576 bytes"):
        sweep.read_overrides_file("/dev/zero")


def test_missing_tmux_says_how_to_install_it(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "iluvattnshun.sweep", "launch", "--cmd", "true", "--grid", "a=1", "--gpus", "none"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "tmux is not installed" in proc.stderr and "apt-get install tmux" in proc.stderr
    assert "brew install tmux" in proc.stderr


# --------------------------------------------------------------------------------------------
# Real launches


@requires_tmux
def test_grid_values_reach_tmux_titles_literally(tmp_path: Path, session: str) -> None:
    # tmux expands #(...) in a format by running it in a shell: a grid value in a pane title must stay text.
    marker = tmp_path / "MARKER"
    value = f"#(touch {marker})#{{pane_id}}"
    # The working directory, which tmux also expands (a directory name cannot hold a path: the command sets a tmux
    # variable instead).
    variable = f"SWEEP_TEST_{session.replace('-', '_')}"
    cwd = tmp_path / f"dir #(tmux set-environment -g {variable} 1)"
    cwd.mkdir()
    runs = sweep.plan_runs([[("note", value)]], "t", [])
    sweep.launch(
        "pwd >where; true", runs, session=session, prefix="t", status_dir=tmp_path / "rec", validate=False, cwd=str(cwd)
    )
    time.sleep(1.0)
    titles = tmux("list-panes", "-s", "-t", f"={session}", "-F", "#{pane_title}").stdout.splitlines()
    assert not marker.exists()
    assert titles == [f"t_0 [cpu] note={value}"], titles
    assert (cwd / "where").read_text().strip() == str(cwd)
    assert tmux("show-environment", "-g", variable).returncode != 0


@requires_tmux
def test_launch_on_two_gpus_replaces_session_and_summarizes(
    tmp_path: Path, session: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logdir = tmp_path / "logs"
    assert tmux("new-session", "-d", "-s", session, "sleep 300").returncode == 0
    argv = ["--cmd", dummy_cmd(logdir), "--grid", "num_layers=1,2", "--gpus", "0,1", "--session", session]
    err = error_of([*argv, "--prefix", "g"], capsys)
    assert f"tmux session '{session}' already exists" in err and "--replace" in err
    assert not logdir.exists()

    assert sweep.main([*argv, "--prefix", "g", "--replace"]) == 0
    assert f"launched 2 runs in tmux session '{session}' (2 panes on GPUs 0,1)" in capsys.readouterr().out
    panes = tmux("list-panes", "-s", "-t", f"={session}", "-F", "#{pane_start_command}").stdout.splitlines()
    assert len(panes) == 2 and not any("sleep" in p for p in panes), panes

    rdir = sweep.record_dir(logdir, "g")
    assert sweep.wait_for_runs(rdir, timeout=60) == {0: 0, 1: 0}
    dirs = run_dirs(logdir, "g")
    assert sorted(dirs) == ["g_0", "g_1"]
    for i in range(2):
        config = yaml.safe_load((dirs[f"g_{i}"] / f"{dirs[f'g_{i}'].name}.yaml").read_text())
        assert config["num_layers"] == i + 1 and config["run_name"] == f"g_{i}"
        assert (dirs[f"g_{i}"] / sweep_dummy.CUDA_FILE).read_text() == str(i)
    # Panes stay open after their run so the output can be read.
    assert tmux("list-panes", "-s", "-t", f"={session}", "-F", "#{pane_dead}").stdout.split() == ["0", "0"]

    assert sweep.main(["summarize", str(logdir), "--prefix", "g", "--csv", str(tmp_path / "g.csv")]) == 0
    out = capsys.readouterr().out
    assert "2 runs (2 finished), sorted by best val/accuracy" in out
    table = [line.split() for line in out.splitlines() if line.startswith("g_")]
    # num_layers=2 reaches the higher accuracy in the dummy, so it is listed first.
    assert [row[:4] for row in table] == [["g_1", "2", "finished", "2"], ["g_0", "1", "finished", "2"]]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "g.csv").read_text())))
    assert [(r["run"], r["num_layers"], r["state"]) for r in rows] == [
        ("g_1", "2", "finished"),
        ("g_0", "1", "finished"),
    ]
    assert float(rows[0]["final val/accuracy"]) == pytest.approx(2 / 3)
    assert rows[1]["final val/acc_per_depth/2"] == "" and rows[0]["final val/acc_per_depth/2"] != ""


@requires_tmux
def test_cpu_runs_queue_in_one_pane_and_a_crash_is_reported(
    tmp_path: Path, session: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    logdir = tmp_path / "logs"
    runs = tmp_path / "runs.txt"
    runs.write_text("--num_layers=1 --num_heads=2\n--num_layers=2 --fail\n")
    argv = ["--cmd", dummy_cmd(logdir), "--overrides-file", str(runs), "--gpus", "none", "--max-parallel", "1"]
    assert sweep.main([*argv, "--session", session, "--prefix", "c"]) == 0
    capsys.readouterr()
    assert len(tmux("list-panes", "-s", "-t", f"={session}").stdout.splitlines()) == 1

    assert sweep.wait_for_runs(sweep.record_dir(logdir, "c"), timeout=60) == {0: 0, 1: 1}
    dirs = run_dirs(logdir, "c")
    assert (dirs["c_0"] / sweep_dummy.CUDA_FILE).read_text() == sweep_dummy.UNSET
    # Queued, not parallel: the second run only started after the first one ended.
    assert int(dirs["c_1"].name.split("_")[1]) > int(dirs["c_0"].name.split("_")[1])

    table = sweep.summarize(logdir, "c", csv_path=tmp_path / "c.csv", html_path=tmp_path / "c.html")
    assert "2 runs (1 finished, 1 crashed)" in table
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith("c_")}
    assert rows["c_0"].split()[1:5] == ["1", "2", "false", "finished"]
    assert rows["c_1"].split()[1:6] == ["2", "1", "true", "crashed", "(exit"]
    html = (tmp_path / "c.html").read_text()
    assert "plotly" in html and "c_1" in html


@requires_tmux
def test_runs_get_the_launchers_kernel_and_python_variables_not_the_tmux_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tmux server started earlier with other values (here: AVX2 kernels, MKL's AVX2 path, a stray PYTHONPATH):
    the runs see the launcher's values, or none where the launcher has none, never the server's."""
    monkeypatch.setenv("TMUX_TMPDIR", str(tmp_path))  # a server of this test's own
    stray = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_VERBOSE": "1", "PYTHONPATH": "/stray"}
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}
    holder = subprocess.run(["tmux", "new-session", "-d", "-s", "holder"], env={**env, **stray}, capture_output=True)
    assert holder.returncode == 0, holder.stderr
    try:
        for k in stray:
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
        logdir = tmp_path / "logs"
        argv = ["--cmd", dummy_cmd(logdir), "--grid", "num_layers=1,2", "--gpus", "none", "--session", "k"]
        assert sweep.main([*argv, "--prefix", "k"]) == 0
        assert sweep.wait_for_runs(sweep.record_dir(logdir, "k"), timeout=60) == {0: 0, 1: 0}
        for run_dir in run_dirs(logdir, "k").values():
            assert json.loads((run_dir / sweep_dummy.KERNEL_ENV_FILE).read_text()) == {"MKL_CBWR": "COMPATIBLE"}
    finally:
        subprocess.run(["tmux", "kill-server"], env={**env, "TMUX_TMPDIR": str(tmp_path)}, capture_output=True)


# --------------------------------------------------------------------------------------------
# Summary states without tmux


def test_summary_lists_every_state_and_skips_older_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logdir = tmp_path / "logs"

    def dummy(*args: str) -> int:
        return sweep_dummy.main([f"--tensorboard_logdir={logdir}", *args])

    assert dummy("--run_name=s_0", "--num_layers=3") == 0  # from an earlier sweep with the same prefix
    old = next(logdir.iterdir())
    os.utime(old / f"{old.name}.yaml", (time.time() - 3600, time.time() - 3600))
    os.utime(old, (time.time() - 3600, time.time() - 3600))

    sets = [[("num_layers", str(n))] for n in (1, 2, 1, 2)]
    runs = sweep.plan_runs(sets, "s", [])
    rdir = sweep.record_dir(logdir, "s")
    rdir.mkdir(parents=True)
    sweep.status_path(rdir, 3).write_text("0\n")  # stale status of the earlier sweep
    sweep.write_record(rdir, runs, cmd="x", extra=[], cwd=str(tmp_path), session="s", prefix="s", logdir=logdir)
    assert not sweep.status_path(rdir, 3).exists()

    assert dummy("--run_name=s_0", "--num_layers=1") == 0
    sweep.status_path(rdir, 0).write_text("0\n")
    assert dummy("--run_name=s_1", "--num_layers=2", "--fail") == 1
    sweep.status_path(rdir, 1).write_text("1\n")
    assert dummy("--run_name=s_2", "--num_layers=1", "--steps=1") == 0  # no status yet: still running

    results, older = sweep.load_sweep(logdir, "s")
    assert older == 1
    assert [(r.run_name, r.state) for r in results] == [
        ("s_0", "finished"),
        ("s_1", "crashed (exit 1)"),
        ("s_2", "running"),
        ("s_3", "pending"),
    ]
    assert results[3].config == {"num_layers": 2} and results[3].run_dir is None
    assert results[0].config["num_layers"] == 1 and results[0].step == 2 and results[2].step == 0
    assert results[0].best("val/loss") == pytest.approx(1 / 4) and results[0].final("val/accuracy") == pytest.approx(
        0.5
    )
    assert sweep.swept_params(results) == ["num_layers", "steps", "fail"]

    assert sweep.main(["summarize", str(logdir), "--prefix", "s", "--sort", "loss", "--by", "final"]) == 0
    out = capsys.readouterr().out
    assert "4 runs (1 finished, 1 crashed, 1 running, 1 pending), sorted by final val/loss" in out
    assert "1 older run directories" in out
    # Lowest final loss first; runs without the metric last, in index order.
    assert [line.split()[0] for line in out.splitlines() if line.startswith("s_")] == ["s_0", "s_2", "s_1", "s_3"]

    err = error_of(["summarize", str(logdir), "--prefix", "s", "--sort", "bleu"], capsys)
    assert "--sort 'bleu'" in err and "val/accuracy" in err
    assert "no runs named" in error_of(["summarize", str(logdir), "--prefix", "nope"], capsys)


def test_summary_warns_of_an_events_file_that_holds_no_event(tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    for i in range(2):
        assert sweep_dummy.main([f"--tensorboard_logdir={logdir}", f"--run_name=s_{i}", f"--num_layers={i + 1}"]) == 0
    (garbage,) = run_dirs(logdir, "s")["s_1"].glob("*tfevents*")
    garbage.write_bytes(os.urandom(3000))
    (run_dirs(logdir, "s")["s_0"] / "events.out.tfevents.1.dir").mkdir()  # not a file: TensorBoard's reader trips
    proc = subprocess.run(
        [sys.executable, "-m", "iluvattnshun.sweep", "summarize", str(logdir), "--prefix", "s"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0
    warnings = proc.stderr.splitlines()
    assert len(warnings) == 2 and warnings[0].startswith("warning: s_0: ") and "tfevents.1.dir" in warnings[0]
    assert warnings[1].startswith("warning: s_1: ") and str(garbage) in warnings[1], proc.stderr
    assert "no readable TensorBoard event" in warnings[1]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("s_")]
    assert [r[0] for r in rows] == ["s_0", "s_1"] and rows[0][3] == "2" and set(rows[1][4:]) == {"-"}  # the table stays


@requires_tmux
def test_real_var_rename_grid_through_tmux(tmp_path: Path, session: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The real example, two tiny runs in tmux on two (pretend) GPUs, then the summary of their real events."""
    logdir = tmp_path / "logs"
    cmd = (
        f"env PYTHONPATH={shlex.quote(str(REPO))} OMP_NUM_THREADS=1 {shlex.quote(sys.executable)} -m examples.var_rename"
        f" --tensorboard_logdir={shlex.quote(str(logdir))} --dataset_path={shlex.quote(str(tmp_path / 'data'))}"
        " --max_minutes=none --max_steps=6 --batch_size=8 --dim_model=16 --train_size=256 --test_size=32"
        " --eval_every_n_samples=none --device=cpu"
    )
    argv = ["--cmd", cmd, "--grid", "num_layers=1,2", "--gpus", "0,1", "--session", session, "--prefix", "real"]
    assert sweep.main(argv) == 0
    assert sweep.wait_for_runs(sweep.record_dir(logdir, "real"), timeout=240) == {0: 0, 1: 0}
    dirs = run_dirs(logdir, "real")
    assert sorted(dirs) == ["real_0", "real_1"]
    for i in range(2):
        config = yaml.safe_load((dirs[f"real_{i}"] / f"{dirs[f'real_{i}'].name}.yaml").read_text())
        assert config["num_layers"] == i + 1 and config["max_steps"] == 6
        assert any(dirs[f"real_{i}"].glob("ckpt_*.pt"))
    capsys.readouterr()
    assert sweep.main(["summarize", str(logdir), "--prefix", "real", "--csv", str(tmp_path / "r.csv")]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert sorted((r["run"], r["num_layers"], r["state"]) for r in rows) == [
        ("real_0", "1", "finished"),
        ("real_1", "2", "finished"),
    ]
    assert all(r["final val/accuracy"] != "" and r["final val/depth_reach_90"] != "" for r in rows)
    table = capsys.readouterr().out
    header = table.splitlines()[1].split()
    assert header[header.index("accuracy") + 1 : header.index("accuracy") + 3] == ["depth_reach_90", "depth_reach_99"]


@requires_tmux
def test_sigterm_saves_exits_143_and_the_summary_says_stopped(tmp_path: Path, session: str) -> None:
    """A real training run in a tmux pane, stopped by SIGTERM: it saves, exits 143, and is not 'finished'."""
    logdir = tmp_path / "logs"
    cmd = (
        f"env PYTHONPATH={shlex.quote(str(REPO))} {shlex.quote(sys.executable)} -m examples.var_rename"
        f" --tensorboard_logdir={shlex.quote(str(logdir))} --dataset_path={shlex.quote(str(tmp_path / 'data'))}"
        " --max_minutes=none --max_steps=1000000 --batch_size=8 --dim_model=16 --train_size=256 --test_size=32"
        " --eval_every_n_samples=none --save_every_n_seconds=0 --device=cpu"
    )
    argv = ["--cmd", cmd, "--grid", "num_layers=1", "--gpus", "none", "--session", session, "--prefix", "sig"]
    assert sweep.main(argv) == 0
    deadline = time.monotonic() + 120
    pid = None
    while pid is None and time.monotonic() < deadline:  # the run is training once its events exist
        found = subprocess.run(["pgrep", "-f", "run_name=sig_0"], capture_output=True, text=True).stdout.split()
        events = list(logdir.glob("run_*/events.out.tfevents.*"))
        pid = int(found[0]) if found and events else None
        time.sleep(0.2)
    assert pid is not None, "the run never started training"
    time.sleep(1.0)
    os.kill(pid, signal.SIGTERM)
    assert sweep.wait_for_runs(sweep.record_dir(logdir, "sig"), timeout=120) == {0: 143}
    results, _ = sweep.load_sweep(logdir, "sig")
    assert results[0].state.startswith("stopped at step ") and results[0].state.endswith("(SIGTERM)")
    step = int(results[0].state.split()[3])
    assert step > 0 and (results[0].run_dir / f"ckpt_{step:08d}.pt").is_file()  # type: ignore[operator]


@requires_tmux
@pytest.mark.slow
def test_concurrent_runs_benchmark_launches_through_the_launcher_and_reports_the_split() -> None:
    """bench/bench_sweep.py end to end: real var_rename runs in real tmux sessions, their logged throughput read
    back from TensorBoard, and no session left behind."""
    env = {**os.environ, "NO_COLOR": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_sweep", "--repeats", "1", "--steps", "250"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "thread" in line]
    cores = available_cores()
    assert [row.split(" | ")[0] for row in rows] == [f"| 1 run x {cores} threads", f"| {cores} runs x 1 thread"]
    for row in rows:
        tokens, steps = (float(cell.replace(",", "")) for cell in row.split(" | ")[1:3])
        assert tokens > 0 and steps > 0
        assert tokens == pytest.approx(steps * 64 * 32, rel=0.05)  # the quick preset: batch 64 x 32 tokens
    assert rows[0].endswith("| 1.00x |")
    assert "bench_sweep_" not in tmux("ls").stdout


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"runs": [{"index": "x"}]}', "is not a sweep record"),
        ('{"launched_at": 1}', "is not a sweep record"),
        ('{"runs": [{"index": 0}], "launched_at": "y"}', "is not a sweep record"),
        ("{{", "is not JSON (a damaged sweep record)"),
    ],
)
def test_a_sweep_record_that_is_not_one_stops_summarize_and_wait_with_one_line(
    tmp_path: Path, content: str, message: str
) -> None:
    rdir = sweep.record_dir(tmp_path, "s")
    rdir.mkdir(parents=True)
    (rdir / "sweep.json").write_text(content)
    for command in (
        ["summarize", str(tmp_path), "--prefix", "s"],
        ["wait", str(tmp_path), "--prefix", "s"],
        ["status", str(tmp_path), "--prefix", "s"],
    ):
        proc = python_m("iluvattnshun.sweep", command, tmp_path, timeout=120)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("error: ") and message in proc.stderr, (command, proc.stderr)


def test_wait_refuses_a_timeout_that_is_not_positive(tmp_path: Path) -> None:
    proc = python_m("iluvattnshun.sweep", ["wait", str(tmp_path), "--timeout=-1"], tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stderr == "error: --timeout -1.0: must be a number of seconds > 0\n"


def test_summarize_refuses_an_output_it_cannot_write_before_reading_runs(tmp_path: Path) -> None:
    for flag, expected in (
        ("--csv=/proc/iluvattnshun/x.csv", "--csv: cannot write to"),
        (f"--html={tmp_path}", "is a directory"),
    ):
        proc = python_m("iluvattnshun.sweep", ["summarize", str(tmp_path), flag], tmp_path, timeout=120)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr
