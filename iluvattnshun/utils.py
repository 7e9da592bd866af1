"""Small utilities, and the stable import location of config and checkpoint helpers.

``iluvattnshun.utils.load_checkpoint`` / ``load_config_from_yaml`` etc. are what users import; they are
implemented in ``iluvattnshun.config`` and ``iluvattnshun.checkpoint``.
"""

import random
from typing import Any, TypeVar

import numpy as np
import torch

from iluvattnshun.checkpoint import load_checkpoint, load_model_state_dict, save_checkpoint
from iluvattnshun.config import (
    config_from_dict,
    config_to_dict,
    get_yaml_string,
    load_config_from_yaml,
    parse_config,
)

__all__ = [
    "config_from_dict",
    "config_to_dict",
    "get_yaml_string",
    "load_checkpoint",
    "load_config_from_yaml",
    "load_model_state_dict",
    "move_to_device",
    "parse_config",
    "save_checkpoint",
    "seed_everything",
]

T = TypeVar("T")


def move_to_device(batch: T, device: str | torch.device) -> T:
    """Move every tensor in a (nested) dict / list / tuple to ``device`` (non-blocking); other leaves stay.

    CPU tensors bound for a GPU are pinned first: a copy from pageable memory makes the host wait for the
    GPU to finish its queued work (a stream synchronisation per batch), a copy from pinned memory does not.
    """
    if isinstance(batch, torch.Tensor):
        if batch.device.type == "cpu" and torch.device(device).type == "cuda" and not batch.is_pinned():
            batch = batch.pin_memory()  # type: ignore[assignment]
        return batch.to(device, non_blocking=True)  # type: ignore[return-value]
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}  # type: ignore[return-value]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # NamedTuple
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def first_tensor(batch: Any) -> torch.Tensor | None:
    """The first tensor in a (nested) batch, in insertion order, or None."""
    if isinstance(batch, torch.Tensor):
        return batch
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for v in values:
        t = first_tensor(v)
        if t is not None:
            return t
    return None
