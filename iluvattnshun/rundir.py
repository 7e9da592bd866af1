"""Run directories, ``<logdir>/run_<N>_<name>/``: naming, allocation, lookup, locking and the names of their files.

A run directory holds the TensorBoard events, ``run_<N>_<name>.yaml`` (the full config), ``run_<N>_<name>.py``
(a snapshot of the script that ran), ``machine.json`` (where each start of the run trained) and ``ckpt_<step>.pt``
checkpoints (unless ``save_model_path`` puts those elsewhere). ``N`` is allocated atomically, so runs started at the
same moment get distinct directories.
"""

import contextlib
import inspect
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Mapping

from iluvattnshun.files import LockHeld, file_lock

RUN_PATTERN = re.compile(r"^run_(\d+)(?:_(.*))?$")
"""``run_<N>`` or ``run_<N>_<name>``."""

CKPT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")
"""Checkpoint file names: ``ckpt_<step>.pt``."""

LOCK_FILE = ".lock"
"""Held (``flock``) by the process training in the run directory."""

MACHINE_FILE = "machine.json"
"""Where the run trained: one entry per start (``speed.machine`` and the step it started from), oldest first."""

OWNER_FILE = ".run"
"""In a checkpoint directory other than the run directory (``save_model_path``): the run directory it belongs to."""


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint taken after ``step`` optimizer steps."""
    return f"ckpt_{step:08d}.pt"


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Checkpoints in ``directory`` sorted by step (oldest first); temporary files are ignored."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_PATTERN.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def checkpoint_dir_owner(directory: str | os.PathLike[str]) -> str | None:
    """The run directory (absolute path) that a checkpoint directory was claimed by, or None when unclaimed."""
    try:
        with open(Path(directory) / OWNER_FILE, "rb") as f:
            text = f.read(4096).decode("utf-8", errors="replace").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return text or None


def check_checkpoint_dir_unused(directory: str | os.PathLike[str]) -> None:
    """Refuse a checkpoint directory (``save_model_path``) for a new run when it already holds another run's.

    Raises:
        ValueError: naming the run that owns it, when it is claimed or holds checkpoints.
    """
    owner = checkpoint_dir_owner(directory)
    if owner or list_checkpoints(directory):
        raise ValueError(
            f"save_model_path: {os.fspath(directory)!r} holds the checkpoints of "
            f"{'the run ' + owner if owner else 'another run'}; a checkpoint directory belongs to one run: choose "
            "another directory, or --resume that run"
        )


def claim_checkpoint_dir(
    directory: str | os.PathLike[str], run_path: str | os.PathLike[str], remove_run_if_refused: bool = False
) -> None:
    """Record that ``directory`` holds the checkpoints of the run in ``run_path`` (once: the first claim wins).

    ``remove_run_if_refused``: a fresh run directory is removed again when the claim is refused (a run started at
    the same moment claimed the directory first), so that a refused run leaves nothing behind.

    Raises:
        ValueError, OSError: naming the owner when another run has claimed the directory, or the directory's error.
    """
    try:
        _claim(Path(directory), os.path.abspath(run_path))
    except (ValueError, OSError):
        if remove_run_if_refused:
            shutil.rmtree(run_path, ignore_errors=True)
        raise


def _claim(d: Path, mine: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(d / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        owner = checkpoint_dir_owner(d)
        if owner is not None and owner != mine:
            raise ValueError(
                f"save_model_path: {str(d)!r} holds the checkpoints of the run {owner}; a checkpoint directory "
                "belongs to one run: choose another directory, or --resume that run"
            ) from None
        return
    with os.fdopen(fd, "w") as f:
        f.write(mine + "\n")


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """The step in a checkpoint's file name, or None for another name."""
    m = CKPT_PATTERN.match(Path(path).name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class RunDir:
    """One run directory and the names of the files in it."""

    path: Path

    @property
    def base(self) -> str:
        """``run_<N>_<name>``: the directory's name, which also names its config and script files."""
        return self.path.name

    @property
    def number(self) -> int:
        """``N``."""
        m = RUN_PATTERN.match(self.base)
        return int(m.group(1)) if m else 0

    @property
    def name(self) -> str:
        """The run name (the part after ``run_<N>_``)."""
        m = RUN_PATTERN.match(self.base)
        return (m.group(2) or "") if m else self.base

    @property
    def config_path(self) -> Path:
        """The run's full config as YAML."""
        return self.path / f"{self.base}.yaml"

    @property
    def script_path(self) -> Path:
        """The snapshot of the script that ran."""
        return self.path / f"{self.base}.py"

    def checkpoints(self) -> list[Path]:
        """The checkpoints in the directory, oldest first."""
        return list_checkpoints(self.path)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock for the ``with`` block.

        Raises:
            ValueError: when another process holds it (two processes must never train in one run directory).
        """
        try:
            with file_lock(self.path / LOCK_FILE, wait=False):
                yield
        except LockHeld:
            raise ValueError(f"{self.path} is in use by another process (a run is training in it)") from None


def list_runs(logdir: str | os.PathLike[str]) -> list[RunDir]:
    """The run directories in ``logdir``, by number (oldest first)."""
    root = Path(logdir)
    if not root.is_dir():
        return []
    runs = [RunDir(p) for p in root.iterdir() if RUN_PATTERN.match(p.name) and p.is_dir()]
    return sorted(runs, key=lambda r: (r.number, r.base))


def allocate(logdir: str | os.PathLike[str], name: str | None = None) -> RunDir:
    """Create and return a fresh ``<logdir>/run_<N>_<name>``, N one above the highest existing (no name: the
    date and time, ``run_<N>_<YYYYmmdd_HHMMSS>``).

    ``os.mkdir`` is atomic: of several processes racing for the same directory exactly one succeeds, and the
    others move on to N+1, so concurrent runs never share a directory.
    """
    if name is None:
        name = datetime.now().strftime("%Y%m%d_%H%M%S")
    root = Path(logdir)
    root.mkdir(parents=True, exist_ok=True)
    n = max((r.number for r in list_runs(root)), default=0) + 1
    for _ in range(10_000):
        path = root / (f"run_{n}_{name}" if name else f"run_{n}")
        try:
            path.mkdir()
            return RunDir(path)
        except FileExistsError:
            n += 1
    raise RuntimeError(f"could not allocate a run directory in {str(logdir)!r}")


def matching_runs(logdir: str | os.PathLike[str], run_name: str) -> list[RunDir]:
    """Run directories a user means by ``run_name``, newest first.

    ``run_name`` may be a path to the directory, its basename (``run_3_foo``), the name part (``foo``: every
    ``run_<N>_foo``), or empty (every run in ``logdir``).
    """
    if run_name and os.sep in os.path.normpath(run_name) and Path(run_name).is_dir():
        return [RunDir(Path(os.path.normpath(run_name)))]
    if run_name and (Path(logdir) / run_name).is_dir() and RUN_PATTERN.match(run_name):
        return [RunDir(Path(logdir) / run_name)]
    runs = [r for r in list_runs(logdir) if not run_name or r.name == run_name]
    return runs[::-1]


def run_files(
    run: RunDir, config_yaml: str, classes: list[type], resumed: bool, start: Mapping[str, Any]
) -> dict[str, str]:
    """The files a run records about itself, by name: its config YAML, the source of the task's script
    (``task_source_file``; a resumed run keeps the one of its first start), and ``machine.json`` with ``start`` (this
    start's machine and step) after the earlier starts'."""
    files = {run.config_path.name: config_yaml}
    starts = read_machines(run) if resumed else []
    files[MACHINE_FILE] = json.dumps([*starts, dict(start)], indent=1) + "\n"
    source_file = None if resumed and run.script_path.exists() else task_source_file(classes)
    if source_file is not None:
        with open(source_file, encoding="utf-8") as f:
            files[run.script_path.name] = f.read()
    return files


def read_machines(run: RunDir) -> list[dict[str, Any]]:
    """The run's ``machine.json``: each start's machine, oldest first; empty when it has none (or an unreadable one)."""
    try:
        starts = json.loads((run.path / MACHINE_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [s for s in starts if isinstance(s, dict)] if isinstance(starts, list) else []


def task_source_file(classes: list[type]) -> str | None:
    """The file to snapshot as the run's script: the script run as ``python script.py`` when it defines one of the
    task's classes (``load_run`` then needs it), else the module of the most specific one (the last)."""
    main = sys.modules.get("__main__")
    source_file = getattr(main, "__file__", None) if any(c.__module__ == "__main__" for c in classes) else None
    if source_file is None:
        with contextlib.suppress(TypeError):
            source_file = inspect.getsourcefile(classes[-1])
    return source_file if source_file and os.path.isfile(source_file) else None
