"""Hyperparameter sweeps: a tmux grid launcher and a results summary (``python -m iluvattnshun.sweep``).

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
go to a new window of the same session. Panes inherit the tmux *server's* environment, so each pane script
removes the server's values of the variables that pick the Python environment (``PATH``, ``PYTHONPATH``,
``VIRTUAL_ENV``, ``CONDA_*``, ...) and the kernels (``ATEN_*``, ``MKL_*``, ``ONEDNN_*``, ...) and re-exports the
launcher's.

The package in four parts: ``plan`` (grid -> runs -> panes, validation with ``--print_config``), ``record``
(``sweep.json``, pane scripts, exit statuses, waiting), ``tmux`` (the session and ``launch``), ``summary``
(table, CSV, HTML); ``cli`` is the command line.
"""

from iluvattnshun.sweep.cli import main
from iluvattnshun.sweep.plan import (
    Override,
    Run,
    SweepError,
    expand,
    parse_gpus,
    parse_grid,
    parse_override_tokens,
    plan_runs,
    read_overrides_file,
    validate_runs,
)
from iluvattnshun.sweep.record import read_record, read_status, record_dir, status_path, wait_for_runs, write_record
from iluvattnshun.sweep.summary import RunResult, load_sweep, summarize, swept_params
from iluvattnshun.sweep.tmux import attach, launch

__all__ = [
    "Override",
    "Run",
    "RunResult",
    "SweepError",
    "attach",
    "expand",
    "launch",
    "load_sweep",
    "main",
    "parse_gpus",
    "parse_grid",
    "parse_override_tokens",
    "plan_runs",
    "read_overrides_file",
    "read_record",
    "read_status",
    "record_dir",
    "status_path",
    "summarize",
    "swept_params",
    "validate_runs",
    "wait_for_runs",
    "write_record",
]
