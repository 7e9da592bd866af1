"""The original code's names and call forms, in one place; each is applied where values enter the library.

- ``MODEL_NAMES``: the model's original argument names, accepted by ``MultilayerTransformer`` and, as
  ``ModelConfig.ALIASES``, on the command line and in YAML.
- ``OPTIM_NAMES``: the optimiser fields' original names (``OptimConfig.ALIASES``).
- ``load_checkpoint(path, model, optimizer, scheduler)``: loads into the model and returns
  ``(epoch, step, metrics)``; exported as ``iluvattnshun.utils.load_checkpoint``.
- ``make_dataset(prompter, path, train_size, test_size, seed)``: the original ``prompter.make_dataset(...)``, which
  ``Prompter.make_dataset`` calls.

README.md's "Coming from the original code" lists them (with the task configs' own aliases) for users.
"""

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Mapping, TypeVar

import torch
import torch.nn as nn

from iluvattnshun import checkpoint

if TYPE_CHECKING:
    import datasets

    from iluvattnshun.datasets import DataSource

    S = TypeVar("S", bound=DataSource)

MODEL_NAMES: Mapping[str, str] = {"d_model": "dim_model", "n_heads": "num_heads", "n_layers": "num_layers"}
"""The model's original argument names and the current ones (the names of the command line and configs)."""

OPTIM_NAMES: Mapping[str, str] = {"learning_rate": "lr", "lr_start_factor": "warmup_start_factor"}
"""The optimiser fields' original names and the current ones."""


def model_sizes(sizes: dict[str, int], original_names: Mapping[str, int]) -> dict[str, int]:
    """``MultilayerTransformer``'s size arguments with those given under their original names put in place.

    Raises:
        TypeError: for a keyword that is no original name, as Python raises for an unknown argument.
    """
    for old, value in original_names.items():
        if old not in MODEL_NAMES:
            raise TypeError(f"MultilayerTransformer got an unexpected keyword argument {old!r}")
        sizes[MODEL_NAMES[old]] = value
    return sizes


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | str | torch.device | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    map_location: str | torch.device | None = "cpu",
) -> Any:
    """Load a checkpoint with ``weights_only=True``: as a dict, or, given a model, into the model.

    ``load_checkpoint(path)`` returns the checkpoint dict. ``load_checkpoint(path, model, optimizer=None,
    scheduler=None)`` is the original call form: it loads the saved state into the model (and the optimizer and
    scheduler when given) and returns ``(epoch, step, metrics)``; it reads this project's checkpoints and the
    original code's (``model_state_dict``, ...), or a bare state dict. A second positional argument that is a
    device means ``map_location``, as in the earlier ``load_checkpoint(path, "cpu")``.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: as ``iluvattnshun.checkpoint.load_checkpoint``, or when the file holds no model state for
            ``model``.
    """
    if isinstance(model, (str, torch.device)):
        model, map_location = None, model
    state = checkpoint.load_checkpoint(path, map_location=map_location)
    if model is None:
        return state
    return checkpoint.load_state_into(state, model, optimizer, scheduler, source=os.fspath(path))


def make_dataset(
    prompter: "S",
    path: str | os.PathLike[str] | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> "datasets.DatasetDict":
    """The original ``prompter.make_dataset(path, train_size, test_size, seed)``: each argument given replaces the
    config's ``dataset_path``, ``train_size``, ``test_size`` or ``data_seed``; ``kwargs`` go to
    ``iluvattnshun.datasets.make_dataset``, which builds (or loads) the dataset."""
    from iluvattnshun.datasets import make_dataset as build  # HF datasets loads only when a dataset is made

    given: dict[str, Any] = {
        "dataset_path": None if path is None else os.fspath(path),
        "train_size": train_size,
        "test_size": test_size,
        "data_seed": seed,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    if changes:
        prompter = type(prompter)(dataclasses.replace(prompter.config, **changes))
    return build(prompter, **kwargs)
