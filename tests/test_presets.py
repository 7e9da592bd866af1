"""Every preset, pinned value by value; the paper presets checked against the original study's recipes."""

from pathlib import Path
from typing import Any, Callable

import pytest

from examples import dag, shakespeare, var_eval
from examples.var_rename import task as var_rename
from iluvattnshun.config import get_yaml_string

GOLDEN = Path(__file__).parent / "presets"

PRESETS: dict[str, dict[str, Callable[[], Any]]] = {
    "var_rename": var_rename.PRESETS,
    "var_eval": var_eval.PRESETS,
    "dag": dag.PRESETS,
    "shakespeare": shakespeare.PRESETS,
}
CASES = [(task, name) for task, presets in PRESETS.items() for name in presets]


@pytest.mark.parametrize(("task", "name"), CASES)
def test_preset_matches_its_pinned_yaml(task: str, name: str) -> None:
    # Every field, defaults included: a changed default or preset value shows up here. After a deliberate change,
    # regenerate with `PYTHONPATH=. python tests/test_presets.py`.
    expected = (GOLDEN / f"{task}_{name}.yaml").read_text()
    assert get_yaml_string(PRESETS[task][name]()) == expected


ORIGINAL_VARIABLE_TASKS = {
    "num_layers": 8,
    "dim_model": 128,
    "num_heads": 4,
    "dropout_attn": 0.0,
    "dropout_mlp": 0.1,
    "dropout_emb": 0.1,
    "lr": 1e-4,
    "beta2": 0.999,
    "weight_decay": 0.01,
    "decay_all_params": True,
    "warmup_steps": 4000,
    "warmup_start_factor": 1e-3,
    "lr_decay": "none",
    "num_epochs": 1000,
    "save_every_n_seconds": 100.0,
    "overwrite_existing_checkpoints": True,
    "bind_first": False,
}


def test_var_rename_paper_is_the_original_recipe() -> None:
    config = var_rename.paper()
    expected = {
        **ORIGINAL_VARIABLE_TASKS,
        "rope_base": 2000.0,
        "num_chains": 4,
        "num_renames": 150,
        "train_size": 1_000_000,
        "test_size": 10_000,
        "batch_size": 128,
    }
    assert {k: getattr(config, k) for k in expected} == expected


def test_var_eval_paper_is_the_original_recipe() -> None:
    config = var_eval.paper()
    expected = {
        **ORIGINAL_VARIABLE_TASKS,
        "rope_base": 1000.0,
        "num_chains": 2,
        "num_statements": 40,
        "train_size": 10_000_000,
        "test_size": 10_000,
        "batch_size": 256,
    }
    assert {k: getattr(config, k) for k in expected} == expected


def test_shakespeare_paper_is_the_original_recipe_and_nanogpt_keeps_the_other() -> None:
    config = shakespeare.paper()
    expected = {
        "num_layers": 8,
        "dim_model": 128,
        "num_heads": 4,
        "rope_base": 1024.0,
        "context_len": 128,
        "batch_size": 64,
        "lr": 1e-3,
        "weight_decay": 0.1,
        "decay_all_params": True,
        "warmup_steps": 0,
        "lr_decay": "none",
    }
    assert {k: getattr(config, k) for k in expected} == expected
    nano = shakespeare.nanogpt()
    assert (nano.num_layers, nano.num_heads, nano.dim_model, nano.context_len) == (6, 6, 384, 256)


def test_quick_presets_are_bounded_by_steps() -> None:
    for task, presets in PRESETS.items():
        config = presets["quick"]()
        assert config.max_steps is not None, task


if __name__ == "__main__":  # regenerate the pinned files after a deliberate preset change
    for task, name in CASES:
        (GOLDEN / f"{task}_{name}.yaml").write_text(get_yaml_string(PRESETS[task][name]()))
