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

from iluvattnshun import rundir
from iluvattnshun.checkpoint import load_checkpoint, load_model_state_dict
from iluvattnshun.config import config_from_yaml_string
from iluvattnshun.nn import MultilayerTransformer


class LoadedRun(NamedTuple):
    """What ``load_run`` returns; unpacks as ``config, model, prompter``... plus the rest by name."""

    config: Any
    """The run's config, typed as the task's config class."""
    model: nn.Module
    """The model with the checkpoint's weights, in eval mode."""
    prompter: Any
    """The task's prompter, or None for tasks without one."""
    trainer: Any
    """The task's trainer (not run): only built when the checkpoint cannot describe its model, else None."""
    checkpoint: dict[str, Any]
    """The raw checkpoint dict (progress counters, last validation metrics, ...)."""
    checkpoint_path: Path
    """Which checkpoint file was loaded."""


def _import_class(path: str, run: rundir.RunDir, trust_code: bool) -> type[Any]:
    """Import ``module:QualName``; with ``trust_code``, fall back to the run's script snapshot.

    A run started as ``python path/to/script.py`` records its classes under ``__main__``, which here names the
    loading process's own main module (a notebook kernel, pytest): such a path always needs the snapshot.
    """
    module_name, _, qualname = path.partition(":")
    module: ModuleType | None = None
    if module_name != "__main__":
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            pass
    if module is None:
        snapshot = run.script_path
        if not snapshot.is_file():
            raise ImportError(f"cannot import {module_name!r} and {run.path} holds no script snapshot")
        if not trust_code:
            raise ImportError(
                f"the class {qualname!r} was defined in a script that is not importable here ({module_name!r}); "
                f"loading it means executing {snapshot}, code saved in the run directory. Read it, then pass "
                "trust_code=True if you trust it"
            )
        # The snapshot's `if __name__ == "__main__"` block does not run.
        alias = f"_iluvattnshun_run_{abs(hash(str(snapshot)))}"
        spec = importlib.util.spec_from_file_location(alias, snapshot)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the script snapshot {snapshot}")
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


def _find_checkpoint(run: rundir.RunDir, checkpoint: str | int) -> Path:
    if isinstance(checkpoint, int) or checkpoint.isdigit():
        path = run.path / rundir.checkpoint_name(int(checkpoint))
        if not path.is_file():
            steps = ", ".join(p.name for p in run.checkpoints()) or "none"
            raise FileNotFoundError(f"no checkpoint for step {checkpoint} in {run.path} (found: {steps})")
        return path
    if checkpoint == "latest":
        found = run.checkpoints()
        if not found:
            raise FileNotFoundError(f"{run.path} holds no checkpoint (ckpt_*.pt): has the run saved one yet?")
        return found[-1]
    candidate = Path(checkpoint)
    if not candidate.is_absolute():
        candidate = run.path / candidate
    if not candidate.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint!r} not found (looked for {candidate})")
    return candidate


def load_run(
    run_dir: str | os.PathLike[str],
    checkpoint: str | int = "latest",
    device: str | torch.device = "cpu",
    trust_code: bool = False,
) -> LoadedRun:
    """Rebuild a run from its directory alone, without touching the RNGs or the task's data.

    The checkpoint records the config class, the model's constructor arguments and (for prompt tasks) the
    prompter class: the model is rebuilt from those and receives the saved weights.

    Args:
        run_dir: a run directory, ``logs/<task>/run_<N>_<name>``.
        checkpoint: "latest", a step number, or a checkpoint file name / path.
        device: where to put the model.
        trust_code: allow executing the run's saved script to find its classes, needed only when they were
            defined in a script that cannot be imported here. Only for run directories you trust.

    Returns:
        ``LoadedRun(config, model, prompter, trainer, checkpoint, checkpoint_path)``.
    """
    run = rundir.RunDir(Path(run_dir))
    if not run.path.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    path = _find_checkpoint(run, checkpoint)
    state = load_checkpoint(path, map_location=device)
    classes = state.get("classes")
    if not isinstance(classes, dict) or "config" not in classes:
        raise ValueError(f"{path} records no task classes: it was not written by iluvattnshun's Trainer")

    config_cls = _import_class(classes["config"], run, trust_code)
    config = config_from_yaml_string(state["config"], config_cls, source=str(path))
    prompter = _import_class(classes["prompter"], run, trust_code)(config) if "prompter" in classes else None
    trainer = None
    if isinstance(state.get("model_kwargs"), dict):
        model: nn.Module = MultilayerTransformer(**state["model_kwargs"])
    else:  # a custom model: only its trainer knows how to build it
        trainer = _import_class(classes["trainer"], run, trust_code)(config)
        model = trainer.get_model()
    load_model_state_dict(model, state["model"], source=str(path))
    model.to(device).eval()
    return LoadedRun(config, model, prompter, trainer, state, path)
