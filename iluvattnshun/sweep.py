"""Hyperparameter sweeps: a tmux grid launcher and a results summary.

Launch a grid, one tmux pane per run, GPUs assigned round-robin::

    python -m iluvattnshun.sweep launch --cmd "python -m examples.var_rename" \\
        --grid num_layers=1,2,3,4 --grid num_heads=1,2,4 --gpus 0,1,2,3 --prefix lh

Every run gets ``<cmd> <extra> --key=value ... --run_name=<prefix>_<i>`` with
``CUDA_VISIBLE_DEVICES=<gpu>`` (nothing is set on a CPU machine). Before anything is launched,
each run's command is executed once with ``--print_config``, so that an unknown field or a bad
value stops the sweep with the task's own error message. ``--max-parallel K`` caps concurrent
runs per GPU: the runs are spread over ``K * num_gpus`` panes (``K`` on CPU) and each pane runs
its share one after another.

Panes stay open after their runs end (a shell is left in the pane), so output can be read. The
launcher keeps a small record of the sweep in ``<tensorboard_logdir>/.sweeps/<prefix>/``:
``sweep.json`` (runs, overrides, GPUs), ``pane_<j>.sh`` (what each pane runs; re-runnable) and
``run_<i>.status`` (the exit status, written when run ``i`` ends). Then::

    python -m iluvattnshun.sweep wait logs/var_rename --prefix lh          # block until done
    python -m iluvattnshun.sweep summarize logs/var_rename --prefix lh --csv lh.csv --html lh.html

prints the swept parameters against final and best validation metrics (read from each run's
config YAML and TensorBoard events), including runs that crashed, are still running or have not
started yet.

tmux notes: the session is created detached with a 400x200 window so that a dozen panes fit;
when tmux answers "no space for new pane" (or ``--panes-per-window`` is reached) the next panes
go to a new window of the same session. Panes inherit the tmux *server's* environment, so the
launcher re-exports the variables that pick the Python environment (``PATH``, ``PYTHONPATH``,
``VIRTUAL_ENV``, ``CONDA_*``, ...) in each pane script.
"""

import argparse
import concurrent.futures
import csv
import dataclasses
import html
import io
import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

DEFAULT_SESSION = "sweep"
"""Session name (and run-name prefix) when none is given."""

WINDOW_SIZE = (400, 200)
"""Columns and rows of the detached session's windows: big, so that tmux has room to split."""

PANES_PER_WINDOW = 16
"""Panes per tmux window before the next window is opened."""

VALIDATION_TIMEOUT_S = 300.0
"""Longest a ``--print_config`` validation may take (it imports torch, maybe on a busy machine)."""

RECORD_DIRNAME = ".sweeps"
"""Directory inside the log directory that holds the sweep records (not a ``run_*`` directory)."""

FORWARDED_ENV = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "OMP_NUM_THREADS")
"""Variables re-exported in each pane so that it runs the same Python as the launcher."""

FORWARDED_ENV_PREFIXES = ("CONDA_", "HF_", "TORCH_", "PYTORCH_", "NCCL_")
"""Prefixes of further variables re-exported in each pane."""

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Override = tuple[str, str | None]
"""One command-line override: ``(key, value)``, or ``(key, None)`` for a bare ``--flag``."""


class SweepError(Exception):
    """A problem with the sweep's input or environment; the CLI prints it on one line and exits 2."""


# --------------------------------------------------------------------------------------------
# Planning: grid -> runs -> panes


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

    def args(self, extra: Sequence[str] = ()) -> list[str]:
        """The arguments appended to the command: extra arguments, overrides, ``--run_name``."""
        overrides = [f"--{k}" if v is None else f"--{k}={v}" for k, v in self.overrides]
        return [*extra, *overrides, f"--run_name={self.run_name}"]

    def shell_command(self, cmd: str, extra: Sequence[str] = ()) -> str:
        """The shell line that runs this run, with its ``CUDA_VISIBLE_DEVICES`` assignment."""
        line = " ".join([cmd, *(shlex.quote(a) for a in self.args(extra))])
        return line if self.gpu is None else f"CUDA_VISIBLE_DEVICES={shlex.quote(self.gpu)} {line}"

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
        grid[key] = items
    return grid


def read_overrides_file(path: str | os.PathLike[str]) -> list[list[Override]]:
    """Reads one override set per line (``--num_layers=2 --num_heads=4``; blank and ``#`` lines skipped)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SweepError(f"cannot read overrides file {str(path)!r}: {e.strerror}") from None
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


def plan_runs(
    override_sets: Sequence[Sequence[Override]], prefix: str, gpus: Sequence[str], max_parallel: int | None = None
) -> list[Run]:
    """Assigns each override set a run name, a pane and a GPU.

    Run ``i`` goes to pane ``i % P`` and GPU ``gpus[i % len(gpus)]``, where ``P`` (the number of panes)
    is ``max_parallel * len(gpus)`` (``max_parallel`` on CPU) or, without ``max_parallel``, one pane
    per run. ``P`` is a multiple of the GPU count, so every run of a pane uses the pane's GPU.
    """
    if not _NAME_RE.match(prefix):
        raise SweepError(f"--prefix {prefix!r}: use letters, digits, '_' and '-' only")
    if max_parallel is not None and max_parallel < 1:
        raise SweepError(f"--max-parallel {max_parallel}: must be >= 1")
    n = len(override_sets)
    slots = n if max_parallel is None else min(n, max_parallel * max(1, len(gpus)))
    return [
        Run(
            index=i,
            run_name=f"{prefix}_{i}",
            overrides=tuple(o),
            gpu=gpus[i % len(gpus)] if gpus else None,
            pane=i % slots,
        )
        for i, o in enumerate(override_sets)
    ]


def panes(runs: Sequence[Run]) -> list[list[Run]]:
    """The runs grouped by pane, each pane's runs in the order they will run."""
    grouped: dict[int, list[Run]] = {}
    for run in runs:
        grouped.setdefault(run.pane, []).append(run)
    return [grouped[p] for p in sorted(grouped)]


# --------------------------------------------------------------------------------------------
# Validation: run each command once with --print_config


def _child_env(gpu: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def validate_runs(cmd: str, runs: Sequence[Run], extra: Sequence[str] = (), cwd: str | None = None) -> list[Any]:
    """Runs every run's command with ``--print_config`` (concurrently) before anything is launched.

    Returns:
        The parsed YAML each command printed (the resolved configs), in run order.

    Raises:
        SweepError: naming the first failing run and relaying its error message (e.g. an unknown field).
    """

    def check(run: Run) -> tuple[int, str, str]:
        line = run.shell_command(cmd, extra) + " --print_config"
        try:
            proc = subprocess.run(
                ["bash", "-c", line],
                cwd=cwd,
                env=_child_env(run.gpu),
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
        message = (_last_line(err) or _last_line(out) or f"exit status {rc}").removeprefix("error: ")
        what = " ".join(run.args(extra)[:-1]) or "(no overrides)"
        more = f" (and {len(failed) - 1} more runs failed)" if len(failed) > 1 else ""
        hint = "" if rc == 2 else f" (exit {rc}; a command without --print_config needs --skip-validation)"
        raise SweepError(f"run {run.index} ({what}) rejected before launch: {message}{hint}{more}")
    configs = []
    for out in (out for _, out, _ in results):
        try:
            configs.append(yaml.safe_load(out))
        except yaml.YAMLError:
            configs.append(None)
    return configs


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


# --------------------------------------------------------------------------------------------
# The sweep record: sweep.json, pane scripts, status files


def record_dir(logdir: str | os.PathLike[str], prefix: str) -> Path:
    """Where the launcher keeps the record of sweep ``prefix`` whose runs log to ``logdir``."""
    return Path(logdir) / RECORD_DIRNAME / prefix


def fallback_record_dir(prefix: str) -> Path:
    """The record directory used when the runs' log directory is unknown (``--skip-validation``)."""
    return Path(tempfile.gettempdir()) / "iluvattnshun-sweeps" / prefix


def status_path(rdir: Path, index: int) -> Path:
    """The file that receives run ``index``'s exit status when it ends."""
    return rdir / f"run_{index}.status"


def read_record(rdir: Path) -> dict[str, Any] | None:
    """The ``sweep.json`` in ``rdir``, or None when there is none (or it is unreadable)."""
    try:
        record = json.loads((rdir / "sweep.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_status(rdir: Path, index: int) -> int | None:
    """Run ``index``'s exit status, or None while it has not ended."""
    try:
        return int(status_path(rdir, index).read_text().strip())
    except (OSError, ValueError):
        return None


def wait_for_runs(rdir: Path, timeout: float | None = None, poll: float = 0.5) -> dict[int, int]:
    """Blocks until every run of the sweep recorded in ``rdir`` has an exit status.

    Returns:
        ``{run index: exit status}``.

    Raises:
        SweepError: without a record, or when ``timeout`` seconds pass first (naming the unfinished runs).
    """
    record = read_record(rdir)
    if record is None:
        raise SweepError(f"no sweep record in {rdir}")
    indices = [int(r["index"]) for r in record["runs"]]
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        statuses = {i: read_status(rdir, i) for i in indices}
        pending = [i for i, s in statuses.items() if s is None]
        if not pending:
            return {i: s for i, s in statuses.items() if s is not None}
        if deadline is not None and time.monotonic() > deadline:
            raise SweepError(f"timed out after {timeout:g} s; runs still going: {', '.join(map(str, pending))}")
        time.sleep(poll)


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # open(..., "x") rather than mkstemp: the file gets the usual umask permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _forwarded_env() -> dict[str, str]:
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if (k in FORWARDED_ENV or k.startswith(FORWARDED_ENV_PREFIXES)) and _ENV_NAME_RE.match(k) and "\n" not in v
    }


def pane_script(
    pane_runs: Sequence[Run], cmd: str, extra: Sequence[str], cwd: str, rdir: Path, session: str, total: int
) -> str:
    """The bash script one pane runs: its runs one after another, each recording its exit status."""
    gpu = pane_runs[0].gpu
    lines = [
        "#!/usr/bin/env bash",
        f"# Written by iluvattnshun.sweep: pane {pane_runs[0].pane} of tmux session {session!r}"
        f" ({'CPU' if gpu is None else 'GPU ' + gpu}). Re-run with: bash {shlex.quote(str(rdir))}/"
        f"pane_{pane_runs[0].pane}.sh",
        f"cd {shlex.quote(cwd)} || exit 1",
    ]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in _forwarded_env().items()]
    if gpu is None:
        # Runs without a GPU assignment see the launcher's CUDA_VISIBLE_DEVICES, not the tmux server's.
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        lines.append(
            "unset CUDA_VISIBLE_DEVICES" if visible is None else f"export CUDA_VISIBLE_DEVICES={shlex.quote(visible)}"
        )
    # With a trap (instead of the default), Ctrl-C stops only the current run: the next one starts and
    # the pane stays open.
    lines.append("trap : INT")
    for run in pane_runs:
        status = shlex.quote(str(status_path(rdir, run.index)))
        line = run.shell_command(cmd, extra)
        lines += [
            "",
            f"echo {shlex.quote(f'== [{session}] run {run.index + 1}/{total}: {run.run_name}')}",
            f"echo {shlex.quote('$ ' + line)}",
            line,
            f"echo $? > {status}.tmp && mv -f {status}.tmp {status}",
        ]
    lines += [
        "",
        f"echo {shlex.quote(f'== [{session}] pane done; exit statuses are in {rdir}')}",
        # Keep the pane open (with a usable shell in the run's directory) so its output can be read.
        'exec "${SHELL:-bash}"',
        "",
    ]
    return "\n".join(lines)


def write_record(
    rdir: Path,
    runs: Sequence[Run],
    *,
    cmd: str,
    extra: Sequence[str],
    cwd: str,
    session: str,
    prefix: str,
    logdir: Path | None,
) -> list[Path]:
    """Writes ``sweep.json`` and the pane scripts, removing the status files of an earlier sweep.

    Returns:
        The pane scripts, one per pane.
    """
    rdir.mkdir(parents=True, exist_ok=True)
    for old in [*rdir.glob("run_*.status"), *rdir.glob("run_*.status.tmp"), *rdir.glob("pane_*.sh")]:
        old.unlink(missing_ok=True)
    record = {
        "version": 1,
        "session": session,
        "prefix": prefix,
        "launched_at": time.time(),
        "cwd": cwd,
        "command": cmd,
        "extra": list(extra),
        "logdir": None if logdir is None else str(logdir),
        "runs": [
            {
                "index": r.index,
                "run_name": r.run_name,
                "overrides": [list(o) for o in r.overrides],
                "gpu": r.gpu,
                "pane": r.pane,
                "command": r.shell_command(cmd, extra),
            }
            for r in runs
        ],
    }
    _write_text_atomic(rdir / "sweep.json", json.dumps(record, indent=2) + "\n")
    scripts = []
    for pane_runs in panes(runs):
        path = rdir / f"pane_{pane_runs[0].pane}.sh"
        _write_text_atomic(path, pane_script(pane_runs, cmd, extra, cwd, rdir, session, len(runs)))
        scripts.append(path)
    return scripts


# --------------------------------------------------------------------------------------------
# tmux


def tmux_path() -> str:
    """The tmux executable.

    Raises:
        SweepError: when tmux is not installed, saying how to install it.
    """
    path = shutil.which("tmux")
    if path is None:
        raise SweepError(
            "tmux is not installed (or not on PATH): install it with `sudo apt-get install tmux` (Debian/Ubuntu)"
            " or `brew install tmux` (macOS)"
        )
    return path


def _tmux(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [tmux_path(), *args], env=_child_env(None), stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise SweepError(f"tmux {args[0]} failed: {_last_line(proc.stderr) or f'exit status {proc.returncode}'}")
    return proc


def session_exists(session: str) -> bool:
    """Whether a tmux session is named exactly ``session`` (false when no tmux server runs)."""
    return _tmux("has-session", "-t", f"={session}", check=False).returncode == 0


def kill_session(session: str) -> None:
    """Kills tmux session ``session`` (and the runs in it) if it exists."""
    if session_exists(session):
        _tmux("kill-session", "-t", f"={session}")


def _pane_title(pane_runs: Sequence[Run]) -> str:
    names = ", ".join(r.run_name for r in pane_runs)
    where = "cpu" if pane_runs[0].gpu is None else f"gpu {pane_runs[0].gpu}"
    params = " ".join(f"{k}={v}" for k, v in pane_runs[0].params().items()) if len(pane_runs) == 1 else ""
    return f"{names} [{where}] {params}".strip()


def create_session(session: str, scripts: Sequence[Path], titles: Sequence[str], cwd: str, per_window: int) -> int:
    """Creates the detached session: one pane per script, tiled, a new window when a window is full.

    Returns:
        The number of windows used.
    """
    cols, rows = WINDOW_SIZE
    commands = [f"bash {shlex.quote(str(s))}" for s in scripts]
    window = _tmux(
        "new-session", "-d", "-s", session, "-x", str(cols), "-y", str(rows), "-c", cwd,
        "-P", "-F", "#{window_id} #{pane_id}", commands[0],
    ).stdout.split()  # fmt: skip
    pane_ids = [window[1]]
    windows = [window[0]]
    in_window = 1
    for command in commands[1:]:
        proc = None
        if in_window < per_window:
            proc = _tmux("split-window", "-t", windows[-1], "-c", cwd, "-P", "-F", "#{pane_id}", command, check=False)
            if proc.returncode != 0 and not re.search(r"no space|too small", proc.stderr):
                raise SweepError(f"tmux split-window failed: {_last_line(proc.stderr)}")
        if proc is not None and proc.returncode == 0:
            pane_ids.append(proc.stdout.strip())
            in_window += 1
        else:
            window = _tmux(
                "new-window", "-d", "-t", f"={session}:", "-c", cwd, "-P", "-F", "#{window_id} #{pane_id}", command
            ).stdout.split()
            windows.append(window[0])
            pane_ids.append(window[1])
            in_window = 1
        _tmux("select-layout", "-t", windows[-1], "tiled")
    for w in windows:
        _tmux("set-option", "-w", "-t", w, "pane-border-status", "top")
        _tmux("set-option", "-w", "-t", w, "pane-border-format", " #{pane_index}: #{pane_title} ")
    for pane_id, title in zip(pane_ids, titles):
        _tmux("select-pane", "-t", pane_id, "-T", title)
    return len(windows)


def launch(
    cmd: str,
    runs: Sequence[Run],
    *,
    session: str,
    prefix: str,
    extra: Sequence[str] = (),
    status_dir: str | os.PathLike[str] | None = None,
    replace: bool = False,
    validate: bool = True,
    panes_per_window: int = PANES_PER_WINDOW,
    cwd: str | None = None,
) -> Path:
    """Validates the runs, writes the sweep record and starts the tmux session.

    Args:
        cmd: the command line every run starts with, e.g. ``python -m examples.var_rename``.
        runs: from :func:`plan_runs`.
        session: tmux session name.
        prefix: run-name prefix (names the record directory).
        extra: arguments added to every run before its overrides.
        status_dir: where to keep the record; default ``<tensorboard_logdir>/.sweeps/<prefix>``.
        replace: kill an existing session of the same name instead of failing.
        validate: run every command with ``--print_config`` first.
        panes_per_window: panes per tmux window.
        cwd: working directory of the runs (default: the current one).

    Returns:
        The record directory (holding ``sweep.json``, the pane scripts and the status files).

    Raises:
        SweepError: before anything is started, for any problem with the input or the environment.
    """
    cwd = os.path.abspath(cwd or os.getcwd())
    if not runs:
        raise SweepError("empty sweep: no runs")
    if not _NAME_RE.match(session):
        raise SweepError(f"--session {session!r}: use letters, digits, '_' and '-' only (tmux reserves '.' and ':')")
    if panes_per_window < 1:
        raise SweepError(f"--panes-per-window {panes_per_window}: must be >= 1")
    tmux_path()
    if session_exists(session) and not replace:
        raise SweepError(
            f"tmux session {session!r} already exists; pass --replace to kill it, or pick another --session"
        )
    configs = validate_runs(cmd, runs, extra, cwd) if validate else []
    logdir = config_logdir(configs, cwd)
    if status_dir is not None:
        rdir = Path(status_dir).resolve()
    elif logdir is not None:
        rdir = record_dir(logdir, prefix)
    else:
        rdir = fallback_record_dir(prefix)
    previous = read_record(rdir)
    if previous is not None and previous.get("session") != session and session_exists(str(previous.get("session"))):
        raise SweepError(
            f"prefix {prefix!r} is in use by the running tmux session {previous.get('session')!r} ({rdir});"
            " pick another --prefix, or kill that session"
        )
    if replace:
        kill_session(session)
    scripts = write_record(rdir, runs, cmd=cmd, extra=extra, cwd=cwd, session=session, prefix=prefix, logdir=logdir)
    try:
        create_session(session, scripts, [_pane_title(p) for p in panes(runs)], cwd, panes_per_window)
    except BaseException:
        kill_session(session)
        raise
    return rdir


def attach(session: str) -> None:
    """Attaches this terminal to ``session``; inside tmux, switches the current client to it instead."""
    if os.environ.get("TMUX"):
        # With $TMUX kept (unlike _tmux), tmux knows which client to switch.
        subprocess.run([tmux_path(), "switch-client", "-t", f"={session}"], check=False)
        return
    os.execvp(tmux_path(), ["tmux", "attach-session", "-t", f"={session}"])


# --------------------------------------------------------------------------------------------
# Summary


@dataclass
class RunResult:
    """What a run left behind: its config, its validation scalars and its state."""

    index: int
    """Index of the run in the sweep (the ``i`` of ``<prefix>_<i>``)."""
    run_name: str
    """``<prefix>_<i>``."""
    state: str
    """``finished``, ``crashed (exit N)``, ``no events``, ``running``, ``pending`` or ``unknown`` (no record)."""
    run_dir: Path | None = None
    """The run directory, None when the run has not created one."""
    config: dict[str, Any] = field(default_factory=dict)
    """The run's config (from its YAML; from the sweep's overrides when there is no YAML)."""
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """Validation scalars: tag -> ``[(step, value)]`` sorted by step."""

    def final(self, tag: str) -> float | None:
        """The last logged value of ``tag``."""
        points = self.scalars.get(tag)
        return points[-1][1] if points else None

    def best(self, tag: str) -> float | None:
        """The best logged value of ``tag`` (lowest for losses, highest otherwise); NaNs are ignored."""
        values = [v for _, v in self.scalars.get(tag, []) if not math.isnan(v)]
        if not values:
            return None
        return min(values) if lower_is_better(tag) else max(values)

    @property
    def step(self) -> int | None:
        """The last step with a validation scalar."""
        steps = [points[-1][0] for points in self.scalars.values() if points]
        return max(steps) if steps else None


def lower_is_better(tag: str) -> bool:
    """Whether smaller values of a metric are better (losses, perplexities, errors; not accuracies)."""
    name = tag.split("/", 1)[-1].lower()
    return re.search(r"loss|perplexity|ppl|error", name) is not None and "acc" not in name


def _natural_key(text: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t]


def read_scalars(run_dir: Path, mode: str = "val") -> dict[str, list[tuple[int, float]]]:
    """The scalars under ``<mode>/`` in a run directory's TensorBoard events (duplicate steps: last wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    series: dict[str, dict[int, float]] = {}
    for tag in tags.get("scalars", []):
        if tag.startswith(mode + "/"):
            for event in acc.Scalars(tag):
                series.setdefault(tag, {})[int(event.step)] = float(event.value)
    # Newer writers may log scalars as rank-0 tensors rather than simple values.
    for tag in tags.get("tensors", []):
        if tag.startswith(mode + "/") and tag not in series:
            from tensorboard.util import tensor_util

            for event in acc.Tensors(tag):
                value = tensor_util.make_ndarray(event.tensor_proto)
                if value.size == 1 and value.dtype.kind in "fiu":
                    series.setdefault(tag, {})[int(event.step)] = float(value.reshape(()))
    return {tag: sorted(points.items()) for tag, points in series.items()}


def _read_config(run_dir: Path) -> dict[str, Any]:
    candidates = [run_dir / f"{run_dir.name}.yaml", *sorted(run_dir.glob("run_*.yaml"))]
    for path in candidates:
        if path.is_file():
            try:
                config = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(config, dict):
                return _flatten(config)
    return {}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _started_at(run_dir: Path) -> float:
    config = run_dir / f"{run_dir.name}.yaml"
    return (config if config.exists() else run_dir).stat().st_mtime


def load_sweep(
    logdir: str | os.PathLike[str], prefix: str, status_dir: str | os.PathLike[str] | None = None, mode: str = "val"
) -> tuple[list[RunResult], int]:
    """Collects the runs named ``<prefix>_<i>`` under ``logdir`` with their configs, scalars and states.

    With a sweep record (``<logdir>/.sweeps/<prefix>``, or ``status_dir``), every run of the sweep is
    listed, also those that have no run directory yet; run directories that predate the sweep's launch
    (from an earlier sweep with the same prefix) are left out. For each run name the newest run
    directory is used.

    Returns:
        The runs in index order, and how many older run directories were left out.
    """
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise SweepError(f"log directory {str(logdir)!r} does not exist")
    rdir = Path(status_dir) if status_dir is not None else record_dir(logdir, prefix)
    record = read_record(rdir)
    launched_at = float(record["launched_at"]) if record is not None else None
    recorded = {int(r["index"]): r for r in record["runs"]} if record is not None else {}

    pattern = re.compile(rf"^run_(\d+)_({re.escape(prefix)}_(\d+))$")
    newest: dict[int, tuple[int, Path]] = {}
    older = 0
    for path in logdir.iterdir():
        m = pattern.match(path.name)
        if not m or not path.is_dir():
            continue
        n, index = int(m.group(1)), int(m.group(3))
        # Two seconds of slack: the record is written just before tmux starts the runs.
        if launched_at is not None and _started_at(path) < launched_at - 2.0:
            older += 1
            continue
        if index in newest:
            older += 1
            if newest[index][0] > n:
                continue
        newest[index] = (n, path)

    results = []
    for index in sorted(set(newest) | set(recorded)):
        run_dir = newest[index][1] if index in newest else None
        config = _read_config(run_dir) if run_dir is not None else {}
        if not config and index in recorded:
            config = {k: True if v is None else yaml.safe_load(v) for k, v in recorded[index]["overrides"]}
        scalars = read_scalars(run_dir, mode) if run_dir is not None else {}
        status = read_status(rdir, index) if index in recorded else None
        if index not in recorded:
            state = "unknown" if scalars else "no events"
        elif status is not None and status != 0:
            state = f"crashed (exit {status})"
        elif status == 0:
            state = "finished" if scalars else "no events"
        else:
            state = "running" if run_dir is not None else "pending"
        name = recorded[index]["run_name"] if index in recorded else f"{prefix}_{index}"
        results.append(
            RunResult(index=index, run_name=name, state=state, run_dir=run_dir, config=config, scalars=scalars)
        )
    return results, older


def swept_params(results: Sequence[RunResult]) -> list[str]:
    """Config keys whose values differ between the runs that have them (``run_name`` excluded), in config order.

    Runs without a config YAML only know their overrides, so a key they lack does not count as a difference.
    """
    keys: dict[str, None] = {}
    for r in results:
        keys.update(dict.fromkeys(r.config))
    keys.pop("run_name", None)
    return [k for k in keys if len({repr(r.config[k]) for r in results if k in r.config}) > 1]


def metric_tags(results: Sequence[RunResult]) -> list[str]:
    """Every scalar tag of the runs: loss and accuracy first, then the rest in natural order."""
    tags = {t for r in results for t in r.scalars}

    def key(tag: str) -> tuple[int, list[Any]]:
        leaf = tag.split("/", 1)[-1]
        return ({"loss": 0, "accuracy": 1}.get(leaf, 2), _natural_key(tag))

    return sorted(tags, key=key)


def resolve_tag(name: str, tags: Sequence[str], mode: str = "val") -> str:
    """A metric name as given on the command line (``val/accuracy`` or ``accuracy``) -> a tag."""
    for candidate in (name, f"{mode}/{name}"):
        if candidate in tags:
            return candidate
    raise SweepError(f"--sort {name!r}: no run logged this metric; available: {', '.join(tags) or 'none'}")


def sort_results(results: Sequence[RunResult], tag: str | None, by: str = "best") -> list[RunResult]:
    """Runs ordered best first by ``tag`` (its best or final value); runs without it go last."""
    if tag is None:
        return list(results)
    sign = 1.0 if lower_is_better(tag) else -1.0

    def key(r: RunResult) -> tuple[bool, float, int]:
        value = r.best(tag) if by == "best" else r.final(tag)
        missing = value is None or math.isnan(value)
        return (missing, 0.0 if missing or value is None else sign * value, r.index)

    return sorted(results, key=key)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"  # as on the command line and in the YAML
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_rows(
    results: Sequence[RunResult], params: Sequence[str], tags: Sequence[str]
) -> tuple[list[str], list[list[str]]]:
    """The console table: run, swept params, state, last step, then ``final (best)`` per metric."""
    headers = ["run", *params, "state", "step", *(t.split("/", 1)[-1] for t in tags)]
    rows = []
    for r in results:
        cells = [r.run_name, *(_fmt(r.config.get(p)) for p in params), r.state, _fmt(r.step)]
        for t in tags:
            final, best = r.final(t), r.best(t)
            cells.append("-" if final is None else f"{_fmt(final)} ({_fmt(best)})")
        rows.append(cells)
    return headers, rows


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligns a table in columns for the console."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def csv_text(results: Sequence[RunResult], params: Sequence[str], tags: Sequence[str]) -> str:
    """The summary as CSV: run, run_dir, state, step, swept params, then ``final <tag>`` and ``best <tag>``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["run", "run_dir", "state", "step", *params, *(f"{k} {t}" for t in tags for k in ("final", "best"))]
    )
    for r in results:
        metrics = [v for t in tags for v in (r.final(t), r.best(t))]
        writer.writerow(
            [
                r.run_name,
                "" if r.run_dir is None else str(r.run_dir),
                r.state,
                "" if r.step is None else r.step,
                *(
                    (
                        ""
                        if r.config.get(p) is None
                        else _fmt(r.config[p]) if isinstance(r.config[p], bool) else r.config[p]
                    )
                    for p in params
                ),
                *("" if v is None else repr(v) for v in metrics),
            ]
        )
    return out.getvalue()


def _label(r: RunResult, params: Sequence[str]) -> str:
    settings = ", ".join(f"{p}={_fmt(r.config.get(p))}" for p in params)
    return f"{r.run_name} ({settings})" if settings else r.run_name


def figures(results: Sequence[RunResult], params: Sequence[str], tag: str | None, by: str = "best") -> list[Any]:
    """Plotly figures of a sweep: ``tag`` against each swept parameter (one line per setting of the
    other parameters), per-depth accuracy (one line per run) and ``tag`` over training steps."""
    import plotly.graph_objects as go

    figs: list[Any] = []
    if tag is not None:
        for p in params:
            others = [q for q in params if q != p]
            groups: dict[str, list[tuple[Any, float, str]]] = {}
            for r in results:
                value = r.best(tag) if by == "best" else r.final(tag)
                if value is None or p not in r.config:
                    continue
                group = ", ".join(f"{q}={_fmt(r.config.get(q))}" for q in others) or tag
                groups.setdefault(group, []).append((r.config[p], value, r.run_name))
            if not groups:
                continue
            numeric = all(isinstance(x, (int, float)) for pts in groups.values() for x, _, _ in pts)
            fig = go.Figure()
            for group, pts in sorted(groups.items(), key=lambda kv: _natural_key(kv[0])):
                pts.sort(key=lambda t: t[0] if numeric else _natural_key(str(t[0])))
                fig.add_trace(
                    go.Scatter(
                        x=[x if numeric else str(x) for x, _, _ in pts],
                        y=[y for _, y, _ in pts],
                        text=[n for _, _, n in pts],
                        mode="lines+markers",
                        name=group,
                        hovertemplate=f"%{{text}}<br>{html.escape(p)}=%{{x}}<br>%{{y:.4g}}<extra></extra>",
                    )
                )
            fig.update_layout(
                title={"text": html.escape(f"{by} {tag} vs {p}"), "x": 0.5},
                xaxis={
                    "title": {"text": html.escape(p)},
                    "type": "linear" if numeric else "category",
                    # Ticks at the swept values only: no "1.5 layers" between them.
                    "tickvals": sorted({x for pts in groups.values() for x, _, _ in pts}) if numeric else None,
                },
                yaxis={"title": {"text": html.escape(f"{by} {tag}")}},
                template="plotly_white",
                width=800,
                height=450,
            )
            figs.append(fig)

    depth_tags: dict[str, dict[str, dict[int | str, float]]] = {}
    for r in results:
        for t in r.scalars:
            m = re.match(r"^(.*depth.*)/(\d+)$", t)
            final = r.final(t)
            if m and final is not None and 0.0 <= final <= 1.0:
                depth_tags.setdefault(m.group(1), {}).setdefault(_label(r, params), {})[int(m.group(2))] = final
    if depth_tags:
        from iluvattnshun.viz import accuracy_per_depth_fig

        for base, runs in sorted(depth_tags.items()):
            figs.append(accuracy_per_depth_fig(runs, title=f"final {base}"))

    if tag is not None:
        fig = go.Figure()
        for r in results:
            if tag in r.scalars:
                curve = r.scalars[tag]
                fig.add_trace(
                    go.Scatter(
                        x=[s for s, _ in curve], y=[v for _, v in curve], mode="lines+markers", name=_label(r, params)
                    )
                )
        fig.update_layout(
            title={"text": html.escape(f"{tag} during training"), "x": 0.5},
            xaxis={"title": {"text": "step"}},
            yaxis={"title": {"text": html.escape(tag)}},
            template="plotly_white",
            width=800,
            height=450,
        )
        figs.append(fig)
    return figs


def html_page(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], figs: Sequence[Any]) -> str:
    """One self-contained page (plotly.js embedded, opens offline): the summary table and the figures."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;white-space:nowrap}th{background:#f4f4f4}</style>",
        f"</head><body><h2>{html.escape(title)}</h2>",
        "<p>metrics: final (best)</p>",
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
    ]
    for i, fig in enumerate(figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def summarize(
    logdir: str | os.PathLike[str],
    prefix: str,
    *,
    sort: str | None = None,
    by: str = "best",
    csv_path: str | os.PathLike[str] | None = None,
    html_path: str | os.PathLike[str] | None = None,
    status_dir: str | os.PathLike[str] | None = None,
) -> str:
    """Summarizes sweep ``prefix`` under ``logdir``: returns the console table, optionally writes CSV/HTML.

    Args:
        logdir: the task's log directory (``logs/<task>``).
        prefix: the sweep's run-name prefix.
        sort: metric to sort by (``val/accuracy`` or ``accuracy``); default accuracy, else loss.
        by: sort by each run's ``best`` or ``final`` value.
        csv_path: where to write the CSV.
        html_path: where to write the plotly HTML page.
        status_dir: the sweep record directory, if not ``<logdir>/.sweeps/<prefix>``.
    """
    if by not in ("best", "final"):
        raise SweepError(f"--by {by!r}: expected 'best' or 'final'")
    results, older = load_sweep(logdir, prefix, status_dir)
    if not results:
        raise SweepError(f"no runs named run_<N>_{prefix}_<i> in {str(logdir)!r} and no sweep record for {prefix!r}")
    tags = metric_tags(results)
    if sort is not None:
        tag: str | None = resolve_tag(sort, tags)
    else:
        tag = next((t for t in ("val/accuracy", "val/loss") if t in tags), tags[0] if tags else None)
    params = swept_params(results)
    ordered = sort_results(results, tag, by)
    headers, rows = table_rows(ordered, params, tags)
    if csv_path is not None:
        _write_text_atomic(Path(csv_path), csv_text(ordered, params, tags))
    if html_path is not None:
        title = f"sweep {prefix} ({logdir})"
        _write_text_atomic(Path(html_path), html_page(title, headers, rows, figures(ordered, params, tag, by)))
    states: dict[str, int] = {}
    for r in results:
        states[r.state.split(" ")[0]] = states.get(r.state.split(" ")[0], 0) + 1
    lines = [
        f"sweep {prefix!r} in {logdir}: {len(results)} runs ("
        + ", ".join(f"{n} {s}" for s, n in states.items())
        + ")"
        + ("" if tag is None else f", sorted by {by} {tag}")
        + "; metrics are final (best)",
        format_table(headers, rows),
    ]
    if older:
        lines.append(f"({older} older run directories with the same names were left out)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m iluvattnshun.sweep",
        description="Launch a hyperparameter grid in tmux (one pane per run) and summarize its results.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "launch",
        help="launch a grid in a detached tmux session (the default subcommand)",
        description="Launch a grid in a detached tmux session, one pane per run (or per --max-parallel slot).",
        epilog="Arguments that start with '-' need the '=' form: --extra='--preset=quick --max_steps=100'.",
    )
    p.add_argument("--cmd", required=True, help="command every run starts with, e.g. 'python -m examples.var_rename'")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a swept field (repeatable)")
    p.add_argument("--overrides-file", help="one override set per line ('--num_layers=2 --lr=1e-3'), x the grid")
    p.add_argument("--gpus", help="GPU ids, e.g. 0,1,2,3; 'none' for CPU (default: all visible)")
    p.add_argument("--session", default=DEFAULT_SESSION, help=f"tmux session name (default {DEFAULT_SESSION!r})")
    p.add_argument("--prefix", help="run-name prefix: runs are <prefix>_<i> (default: the session name)")
    p.add_argument("--max-parallel", type=int, help="concurrent runs per GPU (per machine on CPU); others queue")
    p.add_argument("--extra", default="", help="arguments added to every run before its overrides")
    p.add_argument("--status-dir", help="where to keep the sweep record (default <logdir>/.sweeps/<prefix>)")
    p.add_argument("--panes-per-window", type=int, default=PANES_PER_WINDOW, help="panes per tmux window")
    p.add_argument("--replace", action="store_true", help="kill an existing session of the same name first")
    p.add_argument("--attach", action="store_true", help="attach to the session after launching")
    p.add_argument("--dry-run", action="store_true", help="print the pane commands and create nothing")
    p.add_argument("--skip-validation", action="store_true", help="do not check the runs with --print_config first")

    s = sub.add_parser("summarize", help="table / CSV / HTML of a sweep's results")
    s.add_argument("logdir", help="the task's log directory, e.g. logs/var_rename")
    s.add_argument(
        "--prefix", default=DEFAULT_SESSION, help=f"the sweep's run-name prefix (default {DEFAULT_SESSION!r})"
    )
    s.add_argument("--sort", help="metric to sort by, e.g. val/accuracy (default: accuracy, else loss)")
    s.add_argument("--by", choices=("best", "final"), default="best", help="sort by best or final value")
    s.add_argument("--csv", help="write the table as CSV here")
    s.add_argument("--html", help="write a plotly HTML page here")
    s.add_argument("--status-dir", help="the sweep record directory, if not <logdir>/.sweeps/<prefix>")

    w = sub.add_parser("wait", help="block until every run of a sweep has ended")
    w.add_argument("logdir", help="the task's log directory, e.g. logs/var_rename")
    w.add_argument(
        "--prefix", default=DEFAULT_SESSION, help=f"the sweep's run-name prefix (default {DEFAULT_SESSION!r})"
    )
    w.add_argument("--timeout", type=float, help="give up after this many seconds")
    w.add_argument("--status-dir", help="the sweep record directory, if not <logdir>/.sweeps/<prefix>")
    return parser


def _launch_main(args: argparse.Namespace) -> int:
    prefix = args.prefix or args.session
    if not _NAME_RE.match(args.session):
        raise SweepError(f"--session {args.session!r}: use letters, digits, '_' and '-' only")
    try:
        extra = shlex.split(args.extra)
    except ValueError as e:
        raise SweepError(f"--extra {args.extra!r}: {e}") from None
    sets = expand(parse_grid(args.grid), read_overrides_file(args.overrides_file) if args.overrides_file else ())
    gpus = parse_gpus(args.gpus)
    runs = plan_runs(sets, prefix, gpus, args.max_parallel)
    n_panes = len(panes(runs))
    where = f"GPUs {','.join(gpus)}" if gpus else "CPU"
    if args.dry_run:
        if not args.skip_validation:
            validate_runs(args.cmd, runs, extra)
        print(f"# session {args.session!r}: {len(runs)} runs in {n_panes} panes on {where}")
        for run in runs:
            device = "cpu" if run.gpu is None else f"gpu {run.gpu}"
            print(f"{run.shell_command(args.cmd, extra)}  # pane {run.pane}, {device}")
        return 0
    rdir = launch(
        args.cmd,
        runs,
        session=args.session,
        prefix=prefix,
        extra=extra,
        status_dir=args.status_dir,
        replace=args.replace,
        validate=not args.skip_validation,
        panes_per_window=args.panes_per_window,
    )
    record = read_record(rdir) or {}
    logdir = record.get("logdir") or "<logdir>"
    status = "" if args.status_dir is None and record.get("logdir") else f" --status-dir {shlex.quote(str(rdir))}"
    print(f"launched {len(runs)} runs in tmux session {args.session!r} ({n_panes} panes on {where})")
    print(f"  attach:    tmux attach -t {args.session}")
    print(f"  record:    {rdir}")
    print(f"  wait:      python -m iluvattnshun.sweep wait {shlex.quote(logdir)} --prefix {prefix}{status}")
    print(f"  summarize: python -m iluvattnshun.sweep summarize {shlex.quote(logdir)} --prefix {prefix}{status}")
    sys.stdout.flush()
    if args.attach:
        attach(args.session)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with a one-line message on bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("launch", "summarize", "wait", "-h", "--help"):
        argv.insert(0, "launch")
    args = _parser().parse_args(argv)
    try:
        if args.command == "launch":
            return _launch_main(args)
        if args.command == "summarize":
            print(
                summarize(
                    args.logdir,
                    args.prefix,
                    sort=args.sort,
                    by=args.by,
                    csv_path=args.csv,
                    html_path=args.html,
                    status_dir=args.status_dir,
                )
            )
            if args.csv:
                print(f"wrote {args.csv}")
            if args.html:
                print(f"wrote {args.html}")
            return 0
        rdir = Path(args.status_dir) if args.status_dir else record_dir(args.logdir, args.prefix)
        statuses = wait_for_runs(rdir, args.timeout)
        failed = [i for i, s in statuses.items() if s != 0]
        print(f"{len(statuses)} runs ended" + (f"; failed: {', '.join(map(str, failed))}" if failed else ", all ok"))
        return 1 if failed else 0
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
