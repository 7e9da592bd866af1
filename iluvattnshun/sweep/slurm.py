"""The SLURM side of a sweep: the grid as one job array through submitit, its states, requeues and cancel.

Each run of the grid is one array task. On the node, submitit calls a :class:`RunJob`, which runs the run's command
line (the same line a tmux pane runs) in a child process and writes the run's exit status into the sweep record, so
that ``sweep wait`` and ``sweep summarize`` read a SLURM sweep as they read a tmux one.

Time limits and preemption: SLURM sends the warning signal (USR2, ``--signal-delay`` seconds before the limit) to
the job step; the trainer treats it as it treats SIGTERM (save a checkpoint, stop), submitit calls
:meth:`RunJob.checkpoint`, which waits for the run to stop and hands submitit the same run to requeue. The requeued
task sees ``SLURM_RESTART_COUNT > 0`` and continues the run with ``--resume`` from its newest checkpoint.

submitit is imported only here, and only when a SLURM sweep is launched or run (``pip install 'iluvattnshun[slurm]'``).
"""

import argparse
import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from iluvattnshun import rundir
from iluvattnshun.files import atomic_write
from iluvattnshun.sweep import record as rec
from iluvattnshun.sweep.plan import NAME_RE, Run, SweepError, config_logdir, last_line, validate_runs

SUBMIT_TIMEOUT_S = 120.0
"""Longest a SLURM client command (sbatch, squeue, sacct, scancel) may take."""
ACTIVE_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING"}
    | {"SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
)
"""Job states after which the job runs (again): a run in one of them has not ended, whatever its status file says."""
STOP_CODES = frozenset({128 + int(signal.SIGINT), 128 + int(signal.SIGTERM), 128 + 10, 128 + 12})
"""Exit statuses of a run that saved and stopped on a signal (INT, TERM, USR1, USR2): it can continue."""
_SBATCH_KEY_RE = re.compile(r"^[a-z][a-z0-9-]*$")
_OWN_SBATCH_KEYS = {"array", "output", "error", "open-mode", "signal", "job-name", "wrap", "parsable", "test-only"}


@dataclass
class SlurmOptions:
    """What a cluster user sets for a SLURM sweep (one job array, one task per run)."""

    partition: str | None = None
    """Partition (queue) of the array; None: the cluster's default."""
    time_min: int = 60
    """Time limit of each run in minutes; a run that reaches it is checkpointed and requeued."""
    gpus_per_run: int = 0
    """GPUs of each run (``--gpus-per-node``)."""
    cpus_per_run: int = 1
    """CPUs of each run (``--cpus-per-task``); also the run's torch threads unless ``--threads-per-run`` says."""
    mem_gb: float | None = None
    """Memory of each run in GB; None: the cluster's default."""
    account: str | None = None
    """Account to charge."""
    qos: str | None = None
    """Quality of service."""
    sbatch: dict[str, str | bool] = field(default_factory=dict)
    """Further sbatch parameters, ``{"constraint": "a100", "exclusive": True}``."""
    max_parallel: int | None = None
    """Most runs of the array running at once (``--array=...%K``); None: as many as the cluster allows."""
    signal_delay_s: int = 90
    """Seconds before the time limit at which the run is told to save (USR2) and is requeued."""
    max_requeues: int = 3
    """How often a run that reaches its time limit is requeued before it is left timed out."""
    folder: str | None = None
    """submitit's folder (job scripts, pickles, each task's stdout / stderr); default ``<record>/slurm``."""

    def check(self, n_runs: int) -> None:
        """Raises SweepError (one line) on a value SLURM would refuse or that cannot work."""
        if self.time_min < 1:
            raise SweepError(f"--time {self.time_min}: must be at least 1 minute")
        if self.gpus_per_run < 0:
            raise SweepError(f"--gpus-per-run {self.gpus_per_run}: must be >= 0")
        if self.cpus_per_run < 1:
            raise SweepError(f"--cpus-per-run {self.cpus_per_run}: must be >= 1")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise SweepError(f"--mem {self.mem_gb:g}: must be > 0")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise SweepError(f"--max-parallel {self.max_parallel}: must be >= 1")
        if self.max_requeues < 0:
            raise SweepError(f"--max-requeues {self.max_requeues}: must be >= 0")
        if not 1 <= self.signal_delay_s < self.time_min * 60:
            raise SweepError(
                f"--signal-delay {self.signal_delay_s}: must be between 1 and the time limit ({self.time_min * 60} s)"
            )
        named = (("--partition", self.partition), ("--account", self.account), ("--qos", self.qos))
        for name, value in named:
            if value is not None and not re.match(r"^[A-Za-z0-9_.,-]+$", value):
                raise SweepError(f"{name} {value[:80]!r}: use letters, digits, '_', '.', ',' and '-' only")
        for key, sval in self.sbatch.items():
            if not _SBATCH_KEY_RE.match(key):
                raise SweepError(f"--sbatch {key[:80]!r}: not an sbatch option name (e.g. --sbatch constraint=a100)")
            if key in _OWN_SBATCH_KEYS:
                raise SweepError(f"--sbatch {key}: set by the launcher; it cannot be overridden")
            if isinstance(sval, str) and ("\n" in sval or len(sval) > 1000):
                raise SweepError(f"--sbatch {key}: the value must be one line of at most 1000 characters")
        if n_runs < 1:
            raise SweepError("empty sweep: no runs")

    def submitit_parameters(self, name: str) -> dict[str, Any]:
        """Parameters for ``submitit.SlurmExecutor.update_parameters``."""
        params: dict[str, Any] = {
            "job_name": name,
            "time": self.time_min,
            "cpus_per_task": self.cpus_per_run,
            "signal_delay_s": self.signal_delay_s,
            "additional_parameters": dict(self.sbatch),
        }
        if self.gpus_per_run:
            params["gpus_per_node"] = self.gpus_per_run
        for key in ("partition", "account", "qos"):
            if getattr(self, key) is not None:
                params[key] = getattr(self, key)
        if self.mem_gb is not None:
            params["mem"] = _mem_flag(self.mem_gb)
        if self.max_parallel is not None:
            params["array_parallelism"] = self.max_parallel
        return params

    def sbatch_flags(self, n_runs: int) -> list[str]:
        """The same request as sbatch command-line flags (for ``sbatch --test-only``)."""
        flags = [f"--time={self.time_min}", f"--cpus-per-task={self.cpus_per_run}"]
        cap = "" if self.max_parallel is None else f"%{min(n_runs, self.max_parallel)}"
        flags.append(f"--array=0-{n_runs - 1}{cap}")
        if self.gpus_per_run:
            flags.append(f"--gpus-per-node={self.gpus_per_run}")
        for key in ("partition", "account", "qos"):
            if getattr(self, key) is not None:
                flags.append(f"--{key}={getattr(self, key)}")
        if self.mem_gb is not None:
            flags.append(f"--mem={_mem_flag(self.mem_gb)}")
        flags += [f"--{k}" if v is True else f"--{k}={v}" for k, v in self.sbatch.items() if v is not False]
        return flags


def _mem_flag(mem_gb: float) -> str:
    return f"{int(mem_gb)}G" if mem_gb == int(mem_gb) else f"{math.ceil(mem_gb * 1024)}M"


def parse_time(text: str) -> int:
    """A time limit in minutes from SLURM's forms: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``."""
    m = re.match(r"^(?:(\d+)-)?(\d+(?::\d+){0,2})$", text.strip())
    parts = [int(p) for p in m.group(2).split(":")] if m else []
    if not m or (m.group(1) is None and len(parts) > 3):
        raise SweepError(f"--time {text[:80]!r}: expected minutes (90) or [D-]HH:MM:SS (1:30:00, 2-00:00:00)")
    if m.group(1) is not None:
        h, mi, s = (parts + [0, 0])[:3]
        seconds = int(m.group(1)) * 86400 + h * 3600 + mi * 60 + s
    else:
        seconds = {1: lambda: parts[0] * 60, 2: lambda: parts[0] * 60 + parts[1]}.get(
            len(parts), lambda: parts[0] * 3600 + parts[1] * 60 + parts[2]
        )()
    return math.ceil(seconds / 60)


def parse_mem(text: str) -> float:
    """Memory in GB from ``16``, ``16G``, ``16GB``, ``500M`` or ``1T``."""
    m = re.match(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)B?$", text.strip(), re.IGNORECASE)
    if not m:
        raise SweepError(f"--mem {text[:80]!r}: expected a size such as 16G, 500M or 16 (GB)")
    scale = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "": 1.0, "T": 1024.0}[m.group(2).upper()]
    return float(m.group(1)) * scale


def parse_sbatch(specs: Sequence[str]) -> dict[str, str | bool]:
    """``--sbatch KEY=VALUE`` / ``--sbatch KEY`` (a bare flag) -> ``{key: value}``; underscores become dashes."""
    out: dict[str, str | bool] = {}
    for spec in specs:
        key, eq, value = spec.partition("=")
        key = key.strip().removeprefix("--").replace("_", "-")
        if not key:
            raise SweepError(f"--sbatch {spec[:80]!r}: expected KEY=VALUE or KEY, e.g. --sbatch constraint=a100")
        if key in out:
            raise SweepError(f"--sbatch {key}: given twice")
        out[key] = value if eq else True
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The SLURM options of ``sweep launch --backend=slurm`` (also parsed by :func:`parse_options`)."""
    g = parser.add_argument_group("SLURM (--backend=slurm)")
    g.add_argument("--partition", help="partition (queue) of the job array")
    g.add_argument("--time", help="time limit per run: minutes or [D-]HH:MM:SS (default 60)")
    g.add_argument("--gpus-per-run", type=int, help="GPUs per run (default 0)")
    g.add_argument("--cpus-per-run", type=int, help="CPUs per run (default 1); also its torch threads")
    g.add_argument("--mem", help="memory per run, e.g. 16G (default: the cluster's)")
    g.add_argument("--account", help="account to charge")
    g.add_argument("--qos", help="quality of service")
    g.add_argument(
        "--sbatch", action="append", default=[], metavar="KEY=VALUE", help="extra sbatch option (repeatable)"
    )
    g.add_argument("--signal-delay", type=int, help="seconds before the limit at which a run saves (default 90)")
    g.add_argument("--max-requeues", type=int, help="requeues of a run at its time limit (default 3)")
    g.add_argument("--slurm-folder", help="submitit's folder: job scripts and logs (default <record>/slurm)")


SLURM_ONLY: tuple[str, ...] = ("partition", "time", "gpus_per_run", "cpus_per_run", "mem", "account", "qos")
SLURM_ONLY += ("signal_delay", "max_requeues", "slurm_folder")
"""Destinations of the arguments above that mean nothing to the tmux backend (``sbatch`` is checked apart)."""


def options_from_args(args: argparse.Namespace) -> SlurmOptions:
    """SlurmOptions from parsed arguments (see :func:`add_arguments`); ``max_parallel`` is the launcher's own."""
    options = SlurmOptions(
        partition=args.partition,
        gpus_per_run=0 if args.gpus_per_run is None else args.gpus_per_run,
        cpus_per_run=1 if args.cpus_per_run is None else args.cpus_per_run,
        account=args.account,
        qos=args.qos,
        sbatch=parse_sbatch(args.sbatch),
        max_parallel=getattr(args, "max_parallel", None),
        folder=args.slurm_folder,
    )
    if args.time is not None:
        options.time_min = parse_time(args.time)
    if args.mem is not None:
        options.mem_gb = parse_mem(args.mem)
    if args.signal_delay is not None:
        options.signal_delay_s = args.signal_delay
    if args.max_requeues is not None:
        options.max_requeues = args.max_requeues
    return options


class _OptionParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, raised instead of printed
        raise SweepError(message)


def parse_options(text: str) -> SlurmOptions:
    """SlurmOptions from a string of the launcher's flags, e.g. ``"--partition=gpu --time=1440 --gpus-per-run=1"``."""
    parser = _OptionParser(prog="slurm options", add_help=False)
    add_arguments(parser)
    parser.add_argument("--max-parallel", type=int)
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise SweepError(f"SLURM options {text[:80]!r}: {e}") from None
    return options_from_args(parser.parse_args(tokens))


# --------------------------------------------------------------------------------------------
# On the node


class _Ended(Exception):
    """Raised from :meth:`RunJob.checkpoint` when the run ended on its own: it is not requeued."""


def _ignore_warnings() -> None:
    """The run has ended on its own: from now on the limit's warning (submitit's USR2 handler) has nothing to save
    or requeue. Left in place, it would raise in the middle of submitit writing the result, and SLURM would record a
    finished run as failed."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")


class RunJob:
    """One run of a SLURM sweep, as submitit calls it on the node (picklable; checkpointable)."""

    def __init__(
        self,
        *,
        index: int,
        run_name: str,
        line: str,
        cwd: str,
        env: Mapping[str, str],
        rdir: str,
        logdir: str | None,
        grace_s: float,
    ) -> None:
        self.index = index
        self.run_name = run_name
        self.line = line
        self.cwd = cwd
        self.env = dict(env)
        self.rdir = rdir
        self.logdir = logdir
        self.grace_s = grace_s
        self.resume = False
        """Set on the copy that is requeued: the run continues from its newest checkpoint."""
        self._child: subprocess.Popen[bytes] | None = None
        self._done = threading.Event()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_child", "_done")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._child = None
        self._done = threading.Event()

    def has_checkpoint(self) -> bool:
        """Whether the run (the newest directory named after it) has saved a checkpoint to continue from."""
        if self.logdir is None:
            return self.resume
        runs = rundir.matching_runs(Path(self.cwd, self.logdir), self.run_name)
        return any(run.checkpoints() for run in runs)

    def _status(self, code: int) -> None:
        atomic_write(rec.status_path(Path(self.rdir), self.index), f"{code}\n")

    def __call__(self) -> int:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        rdir = Path(self.rdir)
        rec.status_path(rdir, self.index).unlink(missing_ok=True)  # a requeued run has not ended
        info = {"job_id": _job_id(), "restarts": restarts, "host": socket.gethostname(), "started_at": time.time()}
        atomic_write(attempt_path(rdir, self.index), json.dumps(info) + "\n")
        line = self.line
        if (self.resume or restarts > 0) and self.has_checkpoint():
            line += " --resume"
        print(f"== run {self.index} ({self.run_name}), attempt {restarts + 1}: {line}", flush=True)
        self._done.clear()
        self._child = child = subprocess.Popen(
            ["bash", "-c", line], cwd=self.cwd, env={**os.environ, **self.env}, stdin=subprocess.DEVNULL
        )

        # The child is reaped by a thread, so that submitit's signal handler (in this, the main thread) can wait for
        # it too, without the Popen lock that a blocking wait() would hold.
        def reap() -> None:
            child.wait()
            self._done.set()

        threading.Thread(target=reap, daemon=True).start()
        try:
            while not self._done.wait(1.0):
                pass
            if child.returncode not in STOP_CODES:
                _ignore_warnings()
        except _Ended:
            _ignore_warnings()
        except BaseException as e:
            # submitit's handler ends the task: SystemExit after a requeue (the run is not over), its own error when
            # no requeue is left (the run is over: its status is recorded).
            if not isinstance(e, SystemExit) and child.poll() is not None:
                self._status(child.returncode)
            raise
        code = child.returncode
        self._status(code)
        if code != 0:
            raise RuntimeError(f"run {self.index} ({self.run_name}) exited with status {code}")
        return code

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on the warning signal: stops the run (it saves on SIGTERM) and returns it to requeue."""
        import submitit

        child = self._child
        if child is not None:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)  # it may have the warning signal already; TERM saves just the same
            if not self._done.wait(self.grace_s):
                child.kill()  # the newest checkpoint on disk is whole (written by rename); it resumes from that
                self._done.wait(10.0)
            code = child.poll()
            if code is not None and code >= 0 and code not in STOP_CODES:
                raise _Ended  # it finished (or crashed) on its own just before the warning
        again = RunJob.__new__(RunJob)
        again.__setstate__(self.__getstate__())
        again.resume = True
        return submitit.helpers.DelayedSubmission(again)


def attempt_path(rdir: Path, index: int) -> Path:
    """The file where run ``index``'s current attempt records its job id and requeue count."""
    return rdir / f"run_{index}.slurm.json"


# --------------------------------------------------------------------------------------------
# On the submitting machine


def _client(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SweepError(
            f"{name} not found: --backend=slurm submits from a machine of a SLURM cluster (a login node); "
            "for a local test cluster see .ci/slurm.sh"
        )
    return path


def _run_client(*argv: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [_client(argv[0]), *argv[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SUBMIT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise SweepError(f"{argv[0]} did not answer within {SUBMIT_TIMEOUT_S:.0f} s") from None


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise SweepError(
            "--backend=slurm needs submitit: pip install 'iluvattnshun[slurm]' (or pip install submitit)"
        ) from None
    return submitit


def test_submission(options: SlurmOptions, n_runs: int, cwd: str) -> None:
    """Asks SLURM whether it would take the array (``sbatch --test-only``); nothing is submitted.

    Raises:
        SweepError: with SLURM's own reason (an unknown partition, account or QOS, a limit too long, ...).
    """
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="sweep-test-") as script:
        script.write("#!/bin/bash\ntrue\n")
        script.flush()
        proc = _run_client("sbatch", "--test-only", "--output=/dev/null", *options.sbatch_flags(n_runs), script.name)
    if proc.returncode != 0:
        reason = last_line(proc.stderr) or last_line(proc.stdout) or f"exit status {proc.returncode}"
        reason = re.sub(r"^sbatch: error: (Batch job submission failed: )?", "", reason)
        raise SweepError(f"SLURM refused the job array before submission: {reason}")


def launch(
    cmd: str,
    runs: Sequence[Run],
    *,
    prefix: str,
    options: SlurmOptions,
    extra: Sequence[str] = (),
    status_dir: str | os.PathLike[str] | None = None,
    replace: bool = False,
    validate: bool = True,
    cwd: str | None = None,
) -> Path:
    """Validates the runs, asks SLURM whether it takes the array, writes the sweep record and submits the array.

    Args:
        cmd: the command line every run starts with.
        runs: from :func:`plan_runs` (their GPU and pane assignments are ignored: SLURM places them).
        prefix: run-name prefix (names the record directory and the job).
        options: the array's SLURM options.
        extra: arguments added to every run before its overrides.
        status_dir: where to keep the record; default ``<tensorboard_logdir>/.sweeps/<prefix>``.
        replace: cancel the jobs of an earlier sweep with this prefix that are still queued or running.
        validate: run every command with ``--print_config`` first.
        cwd: working directory of the runs (on the cluster's shared filesystem; default: the current one).

    Returns:
        The record directory (``sweep.json`` with the job ids, status files, ``slurm/`` with submitit's files).

    Raises:
        SweepError: before anything is submitted, for any problem with the input or the environment.
    """
    cwd = os.path.abspath(cwd or os.getcwd())
    if not runs:
        raise SweepError("empty sweep: no runs")
    if not NAME_RE.match(prefix):
        raise SweepError(f"--prefix {prefix!r}: use letters, digits, '_' and '-' only")
    options.check(len(runs))
    submitit = _submitit()
    test_submission(options, len(runs), cwd)  # SLURM's answer is cheaper than validating every run
    configs = validate_runs(cmd, runs, extra, cwd) if validate else []
    logdir = config_logdir(configs, cwd)
    if status_dir is not None:
        rdir = Path(status_dir).resolve()
    elif logdir is not None:
        rdir = rec.record_dir(logdir, prefix)
    else:
        rdir = rec.fallback_record_dir(prefix)
    previous = rec.read_record(rdir)
    if previous is not None:
        active = [i for i, s in job_states(previous).items() if s.state in ACTIVE_STATES]
        if active and not replace:
            raise SweepError(
                f"prefix {prefix!r} has {len(active)} runs queued or running on SLURM ({rdir}); "
                "pass --replace to cancel them, or pick another --prefix"
            )
        if active:
            cancel(previous)

    folder = Path(options.folder).resolve() if options.folder else rdir / "slurm"
    slurm = {"options": dataclasses.asdict(options), "folder": str(folder), "array_job_id": None, "jobs": {}}
    rec.write_record(rdir, runs, cmd=cmd, extra=extra, cwd=cwd, session=None, prefix=prefix, logdir=logdir, slurm=slurm)
    for i in range(len(runs)):
        attempt_path(rdir, i).unlink(missing_ok=True)
    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=options.max_requeues)
    executor.update_parameters(**options.submitit_parameters(prefix))
    threads = options.cpus_per_run
    jobs = []
    try:
        with executor.batch():
            for run in runs:
                run = dataclasses.replace(run, gpu=None, threads=run.threads or threads)
                job = RunJob(
                    index=run.index,
                    run_name=run.run_name,
                    line=" ".join([cmd, *(shlex.quote(a) for a in run.args(extra))]),
                    cwd=cwd,
                    env=run.env(),
                    rdir=str(rdir),
                    logdir=None if logdir is None else str(logdir),
                    grace_s=max(5.0, options.signal_delay_s - 15.0),
                )
                jobs.append(executor.submit(job))
    except Exception as e:  # sbatch said no after all (submitit's errors carry sbatch's whole output)
        raise SweepError(f"submission failed: {last_line(str(e)) or type(e).__name__}") from None
    ids = [str(job.job_id) for job in jobs]
    slurm["array_job_id"] = ids[0].split("_")[0]
    slurm["jobs"] = {str(run.index): job_id for run, job_id in zip(runs, ids)}
    record = rec.read_record(rdir) or {}
    record["slurm"] = slurm
    atomic_write(rdir / "sweep.json", json.dumps(record, indent=2) + "\n")
    return rdir


# --------------------------------------------------------------------------------------------
# States, waiting, cancelling


@dataclass(frozen=True)
class JobState:
    """A run's job as SLURM sees it."""

    job_id: str
    """``<array job id>_<task id>``."""
    state: str
    """SLURM's state (``PENDING``, ``RUNNING``, ``COMPLETED``, ``CANCELLED``, ``TIMEOUT``, ``FAILED``, ...);
    ``UNKNOWN`` when neither squeue nor sacct knows the job."""
    requeues: int = 0
    """How often the job was requeued (its restart count)."""


def is_slurm(record: Mapping[str, Any] | None) -> bool:
    """Whether a sweep record is of a SLURM sweep."""
    return record is not None and isinstance(record.get("slurm"), dict)


def _expand_array_ids(job_id: str) -> list[str]:
    """``12_[0,2-3%2]`` -> ``["12_0", "12_2", "12_3"]``; any other id stays as it is."""
    m = re.match(r"^(\d+)_\[([0-9,\-]+)(?:%\d+)?\]$", job_id.strip())
    if not m:
        return [job_id.strip()]
    out = []
    for part in m.group(2).split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            out += [f"{m.group(1)}_{t}" for t in range(int(first), int(last or first) + 1)]
    return out


def job_states(record: Mapping[str, Any], rdir: Path | None = None) -> dict[int, JobState]:
    """Each run's job state, from squeue (queued and running jobs) and sacct (ended ones), and its requeue count
    (the larger of sacct's count and the count the run recorded in ``rdir``).

    Empty for a record that is not of a SLURM sweep (or whose submission did not go through).
    """
    if not is_slurm(record):
        return {}
    slurm = record["slurm"]
    jobs = {int(i): str(j) for i, j in slurm.get("jobs", {}).items()}
    array = slurm.get("array_job_id")
    if not jobs or array is None or shutil.which("squeue") is None:
        return {}
    seen: dict[str, str] = {}
    counts: dict[str, int] = {}
    # sacct first (every instance of a requeued task is one line: the count of lines is the count of starts), then
    # squeue over it (sacct lags behind the controller by a moment).
    proc = _run_client("sacct", "-n", "-X", "-P", "--duplicates", "-j", str(array), "-o", "JobID,State")
    if proc.returncode == 0:
        for line in proc.stdout.splitlines():
            job_id, _, state = line.partition("|")
            for one in _expand_array_ids(job_id):  # tasks that never started share a line: 12_[2-3%2]
                seen[one] = state.split(" ")[0]  # "CANCELLED by 0" -> CANCELLED
                counts[one] = counts.get(one, 0) + ("[" not in job_id)
    proc = _run_client("squeue", "-h", "-r", "-j", str(array), "-o", "%i|%T")
    if proc.returncode == 0:
        for line in proc.stdout.splitlines():
            job_id, _, state = line.partition("|")
            seen[job_id.strip()] = state.strip()
    out = {}
    for index, job_id in jobs.items():
        requeues = max(0, counts.get(job_id, 0) - 1)
        if rdir is not None:
            try:
                requeues = max(requeues, int(json.loads(attempt_path(rdir, index).read_text())["restarts"]))
            except (OSError, ValueError, KeyError, TypeError):
                pass
        out[index] = JobState(job_id, seen.get(job_id, "UNKNOWN"), requeues)
    return out


def describe(job: JobState | None, status: int | None, step: int | None) -> str | None:
    """A run's state for the summary, from its SLURM state and its exit status; None: read the status alone.

    Cancelled, timed-out and failed jobs say so (never "finished"); a requeued run says how often.
    """
    if job is None:
        return None
    state = job.state
    at = f" at step {step}" if step is not None else ""
    again = f" (requeued {job.requeues}x)" if job.requeues else ""
    if state == "PENDING":
        return ("requeued, pending" if job.requeues else "pending") + again
    if state in ("RUNNING", "COMPLETING", "CONFIGURING"):
        return "running" + again
    if state in ACTIVE_STATES:
        return state.lower().replace("_", " ") + again
    if state == "CANCELLED":
        return f"cancelled{at}{again}"
    if state in ("TIMEOUT", "DEADLINE"):
        return f"timed out{at}{again}"
    if state == "PREEMPTED":
        return f"preempted{at}{again}"
    if state in ("FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"):
        if status in STOP_CODES:
            return f"timed out{at} (no requeue left){again}"
        if state == "FAILED" and status is not None:
            return f"crashed (exit {status}){again}"
        return f"failed ({state.lower().replace('_', ' ')}){again}"
    if state == "COMPLETED":
        return None if status is not None else "completed without a status"
    return None if state == "UNKNOWN" else state.lower() + again


def wait_for_runs(
    rdir: Path,
    timeout: float | None = None,
    poll: float = 2.0,
    on_poll: Callable[[dict[int, int | None]], None] | None = None,
) -> dict[int, int]:
    """Blocks until every run of the SLURM sweep recorded in ``rdir`` has ended (``record.wait_for_runs`` for SLURM).

    A run has ended when its job is in no queued or running state (a requeued run is waited for); its status is the
    one it wrote, or 1 when it ended without writing one (cancelled while pending, killed). ``on_poll`` sees every
    run's status (None while it has not ended) at every poll.

    Returns:
        ``{run index: exit status}``.

    Raises:
        SweepError: without a SLURM sweep record, or when ``timeout`` seconds pass first.
    """
    record = rec.read_record(rdir)
    if record is None or not is_slurm(record):
        raise SweepError(f"no SLURM sweep record in {rdir}")
    indices = [int(r["index"]) for r in record["runs"]]
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        jobs = job_states(record, rdir)
        ended: dict[int, int] = {}
        for i in indices:
            state = jobs[i].state if i in jobs else "UNKNOWN"
            status = rec.read_status(rdir, i)
            if state in ACTIVE_STATES:
                continue
            if status is not None:
                ended[i] = status
            elif state != "UNKNOWN":
                ended[i] = 1
        if on_poll is not None:
            on_poll({i: ended.get(i) for i in indices})
        pending = [i for i in indices if i not in ended]
        if not pending:
            return ended
        if deadline is not None and time.monotonic() > deadline:
            raise SweepError(f"timed out after {timeout:g} s; runs still going: {', '.join(map(str, pending))}")
        time.sleep(poll)


def cancel(record: Mapping[str, Any], indices: Sequence[int] | None = None) -> list[str]:
    """Cancels a SLURM sweep's jobs (all, or the runs ``indices``); running runs save a checkpoint first.

    Returns:
        The job ids cancelled.
    """
    if not is_slurm(record):
        raise SweepError("not a SLURM sweep: stop a tmux sweep with tmux kill-session -t <session>")
    slurm = record["slurm"]
    jobs = {int(i): str(j) for i, j in slurm.get("jobs", {}).items()}
    if not jobs:
        raise SweepError("the sweep's record has no job ids (its submission did not go through)")
    if indices is None:
        targets = [str(slurm["array_job_id"])]
    else:
        unknown = [i for i in indices if i not in jobs]
        if unknown:
            raise SweepError(f"--runs: no run {unknown[0]} in this sweep (runs 0-{max(jobs)})")
        targets = [jobs[i] for i in indices]
    # SIGTERM to every process of a running task (the trainer saves and stops), then SIGKILL after KillWait.
    proc = _run_client("scancel", *targets)
    if proc.returncode != 0:
        raise SweepError(f"scancel failed: {last_line(proc.stderr) or f'exit status {proc.returncode}'}")
    return targets
