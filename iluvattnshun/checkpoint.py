"""The run's state on disk: the checkpoint schema (``Checkpoint``, with a format version), writing it, finding what
to resume (the newest that loads, then the newest that fits the model), restoring it, retention, cleanup of
half-written files, shape-checked model loading and RNG state.

A checkpoint is a dict of tensors and plain containers only (the config is stored as a YAML string, RNG
states as tensors and lists), so ``torch.load(..., weights_only=True)`` can read it and nothing in the file
can run code. This module is the only one that names the dict's keys; everything else reads a ``Checkpoint``.
"""

import contextlib
import dataclasses
import os
import pickle
import random
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn
import yaml

from iluvattnshun import rundir
from iluvattnshun.config import Config, config_to_dict
from iluvattnshun.files import atomic_write, temporary_target
from iluvattnshun.rundir import CKPT_PATTERN, list_checkpoints

MISMATCH_LISTED = 8
"""Parameters named per kind of mismatch in an error (then how many more): the message stays one short line."""

FORMAT_VERSION = 1
"""Version of the checkpoint layout below; a file of another version is refused with a clear error."""


@dataclass
class Progress:
    """Counters of a run; saved in every checkpoint and restored on resume."""

    step: int = 0
    """Optimizer steps taken (including skipped non-finite ones)."""
    epoch: int = 0
    """Current epoch (the one the next batch comes from)."""
    batch_idx: int = 0
    """Micro-batches of the current epoch already consumed on this rank."""
    samples_seen: int = 0
    """Training samples consumed, summed over ranks."""
    tokens_seen: int = 0
    """Training tokens consumed, summed over ranks (0 when ``num_tokens`` returns None)."""
    last_eval_samples: int = -1
    """``samples_seen`` at the last evaluation (-1: never evaluated)."""
    eval_count: int = 0
    """Evaluations run so far."""
    skipped_steps: int = 0
    """Steps skipped because of a non-finite loss (``skip_nonfinite``)."""
    train_time_s: float = 0.0
    """Seconds spent in the training loop, summed over resumes."""

    def eval_due(self, every: int | None) -> bool:
        """Whether ``samples_seen`` crossed a multiple of ``every`` since the last evaluation: a resumed run (or
        one with an extra final evaluation) keeps the schedule of an uninterrupted one. Never for 0 or None."""
        if not every:
            return False
        return self.samples_seen // every > max(self.last_eval_samples, 0) // every

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Progress":
        """Counters from a saved dict; keys this version does not know are ignored."""
        known = {f.name: f.type for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in values.items() if k in known}
        for k, v in kept.items():
            kinds = (int, float) if known[k] in (float, "float") else (int,)
            if not isinstance(v, kinds) or isinstance(v, bool) or not -1 <= v < float("inf"):
                raise ValueError(f"progress {k} is {str(v)[:40]!r}, not a count")
        return cls(**kept)


@dataclass
class Checkpoint:
    """A trainer checkpoint: everything needed to resume a run, and to rebuild its model without the trainer."""

    model: Mapping[str, torch.Tensor]
    """The plain module's state dict (no DDP / compile prefixes)."""
    optimizer: Mapping[str, Any]
    scheduler: Mapping[str, Any] | None
    progress: Progress
    rng: list[Any]
    """One ``get_rng_state()`` per rank."""
    config: str
    """The run's config as YAML (what reproduces the run: without ``resume``)."""
    classes: dict[str, str] = field(default_factory=dict)
    """``module:QualName`` of the task's classes by role (config, trainer, prompter), for ``load_run``."""
    model_kwargs: dict[str, Any] | None = None
    """The model's constructor arguments when it can describe them (``init_kwargs``), for ``load_run``."""
    world_size: int = 1
    run: str | None = None
    """The run directory's name (``run_<N>_<name>``): retention prunes only this run's checkpoints."""
    val_metrics: dict[str, float] = field(default_factory=dict)
    """The last evaluation's numeric metrics."""

    def to_dict(self) -> dict[str, Any]:
        """The dict written to disk."""
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "model_kwargs": self.model_kwargs,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "progress": dataclasses.asdict(self.progress),
            "rng": self.rng,
            "world_size": self.world_size,
            "config": self.config,
            "classes": self.classes,
            "run": self.run,
            "val_metrics": self.val_metrics,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], source: str = "checkpoint") -> "Checkpoint":
        """Read a loaded checkpoint dict.

        Raises:
            ValueError: in one line, when ``state`` is not a trainer checkpoint or is of another format version.
        """
        version = state.get("format_version")
        if version is None:
            raise ValueError(f"{source} is not a trainer checkpoint (it records no format_version)")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{source} has checkpoint format {str(version)[:20]}, this version of iluvattnshun reads format "
                f"{FORMAT_VERSION}: load it with the version that wrote it"
            )
        missing = [k for k in ("model", "optimizer", "progress", "rng", "config") if k not in state]
        if missing:
            raise ValueError(f"{source} is not a trainer checkpoint (missing {', '.join(missing)})")
        # Every entry has the type the trainer wrote, checked here: a malformed file is refused in one line (and
        # --resume falls back past it) instead of failing deep inside a restore.
        kinds: dict[str, tuple[type, ...]] = {
            "model": (Mapping,),
            "optimizer": (Mapping,),
            "scheduler": (Mapping, type(None)),
            "progress": (Mapping,),
            "rng": (list, tuple),
            "config": (str,),
            "classes": (Mapping, type(None)),
            "model_kwargs": (dict, type(None)),
            "world_size": (int,),
            "run": (str, type(None)),
            "val_metrics": (Mapping, type(None)),
        }
        for key, allowed in kinds.items():
            if key in state and not isinstance(state[key], allowed):
                raise ValueError(f"{source} is not a trainer checkpoint ({key} is of type {type(state[key]).__name__})")
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()):
            raise ValueError(f"{source} is not a trainer checkpoint (model is not a state dict of tensors)")
        world_size = state.get("world_size", 1)
        if isinstance(world_size, bool) or world_size < 1:
            raise ValueError(f"{source} is not a trainer checkpoint (world_size {world_size!r})")
        try:
            progress = Progress.from_dict(state["progress"])
        except ValueError as e:
            raise ValueError(f"{source} is not a trainer checkpoint ({e})") from None
        classes = state.get("classes") or {}
        return cls(
            model=state["model"],
            optimizer=state["optimizer"],
            scheduler=state.get("scheduler"),
            progress=progress,
            rng=list(state["rng"]),
            config=state["config"],
            classes=dict(classes),
            model_kwargs=state.get("model_kwargs"),
            world_size=world_size,
            run=state.get("run"),
            val_metrics=dict(state.get("val_metrics") or {}),
        )

    @property
    def step(self) -> int:
        """The optimizer step it was written at."""
        return self.progress.step

    def __getitem__(self, key: str) -> Any:
        """The raw dict's entry (``load_run(...).checkpoint["progress"]`` was a dict once)."""
        return self.to_dict()[key]


def read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu") -> Checkpoint:
    """Load a trainer checkpoint file (``weights_only``) as a ``Checkpoint``.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: in one line, when the file is unreadable, not a trainer checkpoint, or of another format version.
    """
    return Checkpoint.from_dict(load_checkpoint(path, map_location=map_location), source=repr(os.fspath(path)))


def write_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` atomically and durably (see ``save_checkpoint``)."""
    save_checkpoint(path, checkpoint.to_dict())


def restore(
    checkpoint: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    source: str = "checkpoint",
) -> None:
    """Load a checkpoint's model, optimizer and scheduler state (the caller takes its counters and RNG states).

    Raises:
        ValueError: when the model does not match, or the trainer has a scheduler and the checkpoint none.
    """
    load_model_state_dict(model, checkpoint.model, source=source)
    optimizer.load_state_dict(dict(checkpoint.optimizer))
    if scheduler is not None:
        if checkpoint.scheduler is None:
            raise ValueError(f"{source} has no scheduler state but get_scheduler() returned one")
        scheduler.load_state_dict(dict(checkpoint.scheduler))


def find_resumable(directory: str | os.PathLike[str]) -> tuple[Path | None, list[str]]:
    """The newest checkpoint in ``directory`` that loads, and a line for each newer one skipped as unreadable."""
    skipped = []
    for path in reversed(list_checkpoints(directory)):
        try:
            read_checkpoint(path)
        except ValueError as e:
            skipped.append(f"{path} is unreadable ({str(e).splitlines()[0]})")
            continue
        return path, skipped
    return None, skipped


def find_resume(logdir: str, run_name: str, save_model_path: str | None) -> tuple[rundir.RunDir, str, list[str]]:
    """What ``--resume`` continues: the newest loadable checkpoint of the newest run matching ``run_name`` that has
    one. Returns the run, the checkpoint's path, and a line for each newer run or checkpoint passed over.

    Raises:
        ValueError: when no matching run has a loadable checkpoint (saying what was found instead).
    """
    runs = rundir.matching_runs(logdir, run_name)
    if not runs:
        listing = ", ".join(r.base for r in rundir.list_runs(logdir)[-10:]) or "none"
        raise ValueError(f"resume: no run directory {run_name!r} under {logdir!r} (existing runs: {listing})")
    owner = rundir.checkpoint_dir_owner(save_model_path) if save_model_path else None
    skipped = []
    for run in runs:
        ckpt_dir = save_model_path or str(run.path)
        if owner is not None and owner != os.path.abspath(run.path):
            skipped.append(f"{ckpt_dir} holds the checkpoints of the run {owner}, not of {run.path}")
            continue
        path, unreadable = find_resumable(ckpt_dir)
        skipped.extend(unreadable)
        if path is not None:
            return run, str(path), skipped
        skipped.append(f"{ckpt_dir} holds no checkpoint (ckpt_*.pt)")
    raise ValueError("resume: " + "; ".join(skipped))


def check_same_task(checkpoint: Checkpoint, config: Config, path: str | os.PathLike[str]) -> None:
    """Refuse to resume a checkpoint written by another task's run (its config class differs from ``config``'s): in
    one line naming both, rather than as a shape mismatch of two unrelated models.

    Raises:
        ValueError: when the recorded config class is not ``config``'s.
    """
    trained_by = checkpoint.classes.get("config")
    if trained_by and trained_by != class_path(type(config)):
        raise ValueError(
            f"resume: {os.fspath(path)!r} is a checkpoint of another task (config {str(trained_by)[:200]}, this run's "
            f"is {class_path(type(config))}): resume it with the task that trained it"
        )


def resume_config_changes(checkpoint: Checkpoint, config: Config) -> tuple[dict[str, Any], list[str]]:
    """Compare the config a checkpoint was trained with to the one resuming it.

    Returns the saved config as a dict, and a line ``field: old -> new`` for each changed field (other than
    ``resume``, ``run_name`` and fields left to ``auto``).

    Raises:
        ValueError: when a data field changed: the run would continue on other data.
    """
    old = yaml.safe_load(checkpoint.config) or {}
    new = config_to_dict(config)
    data_changes = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in config.data_fields() if k in old and old[k] != new[k]]
    if data_changes:
        raise ValueError(
            f"resume: the run was trained on other data ({'; '.join(data_changes)}); resume it with its own data "
            "settings, or start a new run"
        )
    diffs = [
        f"{k}: {old[k]!r} -> {v!r}"
        for k, v in new.items()
        if k in old and old[k] != v and k not in ("resume", "run_name") and v != "auto"
    ]
    return old, diffs


@dataclass
class Resumed:
    """What ``resume`` hands back to the trainer after loading the model, optimizer and scheduler."""

    path: str
    """The checkpoint it resumed from: the one asked for, or an older one of its directory that fits the model."""
    progress: Progress
    rng: list[Any]
    """Each rank's RNG state; empty when the number of ranks changed (the streams then start afresh)."""
    run_name: str | None
    """The run's own ``run_name`` (None: its config has none), which the resumed run records in its config."""
    notices: list[tuple[str, str]]
    """``(title, text)`` lines for the console: what was resumed, what changed."""


def resume(
    path: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    config: Config,
    world_size: int,
) -> Resumed:
    """Load the checkpoint at ``path`` (or, when it does not fit the model, the newest older one of its directory that
    does: ``find_fitting``) into model, optimizer and scheduler to continue its run under ``config``.

    Raises:
        ValueError: when no checkpoint from ``path`` back fits the model, or ``config`` changes a data field (see
            ``resume_config_changes``). Another task's checkpoint is refused before: ``check_same_task``.
    """
    fitting, skipped = find_fitting(path, model)
    path = str(fitting)
    checkpoint = read_checkpoint(path)
    restore(checkpoint, model, optimizer, scheduler, source=repr(path))
    progress = checkpoint.progress
    notices = [("resume: falling back", "\n".join(skipped))] if skipped else []
    same_world = checkpoint.world_size == world_size
    if not same_world:
        # Each rank's data position and RNG stream only carry over with the same number of ranks.
        notices.append(
            (
                "resume: world size changed",
                f"checkpoint from {checkpoint.world_size} process(es), now {world_size}: restarting the current epoch",
            )
        )
        progress.batch_idx = 0
    old, diffs = resume_config_changes(checkpoint, config)
    notices.append(
        (f"resumed from {path} at step {progress.step:,}", ("config changes: " + "; ".join(diffs)) if diffs else "")
    )
    run_name = str(old["run_name"]) if "run_name" in old else None
    return Resumed(path, progress, checkpoint.rng if same_world else [], run_name, notices)


def class_path(cls: type) -> str:
    """``module:QualName`` of a class (how a checkpoint's ``classes`` names it), naming the real module when it was
    run with ``python -m``."""
    module = cls.__module__
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is not None and spec.name:
            module = spec.name
    return f"{module}:{cls.__qualname__}"


def find_fitting(path: str | os.PathLike[str], model: nn.Module) -> tuple[Path, list[str]]:
    """The newest checkpoint, ``path`` or an older one of its directory, that loads and whose weights fit
    ``model``'s names and shapes, and a line for each newer one skipped (a valid checkpoint of another model shape,
    say, as the newest file).

    Raises:
        ValueError: ``path``'s own mismatch, when no checkpoint from ``path`` back fits.
    """
    path = Path(path)
    listed = list_checkpoints(path.parent)
    older = listed[: listed.index(path)] if path in listed else []
    skipped: list[str] = []
    first_problem = ""
    for candidate in [path, *reversed(older)]:
        try:
            problem = model_mismatch(model, read_checkpoint(candidate).model, source=repr(os.fspath(candidate)))
        except ValueError as e:
            problem = f"unreadable: {str(e).splitlines()[0]}"
            skipped.append(f"{candidate} is unreadable ({str(e).splitlines()[0]})")
        else:
            if problem is None:
                return candidate, skipped
            skipped.append(f"{candidate} does not fit the model ({problem})")
        first_problem = first_problem or problem
    nor = f", nor do the {len(older)} older checkpoint(s) of its directory" if older else ""
    raise ValueError(f"{path} does not fit the model (was it trained with a different config?){nor}: {first_problem}")


def load_model_weights(path: str | os.PathLike[str], model: nn.Module) -> None:
    """Load only the model weights of a checkpoint file (a trainer's, the original code's, or a bare state dict).

    Raises:
        FileNotFoundError, ValueError: as ``load_checkpoint``; ValueError also when no state dict matches the model.
    """
    state = load_checkpoint(path)
    load_model_state_dict(model, model_weights(state, os.fspath(path)), source=os.fspath(path))


def model_weights(state: Mapping[str, Any], source: str = "checkpoint") -> Mapping[str, torch.Tensor]:
    """The model state dict inside a loaded checkpoint dict (a trainer's, the original code's, or a bare one)."""
    weights = state.get("model", state.get("model_state_dict", state))
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"{source!r} holds no model state dict (its keys: {', '.join(map(str, list(state)[:10]))})")
    return weights


def cleanup_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files of checkpoint writes that were killed half-way; returns what was removed."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in Path(directory).iterdir():
            target = temporary_target(entry.name)
            if target is not None and CKPT_PATTERN.match(target):
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(entry)
    return removed


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` atomically and durably: a kill at any moment leaves the old file intact."""
    atomic_write(path, lambda f: torch.save(dict(state), f), durable=True)


def prune_checkpoints(
    directory: str | os.PathLike[str],
    keep_last_n: int,
    protect: Iterable[str | os.PathLike[str]] = (),
    run: str | None = None,
) -> list[Path]:
    """Delete a run's older checkpoints in ``directory``, keeping its newest ``keep_last_n`` that load.

    Only good checkpoints count and only good checkpoints go: a file that does not load (corrupt, truncated, a stray
    ``ckpt_*.pt``) is neither kept in place of a good one nor deleted, and with ``run`` given, a checkpoint that
    records another run (``state["run"]``) is left alone. Files in ``protect`` (the checkpoint a run resumed from)
    are never deleted. Returns the deleted paths.
    """
    if keep_last_n < 1:
        raise ValueError(f"keep_last_n must be >= 1, got {keep_last_n}")
    protected = {Path(p).resolve() for p in protect}
    kept = 0
    deleted: list[Path] = []
    for path in reversed(list_checkpoints(directory)):
        try:
            state = load_checkpoint(path)
        except (ValueError, OSError):
            continue
        if run is not None and state.get("run", run) != run:
            continue
        if kept < keep_last_n:
            kept += 1
        elif path.resolve() not in protected:
            path.unlink(missing_ok=True)
            deleted.append(path)
    return deleted[::-1]


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint file's dict with ``weights_only=True`` (the original call form that loads into a model is
    ``iluvattnshun.compat.load_checkpoint``, exported as ``iluvattnshun.utils.load_checkpoint``).

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: if the file is truncated or corrupt, holds Python objects that weights-only loading refuses
            (a pickled model rather than a state dict), or holds no dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"cannot load checkpoint {path!r}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # torch warns about a plain pickle's protocol before refusing it: the error below says it in one line.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _unpickler_detail(str(e))
        protocol = _plain_pickle_protocol(path)
        if protocol is not None:
            raise ValueError(
                f"cannot load checkpoint {path!r}: it is a plain Python pickle (protocol {protocol}), not a file "
                f"torch.save wrote; weights-only loading refuses it ({detail})"
            ) from e
        if "unsupported global" not in detail.lower():
            raise ValueError(f"cannot load checkpoint {path!r}: the file is truncated or corrupt ({detail})") from e
        raise ValueError(
            f"{path!r} holds Python objects that weights-only loading refuses (a pickled model or trainer, say, "
            f"rather than state dicts); load it with torch.load(weights_only=False) only if you trust it: {detail}"
        ) from e
    except Exception as e:
        detail = str(e).splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load checkpoint {path!r}: the file is truncated or corrupt ({detail})") from e
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path!r} holds an object of type {type(state).__name__}, expected a dict")
    return state


def _plain_pickle_protocol(path: str) -> int | None:
    """The protocol of a pickle that ``torch.save`` did not write (its files are zip archives, or legacy pickles of
    protocol 2), or None."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head[1] if len(head) == 2 and head[:1] == pickle.PROTO and head[1] > 2 else None


def _unpickler_detail(message: str) -> str:
    """The reason in torch's weights-only error (``Unsupported global: GLOBAL x.Y ...``, ``Unsupported operand 67``),
    in one bounded line, without its advice paragraphs."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return reason.split(" was not an allowed global")[0][:300]
    return (lines[0] if lines else "unpickling failed")[:300]


def load_state_into(
    state: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    source: str = "checkpoint",
) -> tuple[Any, Any, Any]:
    """Load a checkpoint dict (this project's, the original code's ``model_state_dict``, ..., or a bare state dict)
    into the model, and into the optimizer and scheduler when given and saved; returns ``(epoch, step, metrics)``.

    Raises:
        ValueError: when the dict holds no model state for ``model``.
    """
    load_model_state_dict(model, model_weights(state, source), source=source)
    for target, keys in (
        (optimizer, ("optimizer", "optimizer_state_dict")),
        (scheduler, ("scheduler", "scheduler_state_dict")),
    ):
        saved = next((state[k] for k in keys if state.get(k) is not None), None)
        if target is not None and saved is not None:
            target.load_state_dict(saved)
    progress = state.get("progress", {})
    epoch = progress.get("epoch", state.get("epoch"))
    step = progress.get("step", state.get("step"))
    return epoch, step, state.get("val_metrics", state.get("metrics"))


def _strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes shared by every key."""
    sd = dict(state_dict)
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def model_mismatch(model: nn.Module, state_dict: Mapping[str, Any], source: str = "checkpoint") -> str | None:
    """Why ``state_dict`` cannot load into ``model`` strictly, in one bounded line (the first few missing,
    unexpected and shape-mismatched parameters, with both shapes, and how many more); None when it fits."""
    sd = _strip_prefixes(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k}: {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and isinstance(sd[k], torch.Tensor) and tuple(sd[k].shape) != tuple(v.shape)
    ]

    def listing(items: list[str], sep: str) -> str:
        more = f" and {len(items) - MISMATCH_LISTED} more" if len(items) > MISMATCH_LISTED else ""
        return sep.join(i if len(i) <= 200 else i[:200] + "..." for i in items[:MISMATCH_LISTED]) + more

    problems = []
    if mismatched:
        problems.append("shape mismatch: " + listing(mismatched, "; "))
    if missing:
        problems.append("missing from " + source + ": " + listing(missing, ", "))
    if unexpected:
        problems.append("unexpected in " + source + ": " + listing(unexpected, ", "))
    return " | ".join(problems) if problems else None


def load_model_state_dict(model: nn.Module, state_dict: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``model`` strictly, after checking every name and shape.

    Raises:
        ValueError: naming each missing, unexpected and shape-mismatched parameter (with both shapes).
    """
    problem = model_mismatch(model, state_dict, source)
    if problem is not None:
        raise ValueError(f"{source} does not match the model (was it trained with a different config?): {problem}")
    model.load_state_dict(_strip_prefixes(state_dict), strict=True)


# ----------------------------------------------------------------------------------------------------------
# RNG state, in weights-only-loadable form


def _cuda_initialized() -> bool:
    # Asking for CUDA RNG state would otherwise initialise CUDA in CPU-only runs.
    return torch.cuda.is_available() and bool(torch.cuda.is_initialized())  # type: ignore[no-untyped-call]


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA, if initialised) RNG states as tensors / plain lists."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss_next": py_gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if _cuda_initialized() else [],
    }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states captured by ``get_rng_state``."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    npst = state["numpy"]
    keys = np.asarray(npst["keys"].cpu().numpy(), dtype=np.uint32)
    np.random.set_state((npst["name"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
