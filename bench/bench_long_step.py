"""The depth recipe's long training step: its cost against the short one, and where its time goes.

Run: python -m bench.bench_long_step [--threads 1] [--repeats 5] [--write]

The 4-layer model of ``--preset=depth`` (d_model 64, 4 heads, QK-norm) trains on var_rename prompts of 2 chains:
forward, backward and AdamW on one batch, median of repeats, on ``--threads`` torch threads. Rows: 64 prompts of
8 renames (T 32, the curriculum's first stage) as the baseline, 64 of 64 renames (T 256, the test's length), and the
recipe's own long batch (8 of 64 renames: ``--batch_tokens=2048``). Then a profile of the 64 x T 256 step by kind of
operation, and the attention alone at T 256 (64 prompts and the recipe's 8): the causal kernel against the same
kernel unmasked and against causal attention split into blocks of queries that skip the key blocks they mask.
"""

import argparse
import datetime
import statistics
import time
from collections import defaultdict
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from bench.common import machine, median_time
from bench.results import publish
from examples.var_rename.task import VarRenamePrompter, depth
from iluvattnshun.model_config import build_model

SECTION_START = "<!-- bench_long_step:start -->"
SECTION_END = "<!-- bench_long_step:end -->"

KINDS = {
    "attention": ("scaled_dot_product",),
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm"),
    "GELU": ("gelu",),
    "LayerNorm": ("layer_norm",),
    "optimizer": ("Optimizer.", "_foreach", "aten::lerp", "aten::addcmul", "aten::addcdiv", "aten::sqrt"),
    "elementwise (QK-norm, RoPE, residual)": ("aten::mul", "aten::add", "aten::div", "aten::pow", "aten::sum",
                                              "aten::mean", "aten::rsqrt", "aten::cat", "aten::copy_", "aten::fill_"),
}  # fmt: skip
"""Kinds of operation by a part of the profiler's op name; the first that matches wins, the rest is "other"."""


def batch_and_step(renames: int, rows: int) -> tuple[int, Callable[[], None]]:
    """(tokens per batch, a training step) of the depth recipe's 4-layer model on ``rows`` prompts of ``renames``."""
    config = depth()
    config.num_layers, config.num_renames = 4, renames
    prompter = VarRenamePrompter(config).at_step(10**9)  # the curriculum's last stage: both layouts
    cols = prompter.sample_batch(np.random.default_rng(0), rows)
    x = torch.as_tensor(cols["prompt"]).long()
    y = torch.as_tensor(cols["answer"]).long()
    torch.manual_seed(0)
    model = build_model(prompter.vocab_size, config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        logits = model(x).logits
        F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=prompter.mask_token).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return x.numel(), step


def profile_kinds(step: Callable[[], None], steps: int = 2) -> dict[str, float]:
    """Share of the profiled CPU time per kind of operation (self time, so nothing is counted twice)."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    shares: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        kind = next((k for k, parts in KINDS.items() if any(p in event.key for p in parts)), "other")
        shares[kind] += event.self_cpu_time_total
    total = sum(shares.values())
    return {k: v / total for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}


def block_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: int) -> torch.Tensor:
    """Causal attention as ``blocks`` calls, one per block of queries, each over the keys up to the block's end: the
    kernel never sees the key blocks that every query of a block masks (the same result, up to float rounding)."""
    T = q.shape[2]
    size = -(-T // blocks)  # the last block is shorter when blocks does not divide T
    outs = []
    for lo in range(0, T, size):
        hi = min(lo + size, T)
        mask = torch.arange(hi) <= torch.arange(lo, hi).unsqueeze(1)  # (hi - lo, hi), True = may attend
        outs.append(F.scaled_dot_product_attention(q[:, :, lo:hi], k[:, :, :hi], v[:, :, :hi], attn_mask=mask))
    return torch.cat(outs, dim=2)  # (B, H, T, D)


ATTENTION_VARIANTS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "causal (what the model runs)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    "full, no mask (twice the scores)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
    "causal in 2 query blocks (skips a quarter of the scores)": lambda q, k, v: block_causal(q, k, v, 2),
    "causal in 4 query blocks (skips 3/8 of the scores)": lambda q, k, v: block_causal(q, k, v, 4),
}
"""Ways to run the long step's attention, timed against each other; the first is the baseline of the ratios."""


def attention_times(batch: int, repeats: int) -> dict[str, float]:
    """Seconds of forward + backward of each of ``ATTENTION_VARIANTS`` at the long step's shape (``batch``, 4 heads,
    T 256, head dim 16); interleaved, medians."""
    q, k, v = (torch.randn(batch, 4, 256, 16, requires_grad=True) for _ in range(3))
    grad = torch.randn(batch, 4, 256, 16)
    times: dict[str, list[float]] = {name: [] for name in ATTENTION_VARIANTS}
    for attend in ATTENTION_VARIANTS.values():
        attend(q, k, v).backward(grad)
    for _ in range(repeats):
        for name, attend in ATTENTION_VARIANTS.items():
            start = time.perf_counter()
            attend(q, k, v).backward(grad)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one run per core)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="replace this section of bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")

    rows = [("64 prompts x 8 renames (T 32)", 8, 64), ("64 prompts x 64 renames (T 256)", 64, 64)]
    rows.append(("8 prompts x 64 renames (T 256, the recipe's batch)", 64, 8))
    lines = [
        SECTION_START,
        "## The depth recipe's long training step (`bench/bench_long_step.py`)",
        "",
        f"Machine: {machine()}. Date: {datetime.date.today()}. Command: `python -m bench.bench_long_step "
        f"--threads {args.threads} --repeats {args.repeats}`. The 4-layer model of `--preset=depth` (d_model 64, "
        "4 heads, QK-norm), forward + backward + AdamW on one var_rename batch of 2 chains, fp32, "
        f"{args.threads} thread(s), median of {args.repeats}.",
        "",
        "| batch | tokens | step ms | steps/s | tokens/s | time per token vs T 32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = 0.0
    long_step: Callable[[], None] = lambda: None
    for name, renames, n in rows:
        tokens, step = batch_and_step(renames, n)
        seconds = median_time(step, args.repeats, warmup=2, device=cpu)
        per_token = seconds / tokens
        base = base or per_token
        lines.append(
            f"| {name} | {tokens:,} | {seconds * 1e3:,.1f} | {1 / seconds:,.2f} | {tokens / seconds:,.0f} | "
            f"{per_token / base:.2f}x |"
        )
        if renames == 64 and n == 64:
            long_step = step
    lines += ["", "Where the 64 x T 256 step goes (profiler self time, 2 steps):", ""]
    lines += ["| kind | share |", "|---|---:|"]
    lines += [f"| {kind} | {100 * share:.1f}% |" for kind, share in profile_kinds(long_step).items()]
    for batch in (64, 8):
        times = attention_times(batch, 4 * args.repeats)
        base_time = times[next(iter(ATTENTION_VARIANTS))]
        lines += [
            "",
            f"| attention alone, B {batch}, 4 heads, T 256, head dim 16, forward + backward | ms | vs causal |",
            "|---|---:|---:|",
        ]
        lines += [f"| {name} | {t * 1e3:,.1f} | {t / base_time:.2f}x |" for name, t in times.items()]
    lines.append(SECTION_END)
    publish(lines, SECTION_START, SECTION_END, args.write)


if __name__ == "__main__":
    main()
