"""A sweep's live progress: each run's step, a chosen metric and its ETA, refreshed in place while the grid runs.

Read from what the runs already write: their TensorBoard events (``train/eta_min``, the metric) and their config
(``max_steps``). The events are read incrementally, so a poll costs only what was written since the last one.
"""

import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator, TextIO

import yaml

from iluvattnshun import rundir
from iluvattnshun.logger import format_duration


class _Events:
    """One run directory's TensorBoard scalars, read incrementally across polls."""

    def __init__(self, path: Path, max_steps: int | None) -> None:
        self.path = path
        self.max_steps = max_steps
        self.loaders: dict[Path, Iterator[Any]] = {}
        self.last: dict[str, tuple[int, float]] = {}
        self.step = 0

    def poll(self) -> None:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
        from tensorboard.util import tensor_util

        for file in sorted(self.path.glob("events.out.tfevents.*")):
            if file not in self.loaders:
                self.loaders[file] = EventFileLoader(str(file))
            for event in self.loaders[file].Load():  # type: ignore[attr-defined]
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        number = float(value.simple_value)
                    elif value.HasField("tensor") and not value.tensor.string_val:
                        array = tensor_util.make_ndarray(value.tensor)
                        if array.size != 1:
                            continue  # images, histograms
                        number = float(array.reshape(()))
                    else:
                        continue
                    self.last[value.tag] = (int(event.step), number)
                    self.step = max(self.step, int(event.step))  # the final evaluation's step too


def _max_steps(run: rundir.RunDir) -> int | None:
    try:
        config = yaml.safe_load(run.config_path.read_text()[:1_000_000])
        value = config.get("max_steps") if isinstance(config, dict) else None
        return int(value) if isinstance(value, int) else None
    except (OSError, yaml.YAMLError):
        return None


class SweepProgress:
    """Progress lines of a sweep's runs ``<prefix>_<i>``; ``render`` draws them, in place on a terminal."""

    def __init__(self, logdir: Path, prefix: str, indices: list[int], metric: str = "val/depth_reach_90") -> None:
        self.logdir = logdir
        self.prefix = prefix
        self.indices = indices
        self.metric = metric
        self.events: dict[int, _Events] = {}
        self.runs: dict[int, rundir.RunDir] = {}
        self.launched = time.time()
        self.drawn = 0  # lines drawn by the last in-place render
        self.last_plain = 0.0

    def _find_runs(self) -> None:
        pattern = re.compile(rf"^{re.escape(self.prefix)}_(\d+)$")
        for run in rundir.list_runs(self.logdir):  # oldest first: the newest directory of a name wins
            m = pattern.match(run.name)
            if m and int(m.group(1)) in self.indices:
                index = int(m.group(1))
                self.runs[index] = run
                if index not in self.events or self.events[index].path != run.path:
                    self.events[index] = _Events(run.path, _max_steps(run))

    def lines(self, statuses: dict[int, int | None]) -> list[str]:
        """One line per run: name, step / max_steps, the metric, ETA or exit status."""
        self._find_runs()
        out = []
        for i in self.indices:
            name = f"{self.prefix}_{i}"
            ev = self.events.get(i)
            status = statuses.get(i)
            if ev is None:
                out.append(f"{name:<12} {'done' if status is not None else 'waiting'}")
                continue
            ev.poll()
            if ev.max_steps is None:  # the run's config may not have been written at the first look
                ev.max_steps = _max_steps(self.runs[i])
            steps = f"step {ev.step:,}" + (f"/{ev.max_steps:,}" if ev.max_steps else "")
            metric = ev.last.get(self.metric)
            shown = f"{self.metric.split('/')[-1]} {metric[1]:g}" if metric is not None else ""
            if status is not None:
                tail = "finished" if status == 0 else f"exit {status}"
            else:
                eta = ev.last.get("train/eta_min")
                tail = f"eta {format_duration(eta[1] * 60)}" if eta is not None and math.isfinite(eta[1]) else ""
            out.append(f"{name:<12} {steps:<22} {shown:<24} {tail}")
        return out

    def render(self, statuses: dict[int, int | None], stream: TextIO = sys.stdout, every_s: float = 60.0) -> None:
        """Redraw the lines in place on a terminal; elsewhere (a log file) print them every ``every_s``."""
        done = sum(s is not None for s in statuses.values())
        header = f"{done}/{len(self.indices)} runs ended, {format_duration(time.time() - self.launched)} waited"
        lines = [header, *self.lines(statuses)]
        if stream.isatty():
            if self.drawn:
                stream.write(f"\x1b[{self.drawn}F")  # back to the first line of the last drawing
            stream.write("".join(f"\x1b[2K{line}\n" for line in lines))
            self.drawn = len(lines)
        elif time.time() - self.last_plain >= every_s or done == len(self.indices):
            stream.write("\n".join(lines) + "\n")
            self.last_plain = time.time()
        stream.flush()
