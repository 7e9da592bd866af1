"""Variable renaming: follow chains of renames back to the digit each chain started from.

Prompt ``1>a;0>b;a>c;b>d;d>e;`` (num_chains 2, num_renames 5). Each chain starts at a distinct
digit (0..num_chains-1, in random order): the first ``num_chains`` statements bind every chain's digit
to a letter, one chain each, in the order of that random permutation (``1>a;0>b;``). Every later
statement ``old>new;`` picks a chain uniformly and renames its current variable ``old`` to a fresh
letter ``new`` that is not the current variable of any chain. The binding statements count as renames
too: a prompt has exactly ``4 * num_renames`` characters (so ``num_renames >= num_chains``). With
``bind_first=False`` (the original study's layout) every statement picks its chain uniformly, and a chain's
first statement binds its digit wherever it falls.

The answer is aligned with the prompt: at both variable positions of a statement, the chain's
digit; ``.`` (masked) at ``>`` and ``;``. For the prompt above: ``1.1.0.0.1.1.0.0.0.0.``.
Metadata ``depth``: the chain's number of renames before this statement, for all 4 characters
(above: ``0000 0000 1111 1111 2222``).
"""

import dataclasses
import math
from typing import Any
from dataclasses import dataclass

import numpy as np

from examples.recipes import CPU, ORIGINAL
from examples.variables import Chains, pick_chain, rename, vocab
from iluvattnshun.prompter import Prompter
from iluvattnshun.task import PromptTaskConfig

VOCAB = vocab(">;.")
"""Token ids: digits 0-9 -> 0..9, a-z -> 10..35, '>' 36, ';' 37, '.' 38 (mask)."""
GT, SEMI, MASK = VOCAB.index(">"), VOCAB.index(";"), VOCAB.index(".")


@dataclass(kw_only=True)
class VarRenameConfig(PromptTaskConfig):
    """Variable renaming: data, model, optimiser and trainer fields (see ``--help``)."""

    TASK = "var_rename"

    num_chains: int = 2
    """Number of independent renaming chains (1..10: each starts at a distinct digit)."""
    num_renames: int = 8
    """Rename statements per prompt; a prompt has 4 * num_renames characters."""
    bind_first: bool = True
    """The first num_chains statements bind every chain's digit, one chain each; false: the original study's
    layout, where every statement picks its chain at random and a chain's first statement binds its digit."""
    mix_layouts: bool = False
    """Each prompt's layout drawn at random, half of them bind_first and half the original study's (overrides
    bind_first): a model trained on both holds its reach on either."""
    mix_layouts_from: int = 0
    """With --mix_layouts (and --streaming): the training step from which layouts are mixed; before it every
    streamed prompt is bind_first (one layout leaves the first plateau sooner: bench/RESULTS.md)."""

    min_renames: int = 0
    """Length curriculum for streamed training prompts (--streaming): they start with this many renames and grow
    by half (rounded up) every renames_growth_steps steps, up to num_renames (0: always num_renames)."""
    renames_growth_steps: int = 4000
    """Training steps at each prompt length of the curriculum."""

    def data_hash_params(self) -> list[str]:
        # mix_layouts only when on: the datasets cached before it existed keep their hashes.
        return ["num_chains", "num_renames", "bind_first", *(["mix_layouts"] if self.mix_layouts else [])]

    def data_fields(self) -> list[str]:
        return [*super().data_fields(), "min_renames", "renames_growth_steps", "mix_layouts_from"]

    def renames_at(self, step: int) -> int:
        """Renames per streamed training prompt at ``step`` (the length curriculum)."""
        if not self.min_renames:
            return self.num_renames
        renames = self.min_renames
        for _ in range(step // self.renames_growth_steps):
            if renames >= self.num_renames:
                break
            renames = math.ceil(renames * 1.5)
        return min(renames, self.num_renames)

    def validate(self) -> None:
        super().validate()
        # At most 10 chains also bounds the live letters by 10 < 26, so a fresh letter always exists.
        if not 1 <= self.num_chains <= 10:
            raise ValueError(
                f"num_chains must be in 1..10 (each chain starts at a distinct digit), got {self.num_chains}"
            )
        if self.min_renames:
            if not self.streaming:
                raise ValueError(
                    "min_renames (a length curriculum) needs --streaming: the cached dataset has one length"
                )
            bound = self.bind_first or self.mix_layouts
            if not max(1, self.num_chains if bound else 1) <= self.min_renames <= self.num_renames:
                raise ValueError(f"min_renames must be in num_chains..num_renames, got {self.min_renames}")
        if self.renames_growth_steps < 1:
            raise ValueError(f"renames_growth_steps must be >= 1, got {self.renames_growth_steps}")
        if self.mix_layouts_from < 0:
            raise ValueError(f"mix_layouts_from must be >= 0, got {self.mix_layouts_from}")
        if self.mix_layouts and self.mix_layouts_from and not self.streaming:
            raise ValueError(
                "mix_layouts_from (a layout curriculum) needs --streaming: the cached dataset has one mix of layouts"
            )
        if (self.bind_first or self.mix_layouts) and self.num_renames < self.num_chains:
            raise ValueError(
                f"num_renames ({self.num_renames}) must be >= num_chains ({self.num_chains}): the first "
                f"num_chains statements bind each chain's digit"
            )


class VarRenamePrompter(Prompter[VarRenameConfig]):
    """Generates variable renaming prompts, one at a time or vectorised over a whole batch."""

    VOCAB = VOCAB
    MASK_CHAR = "."
    GENERATOR_VERSION = 2
    CHUNK_SIZE = 32768

    @property
    def max_seq_len(self) -> int:
        return 4 * self.config.num_renames

    def at_step(self, step: int) -> "VarRenamePrompter":
        """The prompter of training step ``step``: the curriculum's prompt length, one layout before the mix starts."""
        changes: dict[str, Any] = {}
        renames = self.config.renames_at(step)
        if renames != self.config.num_renames:
            changes.update(num_renames=renames, min_renames=0)
        if self.config.mix_layouts and step < self.config.mix_layouts_from:
            changes.update(mix_layouts=False, bind_first=True, mix_layouts_from=0)
        return VarRenamePrompter(dataclasses.replace(self.config, **changes)) if changes else self

    def get_prompt(self, rng: np.random.Generator) -> tuple[str, str, dict[str, list[int]]]:
        """One prompt, its answer and per-character depths (the straightforward reference version)."""
        num_chains = self.config.num_chains
        bind_first = self.config.bind_first if not self.config.mix_layouts else bool(rng.integers(2))
        values = [str(v) for v in rng.permutation(num_chains)]  # chain c holds the digit values[c]
        current = list(values)  # current variable of each chain
        depth = [0] * num_chains
        live: set[str] = set()  # letters that are some chain's current variable
        prompt, answer, depths = [], [], []
        for r in range(self.config.num_renames):
            c = pick_chain(rng, r, num_chains, bind_first)
            old, new = rename(rng, c, current, live)
            prompt.append(f"{old}>{new};")
            answer.append(f"{values[c]}.{values[c]}.")
            depths += [depth[c]] * 4
            depth[c] += 1
        return "".join(prompt), "".join(answer), {"depth": depths}

    def get_prompts(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """``n`` prompts at once: a loop over statements, each step vectorised over all examples.

        Same distribution as ``get_prompt``: the chain is uniform, and the fresh letter is uniform over
        the letters not live in the example (rejection sampling: redraw only the rows that hit a live
        letter, at most num_chains/26 of them). Each statement is built as one little-endian uint32
        word (4 characters), so the (n, R) outputs are written once and viewed as (n, 4R) bytes.
        """
        if self.config.mix_layouts:
            # Half the prompts (binomially) of each layout, in random order.
            bound = int(rng.binomial(n, 0.5))
            parts = [
                VarRenamePrompter(dataclasses.replace(self.config, mix_layouts=False, bind_first=b)).get_prompts(rng, k)
                for b, k in ((True, bound), (False, n - bound))
            ]
            order = rng.permutation(n)
            return {key: np.concatenate([p[key] for p in parts])[order] for key in parts[0]}
        num_chains, num_renames = self.config.num_chains, self.config.num_renames
        values = np.argsort(rng.random((n, num_chains)), axis=1).astype(np.uint32)  # (n, C) random permutations
        chains = Chains(values, len(VOCAB))
        answer_word = values.reshape(-1) * np.uint32(0x10001) + np.uint32(MASK << 8 | MASK << 24)  # "v.v."
        stmt_const = np.uint32(GT << 8 | SEMI << 24)  # "?>?;"
        # Explicitly little-endian words, so viewing them as bytes gives characters in order on any host.
        stmt = np.empty((n, num_renames), dtype="<u4")  # (n, R) 4 characters each
        answer = np.empty((n, num_renames), dtype="<u4")  # (n, R)
        small = num_renames <= 256  # depths fit a byte: repeat them 4x by one multiply
        depth = np.empty((n, num_renames), dtype="<u4" if small else np.uint32)  # (n, R)
        for r in range(num_renames):
            idx = chains.pick(rng, r, np.uint8, self.config.bind_first)  # (n,) chain of statement r (digit values[c])
            old, new, d = chains.rename(rng, idx)
            stmt[:, r] = (new << 16) | old | stmt_const
            answer[:, r] = answer_word[idx]
            depth[:, r] = d * np.uint32(0x01010101) if small else d
        length = 4 * num_renames
        return {
            "prompt": stmt.view(np.uint8).reshape(n, length),
            "answer": answer.view(np.uint8).reshape(n, length),
            "depth": depth.view(np.uint8).reshape(n, length) if small else np.repeat(depth, 4, axis=1),
        }


def quick() -> VarRenameConfig:
    """Sized for a 2-core CPU: depths 0-2 at >= 95% within its 8,000 steps (examples/README.md)."""
    return VarRenameConfig(
        **CPU,
        num_chains=2,
        num_renames=8,
        train_size=200_000,
        test_size=2_000,
        batch_size=64,
        max_steps=8_000,
        eval_every_n_samples=64 * 500,
    )


def paper() -> VarRenameConfig:
    """The original study's recipe, field by field (meant for a GPU; its grid varies num_layers and num_heads)."""
    return VarRenameConfig(
        **ORIGINAL,
        num_chains=4,
        num_renames=150,
        train_size=1_000_000,
        test_size=10_000,
        rope_base=2000.0,
        batch_size=128,
    )


def depth() -> VarRenameConfig:
    """The depth-law recipe for a 2-core CPU (python -m examples.var_rename.depth_law; examples/README.md): QK-norm,
    fresh prompts of 2 chains in both layouts whose length grows from 8 to the test's 64 renames (depths past 25), at
    most 2,048 tokens a batch."""
    return VarRenameConfig(
        **{**CPU, "max_minutes": None, "lr": 2e-3},  # lr 2e-3: no 4-layer seed stays at depth 2 (bench/RESULTS.md)
        qk_norm=True,  # 3 layers: off the first plateau by step 1,000 for 5 of 5 seeds, 0 of 5 without (bench/RESULTS.md)
        num_chains=2,
        num_renames=64,
        mix_layouts=True,  # both layouts: the reach holds on the original study's layout too
        mix_layouts_from=1000,  # after the first plateau: mixed from the start, 4 layers stayed on it (bench/RESULTS.md)
        min_renames=8,
        renames_growth_steps=600,  # 8, 12, 18, 27, 41, 62 renames, the test's 64 from step 3,600
        streaming=True,
        train_size=1_000,  # streamed training: only the test split is used
        test_size=500,
        batch_size=64,
        batch_tokens=2048,  # 64 prompts of 8 renames, 8 of 64: every step scores 512 answers at about the same cost
        max_steps=5_000,
        lr_decay="linear",  # constant, then down to 0.1 x lr over the last 15% of the steps
        decay_fraction=0.15,
        eval_every_n_samples=64 * 250,  # every 250 steps at first, every 2,000 at 64 renames
    )


PRESETS = {"quick": quick, "paper": paper, "depth": depth}
