"""Training throughput side by side with nanoGPT's architecture, at the shapes this library trains on a CPU.

Run: python -m bench.bench_nanogpt [--shapes quick,small,depth,paper] [--threads 1] [--nanogpt PATH] [--write]

Three models train in one process at the same shape: this project's ``MultilayerTransformer`` (with
``build_optimizer``'s AdamW and the prompt tasks' loss), a reference with nanoGPT's architecture written here
from its description (pre-LN GPT-2 block: learned positions, one fused QKV linear with bias,
``scaled_dot_product_attention``, GELU MLP, biases, LayerNorm, tied unembedding, dropout modules at p=0; its
optimiser as nanoGPT's ``configure_optimizers`` builds it: AdamW, decay on matrices, fused only on CUDA), and,
with ``--nanogpt PATH``, nanoGPT's own ``model.py`` imported from that path (only then). One training step:
forward, cross-entropy, backward, AdamW step, ``zero_grad(set_to_none=True)``; random tokens (data loading is
not measured). The variants alternate in a rotating order every repeat; each figure is the median over repeats
of tokens/s, and each ratio the median of the per-repeat ratios (neighbouring windows share the machine's load).

``fp32``: every model in float32 eager. ``auto``: this project's model as ``--compile=auto --precision=auto``
resolve on this machine (``iluvattnshun/speed.py``) against the reference in fp32 eager (nanoGPT's CPU default).
"""

import argparse
import datetime
import importlib.util
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.common import machine, timed
from bench.results import publish
from iluvattnshun import speed
from iluvattnshun.nn import MultilayerTransformer
from iluvattnshun.optim import OptimConfig, build_optimizer

SECTION_START = "<!-- bench_nanogpt:start -->"
SECTION_END = "<!-- bench_nanogpt:end -->"
VOCAB = 39  # var_rename's vocabulary


@dataclass(frozen=True)
class Shape:
    """A training shape and how long to time it: ``steps`` per timed window, ``repeats`` windows per variant."""

    label: str
    layers: int
    d_model: int
    heads: int
    seq_len: int
    batch: int
    steps: int
    repeats: int
    qk_norm_too: bool = False


SHAPES = {
    "quick": Shape("quick: 4 layers, d_model 64, 4 heads, T 32, batch 64", 4, 64, 4, 32, 64, 10, 7),
    "small": Shape("small: 4 layers, d_model 128, 4 heads, T 64, batch 12", 4, 128, 4, 64, 12, 10, 7),
    "depth": Shape("depth-law: 4 layers, d_model 64, 4 heads, T 164, batch 64", 4, 64, 4, 164, 64, 3, 5, True),
    "paper": Shape("paper: 8 layers, d_model 128, 4 heads, T 600, batch 16", 8, 128, 4, 600, 16, 1, 3),
}


# --- the reference: nanoGPT's architecture, written from its description -----------------------------------


class RefAttention(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)  # q, k and v in one matmul, with bias
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_drop(self.proj(y))  # type: ignore[no-any-return]


class RefBlock(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = RefAttention(d_model, heads)
        self.ln_2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)
        self.drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.drop(self.proj(F.gelu(self.fc(self.ln_2(x)))))  # type: ignore[no-any-return]


class RefGPT(nn.Module):
    """GPT-2 as nanoGPT builds it: token + learned position embeddings, pre-LN blocks, final LayerNorm, tied head."""

    def __init__(self, vocab: int, block_size: int, layers: int, d_model: int, heads: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d_model)
        self.wpe = nn.Embedding(block_size, d_model)
        self.drop = nn.Dropout(0.0)
        self.blocks = nn.ModuleList(RefBlock(d_model, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # type: ignore[no-any-return]  # (B, T, V)


def nanogpt_optimizer(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW as nanoGPT's ``configure_optimizers`` builds it: weight decay on matrices, fused only on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), fused=device.type == "cuda")


def load_nanogpt(path: str) -> ModuleType:
    """nanoGPT's ``model.py`` from ``path`` (the file or its folder); imported only when asked for."""
    file = Path(path)
    file = file / "model.py" if file.is_dir() else file
    spec = importlib.util.spec_from_file_location("nanogpt_model", file)
    if spec is None or spec.loader is None or not file.is_file():
        raise SystemExit(f"--nanogpt: no model.py at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- training steps ---------------------------------------------------------------------------------------


Step = Callable[[], None]


def make_step(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
) -> Step:
    """One training step per call, cycling through ``batches``."""
    count = [0]

    def step() -> None:
        x, y = batches[count[0] % len(batches)]
        count[0] += 1
        loss_fn(x, y).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def project_step(
    shape: Shape, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device, qk_norm: bool, auto: bool
) -> tuple[Step, str]:
    """This project's model, optimiser and loss; with ``auto`` the compile / precision choice of ``speed.py``."""
    model = MultilayerTransformer(
        VOCAB,
        shape.d_model,
        shape.heads,
        shape.layers,
        dropout_attn=0.0,
        dropout_mlp=0.0,
        dropout_emb=0.0,
        qk_norm=qk_norm,
    )
    model = model.to(device).train()
    optimizer = build_optimizer(model, OptimConfig(), device)
    choice = speed.choose(device, "auto" if auto else False, "auto" if auto else "fp32", shape.d_model, shape.seq_len)
    forward: Callable[..., Any] = torch.compile(model) if choice.compile else model
    bf16 = choice.precision == "bf16"

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            logits = forward(x).logits  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1)

    how = f"{'compiled ' if choice.compile else ''}{choice.precision}"
    return make_step(loss, optimizer, batches), how


def reference_step(shape: Shape, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> Step:
    model = RefGPT(VOCAB, shape.seq_len, shape.layers, shape.d_model, shape.heads).to(device).train()

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1), ignore_index=-1)

    return make_step(loss, nanogpt_optimizer(model, device), batches)


def nanogpt_step(
    module: ModuleType, shape: Shape, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> Step:
    config = module.GPTConfig(
        block_size=shape.seq_len,
        vocab_size=VOCAB,
        n_layer=shape.layers,
        n_head=shape.heads,
        n_embd=shape.d_model,
        dropout=0.0,
        bias=True,
    )
    model = module.GPT(config).to(device).train()
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), device.type)

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = model(x, y)[1]
        return out

    return make_step(loss, optimizer, batches)


# --- measurement ------------------------------------------------------------------------------------------


def measure(steps: dict[str, Step], shape: Shape, device: torch.device, repeats: int) -> dict[str, list[float]]:
    """Tokens/s of every variant per repeat, the variants in a rotating order (two warm-up steps each first)."""
    for step in steps.values():
        for _ in range(2):
            step()
    names = list(steps)
    rates: dict[str, list[float]] = {name: [] for name in names}
    tokens = shape.steps * shape.batch * shape.seq_len
    for rep in range(repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            rates[name].append(tokens / timed(steps[name], device, shape.steps))
    return rates


def ratio(rates: dict[str, list[float]], a: str, b: str) -> float:
    """Median of the per-repeat ratios a / b."""
    return statistics.median(x / y for x, y in zip(rates[a], rates[b]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: all, the torch default)")
    parser.add_argument("--repeats", type=int, default=None, help="timed windows per variant (default: per shape)")
    parser.add_argument("--nanogpt", default=None, help="path to nanoGPT's model.py (or its folder) to add it")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    parser.add_argument("--note", default="", help="a sentence on the machine's load, printed under the table")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    nanogpt = load_nanogpt(args.nanogpt) if args.nanogpt else None
    names = [n.strip() for n in args.shapes.split(",") if n.strip()]
    for name in names:
        if name not in SHAPES:
            raise SystemExit(f"--shapes: unknown shape {name!r} (choose from {', '.join(SHAPES)})")
    rows = []
    for name in names:
        shape = SHAPES[name]
        torch.manual_seed(0)
        batches = [
            (
                torch.randint(0, VOCAB, (shape.batch, shape.seq_len), device=device),
                torch.randint(0, VOCAB, (shape.batch, shape.seq_len), device=device),
            )
            for _ in range(4)
        ]
        steps: dict[str, Step] = {"reference": reference_step(shape, batches, device)}
        if nanogpt is not None:
            steps["nanogpt"] = nanogpt_step(nanogpt, shape, batches, device)
        projects = [("", False)] + ([(" + qk_norm", True)] if shape.qk_norm_too else [])
        for suffix, qk in projects:
            steps["project" + suffix], _ = project_step(shape, batches, device, qk, auto=False)
            auto_step, how = project_step(shape, batches, device, qk, auto=True)
            if how != "fp32":  # auto chose something else here: measure it too
                steps[f"project{suffix} auto ({how})"] = auto_step
        rates = measure(steps, shape, device, args.repeats or shape.repeats)
        for variant in steps:
            if not variant.startswith("project"):
                continue
            med = statistics.median(rates[variant])
            ref = statistics.median(rates["reference"])
            row = f"| {shape.label} | {variant} | {med:,.0f} | {ref:,.0f} | **{ratio(rates, variant, 'reference'):.2f}x** |"
            if nanogpt is not None:
                row += f" {statistics.median(rates['nanogpt']):,.0f} | {ratio(rates, variant, 'nanogpt'):.2f}x |"
            rows.append(row)
            print(row, flush=True)
        if not any(" auto " in v for v in steps):
            rows.append(f"| {shape.label} | auto resolves to fp32 eager here: the row above | | | |")
    threads = torch.get_num_threads()
    command = "python -m bench.bench_nanogpt " + " ".join(sys.argv[1:] if argv is None else argv)
    header = "| shape | this project | tok/s | nanoGPT architecture tok/s | ratio |"
    rule = "|---|---|---:|---:|---:|"
    if nanogpt is not None:
        header += " nanoGPT model.py tok/s | ratio |"
        rule += "---:|---:|"
    lines = [
        SECTION_START,
        "## Training side by side with nanoGPT's architecture (`bench/bench_nanogpt.py`)",
        "",
        f"Machine: {machine()}; {threads} torch thread{'s' if threads > 1 else ''}, {device}. "
        f"Date: {datetime.date.today()}. Command: `{command.strip()}`.",
        "",
        "One process; forward + cross-entropy + backward + AdamW step per training step, random tokens; the variants "
        "alternate every repeat; tokens/s are medians over repeats, ratios the median of per-repeat ratios "
        "(project / reference). The reference is nanoGPT's architecture written from its description with "
        "nanoGPT's optimiser recipe (unfused AdamW on a CPU); fp32 eager unless the row says otherwise.",
        "",
        header,
        rule,
        *rows,
    ]
    if args.note:
        lines += ["", args.note]
    lines += ["", SECTION_END]
    publish(lines, SECTION_START, SECTION_END, args.write)


if __name__ == "__main__":
    main()
