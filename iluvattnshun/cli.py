"""A trainer as a program: the command line's exit statuses, and what signals do to a run.

``run_from_command_line`` parses a config, runs a trainer and turns its outcome into one line and an exit status;
``StopSignals`` is what the training loop installs so that SIGINT / SIGTERM (and a cluster's SIGUSR1 / SIGUSR2)
save and stop the run at the next step. ``CommandParser`` gives the other commands (sweeps, the LLM kit, the
analysis tools) the same one-line errors for a missing or mistyped argument.
"""

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
import types
from typing import Any, Callable, Iterator, Mapping, NoReturn, Protocol, TypeVar

from iluvattnshun.config import parse_config, unparsed_options

DEBUG_ENV = "ILUVATTNSHUN_DEBUG"
"""Set (to anything but 0) to see tracebacks of errors on the command line, as ``--debug`` does."""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
"""Signals that make the training loop save and stop (SIGHUP: the terminal or tmux session closed; left ignored
under ``nohup``)."""

ABORT_AFTER_S = 3.0
"""A second Ctrl-C aborts without saving only this many seconds after the first: a quick double press (the usual
reflex) still saves, and a step that hangs can still be left."""


class CommandParser(argparse.ArgumentParser):
    """``argparse`` for the project's other commands (sweeps, the LLM kit, the analysis tools): a missing or bad
    argument stops with one ``error: ...`` line and exit status 2, as the training commands do; ``--help`` shows the
    usage. Subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {' '.join(message.split())}; see --help\n")


class ConfigError(ValueError):
    """The run cannot start with these settings; raised by ``run()`` before anything is created (a command line
    reports it in one line and exits with status 2)."""


class Runnable(Protocol):
    """What the command line needs of a trainer."""

    @property
    def run_dir(self) -> str | None: ...

    @property
    def stopped_by_signal(self) -> int | None: ...

    def run(self) -> None: ...

    def last_checkpoint(self) -> str | None: ...


C = TypeVar("C")


class _Terminated(BaseException):
    """SIGTERM outside the training loop (which saves and stops on it): ends the program like Ctrl-C does."""


def run_from_command_line(
    config_class: type[C],
    make_trainer: Callable[[C], Runnable],
    argv: list[str] | None,
    presets: Mapping[str, Callable[[], C]] | None = None,
    default_preset: str | None = None,
) -> None:
    """Parse the command line into a ``config_class``, build a trainer from it and run it, as a program.

    Bad input ends before any work with one ``error: ...`` line and exit status 2 (a bad flag or value, or a
    ``ConfigError`` from ``run()``); a crash with one line and status 1; a run stopped by a signal, after saving,
    with 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM). ``--debug`` (or ``ILUVATTNSHUN_DEBUG=1``) shows
    the traceback instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "0") not in ("", "0")
    config = parse_config(
        config_class, [a for a in args if a != "--debug"], presets=presets, default_preset=default_preset
    )
    trainer = None
    try:
        with _terminate_as_exception():
            trainer = make_trainer(config)
            trainer.run()
    except (KeyboardInterrupt, _Terminated) as e:
        if debug:
            raise
        signum = signal.SIGTERM if isinstance(e, _Terminated) else signal.SIGINT
        if trainer is None or trainer.run_dir is None:
            where = "before training started; nothing was saved"
        else:
            where = f"outside the training loop; last checkpoint: {trainer.last_checkpoint()}"
        print(f"error: stopped by {signum.name} {where}", file=sys.stderr)
        raise SystemExit(128 + signum) from None
    except ConfigError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as e:
        if debug:
            raise
        message = " ".join(str(e).split())
        print(f"error: {type(e).__name__}: {message} (--debug shows the traceback)", file=sys.stderr)
        raise SystemExit(1) from None
    if trainer.stopped_by_signal is not None:
        raise SystemExit(128 + trainer.stopped_by_signal)


def check_parsed_from_command_line(config: Any, trainer_name: str) -> None:
    """Refuse to run when the process's command line holds ``--field=value`` flags for ``config`` that nothing
    parsed (a script that builds its config by hand would silently ignore them).

    Raises:
        ConfigError: naming the ignored flags and the fix.
    """
    ignored = unparsed_options(config, sys.argv[1:])
    if ignored:
        raise ConfigError(
            f"the command line has {' '.join(ignored)}, but this config was not parsed from it: the flags would "
            f"be ignored. End the script with {trainer_name}.main() (or build the config with "
            "iluvattnshun.config.parse_config)"
        )


@contextlib.contextmanager
def _terminate_as_exception() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``_Terminated`` (the loop installs its own handler over this one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: types.FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopSignals:
    """Records the first stop signal that arrives while ``installed()``; the loop reads ``received`` at each step.

    SIGINT / SIGTERM ask the loop to save and stop at the next step; a second Ctrl-C aborts, when it comes at least
    ``ABORT_AFTER_S`` after the first (sooner, it is the same request). SIGUSR1 / SIGUSR2 (a
    cluster scheduler's warning before a time limit or preemption, e.g. ``sbatch --signal=B:USR1@90``) do as SIGTERM
    does, so that a requeued run continues with ``--resume``; so does SIGHUP (a closed terminal or tmux session).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._received_at = 0.0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Install the handlers for the block (in the main thread only; elsewhere nothing is caught)."""
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: types.FrameType | None) -> None:
            if self.received is not None and signum == signal.SIGINT:
                if time.monotonic() - self._received_at >= ABORT_AFTER_S:
                    raise KeyboardInterrupt
                return
            self.received = signum
            self._received_at = time.monotonic()

        previous: dict[signal.Signals, Any] = {
            sig: signal.signal(sig, handler) for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN
        }
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
