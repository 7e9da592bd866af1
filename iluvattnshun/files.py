"""Writing files safely: atomic replacement, cross-process locks, and probing that a directory can be written before
work starts."""

import contextlib
import os
import random
import re
import secrets
import stat
import time
from pathlib import Path
from typing import IO, Callable, Iterator

Writer = Callable[[IO[bytes]], None]
"""A function that writes a file's content to a binary file object (e.g. ``lambda f: torch.save(state, f)``)."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], content: str | bytes | Writer, *, durable: bool = False) -> Path:
    """Write ``content`` to ``path`` so that a reader (or a kill at any moment) sees the old file or the new one.

    The content goes to a hidden temporary file beside ``path``, which is then renamed over it. Parent
    directories are created; the file gets the usual umask permissions.

    Args:
        path: the file to write.
        content: text (UTF-8), bytes, or a function writing to a binary file object.
        durable: fsync the file and its directory, so that the new content also survives a power cut
            (checkpoints); without it a crash of the machine may leave the old content.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temporary_name(path.name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, str):
                f.write(content.encode("utf-8"))
            elif isinstance(content, bytes):
                f.write(content)
            else:
                content(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.\d+\.[0-9a-f]+\.tmp$")


def temporary_name(name: str) -> str:
    """The name of ``atomic_write``'s temporary file for a file called ``name`` (hidden, unique to this call)."""
    return f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def temporary_target(name: str) -> str | None:
    """The file name an ``atomic_write`` temporary called ``name`` was meant to become, or None for other names.

    Such a file exists after the write only when the writing process was killed half-way.
    """
    m = _TEMPORARY.match(name)
    return m.group("target") if m else None


def is_temporary(name: str) -> bool:
    """Whether a file name is one of ``atomic_write``'s temporaries (left behind only by a killed process)."""
    return temporary_target(name) is not None


PROBE_PATIENCE = 10.0
"""Seconds a probe keeps retrying when concurrent runs keep removing the directories it had just found or made."""


def check_writable(directory: str | os.PathLike[str], what: str) -> None:
    """Make sure files can be created in ``directory`` (creating it if needed), by writing and removing a probe.

    Directories that this call creates are removed again, so a failed start leaves nothing behind.

    Args:
        directory: the directory that will receive output.
        what: the field or role that names it, for the error message (e.g. ``save_model_path``).

    Raises:
        ValueError: naming ``what`` and the reason, when the directory cannot be created or written.
    """
    target = Path(directory)
    created: list[Path] = []
    probe = target / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        # Runs started together (a sweep's panes) probe the same new directories: one may remove a directory
        # it created while another is about to probe it, so a vanished directory is made again. Each run removes
        # only what it made, once, so the removals run out; a random pause between tries lets them finish instead
        # of racing the same runs again.
        deadline = time.monotonic() + PROBE_PATIENCE
        while True:
            try:
                missing = [p for p in [target, *target.parents] if not p.exists()]
                for p in reversed(missing):
                    try:
                        p.mkdir()
                    except FileExistsError:
                        continue  # made by a concurrent run meanwhile: it is that run's to remove
                    created.append(p)
                if not stat.S_ISDIR(target.stat().st_mode):  # a vanished target raises FileNotFoundError: retry
                    raise NotADirectoryError(f"{str(target)!r} is not a directory")
                probe.write_bytes(b"")
                probe.unlink()
                break
            except FileNotFoundError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.0, 0.01))
    except OSError as e:
        reason = e.strerror or str(e) if not isinstance(e, NotADirectoryError) else str(e)
        raise ValueError(f"{what}: cannot write to {str(target)!r} ({reason})") from None
    finally:
        for p in reversed(created):
            try:
                p.rmdir()
            except OSError:
                pass


class LockHeld(Exception):
    """``file_lock(..., wait=False)`` found the lock held by another process."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    The operating system releases the lock when the process dies, so a killed holder never leaves it taken. Where
    ``flock`` does not exist (not POSIX) the block runs without a lock.

    Args:
        path: the lock file.
        wait: wait for another holder to release it; with False, raise ``LockHeld`` at once instead.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockHeld(os.fspath(path)) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
