"""Load a finished (or running) run back from its directory: config, model and prompter, for notebooks."""

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from iluvattnshun.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model_state_dict,
)
from iluvattnshun.config import config_from_yaml_string


class LoadedRun(NamedTuple):
    """What ``load_run`` returns; unpacks as ``config, model, prompter``... plus the rest by name."""

    config: Any
    """The run's config, typed as the task's config class."""
    model: nn.Module
    """The model with the checkpoint's weights, in eval mode."""
    prompter: Any
    """The task's prompter (``trainer.prompter``), or None for tasks without one."""
    trainer: Any
    """The task's trainer, constructed from the config (not run)."""
    checkpoint: dict[str, Any]
    """The raw checkpoint dict (progress counters, last validation metrics, ...)."""
    checkpoint_path: Path
    """Which checkpoint file was loaded."""


def _import_class(path: str, run_dir: Path) -> type[Any]:
    """Import ``module:QualName``; fall back to the run's script snapshot when the module is not importable.

    A run started as ``python path/to/script.py`` records its classes under ``__main__``, which here names the
    loading process's own main module (a notebook kernel, pytest): such a path always uses the snapshot.
    """
    module_name, _, qualname = path.partition(":")
    module: ModuleType | None = None
    if module_name != "__main__":
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            pass
    if module is None:
        # The class lived in a script that is not an importable module: load the snapshot the trainer saved
        # next to the config. Its `if __name__ == "__main__"` block does not run.
        snapshots = sorted(run_dir.glob("run_*.py"))
        if not snapshots:
            raise ImportError(f"cannot import {module_name!r} and {run_dir} holds no script snapshot") from None
        alias = f"_iluvattnshun_run_{abs(hash(str(snapshots[0])))}"
        spec = importlib.util.spec_from_file_location(alias, snapshots[0])
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the script snapshot {snapshots[0]}") from None
        module = importlib.util.module_from_spec(spec)
        sys.modules[alias] = module
        spec.loader.exec_module(module)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ImportError(f"{module_name!r} has no class {qualname!r} (recorded in the checkpoint as {path!r})")
    if not isinstance(obj, type):
        raise ImportError(f"{path!r} is not a class")
    return obj


def _find_checkpoint(run_dir: Path, checkpoint: str | int) -> Path:
    if isinstance(checkpoint, int) or (isinstance(checkpoint, str) and checkpoint.isdigit()):
        path = run_dir / checkpoint_name(int(checkpoint))
        if not path.is_file():
            steps = ", ".join(p.name for p in list_checkpoints(run_dir)) or "none"
            raise FileNotFoundError(f"no checkpoint for step {checkpoint} in {run_dir} (found: {steps})")
        return path
    if checkpoint == "latest":
        latest = latest_checkpoint(run_dir)
        if latest is None:
            raise FileNotFoundError(f"{run_dir} holds no checkpoint (ckpt_*.pt): has the run saved one yet?")
        return latest
    candidate = Path(checkpoint)
    if not candidate.is_absolute():
        candidate = run_dir / candidate
    if not candidate.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint!r} not found (looked for {candidate})")
    return candidate


def load_run(
    run_dir: str | os.PathLike[str], checkpoint: str | int = "latest", device: str | torch.device = "cpu"
) -> LoadedRun:
    """Rebuild a run from its directory alone.

    The checkpoint records the task's config and trainer classes; the trainer is constructed from the saved
    config (which sets up the task, e.g. the prompter) and its ``get_model()`` receives the saved weights.

    Args:
        run_dir: a run directory, ``logs/<task>/run_<N>_<name>``.
        checkpoint: "latest", a step number, or a checkpoint file name / path.
        device: where to put the model.

    Returns:
        ``LoadedRun(config, model, prompter, trainer, checkpoint, checkpoint_path)``.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    path = _find_checkpoint(root, checkpoint)
    state = load_checkpoint(path, map_location=device)
    classes = state.get("classes")
    if not isinstance(classes, dict) or "config" not in classes or "trainer" not in classes:
        raise ValueError(f"{path} records no task classes: it was not written by iluvattnshun's Trainer")

    config_cls = _import_class(classes["config"], root)
    trainer_cls = _import_class(classes["trainer"], root)
    config = config_from_yaml_string(state["config"], config_cls, source=str(path))
    trainer = trainer_cls(config)
    model = trainer.get_model()
    load_model_state_dict(model, state["model"], source=str(path))
    model.to(device).eval()
    prompter = getattr(trainer, "prompter", None)
    return LoadedRun(config, model, prompter, trainer, state, path)
