"""The fastest training settings for a device and a model shape, as this project's benchmarks measured them.

``--compile=auto`` and ``--precision=auto`` (the defaults) resolve here when a run starts; the run prints the
choice with its reason and records the resolved values in its config. The thresholds come from
``python -m bench.bench_speed`` (bench/RESULTS.md, "Fastest path"): change them only with a new
measurement.
"""

import contextlib
import os
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

CPU_BF16_MIN_TOKENS_X_WIDTH = 600 * 128
"""On a CPU with native bf16 (AVX512-BF16 or AMX), bf16 autocast beats fp32 once sequence length x model width
reaches this: 1.49x at the paper shape (T 600 x d_model 128), 0.65x and 0.71x at T 32 and T 160 x d_model 64
(bench/RESULTS.md, bench_speed)."""

CPU_COMPILE = False
"""``torch.compile`` on a CPU: measured no faster at any benchmarked shape (0.97x at T 32 x d_model 64, 0.90x at
T 160 x 64, 1.02x at the paper shape; bench/RESULTS.md), and each run pays 15-25 s of compilation first."""


@dataclass(frozen=True)
class SpeedChoice:
    """What ``auto`` resolves to, and why."""

    compile: bool
    precision: Literal["fp32", "bf16"]
    reason: str


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``precision`` is bf16, else nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what ``platform`` knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    """Where a run trains: what decides its speed and its numbers.

    A seed gives the same numbers again only where the kernels are the same: the same torch, and on a CPU the same
    vector instructions (``cpu_capability``: AVX2 and AVX-512 kernels round differently) and library paths (an Intel
    and an AMD CPU differ even with both held to AVX2), on a GPU the same card.
    """
    facts: dict[str, Any] = {
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose(
    device: torch.device,
    compile: bool | str,
    precision: Literal["auto", "fp32", "bf16"],
    dim_model: int | None,
    seq_len: int | None,
) -> SpeedChoice:
    """Resolve ``auto`` values of ``compile`` and ``precision`` for this device and shape.

    Args:
        device: the training device.
        compile: True, False or "auto".
        precision: "fp32", "bf16" or "auto".
        dim_model: the model's width (None: unknown, e.g. a custom model).
        seq_len: tokens per sample (None: unknown).
    """
    reasons = []
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        auto_precision: Literal["fp32", "bf16"] = "bf16" if bf16 else "fp32"
        auto_compile = True
        reasons.append(f"CUDA: {'bf16 supported' if bf16 else 'no bf16'}; compiled steps measured faster")
    elif device.type == "cpu" and dim_model is not None and seq_len is not None:
        size = seq_len * dim_model
        native = cpu_has_native_bf16()
        auto_precision = "bf16" if native and size >= CPU_BF16_MIN_TOKENS_X_WIDTH else "fp32"
        auto_compile = CPU_COMPILE
        reasons.append(f"CPU{' with native bf16' if native else ''}, T {seq_len} x d_model {dim_model}")
    else:
        auto_precision, auto_compile = "fp32", False
        reasons.append(f"{device.type}, shape unknown: the plain path")
    chosen_compile = auto_compile if compile == "auto" else bool(compile)
    chosen_precision = auto_precision if precision == "auto" else precision
    if precision != "auto" and compile != "auto":
        reasons = ["as configured"]
    return SpeedChoice(chosen_compile, chosen_precision, "; ".join(reasons))
