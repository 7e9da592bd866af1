"""DAG reachability: which error node does a start node lead to?

A layered DAG. ``num_nodes`` letter nodes are split into R ranks (R uniform in min_ranks..max_ranks,
each rank min_per_rank..max_per_rank nodes); after the last letter rank comes the error rank, the
digits ``0..num_errors-1``. Edges only go from one rank to the next. Construction, backwards from
the error rank: every node of the last letter rank gets one edge, to an error digit (spread as
evenly as possible over the digits); every node of an earlier rank picks a uniformly random node of
the next rank, takes on the error digit it leads to, and gets ``min_outdeg..max_outdeg`` edges to
distinct next-rank nodes that lead to that same digit (fewer if the next rank has fewer such nodes).
So every node reaches exactly one error node, through paths that all have the same length.

Prompt: the edges ``u>v;`` in random order, then the query ``s?`` for a uniformly random first-rank
node ``s``, e.g. ``c>1;a>c;b>d;d>0;a?``. The only target is at ``?``: the error digit reachable
from ``s`` (answer ``.................1``). With ``num_queries`` > 1, up to that many distinct
first-rank nodes are queried in turn (``c>1;a>c;b>d;d>0;a?b?``, answer ``.................1.0``):
the same question, more targets per prompt. With ``query_first`` the question comes first: ``a?b?c>1;a>c;b>d;d>0;??``
(answer ``...................10``). Prompts are right-padded with ``_`` to ``max_seq_len``;
padding positions are masked. Metadata ``depth``: the path length from the queried nodes to their
error nodes (R, the number of letter ranks), at every prompt position (``META_PAD`` = -1 on padding).
"""

from dataclasses import dataclass

import numpy as np

from examples.recipes import CPU, ORIGINAL
from examples.variables import LETTERS, vocab
from iluvattnshun.prompter import Prompter
from iluvattnshun.task import PromptTaskConfig, main

VOCAB = vocab(">;.?_")
"""Token ids: digits 0-9 -> 0..9, a-z -> 10..35, '>' 36, ';' 37, '.' 38 (mask), '?' 39, '_' 40 (pad)."""


@dataclass(kw_only=True)
class DagConfig(PromptTaskConfig):
    """DAG reachability: data, model, optimiser and trainer fields (see ``--help``)."""

    TASK = "dag"

    num_nodes: int = 8
    """Letter nodes in the graph (1..26), error nodes not counted."""
    min_ranks: int = 2
    """Minimum number of letter ranks (= path length from a first-rank node to its error node)."""
    max_ranks: int = 4
    """Maximum number of letter ranks."""
    min_per_rank: int = 2
    """Minimum letter nodes per rank."""
    max_per_rank: int = 4
    """Maximum letter nodes per rank."""
    num_errors: int = 2
    """Error nodes, the digits 0..num_errors-1 (1..10)."""
    min_outdeg: int = 1
    """Minimum out-degree of a letter node (capped by the eligible nodes of the next rank)."""
    max_outdeg: int = 2
    """Maximum out-degree of a letter node."""
    query_first: bool = False
    """Ask before the edges: the queried nodes ``a?b?`` open the prompt and bare ``??`` after the edges take the
    answers, in the same order (so the model knows what to look for while it reads the graph)."""
    num_queries: int = 1
    """First-rank nodes queried after the edges, each ``s?`` with its own target (fewer if the rank is smaller)."""

    def data_hash_params(self) -> list[str]:
        return [
            "num_nodes",
            "min_ranks",
            "max_ranks",
            "min_per_rank",
            "max_per_rank",
            "num_errors",
            "min_outdeg",
            "max_outdeg",
            "num_queries",
            "query_first",
        ]

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.num_nodes <= 26:
            raise ValueError(f"num_nodes must be in 1..26 (nodes are letters), got {self.num_nodes}")
        if self.num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {self.num_queries}")
        if not 1 <= self.num_errors <= 10:
            raise ValueError(f"num_errors must be in 1..10 (error nodes are digits), got {self.num_errors}")
        for lo, hi in (("min_ranks", "max_ranks"), ("min_per_rank", "max_per_rank"), ("min_outdeg", "max_outdeg")):
            if not 1 <= getattr(self, lo) <= getattr(self, hi):
                raise ValueError(f"need 1 <= {lo} <= {hi}, got {lo}={getattr(self, lo)}, {hi}={getattr(self, hi)}")
        for ranks in range(self.min_ranks, self.max_ranks + 1):
            if not ranks * self.min_per_rank <= self.num_nodes <= ranks * self.max_per_rank:
                raise ValueError(
                    f"num_nodes={self.num_nodes} cannot be split into {ranks} ranks of "
                    f"{self.min_per_rank}..{self.max_per_rank} nodes (every rank count in "
                    f"{self.min_ranks}..{self.max_ranks} must be possible)"
                )


class DagPrompter(Prompter[DagConfig]):
    """Generates layered-DAG reachability prompts (per example; prompts vary in length and are padded)."""

    VOCAB = VOCAB
    MASK_CHAR = "."
    PAD_CHAR = "_"
    GENERATOR_VERSION = 2
    CHUNK_SIZE = 2048

    @property
    def max_edges(self) -> int:
        """Upper bound on the edges of a graph.

        The last letter rank (>= min_per_rank nodes) has one edge per node, every other node at most
        min(max_outdeg, max_per_rank).
        """
        cfg = self.config
        per_node = min(cfg.max_outdeg, cfg.max_per_rank)
        return (cfg.num_nodes - cfg.min_per_rank) * per_node + cfg.min_per_rank

    @property
    def max_seq_len(self) -> int:
        queries = min(self.config.num_queries, self.config.max_per_rank)
        return 4 * self.max_edges + (3 if self.config.query_first else 2) * queries

    def get_prompt(self, rng: np.random.Generator) -> tuple[str, str, dict[str, list[int]]]:
        """One graph, its queries, answer (error digit at each ``?``) and per-character path length."""
        cfg = self.config
        num_ranks = int(rng.integers(cfg.min_ranks, cfg.max_ranks + 1))
        sizes = [cfg.min_per_rank] * num_ranks
        for _ in range(cfg.num_nodes - num_ranks * cfg.min_per_rank):
            open_ranks = [i for i, s in enumerate(sizes) if s < cfg.max_per_rank]
            sizes[open_ranks[int(rng.integers(len(open_ranks)))]] += 1
        names = [LETTERS[i] for i in rng.permutation(26)[: cfg.num_nodes]]
        bounds = np.cumsum([0] + sizes)
        ranks = [names[bounds[i] : bounds[i + 1]] for i in range(num_ranks)]

        # Backwards from the error rank: each node's error digit, and its edges.
        last = ranks[-1]
        digits = np.resize(rng.permutation(cfg.num_errors), len(last))  # as even a spread as possible
        rng.shuffle(digits)
        error = {u: int(d) for u, d in zip(last, digits)}
        edges = [(u, str(error[u])) for u in last]
        for i in range(num_ranks - 2, -1, -1):
            nxt = ranks[i + 1]
            for u in ranks[i]:
                primary = nxt[int(rng.integers(len(nxt)))]
                error[u] = error[primary]
                others = [v for v in nxt if v != primary and error[v] == error[u]]
                degree = min(int(rng.integers(cfg.min_outdeg, cfg.max_outdeg + 1)), len(others) + 1)
                chosen = [others[j] for j in rng.permutation(len(others))[: degree - 1]]
                edges += [(u, v) for v in [primary, *chosen]]

        order = rng.permutation(len(edges))
        starts = [ranks[0][j] for j in rng.permutation(len(ranks[0]))[: cfg.num_queries]]
        edge_text = "".join(f"{edges[j][0]}>{edges[j][1]};" for j in order)
        if self.config.query_first:
            asked = "".join(f"{s}?" for s in starts)
            prompt = asked + edge_text + "?" * len(starts)
            answer = "." * (len(asked) + len(edge_text)) + "".join(str(error[s]) for s in starts)
        else:
            prompt = edge_text + "".join(f"{s}?" for s in starts)
            answer = "." * len(edge_text) + "".join(f".{error[s]}" for s in starts)
        return prompt, answer, {"depth": [num_ranks] * len(prompt)}


def quick() -> DagConfig:
    """Sized for a 2-core CPU; stops after 6,000 steps (examples/README.md: it does not leave chance there)."""
    return DagConfig(
        **CPU,
        num_nodes=6,
        min_ranks=1,
        max_ranks=3,
        min_per_rank=2,
        max_per_rank=6,
        num_errors=2,
        train_size=200_000,
        test_size=2_000,
        batch_size=128,
        max_steps=6_000,
        eval_every_n_samples=128 * 250,
    )


def paper() -> DagConfig:
    """A larger graph on the original study's model and optimiser recipe (meant for a GPU)."""
    recipe = {k: v for k, v in ORIGINAL.items() if k not in ("bind_first", "num_epochs")}
    return DagConfig(
        **recipe,
        num_nodes=12,
        min_ranks=2,
        max_ranks=6,
        min_per_rank=2,
        max_per_rank=6,
        num_errors=4,
        train_size=1_000_000,
        test_size=10_000,
        batch_size=128,
        num_epochs=-1,
    )


PRESETS = {"quick": quick, "paper": paper}

if __name__ == "__main__":
    main(DagPrompter, PRESETS)
