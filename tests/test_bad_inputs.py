"""Bad input, as a careless or hostile user gives it, run as real processes: every case stops before any work
with exit status 2 and one ``error: ...`` line naming the problem, and leaves no run directory or dataset behind.

The cases run in processes forked from zygotes that have imported the project (``tests/forked.py``), one of them
also as a plain ``python -m`` process."""

import concurrent.futures
import os
import queue
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from iluvattnshun.checkpoint import Checkpoint, Progress, write_checkpoint
from iluvattnshun.nn import MultilayerTransformer
from forked import Zygote, command_env, python_m, zygotes

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE_ENV = "ILUVATTNSHUN_SHAKESPEARE"


@dataclass
class Case:
    name: str
    args: Callable[[Path], list[str]]
    """The arguments, given the case's own directory (which may be prepared by ``prepare``)."""
    names: str
    """What the error line must name."""
    task: str = "var_rename"
    prepare: Callable[[Path], None] = field(default=lambda d: None)


def tiny(d: Path) -> list[str]:
    return [
        f"--tensorboard_logdir={d / 'logs'}",
        f"--dataset_path={d / 'data'}",
        "--train_size=256",
        "--test_size=32",
        "--num_layers=1",
        "--dim_model=16",
        "--num_heads=2",
        "--max_steps=2",
        "--device=cpu",
    ]


def shakespeare(d: Path) -> list[str]:
    return [f"--tensorboard_logdir={d / 'logs'}", f"--data_path={os.environ.get(SHAKESPEARE_ENV, 'missing.txt')}"]


def without(args: list[str], name: str) -> list[str]:
    return [a for a in args if not a.startswith(f"--{name}=")]


def write(relative: str, text: str) -> Callable[[Path], None]:
    def prepare(d: Path) -> None:
        (d / relative).parent.mkdir(parents=True, exist_ok=True)
        (d / relative).write_text(text)

    return prepare


def other_task_run(d: Path) -> None:
    """A run directory ``run_1_x`` holding a valid checkpoint of a dag run (another task, other model)."""
    (d / "logs" / "run_1_x").mkdir(parents=True)
    model = MultilayerTransformer(39, dim_model=32, num_heads=2, num_layers=1)
    classes = {"config": "examples.dag.task:DagConfig"}
    checkpoint = Checkpoint(model.state_dict(), {}, None, Progress(step=2), [], "", classes=classes)
    write_checkpoint(d / "logs" / "run_1_x" / "ckpt_00000002.pt", checkpoint)


def other_model_checkpoint(d: Path) -> None:
    model = MultilayerTransformer(39, dim_model=32, num_heads=2, num_layers=1)
    torch.save(model.state_dict(), d / "other.pt")  # a bare state dict


CASES = [
    Case("checkpoint dir is a file", lambda d: [*tiny(d), f"--save_model_path={d / 'f'}"], "save_model_path", prepare=write("f", "")),
    Case("checkpoint dir inside a file", lambda d: [*tiny(d), f"--save_model_path={d / 'f' / 'ckpts'}"], "save_model_path", prepare=write("f", "")),
    Case("checkpoint dir unwritable", lambda d: [*tiny(d), "--save_model_path=/proc/iluvattnshun/ckpts"], "save_model_path"),
    Case("log dir is a file", lambda d: [*tiny(d)[1:], f"--tensorboard_logdir={d / 'f'}"], "tensorboard_logdir", prepare=write("f", "")),
    Case("dataset dir is a file", lambda d: [*tiny(d)[:1], *tiny(d)[2:], f"--dataset_path={d / 'f'}"], "dataset_path", prepare=write("f", "")),
    Case("negative warmup factor", lambda d: [*tiny(d), "--warmup_start_factor=-3"], "warmup_start_factor"),
    Case("negative final lr factor", lambda d: [*tiny(d), "--min_lr_factor=-5", "--lr_decay=linear"], "min_lr_factor"),
    Case("negative weight decay", lambda d: [*tiny(d), "--weight_decay=-1"], "weight_decay"),
    Case("beta2 above 1", lambda d: [*tiny(d), "--beta2=1.5"], "beta2"),
    Case("dropout above 1", lambda d: [*tiny(d), "--dropout_mlp=2"], "dropout_mlp"),
    Case("negative workers", lambda d: [*tiny(d), "--num_workers=-1", "--streaming"], "num_workers"),
    Case("config is a directory", lambda d: [*tiny(d), f"--config={d}"], "--config"),
    Case("RoPE base 0", lambda d: [*tiny(d), "--rope_base=0"], "rope_base"),
    Case("infinite lr", lambda d: [*tiny(d), "--lr=inf"], "lr"),
    Case("resume without a checkpoint", lambda d: [*tiny(d), "--resume", "--run_name=x"], "holds no checkpoint", prepare=lambda d: (d / "logs" / "run_1_x").mkdir(parents=True)),
    Case("missing weights file", lambda d: [*tiny(d), f"--load_model_path={d / 'nope.pt'}"], "load_model_path"),
    Case("weights of another shape", lambda d: [*tiny(d), f"--load_model_path={d / 'other.pt'}"], "shape mismatch", prepare=other_model_checkpoint),
    Case("batch larger than the data", lambda d: [*tiny(d), "--batch_size=1000"], "batch_size"),
    Case("negative batch_tokens", lambda d: [*tiny(d), "--streaming", "--batch_tokens=-1"], "batch_tokens must be >= 0"),
    Case("batch_tokens on a cached dataset", lambda d: [*tiny(d), "--batch_tokens=256"], "batch_tokens needs --streaming"),
    Case("duplicate YAML key", lambda d: [*tiny(d), f"--config={d / 'c.yaml'}"], "duplicate key", prepare=write("c.yaml", "lr: 0.1\nlr: 0.2\n")),
    Case("dag with an impossible graph", lambda d: [*tiny(d), "--num_nodes=30"], "num_nodes", task="dag"),
    Case("var_eval with too many chains", lambda d: [*tiny(d), "--num_chains=26"], "num_chains", task="var_eval"),
    Case("NaN sample temperature", lambda d: [*shakespeare(d), "--sample_temperature=nan"], "sample_temperature", task="shakespeare"),
    Case("context longer than the text", lambda d: [*shakespeare(d), "--context_len=10000000"], "context_len", task="shakespeare"),
    Case("YAML alias bomb", lambda d: [*tiny(d), f"--config={d / 'c.yaml'}"], "aliases", prepare=write("c.yaml", "lr: [&a [1, 1, 1, 1, 1, 1, 1, 1], &b [*a, *a, *a, *a, *a, *a, *a, *a], &c [*b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c], &e [*d, *d, *d, *d, *d, *d, *d, *d], &f [*e, *e, *e, *e, *e, *e, *e, *e]]\n")),
    Case("binary config", lambda d: [*tiny(d), f"--config={d / 'c.yaml'}"], "c.yaml is not a UTF-8", prepare=lambda d: (d / "c.yaml").write_bytes(b"lr: 1\n\xff\xfe\x00")),
    Case("one field under two names", lambda d: [*tiny(d), "--lr=0.5", "--learning_rate=0.001"], "--lr and --learning_rate both set --lr"),
    Case("one field twice", lambda d: [*tiny(d), "--num_layers=2", "--num_layers=3"], "--num_layers is given twice"),
    Case("NaN gradient clip", lambda d: [*tiny(d), "--grad_norm_max=nan"], "grad_norm_max"),
    Case("absurd log precision", lambda d: [*tiny(d), "--log_fp=1000000000000"], "log_fp"),
    Case("run name too long for a file name", lambda d: [*tiny(d), "--run_name=" + "x" * 230], "run_name"),
    Case("a GPU that is not there", lambda d: [*tiny(d)[:-1], "--device=cuda:63"], "device"),
    Case("empty sample prompt", lambda d: [*shakespeare(d), "--sample_prompt="], "sample_prompt", task="shakespeare"),
    Case("qk_norm not a bool", lambda d: [*tiny(d), "--qk_norm=maybe"], "qk_norm"),
    Case("mixed layouts with too few renames", lambda d: [*tiny(d), "--mix_layouts", "--bind_first=false", "--num_chains=4", "--num_renames=3"], "num_renames"),
    Case("negative data seed", lambda d: [*tiny(d), "--data_seed=-1"], "data_seed"),
    Case("negative training seed", lambda d: [*tiny(d), "--seed=-1"], "seed must be"),
    Case("training seed past 64 bits", lambda d: [*tiny(d), "--seed=" + "9" * 30], "seed must be"),
    Case("streamed batch beyond memory", lambda d: [*tiny(d), "--streaming", "--batch_size=1000000000"], "batch_size: a training step on 1,000,000,000 sequences of 32 tokens needs at least"),
    Case("prompts beyond memory", lambda d: [*tiny(d), "--num_renames=1000000", "--batch_size=64"], "batch_size: a training step on 64 sequences of 4,000,000 tokens"),
    Case("model beyond memory", lambda d: [*without(tiny(d), "dim_model"), "--dim_model=1000000"], "dim_model: the model's parameters"),
    Case("model too deep for memory", lambda d: [*without(tiny(d), "num_layers"), "--num_layers=100000000"], "the model's parameters"),
    Case("cached split beyond memory", lambda d: [*without(tiny(d), "train_size"), "--train_size=100000000000"], "train_size: the cached train split"),
    Case("streamed run with a test split beyond memory", lambda d: [*without(tiny(d), "test_size"), "--streaming", "--test_size=100000000000"], "test_size: the cached test split"),
    Case("step's micro-batches beyond memory", lambda d: [*tiny(d), "--streaming", "--grad_accum_steps=1000000000"], "grad_accum_steps: an optimizer step holds its 1,000,000,000 micro-batches"),
    Case("shakespeare batch beyond memory", lambda d: [*shakespeare(d), "--batch_size=1000000000"], "batch_size: a training step on 1,000,000,000 sequences", task="shakespeare"),
    Case("text path is a directory", lambda d: [f"--tensorboard_logdir={d / 'logs'}", f"--data_path={d}"], "is a directory, not a text file", task="shakespeare"),
    Case("binary text file", lambda d: [f"--tensorboard_logdir={d / 'logs'}", f"--data_path={d / 'bin.txt'}"], "bin.txt is not UTF-8", task="shakespeare", prepare=lambda d: (d / "bin.txt").write_bytes(bytes(range(256)) * 20)),
]  # fmt: skip


def case_dir(case: Case, root: Path) -> Path:
    d = root / case.name.replace(" ", "_")
    d.mkdir()
    case.prepare(d)
    return d


def run_case(case: Case, root: Path, pool: queue.Queue[Zygote]) -> tuple[Case, Path, subprocess.CompletedProcess[str]]:
    d = case_dir(case, root)
    zygote = pool.get()
    try:
        return case, d, zygote.run(f"examples.{case.task}", case.args(d), d, command_env())
    finally:
        pool.put(zygote)


def plain_run(case: Case, root: Path) -> tuple[Case, Path, subprocess.CompletedProcess[str]]:
    d = case_dir(case, root)
    command = [sys.executable, "-m", f"examples.{case.task}", *case.args(d)]
    return case, d, subprocess.run(command, cwd=d, env=command_env(), capture_output=True, text=True, timeout=300)


def problem(case: Case, d: Path, proc: subprocess.CompletedProcess[str]) -> str | None:
    """What is wrong with how the process met the case's bad input, or None when it kept the promise."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("note:")]
    left = sorted(str(p.relative_to(d)) for p in d.glob("logs/run_*")) + (["data"] if (d / "data").exists() else [])
    if case.name.startswith("resume"):
        left.remove("logs/run_1_x")  # the run directory the case started from
    if proc.returncode != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or case.names not in lines[0]:
        return f"{case.name}: exit {proc.returncode}, stderr {proc.stderr[-600:]!r}"
    if left:
        return f"{case.name}: left {left} behind"
    return None


def test_every_bad_input_stops_before_work_with_one_line(tmp_path: Path) -> None:
    if not Path(os.environ.get(SHAKESPEARE_ENV, "")).is_file():
        pytest.skip(f"set {SHAKESPEARE_ENV} to a Tiny Shakespeare input.txt (.ci/run does)")
    (tmp_path / "forked").mkdir()
    with zygotes(2) as pool, concurrent.futures.ThreadPoolExecutor(max_workers=2) as threads:
        results = list(threads.map(lambda c: run_case(c, tmp_path / "forked", pool), CASES))
    results.append(plain_run(CASES[0], tmp_path))
    problems = [p for p in (problem(*result) for result in results) if p is not None]
    assert not problems, "\n".join(problems)


ROUND_2 = [
    Case("NaN log interval", lambda d: [*tiny(d), "--log_every_n_seconds=nan"], "log_every_n_seconds"),
    Case("NaN save interval", lambda d: [*tiny(d), "--save_every_n_seconds=nan"], "save_every_n_seconds"),
    Case("newline in the run name", lambda d: [*tiny(d), "--run_name=a\nb"], "run_name"),
    Case("escape code in the run name", lambda d: [*tiny(d), "--run_name=\x1b[2Jx"], "run_name"),
    Case("weights path is a directory", lambda d: [*tiny(d), f"--load_model_path={d}"], "is not a file"),
    Case("resume another task's run", lambda d: [*tiny(d), "--resume", "--run_name=x"], "is a checkpoint of another task (config examples.dag.task:DagConfig, this run's is examples.var_rename.task:VarRenameConfig)", prepare=other_task_run),
]  # fmt: skip


@pytest.mark.parametrize("case", ROUND_2, ids=lambda c: c.name.replace(" ", "_"))
def test_bad_input_round_2(case: Case, tmp_path: Path) -> None:
    """Values found by the second hostile pass: each stops before any work with one line."""
    d = case_dir(case, tmp_path)
    assert problem(case, d, python_m(f"examples.{case.task}", case.args(d), d)) is None
