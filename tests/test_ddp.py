"""Data-parallel training with torchrun: 2 CPU processes over Gloo on the toy task (and 2 GPUs over NCCL)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from toy_task import ToyLoader, make_sequences

from iluvattnshun.checkpoint import read_checkpoint
from iluvattnshun.rundir import list_checkpoints

REPO = Path(__file__).resolve().parents[1]


ENV = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
TORCHRUN_TOY = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node=2",
    "-m",
    "tests.toy_task",
]
"""Two toy-task processes under torchrun; the test appends the task's flags."""


def test_toy_loader_shards_each_epoch_disjointly() -> None:
    data = torch.arange(100).unsqueeze(1).repeat(1, 3)  # row i holds i
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            loader = ToyLoader(data, 8, shuffle=True, seed=3, rank=rank, world_size=2)
            loader.set_epoch(epoch)
            rows = [int(r) for batch in loader for r in batch["tokens"][:, 0]]
            assert len(loader) == 6 and len(rows) == 48  # 100 // 16 * 16 rows, split evenly
            seen.append(set(rows))
        assert not seen[0] & seen[1]
    assert make_sequences(4, 5, 16, 0).dtype == torch.int64


def test_torchrun_two_processes_gloo(tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    cmd = [
        *TORCHRUN_TOY,
        "--device=cpu",
        f"--tensorboard_logdir={logdir}",
        "--run_name=ddp",
        "--num_epochs=-1",
        "--max_steps=12",
        "--batch_size=16",
        "--eval_every_n_samples=128",
        "--log_every_n_seconds=0",
        f"--param_dump_path={tmp_path}/params_{{rank}}.pt",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 1" not in proc.stdout and proc.stdout.count("dataset") == 1  # rank 1 prints nothing

    # one run directory, written by rank 0 only
    assert os.listdir(logdir) == ["run_1_ddp"]
    run_dir = logdir / "run_1_ddp"
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt_00000012.pt"]
    state = read_checkpoint(run_dir / "ckpt_00000012.pt")
    assert state.world_size == 2 and len(state.rng) == 2
    assert state.progress.samples_seen == 12 * 16 * 2  # global samples: both ranks' batches

    # losses logged once: one console frame and one TensorBoard point per step
    assert proc.stdout.count("TRAIN |") == 12
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 13))
    assert [e.step for e in acc.Scalars("val/loss")] == [0, 4, 8, 12]  # every 128 global samples
    assert [e.value for e in acc.Scalars("val/val_sequences")] == [64.0] * 4  # both shards counted

    # identical parameters on both ranks, equal to the checkpoint
    p0 = torch.load(tmp_path / "params_0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "params_1.pt", weights_only=True)
    for k in p0:
        assert torch.equal(p0[k], p1[k]), k
        assert torch.equal(p0[k], state.model[k]), k

    # resume with both ranks (each restores its own RNG stream and data position)
    resume = [*(a for a in cmd if not a.startswith("--max_steps=")), "--resume", "--max_steps=16"]
    proc = subprocess.run(resume, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and os.listdir(logdir) == ["run_1_ddp"]
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt_00000012.pt", "ckpt_00000016.pt"]
    p0 = torch.load(tmp_path / "params_0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "params_1.pt", weights_only=True)
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    assert not all(torch.equal(p0[k], state.model[k]) for k in p0)  # it trained further


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_torchrun_two_gpus_nccl(tmp_path: Path) -> None:
    cmd = [
        *TORCHRUN_TOY,
        "--device=cuda",
        "--precision=bf16",
        f"--tensorboard_logdir={tmp_path / 'logs'}",
        "--run_name=nccl",
        "--num_epochs=-1",
        "--max_steps=12",
        "--batch_size=16",
        f"--param_dump_path={tmp_path}/params_{{rank}}.pt",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = read_checkpoint(tmp_path / "logs" / "run_1_nccl" / "ckpt_00000012.pt")
    assert state.world_size == 2 and state.progress.samples_seen == 12 * 16 * 2
    p0 = torch.load(tmp_path / "params_0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "params_1.pt", weights_only=True)
    for k in p0:  # each rank on its own GPU, gradients all-reduced over NCCL: identical weights
        assert torch.equal(p0[k], p1[k]), k
        assert torch.equal(p0[k].cpu(), state.model[k].cpu()), k
