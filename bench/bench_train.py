"""Training end to end: the real ``Trainer`` against a bare loop, fraction of peak, data wait, generation.

Run: python -m bench.bench_train [--quick] [--device cpu|cuda] [--threads N] [--rounds 3] [--write]

Figures (numbers of issue 8), each against its baseline measured in the same process:

1. Training throughput (tokens/s, forward + backward + optimizer step) through ``Trainer.run()`` for the
   var_rename ``paper`` model shape (8 layers, d_model 128, 4 heads, 600 tokens) and the Shakespeare
   ``quick`` shape, against a bare PyTorch loop over the same model, the same batches (materialised
   beforehand), the same optimizer, scheduler and gradient clipping. Trainer overhead = (Trainer step time -
   bare step time) / bare step time. Steady state only: a loader wrapper timestamps every request for a batch,
   and the window runs from the request of batch ``warmup`` to that of batch ``warmup + steps``, so start-up,
   the first and last evaluation and the final checkpoint fall outside it. Trainer and bare runs alternate
   (ABBA) for ``--rounds`` rounds; the overhead is the median of the per-round overheads.
2. Fraction of peak: ``flops_per_token`` x tokens/s over a large matmul's FLOP/s measured in the run (float32
   on CPU; bfloat16 on CUDA, where training runs under bf16 autocast), and a ``torch.profiler`` table of where
   the paper-shape step spends its time.
4. Data wait: share of the Trainer's step time spent inside the loader's ``next()``, for the cached dataset
   (``ArrayLoader``) and streaming (``StreamingDataset`` through ``StreamingLoader``) with the var_rename
   ``quick`` model.
5. Generation: new tokens/s with the KV cache (``generate``) at batch 1 and 32, for 100 and 1,000 new
   tokens, against recomputing the whole sequence for every new token. A recompute run whose estimated time
   exceeds ``--recompute_cap_s`` is not run in full: its time is integrated from forward passes timed at
   sampled lengths (marked "est.").
"""

import argparse
import contextlib
import dataclasses
import datetime
import io
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.common import machine
from bench.bench_nn import Shape, generation_time, make_model, matmul_peak_flops, sync
from examples.shakespeare import IGNORE, ShakespeareTrainer
from examples.shakespeare import quick as shakespeare_quick
from examples.var_rename.task import MASK, VarRenamePrompter
from examples.var_rename.task import paper as var_rename_paper
from examples.var_rename.task import quick as var_rename_quick
from bench.results import replace_section
from iluvattnshun.batches import WaitTimer
from iluvattnshun.nn import MultilayerTransformer, flops_per_token
from iluvattnshun.checkpoint import seed_everything
from iluvattnshun.task import PromptTaskTrainer
from iluvattnshun.trainer import Trainer, TrainerConfig

ROOT = Path(__file__).resolve().parents[1]
SECTION_START = "<!-- bench_train:start -->"
SECTION_END = "<!-- bench_train:end -->"
SHAKESPEARE_ENV = "ILUVATTNSHUN_SHAKESPEARE"
SHAKESPEARE_DEFAULTS = (
    "/work/shared/data/tinyshakespeare/input.txt",
    "shared/data/tinyshakespeare/input.txt",
    "data/shakespeare/input.txt",
)
"""Where the Tiny Shakespeare text is looked for when neither --shakespeare_path nor the env variable names it."""

Batch = dict[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


# --- timing the Trainer from inside its loader -------------------------------------------------------------


class TimedLoader:
    """Wraps a training loader: timestamps each request for a batch; the wait is the Trainer's own measurement.

    ``stamps[i]`` is when the loop asked for batch ``i`` (counted over epochs): the loop's step ``i - 1`` and
    its logging, evaluation and checkpoint checks are done by then. ``waited[i]`` is the data wait before that
    request, summed over epochs by ``batches.WaitTimer`` (the timer behind the Trainer's ``train/data_wait``; the
    end of an epoch and the start of the next count as waiting). ``sync`` runs before the stamps listed in
    ``sync_at`` so that on a GPU the window measures finished work, not queued work.
    """

    def __init__(self, loader: Iterable[Any], sync: Callable[[], None], sync_at: Iterable[int]) -> None:
        self.loader = loader
        self.timer = WaitTimer(loader)
        self.sync = sync
        self.sync_at = set(sync_at)
        self.stamps: list[float] = []
        self.waited: list[float] = []
        self._synced: set[int] = set()

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.loader, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.timer)
        while True:
            if len(self.stamps) in self.sync_at - self._synced:  # once, also when the request ends an epoch
                self._synced.add(len(self.stamps))
                self.sync()
            stamp, waited = time.perf_counter(), self.timer.wait_s
            try:
                batch = next(it)
            except StopIteration:
                return
            self.stamps.append(stamp)
            self.waited.append(waited)
            yield batch

    def window(self, first: int, last: int) -> "Window":
        """Steps ``first`` .. ``last - 1``: from the request for batch ``first`` to the request for batch ``last``."""
        return Window.from_stamps(self.stamps[first : last + 1], self.waited[last] - self.waited[first])


class SizedTimedLoader(TimedLoader):
    """A ``TimedLoader`` over a loader with a length (the Trainer then knows the epoch size)."""

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


def timed_loader(loader: Iterable[Any], sync: Callable[[], None], sync_at: Iterable[int]) -> TimedLoader:
    """Wrap ``loader``, keeping a length only where it has one (a DataLoader over a stream raises on len)."""
    try:
        len(loader)  # type: ignore[arg-type]
    except TypeError:
        return TimedLoader(loader, sync, sync_at)
    return SizedTimedLoader(loader, sync, sync_at)


def with_timed_loader(base: type[Trainer[Any]], sync_at: Iterable[int]) -> type[Trainer[Any]]:
    """A subclass of ``base`` whose training loader is wrapped in a ``TimedLoader`` (as ``self.timed``).

    Its validation loader keeps only the first batch: evaluations happen outside the timed window, and a
    full validation pass at the start and end of every run would only make the benchmark slower.
    """
    marks = list(sync_at)

    class Timed(base):  # type: ignore[valid-type,misc]
        timed: TimedLoader

        def get_train_dataloader(self) -> Iterable[Any]:
            device = self.device
            self.timed = timed_loader(super().get_train_dataloader(), lambda: sync(device), marks)
            return self.timed

        def get_val_dataloader(self) -> Iterable[Any]:
            return list(itertools.islice(super().get_val_dataloader(), 1))

    Timed.__name__ = Timed.__qualname__ = f"Timed{base.__name__}"
    return Timed


# --- cases ---------------------------------------------------------------------------------------------------


def var_rename_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The var_rename training loss written out, as a bare loop would."""
    logits = model(batch["prompt"]).logits  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["answer"].flatten(), ignore_index=MASK)


def shakespeare_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Next-character cross-entropy written out, as a bare loop would."""
    logits = model(batch["input"]).logits  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["target"].flatten(), ignore_index=IGNORE)


@dataclass
class Case:
    """One training configuration run through the Trainer and through the bare loop."""

    name: str
    trainer_cls: type[Trainer[Any]]
    config: TrainerConfig
    loss_fn: LossFn
    seq_len: int
    warmup: int
    steps: int
    mode: str = ""
    """Data mode shown in the data-wait table (empty: the name)."""


def construct(cls: type[Trainer[Any]], config: TrainerConfig) -> Trainer[Any]:
    """A trainer of class ``cls`` (a prompt-task trainer takes the var_rename prompter of ``config``)."""
    if issubclass(cls, PromptTaskTrainer):
        return cls(VarRenamePrompter(config))  # type: ignore[arg-type]
    return cls(config)


def bench_config(config: TrainerConfig, workdir: Path, device: str, compile_model: bool, **fields: Any) -> Any:
    """A preset made steady-state friendly: no periodic evaluation or checkpoint, no time budget, temp dirs."""
    extra: dict[str, Any] = {}
    if hasattr(config, "dataset_path"):
        extra["dataset_path"] = str(workdir / "data")
    return dataclasses.replace(
        config,
        tensorboard_logdir=str(workdir / "logs"),
        eval_every_n_samples=None,
        save_every_n_seconds=1e9,
        max_minutes=None,
        num_epochs=-1,
        device=device,
        precision="bf16" if device.startswith("cuda") else "fp32",
        compile=compile_model,
        **extra,
        **fields,
    )


def shakespeare_text(path: str) -> str:
    """The Tiny Shakespeare path to use: the argument, else $ILUVATTNSHUN_SHAKESPEARE, else the first default found."""
    if path or os.environ.get(SHAKESPEARE_ENV):
        return path or os.environ[SHAKESPEARE_ENV]
    return next((p for p in SHAKESPEARE_DEFAULTS if Path(p).is_file()), SHAKESPEARE_DEFAULTS[0])


def build_cases(args: argparse.Namespace, workdir: Path) -> tuple[list[Case], list[Case], str]:
    """(throughput cases, data-wait cases, note on what was skipped)."""
    cuda = args.device.startswith("cuda")
    q = args.quick
    note = ""
    cfg = bench_config
    paper_batch = args.paper_batch or (128 if cuda else (2 if q else 16))
    paper_warmup, paper_steps = (1, 2) if q else ((10, 200) if cuda else (2, 5))
    paper = Case(
        "var_rename paper",
        PromptTaskTrainer,
        cfg(
            var_rename_paper(),
            workdir,
            args.device,
            args.compile,
            batch_size=paper_batch,
            # one epoch covers the window, as in a real paper run (1,000,000 samples)
            train_size=max(2_000, paper_batch * (paper_warmup + paper_steps + 2)),
            test_size=16,
            val_batch_size=16,
        ),
        var_rename_loss,
        600,
        warmup=paper_warmup,
        steps=paper_steps,
    )
    cases = [paper]
    text = shakespeare_text(args.shakespeare_path)
    if Path(text).is_file():
        cases.append(
            Case(
                "shakespeare quick",
                ShakespeareTrainer,
                cfg(shakespeare_quick(), workdir, args.device, args.compile, data_path=text, sample_tokens=20),
                shakespeare_loss,
                64,
                warmup=3 if q else 20,
                steps=10 if q else (300 if cuda else 150),
            )
        )
    else:
        note = f"Shakespeare skipped: no text at {text!r} (set --shakespeare_path or ${SHAKESPEARE_ENV})."
    quick_fields: dict[str, Any] = {"train_size": 2_000, "test_size": 64}
    wait_cases = []
    modes: list[tuple[str, dict[str, Any]]] = [("cached ArrayLoader", {"streaming": False})]
    modes += [(f"streaming, {w} workers", {"streaming": True, "num_workers": w}) for w in args.stream_workers]
    for mode, fields in modes:
        wait_cases.append(
            Case(
                f"var_rename quick, {mode}",
                PromptTaskTrainer,
                cfg(var_rename_quick(), workdir, args.device, args.compile, **quick_fields, **fields),
                var_rename_loss,
                32,
                warmup=3 if q else 20,
                steps=10 if q else (300 if cuda else 120),
                mode=mode,
            )
        )
    return cases, wait_cases, note


# --- one Trainer run, one bare run -----------------------------------------------------------------------------


@dataclass
class Window:
    """Timing of the steady-state window of one run."""

    step_s: float
    """Mean wall time per optimizer step."""
    median_step_s: float
    """Median wall time of one step (robust to bursts of load from other processes; CPU only, else the mean)."""
    wait_s: float
    """Mean time per step spent waiting for the next batch (0 for the bare loop: batches are ready)."""

    @classmethod
    def from_stamps(cls, stamps: list[float], waited: float) -> "Window":
        """From the start times of steps first .. last and the end of step last (``len(stamps) - 1`` steps)."""
        steps = len(stamps) - 1
        durations = np.diff(stamps)
        return cls((stamps[-1] - stamps[0]) / steps, float(np.median(durations)), waited / steps)


def run_trainer(case: Case, workdir: Path) -> tuple[Window, nn.Module]:
    """Train ``warmup + steps + 1`` steps with the real Trainer; time requests warmup .. warmup + steps.

    Returns the window and the trained model (the run directory is deleted).
    """
    first, last = case.warmup, case.warmup + case.steps
    cls = with_timed_loader(case.trainer_cls, (first, last))
    config = dataclasses.replace(case.config, max_steps=last + 1)
    trainer = construct(cls, config)
    out = io.StringIO()
    try:
        # The console frames and progress bars would drown the report; they are shown if the run fails.
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            trainer.run()
    except BaseException:
        sys.stderr.write(out.getvalue()[-5000:])
        raise
    finally:
        if trainer.run_dir is not None:
            shutil.rmtree(trainer.run_dir, ignore_errors=True)
    window: Window = trainer.timed.window(first, last)  # type: ignore[attr-defined]
    if trainer.device.type == "cuda":  # per-step stamps of asynchronous work mean nothing: keep the mean
        window.median_step_s = window.step_s
    return window, trainer.model


def bare_setup(case: Case) -> tuple[Trainer[Any], nn.Module, list[Batch]]:
    """The task's model (same seed and initialisation as the Trainer's) and its first batches, on the device."""
    with contextlib.redirect_stderr(io.StringIO()):
        task = construct(case.trainer_cls, case.config)  # never run: seeded and set up as Trainer.run() would
        seed_everything(case.config.seed)
        task.setup()
        model = task.get_model().to(task.device)
        loader = task.get_train_dataloader()
        batches: list[Batch] = []
        while len(batches) < case.warmup + case.steps:
            for batch in loader:
                batches.append({k: v.to(task.device) for k, v in batch.items()})
                if len(batches) == case.warmup + case.steps:
                    break
    return task, model, batches


def run_bare(case: Case, task: Trainer[Any], model: nn.Module, batches: list[Batch]) -> Window:
    """The same steps as the Trainer's, without the Trainer: zero_grad, forward, backward, clip, step."""
    cfg = case.config
    device = task.device
    optimizer = task.get_optimizer(model)
    scheduler = task.get_scheduler(optimizer)
    fwd: nn.Module = torch.compile(model) if cfg.compile else model  # type: ignore[assignment]
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = (
        (lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16))
        if cfg.precision == "bf16" and device.type == "cuda"
        else contextlib.nullcontext
    )
    params = list(model.parameters())
    model.train()
    stamps: list[float] = []
    for i, batch in enumerate(batches):
        if i == case.warmup:
            sync(device)
        if i >= case.warmup:
            stamps.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = case.loss_fn(fwd, batch)
        loss.backward()  # type: ignore[no-untyped-call]
        if cfg.grad_norm_max:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_norm_max)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    sync(device)
    stamps.append(time.perf_counter())
    window = Window.from_stamps(stamps, 0.0)
    if device.type == "cuda":
        window.median_step_s = window.step_s
    return window


@dataclass
class CaseResult:
    case: Case
    trainer: list[Window]
    bare: list[Window]
    tokens_per_step: int
    gflop_per_token: float
    peaks: list[float]
    """Matmul FLOP/s measured in each round, between its two runs (empty when not measured)."""

    def overheads(self, median: bool = False) -> list[float]:
        """Per round: Trainer step time / bare step time - 1 (mean over the window, or median step)."""
        if median:
            return [t.median_step_s / b.median_step_s - 1 for t, b in zip(self.trainer, self.bare)]
        return [t.step_s / b.step_s - 1 for t, b in zip(self.trainer, self.bare)]

    def median_step(self, which: str) -> float:
        """Median over rounds of the window-mean step time of ``trainer`` or ``bare`` runs."""
        runs = self.trainer if which == "trainer" else self.bare
        return statistics.median(w.step_s for w in runs)

    def wait_share(self) -> float:
        """Median over rounds of the Trainer's data-wait share."""
        return statistics.median(w.wait_s / w.step_s for w in self.trainer)

    def peak_fraction(self, which: str) -> float:
        """Median over rounds of model FLOP/s over the matmul peak of the same round."""
        runs = self.trainer if which == "trainer" else self.bare
        flops = self.gflop_per_token * 1e9 * self.tokens_per_step
        return statistics.median(flops / w.step_s / peak for w, peak in zip(runs, self.peaks))


def measure_case(case: Case, rounds: int, workdir: Path, peak_fn: Callable[[], float] | None = None) -> CaseResult:
    """Alternate Trainer and bare runs (ABBA) and collect their steady-state windows.

    ``peak_fn`` (the matmul peak) is measured between the two runs of every round: on a shared machine the
    achievable peak moves with the load, so each round's throughput is compared with its own peak.
    """
    task, model0, batches = bare_setup(case)
    assert isinstance(model0, MultilayerTransformer)
    initial = {k: v.clone() for k, v in model0.state_dict().items()}
    tokens = int(next(iter(batches[0].values())).numel())
    # One untimed step first: the first run of a shape in a process pays one-time costs (kernel selection,
    # allocator growth) that would otherwise land on whichever of Trainer or bare runs first.
    run_bare(dataclasses.replace(case, warmup=0, steps=1), task, model0, batches[:1])
    model0.load_state_dict(initial)
    trainer_runs: list[Window] = []
    bare_runs: list[Window] = []
    peaks: list[float] = []
    for r in range(rounds):
        order = ("trainer", "bare") if r % 2 == 0 else ("bare", "trainer")
        for i, which in enumerate(order):
            if i == 1 and peak_fn is not None:
                peaks.append(peak_fn())
            if which == "trainer":
                trainer_runs.append(run_trainer(case, workdir)[0])
            else:
                model0.load_state_dict(initial)
                bare_runs.append(run_bare(case, task, model0, batches))
        print(
            f"  {case.name}, round {r + 1}: trainer {1e3 * trainer_runs[-1].step_s:.1f} ms/step, "
            f"bare {1e3 * bare_runs[-1].step_s:.1f} ms/step (medians {1e3 * trainer_runs[-1].median_step_s:.1f}, "
            f"{1e3 * bare_runs[-1].median_step_s:.1f})",
            flush=True,
        )
    fpt = flops_per_token(model0, case.seq_len, training=True)
    return CaseResult(case, trainer_runs, bare_runs, tokens, fpt / 1e9, peaks)


# --- profile of the paper-shape step ---------------------------------------------------------------------------

CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("attention kernel (SDPA fwd + bwd)", ("scaled_dot_product", "flash_attention", "efficient_attention")),
    ("matmul (mm / addmm / bmm)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("optimizer (AdamW, grad clipping)", ("_foreach", "adam", "clip_grad", "aten::norm", "linalg_vector_norm")),
    ("layer norm", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("softmax / cross-entropy", ("softmax", "nll_loss", "cross_entropy")),
    ("dropout (bernoulli_, div_)", ("dropout", "bernoulli", "aten::div_")),
    ("copies, zero-fills, layout (copy_, fill_, cat, clone)", ("copy_", "fill_", "aten::cat", "clone", "contiguous")),
    ("other elementwise (mul, add, neg: RoPE, residuals)", ("aten::mul", "aten::add", "aten::neg", "aten::sub")),
    ("embedding", ("embedding",)),
]
"""Profile categories, matched on op names in this order (first match wins; approximate by nature)."""


def categorise(name: str) -> str:
    lower = name.lower()
    for label, keys in CATEGORIES:
        if any(k.lower() in lower for k in keys):
            return label
    return "other"


@dataclass
class Profile:
    step_ms: float
    """Profiled wall time per step (the profiler adds some overhead)."""
    top: list[tuple[str, float, float]]
    """(op name, self ms per step, calls per step), largest first."""
    categories: list[tuple[str, float]]
    """(category, self ms per step), largest first."""
    total_ms: float
    """Sum of self times per step."""


def profile_case(case: Case, steps: int, top_n: int = 15) -> Profile:
    """Profile ``steps`` bare-loop steps of ``case`` (after the warmup steps) with ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    short = dataclasses.replace(case, steps=steps)
    task, model, batches = bare_setup(short)
    device = task.device
    run_bare(dataclasses.replace(short, steps=1), task, model, batches[: short.warmup + 1])  # warm up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        run_bare(dataclasses.replace(short, warmup=0), task, model, batches[short.warmup :])
    step_ms = 1e3 * (time.perf_counter() - start) / steps
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in events) / 1e3 / steps
    top = [(e.key, getattr(e, attr) / 1e3 / steps, e.count / steps) for e in events[:top_n]]
    sums: dict[str, float] = {}
    for e in events:
        label = categorise(e.key)
        sums[label] = sums.get(label, 0.0) + getattr(e, attr) / 1e3 / steps
    return Profile(step_ms, top, sorted(sums.items(), key=lambda kv: -kv[1]), total)


# --- generation ----------------------------------------------------------------------------------------------

PEAK_N = {"cpu": 2048, "cuda": 8192}
"""Size of bench_nn's square peak matmul per device type."""

GEN_SHAPE = (4, 128, 4, 8, 39)
"""bench_nn's generation model: 4 layers, d_model 128, 4 heads, prompt 8, vocab 39."""


@torch.no_grad()
def recompute_estimate(device: torch.device, batch: int, new_tokens: int, samples: int = 6) -> float:
    """Seconds that greedy recompute generation would take, integrated from forwards timed at sampled lengths."""
    n_layers, d_model, n_heads, prompt_len, vocab = GEN_SHAPE
    model = make_model(Shape("gen", n_layers, d_model, n_heads, prompt_len, batch, vocab), device).eval()
    ks = np.unique(np.linspace(0, new_tokens - 1, samples).round().astype(int))
    times = []
    for k in ks:
        x = torch.randint(0, vocab, (batch, prompt_len + int(k)), device=device)
        model(x)  # warm up this length
        sync(device)
        start = time.perf_counter()
        nxt = model(x).logits[:, -1].argmax(-1, keepdim=True)
        torch.cat([x, nxt], dim=1)
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.interp(np.arange(new_tokens), ks, times).sum())


@dataclass
class GenResult:
    batch: int
    new_tokens: int
    cached_tps: float
    recompute_tps: float
    recompute_estimated: bool


def generation(
    device: torch.device, batches: list[int], lengths: list[int], repeats: int, cap_s: float
) -> list[GenResult]:
    """KV-cached ``generate`` vs full recompute, greedy, with bench_nn's 4-layer d128 model."""
    results = []
    for batch in batches:
        for n in lengths:
            cached = generation_time(False, device, n, batch, repeats)
            estimate = recompute_estimate(device, batch, n)
            if estimate <= cap_s:
                recompute, estimated = generation_time(True, device, n, batch, 1), False
            else:
                recompute, estimated = estimate, True
            results.append(GenResult(batch, n, batch * n / cached, batch * n / recompute, estimated))
            print(
                f"  generation b{batch} n{n}: cached {batch * n / cached:,.0f} tok/s, recompute "
                f"{batch * n / recompute:,.0f} tok/s{' (est.)' if estimated else ''}",
                flush=True,
            )
    return results


# --- report ----------------------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} torch threads"


def shape_of(case: Case) -> str:
    """``4 layers, d_model 128, 4 heads, 32 tokens, batch 64`` from a case's config."""
    c = case.config
    model = f"{getattr(c, 'num_layers', '?')} layers, d_model {getattr(c, 'dim_model', '?')}"
    return f"{model}, {getattr(c, 'num_heads', '?')} heads, {case.seq_len} tokens, batch {c.batch_size}"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def report(
    args: argparse.Namespace,
    device: torch.device,
    peak: float,
    peak_dtype: str,
    results: list[CaseResult],
    waits: list[CaseResult],
    prof: Profile | None,
    gens: list[GenResult],
    loads: list[str],
    note: str,
) -> str:
    cuda = device.type == "cuda"
    command = " ".join(["python -m bench.bench_train", *sys.argv[1:]])
    lines = [
        SECTION_START,
        f"## Training end to end: Trainer overhead, fraction of peak, data wait, generation (`bench/bench_train.py`)",
        "",
        f"- Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; machine: {machine()}",
        f"- Device: {device_name(device)}; torch {torch.__version__}; torch threads {torch.get_num_threads()}"
        + ("; bf16 autocast, fused AdamW" if cuda else "; fp32"),
        f"- Command: `{command}`",
        f"- Load average during the run: {', '.join(loads)}"
        + ("" if cuda else ". The machine is shared with other engineers' training runs: expect noise."),
        f"- {args.rounds} rounds per case, Trainer and bare runs alternating (ABBA); figures are medians over rounds.",
    ]
    if note:
        lines.append(f"- {note}")
    lines += [
        "",
        "### 1. Training throughput: real `Trainer.run()` vs a bare loop (same model, batches, optimizer)",
        "",
        "Steady-state window: from the Trainer's request for batch `warmup` to its request for batch"
        " `warmup + steps` (start-up, first/last evaluation and the final checkpoint are outside it)."
        " The bare loop: `zero_grad`, forward, loss, `backward`, `clip_grad_norm_`, `step`, scheduler step over"
        " batches already on the device. Trainer overhead: ratio of the window means (what a run pays);"
        " median-step overhead: ratio of the median single-step times (robust to bursts of load from other"
        " processes, blind to rare costs such as a log frame every 10 s). Per-round values in brackets, in %."
        " Goal: overhead < 5%.",
        "",
        "| case | batch x seq | warmup + steps | bare ms/step | Trainer ms/step | bare tokens/s | Trainer tokens/s"
        " | **Trainer overhead** (per round) | overhead of the median step (per round) | data wait in Trainer |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in results + waits:
        c = r.case
        bare, tr = r.median_step("bare"), r.median_step("trainer")
        cells = []
        for median in (False, True):
            values = r.overheads(median)
            rounds = ", ".join(f"{100 * o:+.1f}" for o in values)
            cells.append(f"**{100 * statistics.median(values):+.1f}%** ({rounds})")
        lines.append(
            f"| {c.name} | {c.config.batch_size} x {c.seq_len} | {c.warmup} + {c.steps} | {1e3 * bare:,.1f} | "
            f"{1e3 * tr:,.1f} | {r.tokens_per_step / bare:,.0f} | {r.tokens_per_step / tr:,.0f} | "
            f"{cells[0]} | {cells[1]} | {pct(r.wait_share())} |"
        )
    lines += [
        "",
        f"### 2. Fraction of peak ({peak_dtype} matmul peak, {PEAK_N[device.type]}^2 x {PEAK_N[device.type]}^2)",
        "",
        "Model FLOPs per token from `iluvattnshun.nn.flops_per_token` (6N + 12 L C T for training: the attention"
        " term counts the full T x T square, twice what causal attention computes). The peak is measured at the"
        f" start ({peak / 1e9:,.1f} GFLOP/s) and again in every round between its two runs, because on a shared"
        " machine it moves with the load; each round's throughput is divided by its own peak."
        + (" Goal on this CPU: >= 50% for the paper shape." if not cuda else ""),
        "",
        "| case | GFLOP/token | peak per round (GFLOP/s) | achieved bare / Trainer (GFLOP/s) | **bare % of peak**"
        " | Trainer % of peak |",
        "|---|---:|---|---|---:|---:|",
    ]
    for r in results:
        flops = r.gflop_per_token * 1e9 * r.tokens_per_step
        peaks = ", ".join(f"{p / 1e9:,.0f}" for p in r.peaks)
        achieved = f"{flops / r.median_step('bare') / 1e9:,.1f} / {flops / r.median_step('trainer') / 1e9:,.1f}"
        lines.append(
            f"| {r.case.name} | {r.gflop_per_token:.4f} | {peaks} | {achieved} | **{pct(r.peak_fraction('bare'))}** "
            f"| {pct(r.peak_fraction('trainer'))} |"
        )
    if prof is not None:
        unit = "device" if cuda else "CPU"
        lines += [
            "",
            f"#### Profile of the paper-shape bare step (`torch.profiler`, self {unit} time per step)",
            "",
            f"Profiled step: {prof.step_ms:,.0f} ms wall (with profiler overhead); sum of self times"
            f" {prof.total_ms:,.0f} ms. By category (name matching, approximate):",
            "",
            "| category | ms/step | share |",
            "|---|---:|---:|",
        ]
        lines += [f"| {label} | {ms:,.1f} | {pct(ms / prof.total_ms)} |" for label, ms in prof.categories]
        lines += ["", "Top ops:", "", "| op | self ms/step | share | calls/step |", "|---|---:|---:|---:|"]
        lines += [f"| `{name}` | {ms:,.1f} | {pct(ms / prof.total_ms)} | {calls:g} |" for name, ms, calls in prof.top]
    lines += [
        "",
        "### 4. Data wait: share of the Trainer's step time inside the loader's `next()`",
        "",
        f"var_rename `quick` preset ({shape_of(waits[0].case) if waits else 'not run'}) trained by `Trainer.run()`;"
        " baseline: the same steps in the bare loop with batches ready. Goal: < 3%.",
        "",
        "| mode | Trainer ms/step | wait ms/step | **wait share** | bare ms/step |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in waits:
        wait_ms = 1e3 * statistics.median(w.wait_s for w in r.trainer)
        lines.append(
            f"| {r.case.mode or r.case.name} | {1e3 * r.median_step('trainer'):,.1f} | {wait_ms:.2f} | "
            f"**{pct(r.wait_share())}** | {1e3 * r.median_step('bare'):,.1f} |"
        )
    n_layers, d_model, n_heads, prompt_len, _ = GEN_SHAPE
    lines += [
        "",
        f"### 5. Generation: new tokens/s, KV cache vs recompute ({n_layers} layers, d_model {d_model},"
        f" {n_heads} heads, prompt {prompt_len}, greedy, fp32)",
        "",
        f"Recompute runs estimated above {args.recompute_cap_s:g} s are integrated from forward passes timed at 6"
        " sampled lengths instead of run in full (marked est.).",
        "",
        "| batch | new tokens | KV cache tokens/s | recompute tokens/s | **speedup** |",
        "|---:|---:|---:|---:|---:|",
    ]
    for g in gens:
        est = " (est.)" if g.recompute_estimated else ""
        lines.append(
            f"| {g.batch} | {g.new_tokens:,} | {g.cached_tps:,.0f} | {g.recompute_tps:,.0f}{est} | "
            f"**{g.cached_tps / g.recompute_tps:.1f}x** |"
        )
    lines += ["", SECTION_END]
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path) -> None:
    """Replace this benchmark's section of RESULTS.md (or append it), atomically."""
    replace_section(text, SECTION_START, SECTION_END, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny windows, under a minute on CPU")
    parser.add_argument("--rounds", type=int, default=0, help="Trainer/bare rounds per case (0: 3, or 1 with --quick)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--paper_batch", type=int, default=0, help="paper-shape batch (0: 16 on CPU, 128 on CUDA)")
    parser.add_argument("--shakespeare_path", default="", help=f"Tiny Shakespeare text (default: ${SHAKESPEARE_ENV})")
    parser.add_argument(
        "--stream_workers", default="0", help="comma-separated DataLoader worker counts for streaming (e.g. 0,1)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (Trainer and bare loop)")
    parser.add_argument("--recompute_cap_s", type=float, default=0.0, help="longest recompute run in full (0: auto)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: train,profile,wait,gen")
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of bench/RESULTS.md")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.stream_workers = [int(w) for w in args.stream_workers.split(",") if w != ""]
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.recompute_cap_s = args.recompute_cap_s or (2.0 if args.quick else 20.0)
    args.skip = {s for s in args.skip.split(",") if s}
    unknown = args.skip - {"train", "profile", "wait", "gen"}
    if unknown:
        parser.error(f"--skip: unknown parts {sorted(unknown)} (choose from train, profile, wait, gen)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device={args.device}: CUDA is not available")
    return args


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; returns the markdown section (also printed, and written with --write)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    loads = [f"{os.getloadavg()[0]:.2f} (start)"]
    peak_dtype = "bfloat16" if cuda else "float32"
    peak_dtype_t = torch.bfloat16 if cuda else torch.float32

    def peak_fn() -> float:
        return matmul_peak_flops(device, peak_dtype_t, repeats=3)

    peak = peak_fn()
    print(f"{device_name(device)}: measured {peak_dtype} matmul peak {peak / 1e9:,.1f} GFLOP/s", flush=True)
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        loads.append(f"{os.getloadavg()[0]:.2f} (after {name})")
        print(f"[{name}: {now - clock:.0f} s]", flush=True)
        clock = now

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        workdir = Path(tmp)
        cases, wait_cases, note = build_cases(args, workdir)
        results = [] if "train" in args.skip else [measure_case(c, args.rounds, workdir, peak_fn) for c in cases]
        phase("throughput")
        prof = None if "profile" in args.skip else profile_case(cases[0], steps=1 if args.quick else 2)
        phase("profile")
        waits = [] if "wait" in args.skip else [measure_case(c, args.rounds, workdir) for c in wait_cases]
        phase("data wait")
    gens: list[GenResult] = []
    if "gen" not in args.skip:
        lengths = [100] if args.quick else [100, 1000]
        gens = generation(device, [1, 32], lengths, repeats=1 if args.quick else 3, cap_s=args.recompute_cap_s)
        phase("generation")
    text = report(args, device, peak, peak_dtype, results, waits, prof, gens, loads, note)
    print(text)
    if args.write:
        write_section(text, args.results)
    return text


if __name__ == "__main__":
    main()
