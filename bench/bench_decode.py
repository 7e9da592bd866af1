"""Decoding speed at small batch: the lean one-token decoder against the general cached path and recompute.

Run: python -m bench.bench_decode [--device cpu|cuda] [--threads 1] [--repeats 5] [--write]

Model: 4 layers, d_model 128, 4 heads, 39 tokens (the var_rename shape), prompt of 8 tokens, 300 new tokens,
greedy. Paths, each timed as a whole ``generate`` call and alternated every repeat (medians):

- general: ``model.generate(..., fast=False)``, the KV cache through the general forward pass (the earlier default);
- decoder: ``model.generate(...)``, ``iluvattnshun.decode.Decoder``'s static cache and lean eager step (the default);
- compiled: ``Decoder(model, batch, capacity, compile=True).generate(...)``, the step compiled ahead of time by
  AOTInductor; its build (export + compilation) is timed once and reported beside it;
- recompute: the whole sequence through the model for every new token, no cache.

Every path must give the general path's tokens; the run stops otherwise.
"""

import argparse
import datetime
import statistics
import time
from typing import Callable

import torch

from bench.common import machine, sync
from bench.results import publish
from iluvattnshun.decode import Decoder
from iluvattnshun.nn import MultilayerTransformer

SECTION_START = "<!-- bench_decode:start -->"
SECTION_END = "<!-- bench_decode:end -->"
PROMPT, NEW = 8, 300


def recompute(model: MultilayerTransformer, prompt: torch.Tensor, new: int) -> torch.Tensor:
    seq = prompt
    with torch.no_grad():
        for _ in range(new):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MultilayerTransformer(39, dim_model=128, num_heads=4, num_layers=4).to(device).eval()
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        prompt = torch.randint(0, 39, (batch, PROMPT), device=device)
        start = time.perf_counter()
        compiled = Decoder(model, batch, PROMPT + NEW, compile=True)
        build_s = time.perf_counter() - start
        paths: dict[str, Callable[[], torch.Tensor]] = {
            "general": lambda: model.generate(prompt, NEW, temperature=0.0, fast=False),
            "decoder": lambda: model.generate(prompt, NEW, temperature=0.0),
            "compiled": lambda: compiled.generate(prompt, NEW, temperature=0.0),
            "recompute": lambda: recompute(model, prompt, NEW),
        }
        start = time.perf_counter()
        reference = paths["general"]()
        for name, path in paths.items():
            if not torch.equal(path(), reference):  # also the warm-up
                raise SystemExit(f"{name} decoded other tokens than the general path")
        setup_s = time.perf_counter() - start
        times: dict[str, list[float]] = {name: [] for name in paths}
        for rep in range(args.repeats):
            for name in list(paths) if rep % 2 == 0 else list(paths)[::-1]:
                sync(device)
                t = time.perf_counter()
                paths[name]()
                sync(device)
                times[name].append(time.perf_counter() - t)
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        for name, t in medians.items():
            tps = batch * NEW / t
            build = f"{build_s:.0f} s" if name == "compiled" else "–"
            rows.append(
                f"| {batch} | {name} | {tps:,.0f} | {medians['general'] / t:.2f}x | {medians['decoder'] / t:.2f}x | "
                f"{medians['recompute'] / t:.2f}x | {build} |"
            )
        tokens_s = {k: round(batch * NEW / v) for k, v in medians.items()}
        print(f"batch {batch}: {tokens_s} tokens/s; compiled step built in {build_s:.1f} s", flush=True)
        print(f"(identity checks: {setup_s:.0f} s)", flush=True)
    device_name = machine() if device.type == "cpu" else torch.cuda.get_device_name(device)
    lines = [
        SECTION_START,
        f"## Decoding ({device.type})",
        "",
        f"Machine: {device_name}; {args.threads} torch thread(s). Date: {datetime.date.today()}. Command: "
        f"`python -m bench.bench_decode --device {args.device} --threads {args.threads} --repeats {args.repeats}`. "
        f"4 layers, d_model 128, 4 heads; prompt {PROMPT}, {NEW} new tokens, greedy; every path decoded the same "
        "tokens as the general path; medians of alternating repeats.",
        "",
        "| batch | path | tokens/s | vs general (cached) | vs decoder | vs recompute | build |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        SECTION_END,
    ]
    publish(lines, SECTION_START, SECTION_END, args.write)


if __name__ == "__main__":
    main()
