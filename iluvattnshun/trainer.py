"""The training loop: ``TrainerConfig`` + ``Trainer``.

A task subclasses ``Trainer`` and fills in small hooks (``get_model``, ``get_optimizer``, ``get_loss``,
``get_train_dataloader``, ``get_val_dataloader``; optionally ``get_scheduler``, ``val_metrics``,
``post_val_metrics``, ``init_state``, ``on_run_start``, ``num_tokens``). ``Trainer(config).run()`` owns the
rest: run directory, logging, evaluation, budgets, gradient accumulation and clipping, bf16 autocast,
``torch.compile``, checkpoints (periodic, final, on Ctrl-C / SIGTERM), resume, and DDP under ``torchrun``.

Loop order for each optimizer step: take ``grad_accum_steps`` micro-batches from the stream of epochs ->
forward/backward each -> clip -> optimizer and scheduler step -> log (every ``log_every_n_seconds``) ->
evaluate (every ``eval_every_n_samples``) -> checkpoint (every ``save_every_n_seconds``) -> stop checks.

Dataloaders follow the protocol of ``batches.py`` (``set_epoch``, ``skip``: optional, for exact resume), shard by
``self.rank`` / ``self.world_size`` and must give every rank the same number of equally sized batches (DDP
synchronises every backward pass). What the loop carries between steps is one ``LoopState`` (``loop_state.py``).
"""

import contextlib
import dataclasses
import functools
import gc
import itertools
import math
import os
import re
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Literal, Mapping, TypeVar

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from iluvattnshun import distributed as tdist
from iluvattnshun import rundir, speed
from iluvattnshun.batches import WaitTimer, batch_size_of, batch_stream, first_token_count, move_to_device
from iluvattnshun.checkpoint import (
    Checkpoint,
    Progress,
    class_path,
    cleanup_temp_files,
    check_same_task,
    find_resume,
    get_rng_state,
    load_checkpoint,
    load_model_weights,
    read_checkpoint,
    prune_checkpoints,
    resume,
    seed_everything,
    set_rng_state,
    write_checkpoint,
)
from iluvattnshun.cli import ConfigError, StopSignals, check_parsed_from_command_line, run_from_command_line
from iluvattnshun.config import Config, config_to_dict, declared_config_class, get_yaml_string, short_repr
from iluvattnshun.files import check_writable
from iluvattnshun.logger import Logger, NullLogger, format_duration
from iluvattnshun.loop_state import LogWindow, LoopState, steps_left_in_epochs
from iluvattnshun.metrics import MetricSums
from iluvattnshun.optim import OptimConfig, build_optimizer, build_scheduler

__all__ = ["ConfigError", "NonFiniteLossError", "Trainer", "TrainerConfig", "class_path", "run_from_command_line"]

_SYNC_EVERY = 8
"""In a distributed run, ranks agree on time-based events (stop, save) every this many steps."""

MAX_RUN_NAME_BYTES = 150
"""Longest run name: its directory, YAML, script and TensorBoard event file names must fit the file system's limit."""


@dataclass(kw_only=True)
class TrainerConfig(Config):
    """Configuration of the training loop (tasks extend it with their own fields)."""

    TASK_DEFAULTS = {"tensorboard_logdir": "logs/{task}"}

    # Budget
    num_epochs: int = 1
    """Passes over the training data; -1 trains until another budget (or Ctrl-C) stops the run."""
    max_steps: int | None = None
    """Stop after this many optimizer steps in total (none: no limit)."""
    max_minutes: float | None = None
    """Stop after this many minutes of training in total, counted across resumes (none: no limit)."""

    # Optimisation
    batch_size: int = 32
    """Samples per micro-batch on each process."""
    grad_accum_steps: int = 1
    """Micro-batches whose gradients are summed (averaged) into one optimizer step."""
    grad_norm_max: float | None = 1.0
    """Clip the global gradient norm to this value (0 or none: no clipping)."""
    seed: int = 0
    """Seed for python, numpy and torch RNGs (rank r of a distributed run uses seed + r)."""
    device: str = "auto"
    """Device to train on: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ..."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """fp32, bf16 autocast for forward passes, or auto: the faster of the two for this device and shape, as
    measured (iluvattnshun/speed.py); the choice is printed at start and recorded in the run's config."""
    compile: bool | Literal["auto"] = "auto"
    """Compile the model with torch.compile: true, false, or auto (see precision)."""
    skip_nonfinite: bool = False
    """Skip optimizer steps whose loss or gradient norm is not finite instead of stopping the run."""

    # Evaluation
    eval_every_n_samples: int | None = 10_000
    """Evaluate on the validation set every this many training samples (0 or none: only at start and end)."""

    # Logging
    log_every_n_seconds: float = 10.0
    """Print and record training metrics at most this often (0: every step)."""
    log_fp: int = 4
    """Decimal places for floats on the console."""
    tensorboard_logdir: str = ""
    """Directory holding this task's run directories, run_<N>_<name>/ (empty: logs/<task>)."""
    run_name: str = ""
    """Name of the run (its directory is run_<N>_<name>); empty uses a timestamp. With --resume: the run to continue."""
    log_attention_maps: bool = False
    """Log attention-map images at evaluation time (tasks that support it)."""

    # Checkpointing
    save_every_n_seconds: float = 600.0
    """Write a checkpoint at most this often (0: only at the end and on Ctrl-C / SIGTERM)."""
    keep_last_n: int | None = None
    """Keep only the newest N checkpoints of the run, deleting older ones once a new one is written (none: keep all)."""
    overwrite_existing_checkpoints: bool = False
    """Each new checkpoint replaces the previous one (the original name for keep_last_n=1)."""
    save_model_path: str | None = None
    """Directory for checkpoints (none: the run directory)."""
    load_model_path: str | None = None
    """Initialise the model weights from this checkpoint (or state dict) file, then train as a new run."""
    resume: bool = False
    """Continue the latest checkpoint of the run directory named by run_name (empty: the newest run)."""

    def validate(self) -> None:
        super().validate()
        if self.num_epochs == 0 or self.num_epochs < -1:
            raise ValueError(f"num_epochs must be >= 1 or -1 (forever), got {self.num_epochs}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.seed < 2**63:  # numpy's generators take no negative seed, torch's none past 64 bits
            raise ValueError(f"seed must be in 0..2**63-1, got {self.seed}")
        if self.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if self.grad_norm_max is not None and not self.grad_norm_max >= 0:  # NaN too
            raise ValueError(f"grad_norm_max must be >= 0 (0 disables clipping), got {self.grad_norm_max}")
        if self.eval_every_n_samples is not None and self.eval_every_n_samples < 0:
            raise ValueError(f"eval_every_n_samples must be >= 0, got {self.eval_every_n_samples}")
        for name in ("log_every_n_seconds", "save_every_n_seconds"):
            if not getattr(self, name) >= 0:  # NaN too: every comparison with it is false, so it never fires
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_last_n is not None and self.keep_last_n < 1:
            raise ValueError(f"keep_last_n must be >= 1 (none keeps every checkpoint), got {self.keep_last_n}")
        if not 0 <= self.log_fp <= 20:
            raise ValueError(f"log_fp must be in 0..20 (decimal places), got {self.log_fp}")
        name = os.path.basename(os.path.normpath(self.run_name)) if self.resume else self.run_name
        if len(name.encode("utf-8")) > MAX_RUN_NAME_BYTES:
            # run_<N>_<name>.yaml and the TensorBoard event files must fit a file name (255 bytes on most systems).
            raise ValueError(f"run_name must be at most {MAX_RUN_NAME_BYTES} bytes, got {len(name.encode('utf-8'))}")
        if any(not ch.isprintable() for ch in self.run_name):
            # A newline or escape code would name a directory that run lookup, the console and tmux cannot show.
            raise ValueError(f"run_name must hold printable characters only, got {short_repr(self.run_name)}")
        if not self.resume and any(sep in self.run_name for sep in ("/", os.sep)):
            raise ValueError(f"run_name must not contain a path separator, got {self.run_name!r}")
        if self.resume and self.load_model_path:
            raise ValueError("use either --resume (continue a run) or --load_model_path (new run), not both")
        if self.device != "auto" and not re.fullmatch(r"cpu|mps|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be auto, cpu, mps, cuda or cuda:<index>, got {self.device!r}")


C = TypeVar("C", bound=TrainerConfig)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite and ``skip_nonfinite`` is off."""


def _nonfinite(what: str, saved: str) -> NonFiniteLossError:
    return NonFiniteLossError(
        f"{what}; {saved}. Lower the learning rate, set --grad_norm_max, or pass --skip_nonfinite to skip such steps."
    )


def _parameters_finite(model: nn.Module) -> bool:
    """Whether every parameter is finite (one device sync)."""
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


class _NonFiniteStep(Exception):
    pass


class _Interrupted(Exception):
    """A signal arrived during an evaluation: its partial metrics are dropped."""


class Trainer(ABC, Generic[C]):
    """Owns the training loop; subclasses provide the task through hook methods.

    During ``run()`` these attributes are available to hooks: ``config``, ``logger``, ``run_dir``, ``device``,
    ``rank``, ``world_size``, ``is_main``, ``model`` (the plain module), ``optimizer``, ``scheduler``,
    ``progress``.
    """

    # Set by run() before any hook that uses them is called.
    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler | None
    train_loader: Iterable[Any]
    val_loader: Iterable[Any]

    def __init__(self, config: C) -> None:
        """Store the (already validated) config and call ``init_state``; nothing touches the disk or the RNGs
        before ``run()``."""
        self.config: C = config
        self.rank = tdist.env_rank()
        self.world_size = tdist.env_world_size()
        self.local_rank = tdist.env_local_rank()
        self.is_main = self.rank == 0
        self.device = tdist.resolve_device(config.device, self.world_size, self.local_rank)
        self.logger: Logger = NullLogger()
        self.run_dir: str | None = None
        self.ckpt_dir: str | None = None
        self.progress = Progress()
        self.last_val_metrics: dict[str, Any] = {}
        self.stopped_by_signal: int | None = None
        """The signal (SIGINT, SIGTERM) that stopped the last ``run()`` after saving, or None."""
        self.speed = speed.SpeedChoice(
            config.compile is True, "fp32" if config.precision == "auto" else config.precision, ""
        )
        self._recorded_config: TrainerConfig = config
        """The config written to the run YAML and checkpoints (on resume: without resume=True)."""
        self._notices: list[tuple[str, str]] = []
        """Notices found before the logger exists, shown once it does."""
        self._resumed_from: str | None = None
        """The checkpoint this run resumed from (never pruned by keep_last_n)."""
        self._signals = StopSignals()
        self._loop: LoopState | None = None
        """What the loop carries between steps, while ``run()`` trains."""
        self.init_state()

    @classmethod
    def config_class(cls) -> type[TrainerConfig]:
        """The config class this trainer is declared for (``Trainer[TheConfig]``)."""
        config_class: type[TrainerConfig] = declared_config_class(cls, Trainer)
        return config_class

    @classmethod
    def main(
        cls,
        presets: Mapping[str, Callable[[], TrainerConfig]] | None = None,
        default_preset: str | None = None,
        argv: list[str] | None = None,
    ) -> None:
        """The command line of this trainer: ``--help``, ``--preset``, ``--config``, ``--field=value``; then train.

        ``if __name__ == "__main__": MyTrainer.main()`` is all a script needs.
        """
        run_from_command_line(cls.config_class(), cls, argv, presets, default_preset)

    # ------------------------------------------------------------------------------------------------------
    # Hooks

    def init_state(self) -> None:
        """Set up cheap task state; called at the end of ``__init__`` (no disk, no RNG: see ``setup``)."""

    def setup(self) -> None:
        """Load or build the task's data and check the settings that depend on it.

        Called at the start of ``run()``, after the RNGs are seeded and before the run directory exists; raise
        ``ValueError`` naming the field when the data rules a setting out (the run then stops with nothing
        created).
        """

    @abstractmethod
    def get_model(self) -> nn.Module:
        """Build the model (the trainer moves it to the device, compiles and wraps it)."""

    def get_optimizer(self, model: nn.Module) -> Optimizer:
        """Build the optimizer over ``model``'s parameters (default: the ``OptimConfig`` recipe, when the config
        is one)."""
        if not isinstance(self.config, OptimConfig):
            raise NotImplementedError(
                f"{type(self).__name__} must implement get_optimizer (its config has no OptimConfig)"
            )
        return build_optimizer(model, self.config, self.device)

    def get_scheduler(self, optimizer: Optimizer) -> LRScheduler | None:
        """Optionally build a learning-rate scheduler, stepped once per optimizer step (default: the
        ``OptimConfig`` schedule when the config is one, else none)."""
        if not isinstance(self.config, OptimConfig):
            return None
        return build_scheduler(optimizer, self.config, self.config.max_steps)

    @abstractmethod
    def get_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        """Return ``(scalar loss, predictions)`` for a batch.

        ``model`` is what to call: in training it may be wrapped (DDP, torch.compile), in evaluation it is the
        compiled or plain module. Use ``self.model`` for the plain module's own methods.
        """

    def val_metrics(self, model: nn.Module, batch: Any, preds: Any) -> Mapping[str, Any]:
        """Extra validation metrics for one batch (``model`` is the plain module, in eval mode).

        Values: floats or scalar tensors (averaged over batches and ranks, weighted by batch size), strings
        (the last one is kept), or dicts of floats averaged per key, e.g.
        ``{"accuracy": 0.9, "acc_per_depth": {"0": 1.0, "1": 0.8}}``.
        """
        return {}

    def post_val_metrics(self, model: nn.Module) -> Mapping[str, Any]:
        """Metrics computed once per evaluation, after the batches (e.g. sampled generations).

        Called on every rank with the plain model, so it may use collectives (e.g. to sum counts gathered in
        ``val_metrics``); the values are not averaged over ranks, and rank 0's are the ones logged.
        """
        return {}

    @abstractmethod
    def get_train_dataloader(self) -> Iterable[Any]:
        """The training batches of one epoch (re-iterated every epoch); see the module doc for the protocol."""

    @abstractmethod
    def get_val_dataloader(self) -> Iterable[Any]:
        """The validation batches (iterated fully at every evaluation)."""

    def on_run_start(self) -> None:
        """Called in ``run()`` once the run directory, logger, model and loaders exist (log dataset stats here)."""

    def task_classes(self) -> dict[str, type]:
        """The classes that define the task, most specific last, recorded in checkpoints for ``load_run``."""
        return {"config": type(self.config), "trainer": type(self)}

    def sequence_length(self) -> int | None:
        """Tokens per training sample, when the task knows it (``compile`` / ``precision`` auto use it)."""
        return None

    def num_tokens(self, batch: Any) -> int | None:
        """Tokens in a batch, for tokens/s: by default the size of the first int64 2-D tensor, else None."""
        return first_token_count(batch)

    def step_cost(self, step: int) -> float:
        """Relative cost of training step ``step`` (default 1: every step costs the same). A task whose steps get
        dearer (a growing curriculum) returns more for later steps, so that the ETA expects the slowdown."""
        return 1.0

    # ------------------------------------------------------------------------------------------------------
    # Setup

    @property
    def _distributed(self) -> bool:
        return self.world_size > 1

    def output_dirs(self) -> dict[str, str]:
        """The directories the run writes to, by the field that names them (checked writable before any work)."""
        cfg = self.config
        dirs = {"tensorboard_logdir": cfg.tensorboard_logdir}
        if cfg.save_model_path:
            dirs["save_model_path"] = cfg.save_model_path
        return dirs

    def _preflight(self, held: contextlib.ExitStack) -> tuple[str, str] | None:
        """Rank 0, before any work: the device exists, output directories are writable, the checkpoint to resume
        (held locked in ``held``) or ``load_model_path`` is readable. Returns the run directory and checkpoint to
        resume, if any."""
        cfg = self.config
        tdist.check_device(self.device, cfg.device)
        for field, directory in self.output_dirs().items():
            check_writable(directory, field)
        if cfg.load_model_path:
            if not os.path.isfile(cfg.load_model_path):
                what = "is not a file" if os.path.exists(cfg.load_model_path) else "does not exist"
                raise ValueError(f"load_model_path: {cfg.load_model_path!r} {what}")
            load_checkpoint(cfg.load_model_path)  # unreadable: refused now, not after the run directory exists
        if cfg.save_model_path and not cfg.resume:
            rundir.check_checkpoint_dir_unused(cfg.save_model_path)
        if not cfg.resume:
            return None
        run, path, skipped = find_resume(cfg.tensorboard_logdir, cfg.run_name, cfg.save_model_path)
        check_same_task(read_checkpoint(path), cfg, path)
        if skipped:
            self._notices.append(("resume: falling back", "\n".join(skipped)))
        held.enter_context(run.lock())  # a second process resuming this run is refused
        check_writable(run.path, "resume")
        if run.config_path.exists() and not run.config_path.is_file():  # the resumed run rewrites its config there
            raise ValueError(f"resume: {str(run.config_path)!r} is not a file")
        return str(run.path), path

    # ------------------------------------------------------------------------------------------------------
    # Run

    def run(self) -> None:
        """Train: set up the run directory, logger, model and data, run the loop, save, clean up.

        Raises:
            ConfigError: before any work, when the run cannot start with this config, or when the process's command
                line holds ``--field=value`` flags for this config that nothing parsed (use ``MyTrainer.main()``).
        """
        check_parsed_from_command_line(self.config, type(self).__name__)
        created_group = tdist.init_process_group(self.device)
        try:
            self._run()
        finally:
            loop, self._loop = self._loop, None
            if loop is not None and isinstance(loop.train_model, DistributedDataParallel):
                # DDP's reducer holds the group's pending work; freed at interpreter exit, after the group is
                # gone, it can abort the process ("terminate called without an active exception").
                del loop
                gc.collect()
            if created_group:
                tdist.destroy_process_group()

    def _run(self) -> None:
        cfg = self.config
        seed_everything(cfg.seed + self.rank)
        self._notices = []
        with contextlib.ExitStack() as held:
            try:
                # Everything that can refuse the run, before anything is created (a dataset cache aside).
                found = tdist.on_main_then_broadcast(lambda: self._preflight(held))
                resume_path, resume_ckpt = found if found is not None else (None, None)
                self._recorded_config = self.config
                self.setup()
                self.model = self.get_model().to(self.device)
                self.optimizer = self.get_optimizer(self.model)
                self.scheduler = self.get_scheduler(self.optimizer)
                rng_states: list[Any] = []
                if resume_ckpt is not None:  # the newest checkpoint that fits the model (of another shape: older)
                    resumed = resume(resume_ckpt, self.model, self.optimizer, self.scheduler, cfg, self.world_size)
                    resume_ckpt, self.progress, rng_states = resumed.path, resumed.progress, resumed.rng
                    self._notices += resumed.notices
                    # What the run records (YAML, checkpoints) reproduces the run: not "resume this directory".
                    run_name = cfg.run_name if resumed.run_name is None else resumed.run_name
                    self._recorded_config = dataclasses.replace(cfg, resume=False, run_name=run_name)
                elif cfg.load_model_path:
                    load_model_weights(cfg.load_model_path, self.model)
                    self._notices.append(("loaded model weights", cfg.load_model_path))
                self.train_loader = self.get_train_dataloader()
                self.val_loader = self.get_val_dataloader()
                dim_model = getattr(self.model, "dim_model", None)
                self.speed = speed.choose(self.device, cfg.compile, cfg.precision, dim_model, self.sequence_length())
                if "auto" in (cfg.compile, cfg.precision):
                    self._notices.append(
                        (f"speed: compile={self.speed.compile}, precision={self.speed.precision}", self.speed.reason)
                    )
                # What ran is what the run records: a rerun of its YAML makes the same choice.
                self._recorded_config = dataclasses.replace(
                    self._recorded_config, compile=self.speed.compile, precision=self.speed.precision
                )
            except (ValueError, OSError) as e:
                raise ConfigError(" ".join(str(e).split())) from e
            fresh = resume_path is None
            run_dir: str = resume_path or tdist.broadcast_object(  # a fresh one: rank 0 creates it, all get its path
                str(rundir.allocate(cfg.tensorboard_logdir, cfg.run_name or None).path) if self.is_main else ""
            )
            ckpt_dir = cfg.save_model_path or run_dir
            self.run_dir, self.ckpt_dir = run_dir, ckpt_dir
            self._resumed_from = resume_ckpt
            if cfg.save_model_path:
                claim = functools.partial(rundir.claim_checkpoint_dir, cfg.save_model_path, run_dir, fresh)
                try:
                    tdist.on_main_then_broadcast(claim)
                except ValueError as e:
                    raise ConfigError(" ".join(str(e).split())) from e
            if self.is_main:
                if fresh:
                    held.enter_context(rundir.RunDir(Path(run_dir)).lock())
                # On resume, hide what the interrupted run logged after its checkpoint.
                purge_step = self.progress.step + 1 if resume_ckpt is not None else None
                self.logger = Logger(
                    run_dir,
                    precision=cfg.log_fp,
                    log_every_n_seconds=cfg.log_every_n_seconds,
                    run_name=os.path.basename(os.path.normpath(run_dir)),
                    purge_step=purge_step,
                )
            held.callback(self.logger.close)
            for title, text in self._notices:
                self.logger.notice(title, text)
            if self.is_main:
                if resume_ckpt is not None:
                    cleanup_temp_files(ckpt_dir)  # left by a checkpoint write that was killed half-way
                # The run's YAML and the task's source, beside its logs.
                run, classes = rundir.RunDir(Path(run_dir)), list(self.task_classes().values())
                start = {"step": self.progress.step, **speed.machine(self.device)}
                files = rundir.run_files(run, get_yaml_string(self._recorded_config), classes, not fresh, start)
                for name, text in files.items():
                    self.logger.log_text(name, text)

            fwd_model: nn.Module = self.model
            if self.speed.compile:
                fwd_model = torch.compile(self.model)  # type: ignore[assignment]
            train_model = fwd_model
            if self._distributed:
                device_ids = [self.device.index] if self.device.type == "cuda" else None
                train_model = DistributedDataParallel(fwd_model, device_ids=device_ids)

            self.on_run_start()
            if rng_states:
                # Restored last so that building the model and data above does not shift the RNG streams.
                set_rng_state(rng_states[self.rank])

            with self._signals.installed():
                self._train_loop(fwd_model, train_model)

    # ------------------------------------------------------------------------------------------------------
    # Loop

    def _train_loop(self, fwd_model: nn.Module, train_model: nn.Module) -> None:
        cfg = self.config
        p = self.progress
        loop = self._loop = LoopState(
            fwd_model=fwd_model,
            train_model=train_model,
            data=WaitTimer(batch_stream(self.train_loader, p.epoch, p.batch_idx, cfg.num_epochs)),
            check_each_step=cfg.skip_nonfinite or self.device.type == "cpu",
            window=LogWindow.open(p, self.device),
            session_start_step=p.step,
            last_saved_step=p.step if p.step > 0 else -1,
        )
        stream = iter(loop.data)

        if p.last_eval_samples < 0:
            self._evaluate()
        reason = ""
        interrupted = False
        if self._signals.received is not None:  # during the first evaluation: stop before any step
            interrupted, self.stopped_by_signal = True, self._signals.received
            reason = f"stopped by {signal.Signals(self._signals.received).name} during the first evaluation"
        while not reason:
            if cfg.max_steps is not None and p.step >= cfg.max_steps:
                reason = f"reached max_steps={cfg.max_steps}"
                break
            micro_batches = list(itertools.islice(stream, cfg.grad_accum_steps))
            if not micro_batches:
                p.epoch, p.batch_idx = max(cfg.num_epochs, p.epoch), 0
                reason = f"finished {cfg.num_epochs} epoch(s)"
                break
            try:
                self._train_step(loop, micro_batches)
            except _NonFiniteStep as e:
                if _parameters_finite(self.model):
                    raise _nonfinite(str(e), f"saved the last good state to {self.save_checkpoint()}") from None
                raise _nonfinite(str(e), f"the parameters were no longer finite: not saved ({self._last()})") from None
            self._maybe_log_train(loop)
            if p.eval_due(cfg.eval_every_n_samples):
                self._evaluate()
            interrupted, out_of_time, save = self._agree_on_events(loop)
            if save:
                self.save_checkpoint()
            if interrupted:
                # A rank of a distributed run may learn of the signal from another rank.
                self.stopped_by_signal = self._signals.received or int(signal.SIGTERM)
                reason = f"stopped by {signal.Signals(self.stopped_by_signal).name}"
            elif out_of_time:
                reason = f"reached max_minutes={cfg.max_minutes}"

        if not interrupted and p.samples_seen != p.last_eval_samples:
            self._evaluate()
            if self._signals.received is not None:  # the final evaluation was cut short: not a finished run
                self.stopped_by_signal = self._signals.received
                reason += f", then stopped by {signal.Signals(self._signals.received).name} in the final evaluation"
        if tdist.all_reduce_max([loop.nonfinite_flag()], self.device)[0]:
            self._raise_lazy_nonfinite()
        path = self.save_checkpoint()
        self.logger.log_hparams(config_to_dict(cfg), self.last_val_metrics)
        self.logger.notice(
            f"training stopped: {reason}",
            f"step {p.step:,}, epoch {p.epoch}, {p.samples_seen:,} samples, "
            f"{format_duration(loop.train_time(p))} of training; checkpoint {path}",
        )

    def _agree_on_events(self, loop: LoopState) -> tuple[bool, bool, bool]:
        """Signal- and time-based decisions ``(interrupted, out_of_time, save)``.

        Ranks see signals and clocks at different moments, so a distributed run agrees on them (an all-reduce
        every ``_SYNC_EVERY`` steps, which also checks for a non-finite loss on any rank).
        """
        cfg = self.config
        interrupted = self._signals.received is not None
        out_of_time = cfg.max_minutes is not None and loop.train_time(self.progress) >= cfg.max_minutes * 60
        save = cfg.save_every_n_seconds > 0 and time.time() - loop.last_save_time >= cfg.save_every_n_seconds
        if not self._distributed:
            return interrupted, out_of_time, save
        if self.progress.step % _SYNC_EVERY != 0:
            return False, False, False
        flags = tdist.all_reduce_max(
            [float(interrupted), float(out_of_time), float(save), loop.nonfinite_flag()], self.device
        )
        if flags[3]:
            self._raise_lazy_nonfinite()
        return bool(flags[0]), bool(flags[1]), bool(flags[2])

    def _train_step(self, loop: LoopState, micro_batches: list[tuple[int, int, Any]]) -> None:
        cfg = self.config
        p = self.progress
        model = loop.train_model
        model.train()
        n = len(micro_batches)
        step_loss: torch.Tensor | None = None
        samples = tokens = 0
        for i, (_, _, batch) in enumerate(micro_batches):
            batch = move_to_device(batch, self.device)
            bs = batch_size_of(batch)
            ntok = self.num_tokens(batch)
            # Gradients are all-reduced only on the last micro-batch of the step.
            sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if isinstance(model, DistributedDataParallel) and i < n - 1:
                sync = model.no_sync()
            with sync:
                with speed.autocast(self.device, self.speed.precision):
                    loss, _ = self.get_loss(model, batch)
                if loss.dim() != 0:
                    raise ValueError(f"get_loss must return a scalar loss, got shape {tuple(loss.shape)}")
                (loss / n).backward()  # type: ignore[no-untyped-call]
            detached = loss.detach().float()
            step_loss = detached if step_loss is None else step_loss + detached
            loop.window.add_loss(detached, bs)
            samples += bs * self.world_size
            tokens += (ntok or 0) * self.world_size
        assert step_loss is not None
        step_loss = step_loss / n

        params = [q for q in self.model.parameters() if q.grad is not None]
        grad_norm: torch.Tensor | None = None
        max_norm = cfg.grad_norm_max if cfg.grad_norm_max else None
        if max_norm is not None or loop.check_each_step:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else math.inf)
        do_step = True
        if loop.check_each_step:
            assert grad_norm is not None
            # In DDP the loss differs per rank but the reduced gradients do not: decide on them alone.
            finite = bool(torch.isfinite(grad_norm)) and (self._distributed or bool(torch.isfinite(step_loss)))
            if not finite:
                self.optimizer.zero_grad(set_to_none=True)
                if not cfg.skip_nonfinite:
                    raise _NonFiniteStep(
                        f"non-finite loss ({float(step_loss)}) or gradient norm at step {p.step + 1} "
                        f"(epoch {p.epoch}, batch {p.batch_idx + 1})"
                    )
                p.skipped_steps += 1
                do_step = False
        else:
            bad = ~torch.isfinite(step_loss)
            if grad_norm is not None:
                bad = bad | ~torch.isfinite(grad_norm)
            loop.note_nonfinite(bad)
        if do_step:
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

        if grad_norm is not None and do_step:
            loop.window.add_grad_norm(grad_norm)
        p.step += 1
        p.epoch, p.batch_idx = micro_batches[-1][0], micro_batches[-1][1]
        p.samples_seen += samples
        p.tokens_seen += tokens

    def _raise_lazy_nonfinite(self) -> None:
        """A non-finite loss or gradient norm was noticed after the fact (``LoopState.nonfinite``): stop unsaved."""
        what = f"non-finite loss or gradient norm at or before step {self.progress.step}"
        raise _nonfinite(what, f"the model is no longer finite and was not saved ({self._last()})")

    def _last(self) -> str:
        return f"last good checkpoint: {self.last_checkpoint()}"

    # ------------------------------------------------------------------------------------------------------
    # Logging

    def _maybe_log_train(self, loop: LoopState) -> None:
        if not self.logger.should_log("train"):
            return
        if not self._distributed and loop.nonfinite_flag():
            # In a distributed run this check happens collectively in _agree_on_events instead.
            self._raise_lazy_nonfinite()
        cfg = self.config
        p = self.progress
        lr = float(self.optimizer.param_groups[0]["lr"])
        metrics = loop.window.metrics(p, lr, time.time(), loop.data.wait_s)
        metrics["elapsed_min"] = loop.train_time(p) / 60
        header: dict[str, Any] = {"epoch": p.epoch, "samples": p.samples_seen}
        steps_left = steps_left_in_epochs(p, self.train_loader, cfg.num_epochs, cfg.grad_accum_steps)
        eta = loop.eta_seconds(p, self.step_cost, cfg.max_minutes, cfg.max_steps, steps_left)
        if eta is not None:
            metrics["eta_min"] = eta / 60
            header["eta"] = format_duration(eta)
        if cfg.skip_nonfinite:
            metrics["skipped_steps"] = p.skipped_steps
        self.logger.log_metrics(metrics, "train", p.step, header=header, force=True)
        loop.window = LogWindow.open(p, self.device)
        loop.data.reset()

    # ------------------------------------------------------------------------------------------------------
    # Evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Run the validation set; returns the metrics averaged over batches (weighted by batch size) and ranks.

        The training RNG streams are saved and restored around it, so evaluating never changes the
        training trajectory (and runs with different evaluation schedules stay comparable).
        """
        rng = get_rng_state()
        model = self._loop.fwd_model if self._loop is not None else self.model
        was_training = model.training
        model.eval()
        sums = MetricSums()
        try:
            for batch in self.val_loader:
                if not self._distributed and self._signals.received is not None:
                    raise _Interrupted  # a signal stops a long evaluation between batches
                batch = move_to_device(batch, self.device)
                with speed.autocast(self.device, self.speed.precision):
                    loss, preds = self.get_loss(model, batch)
                    sums.add({"loss": loss, **self.val_metrics(self.model, batch, preds)}, batch_size_of(batch))
            result = sums.reduce()
            result.update(self.post_val_metrics(self.model))
        finally:
            model.train(was_training)
            set_rng_state(rng)
        return result

    def _evaluate(self) -> None:
        p = self.progress
        start = time.time()
        try:
            metrics = self.evaluate()
        except _Interrupted:
            return
        p.last_eval_samples = p.samples_seen
        p.eval_count += 1
        self.last_val_metrics = metrics
        header = {"epoch": p.epoch, "samples": p.samples_seen, "eval": format_duration(time.time() - start)}
        self.logger.log_metrics(metrics, "val", p.step, header=header, force=True)

    # ------------------------------------------------------------------------------------------------------
    # Checkpoints

    def checkpoint_state(self) -> Checkpoint:
        """Everything needed to resume (collective in a distributed run: RNG states are gathered)."""
        rng_states = tdist.all_gather_object(get_rng_state())
        if self._loop is not None:
            self._loop.train_time(self.progress)
        model_kwargs = getattr(self.model, "init_kwargs", None)  # a MultilayerTransformer's constructor arguments
        return Checkpoint(
            model=self.model.state_dict(),
            model_kwargs=model_kwargs if isinstance(model_kwargs, dict) else None,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            progress=dataclasses.replace(self.progress),
            rng=rng_states,
            world_size=self.world_size,
            config=get_yaml_string(self._recorded_config),
            classes={role: class_path(cls) for role, cls in self.task_classes().items()},
            run=os.path.basename(os.path.normpath(self.run_dir)) if self.run_dir else None,
            val_metrics={k: v for k, v in self.last_val_metrics.items() if isinstance(v, (int, float))},
        )

    def last_checkpoint(self) -> str | None:
        """The newest checkpoint in the run's checkpoint directory, or None."""
        saved = rundir.list_checkpoints(self.ckpt_dir) if self.ckpt_dir else []
        return str(saved[-1]) if saved else None

    def save_checkpoint(self) -> str | None:
        """Write ``ckpt_<step>.pt`` (rank 0) unless this step is already saved; returns the path.

        Called by the loop (every rank of a distributed run at the same step).

        Raises:
            NonFiniteLossError: when a parameter is not finite: such a state is never saved as a checkpoint.
        """
        loop = self._loop
        assert loop is not None and self.ckpt_dir is not None, "save_checkpoint() runs inside run()"
        path = os.path.join(self.ckpt_dir, rundir.checkpoint_name(self.progress.step))
        loop.last_save_time = time.time()
        if loop.last_saved_step == self.progress.step and os.path.exists(path):
            return path
        if not _parameters_finite(self.model):
            raise NonFiniteLossError(
                f"the parameters are not finite at step {self.progress.step}: not saved ({self._last()})"
            )
        state = self.checkpoint_state()
        if self.is_main:
            write_checkpoint(path, state)
            keep = 1 if self.config.overwrite_existing_checkpoints else self.config.keep_last_n
            if keep is not None:
                # Only this run's checkpoints that load are counted and pruned, never the one it resumed from.
                protect = [self._resumed_from] if self._resumed_from else []
                prune_checkpoints(self.ckpt_dir, keep, protect=protect, run=state.run)
            self.logger.notice("saved checkpoint", path)
        loop.last_saved_step = self.progress.step
        tdist.barrier()
        return path
