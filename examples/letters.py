"""Letters as variable names: the shared vocabulary of the variable tasks and the sampling of fresh names."""

import numpy as np

DIGITS = "0123456789"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
FIRST_LETTER = len(DIGITS)
"""Token id of ``a`` in every vocabulary made by ``vocab``."""


def vocab(punctuation: str) -> str:
    """Digits (token ids 0-9), letters (10-35), then the task's punctuation characters."""
    return DIGITS + LETTERS + punctuation


def fresh_letter(rng: np.random.Generator, live: set[str]) -> str:
    """A letter drawn uniformly from those not in ``live``."""
    free = [x for x in LETTERS if x not in live]
    return free[int(rng.integers(len(free)))]


def fresh_letters(
    rng: np.random.Generator, live: np.ndarray, live_base: np.ndarray, dtype: type[np.unsignedinteger]
) -> np.ndarray:
    """For every example, a letter token drawn uniformly from those not live in it (rejection sampling).

    Args:
        rng: the generator.
        live: flat ``(n * V,)`` booleans, ``live[live_base[i] + t]`` is whether token ``t`` is live in example i.
        live_base: ``(n,)`` offset of each example's row in ``live``.
        dtype: integer dtype of the tokens drawn (part of the random stream: keep it fixed per task).

    Returns:
        ``(n,)`` letter tokens; only the rows that hit a live letter are redrawn.
    """
    new = rng.integers(FIRST_LETTER, FIRST_LETTER + len(LETTERS), size=len(live_base), dtype=dtype)
    retry = np.flatnonzero(live[live_base + new])
    while retry.size:
        redraw = rng.integers(FIRST_LETTER, FIRST_LETTER + len(LETTERS), size=retry.size, dtype=dtype)
        new[retry] = redraw
        retry = retry[live[live_base[retry] + redraw]]
    return new
