"""Concurrent runs on one machine: the aggregate training throughput of runs side by side, launched by the sweep
launcher, against one run.

Run:
    python -m bench.bench_sweep [--repeats 3] [--steps 1500] [--write]               # CPU: split the cores
    python -m bench.bench_sweep --device cuda --runs 1,8 [--preset paper] [--minutes 1.5] [--write]  # GPU packing

On a CPU, two arrangements use every core: one run with all the cores as torch threads, and one run per core with
one thread each (the launcher's default). On a GPU, K runs share GPU 0 for each K of ``--runs`` (the launcher's
``--gpus 0 --max-parallel K``).

Every run is ``python -m examples.var_rename`` at ``--preset`` (quick: 4 layers, d_model 64, T 32, batch 64),
started by ``iluvattnshun.sweep.launch`` in a tmux session (the runs differ by seed) and waited for. A run's
throughput is the median of its logged ``train/tokens_per_s`` windows, the first (with start-up) left out; an
arrangement's aggregate is the sum over its runs. The arrangements alternate ``--repeats`` times; the table gives
medians and the ratio against one run.
"""

import argparse
import datetime
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import machine, median_logged, steps_per_s
from bench.results import publish
from iluvattnshun.sweep.plan import SweepError, available_cores, plan_runs
from iluvattnshun.sweep.record import wait_for_runs
from iluvattnshun.sweep.tmux import kill_session, launch

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "cpu": ("<!-- bench_sweep:start -->", "<!-- bench_sweep:end -->"),
    "cuda": ("<!-- bench_sweep:cuda:start -->", "<!-- bench_sweep:cuda:end -->"),
}


def run_together(
    runs: int, threads: int | None, gpu: str | None, budget: list[str], work: Path, validate: bool = False
) -> Path:
    """Train ``runs`` runs at once, launched by the sweep launcher on ``gpu`` (all of them) or on the CPU with
    ``threads`` torch threads each; returns their log directory once all have ended. ``validate``: check the
    runs' flags with the task first (a bad one raises ``SweepError`` before anything starts)."""
    prefix = f"r{runs}x{threads or 'gpu'}"
    logdir = work / f"logs_{prefix}"
    shutil.rmtree(logdir, ignore_errors=True)
    planned = plan_runs([[("seed", str(i))] for i in range(runs)], prefix, [gpu] if gpu else [], runs, threads)
    extra = [
        *budget, "--eval_every_n_samples=none", "--save_every_n_seconds=0", "--log_every_n_seconds=2",
        "--train_size=20000", "--test_size=64", f"--dataset_path={work / 'data'}", f"--tensorboard_logdir={logdir}",
        f"--device={'cuda' if gpu else 'cpu'}",
    ]  # fmt: skip
    cmd = f"{shlex.quote(sys.executable)} -m examples.var_rename"
    session = f"bench_sweep_{prefix}"
    rdir = launch(
        cmd, planned, session=session, prefix=prefix, extra=extra, replace=True, validate=validate, cwd=str(ROOT)
    )
    statuses = wait_for_runs(rdir)
    kill_session(session)  # its panes stay open after their runs, for reading
    if any(statuses.values()):
        raise RuntimeError(f"runs of {prefix} failed (exit statuses {statuses}); their logs: {logdir}")
    return logdir


def arrangement(runs: int, threads: int | None, gpu: str | None, budget: list[str], work: Path) -> tuple[float, float]:
    """Aggregate (tokens/s, steps/s) of ``runs`` concurrent trainings (see ``run_together``)."""
    logdir = run_together(runs, threads, gpu, budget, work)
    results = [(median_logged(d, "tokens_per_s"), steps_per_s(d)) for d in sorted(logdir.glob("run_*"))]
    if len(results) != runs:
        raise RuntimeError(f"{logdir}: expected {runs} run directories, found {len(results)}")
    return sum(r[0] for r in results), sum(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--runs", default="1,8", help="GPU: the numbers of concurrent runs to compare")
    parser.add_argument("--preset", default="quick", help="var_rename preset of every run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1500, help="CPU: training steps per run")
    parser.add_argument("--minutes", type=float, default=1.5, help="GPU: training minutes per run")
    parser.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = parser.parse_args()
    try:
        sizes = [int(k) for k in args.runs.split(",")]
    except ValueError:
        sizes = []
    problems = [
        *([] if sizes and min(sizes) >= 1 else [f"runs: a comma-separated list of counts >= 1, got {args.runs!r}"]),
        *([] if args.repeats >= 1 else [f"repeats must be >= 1, got {args.repeats}"]),
        *([] if args.steps >= 1 else [f"steps must be >= 1, got {args.steps}"]),
        *([] if args.minutes > 0 else [f"minutes must be > 0, got {args.minutes}"]),
    ]
    try:
        if problems:
            raise SweepError(problems[0])
        measure(args, sizes)
    except SweepError as e:  # a bad value here, or a flag the task rejects (e.g. --preset), before any run started
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(2) from None


def measure(args: argparse.Namespace, sizes: list[int]) -> None:
    """Run the arrangements, print the table and, with ``--write``, record it."""
    if args.device == "cpu":
        cores = available_cores()
        shapes: dict[str, tuple[int, int | None]] = {
            f"1 run x {cores} threads": (1, cores),
            f"{cores} runs x 1 thread": (cores, 1),
        }
        budget = [f"--max_steps={args.steps}"]
        gpu = None
    else:
        shapes = {f"{k} run{'s' if k > 1 else ''} on one GPU": (k, None) for k in sizes}
        budget = [f"--max_minutes={args.minutes}"]
        gpu = "0"
    budget.append(f"--preset={args.preset}")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in shapes}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the dataset is built once, outside the timings
        run_together(
            1, 1 if gpu is None else None, gpu, [f"--preset={args.preset}", "--max_steps=20"], work, validate=True
        )
        for rep in range(args.repeats):
            order = list(shapes.items()) if rep % 2 == 0 else list(shapes.items())[::-1]
            for name, (runs, threads) in order:
                results[name].append(arrangement(runs, threads, gpu, budget, work))
                tokens, steps = results[name][-1]
                print(f"repeat {rep + 1}: {name}: {tokens:,.0f} tokens/s, {steps:.1f} steps/s", flush=True)
    base = statistics.median(t for t, _ in next(iter(results.values())))
    where = machine() if gpu is None else f"GPU 0 of {machine()}"
    command = f"python -m bench.bench_sweep --device {args.device} --preset {args.preset} --repeats {args.repeats} " + (
        f"--steps {args.steps}" if gpu is None else f"--runs {args.runs} --minutes {args.minutes}"
    )
    start, end = SECTIONS[args.device]
    lines = [
        start,
        f"## Concurrent runs ({args.device}): {'splitting the cores' if gpu is None else 'packing one GPU'}",
        "",
        f"Machine: {where}. Date: {datetime.date.today()}. Command: `{command}`. var_rename `--preset={args.preset}` "
        "runs launched together by the sweep launcher (tmux); aggregate = sum of the concurrent runs' median "
        f"logged tokens/s and steps/s; medians of {args.repeats} alternating repeats.",
        "",
        "| arrangement | aggregate tokens/s (median) | aggregate steps/s | tokens/s, each repeat | vs one run |",
        "|---|---:|---:|---|---:|",
    ]
    for name, values in results.items():
        tokens = statistics.median(t for t, _ in values)
        steps = statistics.median(s for _, s in values)
        each = ", ".join(f"{t:,.0f}" for t, _ in values)
        lines.append(f"| {name} | {tokens:,.0f} | {steps:.1f} | {each} | {tokens / base:.2f}x |")
    lines += [
        "",
        (
            "The sweep launcher's CPU default (`CPU_THREADS_PER_RUN` in `iluvattnshun/sweep/plan.py`) follows the winner."
            if gpu is None
            else "The launcher's runs per GPU (`--max-parallel`) should follow the winner."
        ),
        end,
    ]
    publish(lines, start, end, args.write)


if __name__ == "__main__":
    main()
