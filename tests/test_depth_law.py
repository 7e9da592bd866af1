"""The depth-law command end to end: a real tmux grid of tiny models, its results, a refused rerun, no tmux."""

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forked import command_env, python_m

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


def depth_law(args: list[str], cwd: Path, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a real process (forked from the tests' zygote), with ``path`` as its PATH if given."""
    env = command_env(PATH=path or os.environ["PATH"])
    return python_m("examples.var_rename.depth_law", args, cwd, env, timeout=600)


@pytest.mark.slow  # the whole grid in tmux (about a minute); the bad-input and dry-run tests stay in the default run
def test_cpu_grid_in_tmux_writes_results_and_refuses_another_experiment(tmp_path: Path) -> None:
    session = f"law_test_{os.getpid()}"
    tiny = (
        f"--extra=--dim_model=16 --num_heads=2 --train_size=256 --test_size=64 --num_renames=12 "
        f"--eval_every_n_samples=none --dataset_path={tmp_path / 'data'}"
    )
    args = [
        f"--out={tmp_path / 'law'}",
        f"--session={session}",
        "--budget=0.003",
        "--seeds=2",
        "--eval_prompts=60",
        tiny,
    ]
    try:
        proc = depth_law(args, tmp_path)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", f"={session}"], capture_output=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "8/8 runs ended" in proc.stdout  # the progress lines, printed (not redrawn) when not a terminal
    last = proc.stdout.split("8/8 runs ended")[-1].splitlines()[1:9]
    done = [re.search(r"step (\d+)/(\d+) .* finished$", line) for line in last]
    assert all(m and m[1] == m[2] for m in done), last  # every run at its last step, not its last train log
    out = tmp_path / "law"
    for name in ("accuracy_per_depth.html", "depth_reach.html", "accuracy_per_depth.csv", "results.md"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "accuracy_per_depth.csv").open()))
    assert {(r["num_layers"], r["seed"], r["layout"]) for r in rows} == {
        (str(n), str(s), layout) for n in (1, 2, 3, 4) for s in (0, 1) for layout in ("bind_first", "original")
    }
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 and int(r["positions"]) > 0 for r in rows)
    table = (out / "results.md").read_text()
    assert "| 4L2H | 2 | 0.50 |" in table  # 2 seeds, 2 chains: chance 0.5
    assert "| 15 |" in table and "| 24 |" in table  # 5,000 and 8,000 steps x budget 0.003 (3 and 4 layers)
    assert "original study" in table and "Sanford" in table
    capability = torch.backends.cpu.get_cpu_capability()
    assert f"({capability}), torch {torch.__version__}, 1 thread (8 runs)." in table  # where all 8 trained
    figure = (out / "depth_reach.html").read_text()
    assert all(name in figure for name in ("2^n", "each seed", "median, original layout", "Sanford", "plotly"))

    # Results again from the existing checkpoints; another experiment in the same folder is refused.
    again = depth_law([*args, "--results_only"], tmp_path)
    assert again.returncode == 0 and "reach 90%, original" in again.stdout
    other = depth_law([a if a != "--eval_prompts=60" else "--eval_prompts=61" for a in args], tmp_path)
    assert other.returncode == 2 and "holds another experiment (it differs in eval)" in other.stderr


@pytest.mark.slow
def test_paper_grid_runs_end_to_end_on_the_cpu_at_toy_size(tmp_path: Path) -> None:
    # The paper scale's whole path (its preset, 2-5 layers x 1-2 heads, evaluation, results) with a tiny override.
    session = f"law_paper_{os.getpid()}"
    toy = (
        "--extra=--dim_model=16 --num_renames=12 --train_size=256 --test_size=64 --max_steps=10 --num_epochs=-1 "
        f"--warmup_steps=2 --eval_every_n_samples=none --dataset_path={tmp_path / 'data'}"
    )
    args = ["--scale=paper", "--gpus=cpu", "--seeds=1", f"--out={tmp_path / 'p'}", f"--session={session}", toy]
    try:
        proc = depth_law([*args, "--eval_prompts=40"], tmp_path)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", f"={session}"], capture_output=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "p" / "accuracy_per_depth.csv").open()))
    assert {(r["num_layers"], r["num_heads"]) for r in rows} == {(str(n), str(h)) for n in (2, 3, 4, 5) for h in (1, 2)}
    table = (tmp_path / "p" / "results.md").read_text()
    assert "| 4L2H | 1 | 0.25 |" in table and "original study, reach 90%" in table  # 4 chains: chance 0.25


def test_missing_tmux_is_a_clear_error_before_any_work(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    proc = depth_law([f"--out={tmp_path / 'law'}"], tmp_path, path=str(bare))
    assert proc.returncode == 2 and "tmux is not installed" in proc.stderr
    assert not (tmp_path / "law").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out=/proc/iluvattnshun/law"], "out: cannot write to '/proc/iluvattnshun/law'"),
        (["--layers=1", "--seeds=1", "--extra=--lr=-1"], "rejected before launch: lr must be a finite number > 0"),
        (["--seeds=0"], "seeds must be in 1..100"),
        (["--gpus=0,x"], "gpus must be auto, cpu or GPU ids"),
        # the same path as --extra=--lr=-1 (the task refuses a run flag), with another field: slow
        pytest.param(["--extra=--qk_norm=maybe"], "qk_norm", marks=pytest.mark.slow),
    ],
)
def test_unwritable_out_and_bad_run_flags_stop_before_anything_is_written(
    tmp_path: Path, args: list[str], message: str
) -> None:
    proc = depth_law([f"--session=law_bad_{os.getpid()}", *args], tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_a_session_of_the_same_name_that_is_not_this_grid_stops_before_any_work(tmp_path: Path) -> None:
    # A session left open by an earlier experiment (another --out) or the user's own: not waited on as this grid.
    session = f"law_other_{os.getpid()}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "sleep 120"], check=True)
    try:
        proc = depth_law([f"--session={session}", f"--out={tmp_path / 'law'}", "--layers=1", "--seeds=1"], tmp_path)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", f"={session}"], capture_output=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert f"session: tmux session '{session}' exists and is not running this experiment's grid" in lines[0]
    assert not (tmp_path / "law").exists()


def test_dry_run_checks_the_extra_flags_and_the_session(tmp_path: Path) -> None:
    for args, message in (
        (["--extra=--nmu_layers=3"], "rejected before launch: unknown option --nmu_layers; did you mean --num_layers?"),
        (["--session=a.b"], "session must be a tmux session name"),
        (["--session=#(touch x)"], "session must be a tmux session name"),
    ):
        proc = depth_law(["--dry_run", f"--out={tmp_path / 'o'}", *args], tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (args, proc.stderr[-2000:])
        assert not proc.stdout and not any(tmp_path.iterdir())


def test_paper_scale_plans_the_original_grid_over_the_visible_gpus(tmp_path: Path) -> None:
    args = ["--scale=paper", f"--out={tmp_path / 'p'}", "--seeds=2", "--dry_run"]
    proc = python_m("examples.var_rename.depth_law", args, tmp_path, command_env(CUDA_VISIBLE_DEVICES="0,1"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 16 and all("--preset=paper" in line for line in lines)

    def flag(line: str, name: str) -> str:
        return line.split(f"--{name}=")[1].split()[0]

    grid = {(flag(line, "num_layers"), flag(line, "num_heads"), flag(line, "seed")) for line in lines}
    assert grid == {(str(n), str(h), str(s)) for n in (2, 3, 4, 5) for h in (1, 2) for s in (0, 1)}
    assert {line.split()[0] for line in lines} == {"CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"}
    assert not (tmp_path / "p").exists()


def test_layers_and_parallel_pick_the_models_and_the_runs_at_once(tmp_path: Path) -> None:
    proc = depth_law(["--layers=4,2", "--seeds=3", "--parallel=3", "--dry_run", f"--out={tmp_path / 'p'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    planned = sorted((line.split("--num_layers=")[1].split()[0], line.split("# pane ")[1]) for line in lines)
    assert [layers for layers, _ in planned] == ["2", "2", "2", "4", "4", "4"]
    assert {pane for _, pane in planned} == {"0", "1", "2"}  # three at once, on a machine of any size
    assert not (tmp_path / "p").exists()


def test_bad_settings_and_folders_stop_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for name, content in (("null", "null"), ("list", "[1, 2]")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "experiment.json").write_text(content)
    (tmp_path / "dir" / "experiment.json").mkdir(parents=True)
    cases = [
        (["--dry_run", "--budget=inf", f"--out={tmp_path / 'a'}"], "budget"),
        (["--dry_run", "--layers=5", f"--out={tmp_path / 'a'}"], "layers must be layer counts of the cpu scale"),
        (["--dry_run", "--layers=2,x", f"--out={tmp_path / 'a'}"], "layers must be"),
        (["--dry_run", "--parallel=-1", f"--out={tmp_path / 'a'}"], "parallel"),
        (["--results_only", f"--out={tmp_path / 'file'}"], "is a file"),
        (["--results_only", f"--out={tmp_path / 'null'}"], "holds no experiment record"),
        (["--results_only", f"--out={tmp_path / 'list'}"], "holds no experiment record"),
        (["--results_only", f"--out={tmp_path / 'dir'}"], "is unreadable"),
        (["--dry_run", "--out=/proc/iluvattnshun/law"], "out: cannot write to"),
        (["--dry_run", "--eval_renames=100000000", f"--out={tmp_path / 'a'}"], "eval_renames must be in 0..10,000"),
        (["--dry_run", "--eval_prompts=100000000000", f"--out={tmp_path / 'a'}"], "eval_prompts: 100,000,000,000 test"),
        (["--dry_run", "--backend=slurm", "--slurm=--time=1 x", f"--out={tmp_path / 'a'}"], "slurm: "),
        (["--dry_run", "--backend=slurm", "--gpus=0", f"--out={tmp_path / 'a'}"], "gpus: on SLURM each run gets"),
    ]
    for args, expected in cases:
        proc = depth_law(args, tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], (args, proc.stderr[-2000:])
