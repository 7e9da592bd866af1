"""CPU sweeps: how to split a CPU machine's cores between concurrent training runs.

Run: python -m bench.bench_sweep [--repeats 3] [--steps 1500] [--write]

Trains the var_rename quick shape (4 layers, d_model 64, 4 heads, T 32, batch 64) with the real command,
``python -m examples.var_rename``, in two arrangements that use every core:

- one run with all the cores as torch threads (``OMP_NUM_THREADS=<cores>``);
- one run per core, side by side, one thread each (what the sweep launcher does by default).

Each run's training throughput is the median of its logged ``train/steps_per_s`` windows (the first window,
with start-up, left out); an arrangement's aggregate is the sum over its concurrent runs. The arrangements
alternate ``--repeats`` times; the table gives medians and the ratio against the one-run baseline.
"""

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.bench_data import machine
from bench.results import publish
from iluvattnshun.sweep.plan import available_cores

ROOT = Path(__file__).resolve().parents[1]
SECTION_START = "<!-- bench_sweep:start -->"
SECTION_END = "<!-- bench_sweep:end -->"


def steps_per_s(run_dir: Path) -> float:
    """Median logged training throughput of a run, start-up window left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    values = [e.value for e in acc.Scalars("train/steps_per_s")][1:]
    if not values:
        raise RuntimeError(f"{run_dir} logged no throughput after its first window")
    return statistics.median(values)


def arrangement(runs: int, threads: int, steps: int, work: Path) -> float:
    """Aggregate steps/s of ``runs`` concurrent trainings with ``threads`` torch threads each."""
    logdir = work / f"logs_{runs}x{threads}"
    shutil.rmtree(logdir, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    args = [
        sys.executable, "-m", "examples.var_rename", f"--max_steps={steps}", "--eval_every_n_samples=none",
        "--save_every_n_seconds=0", "--log_every_n_seconds=2", "--train_size=20000", "--test_size=64",
        f"--dataset_path={work / 'data'}", f"--tensorboard_logdir={logdir}", "--device=cpu",
    ]  # fmt: skip
    procs = [
        subprocess.Popen([*args, f"--run_name=r{i}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for i in range(runs)
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(err.decode()[-2000:])
    return sum(steps_per_s(d) for d in sorted(logdir.glob("run_*")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1500, help="training steps per run")
    parser.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = parser.parse_args()
    cores = available_cores()
    shapes = {f"1 run x {cores} threads": (1, cores), f"{cores} runs x 1 thread": (cores, 1)}
    results: dict[str, list[float]] = {name: [] for name in shapes}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        arrangement(1, 1, 50, work)  # build the dataset cache once, outside the timings
        for rep in range(args.repeats):
            order = list(shapes.items()) if rep % 2 == 0 else list(shapes.items())[::-1]
            for name, (runs, threads) in order:
                results[name].append(arrangement(runs, threads, args.steps, work))
                print(f"repeat {rep + 1}: {name}: {results[name][-1]:.1f} steps/s", flush=True)
    base = statistics.median(results[f"1 run x {cores} threads"])
    lines = [
        SECTION_START,
        "## CPU sweeps: splitting the cores between runs",
        "",
        f"Machine: {machine()}. Date: {datetime.date.today()}. Command: `python -m bench.bench_sweep "
        f"--repeats {args.repeats} --steps {args.steps}`. var_rename quick shape (4 layers, d_model 64, T 32, batch "
        f"64) through `python -m examples.var_rename`; aggregate = sum of the concurrent runs' median steps/s; "
        f"medians of {args.repeats} alternating repeats.",
        "",
        "| arrangement | aggregate steps/s (median) | each repeat | vs one run |",
        "|---|---:|---|---:|",
    ]
    for name, values in results.items():
        each = ", ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {name} | {statistics.median(values):.1f} | {each} | {statistics.median(values) / base:.2f}x |")
    lines += [
        "",
        "The sweep launcher's CPU default (`CPU_THREADS_PER_RUN` in `iluvattnshun/sweep/plan.py`) follows the winner.",
        SECTION_END,
    ]
    publish(lines, SECTION_START, SECTION_END, args.write)


if __name__ == "__main__":
    main()
