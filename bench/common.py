"""Helpers the benchmark scripts share: the machine's description, timing with device synchronisation, logged throughput."""

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from iluvattnshun.speed import cpu_name


def machine() -> str:
    """CPU model, core count and library versions, for the machine line of a RESULTS.md section."""
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on a CPU), so that a timer measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> float:
    """Seconds for ``repeats`` calls of ``fn``, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    """Median seconds of one call of ``fn`` over ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device) for _ in range(repeats))


def median_logged(run_dir: Path, tag: str) -> float:
    """Median of a run's logged ``train/<tag>`` windows (``steps_per_s``, ``tokens_per_s``), the first (with
    start-up and compilation) left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    values = [e.value for e in acc.Scalars(f"train/{tag}")][1:]
    if not values:
        raise RuntimeError(f"{run_dir} logged no throughput after its first window")
    return float(statistics.median(values))


def steps_per_s(run_dir: Path) -> float:
    """Median logged training steps/s of a run, start-up window left out."""
    return median_logged(run_dir, "steps_per_s")
