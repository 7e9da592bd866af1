"""Console frames and TensorBoard logging for a run directory.

``Logger`` prints one frame per logged event (a header with mode, epoch, samples, step, time, iteration time
and run name, then one metric per line) and mirrors everything to TensorBoard under ``<mode>/<metric>``;
dict metrics nest as ``<mode>/<metric>/<key>``. ``NullLogger`` has the same interface and does nothing: it
is what non-zero ranks of a distributed run get.
"""

import math
import os
import shutil
import sys
import time
from typing import Any, Mapping, TextIO

import numpy as np
import torch

from iluvattnshun.files import atomic_write

_RESET = "\x1b[0m"
_BOLD = "\x1b[1m"
_DIM = "\x1b[2m"
_COLORS = {"train": "\x1b[32m", "val": "\x1b[33m", "text": "\x1b[35m"}
_CYAN = "\x1b[36m"
_BLUE = "\x1b[34m"

MetricValue = float | int | str | Mapping[str, Any]


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1h 2m 5s``; ``42.3`` -> ``42s``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    hours, rem = divmod(int(seconds), 3600)
    minutes, secs = divmod(rem, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def format_value(value: Any, precision: int = 4) -> str:
    """Ints with thousands separators; floats with ``precision`` decimals, scientific when small."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0.0 and abs(value) < 10 ** -(precision - 1):
            return f"{value:.{precision}e}"
        return f"{value:,.{precision}f}"
    return str(value)


def _use_color(stream: TextIO, use_color: bool | None) -> bool:
    if use_color is not None:
        return use_color
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))  # bools included: they plot as 0/1


class Logger:
    """Writes console frames and TensorBoard events for one run directory.

    Args:
        log_dir: the run directory (TensorBoard events and ``log_text`` files go here).
        precision: decimals for floats on the console.
        log_every_n_seconds: ``should_log``/``log_metrics`` throttle per mode; 0 logs every call.
        run_name: shown in every header.
        use_color: force colour on/off; None colours only a TTY without ``NO_COLOR``.
        stream: where frames go (default ``sys.stdout``).
        purge_step: when resuming from step T, hide events at steps >= T written after that checkpoint by the
            run that crashed, so that curves do not double back.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        precision: int = 4,
        log_every_n_seconds: float = 10.0,
        run_name: str | None = None,
        use_color: bool | None = None,
        stream: TextIO | None = None,
        purge_step: int | None = None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter  # deferred: slow import, unused by NullLogger

        self.log_dir = os.fspath(log_dir)
        self.precision = precision
        self.log_every_n_seconds = log_every_n_seconds
        self.run_name = run_name or os.path.basename(os.path.normpath(self.log_dir))
        self.stream = stream if stream is not None else sys.stdout
        self.color = _use_color(self.stream, use_color)
        self.start_time = time.time()
        self._last_log: dict[str, tuple[float, int]] = {}
        os.makedirs(self.log_dir, exist_ok=True)
        self.writer: Any = SummaryWriter(self.log_dir, purge_step=purge_step)
        self.enabled = True  # False for NullLogger

    # -- helpers -----------------------------------------------------------------------------------------------

    def _c(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.color else text

    def _rule(self, char: str = "─") -> str:
        width = min(shutil.get_terminal_size((100, 24)).columns, 100)
        return self._c(_BLUE, char * width)

    def _emit(self, lines: list[str]) -> None:
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()

    def should_log(self, mode: str) -> bool:
        """Whether ``log_every_n_seconds`` has passed since the last ``mode`` frame (always true the first time)."""
        if not self.enabled:
            return False
        last = self._last_log.get(mode)
        return last is None or time.time() - last[0] >= self.log_every_n_seconds

    # -- metrics -----------------------------------------------------------------------------------------------

    def log_metrics(
        self,
        metrics: Mapping[str, MetricValue],
        mode: str,
        step: int,
        header: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Log metrics to the console and TensorBoard (numbers as scalars, strings as text, dicts nested).

        Args:
            metrics: name -> float/int, str, or a dict of name -> float (e.g. per-depth accuracy).
            mode: ``train``, ``val``, ... (the TensorBoard tag prefix and header label).
            step: the global step (TensorBoard x axis).
            header: extra header fields shown before step/time, e.g. ``{"epoch": 1, "samples": 12800}``.
            force: log even if ``log_every_n_seconds`` has not passed.

        Returns:
            True if logged, False if throttled.
        """
        if not self.enabled or (not force and not self.should_log(mode)):
            return False
        now = time.time()
        last = self._last_log.get(mode)
        iter_time = (now - last[0]) / (step - last[1]) if last is not None and step > last[1] else None
        self._last_log[mode] = (now, step)

        for name, value in metrics.items():
            tag = f"{mode}/{name}"
            if isinstance(value, Mapping):
                for key, sub in value.items():
                    if _is_number(sub):
                        self.writer.add_scalar(f"{tag}/{key}", float(sub), step)
            elif _is_number(value):
                self.writer.add_scalar(tag, float(value), step)
            else:
                self.writer.add_text(tag, _as_markdown_code(str(value)), step)

        fields: dict[str, str] = {k: format_value(v, self.precision) for k, v in (header or {}).items()}
        fields["step"] = format_value(step)
        fields["time"] = format_duration(now - self.start_time)
        if iter_time is not None:
            fields["iter"] = f"{iter_time * 1000:,.1f} ms" if iter_time < 10 else format_duration(iter_time)
        color = _COLORS.get(mode, _CYAN)
        head = self._c(_BOLD + color, f"{mode.upper():<5}") + " | "
        head += " | ".join(f"{k}: {self._c(_CYAN, v)}" for k, v in fields.items())
        head += " | " + self._c(_DIM, self.run_name)
        lines = [self._rule(), head, self._rule()]
        for name, value in metrics.items():
            lines.extend(self._metric_lines(name, value, color, indent=0))
        self._emit(lines)
        return True

    def _metric_lines(self, name: str, value: Any, color: str, indent: int) -> list[str]:
        label = " " * indent + name
        if isinstance(value, Mapping):
            out = [f"{label:<24}:"]
            for key, sub in value.items():
                out.extend(self._metric_lines(str(key), sub, color, indent + 4))
            return out
        text = format_value(value, self.precision)
        if "\n" in text:
            body = "\n".join(" " * (indent + 4) + line for line in text.splitlines())
            return [f"{label:<24}:", self._c(color, body)]
        return [f"{label:<24}: {self._c(color, text)}"]

    # -- text, images, hparams -------------------------------------------------------------------------------

    def log_text(self, name: str, text: str, save_to_file: bool = True, to_console: bool = False) -> None:
        """Log text to TensorBoard and, if ``save_to_file``, write it to ``<log_dir>/<name>`` atomically."""
        if not self.enabled:
            return
        self.writer.add_text(name, _as_markdown_code(text))
        if save_to_file:
            atomic_write(os.path.join(self.log_dir, name), text)
        if to_console:
            self.notice(name, text)

    def notice(self, title: str, text: str = "") -> None:
        """Print a titled text frame to the console only (notices such as 'saved checkpoint')."""
        if not self.enabled:
            return
        lines = [self._c(_BOLD + _COLORS["text"], title)]
        if text:
            lines.extend(text.splitlines())
        self._emit(lines)

    def log_image(self, tag: str, image: "np.ndarray[Any, Any] | torch.Tensor", step: int) -> None:
        """Log an (H, W, C) uint8 image (C = 1, 3 or 4) to TensorBoard.

        Raises:
            ValueError: for another shape or dtype.
        """
        if not self.enabled:
            return
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or array.dtype != np.uint8:
            raise ValueError(f"log_image expects an (H, W, 1|3|4) uint8 image, got {array.shape} {array.dtype}")
        self.writer.add_image(tag, array, step, dataformats="HWC")

    def log_hparams(self, hparams: Mapping[str, Any], final_metrics: Mapping[str, Any]) -> None:
        """Record the run's hyperparameters with its final metrics (TensorBoard HPARAMS tab).

        Final metrics are stored under ``final/<name>`` so that they do not add points to the regular curves.
        """
        if not self.enabled:
            return
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        flat: dict[str, float] = {}
        for name, value in final_metrics.items():
            if isinstance(value, Mapping):
                for key, sub in value.items():
                    if _is_number(sub):
                        flat[f"final/{name}/{key}"] = float(sub)
            elif _is_number(value):
                flat[f"final/{name}"] = float(value)
        self.writer.add_hparams(hp, flat, run_name=".")

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self.enabled:
            self.writer.close()


class NullLogger(Logger):
    """A logger that records nothing (non-zero ranks, and a trainer before ``run()``)."""

    def __init__(self) -> None:  # no directory, no writer: every method returns at its ``enabled`` check
        self.enabled = False
        self.log_every_n_seconds = math.inf


def _as_markdown_code(text: str) -> str:
    # TensorBoard renders text as markdown; indenting by four spaces keeps code and samples verbatim.
    return "\n".join("    " + line for line in text.splitlines()) or "    "
