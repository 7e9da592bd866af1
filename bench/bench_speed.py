"""The fastest path: every combination of ``--compile`` and ``--precision`` on three var_rename shapes.

Run: python -m bench.bench_speed [--repeats 2] [--write]

Each combination trains through the real command, ``python -m examples.var_rename`` (all cores, the torch
default), for a fixed number of steps; its steady-state throughput is the median of the logged
``train/steps_per_s`` windows after the first (which holds start-up and compilation), and its wall time is the whole
process, compilation included. Combinations alternate in order every repeat; the table gives medians and the
ratio against plain fp32. ``iluvattnshun/speed.py`` encodes the winners as the ``auto`` rule.
"""

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, steps_per_s
from bench.results import publish

ROOT = Path(__file__).resolve().parents[1]
SECTION_START = "<!-- bench_speed:start -->"
SECTION_END = "<!-- bench_speed:end -->"

SHAPES = {
    "quick: 4 layers, d_model 64, T 32, batch 64": (["--num_renames=8"], 600),
    "T 160: 4 layers, d_model 64, T 160, batch 64": (["--num_renames=40"], 200),
    "paper: 8 layers, d_model 128, T 600, batch 16": (
        ["--num_layers=8", "--dim_model=128", "--num_chains=4", "--num_renames=150", "--batch_size=16"],
        40,
    ),
}
COMBOS = {
    "fp32": ["--compile=false", "--precision=fp32"],
    "fp32 compiled": ["--compile=true", "--precision=fp32"],
    "bf16": ["--compile=false", "--precision=bf16"],
    "bf16 compiled": ["--compile=true", "--precision=bf16"],
}


def train(shape: list[str], combo: list[str], steps: int, work: Path) -> tuple[Path, float]:
    """(run directory, wall seconds) of one training run."""
    logdir = work / "logs"
    shutil.rmtree(logdir, ignore_errors=True)
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    args = [
        sys.executable, "-m", "examples.var_rename", *shape, *combo, f"--max_steps={steps}",
        "--eval_every_n_samples=none", "--save_every_n_seconds=0", "--log_every_n_seconds=3", "--train_size=4096",
        "--test_size=64", f"--dataset_path={work / 'data'}", f"--tensorboard_logdir={logdir}", "--device=cpu",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return next(logdir.glob("run_*")), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = parser.parse_args()
    rate: dict[tuple[str, str], list[float]] = {}
    wall: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for shape_name, (shape, steps) in SHAPES.items():
            train(shape, COMBOS["fp32"], 2, work)  # the shape's dataset, built outside the timings
            for rep in range(args.repeats):
                names = list(COMBOS) if rep % 2 == 0 else list(COMBOS)[::-1]
                for name in names:
                    run, w = train(shape, COMBOS[name], steps, work)
                    r = steps_per_s(run)
                    rate.setdefault((shape_name, name), []).append(r)
                    wall.setdefault((shape_name, name), []).append(w)
                    print(f"{shape_name} | {name}: {r:.2f} steps/s, {w:.0f} s wall", flush=True)
    lines = [
        SECTION_START,
        "## Fastest path: compile x precision on the CPU",
        "",
        f"Machine: {machine()}. Date: {datetime.date.today()}. Command: `python -m bench.bench_speed --repeats "
        f"{args.repeats}`. Real `python -m examples.var_rename` runs with all cores; steady = median of the logged "
        "steps/s windows after the first; wall = the whole process for the step budget (compilation included).",
        "",
        "| shape | combination | steady steps/s | vs fp32 | wall s (steps) |",
        "|---|---|---:|---:|---:|",
    ]
    for shape_name, (_, steps) in SHAPES.items():
        base = statistics.median(rate[(shape_name, "fp32")])
        for name in COMBOS:
            r = statistics.median(rate[(shape_name, name)])
            w = statistics.median(wall[(shape_name, name)])
            lines.append(f"| {shape_name} | {name} | {r:.2f} | {r / base:.2f}x | {w:.0f} ({steps}) |")
    lines += ["", SECTION_END]
    publish(lines, SECTION_START, SECTION_END, args.write)


if __name__ == "__main__":
    main()
