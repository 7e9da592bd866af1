"""Device parameters for tests whose path exists on the CPU and on a GPU: the CPU case runs in every test run, so a
GPU path's assertions cannot rot unseen; the CUDA case is marked ``cuda`` and skips without a GPU."""

from typing import Any

import pytest
import torch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, needs_cuda], id="cuda")


def devices(*cpu_marks: Any) -> list[Any]:
    """``["cpu", "cuda"]`` as parameters of a ``device`` argument; ``cpu_marks`` apply to the CPU case only (e.g.
    ``pytest.mark.slow`` where the CPU twin compiles)."""
    return [pytest.param("cpu", marks=list(cpu_marks), id="cpu"), CUDA]
