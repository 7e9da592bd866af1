"""Data benchmarks: vectorised vs per-example generation, the full paper dataset, data-wait share.

Run: python -m bench.bench_data [--repeats 3] [--out /tmp/iluvattnshun_bench] [--write]

1. Generation throughput of the var_rename paper task (4 chains, 150 renames, 600 tokens): the
   per-example path (``get_prompt`` in a loop, the default ``get_prompts``) in a warm pool of 2 spawned
   processes on 2,000 examples, against the vectorised ``get_prompts`` in one process, interleaved.
2. The full paper dataset, 1,000,000 train + 10,000 test, generated and saved by ``make_dataset`` in a
   fresh process under ``/usr/bin/time -v`` (wall time, peak RSS), then reloaded: cache hit, and cache
   hit plus the train arrays in memory as an ``ArrayLoader`` needs them.
3. Share of training-step time spent waiting for the next batch (``WaitTimer``), with a small
   ``MultilayerTransformer``: cached arrays (``ArrayLoader``) and streaming (``StreamingDataset`` through
   a ``StreamingLoader`` with 0 and 1 workers).

The machine may be shared: every figure is the median of ``--repeats`` runs, and the load average is
recorded next to the results.
"""

import argparse
import concurrent.futures
import datetime
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from examples.var_rename import VarRenameConfig, VarRenamePrompter
from bench.common import machine
from bench.results import replace_section
from iluvattnshun.data import ArrayLoader, StreamingDataset, StreamingLoader, WaitTimer
from iluvattnshun.nn import MultilayerTransformer
from iluvattnshun.datasets import generate_chunk
from iluvattnshun.prompter import Prompter

ROOT = Path(__file__).resolve().parents[1]
PAPER: dict[str, Any] = {"num_chains": 4, "num_renames": 150}
SECTION_START = "<!-- bench_data:start -->"
SECTION_END = "<!-- bench_data:end -->"


class PerExampleVarRename(VarRenamePrompter):
    """The per-example path: the base class's ``get_prompts``, a Python loop over ``get_prompt``."""

    CHUNK_SIZE = 250
    get_prompts = Prompter.get_prompts


def _median(values: list[float]) -> float:
    return statistics.median(values)


# --- 1. generation throughput ---------------------------------------------------------------------------


def generation_throughput(repeats: int, per_example_n: int, vectorised_n: int) -> dict[str, Any]:
    cfg = VarRenameConfig(**PAPER)
    slow, fast = PerExampleVarRename(cfg), VarRenamePrompter(cfg)
    slow_rates, slow_single_rates, fast_rates = [], [], []
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        list(pool.map(generate_chunk, [slow, slow], [0, 0], [0, 1], [10, 10]))  # start and warm both workers
        generate_chunk(fast, 0, 0, 1024)  # and the vectorised path
        for rep in range(repeats):
            chunks = range(-(-per_example_n // slow.CHUNK_SIZE))
            start = time.perf_counter()
            futures = [pool.submit(generate_chunk, slow, 0, c, slow.CHUNK_SIZE) for c in chunks]
            n = sum(len(f.result()["prompt"]) for f in futures)
            slow_rates.append(n / (time.perf_counter() - start))

            start = time.perf_counter()
            n = sum(
                len(generate_chunk(fast, 0, c, fast.CHUNK_SIZE)["prompt"])
                for c in range(vectorised_n // fast.CHUNK_SIZE)
            )
            fast_rates.append(n / (time.perf_counter() - start))

            start = time.perf_counter()
            generate_chunk(slow, 0, rep, slow.CHUNK_SIZE)
            slow_single_rates.append(slow.CHUNK_SIZE / (time.perf_counter() - start))
    return {
        "per_example_pool2": _median(slow_rates),
        "per_example_1proc": _median(slow_single_rates),
        "vectorised_1proc": _median(fast_rates),
        "ratio": _median([f / s for f, s in zip(fast_rates, slow_rates)]),
        "runs": {"per_example_pool2": slow_rates, "vectorised_1proc": fast_rates},
    }


# --- 2. full dataset ---------------------------------------------------------------------------------------

BUILD = """
import sys, time
sys.path.insert(0, {root!r})
from examples.var_rename import VarRenameConfig, VarRenamePrompter
from iluvattnshun.datasets import make_dataset
start = time.perf_counter()
config = VarRenameConfig(num_chains=4, num_renames=150, dataset_path={out!r}, train_size=1_000_000, test_size=10_000)
dsd = make_dataset(VarRenamePrompter(config), progress=False)
print("seconds_in_make_dataset", time.perf_counter() - start)
"""

RELOAD = """
import sys, time
start = time.perf_counter()
sys.path.insert(0, {root!r})
from examples.var_rename import VarRenameConfig, VarRenamePrompter
from iluvattnshun.data import ArrayLoader
from iluvattnshun.datasets import make_dataset
imported = time.perf_counter()
prompter = VarRenamePrompter(
    VarRenameConfig(num_chains=4, num_renames=150, dataset_path={out!r}, train_size=1_000_000, test_size=10_000))
dsd = make_dataset(prompter, progress=False)
loaded = time.perf_counter()
loader = ArrayLoader.from_dataset(dsd["train"], batch_size=128)
ready = time.perf_counter()
# the integrity checks inside the cache hit, timed again on their own
from iluvattnshun import datasets as ds
files = [f for f in sorted(ds.dataset_dir(prompter).rglob("*")) if f.is_file()]
assert sum(f.stat().st_size for f in files) > 10**9, "the paper dataset's files were not found"
t = time.perf_counter()
for f in files:
    ds._file_record(f)
checksums = time.perf_counter() - t
t = time.perf_counter()
ds._check_tokens(dsd, prompter.vocab_size)
tokens = time.perf_counter() - t
print("import", imported - start, "cache_hit", loaded - imported, "arrays", ready - loaded,
      "checksums", checksums, "token_check", tokens)
"""


def _time_v(code: str) -> tuple[str, float, float]:
    """Run ``python -c code`` under /usr/bin/time -v: (stdout, wall seconds, peak RSS in GB)."""
    proc = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    assert wall and rss, proc.stderr
    seconds = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.group(1).split(":"))))
    return proc.stdout, seconds, int(rss.group(1)) / 1e6


def full_dataset(repeats: int, out: Path) -> dict[str, Any]:
    if not Path("/usr/bin/time").exists():
        raise SystemExit("/usr/bin/time is missing: apt-get install time")
    walls, rsss, inner = [], [], []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        stdout, wall, rss = _time_v(BUILD.format(root=str(ROOT), out=str(out)))
        walls.append(wall)
        rsss.append(rss)
        inner.append(float(stdout.split()[-1]))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    reload: dict[str, list[float]] = {
        k: [] for k in ("import", "cache_hit", "arrays", "checksums", "token_check", "wall", "rss")
    }
    for _ in range(repeats):
        stdout, wall, rss = _time_v(RELOAD.format(root=str(ROOT), out=str(out)))
        parts = stdout.split()
        for key, value in zip(parts[::2], parts[1::2]):
            reload[key].append(float(value))
        reload["wall"].append(wall)
        reload["rss"].append(rss)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "build_wall_s": _median(walls),
        "build_wall_runs": walls,
        "build_make_dataset_s": _median(inner),
        "build_peak_rss_gb": _median(rsss),
        "build_peak_rss_max_gb": max(rsss),
        "disk_gb": size / 1e9,
        "reload": {k: _median(v) for k, v in reload.items()},
    }


# --- 3. data-wait share ------------------------------------------------------------------------------------


def _train_steps(
    loader: Any, model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, warmup: int
) -> tuple[float, float]:
    """Run warmup + steps training steps: (share of the timed steps' wall time spent in next(), their seconds)."""
    timer = WaitTimer(loader)
    it = iter(timer)
    for _ in range(warmup):
        _step(next(it), model, opt)
    timer.reset()
    start = time.perf_counter()
    for _ in range(steps):
        _step(next(it), model, opt)
    elapsed = time.perf_counter() - start
    return timer.wait_s / elapsed, elapsed


def _step(batch: dict[str, torch.Tensor], model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    logits = model(batch["prompt"]).logits  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), batch["answer"].flatten(), ignore_index=38)
    opt.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()


def data_wait(repeats: int, threads: int, workers: list[int]) -> list[dict[str, Any]]:
    """Median data-wait share per shape and loader mode, with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    shapes: list[tuple[str, dict[str, Any], int, int]] = [
        ("quick: 2 chains x 8 renames (T 32), batch 64", {"num_chains": 2, "num_renames": 8}, 64, 60),
        ("paper data: 4 chains x 150 renames (T 600), batch 16", PAPER, 16, 8),
    ]
    results = []
    for name, task, batch, steps in shapes:
        prompter = VarRenamePrompter(VarRenameConfig(**task, data_seed=0))
        cached = prompter.sample_batch(np.random.default_rng(0), 20_000)
        modes: dict[str, Callable[[], Any]] = {"cached ArrayLoader": lambda: ArrayLoader(cached, batch, seed=0)}
        for w in workers:
            modes[f"streaming, {w} workers"] = lambda w=w: StreamingLoader(  # type: ignore[misc]
                StreamingDataset(prompter, batch_size=batch), num_workers=w
            )
        shares: dict[str, list[float]] = {m: [] for m in modes}
        step_s: list[float] = []
        for _ in range(repeats):
            for mode, make in modes.items():
                torch.manual_seed(0)
                model = MultilayerTransformer(
                    prompter.vocab_size, 128, 4, 2, dropout_attn=0.0, dropout_mlp=0.0, dropout_emb=0.0
                )
                opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
                share, seconds = _train_steps(make(), model, opt, steps, warmup=3)
                shares[mode].append(share)
                step_s.append(seconds / steps)
        results.append(
            {
                "shape": name,
                "threads": threads,
                "step_ms": 1e3 * _median(step_s),
                "shares": {m: _median(v) for m, v in shares.items()},
            }
        )
    return results


# --- report ----------------------------------------------------------------------------------------------


def report(
    args: argparse.Namespace,
    gen: dict[str, Any],
    full: dict[str, Any] | None,
    wait: list[dict[str, Any]],
    loads: list[str],
) -> str:
    lines = [
        SECTION_START,
        "## Data: generation, full dataset, data-wait share (`bench/bench_data.py`)",
        "",
        f"- Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; machine: {machine()}",
        f"- Command: `{' '.join(['python -m bench.bench_data', *sys.argv[1:]])}`; medians of {args.repeats} runs",
        f"- Load average during the run (the machine is shared): {', '.join(loads)}",
        "",
        "### Generation throughput, var_rename paper task (4 chains, 150 renames, 600 tokens)",
        "",
        "| path | examples/s |",
        "|---|---:|",
        f"| per-example `get_prompt` loop, pool of 2 spawned processes ({args.per_example_n:,} examples) | {gen['per_example_pool2']:,.0f} |",
        f"| per-example `get_prompt` loop, 1 process | {gen['per_example_1proc']:,.0f} |",
        f"| vectorised `get_prompts`, 1 process ({args.vectorised_n:,} examples) | {gen['vectorised_1proc']:,.0f} |",
        f"| **ratio vectorised / per-example pool** (target >= 50x) | **{gen['ratio']:.0f}x** |",
        "",
    ]
    if full is not None:
        r = full["reload"]
        lines += [
            "### Full paper dataset: 1,000,000 train + 10,000 test, `make_dataset` in a fresh process",
            "",
            "| measure | value | target |",
            "|---|---:|---|",
            f"| wall time, process start to exit (`/usr/bin/time -v`) | {full['build_wall_s']:.1f} s (runs: {', '.join(f'{w:.1f}' for w in full['build_wall_runs'])}) | <= 120 s |",
            f"| of which inside `make_dataset` (generate, leakage stats, save) | {full['build_make_dataset_s']:.1f} s | |",
            f"| peak RSS (`/usr/bin/time -v`) | {full['build_peak_rss_gb']:.2f} GB (max of runs {full['build_peak_rss_max_gb']:.2f} GB) | <= 3 GB |",
            f"| size on disk (prompt, answer, depth as uint8) | {full['disk_gb']:.2f} GB | |",
            f"| reload, cache hit (`make_dataset` again, integrity checks included) | {r['cache_hit']:.2f} s | seconds |",
            f"| of which: xxh3 checksums of every cache file ({full['disk_gb']:.2f} GB) | {r['checksums']:.2f} s | |",
            f"| of which: token ids within the vocabulary | {r['token_check']:.2f} s | |",
            f"| reload + train arrays in memory (`ArrayLoader.from_dataset`) | {r['cache_hit'] + r['arrays']:.2f} s | |",
            f"| reload process wall time incl. imports; its peak RSS | {r['wall']:.1f} s; {r['rss']:.2f} GB | |",
            "",
        ]
    modes = sorted({m for w in wait for m in w["shares"]}, key=lambda m: (m != "cached ArrayLoader", m))
    lines += [
        "### Share of training-step time waiting for data (`WaitTimer` around the loader)",
        "",
        "Small `MultilayerTransformer` (2 layers, d_model 128, 4 heads), AdamW, var_rename batches; wait share ="
        " time inside the loader's `next()` / wall time of the same steps. Target: < 3%.",
        "",
        "| shape | torch threads | step (ms) | " + " | ".join(modes) + " |",
        "|---|---:|---:|" + "---:|" * len(modes),
    ]
    for w in wait:
        cells = [f"{100 * w['shares'][m]:.2f}%" if m in w["shares"] else "not run" for m in modes]
        lines.append(f"| {w['shape']} | {w['threads']} | {w['step_ms']:.1f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "DataLoader workers are measured with 1 torch thread only: with 2 threads plus a worker on 2 cores,"
        " the threads oversubscribe the CPU (a quick-shape step went from 39 ms to 1.4 s in a trial run).",
    ]
    lines += ["", SECTION_END]
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    replace_section(text, SECTION_START, SECTION_END, ROOT / "bench" / "RESULTS.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per_example_n", type=int, default=2000)
    parser.add_argument("--vectorised_n", type=int, default=131072)
    parser.add_argument("--out", type=Path, default=Path("/tmp/iluvattnshun_bench/var_rename_paper"))
    parser.add_argument("--skip_full", action="store_true", help="skip the 1,010,000-example build")
    parser.add_argument(
        "--threads", type=int, default=0, help="also measure the data wait with this many torch threads (0: only 1)"
    )
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of bench/RESULTS.md")
    args = parser.parse_args()
    loads = [f"{os.getloadavg()[0]:.2f} (start)"]
    gen = generation_throughput(args.repeats, args.per_example_n, args.vectorised_n)
    print(f"generation: {gen}", flush=True)
    full = None
    if not args.skip_full:
        loads.append(f"{os.getloadavg()[0]:.2f} (before full build)")
        full = full_dataset(args.repeats, args.out)
        print(f"full dataset: {full}", flush=True)
    loads.append(f"{os.getloadavg()[0]:.2f} (before data wait)")
    wait = data_wait(args.repeats, threads=1, workers=[0, 1])
    wait += data_wait(args.repeats, threads=args.threads, workers=[0]) if args.threads > 1 else []
    print(f"data wait: {wait}", flush=True)
    loads.append(f"{os.getloadavg()[0]:.2f} (end)")
    text = report(args, gen, full, wait, loads)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
