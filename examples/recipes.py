"""The two starting points the example presets share: a recipe sized for a 2-core CPU, and the original study's.

A task's preset is one of these plus its own data and budget (``VarRenameConfig(**CPU, num_renames=8, ...)``);
``tests/test_presets.py`` pins every value of every preset.
"""

from typing import Any

CPU: dict[str, Any] = {
    "num_layers": 4,
    "dim_model": 64,
    "num_heads": 4,
    "lr": 1e-3,
    "warmup_steps": 200,
    "num_epochs": -1,
    "max_minutes": 30.0,  # a safety cap only: the step budget ends the run
    "save_every_n_seconds": 120.0,
}
"""Small model, AdamW 1e-3 with 200 warmup steps, bounded by a step budget (given per task), cached data."""

ORIGINAL: dict[str, Any] = {
    "num_layers": 8,
    "dim_model": 128,
    "num_heads": 4,
    "dropout_attn": 0.0,
    "dropout_mlp": 0.1,
    "dropout_emb": 0.1,
    "lr": 1e-4,
    "beta2": 0.999,  # torch's AdamW default, which the original used
    "weight_decay": 0.01,
    "decay_all_params": True,  # the original's AdamW(model.parameters())
    "warmup_steps": 4000,
    "warmup_start_factor": 1e-3,
    "grad_norm_max": 1.0,
    "num_epochs": 1000,
    "eval_every_n_samples": 1_000_000,
    "log_every_n_seconds": 3.0,
    "save_every_n_seconds": 100.0,
    "overwrite_existing_checkpoints": True,
    "bind_first": False,  # the original generators pick every statement's chain at random
    "data_seed": 42,
}
"""The original study's recipe for the variable tasks (8 layers, d_model 128, meant for a GPU)."""
