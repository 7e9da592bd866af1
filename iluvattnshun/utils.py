"""The stable import location of helpers users import (``iluvattnshun.utils.load_checkpoint``, ...).

Each is implemented where its concept lives: configs in ``iluvattnshun.config``, checkpoint files in
``iluvattnshun.checkpoint``, batches in ``iluvattnshun.batches``; ``load_checkpoint`` with its original call forms in
``iluvattnshun.compat``.
"""

from iluvattnshun.checkpoint import load_model_state_dict, save_checkpoint, seed_everything
from iluvattnshun.compat import load_checkpoint
from iluvattnshun.config import (
    config_from_dict,
    config_to_dict,
    get_yaml_string,
    load_config_from_yaml,
    parse_config,
)
from iluvattnshun.batches import first_tensor, move_to_device

__all__ = [
    "config_from_dict",
    "config_to_dict",
    "get_yaml_string",
    "first_tensor",
    "load_checkpoint",
    "load_config_from_yaml",
    "load_model_state_dict",
    "move_to_device",
    "parse_config",
    "save_checkpoint",
    "seed_everything",
]
