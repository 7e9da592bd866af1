"""Where a var_eval model's answers go wrong: accuracy by how far back the used variable was bound.

    python -m examples.var_eval_lookup logs/var_eval/run_1_quick [--prompts=1500]

For statements at depth 1 and 2, the accuracy at the new variable split by the number of statements between
the statement and the one that bound its used variable, and the share of answers equal to the *previous*
statement's value plus this statement's addend (what a model that finds bindings by recency, not by name,
answers). ``examples/README.md`` reads the quick preset's run with it.
"""

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from examples.var_eval import VarEvalPrompter
from iluvattnshun import load_run
from iluvattnshun.cli import CommandParser

BATCH = 500
"""Prompts per forward pass."""

MAX_PROMPTS = 1_000_000
"""Most prompts one report draws (they are held in memory together)."""


@dataclass
class LookupReport:
    """Depth-1 and depth-2 accuracy at the new variable, by statements since the used variable's binding."""

    hits: dict[tuple[int, int], int]
    """(depth, statements back, capped at 4) -> correct answers."""
    counts: dict[tuple[int, int], int]
    """(depth, statements back, capped at 4) -> statements."""
    previous_value: dict[int, int]
    """depth -> wrong answers equal to the previous statement's value plus the addend."""

    def accuracy(self, depth: int, back: int) -> float:
        return self.hits[depth, back] / self.counts[depth, back]

    def format(self) -> str:
        lines = ["depth  bound       accuracy  statements"]
        for depth, back in sorted(self.counts):
            where = {1: "previous", 4: ">= 4 back"}.get(back, f"{back} back")
            lines.append(f"{depth:5d}  {where:10s}  {self.accuracy(depth, back):8.3f}  {self.counts[depth, back]:10,d}")
        for depth, n in sorted(self.previous_value.items()):
            total = sum(c for (d, _), c in self.counts.items() if d == depth)
            lines.append(f"depth {depth}: {n / total:.3f} of answers are the previous statement's value + addend")
        return "\n".join(lines)


@torch.no_grad()
def lookup_report(
    model: nn.Module, prompter: VarEvalPrompter, num_prompts: int = 1500, seed: int = 123
) -> LookupReport:
    """Evaluate ``model`` on ``num_prompts`` fresh prompts (in batches of ``BATCH``) and split its depth-1/2 answers."""
    cols = prompter.get_prompts(np.random.default_rng(seed), num_prompts)
    tokens = cols["prompt"].astype(np.int64)
    device = next(model.parameters()).device
    pred = np.concatenate(
        [
            model(torch.from_numpy(tokens[start : start + BATCH]).to(device)).logits.argmax(-1).cpu().numpy()
            for start in range(0, len(tokens), BATCH)
        ]
    )
    hits: dict[tuple[int, int], int] = defaultdict(int)
    counts: dict[tuple[int, int], int] = defaultdict(int)
    previous_value: dict[int, int] = defaultdict(int)
    for row, answer, depth, guess in zip(tokens, cols["answer"], cols["depth"], pred):
        bound_at: dict[int, int] = {}  # variable token -> statement that bound it
        for r in range(len(row) // 6):
            old, addend, new, d = row[6 * r], row[6 * r + 2], row[6 * r + 4], depth[6 * r]
            if d in (1, 2):
                key = (int(d), min(r - bound_at[old], 4))
                counts[key] += 1
                hits[key] += int(guess[6 * r + 4] == answer[6 * r + 4])
                shortcut = (int(answer[6 * r - 2]) + int(addend)) % 10  # previous statement's value + addend
                if guess[6 * r + 4] != answer[6 * r + 4] and guess[6 * r + 4] == shortcut:
                    previous_value[int(d)] += 1
            bound_at[new] = r
    return LookupReport(dict(hits), dict(counts), dict(previous_value))


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a var_eval run directory (logs/var_eval/run_<N>_<name>)")
    parser.add_argument("--prompts", type=int, default=1500, help="fresh prompts to evaluate")
    parser.add_argument("--checkpoint", default="latest", help="checkpoint step, or latest")
    args = parser.parse_args(argv)
    if not 1 <= args.prompts <= MAX_PROMPTS:
        print(f"error: --prompts must be in 1..{MAX_PROMPTS:,}, got {args.prompts}", file=sys.stderr)
        return 2
    try:
        run = load_run(args.run_dir, checkpoint=args.checkpoint)
    except (FileNotFoundError, ImportError, ValueError) as e:
        print(f"error: run_dir: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if not isinstance(run.prompter, VarEvalPrompter):
        name = type(run.prompter).__name__
        print(f"error: run_dir: {args.run_dir} is not a var_eval run (its prompter is {name})", file=sys.stderr)
        return 2
    print(lookup_report(run.model, run.prompter, args.prompts).format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
