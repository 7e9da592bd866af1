"""The depth law: how many hops of variable renaming a transformer with n layers resolves, as one command.

    python -m examples.var_rename.depth_law                   # CPU grid, 1-4 layers x 3 seeds (time: examples/README.md)
    python -m examples.var_rename.depth_law --scale=paper     # the original grid, 2-5 layers x 1-2 heads, on GPUs
    python -m examples.var_rename.depth_law --out=results/law2 --dry_run

Every model trains with ``--seeds`` seeds through the tmux sweep launcher (``iluvattnshun.sweep``), one pane per
parallel slot; while the grid runs this command shows each run's step, reach and ETA, refreshed in place. Then it
evaluates every run's last checkpoint on two deep test sets, one per chain layout (this project's bind-first layout
and the original study's, where chains start anywhere), and writes to ``--out``:

    depth_reach.html          reach at 90% per seed (a point each), the median per model, the 2^n line and the
                              published anchors (Sanford et al. 2024, the original study), on the original layout
    accuracy_per_depth.html   accuracy per depth of every model (median over seeds), both layouts
    accuracy_per_depth.csv    model, layers, heads, seed, layout, depth, accuracy, positions
    results.md                the reach per model and seed on both layouts, with chance level, and the anchors
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

from examples.var_rename.task import PRESETS, VarRenamePrompter
from iluvattnshun import load_run, rundir
from iluvattnshun.config import Config, parse_config
from iluvattnshun.files import atomic_write, check_writable
from iluvattnshun.sweep import Override, SweepError, launch, plan_runs, read_record, read_status, record_dir
from iluvattnshun.sweep import wait_for_runs
from iluvattnshun.sweep import slurm
from iluvattnshun.sweep.plan import NAME_RE, default_gpus, validate_runs
from iluvattnshun.sweep.progress import SweepProgress
from iluvattnshun.sweep.tmux import session_exists, tmux_path
from iluvattnshun.task import depth_reach, device_memory_bytes
from iluvattnshun.viz import accuracy_per_depth_fig, save_html

PREFIX = "law"
"""Run-name prefix of the grid: runs are ``law_<i>``."""

CPU_STEPS = {1: 1500, 2: 3000, 3: 5000, 4: 8000}
"""Step budget per layer count on the CPU (the grid's wall time on 2 cores: examples/README.md)."""

SCALE_LAYERS = {"cpu": tuple(CPU_STEPS), "paper": (2, 3, 4, 5)}
"""The layer counts of each scale's grid (``--layers`` picks some of them)."""

LAYOUTS = {"bind_first": True, "original": False}
"""The two chain layouts every model is scored on (``bind_first`` values); the original study's is the headline."""

ANCHORS = [
    {
        "label": "Sanford et al. 2024, d_model 128, 4 heads (k-hop induction heads, >= 95%)",
        "points": {2: 1, 3: 3, 4: 5, 5: 8, 6: 15},
        "note": "another task (k-hop induction heads, hop count drawn per sequence), scored at <= 5% error",
    },
    {
        "label": "Sanford et al. 2024, d_model 256, 8 heads (>= 95%)",
        "points": {2: 2, 3: 4, 4: 9, 5: 16},
        "note": "the same task and threshold; 5 layers reached >= 16, the largest hop count they drew",
    },
    {
        "label": "original study, 4 chains x 150 renames, 2 heads (>= 95%)",
        "points": {2: 2, 3: 3, 4: 13, 5: 32},
        "note": "var_rename, the original layout (bind_first=false), 4 chains: chance 0.25; 8 GPU-days per model",
    },
]
"""Published reach per layer count for the same question, drawn on the reach figure."""

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

MAX_EVAL_RENAMES = 10_000
"""Longest test prompts (40,000 tokens): scored one at a time at the least, each must fit in memory with the model."""

EVAL_BATCH_TOKENS = 100 * 256
"""Tokens a scoring batch holds: 100 prompts of the depth recipe's 64 renames, fewer of longer ones."""

EVAL_BYTES_PER_TOKEN = 10
"""What the test set costs in memory while it is drawn and scored (prompt, answer and depth columns, the draw's
statement words), per token, rounded up."""


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
    layers: str = ""
    """The layer counts to train, e.g. '3,4' (empty: every one of the scale's, 1-4 at cpu, 2-5 at paper)."""
    seeds: int = 3
    """Seeds per model (training seed and data seed): every one is a point on the reach figure."""
    parallel: int = 0
    """Runs at once on a CPU, runs per GPU on GPUs (0: one run per core, one per GPU)."""
    gpus: str = "auto"
    """auto: the visible GPUs (the paper scale needs one); cpu: CPU panes at either scale (a paper grid on a CPU is
    only for a toy override through --extra); or GPU ids, e.g. '0,1'."""
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
    """Check the runs' flags (--extra included), print the grid's commands and create nothing."""
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
        if not 0 <= self.eval_renames <= MAX_EVAL_RENAMES:
            raise ValueError(
                f"eval_renames must be in 0..{MAX_EVAL_RENAMES:,} (0: the training length), got {self.eval_renames}"
            )
        renames = self.eval_renames or PRESETS["depth" if self.scale == "cpu" else "paper"]().num_renames
        need, host = self.eval_prompts * 4 * renames * EVAL_BYTES_PER_TOKEN, device_memory_bytes(torch.device("cpu"))
        if host is not None and need > host:
            raise ValueError(
                f"eval_prompts: {self.eval_prompts:,} test prompts of {renames:,} renames need about "
                f"{need / 2**30:,.1f} GiB while they are scored, more than the {host / 2**30:,.1f} GiB of this machine"
            )
        if not 0 < self.budget < float("inf"):
            raise ValueError(f"budget must be a finite number > 0, got {self.budget}")
        try:
            shlex.split(self.extra)
        except ValueError as e:
            raise ValueError(f"extra: {e}") from None
        if self.min_positions < 1:
            raise ValueError(f"min_positions must be >= 1, got {self.min_positions}")
        scale_layers = SCALE_LAYERS[self.scale]
        if self.layers and not set(self.layers.split(",")) <= {str(n) for n in scale_layers}:
            raise ValueError(
                f"layers must be layer counts of the {self.scale} scale ({','.join(map(str, scale_layers))}) "
                f"separated by commas, got {self.layers[:40]!r}"
            )
        if self.parallel < 0:
            raise ValueError(f"parallel must be >= 0 (0: one run per core or GPU), got {self.parallel}")
        if not 1 <= self.seeds <= 100:
            raise ValueError(f"seeds must be in 1..100, got {self.seeds}")
        if not NAME_RE.match(self.session):
            raise ValueError(
                f"session must be a tmux session name of letters, digits, '_' and '-', got {self.session[:40]!r}"
            )
        if self.gpus not in ("auto", "cpu") and not all(g.isdigit() for g in self.gpus.split(",")):
            raise ValueError(f"gpus must be auto, cpu or GPU ids such as 0,1, got {self.gpus[:40]!r}")


@dataclass(frozen=True)
class Grid:
    """The runs of one scale: the command every run shares, each run's overrides, where they run."""

    extra: tuple[str, ...]
    runs: tuple[tuple[Override, ...], ...]
    gpus: tuple[str, ...]
    costs: tuple[float, ...] | None


def seed_flags(seed: int) -> tuple[Override, ...]:
    """A run's training seed and data seed (its stream of prompts); data seeds stay clear of the test set's."""
    return (("seed", str(seed)), ("data_seed", str(42 + seed)))


def grid(config: DepthLawConfig) -> Grid:
    """The grid of the config's scale, seeds innermost-first. Raises ``ValueError`` when the machine cannot run it."""
    extra = tuple(shlex.split(config.extra))
    if config.backend == "slurm":
        if config.gpus not in ("auto", "cpu"):
            raise ValueError("gpus: on SLURM each run gets its GPUs from the scheduler: --slurm='--gpus-per-run=1'")
        gpus: tuple[str, ...] = ()  # the login node's own GPUs (usually none) are not where the runs go
    elif config.gpus == "cpu":
        gpus = ()
    elif config.gpus == "auto":
        gpus = tuple(default_gpus()) if config.scale == "paper" else ()
    else:
        gpus = tuple(config.gpus.split(","))
    seeds = range(config.seeds)
    layers = [n for n in SCALE_LAYERS[config.scale] if not config.layers or str(n) in config.layers.split(",")]
    if config.scale == "cpu":
        steps = {n: max(1, round(CPU_STEPS[n] * config.budget)) for n in layers}
        runs = tuple(
            (("num_layers", str(n)), ("max_steps", str(s)), *seed_flags(seed))
            for seed in seeds
            for n, s in steps.items()
        )
        # One run per core; a run's cost is about its steps x layers: balance the panes by it.
        costs = tuple(float(n * s) for seed in seeds for n, s in steps.items())
        return Grid(("--preset=depth", *extra), runs, gpus, None if gpus else costs)
    if not gpus and config.gpus == "auto" and config.backend == "tmux":
        raise ValueError("scale: --scale=paper trains 8 models for days on GPUs, and no GPU is visible here")
    runs = tuple(
        (("num_layers", str(n)), ("num_heads", str(h)), *seed_flags(seed))
        for seed in seeds
        for n in layers
        for h in (1, 2)
    )
    return Grid(("--preset=paper", *extra), runs, gpus, None)


def experiment_record(config: DepthLawConfig, g: Grid) -> dict[str, Any]:
    """What identifies the experiment: a rerun with another record is refused."""
    return {
        "scale": config.scale,
        "seeds": config.seeds,
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
    costs = list(g.costs) if g.costs else None
    runs = plan_runs(override_sets, PREFIX, list(g.gpus), max_parallel=config.parallel or None, costs=costs)
    extra = [*g.extra, f"--tensorboard_logdir={logdir}"]
    cmd = f"{shlex.quote(sys.executable)} -m examples.var_rename"
    if config.dry_run:
        # The runs' flags checked as a launch checks them (a command with --print_config), once per head count: the
        # other runs differ from those only in integer layer counts, step budgets and seeds.
        first = {run.params().get("num_heads"): run for run in reversed(runs)}
        validate_runs(cmd, sorted(first.values(), key=lambda run: run.index), extra)
        for run in runs:
            print(f"{run.shell_command(cmd, extra)}  # pane {run.pane}")
        return record_dir(logdir, PREFIX)
    if config.backend == "slurm":
        options = slurm.parse_options(config.slurm)
        return slurm.launch(cmd, runs, prefix=PREFIX, options=options, extra=extra, replace=False)
    return launch(cmd, runs, session=config.session, prefix=PREFIX, extra=extra, replace=False)


def grid_running(config: DepthLawConfig, logdir: Path) -> bool:
    """Whether the grid is still going: its tmux session exists, or its SLURM jobs are queued or running.

    Raises ``ValueError`` when a tmux session of that name exists but holds something else (another ``--out``'s
    grid, or no grid at all): waiting on it would wait for runs that are not this experiment's."""
    record = read_record(record_dir(logdir, PREFIX))
    if config.backend == "tmux":
        if not session_exists(config.session):
            return False
        if record is None or record.get("session") != config.session:
            raise ValueError(
                f"session: tmux session {config.session!r} exists and is not running this experiment's grid"
                f" ({logdir.parent}); pick another --session, or end it: tmux kill-session -t {config.session}"
            )
        return True
    states = slurm.job_states(record) if record is not None else {}
    return any(s.state in slurm.ACTIVE_STATES for s in states.values())


def wait_for_grid(config: DepthLawConfig, rdir: Path, **kwargs: Any) -> dict[int, int]:
    """``wait_for_runs`` of the backend (SLURM's also reads the jobs' states: cancelled, requeued)."""
    return slurm.wait_for_runs(rdir, **kwargs) if config.backend == "slurm" else wait_for_runs(rdir, **kwargs)


@torch.no_grad()
def score(model: torch.nn.Module, prompter: VarRenamePrompter, config: DepthLawConfig) -> dict[str, Any]:
    """Accuracy per depth of ``model`` on the test set ``prompter`` draws (seed ``eval_seed``), and its reach."""
    renames = prompter.config.num_renames
    cols = prompter.get_prompts(np.random.default_rng(config.eval_seed), config.eval_prompts)
    device = next(model.parameters()).device
    hits = np.zeros(renames, dtype=np.int64)
    counts = np.zeros(renames, dtype=np.int64)
    rows = max(1, EVAL_BATCH_TOKENS // cols["prompt"].shape[1])
    for start in range(0, config.eval_prompts, rows):
        prompt = torch.as_tensor(cols["prompt"][start : start + rows].astype(np.int64), device=device)
        preds = model(prompt).logits.argmax(-1).cpu().numpy()  # (B, T)
        answer, depth = cols["answer"][start : start + rows], cols["depth"][start : start + rows]
        target = answer != prompter.mask_token
        np.add.at(counts, depth[target], 1)
        np.add.at(hits, depth[target & (preds == answer)], 1)
    accuracy = {d: hits[d] / counts[d] for d in range(renames) if counts[d]}
    positions = {d: int(counts[d]) for d in accuracy}
    return {
        "accuracy": accuracy,
        "positions": positions,
        "overall": float(hits.sum() / counts.sum()),
        "reach_90": depth_reach(accuracy, positions, 0.9, config.min_positions),
        "reach_99": depth_reach(accuracy, positions, 0.99, config.min_positions),
    }


def evaluate(run: rundir.RunDir, config: DepthLawConfig) -> dict[str, Any]:
    """A run's last checkpoint scored on one deep test set per layout, with its budget and chance level."""
    loaded = load_run(run.path, device="cuda" if torch.cuda.is_available() else "cpu")
    model, task = loaded.model, loaded.config
    renames = config.eval_renames or task.num_renames
    layouts = {}
    for layout, bind_first in LAYOUTS.items():
        test = dataclasses.replace(task, num_renames=renames, min_renames=0, bind_first=bind_first, mix_layouts=False)
        layouts[layout] = score(model, VarRenamePrompter(test), config)
    progress = loaded.checkpoint.progress
    return {
        "run": run.base,
        "layers": task.num_layers,
        "heads": task.num_heads,
        "seed": task.seed,
        "steps": progress.step,
        "minutes": progress.train_time_s / 60,
        "chance": 1 / task.num_chains,
        "layouts": layouts,
        "machines": rundir.read_machines(run),
    }


def label(result: dict[str, Any]) -> str:
    return f"{result['layers']}L{result['heads']}H"


def by_model(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Results grouped by model (layers, heads), in grid order, seeds in order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(results, key=lambda r: (r["layers"], r["heads"], r["seed"])):
        groups.setdefault(label(r), []).append(r)
    return groups


def median(values: list[float]) -> float:
    return float(np.median(values))


def trained_on(results: list[dict[str, Any]]) -> str:
    """Where the runs trained (each run's ``machine.json``), with how many runs each machine trained."""
    machines: dict[str, int] = {}
    for r in results:
        for m in {describe_machine(m) for m in r.get("machines", [])} or {"not recorded"}:
            machines[m] = machines.get(m, 0) + 1
    where = "; ".join(f"{m} ({n} run{'s' if n > 1 else ''})" for m, n in machines.items())
    return (
        f"Trained on: {where}. A seed gives the same numbers again on the same kind of machine; another CPU (other "
        "vector instructions, another maker's library paths), GPU or torch rounds differently, and the runs drift apart."
    )


def describe_machine(m: dict[str, Any]) -> str:
    """One line for a ``machine.json`` entry: the device, the CPU and its vector instructions, torch, the threads."""
    device = m.get("gpu") or m.get("device", "?")
    threads = m.get("threads", "?")
    return (
        f"{device}, {m.get('cpu', '?')} ({m.get('cpu_capability', '?')}), torch {m.get('torch', '?')}, "
        f"{threads} thread{'s' if threads != 1 else ''}"
    )


def write_results(out: Path, results: list[dict[str, Any]], config: DepthLawConfig) -> None:
    """The CSV, the markdown table and the two figures."""
    rows = ["model,num_layers,num_heads,seed,layout,depth,accuracy,positions"]
    for r in results:
        for layout, scored in r["layouts"].items():
            rows += [
                f"{label(r)},{r['layers']},{r['heads']},{r['seed']},{layout},{d},{a:.6f},{scored['positions'][d]}"
                for d, a in scored["accuracy"].items()
            ]
    atomic_write(out / "accuracy_per_depth.csv", "\n".join(rows) + "\n")

    groups = by_model(results)
    paper = config.scale == "paper"
    lines = [
        f"# Depth law ({config.scale} scale, {config.seeds} seed{'s' if config.seeds > 1 else ''} per model)",
        "",
        f"Test sets: {config.eval_prompts} prompts of {config.eval_renames or 'the training'} renames (seed "
        f"{config.eval_seed}) per layout: *original* is the original study's (every statement picks its chain at "
        "random, chains start anywhere), *bind_first* this project's (the first statements start every chain). Reach "
        f"at 90%: the deepest depth d with every depth <= d at >= 90% (depths with fewer than {config.min_positions} "
        "scored positions skipped; -1: depth 0 fails). Chance is 1 / chains.",
        "",
        "| model | seeds | chance | reach 90%, original: median | each seed | reach 90%, bind_first: median | "
        "each seed | reach 99%, original: median | steps | train minutes |"
        + (" original study, reach 90% |" if paper else ""),
        "|---|---:|---:|---:|---|---:|---|---:|---:|---:|" + ("---:|" if paper else ""),
    ]
    for name, group in groups.items():
        reach = {lay: [r["layouts"][lay]["reach_90"] for r in group] for lay in LAYOUTS}
        reach99 = [r["layouts"]["original"]["reach_99"] for r in group]
        original = f" {PAPER_LAW.get((group[0]['layers'], group[0]['heads']), '-')} |" if paper else ""
        lines.append(
            f"| {name} | {len(group)} | {group[0]['chance']:.2f} | {median(reach['original']):g} | "
            f"{', '.join(map(str, reach['original']))} | {median(reach['bind_first']):g} | "
            f"{', '.join(map(str, reach['bind_first']))} | {median(reach99):g} | "
            f"{median([r['steps'] for r in group]):,.0f} | {median([r['minutes'] for r in group]):.1f} |{original}"
        )
    lines += ["", trained_on(results)]
    lines += ["", "Published anchors on the reach figure (each with its own task, layout and threshold):", ""]
    lines += [f"- {a['label']}: {a['points']}; {a['note']}." for a in ANCHORS]
    atomic_write(out / "results.md", "\n".join(lines) + "\n")

    curves = {}
    for name, group in groups.items():
        for layout in LAYOUTS:
            depths = sorted(set.intersection(*(set(r["layouts"][layout]["accuracy"]) for r in group)))
            curves[f"{name} {layout}"] = {
                d: median([r["layouts"][layout]["accuracy"][d] for r in group]) for d in depths
            }
    title = f"Accuracy per depth (median over seeds; chance {results[0]['chance']:.2f})"
    save_html(accuracy_per_depth_fig(curves, title=title), out / "accuracy_per_depth.html")
    save_html(reach_figure(groups), out / "depth_reach.html")


def reach_figure(groups: dict[str, list[dict[str, Any]]]) -> go.Figure:
    """Reach at 90% on the original layout against layers: every seed, the median per model, 2^n, the anchors."""
    fig = go.Figure()
    seeds = [r for group in groups.values() for r in group]
    fig.add_trace(
        go.Scatter(
            x=[r["layers"] + 0.06 * (r["seed"] - 1) for r in seeds],  # seeds side by side
            y=[r["layouts"]["original"]["reach_90"] for r in seeds],
            text=[f"{label(r)} seed {r['seed']}" for r in seeds],
            mode="markers",
            marker={"size": 7, "opacity": 0.6},
            name="each seed (original layout)",
        )
    )
    for layout, dash in (("original", "solid"), ("bind_first", "dot")):
        fig.add_trace(
            go.Scatter(
                x=[g[0]["layers"] for g in groups.values()],
                y=[median([r["layouts"][layout]["reach_90"] for r in g]) for g in groups.values()],
                text=list(groups),
                mode="markers+lines",
                line={"dash": dash},
                name=f"median, {layout} layout",
            )
        )
    layers = sorted({r["layers"] for r in seeds} | {n for a in ANCHORS for n in a["points"]})
    fig.add_trace(go.Scatter(x=layers, y=[2**n for n in layers], mode="lines", name="2^n", line={"dash": "dash"}))
    for anchor, symbol in zip(ANCHORS, ("diamond-open", "square-open", "star-open")):
        points = sorted(anchor["points"].items())
        fig.add_trace(
            go.Scatter(
                x=[n for n, _ in points],
                y=[k for _, k in points],
                mode="markers+lines",
                marker={"symbol": symbol, "size": 10},
                line={"width": 1},
                name=anchor["label"],
            )
        )
    fig.update_layout(
        title={"text": "Depth reach at 90% against layers", "x": 0.5},
        xaxis={"title": {"text": "layers"}, "dtick": 1},
        yaxis={"title": {"text": "hops resolved"}},
        template="plotly_white",
    )
    return fig


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
            try:
                slurm.parse_options(config.slurm)  # bad SLURM options stop here, before anything is written
            except SweepError as e:
                raise ValueError(f"slurm: {e}") from None
        check_writable(out, "out")  # leaves nothing behind: the dry run checks it too
        if config.dry_run:
            launch_grid(config, g, logdir, resuming)
            return
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
        progress = SweepProgress(logdir, PREFIX, list(range(len(g.runs))), "val/depth_reach_90")
        statuses = wait_for_grid(config, record_dir(logdir, PREFIX), on_poll=progress.render)
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
