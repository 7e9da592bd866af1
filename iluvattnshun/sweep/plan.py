"""Planning a sweep: grid and override sets -> runs -> panes, each run validated with ``--print_config``."""

import concurrent.futures
import itertools
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

VALIDATION_TIMEOUT_S = 300.0
"""Longest a ``--print_config`` validation may take (it imports torch, maybe on a busy machine)."""

CPU_THREADS_PER_RUN = 1
"""Torch threads per run on a CPU machine: the split of its cores that gave the most aggregate steps/s (several
runs of one thread each rather than fewer runs of several threads; bench/RESULTS.md, "CPU sweeps")."""

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
"""Session names and run-name prefixes."""
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_GPU_ID_RE = re.compile(r"^(\d+|(GPU|MIG)-[0-9A-Za-z-]+)$")
"""What CUDA_VISIBLE_DEVICES takes: an index, or a GPU or MIG UUID."""

MAX_OVERRIDES_BYTES = 1 << 20
"""The largest ``--overrides-file`` read (a line per run)."""

Override = tuple[str, str | None]
"""One command-line override: ``(key, value)``, or ``(key, None)`` for a bare ``--flag``."""


class SweepError(Exception):
    """A problem with the sweep's input or environment; the CLI prints it on one line and exits 2."""


@dataclass(frozen=True)
class Run:
    """One run of a sweep: its overrides and where it runs."""

    index: int
    """Position in the sweep; the run is named ``<prefix>_<index>``."""
    run_name: str
    """Value passed as ``--run_name``."""
    overrides: tuple[Override, ...]
    """The swept settings of this run, in command-line order."""
    gpu: str | None
    """Value of ``CUDA_VISIBLE_DEVICES`` for the run, or None to leave it alone (CPU)."""
    pane: int
    """Index of the pane (parallel slot) that runs it."""
    threads: int | None = None
    """Value of ``OMP_NUM_THREADS`` (the run's torch threads), or None to leave it alone."""

    def args(self, extra: Sequence[str] = ()) -> list[str]:
        """The arguments appended to the command: extra arguments, overrides, ``--run_name``."""
        overrides = [f"--{k}" if v is None else f"--{k}={v}" for k, v in self.overrides]
        return [*extra, *overrides, f"--run_name={self.run_name}"]

    def env(self) -> dict[str, str]:
        """The environment variables the run is started with (its GPU and its thread count)."""
        env = {} if self.gpu is None else {"CUDA_VISIBLE_DEVICES": self.gpu}
        return env if self.threads is None else {**env, "OMP_NUM_THREADS": str(self.threads)}

    def shell_command(self, cmd: str, extra: Sequence[str] = ()) -> str:
        """The shell line that runs this run, with its environment assignments."""
        assignments = [f"{k}={shlex.quote(v)}" for k, v in self.env().items()]
        return " ".join([*assignments, cmd, *(shlex.quote(a) for a in self.args(extra))])

    def params(self) -> dict[str, str]:
        """The overrides as ``{key: value}`` (``"true"`` for a bare flag)."""
        return {k: "true" if v is None else v for k, v in self.overrides}


def parse_override_tokens(tokens: Iterable[str], where: str) -> list[Override]:
    """Parses ``--key=value`` / ``key=value`` / ``--flag`` tokens.

    Args:
        tokens: the tokens of one override set.
        where: where the tokens come from, for error messages.

    Raises:
        SweepError: on a malformed token, a repeated key or ``run_name`` (the launcher sets it).
    """
    out: list[Override] = []
    for token in tokens:
        body = token[2:] if token.startswith("--") else token
        key, eq, value = body.partition("=")
        if not token.startswith("--") and not eq:
            raise SweepError(f"{where}: expected --key=value, key=value or --flag, got {token!r}")
        if not _KEY_RE.match(key):
            raise SweepError(f"{where}: {key!r} is not a valid field name (in {token!r})")
        if key == "run_name":
            raise SweepError(f"{where}: run_name cannot be swept; the launcher sets it to <prefix>_<i>")
        if any(k == key for k, _ in out):
            raise SweepError(f"{where}: {key!r} is given twice")
        out.append((key, value if eq else None))
    return out


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """Parses ``--grid key=v1,v2,...`` specifications into ``{key: [values]}`` (order kept).

    Raises:
        SweepError: on a spec without ``=``, an empty value list or value, or a repeated key.
    """
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, eq, values = spec.partition("=")
        key = key.strip().removeprefix("--")
        if not eq or not key:
            raise SweepError(f"--grid {spec!r}: expected KEY=V1,V2,... (e.g. num_layers=1,2,4)")
        if not _KEY_RE.match(key):
            raise SweepError(f"--grid {spec!r}: {key!r} is not a valid field name")
        if key == "run_name":
            raise SweepError("--grid run_name=...: run_name cannot be swept; the launcher sets it to <prefix>_<i>")
        if key in grid:
            raise SweepError(f"--grid: key {key!r} is given twice; list all its values in one --grid {key}=...")
        items = [v.strip() for v in values.split(",")]
        if not values.strip() or any(not v for v in items):
            raise SweepError(f"--grid {spec!r}: empty value for {key!r}; expected {key}=V1,V2,...")
        unprintable = next((v for v in items if not v.isprintable()), None)
        if unprintable is not None:
            raise SweepError(f"--grid {key}: the value {unprintable[:60]!r} holds a control character (a newline?)")
        repeated = sorted({v for v in items if items.count(v) > 1})
        if repeated:
            raise SweepError(f"--grid {spec!r}: {key}={', '.join(repeated)} is listed twice (identical runs)")
        grid[key] = items
    return grid


def read_overrides_file(path: str | os.PathLike[str]) -> list[list[Override]]:
    """Reads one override set per line (``--num_layers=2 --num_heads=4``; blank and ``#`` lines skipped)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_OVERRIDES_BYTES + 1)
    except OSError as e:
        raise SweepError(f"cannot read overrides file {str(path)!r}: {e.strerror}") from None
    if len(raw) > MAX_OVERRIDES_BYTES:
        raise SweepError(f"overrides file {str(path)!r} is larger than {MAX_OVERRIDES_BYTES:,} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SweepError(
            f"overrides file {str(path)!r} is not UTF-8 text: byte {e.start} is {raw[e.start]:#04x}"
        ) from None
    sets: list[list[Override]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as e:
            raise SweepError(f"{path}:{lineno}: {e}") from None
        sets.append(parse_override_tokens(tokens, f"{path}:{lineno}"))
    return sets


def expand(grid: Mapping[str, Sequence[str]], override_sets: Sequence[Sequence[Override]] = ()) -> list[list[Override]]:
    """The override sets of a sweep: every file set crossed with the cartesian product of the grid.

    The last grid key varies fastest, like nested loops in the order the keys were given.

    Raises:
        SweepError: when the sweep is empty or a key is both in a file set and in the grid.
    """
    if not grid and not override_sets:
        raise SweepError("empty sweep: give at least one --grid KEY=V1,V2,... or a non-empty --overrides-file")
    combos = [list(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [[]]
    sets: list[list[Override]] = []
    for base in override_sets or [[]]:
        for combo in combos:
            clash = {k for k, _ in base} & {k for k, _ in combo}
            if clash:
                raise SweepError(f"key {sorted(clash)[0]!r} is both in the overrides file and in --grid")
            sets.append([*base, *combo])
    return sets


def parse_gpus(spec: str | None) -> list[str]:
    """GPU ids from ``--gpus``: ``"0,1,3"``; ``"none"``, ``"cpu"`` or ``""`` for none; None for all visible."""
    if spec is None:
        return default_gpus()
    if spec.strip().lower() in ("", "none", "cpu"):
        return []
    gpus = [g.strip() for g in spec.split(",")]
    if any(not g for g in gpus):
        raise SweepError(f"--gpus {spec!r}: empty GPU id; expected e.g. --gpus 0,1,2,3 (or --gpus none)")
    if len(set(gpus)) != len(gpus):
        raise SweepError(f"--gpus {spec!r}: a GPU is listed twice; use --max-parallel to run several per GPU")
    bad = next((g for g in gpus if not _GPU_ID_RE.match(g)), None)
    if bad is not None:
        raise SweepError(
            f"--gpus {spec[:80]!r}: {bad[:40]!r} is not a GPU index or UUID (e.g. --gpus 0,1 or GPU-<uuid>)"
        )
    return gpus


def default_gpus() -> list[str]:
    """All GPUs visible to this process: ``CUDA_VISIBLE_DEVICES`` if set, else torch's device count."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [g.strip() for g in visible.split(",") if g.strip()]
        # CUDA stops at the first invalid id; "-1" is the usual way to hide every GPU.
        return list(itertools.takewhile(lambda g: not g.startswith("-"), ids))
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plan_runs(
    override_sets: Sequence[Sequence[Override]],
    prefix: str,
    gpus: Sequence[str],
    max_parallel: int | None = None,
    threads_per_run: int | None = None,
    costs: Sequence[float] | None = None,
) -> list[Run]:
    """Assigns each override set a run name, a pane, a GPU and a thread count.

    On GPUs there are ``P = max_parallel * len(gpus)`` panes (one per run without ``max_parallel``), and pane
    ``p`` uses GPU ``gpus[p % len(gpus)]``. On a CPU machine the cores are split between concurrent runs:
    each run gets ``threads_per_run`` threads (default ``CPU_THREADS_PER_RUN``) and ``P = max_parallel``
    (default: cores // threads) runs go at once. Runs go to panes round-robin, or, with ``costs`` (e.g. expected
    minutes), each to the pane with the least cost so far, most costly first, so that panes end together.
    """
    if not NAME_RE.match(prefix):
        raise SweepError(f"--prefix {prefix!r}: use letters, digits, '_' and '-' only")
    if max_parallel is not None and max_parallel < 1:
        raise SweepError(f"--max-parallel {max_parallel}: must be >= 1")
    if threads_per_run is not None and threads_per_run < 1:
        raise SweepError(f"--threads-per-run {threads_per_run}: must be >= 1")
    if costs is not None and len(costs) != len(override_sets):
        raise SweepError(f"{len(costs)} costs for {len(override_sets)} runs")
    n = len(override_sets)
    threads = threads_per_run
    if gpus:
        slots = n if max_parallel is None else min(n, max_parallel * len(gpus))
    else:
        threads = threads or CPU_THREADS_PER_RUN
        slots = min(n, max_parallel or max(1, available_cores() // threads))
    pane_of = [i % slots for i in range(n)]
    if costs is not None:
        load = [0.0] * slots
        for i in sorted(range(n), key=lambda i: -costs[i]):
            pane_of[i] = min(range(slots), key=lambda p: load[p])
            load[pane_of[i]] += costs[i]
    return [
        Run(
            index=i,
            run_name=f"{prefix}_{i}",
            overrides=tuple(o),
            gpu=gpus[pane_of[i] % len(gpus)] if gpus else None,
            pane=pane_of[i],
            threads=threads,
        )
        for i, o in enumerate(override_sets)
    ]


def panes(runs: Sequence[Run]) -> list[list[Run]]:
    """The runs grouped by pane, each pane's runs in the order they will run."""
    grouped: dict[int, list[Run]] = {}
    for run in runs:
        grouped.setdefault(run.pane, []).append(run)
    return [grouped[p] for p in sorted(grouped)]


def child_env(run: Run | None) -> dict[str, str]:
    """This process's environment for a child (a run's validation, tmux), with the run's own variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    return env if run is None else {**env, **run.env()}


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def validate_runs(cmd: str, runs: Sequence[Run], extra: Sequence[str] = (), cwd: str | None = None) -> list[Any]:
    """Runs every run's command with ``--print_config`` (concurrently) before anything is launched.

    Returns:
        The parsed YAML each command printed (the resolved configs), in run order.

    Raises:
        SweepError: naming the first failing run and relaying its error message (e.g. an unknown field), or the
            first run whose command exited 0 without printing a config holding its run name (not a run command).
    """

    def check(run: Run) -> tuple[int, str, str]:
        line = run.shell_command(cmd, extra) + " --print_config"
        try:
            proc = subprocess.run(
                ["bash", "-c", line],
                cwd=cwd,
                env=child_env(run),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=VALIDATION_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return -1, "", f"--print_config did not finish within {VALIDATION_TIMEOUT_S:.0f} s"
        return proc.returncode, proc.stdout, proc.stderr

    workers = max(1, min(len(runs), max(2, os.cpu_count() or 2)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(check, runs))
    failed = [(run, rc, out, err) for run, (rc, out, err) in zip(runs, results) if rc != 0]
    if failed:
        run, rc, out, err = failed[0]
        message = (last_line(err) or last_line(out) or f"exit status {rc}").removeprefix("error: ")
        what = " ".join(a if a.isprintable() else repr(a) for a in run.args(extra)[:-1]) or "(no overrides)"
        more = f" (and {len(failed) - 1} more runs failed)" if len(failed) > 1 else ""
        hint = "" if rc == 2 else f" (exit {rc}; a command without --print_config needs --skip-validation)"
        raise SweepError(f"run {run.index} ({what}) rejected before launch: {message}{hint}{more}")
    configs = []
    for run, (_, out, _) in zip(runs, results):
        try:
            config = yaml.safe_load(out)
        except yaml.YAMLError:
            config = None
        # Exit 0 alone proves nothing (`echo hi` exits 0): a run command of this library prints its resolved config,
        # which holds the run name the launcher gave it.
        if not isinstance(config, dict) or config.get("run_name") != run.run_name:
            shown = last_line(out)[:80] or "nothing"
            raise SweepError(
                f"run {run.index}: {short_command(cmd)!r} exited 0 with --print_config but printed {shown!r}, not a "
                f"config with run_name {run.run_name!r}: is it a run command of this library? (--skip-validation "
                "launches without this check)"
            )
        configs.append(config)
    # Two spellings of one value (lr=0.001,1e-3; qk_norm=true,yes; a line repeated in an overrides file) plan the
    # same run twice: compared as the task resolved them, not as typed.
    first_of: dict[str, int] = {}
    for position, (run, config) in enumerate(zip(runs, configs)):
        key = yaml.safe_dump({k: v for k, v in config.items() if k != "run_name"}, sort_keys=True)
        if key in first_of:
            other = runs[first_of[key]]
            raise SweepError(
                f"runs {other.index} ({' '.join(other.args(extra)[:-1]) or '(no overrides)'}) and {run.index} "
                f"({' '.join(run.args(extra)[:-1]) or '(no overrides)'}) resolve to the same config: identical runs"
            )
        first_of[key] = position
    return configs


def short_command(cmd: str, limit: int = 80) -> str:
    """``cmd`` for an error message, cut to ``limit`` characters."""
    return cmd if len(cmd) <= limit else cmd[: limit - 3] + "..."


def config_logdir(configs: Sequence[Any], cwd: str) -> Path | None:
    """The absolute ``tensorboard_logdir`` shared by the validated configs, or None when they lack one.

    Raises:
        SweepError: when the runs would log to different directories.
    """
    if not configs or not all(isinstance(c, dict) and isinstance(c.get("tensorboard_logdir"), str) for c in configs):
        return None
    dirs = sorted({str(Path(cwd, c["tensorboard_logdir"]).resolve()) for c in configs})
    if len(dirs) > 1:
        raise SweepError(f"the runs log to different directories ({', '.join(dirs)}); sweep them separately")
    return Path(dirs[0])
