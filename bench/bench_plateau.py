"""The first plateau of var_rename: steps until depth 1 is learnt and until the reach is 4, per recipe variant and seed.

Run:
    python -m bench.bench_plateau [--seeds 5] [--max_steps 3000] [--variants baseline,qk_norm] [--write]

Every run trains the depth recipe as it was before QK-norm (``--preset=depth --qk_norm=false --mix_layouts=false
--renames_growth_steps=3000 --batch_tokens=0``: AdamW 1e-3, 200 warmup steps, batch 64, fresh prompts of 2 chains, 8 renames for the
curriculum's first 3,000 steps) at one small shape (3 layers, d_model 64, 4 heads) with a constant learning rate,
evaluating every ``--eval_every`` steps on one fixed set of the recipe's test prompts (``--eval_prompts`` of 64
renames in the bind-first layout, seed 1234: the shallow depths must hold on prompts 8x longer than trained on). It
stops when both marks are passed or at ``--max_steps``:

    escape   first evaluation with depth-1 accuracy >= 0.9 (the model left the first plateau)
    reach 4  first evaluation with depth reach at 90% >= 4 (every depth 0..4 >= 0.9)

A variant is the recipe with one change (see ``VARIANTS``). Runs go two at a time, one torch thread each, seeds
interleaved across variants; each finished run is appended to ``--out`` (JSON lines), and a rerun skips the runs
already there. The table gives each variant's median and worst seed ("> max_steps" when a seed never got there).
"""

import argparse
import dataclasses
import datetime
import json
import math
import re
import statistics
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.common import machine
from bench.results import publish
from examples.var_rename.task import VarRenameConfig, VarRenamePrompter, depth
from iluvattnshun.data import batch_rows
from iluvattnshun.model_config import build_model
from iluvattnshun.nn import MultilayerTransformer
from iluvattnshun.optim import build_optimizer, build_scheduler
from iluvattnshun.task import depth_reach


def section(num_layers: int, name: str = "") -> tuple[str, str]:
    """The RESULTS.md markers of a table: ``name``'s, or by default one shape's (3 layers: the original section)."""
    if not name:
        name = "bench_plateau" if num_layers == SHAPE["num_layers"] else f"bench_plateau_{num_layers}L"
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


SHAPE = {"num_layers": 3, "dim_model": 64, "num_heads": 4}
EVAL_SEED = 1234


BASELINE = {
    "qk_norm": False,
    "mix_layouts": False,
    "mix_layouts_from": 0,
    "renames_growth_steps": 3000,
    "batch_tokens": 0,
    "lr": 1e-3,
}
"""The depth recipe as it was before this benchmark (one layout, no QK-norm, 8 renames for the first 3,000 steps,
64 prompts a batch at every length, lr 1e-3): every variant changes it in one place."""


LAYOUT_CURRICULUM: dict[str, Any] = {k: getattr(depth(), k) for k in BASELINE if k != "lr"}
"""The depth recipe's data as it is: QK-norm, bind-first prompts until step 1,000, then both layouts, growing."""


def config_of(variant: str, num_layers: int = SHAPE["num_layers"]) -> VarRenameConfig:
    """The earlier depth recipe at the benchmark's shape, with a variant's config changes."""
    table: dict[str, dict[str, Any]] = {
        "qk_norm": {"qk_norm": True},
        "lr_3e-4": {"lr": 3e-4},
        "warmup_1000": {"warmup_steps": 1000},
        "qk_norm+lr_3e-3": {"qk_norm": True, "lr": 3e-3},
        "qk_norm+mixed_layouts": {"qk_norm": True, "mix_layouts": True},
        "depth_recipe": LAYOUT_CURRICULUM | {"mix_layouts_from": 0},
        "layout_curriculum": LAYOUT_CURRICULUM,
        "layout_curriculum+wd_0.1": LAYOUT_CURRICULUM | {"weight_decay": 0.1},
        "layout_curriculum+lr_2e-3": LAYOUT_CURRICULUM | {"lr": 2e-3},
    }
    changes = table.get(variant, {})
    return dataclasses.replace(
        depth(), **{**SHAPE, "num_layers": num_layers}, lr_decay="none", **{**BASELINE, **changes}
    )


def scale_queries(factor: float) -> Callable[[MultilayerTransformer], None]:
    """Softmax temperature 1/factor on every layer's scores (queries scaled through the model's ``q`` hooks)."""

    def apply(model: MultilayerTransformer) -> None:
        for i in range(model.num_layers):
            model._hook_fns[f"layers.{i}.attn.q"] = lambda q, name: q * factor

    return apply


def unscaled_init(model: MultilayerTransformer) -> None:
    """GPT-2's residual scaling undone: the residual output projections drawn at std 0.02 like every matrix."""
    for name, p in model.named_parameters():
        if name.endswith(("out_proj.weight", "fc_out.weight")):
            nn.init.normal_(p, std=0.02)


MODEL_CHANGES: dict[str, Callable[[MultilayerTransformer], None]] = {
    "temperature_0.5": scale_queries(2.0),
    "unscaled_init": unscaled_init,
}
VARIANTS = [
    "baseline",
    "qk_norm",
    "temperature_0.5",
    "unscaled_init",
    "lr_3e-4",
    "depth_balanced",
    "warmup_1000",
    "qk_norm+lr_3e-3",
    "qk_norm+mixed_layouts",
    "depth_recipe",
    "layout_curriculum",
    "layout_curriculum+wd_0.1",
    "layout_curriculum+lr_2e-3",
]
"""baseline: the depth recipe; qk_norm: ``--qk_norm``; temperature_0.5: scores x 2 (Hoffmann et al.'s softmax
temperature); unscaled_init: residual projections at std 0.02; lr_3e-4, warmup_1000: the optimiser's schedule;
depth_balanced: each target's loss weighted by 1 / (targets of its depth in the batch), so rare deep positions weigh
as much as shallow ones; qk_norm+mixed_layouts: QK-norm on prompts of both layouts (``--mix_layouts``); depth_recipe: the depth recipe
with both layouts mixed from the start (QK-norm, the prompts growing as in the recipe); layout_curriculum: the depth
recipe as it is (bind_first only until step 1,000, then both layouts); layout_curriculum+wd_0.1 and
layout_curriculum+lr_2e-3: that recipe with weight decay 0.1 (0.01) or learning rate 2e-3 (1e-3), levers tried on
the second plateau (depth 2), where one 4-layer seed of the depth-law grid stayed."""


def loss_of(
    logits: torch.Tensor, answer: torch.Tensor, depth_: torch.Tensor, mask: int, balanced: bool
) -> torch.Tensor:
    """Cross-entropy over the targets; ``balanced``: every depth present in the batch weighs the same."""
    losses = F.cross_entropy(logits.flatten(0, 1), answer.flatten(), ignore_index=mask, reduction="none")  # (B*T,)
    target = answer.flatten() != mask
    if not balanced:
        return losses[target].mean()
    d = depth_.flatten()[target]
    counts = torch.bincount(d)
    weights = 1.0 / counts[d].float()  # each depth's weights sum to 1
    return (losses[target] * weights).sum() / (counts > 0).sum()


@torch.no_grad()
def evaluate(model: nn.Module, data: dict[str, torch.Tensor], mask: int) -> tuple[dict[int, float], dict[int, int]]:
    """Accuracy and scored positions per depth on the evaluation prompts."""
    model.eval()
    preds = torch.cat([model(p).logits.argmax(-1) for p in data["prompt"].split(500)])
    model.train()
    target = data["answer"] != mask
    depths, correct = data["depth"][target], (preds == data["answer"])[target]
    totals = torch.bincount(depths)
    hits = torch.bincount(depths, weights=correct.float())
    counts = {d: int(n) for d, n in enumerate(totals.tolist()) if n}
    return {d: float(hits[d]) / counts[d] for d in counts}, counts


def as_tensors(cols: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(cols[k].astype(np.int64)) for k in ("prompt", "answer", "depth")}


def run_one(
    variant: str, seed: int, max_steps: int, eval_every: int, eval_prompts: int, num_layers: int
) -> dict[str, Any]:
    """Train one (variant, seed) until both marks are passed or ``max_steps``; returns the marks and the last eval."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    config = config_of(variant, num_layers)
    prompter = VarRenamePrompter(config)
    mask = prompter.mask_token
    model = build_model(prompter.vocab_size, config)
    if variant in MODEL_CHANGES:
        MODEL_CHANGES[variant](model)
    optimizer = build_optimizer(model, config, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, config, max_steps)
    rng = np.random.default_rng(seed)
    # Every variant is scored on the same prompts: the recipe's own layout (bind_first).
    eval_prompter = VarRenamePrompter(config_of("baseline", num_layers))
    eval_data = as_tensors(eval_prompter.sample_batch(np.random.default_rng(EVAL_SEED), eval_prompts))
    escape = reach4 = None
    accuracy: dict[int, float] = {}
    step = 0
    while step < max_steps and (escape is None or reach4 is None):
        now = prompter.at_step(step)
        rows = batch_rows(config.batch_size, config.batch_tokens, now.max_seq_len)  # as the trainer's stream
        batch = as_tensors(now.sample_batch(rng, rows))
        logits = model(batch["prompt"]).logits  # (B, T, V)
        loss = loss_of(logits, batch["answer"], batch["depth"], mask, variant == "depth_balanced")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_norm_max:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_norm_max)
        optimizer.step()
        scheduler.step()
        step += 1
        if step % eval_every == 0:
            accuracy, counts = evaluate(model, eval_data, mask)
            if escape is None and accuracy.get(1, 0.0) >= 0.9:
                escape = step
            if reach4 is None and depth_reach(accuracy, counts, 0.9, 100) >= 4:
                reach4 = step
    return {
        "variant": variant,
        "num_layers": num_layers,
        "seed": seed,
        "escape": escape,
        "reach4": reach4,
        "steps": step,
        "acc": [round(accuracy.get(d, 0.0), 3) for d in range(6)],
    }


def worker_init() -> None:
    torch.set_num_threads(1)


def summarise(results: list[dict[str, Any]], variants: list[str], max_steps: int) -> list[str]:
    """One table row per variant: seeds, median and worst seed of both marks, every seed's marks."""

    def fmt(v: float | None) -> str:
        return f"> {max_steps:,}" if v is None or math.isinf(v) else f"{v:,.0f}"

    rows = []
    for variant in variants:
        runs = sorted((r for r in results if r["variant"] == variant), key=lambda r: r["seed"])
        if not runs:
            continue
        marks = {}
        for key in ("escape", "reach4"):
            values = [math.inf if r[key] is None else float(r[key]) for r in runs]
            marks[key] = (statistics.median_low(values), max(values))
        seeds = ", ".join(f"{fmt(r['escape'])} / {fmt(r['reach4'])}" for r in runs)
        rows.append(
            f"| {variant} | {len(runs)} | {fmt(marks['escape'][0])} | {fmt(marks['escape'][1])} | "
            f"{fmt(marks['reach4'][0])} | {fmt(marks['reach4'][1])} | {seeds} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max_steps", type=int, default=1500)
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--eval_prompts", type=int, default=300)
    parser.add_argument("--num_layers", type=int, default=SHAPE["num_layers"], help="the shape's depth")
    parser.add_argument("--variants", default=",".join(VARIANTS[:6]), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time, one torch thread each")
    parser.add_argument("--out", default="results/bench_plateau.jsonl", help="finished runs, one JSON line each")
    parser.add_argument("--write", action="store_true", help="replace the section in bench/RESULTS.md")
    parser.add_argument("--report_only", action="store_true", help="the table from --out's runs; train nothing")
    parser.add_argument(
        "--section", default="", help="the RESULTS.md section --write replaces (default: one per --num_layers)"
    )
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {VARIANTS}")
    if args.section and not re.fullmatch(r"[A-Za-z0-9_]+", args.section):
        parser.error(f"section must be letters, digits and '_', got {args.section[:40]!r}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    # A run with a larger budget counts for this one, its marks past max_steps read as not reached.
    done = [
        {**r, **{k: r[k] if r[k] is not None and r[k] <= args.max_steps else None for k in ("escape", "reach4")}}
        for r in done
        if r.get("max_steps", 0) >= args.max_steps
        and r.get("eval_every") == args.eval_every
        and r.get("num_layers", SHAPE["num_layers"]) == args.num_layers
    ]
    have = {(r["variant"], r["seed"]) for r in done}
    todo = [] if args.report_only else [(v, s) for s in range(args.seeds) for v in variants if (v, s) not in have]
    with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn"), initializer=worker_init) as pool:
        futures = [
            pool.submit(run_one, v, s, args.max_steps, args.eval_every, args.eval_prompts, args.num_layers)
            for v, s in todo
        ]
        for future in futures:
            result = {**future.result(), "max_steps": args.max_steps, "eval_every": args.eval_every}
            done.append(result)

            with out.open("a") as f:
                f.write(json.dumps(result) + "\n")
            print(json.dumps(result), flush=True)
    markers = section(args.num_layers, args.section)
    flags = "" if args.num_layers == SHAPE["num_layers"] else f" --num_layers {args.num_layers}"
    flags += f" --section {args.section}" if args.section else ""
    lines = [
        markers[0],
        "## The plateaus of var_rename: steps to leave the first one and to reach 4 hops, per recipe variant "
        "(`bench/bench_plateau.py`)",
        "",
        f"Machine: {machine()}. Date: {datetime.date.today()}. Command: `python -m bench.bench_plateau "
        f"--seeds {args.seeds} --max_steps {args.max_steps} --eval_every {args.eval_every}{flags} "
        f"--variants {','.join(variants)} --write` ({args.parallel} runs at a time, one torch thread each).",
        "",
        f"Depth recipe at {args.num_layers} layers, d_model {SHAPE['dim_model']}, {SHAPE['num_heads']} heads, "
        f"constant lr after warmup; fresh prompts of 2 chains x 8 renames (the curriculum's first stage; depth_recipe "
        f"and the layout_curriculum variants grow them every {LAYOUT_CURRICULUM['renames_growth_steps']:,} steps); "
        "evaluated "
        f"every {args.eval_every} steps on {args.eval_prompts} fixed prompts of 64 renames. Escape: first step "
        f"with depth-1 accuracy >= 0.9; reach 4: first step with depth reach at 90% >= 4. Lower is better.",
        "",
        "| variant | seeds | escape: median | escape: worst | reach 4: median | reach 4: worst | each seed "
        "(escape / reach 4) |",
        "|---|---:|---:|---:|---:|---:|---|",
        *summarise(done, variants, args.max_steps),
        markers[1],
    ]
    publish(lines, *markers, args.write)


if __name__ == "__main__":
    main()
