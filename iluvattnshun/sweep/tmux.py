"""The tmux side of a sweep: one detached session, a pane per parallel slot; ``launch`` puts it all together."""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from iluvattnshun.sweep.plan import NAME_RE, Run, SweepError, child_env, config_logdir, last_line, panes, validate_runs
from iluvattnshun.sweep.record import fallback_record_dir, read_record, record_dir, write_record

WINDOW_SIZE = (400, 200)
"""Columns and rows of the detached session's windows: big, so that tmux has room to split."""
PANES_PER_WINDOW = 16
"""Panes per tmux window before the next window is opened."""


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
        [tmux_path(), *args], env=child_env(None), stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise SweepError(f"tmux {args[0]} failed: {last_line(proc.stderr) or f'exit status {proc.returncode}'}")
    return proc


def session_exists(session: str) -> bool:
    """Whether a tmux session is named exactly ``session`` (false when no tmux server runs)."""
    return _tmux("has-session", "-t", f"={session}", check=False).returncode == 0


def kill_session(session: str) -> None:
    """Kills tmux session ``session`` (and the runs in it) if it exists."""
    if session_exists(session):
        _tmux("kill-session", "-t", f"={session}")


def literal(text: str) -> str:
    """``text`` as a tmux format that expands to itself: ``#`` starts a format (``#(cmd)`` runs a shell command)."""
    return text.replace("#", "##")


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
    cwd = literal(cwd)  # tmux expands formats in a start directory too
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
                raise SweepError(f"tmux split-window failed: {last_line(proc.stderr)}")
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
        _tmux("select-pane", "-t", pane_id, "-T", literal(title))  # tmux expands formats in -T: grid values are text
    return len(windows)


def check_panes_per_window(panes_per_window: int) -> None:
    """Raises ``SweepError`` unless a tmux window can hold ``panes_per_window`` panes (at least one)."""
    if panes_per_window < 1:
        raise SweepError(f"--panes-per-window {panes_per_window}: must be >= 1")


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
    if not NAME_RE.match(session):
        raise SweepError(f"--session {session!r}: use letters, digits, '_' and '-' only (tmux reserves '.' and ':')")
    check_panes_per_window(panes_per_window)
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
