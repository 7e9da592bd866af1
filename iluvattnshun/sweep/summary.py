"""Summarising a sweep: each run's config, validation curves and state, as a table, CSV and plotly HTML.

A SLURM sweep's states come from the scheduler as well as from the runs' exit statuses: pending, running, requeued,
timed out, cancelled, failed, with each run's requeue count (``slurm.describe``).
"""

import csv
import html
import io
import math
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from iluvattnshun import rundir
from iluvattnshun.files import atomic_write, check_writable
from iluvattnshun.sweep.plan import SweepError
from iluvattnshun.sweep import slurm
from iluvattnshun.sweep.record import read_record, read_status, record_dir

STOP_STATUSES = {
    128 + int(sig): sig.name for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
}
"""Exit statuses of a run stopped by a signal (after saving its checkpoint); USR1 / USR2 are a scheduler's warning."""


@dataclass
class RunResult:
    """What a run left behind: its config, its validation scalars and its state."""

    index: int
    """Index of the run in the sweep (the ``i`` of ``<prefix>_<i>``)."""
    run_name: str
    """``<prefix>_<i>``."""
    state: str
    """``finished``, ``stopped at step N (SIGTERM)``, ``crashed (exit N)``, ``no events``, ``running``, ``pending``
    or ``unknown`` (no record); on SLURM also ``requeued``, ``timed out at step N``, ``cancelled at step N``,
    ``failed (...)``, with `` (requeued Kx)`` after a requeue."""
    run_dir: Path | None = None
    """The run directory, None when the run has not created one."""
    config: dict[str, Any] = field(default_factory=dict)
    """The run's config (from its YAML; from the sweep's overrides when there is no YAML)."""
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """Validation scalars: tag -> ``[(step, value)]`` sorted by step."""
    job: slurm.JobState | None = None
    """The run's SLURM job (id, state, requeues); None for a tmux sweep."""
    unreadable: list[Path] = field(default_factory=list)
    """Events files of the run directory that hold no readable event (their metrics are missing from ``scalars``)."""

    def final(self, tag: str) -> float | None:
        """The last logged value of ``tag``."""
        points = self.scalars.get(tag)
        return points[-1][1] if points else None

    def best(self, tag: str) -> float | None:
        """The best logged value of ``tag`` (lowest for losses, highest otherwise); NaNs are ignored."""
        values = [v for _, v in self.scalars.get(tag, []) if not math.isnan(v)]
        if not values:
            return None
        return min(values) if lower_is_better(tag) else max(values)

    @property
    def step(self) -> int | None:
        """The last step with a validation scalar."""
        steps = [points[-1][0] for points in self.scalars.values() if points]
        return max(steps) if steps else None


def lower_is_better(tag: str) -> bool:
    """Whether smaller values of a metric are better (losses, perplexities, errors; not accuracies)."""
    name = tag.split("/", 1)[-1].lower()
    return re.search(r"loss|perplexity|ppl|error", name) is not None and "acc" not in name


def _natural_key(text: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t]


def read_scalars(run_dir: Path, mode: str = "val") -> dict[str, list[tuple[int, float]]]:
    """The scalars under ``<mode>/`` in a run directory's TensorBoard events (duplicate steps: last wins).

    The events files are read one by one, in name order as TensorBoard reads a directory; one that cannot be read
    (a directory under an events file's name, say) is skipped (``unreadable_event_files`` names it)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, dict[int, float]] = {}
    for path in sorted(run_dir.glob("*tfevents*")):
        if not path.is_file():
            continue
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
        try:
            acc.Reload()
        except OSError:
            continue
        tags = acc.Tags()
        for tag in tags.get("scalars", []):
            if tag.startswith(mode + "/"):
                for event in acc.Scalars(tag):
                    series.setdefault(tag, {})[int(event.step)] = float(event.value)
        # Newer writers may log scalars as rank-0 tensors rather than simple values.
        for tag in tags.get("tensors", []):
            if tag.startswith(mode + "/") and tag not in tags.get("scalars", []):
                from tensorboard.util import tensor_util

                for event in acc.Tensors(tag):
                    value = tensor_util.make_ndarray(event.tensor_proto)
                    if value.size == 1 and value.dtype.kind in "fiu":
                        series.setdefault(tag, {})[int(event.step)] = float(value.reshape(()))
    return {tag: sorted(points.items()) for tag, points in series.items()}


def unreadable_event_files(run_dir: Path) -> list[Path]:
    """The TensorBoard events files of a run directory that hold bytes but no readable event (garbage, or another
    kind of file under an events file's name), or that are not files: TensorBoard skips or trips over them."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    bad = []
    for path in sorted(run_dir.glob("*tfevents*")):
        try:
            if not path.is_file():  # a directory under an events file's name, say
                bad.append(path)
                continue
            if path.stat().st_size == 0:  # empty: a writer that has just started
                continue
            if next(iter(EventFileLoader(str(path)).Load()), None) is None:  # a real file opens with its version
                bad.append(path)
        except OSError:
            bad.append(path)
    return bad


def _read_config(run: rundir.RunDir) -> dict[str, Any]:
    try:
        config = yaml.safe_load(run.config_path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return _flatten(config) if isinstance(config, dict) else {}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_sweep(
    logdir: str | os.PathLike[str], prefix: str, status_dir: str | os.PathLike[str] | None = None, mode: str = "val"
) -> tuple[list[RunResult], int]:
    """Collects the runs named ``<prefix>_<i>`` under ``logdir`` with their configs, scalars and states.

    With a sweep record (``<logdir>/.sweeps/<prefix>``, or ``status_dir``), every run of the sweep is
    listed, also those that have no run directory yet; run directories that predate the sweep's launch
    (from an earlier sweep with the same prefix) are left out. For each run name the newest run
    directory is used.

    Returns:
        The runs in index order, and how many older run directories were left out.
    """
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise SweepError(f"log directory {str(logdir)!r} does not exist")
    rdir = Path(status_dir) if status_dir is not None else record_dir(logdir, prefix)
    record = read_record(rdir)
    launched_at = float(record["launched_at"]) if record is not None else None
    recorded = {int(r["index"]): r for r in record["runs"]} if record is not None else {}
    jobs = slurm.job_states(record, rdir) if record is not None else {}

    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)$")
    newest: dict[int, rundir.RunDir] = {}
    older = 0
    for run in rundir.list_runs(logdir):  # oldest first: a later run of the same name replaces an earlier one
        m = pattern.match(run.name)
        if not m:
            continue
        index = int(m.group(1))
        started = (run.config_path if run.config_path.exists() else run.path).stat().st_mtime
        # Two seconds of slack: the record is written just before tmux starts the runs.
        if launched_at is not None and started < launched_at - 2.0:
            older += 1
            continue
        older += index in newest
        newest[index] = run

    results = []
    for index in sorted(set(newest) | set(recorded)):
        found = newest.get(index)
        run_dir = found.path if found is not None else None
        config = _read_config(found) if found is not None else {}
        if not config and index in recorded:
            config = {k: True if v is None else yaml.safe_load(v) for k, v in recorded[index]["overrides"]}
        scalars = read_scalars(run_dir, mode) if run_dir is not None else {}
        unreadable = unreadable_event_files(run_dir) if run_dir is not None else []
        status = read_status(rdir, index) if index in recorded else None
        saved = found.checkpoints() if found is not None else []
        saved_step = rundir.checkpoint_step(saved[-1]) if saved else None
        scheduler_state = slurm.describe(jobs.get(index), status, saved_step) if index in recorded else None
        if scheduler_state is not None:
            state = scheduler_state
        elif index not in recorded:
            state = "unknown" if scalars else "no events"
        elif status in STOP_STATUSES:
            state = f"stopped at step {saved_step if saved_step is not None else '?'} ({STOP_STATUSES[status]})"
        elif status is not None and status != 0:
            state = f"crashed (exit {status})"
        elif status == 0:
            state = "finished" if scalars else "no events"
        else:
            state = "running" if run_dir is not None else "pending"
        job = jobs.get(index)
        if scheduler_state is None and job is not None and job.requeues:
            state += f" (requeued {job.requeues}x)"
        name = recorded[index]["run_name"] if index in recorded else f"{prefix}_{index}"
        results.append(
            RunResult(
                index=index,
                run_name=name,
                state=state,
                run_dir=run_dir,
                config=config,
                scalars=scalars,
                job=job,
                unreadable=unreadable,
            )
        )
    return results, older


def swept_params(results: Sequence[RunResult]) -> list[str]:
    """Config keys whose values differ between the runs that have them (``run_name`` excluded), in config order.

    Runs without a config YAML only know their overrides, so a key they lack does not count as a difference.
    """
    keys: dict[str, None] = {}
    for r in results:
        keys.update(dict.fromkeys(r.config))
    keys.pop("run_name", None)
    return [k for k in keys if len({repr(r.config[k]) for r in results if k in r.config}) > 1]


def metric_tags(results: Sequence[RunResult]) -> list[str]:
    """Every scalar tag of the runs: loss, accuracy and depth reach first, then the rest in natural order."""
    tags = {t for r in results for t in r.scalars}
    first = {"loss": 0, "accuracy": 1, "depth_reach_90": 2, "depth_reach_99": 3}

    def key(tag: str) -> tuple[int, list[Any]]:
        return (first.get(tag.split("/", 1)[-1], len(first)), _natural_key(tag))

    return sorted(tags, key=key)


def resolve_tag(name: str, tags: Sequence[str], mode: str = "val") -> str:
    """A metric name as given on the command line (``val/accuracy`` or ``accuracy``) -> a tag."""
    for candidate in (name, f"{mode}/{name}"):
        if candidate in tags:
            return candidate
    raise SweepError(f"--sort {name!r}: no run logged this metric; available: {', '.join(tags) or 'none'}")


def sort_results(results: Sequence[RunResult], tag: str | None, by: str = "best") -> list[RunResult]:
    """Runs ordered best first by ``tag`` (its best or final value); runs without it go last."""
    if tag is None:
        return list(results)
    sign = 1.0 if lower_is_better(tag) else -1.0

    def key(r: RunResult) -> tuple[bool, float, int]:
        value = r.best(tag) if by == "best" else r.final(tag)
        missing = value is None or math.isnan(value)
        return (missing, 0.0 if missing or value is None else sign * value, r.index)

    return sorted(results, key=key)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"  # as on the command line and in the YAML
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_rows(
    results: Sequence[RunResult], params: Sequence[str], tags: Sequence[str]
) -> tuple[list[str], list[list[str]]]:
    """The console table: run, swept params, state, last step, then ``final (best)`` per metric."""
    headers = ["run", *params, "state", "step", *(t.split("/", 1)[-1] for t in tags)]
    rows = []
    for r in results:
        cells = [r.run_name, *(_fmt(r.config.get(p)) for p in params), r.state, _fmt(r.step)]
        for t in tags:
            final, best = r.final(t), r.best(t)
            cells.append("-" if final is None else f"{_fmt(final)} ({_fmt(best)})")
        rows.append(cells)
    return headers, rows


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligns a table in columns for the console."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def csv_text(results: Sequence[RunResult], params: Sequence[str], tags: Sequence[str]) -> str:
    """The summary as CSV: run, run_dir, state, step, swept params, then ``final <tag>`` and ``best <tag>``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["run", "run_dir", "state", "step", *params, *(f"{k} {t}" for t in tags for k in ("final", "best"))]
    )
    for r in results:
        metrics = [v for t in tags for v in (r.final(t), r.best(t))]
        writer.writerow(
            [
                r.run_name,
                "" if r.run_dir is None else str(r.run_dir),
                r.state,
                "" if r.step is None else r.step,
                *(
                    (
                        ""
                        if r.config.get(p) is None
                        else _fmt(r.config[p]) if isinstance(r.config[p], bool) else r.config[p]
                    )
                    for p in params
                ),
                *("" if v is None else repr(v) for v in metrics),
            ]
        )
    return out.getvalue()


def _label(r: RunResult, params: Sequence[str]) -> str:
    settings = ", ".join(f"{p}={_fmt(r.config.get(p))}" for p in params)
    return f"{r.run_name} ({settings})" if settings else r.run_name


def figures(results: Sequence[RunResult], params: Sequence[str], tag: str | None, by: str = "best") -> list[Any]:
    """Plotly figures of a sweep: ``tag`` against each swept parameter (one line per setting of the
    other parameters), per-depth accuracy (one line per run) and ``tag`` over training steps."""
    import plotly.graph_objects as go

    figs: list[Any] = []
    if tag is not None:
        for p in params:
            others = [q for q in params if q != p]
            groups: dict[str, list[tuple[Any, float, str]]] = {}
            for r in results:
                value = r.best(tag) if by == "best" else r.final(tag)
                if value is None or p not in r.config:
                    continue
                group = ", ".join(f"{q}={_fmt(r.config.get(q))}" for q in others) or tag
                groups.setdefault(group, []).append((r.config[p], value, r.run_name))
            if not groups:
                continue
            numeric = all(isinstance(x, (int, float)) for pts in groups.values() for x, _, _ in pts)
            fig = go.Figure()
            for group, pts in sorted(groups.items(), key=lambda kv: _natural_key(kv[0])):
                pts.sort(key=lambda t: t[0] if numeric else _natural_key(str(t[0])))
                fig.add_trace(
                    go.Scatter(
                        x=[x if numeric else str(x) for x, _, _ in pts],
                        y=[y for _, y, _ in pts],
                        text=[n for _, _, n in pts],
                        mode="lines+markers",
                        name=group,
                        hovertemplate=f"%{{text}}<br>{html.escape(p)}=%{{x}}<br>%{{y:.4g}}<extra></extra>",
                    )
                )
            fig.update_layout(
                title={"text": html.escape(f"{by} {tag} vs {p}"), "x": 0.5},
                xaxis={
                    "title": {"text": html.escape(p)},
                    "type": "linear" if numeric else "category",
                    # Ticks at the swept values only: no "1.5 layers" between them.
                    "tickvals": sorted({x for pts in groups.values() for x, _, _ in pts}) if numeric else None,
                },
                yaxis={"title": {"text": html.escape(f"{by} {tag}")}},
                template="plotly_white",
                width=800,
                height=450,
            )
            figs.append(fig)

    depth_tags: dict[str, dict[str, dict[int | str, float]]] = {}
    for r in results:
        for t in r.scalars:
            m = re.match(r"^(.*depth.*)/(\d+)$", t)
            final = r.final(t)
            if m and final is not None and 0.0 <= final <= 1.0:
                depth_tags.setdefault(m.group(1), {}).setdefault(_label(r, params), {})[int(m.group(2))] = final
    if depth_tags:
        from iluvattnshun.viz import accuracy_per_depth_fig

        for base, runs in sorted(depth_tags.items()):
            figs.append(accuracy_per_depth_fig(runs, title=f"final {base}"))

    if tag is not None:
        fig = go.Figure()
        for r in results:
            if tag in r.scalars:
                curve = r.scalars[tag]
                fig.add_trace(
                    go.Scatter(
                        x=[s for s, _ in curve], y=[v for _, v in curve], mode="lines+markers", name=_label(r, params)
                    )
                )
        fig.update_layout(
            title={"text": html.escape(f"{tag} during training"), "x": 0.5},
            xaxis={"title": {"text": "step"}},
            yaxis={"title": {"text": html.escape(tag)}},
            template="plotly_white",
            width=800,
            height=450,
        )
        figs.append(fig)
    return figs


def html_page(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], figs: Sequence[Any]) -> str:
    """One self-contained page (plotly.js embedded, opens offline): the summary table and the figures."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;white-space:nowrap}th{background:#f4f4f4}</style>",
        f"</head><body><h2>{html.escape(title)}</h2>",
        "<p>metrics: final (best)</p>",
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
    ]
    for i, fig in enumerate(figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def summarize(
    logdir: str | os.PathLike[str],
    prefix: str,
    *,
    sort: str | None = None,
    by: str = "best",
    csv_path: str | os.PathLike[str] | None = None,
    html_path: str | os.PathLike[str] | None = None,
    status_dir: str | os.PathLike[str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> str:
    """Summarizes sweep ``prefix`` under ``logdir``: returns the console table, optionally writes CSV/HTML.

    Args:
        logdir: the task's log directory (``logs/<task>``).
        prefix: the sweep's run-name prefix.
        sort: metric to sort by (``val/accuracy`` or ``accuracy``); default accuracy, else loss.
        by: sort by each run's ``best`` or ``final`` value.
        csv_path: where to write the CSV.
        html_path: where to write the plotly HTML page.
        status_dir: the sweep record directory, if not ``<logdir>/.sweeps/<prefix>``.
        warn: called with one line for each events file that holds no readable event (the table shows its run's
            metrics as missing).
    """
    if by not in ("best", "final"):
        raise SweepError(f"--by {by!r}: expected 'best' or 'final'")
    for flag, out in (("--csv", csv_path), ("--html", html_path)):
        if out is not None:
            if Path(out).is_dir():
                raise SweepError(f"{flag} {str(out)!r} is a directory; give a file name")
            try:
                check_writable(Path(out).parent, flag)  # before the events are read: nothing is lost to a bad path
            except ValueError as e:
                raise SweepError(str(e)) from None
    results, older = load_sweep(logdir, prefix, status_dir)
    for r in results:
        for path in r.unreadable:
            if warn is not None:
                warn(f"{r.run_name}: {path} holds no readable TensorBoard event (corrupt?); its metrics are missing")
    if not results:
        raise SweepError(f"no runs named run_<N>_{prefix}_<i> in {str(logdir)!r} and no sweep record for {prefix!r}")
    tags = metric_tags(results)
    if sort is not None:
        tag: str | None = resolve_tag(sort, tags)
    else:
        tag = next((t for t in ("val/accuracy", "val/loss") if t in tags), tags[0] if tags else None)
    params = swept_params(results)
    ordered = sort_results(results, tag, by)
    headers, rows = table_rows(ordered, params, tags)
    if csv_path is not None:
        atomic_write(Path(csv_path), csv_text(ordered, params, tags))
    if html_path is not None:
        title = f"sweep {prefix} ({logdir})"
        atomic_write(Path(html_path), html_page(title, headers, rows, figures(ordered, params, tag, by)))
    states: dict[str, int] = {}
    for r in results:
        kind = re.split(r" at step| \(|,", r.state)[0]  # "timed out at step 40 (requeued 1x)" -> "timed out"
        states[kind] = states.get(kind, 0) + 1
    lines = [
        f"sweep {prefix!r} in {logdir}: {len(results)} runs ("
        + ", ".join(f"{n} {s}" for s, n in states.items())
        + ")"
        + ("" if tag is None else f", sorted by {by} {tag}")
        + "; metrics are final (best)",
        format_table(headers, rows),
    ]
    if older:
        lines.append(f"({older} older run directories with the same names were left out)")
    return "\n".join(lines)
