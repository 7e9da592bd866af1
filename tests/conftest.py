"""Every test runs its models on one torch thread: the models are tiny, and on a small machine shared with the
test's own subprocesses (or anything else) several threads per process slow everything down badly."""

from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
