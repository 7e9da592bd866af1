"""The depth law: how many hops of variable renaming a transformer with n layers resolves, as one command.

    python -m examples.var_rename.depth_law                   # CPU grid, 1-4 layers: within an hour on 2 cores
    python -m examples.var_rename.depth_law --scale=paper     # the original grid, 2-5 layers x 1-2 heads, on GPUs
    python -m examples.var_rename.depth_law --out=results/law2 --dry_run

The grid trains through the tmux sweep launcher (``iluvattnshun.sweep``), one pane per parallel slot, then this
command waits for it, evaluates every model's last checkpoint on one deep test set, and writes to ``--out``:

    accuracy_per_depth.html   every model's accuracy per depth on one plotly figure (standalone)
    depth_reach.html          depth reach at 90% and 99% per model, against the 2^n line
    accuracy_per_depth.csv    model, layers, heads, depth, accuracy, positions (scored answers at that depth)
    results.md                a short table (steps, minutes, depth reach, accuracy) per model
    experiment.json           what was run; runs/ holds the run directories and the sweep record

Run again with the same ``--out`` and settings, the command resumes: it waits for a grid still running in tmux,
continues unfinished runs from their checkpoints (``--resume``), and rewrites the results. With other settings
it refuses: an experiment folder holds one experiment. Ctrl-C stops the waiting, not the runs.
"""

import dataclasses
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go
import torch

from examples.var_rename.task import VarRenamePrompter
from iluvattnshun import load_run, rundir
from iluvattnshun.config import Config, parse_config
from iluvattnshun.files import atomic_write, check_writable
from iluvattnshun.sweep import Override, SweepError, launch, plan_runs, read_record, read_status, record_dir
from iluvattnshun.sweep import wait_for_runs
from iluvattnshun.sweep import slurm
from iluvattnshun.sweep.plan import default_gpus
from iluvattnshun.sweep.tmux import session_exists, tmux_path
from iluvattnshun.task import depth_reach
from iluvattnshun.viz import accuracy_per_depth_fig, save_html

PREFIX = "law"
"""Run-name prefix of the grid: runs are ``law_<i>``."""

CPU_STEPS = {1: 6000, 2: 9000, 3: 13000, 4: 15000}
"""Step budget per layer count on the CPU (the grid's wall time on 2 cores: examples/README.md)."""

PAPER_LAW = {
    (2, 2): "2-3",
    (3, 2): "5",
    (4, 2): "15",
    (5, 2): "40",
    (2, 1): "1",
    (3, 1): "1",
    (4, 1): "10",
    (5, 1): "18",
}
"""The original study's depth reach at 90% read off its figure, by (layers, heads), after 8 days on GPUs."""


@dataclass(kw_only=True)
class DepthLawConfig(Config):
    """The depth-law experiment: a layer grid of var_rename models and their reach in hops."""

    scale: Literal["cpu", "paper"] = "cpu"
    """cpu: 1-4 layers on the depth preset, sized for a 2-core CPU; paper: the original grid on the original recipe."""
    out: str = "results/depth_law"
    """The experiment folder: results, the experiment's record and its run directories (runs/)."""
    session: str = "depth_law"
    """tmux session of the grid."""
    budget: float = 1.0
    """Multiplies every model's step budget at the cpu scale (below 1 for a quick look, above 1 to go further)."""
    extra: str = ""
    """Arguments added to every run's command line, e.g. '--dataset_path=/data/var_rename'."""
    eval_prompts: int = 1000
    """Prompts in the deep test set every model is evaluated on."""
    eval_renames: int = 0
    """Renames per test prompt (0: the training prompts' length)."""
    eval_seed: int = 1234
    """Seed of the test set (never a training seed: data seeds differ from it)."""
    min_positions: int = 100
    """Depths with fewer scored test positions are left out of the depth reach."""
    dry_run: bool = False
    """Print the grid's commands and create nothing."""
    results_only: bool = False
    """Write the results from the checkpoints that exist now; launch and wait for nothing."""
    backend: Literal["tmux", "slurm"] = "tmux"
    """tmux: the grid in panes on this machine; slurm: one SLURM job array (from a login node; runs/ shared)."""
    slurm: str = ""
    """The job array's SLURM options (--backend=slurm), e.g. '--partition=gpu --time=2-00:00:00 --gpus-per-run=1'."""

    def validate(self) -> None:
        super().validate()
        if self.eval_prompts < 1:
            raise ValueError(f"eval_prompts must be >= 1, got {self.eval_prompts}")
        if self.eval_renames < 0:
            raise ValueError(f"eval_renames must be >= 0, got {self.eval_renames}")
        if not 0 < self.budget < float("inf"):
            raise ValueError(f"budget must be a finite number > 0, got {self.budget}")
        try:
            shlex.split(self.extra)
        except ValueError as e:
            raise ValueError(f"extra: {e}") from None
        if self.min_positions < 1:
            raise ValueError(f"min_positions must be >= 1, got {self.min_positions}")


@dataclass(frozen=True)
class Grid:
    """The runs of one scale: the command every run shares, each run's overrides, where they run."""

    extra: tuple[str, ...]
    runs: tuple[tuple[Override, ...], ...]
    gpus: tuple[str, ...]
    costs: tuple[float, ...] | None


def grid(config: DepthLawConfig) -> Grid:
    """The grid of the config's scale. Raises ``ValueError`` when the machine cannot run it (paper without GPUs)."""
    extra = tuple(shlex.split(config.extra))
    if config.scale == "cpu":
        steps = {n: max(1, round(s * config.budget)) for n, s in CPU_STEPS.items()}
        runs = tuple((("num_layers", str(n)), ("max_steps", str(s))) for n, s in steps.items())
        # One run per core; the 4-layer run costs most per step: balance the panes by steps x layers.
        return Grid(("--preset=depth", *extra), runs, (), tuple(float(n * s) for n, s in steps.items()))
    gpus = tuple(default_gpus())
    if not gpus:
        raise ValueError("scale: --scale=paper trains 8 models for days on GPUs, and no GPU is visible here")
    runs = tuple((("num_layers", str(n)), ("num_heads", str(h))) for n in (2, 3, 4, 5) for h in (1, 2))
    return Grid(("--preset=paper", *extra), runs, gpus, None)


def experiment_record(config: DepthLawConfig, g: Grid) -> dict[str, Any]:
    """What identifies the experiment: a rerun with another record is refused."""
    return {
        "scale": config.scale,
        "extra": list(g.extra),
        "runs": [[list(o) for o in run] for run in g.runs],
        "eval": {"prompts": config.eval_prompts, "renames": config.eval_renames, "seed": config.eval_seed},
    }


def check_experiment_folder(out: Path, record: dict[str, Any]) -> bool:
    """True when ``out`` already holds this experiment (a resume); raises ``ValueError`` for another one."""
    path = out / "experiment.json"
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {str(out)!r} is a file, not an experiment folder; choose another --out")
    if not path.exists():
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"out: {str(out)!r} exists and is not an experiment folder; choose another --out")
        return False
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        raise ValueError(f"out: {path} is unreadable; choose another --out") from None
    if not isinstance(recorded, dict):
        raise ValueError(f"out: {path} holds no experiment record (a {type(recorded).__name__}); choose another --out")
    if recorded != record:
        differs = sorted(k for k in record if recorded.get(k) != record[k])
        raise ValueError(
            f"out: {str(out)!r} holds another experiment (it differs in {', '.join(differs)}); "
            "choose another --out, or remove that folder to start over"
        )
    return True


def run_dirs(logdir: Path) -> dict[int, rundir.RunDir]:
    """The newest run directory of each grid run, by index."""
    found: dict[int, rundir.RunDir] = {}
    for run in rundir.list_runs(logdir):
        name = run.name
        if name.startswith(f"{PREFIX}_") and name[len(PREFIX) + 1 :].isdigit():
            found[int(name[len(PREFIX) + 1 :])] = run
    return found


def launch_grid(config: DepthLawConfig, g: Grid, logdir: Path, resuming: bool) -> Path:
    """Start the grid in tmux (on a resume, only what is left: runs with a checkpoint continue from it)."""
    existing = run_dirs(logdir) if resuming else {}
    override_sets = [
        [*run, ("resume", None)] if i in existing and existing[i].checkpoints() else list(run)
        for i, run in enumerate(g.runs)
    ]
    runs = plan_runs(override_sets, PREFIX, list(g.gpus), costs=list(g.costs) if g.costs else None)
    extra = [*g.extra, f"--tensorboard_logdir={logdir}"]
    cmd = f"{shlex.quote(sys.executable)} -m examples.var_rename"
    if config.dry_run:
        for run in runs:
            print(f"{run.shell_command(cmd, extra)}  # pane {run.pane}")
        return record_dir(logdir, PREFIX)
    if config.backend == "slurm":
        options = slurm.parse_options(config.slurm)
        return slurm.launch(cmd, runs, prefix=PREFIX, options=options, extra=extra, replace=False)
    return launch(cmd, runs, session=config.session, prefix=PREFIX, extra=extra, replace=False)


def grid_running(config: DepthLawConfig, logdir: Path) -> bool:
    """Whether the grid is still going: its tmux session exists, or its SLURM jobs are queued or running."""
    if config.backend == "tmux":
        return session_exists(config.session)
    record = read_record(record_dir(logdir, PREFIX))
    states = slurm.job_states(record) if record is not None else {}
    return any(s.state in slurm.ACTIVE_STATES for s in states.values())


def wait_for_grid(config: DepthLawConfig, rdir: Path, **kwargs: Any) -> dict[int, int]:
    """``wait_for_runs`` of the backend (SLURM's also reads the jobs' states: cancelled, requeued)."""
    return slurm.wait_for_runs(rdir, **kwargs) if config.backend == "slurm" else wait_for_runs(rdir, **kwargs)


@torch.no_grad()
def evaluate(run: rundir.RunDir, config: DepthLawConfig) -> dict[str, Any]:
    """Accuracy per depth of a run's last checkpoint on the deep test set, its depth reach and its budget."""
    loaded = load_run(run.path, device="cuda" if torch.cuda.is_available() else "cpu")
    model, task = loaded.model, loaded.config
    renames = config.eval_renames or task.num_renames
    prompter = VarRenamePrompter(dataclasses.replace(task, num_renames=renames))
    cols = prompter.get_prompts(np.random.default_rng(config.eval_seed), config.eval_prompts)
    device = next(model.parameters()).device
    hits = np.zeros(renames, dtype=np.int64)
    counts = np.zeros(renames, dtype=np.int64)
    for start in range(0, config.eval_prompts, 100):
        prompt = torch.as_tensor(cols["prompt"][start : start + 100].astype(np.int64), device=device)
        preds = model(prompt).logits.argmax(-1).cpu().numpy()  # (B, T)
        answer, depth = cols["answer"][start : start + 100], cols["depth"][start : start + 100]
        target = answer != prompter.mask_token
        np.add.at(counts, depth[target], 1)
        np.add.at(hits, depth[target & (preds == answer)], 1)
    accuracy = {d: hits[d] / counts[d] for d in range(renames) if counts[d]}
    positions = {d: int(counts[d]) for d in accuracy}
    progress = loaded.checkpoint["progress"]
    return {
        "run": run.base,
        "layers": task.num_layers,
        "heads": task.num_heads,
        "steps": progress["step"],
        "minutes": progress["train_time_s"] / 60,
        "accuracy": accuracy,
        "positions": positions,
        "overall": float(hits.sum() / counts.sum()),
        "reach_90": depth_reach(accuracy, positions, 0.9, config.min_positions),
        "reach_99": depth_reach(accuracy, positions, 0.99, config.min_positions),
    }


def label(result: dict[str, Any]) -> str:
    return f"{result['layers']}L{result['heads']}H"


def write_results(out: Path, results: list[dict[str, Any]], config: DepthLawConfig) -> None:
    """The CSV, the markdown table and the two figures."""
    rows = ["model,num_layers,num_heads,depth,accuracy,positions"]
    for r in results:
        rows += [
            f"{label(r)},{r['layers']},{r['heads']},{d},{a:.6f},{r['positions'][d]}" for d, a in r["accuracy"].items()
        ]
    atomic_write(out / "accuracy_per_depth.csv", "\n".join(rows) + "\n")

    paper = config.scale == "paper"
    lines = [
        f"# Depth law ({config.scale} scale)",
        "",
        f"Test set: {config.eval_prompts} prompts of {config.eval_renames or 'the training'} renames (seed "
        f"{config.eval_seed}); depth reach counts depths with at least {config.min_positions} scored positions.",
        "",
        "| model | steps | train minutes | depth reach 90% | depth reach 99% | accuracy |"
        + (" original study, reach 90% |" if paper else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if paper else ""),
    ]
    for r in results:
        original = f" {PAPER_LAW.get((r['layers'], r['heads']), '-')} |" if paper else ""
        lines.append(
            f"| {label(r)} | {r['steps']:,} | {r['minutes']:.1f} | {r['reach_90']} | {r['reach_99']} | "
            f"{r['overall']:.3f} |{original}"
        )
    atomic_write(out / "results.md", "\n".join(lines) + "\n")

    curves = {label(r): r["accuracy"] for r in results}
    save_html(accuracy_per_depth_fig(curves, title="Accuracy per depth"), out / "accuracy_per_depth.html")
    fig = go.Figure()
    for threshold in (90, 99):
        fig.add_trace(
            go.Scatter(
                x=[r["layers"] for r in results],
                y=[r[f"reach_{threshold}"] for r in results],
                text=[label(r) for r in results],
                mode="markers+lines",
                name=f"depth reach at {threshold}%",
            )
        )
    layers = sorted({r["layers"] for r in results})
    fig.add_trace(go.Scatter(x=layers, y=[2**n for n in layers], mode="lines", name="2^n", line={"dash": "dash"}))
    fig.update_layout(
        title={"text": "Depth reach against layers", "x": 0.5},
        xaxis={"title": {"text": "layers"}, "dtick": 1},
        yaxis={"title": {"text": "hops resolved"}},
        template="plotly_white",
    )
    save_html(fig, out / "depth_reach.html")


def run_experiment(config: DepthLawConfig) -> None:
    """Check, launch (or resume), wait, evaluate, write. Raises ValueError / SweepError for bad input."""
    out = Path(config.out)
    g = grid(config)
    record = experiment_record(config, g)
    resuming = check_experiment_folder(out, record)
    logdir = (out / "runs").resolve()
    if not config.results_only:
        if config.backend == "tmux":
            tmux_path()  # a clear message when tmux is missing, before anything is written
        else:
            slurm.parse_options(config.slurm)  # bad SLURM options stop here, before anything is written
        if config.dry_run:
            launch_grid(config, g, logdir, resuming)
            return
        check_writable(out, "out")
        if grid_running(config, logdir):
            print(f"the grid is running ({config.backend}): waiting for it")
        else:
            launch_grid(config, g, logdir, resuming)  # checks every run's flags before it writes anything
            if config.backend == "slurm":
                print(f"submitted {len(g.runs)} runs to SLURM; status: python -m iluvattnshun.sweep status {logdir}")
            else:
                print(
                    f"launched {len(g.runs)} runs in tmux session {config.session!r}; attach: tmux attach -t"
                    f" {config.session}"
                )
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "experiment.json", json.dumps(record, indent=2) + "\n")
        start = time.monotonic()
        statuses = wait_for_grid(config, record_dir(logdir, PREFIX))
        print(f"the grid ended after {(time.monotonic() - start) / 60:.1f} minutes of waiting; statuses {statuses}")
    found = run_dirs(logdir)
    results = [evaluate(found[i], config) for i in sorted(found) if found[i].checkpoints()]
    if not results:
        raise ValueError(f"out: no run of {str(out)!r} has a checkpoint yet")
    write_results(out, results, config)
    failed = [i for i in sorted(found) if (read_status(record_dir(logdir, PREFIX), i) or 0) != 0]
    print((out / "results.md").read_text() + (f"\nruns that did not end cleanly: {failed}" if failed else ""))
    print(f"wrote {out}/accuracy_per_depth.html, depth_reach.html, accuracy_per_depth.csv, results.md")


def main(argv: list[str] | None = None) -> None:
    config = parse_config(DepthLawConfig, argv)
    try:
        run_experiment(config)
    except (ValueError, SweepError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"stopped waiting; the runs go on in tmux session {config.session!r}: rerun this command to resume")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
