"""The project's commands as real processes, without paying Python's and torch's start-up for each one.

A zygote is one ``python`` process that has imported torch and the project's modules and run nothing else (no
tensor op, so no OpenMP or intra-op thread exists and forking it is safe). For each command it forks a child that
takes the command's working directory, environment and arguments and runs the module as ``python -m`` does, its
stdout and stderr going to files. The child is a real process: its exit status, file descriptors and signals are
its own, and nothing it does reaches the zygote or the next command. Only the start-up is shared: about 3 s of
CPU per command on the project's 2-core machine.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]

PRELOAD = ["iluvattnshun.task", "examples.var_rename.task", "examples.variables", "examples.recipes"]
"""What a zygote imports: the commands' dependencies, not the modules they run as ``__main__`` (``runpy`` warns
about a module run as ``__main__`` that is already imported)."""

ZYGOTE = r"""
import importlib, json, os, runpy, signal, sys, time, traceback
for name in sys.argv[1:]:
    importlib.import_module(name)


def child(request):
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["out"]), (2, request["err"])):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(file, fd)
        os.close(file)
    sys.stdin = open(os.devnull)
    sys.argv = [request["module"], *request["argv"]]
    sys.path[0] = request["cwd"]  # as python -m puts the working directory first
    code = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(request)
    deadline = time.monotonic() + request["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(0.005)
    returncode = None if status is None else os.waitstatus_to_exitcode(status)
    print(json.dumps({"returncode": returncode}), flush=True)
"""


def command_env(**changes: str) -> dict[str, str]:
    """The environment of a project command in a test: this one, the repository importable, one torch thread."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NO_COLOR": "1", **changes}


class Zygote:
    """One forking server; its commands run one at a time (``zygotes`` gives several for threads)."""

    def __init__(self, preload: Sequence[str] = PRELOAD, env: dict[str, str] | None = None) -> None:
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, *preload],
            cwd=REPO,
            env=command_env() if env is None else env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._dir = tempfile.TemporaryDirectory(prefix="zygote-")

    def run(
        self,
        module: str,
        argv: Sequence[str],
        cwd: Path,
        env: dict[str, str] | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """``python -m module *argv`` in ``cwd`` with ``env`` (default ``command_env()``), as a forked child.

        ``returncode`` is the child's exit status (negative: the signal that ended it; -9 also on ``timeout``).
        """
        env = command_env() if env is None else env
        out, err = Path(self._dir.name) / "stdout", Path(self._dir.name) / "stderr"
        request = {"module": module, "argv": list(argv), "cwd": str(cwd), "env": env, "timeout": timeout}
        with self._lock:
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(json.dumps({**request, "out": str(out), "err": str(err)}) + "\n")
            self._proc.stdin.flush()
            reply = self._proc.stdout.readline()
            if not reply:
                raise RuntimeError(f"the zygote exited with status {self._proc.wait()}")
            returncode = json.loads(reply)["returncode"]
            stdout, stderr = out.read_text(), err.read_text()
        return subprocess.CompletedProcess([module, *argv], -9 if returncode is None else returncode, stdout, stderr)

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=30)
        self._dir.cleanup()


_shared: Zygote | None = None
_shared_lock = threading.Lock()


def python_m(
    module: str, argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m module *argv`` as a real process forked from the test session's zygote (made on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Zygote()
            atexit.register(_shared.close)
    return _shared.run(module, argv, cwd, env, timeout)


@contextmanager
def zygotes(
    n: int, preload: Sequence[str] = PRELOAD, env: dict[str, str] | None = None
) -> Iterator[queue.Queue[Zygote]]:
    """``n`` zygotes in a queue: a thread takes one, runs its commands, and puts it back."""
    pool: queue.Queue[Zygote] = queue.Queue()
    made = [Zygote(preload, env) for _ in range(n)]
    for z in made:
        pool.put(z)
    try:
        yield pool
    finally:
        for z in made:
            z.close()
