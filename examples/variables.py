"""Variables named by letters, in chains: the shared vocabulary of the variable tasks and their name bookkeeping.

A chain starts at a digit; each statement on it binds the chain's current variable to a fresh letter, one that is
not the current variable of any chain ("live"). Either the first statements bind every chain in turn
(``bind_first``), or every statement picks its chain at random (the original study's layout). ``rename`` does one such step for one example (the reference
generators), ``Chains`` does it for a whole batch at once (the vectorised ones).
"""

import numpy as np

DIGITS = "0123456789"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
FIRST_LETTER = len(DIGITS)
"""Token id of ``a`` in every vocabulary made by ``vocab``."""


def pick_chain(rng: np.random.Generator, statement: int, num_chains: int, bind_first: bool) -> int:
    """The chain of one example's ``statement`` (see ``Chains.pick``)."""
    return statement if bind_first and statement < num_chains else int(rng.integers(num_chains))


def vocab(punctuation: str) -> str:
    """Digits (token ids 0-9), letters (10-35), then the task's punctuation characters."""
    return DIGITS + LETTERS + punctuation


def rename(rng: np.random.Generator, chain: int, current: list[str], live: set[str]) -> tuple[str, str]:
    """Bind chain ``chain``'s current variable to a letter drawn uniformly from those not ``live``.

    Updates ``current`` and ``live`` in place; returns ``(old, new)``.
    """
    free = [x for x in LETTERS if x not in live]
    new = free[int(rng.integers(len(free)))]
    old = current[chain]
    live.discard(old)  # old may be the starting digit: never live, harmless
    live.add(new)
    current[chain] = new
    return old, new


class Chains:
    """The chains of ``n`` examples at once: flat ``(n * C,)`` state with per-example offsets (1-D fancy
    indexing beats 2-D), advanced one statement at a time for every example together."""

    def __init__(self, start: np.ndarray, vocab_size: int) -> None:
        """Args:
        start: ``(n, C)`` token of each chain's starting digit (its current variable until it is renamed);
            the dtype of the tokens ``rename`` returns.
        vocab_size: tokens in the vocabulary.
        """
        n, self.num_chains = start.shape
        self.current = start.reshape(-1).copy()
        self.depth = np.zeros(n * self.num_chains, dtype=np.uint32)
        """Statements on each chain so far."""
        self.live = np.zeros(n * vocab_size, dtype=bool)
        self.chain_base = np.arange(n) * self.num_chains
        self.live_base = np.arange(n) * vocab_size

    def pick(
        self, rng: np.random.Generator, statement: int, dtype: type[np.integer] | None = None, bind_first: bool = True
    ) -> np.ndarray:
        """The chain of ``statement`` in every example, as flat indices: with ``bind_first`` chain ``statement`` for
        the first ``C`` statements (they start the chains), then uniform; without it uniform from the start (a
        chain starts at the first statement that picks it). Drawn with ``dtype``: part of the random stream."""
        if bind_first and statement < self.num_chains:
            return self.chain_base + statement
        if dtype is None:
            return self.chain_base + rng.integers(0, self.num_chains, size=len(self.chain_base))
        return self.chain_base + rng.integers(0, self.num_chains, size=len(self.chain_base), dtype=dtype)

    def rename(self, rng: np.random.Generator, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bind the current variable of chain ``idx`` (one per example) to a fresh letter.

        The letter is uniform over those not live in the example: rejection sampling redraws only the rows that
        hit a live letter. Returns ``(old, new, depth)``: the tokens, and the chain's statements before this one.
        """
        dtype = self.current.dtype.type
        live, live_base = self.live, self.live_base
        new = rng.integers(FIRST_LETTER, FIRST_LETTER + len(LETTERS), size=len(idx), dtype=dtype)
        retry = np.flatnonzero(live[live_base + new])
        while retry.size:
            redraw = rng.integers(FIRST_LETTER, FIRST_LETTER + len(LETTERS), size=retry.size, dtype=dtype)
            new[retry] = redraw
            retry = retry[live[live_base[retry] + redraw]]
        old = self.current[idx]
        live[live_base + old] = False  # old may be the starting digit: never live, harmless
        live[live_base + new] = True
        self.current[idx] = new
        depth = self.depth[idx]
        self.depth[idx] = depth + 1
        return old, new, depth
