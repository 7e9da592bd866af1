"""Every preset, pinned value by value; the paper presets checked against the original study's recipes."""

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from examples import dag, shakespeare, var_eval
from examples.var_rename import task as var_rename
from iluvattnshun.config import get_yaml_string
from iluvattnshun.model_config import training_step_memory
from iluvattnshun.task import PromptTaskTrainer, device_memory_bytes

GOLDEN = Path(__file__).parent / "presets"

PRESETS: dict[str, dict[str, Callable[[], Any]]] = {
    "var_rename": var_rename.PRESETS,
    "var_eval": var_eval.PRESETS,
    "dag": dag.PRESETS,
    "shakespeare": shakespeare.PRESETS,
}
CASES = [(task, name) for task, presets in PRESETS.items() for name in presets]
PROMPTERS: dict[str, Any] = {
    "var_rename": var_rename.VarRenamePrompter,
    "var_eval": var_eval.VarEvalPrompter,
    "dag": dag.DagPrompter,
}


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


@pytest.mark.parametrize(("task", "name"), [(t, n) for t, n in CASES if t in PROMPTERS])
def test_every_prompt_task_preset_passes_the_memory_check(task: str, name: str) -> None:
    # The check refuses only what cannot fit: every preset, the paper ones included, passes on this machine's RAM.
    config = PRESETS[task][name]()
    PromptTaskTrainer(PROMPTERS[task](config)).check_memory()


def test_the_memory_estimate_is_a_real_lower_bound() -> None:
    # The paper recipe (8 layers, d_model 128, batch 128 x 600 tokens) keeps at least 8 x 16 x 128 values per token
    # for the backward pass: 2.4 GiB at bf16, 4.7 GiB in float32, with its 1.6M parameters' 25 MB of state.
    config = var_rename.paper()
    need = training_step_memory(39, config, config.batch_size, 600, bytes_per_value=2)
    assert 16 * 1_500_000 < need.state < 16 * 1_700_000
    assert need.activations == 128 * 600 * (8 * 16 * 128 * 2 + 8 * 39 + 16)
    assert sum(training_step_memory(39, config, 128, 600, bytes_per_value=4)) / 2**30 > 4.6
    total = device_memory_bytes(torch.device("cpu"))
    assert total is not None and total > 2**30
