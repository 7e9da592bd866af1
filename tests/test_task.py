"""The prompt-task trainer's metrics: depth reach."""

import pytest

from iluvattnshun.task import depth_reach


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
