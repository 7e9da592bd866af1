"""How far back each layer looks along a chain: the hop span of every attention head of a var_rename model.

    python -m examples.var_rename.mechanism logs/var_rename/run_3_law_2 [--prompts=200] [--layout=original]

To answer at a statement ``old>new;`` of depth d (its chain renamed d times before it), the model must follow the
chain back to its digit. For every such statement with d >= 1, at the position of ``old`` (the query), this takes
each head's attention and sums it by what the attended position belongs to:

    this statement   the query's own statement (and the statement's earlier characters)
    span k           an earlier statement of the same chain, k hops back (depth d - k); k = 1 is where ``old``
                     was introduced
    other chain      a statement of another chain

Divide and conquer shows as spans that grow with the layer: 1 in the first layer that reads the chain, then 2,
4, ... where a layer joins two answers of the layer below. The table gives, per layer and head, the share of
attention in each span bin and the mean span of the same-chain attention; ``hop_spans`` returns the numbers.

A second table separates depth from position: accuracy per depth (rows) and per band of statement positions
(columns). A depth sits at later positions the more chains share the prompt (about statement 2d with 2 chains), so
a reach read off test prompts longer than the training ones may be limited by the positions the model never saw,
not by the hops it can follow; the table shows which (``depth_by_position`` returns the numbers).
"""

import argparse
import dataclasses
import sys
from dataclasses import dataclass

import numpy as np
import torch

from examples.var_rename.task import VarRenamePrompter
from iluvattnshun import load_run
from iluvattnshun.cli import CommandParser
from iluvattnshun.nn import MultilayerTransformer
from iluvattnshun.task import device_memory_bytes

HOP_BATCH = 50
"""Prompts per forward pass of ``hop_spans``."""


BINS = ("this statement", "span 1", "span 2", "span 3-4", "span 5-8", "span 9-16", "span 17+", "other chain")
"""Where a query's attention goes; span bins double in width (hop spans past 16 share one bin)."""

SPAN_EDGES = (1, 2, 3, 5, 9, 17)
"""The first hop span of each ``span`` bin."""


@dataclass(frozen=True)
class HopSpans:
    """Attention of every head, summed by bin and averaged over the queries (statements of depth >= 1)."""

    shares: np.ndarray
    """(layers, heads, len(BINS)): share of each head's attention per bin; a row sums to 1."""
    mean_span: np.ndarray
    """(layers, heads): mean hop span of the attention on the query's own chain (earlier statements only)."""
    queries: int
    """Queries averaged over."""


def statement_facts(answer: np.ndarray, depth: np.ndarray, mask: int) -> tuple[np.ndarray, np.ndarray]:
    """Per statement of each prompt: its chain (the digit it resolves to) and its depth, from the answer columns.

    ``answer`` and ``depth`` are (B, 4R); a statement's first character is a target holding its chain's digit.
    Returns (chain, depth), each (B, R).
    """
    chain = answer[:, 0::4]
    if (chain == mask).any():
        raise ValueError("every statement's first character must be a target (a var_rename prompt)")
    return chain, depth[:, 0::4]


def bin_of_span(span: np.ndarray) -> np.ndarray:
    """The index in ``BINS`` of each hop span >= 1."""
    return np.searchsorted(np.asarray(SPAN_EDGES), span, side="right")  # span 1 -> bin 1 ("span 1"), ...


@torch.no_grad()
def hop_spans(model: MultilayerTransformer, cols: dict[str, np.ndarray], mask: int, batch: int = HOP_BATCH) -> HopSpans:
    """Each head's attention from the statements of depth >= 1, by hop span (see the module's docstring).

    Args:
        model: a var_rename model (any number of layers and heads).
        cols: var_rename prompts as ``Prompter.sample_batch`` makes them (prompt, answer, depth; (B, 4R) each).
        mask: the prompter's mask token (non-target answer positions).
        batch: prompts per forward pass.
    """
    was_training = model.training
    model.eval()
    chain, depth = statement_facts(cols["answer"], cols["depth"], mask)  # (B, R)
    num_stmts = chain.shape[1]
    stmt_of_key = np.arange(4 * num_stmts) // 4  # (T,)
    totals = np.zeros((model.num_layers, model.num_heads, len(BINS)))
    span_sums = np.zeros((model.num_layers, model.num_heads))
    same_chain = np.zeros((model.num_layers, model.num_heads))
    queries = 0
    try:
        for start in range(0, len(chain), batch):
            prompt = torch.as_tensor(cols["prompt"][start : start + batch].astype(np.int64))
            ch, dp = chain[start : start + batch], depth[start : start + batch]  # (b, R)
            out = model(prompt.to(next(model.parameters()).device), return_attn_weights=True)
            b_idx, r_idx = np.nonzero(dp >= 1)  # query statements
            queries += len(b_idx)
            key_chain, key_depth = ch[b_idx][:, stmt_of_key], dp[b_idx][:, stmt_of_key]  # (Q, T)
            own = stmt_of_key[None, :] == r_idx[:, None]  # (Q, T)
            earlier = stmt_of_key[None, :] < r_idx[:, None]
            on_chain = earlier & (key_chain == ch[b_idx, r_idx][:, None])
            span = np.where(on_chain, dp[b_idx, r_idx][:, None] - key_depth, 0)  # (Q, T), >= 1 on the chain
            where = np.where(own, 0, np.where(on_chain, bin_of_span(np.maximum(span, 1)), len(BINS) - 1))
            for layer, weights in enumerate(out.attn_weights):
                w = weights.float().cpu().numpy()[b_idx, :, 4 * r_idx, :]  # (Q, H, T): attention from each query
                for k in range(len(BINS)):
                    totals[layer, :, k] += (w * (where == k)[:, None, :]).sum(axis=(0, 2))
                span_sums[layer] += (w * (span * on_chain)[:, None, :]).sum(axis=(0, 2))
                same_chain[layer] += (w * on_chain[:, None, :]).sum(axis=(0, 2))
    finally:
        model.train(was_training)
    if not queries:
        raise ValueError("no statement of depth >= 1 in the prompts")
    shares = totals / totals.sum(axis=2, keepdims=True)
    mean_span = np.divide(span_sums, same_chain, out=np.full_like(span_sums, np.nan), where=same_chain > 0)
    return HopSpans(shares=shares, mean_span=mean_span, queries=queries)


@dataclass(frozen=True)
class DepthByPosition:
    """Scored characters per depth and band of statement positions, and how many of them the model got right."""

    right: np.ndarray
    """(depths, bands): targets answered right."""
    total: np.ndarray
    """(depths, bands): targets scored."""
    band: int
    """Statements per band: band j holds statements j * band .. (j + 1) * band - 1."""


@torch.no_grad()
def depth_by_position(
    model: torch.nn.Module, cols: dict[str, np.ndarray], mask: int, band: int = 16, batch: int = 100
) -> DepthByPosition:
    """Accuracy of every target character by its depth and its statement's position band (greedy predictions)."""
    was_training = model.training
    model.eval()
    num_stmts = cols["prompt"].shape[1] // 4
    shape = (int(cols["depth"].max()) + 1, -(-num_stmts // band))
    right, total = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
    band_of = np.arange(4 * num_stmts) // 4 // band  # (T,)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        for start in range(0, len(cols["prompt"]), batch):
            prompt = torch.as_tensor(cols["prompt"][start : start + batch].astype(np.int64))
            preds = model(prompt.to(device)).logits.argmax(-1).cpu().numpy()  # (b, T)
            answer, depth = cols["answer"][start : start + batch], cols["depth"][start : start + batch]
            b_idx, t_idx = np.nonzero(answer != mask)
            cell = (depth[b_idx, t_idx], band_of[t_idx])
            np.add.at(total, cell, 1)
            np.add.at(right, cell, preds[b_idx, t_idx] == answer[b_idx, t_idx])
    finally:
        model.train(was_training)
    return DepthByPosition(right=right, total=total, band=band)


def position_table(found: DepthByPosition, min_count: int = 30) -> list[str]:
    """A markdown table of accuracy per depth and position band (``-``: fewer than ``min_count`` targets)."""
    bands = found.total.shape[1]
    heads = [f"statements {j * found.band}-{(j + 1) * found.band - 1}" for j in range(bands)]
    rows = ["| depth | " + " | ".join(heads) + " |", "|---:|" + "---:|" * bands]
    for d in range(found.total.shape[0]):
        if found.total[d].max() < min_count:
            continue
        cells = [
            (
                f"{found.right[d, j] / found.total[d, j]:.2f} ({found.total[d, j]})"
                if found.total[d, j] >= min_count
                else "-"
            )
            for j in range(bands)
        ]
        rows.append(f"| {d} | " + " | ".join(cells) + " |")
    return rows


def table(spans: HopSpans) -> list[str]:
    """A markdown table: one row per layer and head, the share of attention per bin and the mean span."""
    rows = [
        "| layer | head | " + " | ".join(BINS) + " | mean span |",
        "|---:|---:|" + "---:|" * (len(BINS) + 1),
    ]
    for layer, heads in enumerate(spans.shares):
        for head, shares in enumerate(heads):
            cells = " | ".join(f"{s:.2f}" for s in shares)
            rows.append(f"| {layer} | {head} | {cells} | {spans.mean_span[layer, head]:.1f} |")
    return rows


def memory_needed(layers: int, heads: int, prompts: int, renames: int) -> int:
    """Bytes the report takes at least: the test prompts (about 10 bytes a token), and per batch of ``HOP_BATCH``
    prompts every layer's (heads, T, T) float32 attention maps and ``hop_spans``' (queries, T) arrays."""
    T = 4 * renames
    batch = min(prompts, HOP_BATCH)
    return prompts * T * 10 + batch * T * (layers * heads * T * 4 + renames * 8 * 6)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a var_rename run directory")
    parser.add_argument("--prompts", type=int, default=200, help="test prompts (fresh, seed --seed)")
    parser.add_argument("--renames", type=int, default=0, help="renames per prompt (0: the run's num_renames)")
    parser.add_argument("--layout", choices=("original", "bind_first"), default="original")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.renames < 0:
        print("error: --prompts must be >= 1 and --renames >= 0", file=sys.stderr)
        return 2
    try:
        loaded = load_run(args.run_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: run_dir: {e}", file=sys.stderr)
        return 2
    if not isinstance(loaded.prompter, VarRenamePrompter):
        print(f"error: run_dir: {args.run_dir!r} is not a var_rename run", file=sys.stderr)
        return 2
    task = loaded.prompter.config
    renames = args.renames or task.num_renames
    need, host = memory_needed(task.num_layers, task.num_heads, args.prompts, renames), device_memory_bytes(
        torch.device("cpu")
    )
    if host is not None and need > host:
        print(
            f"error: --renames / --prompts: {args.prompts:,} prompts of {renames:,} renames need about "
            f"{need / 2**30:,.1f} GiB (attention maps of {HOP_BATCH} prompts at a time), more than the "
            f"{host / 2**30:,.1f} GiB of this machine",
            file=sys.stderr,
        )
        return 2
    test = dataclasses.replace(
        task,
        num_renames=renames,
        min_renames=0,
        bind_first=args.layout == "bind_first",
        mix_layouts=False,
        mix_layouts_from=0,
    )
    prompter = VarRenamePrompter(test)
    cols = prompter.sample_batch(np.random.default_rng(args.seed), args.prompts)
    spans = hop_spans(loaded.model, cols, prompter.mask_token)
    print(
        f"{args.run_dir}: {task.num_layers} layers x {task.num_heads} heads, step {loaded.checkpoint.progress.step}; "
        f"{spans.queries:,} queries (statements of depth >= 1) in {args.prompts} {args.layout} prompts of "
        f"{test.num_renames} renames"
    )
    print("\n".join(table(spans)))
    trained = task.renames_at(max(loaded.checkpoint.progress.step - 1, 0))  # the last step's prompt length
    print(
        f"\naccuracy per depth (rows) and statement position (columns); the run trained on prompts of up to "
        f"{trained} renames (statements 0-{trained - 1})"
    )
    print("\n".join(position_table(depth_by_position(loaded.model, cols, prompter.mask_token))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
