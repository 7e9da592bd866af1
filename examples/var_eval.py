"""Variable evaluation: chains of additions mod 10, each binding a fresh variable.

Prompt ``1+3>a;2+4>b;a+3>c;`` (num_chains 2, num_statements 3). Each chain starts at a random digit
(chains may share a starting digit); the first ``num_chains`` statements start the chains, one each.
Every statement ``x+d>y;`` adds a random digit ``d`` (mod 10) to a chain's current variable ``x`` (for
the starting statements the starting digit itself; later statements pick a chain uniformly) and binds
the result to a fresh letter ``y`` that is not the current variable of any chain. A prompt has exactly
``6 * num_statements`` characters (so ``num_statements >= num_chains``). With ``bind_first=False`` (the
original study's layout) every statement picks its chain uniformly.

The answer is aligned with the prompt: the result at the new variable's position, ``.`` (masked)
elsewhere: ``....4.....6.....7.`` above. Metadata ``depth``: the chain's number of statements before
this one, for all 6 characters; a statement at depth k needs k + 1 additions to evaluate.
"""

from dataclasses import dataclass

import numpy as np

from examples.recipes import CPU, ORIGINAL
from examples.variables import Chains, pick_chain, rename, vocab
from iluvattnshun.prompter import Prompter
from iluvattnshun.task import PromptTaskConfig, main

VOCAB = vocab(">;.+")
"""Token ids: digits 0-9 -> 0..9, a-z -> 10..35, '>' 36, ';' 37, '.' 38 (mask), '+' 39."""
GT, SEMI, MASK, PLUS = (VOCAB.index(c) for c in ">;.+")


@dataclass(kw_only=True)
class VarEvalConfig(PromptTaskConfig):
    """Variable evaluation: data, model, optimiser and trainer fields (see ``--help``)."""

    TASK = "var_eval"
    ALIASES = {"num_renames": "num_statements"}

    num_chains: int = 2
    """Number of independent chains (1..25: a fresh letter must exist next to every live one)."""
    num_statements: int = 8
    """Statements per prompt; a prompt has 6 * num_statements characters."""
    bind_first: bool = True
    """The first num_chains statements start every chain, one chain each; false: the original study's layout,
    where every statement picks its chain at random."""

    def data_hash_params(self) -> list[str]:
        return ["num_chains", "num_statements", "bind_first"]

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.num_chains <= 25:
            raise ValueError(
                f"num_chains must be in 1..25 (up to num_chains letters are live and a fresh one must remain), "
                f"got {self.num_chains}"
            )
        if self.bind_first and self.num_statements < self.num_chains:
            raise ValueError(
                f"num_statements ({self.num_statements}) must be >= num_chains ({self.num_chains}): the first "
                f"num_chains statements start the chains"
            )


class VarEvalPrompter(Prompter[VarEvalConfig]):
    """Generates variable evaluation prompts, one at a time or vectorised over a whole batch."""

    VOCAB = VOCAB
    MASK_CHAR = "."
    GENERATOR_VERSION = 2
    CHUNK_SIZE = 32768

    @property
    def max_seq_len(self) -> int:
        return 6 * self.config.num_statements

    def get_prompt(self, rng: np.random.Generator) -> tuple[str, str, dict[str, list[int]]]:
        """One prompt, its answer and per-character depths (the straightforward reference version)."""
        num_chains = self.config.num_chains
        value = [int(v) for v in rng.integers(0, 10, size=num_chains)]
        current = [str(v) for v in value]  # current variable of each chain: first the digit itself
        depth = [0] * num_chains
        live: set[str] = set()
        prompt, answer, depths = [], [], []
        for r in range(self.config.num_statements):
            c = pick_chain(rng, r, num_chains, self.config.bind_first)
            addend = int(rng.integers(10))
            old, new = rename(rng, c, current, live)
            value[c] = (value[c] + addend) % 10
            prompt.append(f"{old}+{addend}>{new};")
            answer.append(f"....{value[c]}.")
            depths += [depth[c]] * 6
            depth[c] += 1
        return "".join(prompt), "".join(answer), {"depth": depths}

    def get_prompts(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """``n`` prompts at once: a loop over statements, each step vectorised over all examples.

        Same distribution as ``get_prompt`` (uniform chain and addend; fresh letter uniform over the
        non-live letters by rejection sampling).
        """
        num_chains, num_statements = self.config.num_chains, self.config.num_statements
        value = rng.integers(0, 10, size=n * num_chains, dtype=np.uint8)  # (n*C,) current value of each chain
        chains = Chains(value.reshape(n, num_chains), len(VOCAB))  # digit tokens = digits
        stmt = np.empty((n, num_statements, 6), dtype=np.uint8)  # (n, R, 6) "x+d>y;"
        stmt[:, :, 1] = PLUS
        stmt[:, :, 3] = GT
        stmt[:, :, 5] = SEMI
        answer = np.full((n, num_statements, 6), MASK, dtype=np.uint8)
        depth = np.empty((n, num_statements), dtype=np.int64)
        for r in range(num_statements):
            idx = chains.pick(rng, r, bind_first=self.config.bind_first)  # (n,) the chain of statement r
            addend = rng.integers(0, 10, size=n, dtype=np.uint8)
            old, new, depth[:, r] = chains.rename(rng, idx)
            result = (value[idx] + addend) % 10
            value[idx] = result
            stmt[:, r, 0] = old
            stmt[:, r, 2] = addend
            stmt[:, r, 4] = new
            answer[:, r, 4] = result
        length = 6 * num_statements
        return {
            "prompt": stmt.reshape(n, length),
            "answer": answer.reshape(n, length),
            "depth": np.repeat(depth, 6, axis=1),
        }


def quick() -> VarEvalConfig:
    """Sized for a 2-core CPU, tied embeddings; stops after 12,000 steps (examples/README.md has its curve)."""
    return VarEvalConfig(
        **CPU,
        num_chains=2,
        num_statements=8,
        train_size=200_000,
        test_size=2_000,
        tie_weights=True,
        batch_size=64,
        max_steps=12_000,
        eval_every_n_samples=64 * 500,
    )


def paper() -> VarEvalConfig:
    """The original study's recipe, field by field (meant for a GPU)."""
    return VarEvalConfig(
        **ORIGINAL,
        num_chains=2,
        num_statements=40,
        train_size=10_000_000,
        test_size=10_000,
        rope_base=1000.0,
        batch_size=256,
    )


PRESETS = {"quick": quick, "paper": paper}

if __name__ == "__main__":
    main(VarEvalPrompter, PRESETS)
