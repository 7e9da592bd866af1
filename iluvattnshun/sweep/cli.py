"""The command line: ``python -m iluvattnshun.sweep launch | summarize | wait | status | cancel``."""

import argparse
import difflib
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from iluvattnshun.cli import CommandParser
from iluvattnshun.sweep import slurm
from iluvattnshun.sweep.plan import NAME_RE, SweepError, expand, panes, parse_gpus, parse_grid, plan_runs
from iluvattnshun.sweep.plan import read_overrides_file, validate_runs
from iluvattnshun.sweep.progress import SweepProgress
from iluvattnshun.sweep.record import read_record, record_dir, wait_for_runs
from iluvattnshun.sweep.summary import format_table, load_sweep, summarize
from iluvattnshun.sweep.tmux import PANES_PER_WINDOW, attach, check_panes_per_window, launch

DEFAULT_SESSION = "sweep"
"""Session name (and run-name prefix) when none is given."""


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m iluvattnshun.sweep",
        description="Launch a hyperparameter grid in tmux (one pane per run) or as a SLURM job array (one task per"
        " run) and summarize its results.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "launch",
        help="launch a grid in a detached tmux session or on SLURM (the default subcommand)",
        description="Launch a grid in a detached tmux session, one pane per run (or per --max-parallel slot), or with"
        " --backend=slurm as one SLURM job array through submitit, one task per run.",
        epilog="Arguments that start with '-' need the '=' form: --extra='--preset=quick --max_steps=100'.",
    )
    p.add_argument("--cmd", required=True, help="command every run starts with, e.g. 'python -m examples.var_rename'")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a swept field (repeatable)")
    p.add_argument("--overrides-file", help="one override set per line ('--num_layers=2 --lr=1e-3'), x the grid")
    p.add_argument(
        "--backend",
        choices=("tmux", "slurm"),
        default="tmux",
        help="tmux: panes on this machine (default); slurm: a job array on the cluster",
    )
    p.add_argument("--gpus", help="GPU ids, e.g. 0,1,2,3; 'none' for CPU (default: all visible)")
    p.add_argument("--session", default=DEFAULT_SESSION, help=f"tmux session name (default {DEFAULT_SESSION!r})")
    p.add_argument("--prefix", help="run-name prefix: runs are <prefix>_<i> (default: the session name)")
    p.add_argument(
        "--max-parallel",
        type=int,
        help="concurrent runs per GPU (per machine on CPU: default cores / threads); slurm: runs of the array at"
        " once; others queue",
    )
    p.add_argument("--threads-per-run", type=int, help="torch threads (OMP_NUM_THREADS) per run (CPU default: 1)")
    p.add_argument("--extra", default="", help="arguments added to every run before its overrides")
    p.add_argument("--status-dir", help="where to keep the sweep record (default <logdir>/.sweeps/<prefix>)")
    p.add_argument("--panes-per-window", type=int, default=PANES_PER_WINDOW, help="panes per tmux window")
    p.add_argument(
        "--replace",
        action="store_true",
        help="kill an existing session of the same name first (slurm: cancel the prefix's queued or running jobs)",
    )
    p.add_argument("--attach", action="store_true", help="attach to the session after launching")
    p.add_argument("--dry-run", action="store_true", help="print the pane commands and create nothing")
    p.add_argument("--skip-validation", action="store_true", help="do not check the runs with --print_config first")
    slurm.add_arguments(p)

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
    w.add_argument("--metric", default="val/accuracy", help="the metric shown beside each run's step and ETA")
    w.add_argument("--status-dir", help="the sweep record directory, if not <logdir>/.sweeps/<prefix>")

    st = sub.add_parser("status", help="each run's state (with its SLURM job and requeues), step and directory")
    st.add_argument("logdir", help="the task's log directory, e.g. logs/var_rename")
    st.add_argument(
        "--prefix", default=DEFAULT_SESSION, help=f"the sweep's run-name prefix (default {DEFAULT_SESSION!r})"
    )
    st.add_argument("--status-dir", help="the sweep record directory, if not <logdir>/.sweeps/<prefix>")

    c = sub.add_parser("cancel", help="cancel a SLURM sweep (running runs save a checkpoint first)")
    c.add_argument("logdir", help="the task's log directory, e.g. logs/var_rename")
    c.add_argument(
        "--prefix", default=DEFAULT_SESSION, help=f"the sweep's run-name prefix (default {DEFAULT_SESSION!r})"
    )
    c.add_argument("--runs", help="only these runs, e.g. 0,3 (default: the whole array)")
    c.add_argument("--status-dir", help="the sweep record directory, if not <logdir>/.sweeps/<prefix>")
    return parser


def _launch_slurm(args: argparse.Namespace) -> int:
    prefix = args.prefix or args.session
    tmux_only = [("--gpus", args.gpus is not None), ("--attach", args.attach)]
    tmux_only.append(("--panes-per-window", args.panes_per_window != PANES_PER_WINDOW))
    for flag, given in tmux_only:
        if given:
            raise SweepError(f"{flag} is a tmux option; with --backend=slurm use --gpus-per-run / --cpus-per-run")
    try:
        extra = shlex.split(args.extra)
    except ValueError as e:
        raise SweepError(f"--extra {args.extra!r}: {e}") from None
    options = slurm.options_from_args(args)
    sets = expand(parse_grid(args.grid), read_overrides_file(args.overrides_file) if args.overrides_file else ())
    options.check(len(sets))
    threads = args.threads_per_run or options.cpus_per_run
    runs = plan_runs(sets, prefix, [], max_parallel=len(sets), threads_per_run=threads)
    if args.dry_run:
        if not args.skip_validation:
            validate_runs(args.cmd, runs, extra)
        print(f"# SLURM job array {prefix!r}: {len(runs)} runs; sbatch {' '.join(options.sbatch_flags(len(runs)))}")
        for run in runs:
            print(f"{run.shell_command(args.cmd, extra)}  # array task {run.index}")
        return 0
    rdir = slurm.launch(
        args.cmd,
        runs,
        prefix=prefix,
        options=options,
        extra=extra,
        status_dir=args.status_dir,
        replace=args.replace,
        validate=not args.skip_validation,
    )
    record = read_record(rdir) or {}
    logdir = record.get("logdir") or "<logdir>"
    where = f"{shlex.quote(logdir)} --prefix {prefix}"
    where += "" if args.status_dir is None and record.get("logdir") else f" --status-dir {shlex.quote(str(rdir))}"
    info = record.get("slurm", {})
    print(f"submitted {len(runs)} runs as SLURM job array {info.get('array_job_id')} ({prefix!r})")
    print(f"  status:    python -m iluvattnshun.sweep status {where}")
    print(f"  wait:      python -m iluvattnshun.sweep wait {where}")
    print(f"  summarize: python -m iluvattnshun.sweep summarize {where}")
    print(f"  cancel:    python -m iluvattnshun.sweep cancel {where}")
    print(f"  logs:      {info.get('folder')}")
    return 0


def _status_main(args: argparse.Namespace) -> int:
    results, _ = load_sweep(args.logdir, args.prefix, args.status_dir)
    if not results:
        raise SweepError(f"no runs named run_<N>_{args.prefix}_<i> in {args.logdir!r} and no sweep record")
    slurm_sweep = any(r.job is not None for r in results)
    headers = ["run", *(["job"] if slurm_sweep else []), "state", "step", "run_dir"]
    rows = [
        [
            r.run_name,
            *([r.job.job_id if r.job is not None else "-"] if slurm_sweep else []),
            r.state,
            "-" if r.step is None else str(r.step),
            "-" if r.run_dir is None else str(r.run_dir),
        ]
        for r in results
    ]
    print(format_table(headers, rows))
    return 0


def _cancel_main(args: argparse.Namespace) -> int:
    rdir = Path(args.status_dir) if args.status_dir else record_dir(args.logdir, args.prefix)
    record = read_record(rdir)
    if record is None:
        raise SweepError(f"no sweep record in {rdir}")
    indices = None
    if args.runs is not None:
        try:
            indices = [int(i) for i in args.runs.split(",")]
        except ValueError:
            raise SweepError(f"--runs {args.runs[:80]!r}: expected run indices, e.g. 0,3") from None
    targets = slurm.cancel(record, indices)
    print(f"cancelled {', '.join(targets)}: running runs save a checkpoint and stop")
    return 0


def _wait(rdir: Path, timeout: float | None, **kwargs: Any) -> dict[int, int]:
    """``record.wait_for_runs``, or for a SLURM sweep ``slurm.wait_for_runs`` (which also reads the jobs' states)."""
    if slurm.is_slurm(read_record(rdir)):
        return slurm.wait_for_runs(rdir, timeout, **kwargs)
    return wait_for_runs(rdir, timeout, **kwargs)


def _launch_main(args: argparse.Namespace) -> int:
    if args.backend == "slurm":
        return _launch_slurm(args)
    given = [d for d in slurm.SLURM_ONLY if getattr(args, d) is not None] + (["sbatch"] if args.sbatch else [])
    if given:
        raise SweepError(f"--{given[0].replace('_', '-')} is a SLURM option: add --backend=slurm")
    prefix = args.prefix or args.session
    check_panes_per_window(args.panes_per_window)
    if not NAME_RE.match(args.session):
        raise SweepError(f"--session {args.session!r}: use letters, digits, '_' and '-' only")
    try:
        extra = shlex.split(args.extra)
    except ValueError as e:
        raise SweepError(f"--extra {args.extra!r}: {e}") from None
    sets = expand(parse_grid(args.grid), read_overrides_file(args.overrides_file) if args.overrides_file else ())
    gpus = parse_gpus(args.gpus)
    runs = plan_runs(sets, prefix, gpus, args.max_parallel, args.threads_per_run)
    n_panes = len(panes(runs))
    where = f"GPUs {','.join(gpus)}" if gpus else "CPU"
    if args.dry_run:
        if not args.skip_validation:
            validate_runs(args.cmd, runs, extra)
        print(f"# session {args.session!r}: {len(runs)} runs in {n_panes} panes on {where}")
        for run in runs:
            device = "cpu" if run.gpu is None else f"gpu {run.gpu}"
            device += "" if run.threads is None else f", {run.threads} thread(s)"
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
    commands = ("launch", "summarize", "wait", "status", "cancel")
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        close = difflib.get_close_matches(argv[0], commands, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}?" if close else f"the commands are {', '.join(commands)}"
        print(f"error: unknown command {argv[0]!r}; {hint}", file=sys.stderr)
        return 2
    if argv and argv[0] not in (*commands, "-h", "--help"):
        argv.insert(0, "launch")  # launch is the default command: `sweep --cmd ... --grid ...`
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
                    warn=lambda line: print(f"warning: {line}", file=sys.stderr),
                )
            )
            if args.csv:
                print(f"wrote {args.csv}")
            if args.html:
                print(f"wrote {args.html}")
            return 0
        if args.command == "status":
            return _status_main(args)
        if args.command == "cancel":
            return _cancel_main(args)
        if args.timeout is not None and not 0 < args.timeout < float("inf"):
            raise SweepError(f"--timeout {args.timeout}: must be a number of seconds > 0")
        rdir = Path(args.status_dir) if args.status_dir else record_dir(args.logdir, args.prefix)
        record = read_record(rdir)
        indices = [int(r["index"]) for r in record["runs"]] if record else []
        progress = SweepProgress(Path(args.logdir), args.prefix, indices, args.metric)
        statuses = _wait(rdir, args.timeout, on_poll=progress.render)
        failed = [i for i, s in statuses.items() if s != 0]
        print(f"{len(statuses)} runs ended" + (f"; failed: {', '.join(map(str, failed))}" if failed else ", all ok"))
        return 1 if failed else 0
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
