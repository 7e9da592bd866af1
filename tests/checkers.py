"""Independent checkers of the synthetic tasks' rules, written from the task specifications.

They decode tokens with their own copy of each task's vocabulary and re-derive every answer from the
prompt text; they never import the generators, so a generator bug cannot hide in shared code. Each
``check_*`` raises ``AssertionError`` saying which rule an example breaks, and returns facts about
the example that distribution tests compare (which chain each statement used, the letters chosen...).
"""

import math
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np

DIGITS = "0123456789"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VAR_RENAME_VOCAB = {**{d: i for i, d in enumerate(DIGITS)}, **{c: 10 + i for i, c in enumerate(LETTERS)}}
VAR_RENAME_VOCAB.update({">": 36, ";": 37, ".": 38})
VAR_EVAL_VOCAB = {**VAR_RENAME_VOCAB, "+": 39}
DAG_VOCAB = {**VAR_RENAME_VOCAB, "?": 39, "_": 40}
META_PAD = -1


def decode(tokens: Sequence[int] | np.ndarray, vocab: dict[str, int]) -> str:
    """Text of token ids under a spec vocabulary (char -> id)."""
    inverse = {i: c for c, i in vocab.items()}
    return "".join(inverse[int(t)] for t in tokens)


@dataclass
class ChainFacts:
    """What a renaming/evaluation prompt did, statement by statement."""

    chain_of_statement: list[int]
    """Index (order of first appearance) of the chain each statement extended."""
    start_digits: list[int]
    """Starting digit of each chain, in order of first appearance."""
    new_letters: list[str]
    """The letter each statement bound."""
    depths: list[int]
    """Depth (earlier statements of the same chain) of each statement."""


def check_var_rename(
    prompt: str, answer: str, depth: Sequence[int], num_chains: int, num_renames: int, bind_first: bool = True
) -> ChainFacts:
    """Check one variable renaming example against the task rules (``bind_first``: the chains are bound by the
    first ``num_chains`` statements; otherwise a chain is bound wherever it first appears)."""
    assert num_chains <= 10, "at most 10 chains (values are digits)"
    assert len(prompt) == 4 * num_renames, f"prompt length {len(prompt)} != 4 * {num_renames}"
    assert len(answer) == len(prompt) and len(depth) == len(prompt), "answer/depth not aligned with the prompt"
    live: dict[str, int] = {}  # current variable (letter) -> chain
    used_digits: dict[str, int] = {}
    chain_value: list[int] = []
    chain_count: list[int] = []
    facts = ChainFacts([], [], [], [])
    for i in range(num_renames):
        stmt, ans, dep = prompt[4 * i : 4 * i + 4], answer[4 * i : 4 * i + 4], list(depth[4 * i : 4 * i + 4])
        old, gt, new, semi = list(stmt)
        assert gt == ">" and semi == ";", f"statement {i} {stmt!r} is not 'x>y;'"
        if bind_first:
            assert (old in DIGITS) == (i < num_chains), f"statement {i} {stmt!r}: chains are bound first, then renamed"
        if old in DIGITS:
            assert int(old) < num_chains, f"statement {i}: chain start {old} is not among 0..{num_chains - 1}"
            assert old not in used_digits, f"statement {i}: digit {old} starts a second chain"
            used_digits[old] = len(chain_value)
            chain = len(chain_value)
            chain_value.append(int(old))
            chain_count.append(0)
            facts.start_digits.append(int(old))
        else:
            assert old in live, f"statement {i}: {old!r} is not a live variable"
            chain = live[old]
        assert new in LETTERS, f"statement {i}: new variable {new!r} is not a letter"
        assert new not in live, f"statement {i}: {new!r} is live (in this or another chain)"
        live.pop(old, None)
        live[new] = chain
        v = str(chain_value[chain])
        assert ans == f"{v}.{v}.", f"statement {i} {stmt!r}: answer {ans!r}, expected {v}.{v}."
        assert dep == [chain_count[chain]] * 4, f"statement {i}: depth {dep}, expected {chain_count[chain]}"
        facts.chain_of_statement.append(chain)
        facts.new_letters.append(new)
        facts.depths.append(chain_count[chain])
        chain_count[chain] += 1
    assert len(chain_value) == num_chains or not bind_first, "every chain is bound"
    return facts


def check_var_eval(
    prompt: str, answer: str, depth: Sequence[int], num_chains: int, num_statements: int, bind_first: bool = True
) -> ChainFacts:
    """Check one variable evaluation example against the task rules (``bind_first``: see ``check_var_rename``)."""
    assert len(prompt) == 6 * num_statements, f"prompt length {len(prompt)} != 6 * {num_statements}"
    assert len(answer) == len(prompt) and len(depth) == len(prompt), "answer/depth not aligned with the prompt"
    live: dict[str, int] = {}
    value: list[int] = []
    count: list[int] = []
    facts = ChainFacts([], [], [], [])
    for i in range(num_statements):
        stmt, ans, dep = prompt[6 * i : 6 * i + 6], answer[6 * i : 6 * i + 6], list(depth[6 * i : 6 * i + 6])
        old, plus, addend, gt, new, semi = list(stmt)
        assert plus == "+" and gt == ">" and semi == ";" and addend in DIGITS, f"statement {i} {stmt!r} malformed"
        if bind_first:
            assert (old in DIGITS) == (i < num_chains), f"statement {i} {stmt!r}: chains are started first"
        if old in DIGITS:
            chain = len(value)
            assert chain < num_chains, f"statement {i}: more than {num_chains} chains start from a digit"
            value.append(int(old))
            count.append(0)
            facts.start_digits.append(int(old))
        else:
            assert old in live, f"statement {i}: {old!r} is not a live variable"
            chain = live[old]
        assert new in LETTERS and new not in live, f"statement {i}: {new!r} is not a fresh letter"
        live.pop(old, None)
        live[new] = chain
        value[chain] = (value[chain] + int(addend)) % 10
        assert ans == f"....{value[chain]}.", f"statement {i} {stmt!r}: answer {ans!r}, expected ....{value[chain]}."
        assert dep == [count[chain]] * 6, f"statement {i}: depth {dep}, expected {count[chain]}"
        facts.chain_of_statement.append(chain)
        facts.new_letters.append(new)
        facts.depths.append(count[chain])
        count[chain] += 1
    return facts


@dataclass
class DagFacts:
    """What a DAG example looked like."""

    num_ranks: int
    rank_sizes: list[int]
    num_edges: int
    answer: int
    out_degrees: list[int]


def check_dag(
    prompt: str,
    answer: str,
    depth: Sequence[int],
    *,
    num_nodes: int,
    min_ranks: int,
    max_ranks: int,
    min_per_rank: int,
    max_per_rank: int,
    num_errors: int,
    min_outdeg: int,
    max_outdeg: int,
    num_queries: int = 1,
    max_len: int | None = None,
    query_first: bool = False,
) -> DagFacts:
    """Check one DAG example: layered graph, unique reachable error (BFS), queries, answers, padding, depth.

    With ``query_first`` the queries ``s?s?`` open the prompt and one bare ``?`` per query closes it."""
    assert len(answer) == len(prompt) and len(depth) == len(prompt), "answer/depth not aligned with the prompt"
    if max_len is not None:
        assert len(prompt) == max_len, f"prompt length {len(prompt)} != padded length {max_len}"
    body = prompt.rstrip("_")
    assert "_" not in body, "padding inside the prompt"
    if query_first:
        k = len(body) - len(body.rstrip("?"))  # the closing "?"s, one per query
        queries, lo, first = body[: 2 * k], 2 * k, len(body) - k
        assert (len(body) - lo - k) % 4 == 0, "the edges between the queries and the closing '?'s are not all 'u>v;'"
    else:
        lo = 0
        first = body.index("?") - 1  # the queries "s?s?..." follow the edges
        assert first % 4 == 0, f"first query at position {first}: the edges are not all 'u>v;'"
        queries = body[first:]
    assert len(queries) % 2 == 0 and set(queries[1::2]) == {"?"}, f"queries {queries!r} are not all 's?'"
    starts = list(queries[0::2])
    assert all(s in LETTERS for s in starts), f"query nodes {starts} are not all letters"
    assert len(set(starts)) == len(starts), f"query nodes {starts} repeat"
    edges = [prompt[j : j + 4] for j in range(lo, first, 4)]
    children: dict[str, list[str]] = {}
    for e in edges:
        u, gt, v, semi = list(e)
        assert gt == ">" and semi == ";", f"edge {e!r} is not 'u>v;'"
        assert u in LETTERS, f"edge {e!r}: source is not a letter node"
        assert v in LETTERS or (v in DIGITS and int(v) < num_errors), f"edge {e!r}: bad target"
        assert v not in children.get(u, []), f"duplicate edge {e!r}"
        children.setdefault(u, []).append(v)
    assert len(children) == num_nodes, f"{len(children)} letter nodes have edges, expected {num_nodes}"
    for u, vs in children.items():
        for v in vs:
            assert v in DIGITS or v in children, f"edge {u}>{v} leads to a dead end"

    # Layering: a node's height (edges to the error rank) must be the same along every edge.
    height: dict[str, int] = {}

    def h(u: str, stack: frozenset[str]) -> int:
        if u in DIGITS:
            return 0
        if u not in height:
            assert u not in stack, f"cycle through {u}"
            hs = {h(v, stack | {u}) for v in children[u]}
            assert len(hs) == 1, f"edges of {u} skip ranks (child heights {sorted(hs)})"
            height[u] = hs.pop() + 1
        return height[u]

    for u in children:
        h(u, frozenset())
    num_ranks = max(height.values())
    sizes = [sum(1 for x in height.values() if x == r) for r in range(num_ranks, 0, -1)]
    assert min_ranks <= num_ranks <= max_ranks, f"{num_ranks} ranks not in {min_ranks}..{max_ranks}"
    assert all(min_per_rank <= s <= max_per_rank for s in sizes), f"rank sizes {sizes}"
    assert all(height[s] == num_ranks for s in starts), f"queries {starts} are not all in the first rank"
    assert len(starts) == min(num_queries, sizes[0]), f"{len(starts)} queries, first rank of {sizes[0]}"
    degrees = [len(vs) for vs in children.values()]
    assert all(1 <= d <= max_outdeg for d in degrees), f"out-degrees {degrees} exceed {max_outdeg}"

    def reachable_errors(s: str) -> tuple[set[str], dict[str, int]]:
        dist = {s: 0}
        todo = deque([s])
        while todo:
            u = todo.popleft()
            for v in children.get(u, []):
                if v not in dist:
                    dist[v] = dist[u] + 1
                    todo.append(v)
        return {v for v in dist if v in DIGITS}, dist

    # The spec asks this of first-rank nodes; the construction guarantees it for every node.
    for s in children:
        errs, _ = reachable_errors(s)
        assert len(errs) == 1, f"node {s} reaches errors {sorted(errs)}"
    # Out-degree is min_outdeg..max_outdeg unless fewer next-rank nodes lead to the same error.
    for u, vs in children.items():
        if len(vs) < min_outdeg and height[u] > 1:
            (err,) = reachable_errors(u)[0]
            eligible = [v for v, x in height.items() if x == height[u] - 1 and reachable_errors(v)[0] == {err}]
            assert len(vs) == len(eligible), f"{u} has out-degree {len(vs)} < {min_outdeg} with {eligible} eligible"
    errors, lengths = [], set()
    for s in starts:
        errs, dist = reachable_errors(s)
        (err,) = errs
        errors.append(err)
        lengths.add(dist[err])
    answers = "".join(errors) if query_first else "".join("." + e for e in errors)
    expected = "." * first + answers + "." * (len(prompt) - len(body))
    assert answer == expected, f"answer {answer!r}, expected {expected!r}"
    (length,) = lengths
    expected_depth = [length] * len(body) + [META_PAD] * (len(prompt) - len(body))
    assert list(depth) == expected_depth, f"depth {list(depth)}, expected path length {length}"
    return DagFacts(num_ranks, sizes, len(edges), int(errors[0]), degrees)


def two_sample_chi2_p(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """p-value that two histograms over the same bins come from one distribution (chi-square test).

    Uses the Wilson-Hilferty normal approximation of the chi-square tail (no scipy needed).
    """
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = (a_arr + b_arr) > 0
    a_arr, b_arr = a_arr[keep], b_arr[keep]
    dof = len(a_arr) - 1
    if dof < 1:
        return 1.0
    na, nb = a_arr.sum(), b_arr.sum()
    stat = float((((a_arr * math.sqrt(nb / na) - b_arr * math.sqrt(na / nb)) ** 2) / (a_arr + b_arr)).sum())
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def histogram(values: Sequence[int] | np.ndarray, bins: int) -> np.ndarray:
    """Counts of the integers 0..bins-1."""
    return np.bincount(np.asarray(values, dtype=np.int64), minlength=bins)[:bins]
