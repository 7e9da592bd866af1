"""A tiny stand-in for a task CLI, used by the sweep tests.

It speaks the same command-line contract as the project's tasks (``--field=value``, bare ``--flag``,
``--print_config``, exit 2 on an unknown field) and leaves behind the same run directory layout:
``<tensorboard_logdir>/run_<N>_<run_name>/run_<N>_<run_name>.yaml`` plus real TensorBoard scalars
(``val/loss``, ``val/accuracy``, ``val/acc_per_depth/<d>``). It also records the
``CUDA_VISIBLE_DEVICES`` it was started with in ``cuda_visible_devices.txt``, so that a test can check
the launcher's GPU assignment.
"""

import dataclasses
import json
import os
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CUDA_FILE = "cuda_visible_devices.txt"
"""Name of the file (inside the run directory) that holds the CUDA_VISIBLE_DEVICES seen by the run."""

UNSET = "<unset>"
"""Written to CUDA_FILE when CUDA_VISIBLE_DEVICES was not set at all."""

KERNEL_ENV_FILE = "kernel_env.json"
"""Name of the file (inside the run directory) that holds the variables the run saw that pick kernels (ATEN_*,
MKL_*, ONEDNN_*) and its PYTHONPATH."""


@dataclass(kw_only=True)
class DummyConfig:
    """Config of the dummy task."""

    num_layers: int = 1
    """Number of layers: the run logs per-depth accuracy for depths 0..num_layers."""
    num_heads: int = 1
    """Number of heads: only changes the logged numbers."""
    lr: float = 1e-3
    """Learning rate: only changes the logged numbers."""
    steps: int = 3
    """Number of validation points to log."""
    sleep: float = 0.0
    """Seconds to sleep between validation points (to keep a run 'running' for a while)."""
    fail: bool = False
    """Crash (exit 1) after writing the config, before logging any event."""
    run_name: str = "run"
    """Name of the run; the run directory is run_<N>_<run_name>."""
    tensorboard_logdir: str = "logs/dummy"
    """Directory that holds the run directories."""


def _parse_value(name: str, kind: type, raw: str | None) -> Any:
    if raw is None:
        if kind is not bool:
            raise ValueError(f"--{name} needs a value (--{name}=...)")
        return True
    if kind is bool:
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"--{name}: expected a bool, got {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"--{name}: expected {kind.__name__}, got {raw!r}") from None


def parse_args(argv: list[str]) -> tuple[DummyConfig, bool]:
    """Parses ``--field=value`` arguments.

    Returns:
        The config and whether ``--print_config`` was given.
    """
    fields = typing.get_type_hints(DummyConfig)
    values: dict[str, Any] = {}
    print_config = False
    for arg in argv:
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r} (expected --field=value)")
        name, eq, raw = arg[2:].partition("=")
        if name == "print_config":
            print_config = True
            continue
        if name not in fields:
            raise ValueError(f"unknown field {name!r}; valid fields: {', '.join(sorted(fields))}")
        values[name] = _parse_value(name, fields[name], raw if eq else None)
    return DummyConfig(**values), print_config


def make_run_dir(logdir: Path, run_name: str) -> Path:
    """Creates ``run_<N>_<run_name>`` with the next free N (atomic under concurrent starts)."""
    logdir.mkdir(parents=True, exist_ok=True)
    n = len([p for p in logdir.iterdir() if p.name.startswith("run_")])
    while True:
        path = logdir / f"run_{n}_{run_name}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def main(argv: list[str] | None = None) -> int:
    """Runs the dummy task; returns the exit status."""
    try:
        config, print_config = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if print_config:
        sys.stdout.write(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
        return 0

    run_dir = make_run_dir(Path(config.tensorboard_logdir), config.run_name)
    (run_dir / f"{run_dir.name}.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    (run_dir / CUDA_FILE).write_text(os.environ.get("CUDA_VISIBLE_DEVICES", UNSET))
    seen = {k: v for k, v in os.environ.items() if k.startswith(("ATEN_", "MKL_", "ONEDNN_")) or k == "PYTHONPATH"}
    (run_dir / KERNEL_ENV_FILE).write_text(json.dumps(seen))
    if config.fail:
        print("error: failing on purpose (--fail)", file=sys.stderr)
        return 1

    # Imported late so that --print_config (the launcher's validation) stays fast.
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir))
    for step in range(config.steps):
        progress = (step + 1) / config.steps
        writer.add_scalar("val/loss", 1.0 / (1 + step + config.num_layers), step)
        writer.add_scalar("val/accuracy", progress * config.num_layers / (config.num_layers + 1), step)
        for depth in range(config.num_layers + 1):
            acc = progress * (1.0 - depth / (config.num_layers + 1)) * (0.5 + 0.5 * config.num_heads / 4)
            writer.add_scalar(f"val/acc_per_depth/{depth}", acc, step)
        writer.flush()
        if config.sleep:
            time.sleep(config.sleep)
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
