"""What the training loop carries from one step to the next: ``LoopState`` (the models it calls, its batch stream,
its clocks, the last save, the pending non-finite flag) and ``LogWindow`` (the sums behind one line of training metrics).

``Progress`` (in ``checkpoint.py``) is the part of the loop's state that a checkpoint keeps; what is here lasts one
session of a run and starts afresh on resume.
"""

import collections.abc
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from iluvattnshun.batches import WaitTimer
from iluvattnshun.checkpoint import Progress


def cost_between(step_cost: Callable[[int], float], start: int, end: int) -> float:
    """Sum of ``step_cost`` over steps ``start .. end - 1``, sampled at 200 evenly spaced steps when longer."""
    if end <= start:
        return 0.0
    stride = max(1, (end - start) // 200)
    return sum(step_cost(s) * min(stride, end - s) for s in range(start, end, stride))


def steps_left_in_epochs(progress: Progress, loader: object, num_epochs: int, grad_accum_steps: int) -> int | None:
    """Optimizer steps left until ``num_epochs`` epochs of ``loader`` are done (None: no epoch budget, or a loader
    without a length, like a stream)."""
    length = len(loader) if isinstance(loader, collections.abc.Sized) else None
    if num_epochs <= 0 or not length:
        return None
    return math.ceil((num_epochs * length - (progress.epoch * length + progress.batch_idx)) / grad_accum_steps)


@dataclass
class LogWindow:
    """Sums over the steps since training metrics were last logged.

    Loss and gradient-norm sums stay device tensors, read back only when the window is logged (no host sync per
    step).
    """

    device: torch.device
    start_time: float
    start_step: int
    start_samples: int
    start_tokens: int
    loss_sum: torch.Tensor = field(init=False)
    loss_weight: int = 0
    grad_norm_sum: torch.Tensor = field(init=False)
    grad_norm_count: int = 0

    def __post_init__(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.grad_norm_sum = torch.zeros((), device=self.device)

    @classmethod
    def open(cls, progress: Progress, device: torch.device) -> "LogWindow":
        """A window starting now, at ``progress``'s counters."""
        return cls(
            device=device,
            start_time=time.time(),
            start_step=progress.step,
            start_samples=progress.samples_seen,
            start_tokens=progress.tokens_seen,
        )

    def add_loss(self, loss: torch.Tensor, weight: int) -> None:
        """Add one micro-batch's (detached, float) loss, weighted by its batch size."""
        self.loss_sum = self.loss_sum + loss * weight
        self.loss_weight += weight

    def add_grad_norm(self, grad_norm: torch.Tensor) -> None:
        """Add the gradient norm of one optimizer step that was taken."""
        self.grad_norm_sum = self.grad_norm_sum + grad_norm.detach().float()
        self.grad_norm_count += 1

    def metrics(self, progress: Progress, lr: float, now: float, data_wait_s: float) -> dict[str, Any]:
        """Loss, learning rate, gradient norm, throughput, and ``data_wait``: the share of the window's time spent
        waiting for batches (``data_wait_s`` of it)."""
        dt = max(now - self.start_time, 1e-9)
        metrics: dict[str, Any] = {}
        if self.loss_weight:
            metrics["loss"] = float(self.loss_sum) / self.loss_weight
        metrics["lr"] = lr
        if self.grad_norm_count:
            metrics["grad_norm"] = float(self.grad_norm_sum) / self.grad_norm_count
        metrics["samples_per_s"] = (progress.samples_seen - self.start_samples) / dt
        if progress.tokens_seen > self.start_tokens:
            metrics["tokens_per_s"] = (progress.tokens_seen - self.start_tokens) / dt
        metrics["steps_per_s"] = (progress.step - self.start_step) / dt
        metrics["data_wait"] = min(data_wait_s / dt, 1.0)
        return metrics


@dataclass
class LoopState:
    """What the loop carries between steps; created once per ``run()``, when the loop starts."""

    fwd_model: nn.Module
    """What evaluation calls: the plain module, or its ``torch.compile`` wrapper."""
    train_model: nn.Module
    """What training calls: ``fwd_model``, wrapped in ``DistributedDataParallel`` in a distributed run."""
    data: WaitTimer[tuple[int, int, Any]]
    """The stream of ``(epoch, position, batch)`` the loop draws from, timing each wait for a batch."""
    check_each_step: bool
    """Check every step's loss and gradient norm on the host (CPU, or skip_nonfinite); else ``nonfinite`` gathers
    the flags on the device and is read when logging or saving."""
    window: LogWindow
    clock: float = field(default_factory=time.time)
    """When training time was last folded into ``progress.train_time_s``."""
    session_start: float = field(default_factory=time.time)
    """When this session of the run started training (ETAs use this session's speed)."""
    session_start_step: int = 0
    last_save_time: float = field(default_factory=time.time)
    last_saved_step: int = -1
    """Step of the last checkpoint written by this session (-1: none yet)."""
    nonfinite: torch.Tensor | None = None
    """Whether a loss or gradient norm since the last check was not finite (device flag; None: none seen yet)."""

    def train_time(self, progress: Progress) -> float:
        """Seconds of training so far, over all sessions of the run; folds the time since the last call into
        ``progress``."""
        now = time.time()
        progress.train_time_s += now - self.clock
        self.clock = now
        return progress.train_time_s

    def eta_seconds(
        self,
        progress: Progress,
        step_cost: Callable[[int], float],
        max_minutes: float | None,
        max_steps: int | None,
        steps_left_in_epochs: int | None,
    ) -> float | None:
        """Seconds left under the tightest budget, from this session's time per unit of ``step_cost`` (so a task
        whose later steps cost more gets an ETA that expects it; None: no budget)."""
        elapsed = time.time() - self.session_start
        done = cost_between(step_cost, self.session_start_step, progress.step)
        per_unit = elapsed / done if elapsed > 0 and done > 0 else None
        etas = []
        if max_minutes is not None:
            etas.append(max_minutes * 60 - self.train_time(progress))
        if per_unit is not None:
            if max_steps is not None:
                etas.append(cost_between(step_cost, progress.step, max_steps) * per_unit)
            if steps_left_in_epochs is not None:
                etas.append(cost_between(step_cost, progress.step, progress.step + steps_left_in_epochs) * per_unit)
        return max(0.0, min(etas)) if etas else None

    def note_nonfinite(self, bad: torch.Tensor) -> None:
        """Remember a step's device flag (loss or gradient norm not finite) without reading it back."""
        self.nonfinite = bad if self.nonfinite is None else self.nonfinite | bad

    def nonfinite_flag(self) -> float:
        """1.0 when a non-finite value was seen since the loop started, else 0.0 (reads the device flag)."""
        return float(self.nonfinite) if self.nonfinite is not None else 0.0
