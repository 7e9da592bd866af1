"""Load a finished (or running) run back from its directory: config, model and prompter, for notebooks."""

import ast
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from iluvattnshun import rundir
from iluvattnshun.checkpoint import Checkpoint, load_model_state_dict, model_mismatch, read_checkpoint
from iluvattnshun.config import Config, config_from_yaml_string
from iluvattnshun.nn import MultilayerTransformer
from iluvattnshun.prompter import Prompter


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
    checkpoint: Checkpoint
    """The checkpoint (``.progress`` counters, ``.val_metrics`` of the last evaluation, ...)."""
    checkpoint_path: Path
    """Which checkpoint file was loaded."""


class UntrustedCodeError(ImportError, ValueError):
    """A recorded class cannot be loaded without executing code that is not the user's own (or is not a class of
    the kind the checkpoint says): a ``ValueError`` too, so that commands report it as bad input."""


_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


def _locate_module(module_name: str, run: rundir.RunDir) -> Path | None:
    """Find where ``module_name`` (and each parent package) would be imported from, without executing anything.

    Returns the module's source file, or None when it is not importable here. Raises ``UntrustedCodeError`` when a
    part of it lies in a run directory (``run_<N>...``, or the one loaded: files that came with runs are data, never
    code), when it is not a Python source file, or when it is part of the standard library (no task class lives
    there: a checkpoint naming one is made up).
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    purelib = Path(sysconfig.get_paths()["purelib"])
    search: list[Path] = []
    origin: Path | None = None
    parts = module_name.split(".")
    for i, part in enumerate(parts):
        name = ".".join(parts[: i + 1])
        loaded = sys.modules.get(name)
        spec = getattr(loaded, "__spec__", None) if loaded is not None else None
        if spec is None and i == 0:
            spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is not None:
            locations = [Path(p) for p in (spec.submodule_search_locations or [])]
            origin = Path(spec.origin) if spec.origin and spec.has_location else None
        else:  # a submodule, found the way the path finder would find it, without importing its parents
            locations, origin = [], None
            for where in search:
                if (where / part / "__init__.py").is_file():
                    locations, origin = [where / part], where / part / "__init__.py"
                    break
                if (where / f"{part}.py").is_file():
                    origin = where / f"{part}.py"
                    break
                if (where / part).is_dir():
                    locations.append(where / part)  # a namespace package's portion
            if origin is None and not locations:
                return None
        for where in [*locations, *([origin] if origin is not None else [])]:
            in_run = any(rundir.RUN_PATTERN.match(p) for p in where.resolve().parts)
            if in_run or _inside(where, run.path):
                raise UntrustedCodeError(
                    f"{module_name!r} would be imported from {where}, a run directory's files: a checkpoint's "
                    "recorded classes are imported only from installed or importable code, never from run folders"
                )
            if _inside(where, stdlib) and not _inside(where, purelib):
                raise UntrustedCodeError(
                    f"{module_name!r} is a standard-library module: no task class is defined there"
                )
        search = locations
    if origin is None or origin.suffix != ".py":
        raise UntrustedCodeError(f"{module_name!r} is not a Python source module: it holds no task class")
    return origin


def _defines_class(source: Path, qualname: str) -> bool:
    """Whether ``source`` defines (or imports) the top-level name of ``qualname``, read without executing it."""
    top = qualname.split(".")[0]
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == top:
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name.split(".")[0]) in (top, "*") for a in node.names):
                return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == top for t in targets):
                return True
    return False


def _import_class(path: Any, run: rundir.RunDir, trust_code: bool, kind: type, role: str) -> type[Any]:
    """Import the ``module:QualName`` a checkpoint records for ``role``: a subclass of ``kind``.

    The module is imported only when it is importable here without the run's files (never from a run directory,
    never the standard library) and its source defines that name; otherwise, and for a run started as ``python
    script.py`` (its classes are recorded under ``__main__``), the class comes from the run's script snapshot, which
    is executed only with ``trust_code``.

    Raises:
        UntrustedCodeError: a class that would need code from the run directory without ``trust_code``, a name the
            checkpoint made up, or a class of the wrong kind.
        ImportError: when the class cannot be found.
    """
    if not isinstance(path, str) or path.count(":") != 1:
        raise UntrustedCodeError(f"the checkpoint records {role} class {str(path)[:200]!r}, not 'module:QualName'")
    module_name, _, qualname = path.partition(":")
    if not _MODULE_NAME.match(module_name) or not _MODULE_NAME.match(qualname):
        raise UntrustedCodeError(f"the checkpoint records {role} class {path[:200]!r}, not 'module:QualName'")
    module: ModuleType | None = None
    refused: UntrustedCodeError | None = None
    if module_name != "__main__":
        try:
            source = _locate_module(module_name, run)
        except UntrustedCodeError as e:
            source, refused = None, e
        if source is not None:
            if not _defines_class(source, qualname):
                raise UntrustedCodeError(
                    f"the checkpoint records {role} class {path!r}, but {source} defines no {qualname.split('.')[0]!r}"
                )
            module = importlib.import_module(module_name)
    if module is None:
        snapshot = run.script_path
        if not trust_code:
            if refused is not None:
                raise refused
            if not snapshot.is_file():
                raise ImportError(f"cannot import {module_name!r} and {run.path} holds no script snapshot")
            raise UntrustedCodeError(
                f"the class {qualname!r} was defined in a script that is not importable here ({module_name!r}); "
                f"loading it means executing {snapshot}, code saved in the run directory. Read it, then pass "
                "trust_code=True if you trust it"
            )
        if not snapshot.is_file():
            raise ImportError(f"cannot import {module_name!r} and {run.path} holds no script snapshot")
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
    if not isinstance(obj, type) or not issubclass(obj, kind):
        raise UntrustedCodeError(f"the checkpoint's {role} class {path!r} is not a {kind.__name__} subclass")
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


def _build_recorded_model(ckpt: Checkpoint, source: str) -> MultilayerTransformer:
    """The model the checkpoint's ``model_kwargs`` describe, first built without memory (on the meta device) and
    checked against the saved weights: recorded arguments are data, and must neither fail deep inside the model's
    constructor nor allocate a model far larger than the weights that fill it."""
    kwargs = ckpt.model_kwargs or {}
    try:
        with torch.device("meta"):
            skeleton = MultilayerTransformer(**kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        message = " ".join(str(e).split())[:200]
        raise ValueError(f"{source} records model arguments that build no model ({message})") from None
    problem = model_mismatch(skeleton, ckpt.model, source)
    if problem is not None:
        raise ValueError(f"{source}: the recorded model arguments do not describe its weights: {problem}")
    return MultilayerTransformer(**kwargs)


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
        what = "is a file, not a run directory" if run.path.exists() else "does not exist"
        raise FileNotFoundError(f"run directory {str(run_dir)!r} {what}")
    path = _find_checkpoint(run, checkpoint)
    ckpt = read_checkpoint(path, map_location=device)
    classes = ckpt.classes
    if "config" not in classes:
        raise ValueError(f"{path} records no task classes: it was not written by iluvattnshun's Trainer")

    config_cls = _import_class(classes["config"], run, trust_code, Config, "config")
    if not isinstance(ckpt.config, str):
        raise ValueError(f"{path} records no config (YAML text)")
    config = config_from_yaml_string(ckpt.config, config_cls, source=str(path))
    prompter = None
    if "prompter" in classes:
        prompter = _import_class(classes["prompter"], run, trust_code, Prompter, "prompter")(config)
    trainer = None
    # Building a model draws its initial weights from the global generator: on a forked one, the caller's random
    # streams are left as they were (the checkpoint's weights replace the draws anyway).
    with torch.random.fork_rng(devices=[]):
        if ckpt.model_kwargs is not None:
            model: nn.Module = _build_recorded_model(ckpt, str(path))
        else:  # a custom model: only its trainer knows how to build it
            from iluvattnshun.trainer import Trainer  # the trainer pulls in the whole loop: only for custom models

            trainer = _import_class(classes.get("trainer"), run, trust_code, Trainer, "trainer")(config)
            model = trainer.get_model()
    load_model_state_dict(model, ckpt.model, source=str(path))
    model.to(device).eval()
    return LoadedRun(config, model, prompter, trainer, ckpt, path)
