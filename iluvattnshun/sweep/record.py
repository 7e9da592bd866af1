"""The record of a sweep in ``<logdir>/.sweeps/<prefix>/``: ``sweep.json``, pane scripts and exit statuses.

A SLURM sweep's record has no pane scripts; its ``sweep.json`` has a ``slurm`` section (options, job ids) and each
run records its current attempt (job id, requeue count) in ``run_<i>.slurm.json``.
"""

import json
import math
import os
import re
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from iluvattnshun.files import atomic_write
from iluvattnshun.sweep.plan import Run, SweepError, panes

RECORD_DIRNAME = ".sweeps"
"""Directory inside the log directory that holds the sweep records (not a ``run_*`` directory)."""
FORWARDED_ENV = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "OMP_NUM_THREADS")
"""Variables re-exported in each pane so that it runs the same Python as the launcher."""
FORWARDED_ENV_PREFIXES = ("CONDA_", "HF_", "TORCH_", "PYTORCH_", "NCCL_", "ATEN_", "MKL_", "ONEDNN_", "DNNL_", "KMP_")
"""Prefixes of further variables re-exported in each pane: the Python environment, and what picks the kernels and
their rounding (``ATEN_CPU_CAPABILITY``, ``MKL_CBWR``, ``ONEDNN_MAX_CPU_ISA``, ...)."""

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
    """The ``sweep.json`` in ``rdir``, or None when there is none.

    Raises:
        SweepError: when it cannot be read, is not JSON, or is not a sweep record (its runs and their integer
            indices, a numeric launch time). It is written atomically: a damaged one is not a sweep in progress.
    """
    path = rdir / "sweep.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SweepError(f"{path}: cannot read the sweep record ({e.strerror})") from None
    except ValueError:
        raise SweepError(f"{path} is not JSON (a damaged sweep record); remove it and relaunch the sweep") from None
    runs = record.get("runs") if isinstance(record, dict) else None
    if (
        not isinstance(runs, list)
        or not all(isinstance(r, dict) and type(r.get("index")) is int for r in runs)
        or not isinstance(record.get("launched_at", 0), (int, float))
    ):
        raise SweepError(f"{path} is not a sweep record (it needs runs with integer indices); relaunch the sweep")
    checked: dict[str, Any] = record
    return checked


def read_status(rdir: Path, index: int) -> int | None:
    """Run ``index``'s exit status, or None while it has not ended."""
    try:
        return int(status_path(rdir, index).read_text().strip())
    except (OSError, ValueError):
        return None


def wait_for_runs(
    rdir: Path,
    timeout: float | None = None,
    poll: float = 0.5,
    on_poll: Callable[[dict[int, int | None]], None] | None = None,
    on_poll_every: float = 2.0,
) -> dict[int, int]:
    """Blocks until every run of the sweep recorded in ``rdir`` has an exit status.

    ``on_poll`` (e.g. ``SweepProgress.render``) sees every run's status (None while it runs) every ``on_poll_every``
    seconds and once at the end.

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
    shown = -math.inf
    while True:
        statuses = {i: read_status(rdir, i) for i in indices}
        pending = [i for i, s in statuses.items() if s is None]
        if on_poll is not None and (not pending or time.monotonic() - shown >= on_poll_every):
            on_poll(statuses)
            shown = time.monotonic()
        if not pending:
            return {i: s for i, s in statuses.items() if s is not None}
        if deadline is not None and time.monotonic() > deadline:
            raise SweepError(f"timed out after {timeout:g} s; runs still going: {', '.join(map(str, pending))}")
        time.sleep(poll)


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
    # The variables above are the launcher's, in every pane: the tmux server's own values of them (from whenever it
    # started) go first, then the launcher's are exported.
    families = "|".join([*FORWARDED_ENV, *(f"{p}*" for p in FORWARDED_ENV_PREFIXES)])
    lines.append(f'for v in $(compgen -e); do case "$v" in {families}) unset "$v" ;; esac; done')
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
    session: str | None,
    prefix: str,
    logdir: Path | None,
    slurm: dict[str, Any] | None = None,
) -> list[Path]:
    """Writes ``sweep.json`` and the pane scripts, removing the status files of an earlier sweep.

    Args:
        session: the tmux session; None for a SLURM sweep.
        slurm: a SLURM sweep's ``slurm`` section (options, job ids); such a sweep has no pane scripts.

    Returns:
        The pane scripts, one per pane (none for a SLURM sweep).
    """
    rdir.mkdir(parents=True, exist_ok=True)
    olds = [*rdir.glob("run_*.status"), *rdir.glob("run_*.status.tmp"), *rdir.glob("pane_*.sh")]
    for old in [*olds, *rdir.glob("run_*.slurm.json")]:
        old.unlink(missing_ok=True)
    record: dict[str, Any] = {
        "version": 1,
        "backend": "tmux" if slurm is None else "slurm",
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
                "threads": r.threads,
                "pane": r.pane,
                "command": r.shell_command(cmd, extra),
            }
            for r in runs
        ],
    }
    if slurm is not None:
        record["slurm"] = slurm
    atomic_write(rdir / "sweep.json", json.dumps(record, indent=2) + "\n")
    if slurm is not None:
        return []
    scripts = []
    for pane_runs in panes(runs):
        path = rdir / f"pane_{pane_runs[0].pane}.sh"
        atomic_write(path, pane_script(pane_runs, cmd, extra, cwd, rdir, str(session), len(runs)))
        scripts.append(path)
    return scripts
