"""Model benchmarks: training-step throughput (fast vs explicit attention; eager vs compiled vs a CUDA graph) and
KV-cached generation.

Run: python -m bench.bench_nn [--repeats 5] [--device cpu] [--step_variants eager,compile,cuda_graph]

Every figure is compared with its baseline in the same process: the explicit softmax path and the eager step for
training steps, full recomputation for generation, and a large matmul for the machine's float32 peak.
"""

import argparse
import itertools
import json
import platform
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.common import median_time, sync, timed
from iluvattnshun.nn import MultilayerTransformer, flops_per_token
from iluvattnshun.optim import OptimConfig, build_optimizer


@dataclass
class Shape:
    name: str
    n_layers: int
    d_model: int
    n_heads: int
    seq_len: int
    batch: int
    vocab: int


SHAPES = [
    Shape("a: var_rename paper (8L d128 4h T600 B16 V39)", 8, 128, 4, 600, 16, 39),
    Shape("b: shakespeare quick (4L d128 4h T64 B12 V65)", 4, 128, 4, 64, 12, 65),
]


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """Achievable matmul FLOP/s measured with a large square matmul."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = median_time(lambda: a @ b, repeats, warmup=2, device=device)
    return 2 * n**3 / t


def make_model(shape: Shape, device: torch.device) -> MultilayerTransformer:
    torch.manual_seed(0)
    return MultilayerTransformer(
        shape.vocab,
        dim_model=shape.d_model,
        num_heads=shape.n_heads,
        num_layers=shape.n_layers,
        dropout_attn=0.0,
        dropout_mlp=0.0,
        dropout_emb=0.0,
    ).to(device)


STEP_VARIANTS = ("eager", "compile", "cuda_graph")
"""How the project's training step (model, ``build_optimizer``'s AdamW, cross-entropy) can run: as written, through
``torch.compile`` (forward and backward), or captured once as a CUDA graph and replayed (CUDA only)."""


def training_step(
    shape: Shape, variant: str, device: torch.device, explicit: bool = False
) -> tuple[Callable[[], None], nn.Module]:
    """(one training step per call, the model it trains) in ``variant`` (one of ``STEP_VARIANTS``), cycling through
    four batches; the CUDA graph copies each batch into its one static input, as a training loop would. Every variant
    starts from the same weights and sees the same batches. ``explicit``: attention through the explicit softmax
    path (``return_attn_weights``) instead of the fused kernel."""
    model = make_model(shape, device).train()
    optimizer = build_optimizer(model, OptimConfig(), device)
    batches = [torch.randint(0, shape.vocab, (shape.batch, shape.seq_len), device=device) for _ in range(4)]
    forward: Callable[..., Any] = torch.compile(model) if variant == "compile" else model
    order = itertools.cycle(batches)

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        logits = forward(x, return_attn_weights=explicit).logits
        return F.cross_entropy(logits.flatten(0, 1), x.flatten())

    def step() -> None:
        loss_of(next(order)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if variant in ("eager", "compile"):
        return step, model
    if variant != "cuda_graph" or device.type != "cuda":
        raise ValueError(f"step variant {variant!r} on {device}: one of {STEP_VARIANTS} (cuda_graph needs CUDA)")
    # Whole-step capture: the optimizer keeps its step counts on the device, and a few warm-up steps on a side
    # stream allocate its state and the kernels' workspaces before the graph records one step.
    for group in optimizer.param_groups:
        group["capturable"] = True
    static_x = batches[0].clone()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "capturable=True ... running without graph capture": the warm-up, on purpose
        for _ in range(3):
            loss_of(static_x).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # gradients are born inside the graph's memory pool, as None before it
        loss_of(static_x).backward()
        optimizer.step()

    def replay() -> None:
        static_x.copy_(next(order))
        graph.replay()

    return replay, model


def step_variant_times(
    shape: Shape, variants: list[str], device: torch.device, repeats: int, window: int = 10
) -> dict[str, float]:
    """Median seconds per step of each variant over ``repeats`` windows of ``window`` steps, the variants
    interleaved window by window (compilation and capture happen before timing)."""
    steps = {v: training_step(shape, v, device)[0] for v in variants}
    for step in steps.values():
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(repeats):
        for v, step in steps.items():
            times[v].append(timed(step, device, window) / window)
    return {v: statistics.median(t) for v, t in times.items()}


def generation_time(recompute: bool, device: torch.device, new_tokens: int, batch: int, repeats: int) -> float:
    shape = Shape("gen", 4, 128, 4, 8, batch, 39)
    model = make_model(shape, device).eval()
    prompt = torch.randint(0, shape.vocab, (batch, 8), device=device)

    @torch.no_grad()
    def by_recompute() -> None:
        seq = prompt
        for _ in range(new_tokens):
            nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)

    def cached() -> None:
        model.generate(prompt, new_tokens, temperature=0.0, fast=False)  # the general path (bench_decode: the rest)

    return median_time(by_recompute if recompute else cached, repeats, warmup=1, device=device)


def hook_overhead(device: torch.device, repeats: int) -> tuple[float, float, float]:
    """Forward-only time of model(x), run_with_hooks(x, {}) and one cached activation, interleaved."""
    shape = SHAPES[0]
    model = make_model(shape, device).eval()
    x = torch.randint(0, shape.vocab, (shape.batch, shape.seq_len), device=device)
    last = f"layers.{shape.n_layers - 1}.resid_post"
    fns: list[Callable[[], object]] = [
        lambda: model(x),
        lambda: model.run_with_hooks(x, {}),
        lambda: model.run_with_cache(x, names=[last]),
    ]
    times: list[list[float]] = [[], [], []]
    with torch.no_grad():
        for fn in fns:
            fn()
        for _ in range(repeats):
            for i, fn in enumerate(fns):
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times[i].append(time.perf_counter() - start)
    plain, hooked, cached = (statistics.median(t) for t in times)
    return plain, hooked, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    parser.add_argument(
        "--step_variants",
        default="",
        help=f"comma-separated, of {', '.join(STEP_VARIANTS)} (default: all on CUDA, eager and compile on a CPU)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    default_variants = STEP_VARIANTS if device.type == "cuda" else STEP_VARIANTS[:2]
    variants = args.step_variants.split(",") if args.step_variants else list(default_variants)
    if unknown := [v for v in variants if v not in default_variants]:
        parser.error(f"--step_variants: {', '.join(unknown)} not one of {', '.join(default_variants)} on {device}")

    results: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
    }
    peak = matmul_peak_flops(device, torch.float32, args.repeats)
    results["fp32_matmul_peak_gflops"] = round(peak / 1e9, 1)
    print(f"device: {results['device']}   measured fp32 matmul peak: {peak / 1e9:,.1f} GFLOP/s")

    print("\n| shape | path | step ms | tokens/s | model GFLOP/token | % of fp32 peak |")
    print("|---|---|---:|---:|---:|---:|")
    for shape in SHAPES:
        tokens = shape.batch * shape.seq_len
        fpt = flops_per_token(make_model(shape, device), shape.seq_len, training=True)
        row: dict[str, float] = {}
        for explicit in (False, True):
            t = median_time(training_step(shape, "eager", device, explicit)[0], args.repeats, 2, device)
            tps = tokens / t
            frac = fpt * tps / peak
            path = "explicit" if explicit else "fast (SDPA)"
            row[path] = tps
            print(f"| {shape.name} | {path} | {t * 1e3:,.1f} | {tps:,.0f} | {fpt / 1e9:.4f} | {100 * frac:.1f}% |")
        results[shape.name] = {**row, "speedup": row["fast (SDPA)"] / row["explicit"]}
        print(f"| {shape.name} | fast / explicit | | **{row['fast (SDPA)'] / row['explicit']:.2f}x** | | |")

    print("\n| shape | training step | ms | tokens/s | vs eager |")
    print("|---|---|---:|---:|---:|")
    for shape in SHAPES:
        tokens = shape.batch * shape.seq_len
        times = step_variant_times(shape, variants, device, args.repeats)
        results[f"{shape.name} steps"] = {v: tokens / t for v, t in times.items()}
        for v, t in times.items():
            ratio = f"{times['eager'] / t:.2f}x" if "eager" in times else ""
            print(f"| {shape.name} | {v} | {t * 1e3:,.2f} | {tokens / t:,.0f} | {ratio} |")

    print("\n| generation (4L d128, prompt 8, greedy) | batch | new tokens | tokens/s | vs recompute |")
    print("|---|---:|---:|---:|---:|")
    for batch, new_tokens in ((1, 1000),):
        cached = generation_time(False, device, new_tokens, batch, max(3, args.repeats // 2))
        recompute = generation_time(True, device, new_tokens, batch, 1)
        c_tps, r_tps = batch * new_tokens / cached, batch * new_tokens / recompute
        results[f"gen_b{batch}_n{new_tokens}"] = {"cached": c_tps, "recompute": r_tps}
        print(f"| KV cache | {batch} | {new_tokens} | {c_tps:,.0f} | **{c_tps / r_tps:.1f}x** |")
        print(f"| recompute | {batch} | {new_tokens} | {r_tps:,.0f} | 1.0x |")
    plain, hooked, cached = hook_overhead(device, 2 * args.repeats + 1)
    results["hooks"] = {"plain_ms": plain * 1e3, "run_with_hooks_empty_ms": hooked * 1e3, "cache_one_ms": cached * 1e3}
    print("\n| forward, shape a, no grad | ms | vs plain |")
    print("|---|---:|---:|")
    print(f"| model(x) | {plain * 1e3:,.1f} | 1.000x |")
    print(f"| run_with_hooks(x, {{}}) | {hooked * 1e3:,.1f} | {hooked / plain:.3f}x |")
    print(f"| run_with_cache(x, [one name]) | {cached * 1e3:,.1f} | {cached / plain:.3f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
