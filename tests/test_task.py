"""The prompt-task trainer's metrics: depth reach."""

import dataclasses

import pytest

from iluvattnshun.loop_state import cost_between
from iluvattnshun.task import PromptTaskTrainer, depth_reach


@pytest.mark.parametrize(
    ("accuracy", "counts", "threshold", "expected"),
    [
        ({0: 1.0, 1: 0.95, 2: 0.91, 3: 0.5}, {0: 500, 1: 500, 2: 500, 3: 500}, 0.9, 2),
        ({0: 1.0, 1: 0.95, 2: 0.91, 3: 0.5}, {0: 500, 1: 500, 2: 500, 3: 500}, 0.99, 0),
        ({0: 0.5, 1: 1.0}, {0: 500, 1: 500}, 0.9, -1),  # depth 0 fails: nothing is reached
        ({0: 1.0, 1: 0.2, 2: 0.95}, {0: 500, 1: 10, 2: 500}, 0.9, 2),  # too few positions at depth 1: skipped
        ({0: 1.0, 1: 1.0, 2: 1.0}, {0: 500, 1: 500, 2: 99}, 0.9, 1),  # the deepest depth needs enough positions
        ({0: 1.0, 1: 0.5, 2: 1.0}, {0: 500, 1: 500, 2: 500}, 0.9, 0),  # a failure stops the run of depths
    ],
)
def test_depth_reach(accuracy: dict[int, float], counts: dict[int, int], threshold: float, expected: int) -> None:
    assert depth_reach(accuracy, counts, threshold, min_positions=100) == expected


def test_eta_expects_the_curriculum_to_slow_the_steps() -> None:
    # The depth recipe's prompts grow from 8 to 64 renames: with 64 prompts a batch at every length, later steps cost
    # far more, and the ETA's cost sums say so.
    from examples.var_rename.task import VarRenamePrompter, depth

    trainer = PromptTaskTrainer(VarRenamePrompter(dataclasses.replace(depth(), batch_tokens=0)))
    costs = [trainer.step_cost(s) for s in (0, 599, 600, 1200, 1800, 2400)]
    assert costs[0] == costs[1] < costs[2] < costs[3] < costs[4] < costs[5]
    assert cost_between(trainer.step_cost, 0, 600) == pytest.approx(600 * costs[0])
    # the second half of the run costs far more than the first: a step-count ETA would be off by that ratio
    assert cost_between(trainer.step_cost, 2500, 5000) > 2.5 * cost_between(trainer.step_cost, 0, 2500)
    # The recipe's batch_tokens=2048 holds fewer prompts as they grow: a step costs more only by attention's share.
    capped = PromptTaskTrainer(VarRenamePrompter(depth()))
    assert capped.step_cost(0) == costs[0] < capped.step_cost(600) < capped.step_cost(4000) < 1.5 * costs[0]
