"""The training loop on the toy task: learning, run directory, TensorBoard, checkpoints, resume, faults."""

import dataclasses
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from devices import devices, needs_cuda
from toy_task import ToyConfig, ToyTrainer

from iluvattnshun.checkpoint import read_checkpoint, write_checkpoint
from iluvattnshun.rundir import list_checkpoints
from iluvattnshun.config import config_from_yaml_string, load_config_from_yaml
from iluvattnshun import load_run, rundir
from iluvattnshun.trainer import NonFiniteLossError

REPO = Path(__file__).resolve().parents[1]


def make_config(tmp_path: Path, **overrides: Any) -> ToyConfig:
    base: dict[str, Any] = dict(
        tensorboard_logdir=str(tmp_path / "logs"),
        num_epochs=-1,
        max_steps=10,
        log_every_n_seconds=3600,
        save_every_n_seconds=0,
        eval_every_n_samples=96,
        device="cpu",
    )
    base.update(overrides)
    return ToyConfig(**base)


def train(config: ToyConfig) -> ToyTrainer:
    trainer = ToyTrainer(config)
    trainer.run()
    return trainer


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def scalars(run_dir: str | Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar tag over all event files of a run directory, ordered by step.

    Files are read one by one: a directory reader orders them by name, which within one second and one
    process (several runs in a test) need not be their creation order.
    """
    points = []
    for path in Path(run_dir).glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            points += [(e.step, e.value) for e in acc.Scalars(tag)]
    return sorted(points)


def test_init_has_no_side_effects(tmp_path: Path) -> None:
    trainer = ToyTrainer(make_config(tmp_path))
    assert not (tmp_path / "logs").exists()
    assert trainer.run_dir is None and trainer.world_size == 1 and trainer.is_main
    with pytest.raises(ValueError, match="batch_size"):
        ToyTrainer(make_config(tmp_path, batch_size=0))


def test_loss_falls_run_dir_tensorboard_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path, max_steps=40, eval_every_n_samples=640, run_name="learn", log_every_n_seconds=0)
    trainer = train(config)
    run_dir = Path(trainer.run_dir or "")
    assert run_dir == tmp_path / "logs" / "run_1_learn"

    # loss falls and the task is learnt
    val_loss = scalars(run_dir, "val/loss")
    assert [s for s, _ in val_loss] == [0, 20, 40]
    assert val_loss[-1][1] < 0.5 * val_loss[0][1]
    assert trainer.last_val_metrics["accuracy"] > 0.8

    # the run directory holds all its files
    names = sorted(p.name for p in run_dir.iterdir())
    assert "run_1_learn.yaml" in names and "run_1_learn.py" in names and "ckpt_00000040.pt" in names
    assert any(n.startswith("events.out.tfevents") for n in names)
    # the run records what ran: compile and precision resolved from auto (the toy task's shape is unknown: plain)
    ran = dataclasses.replace(config, compile=False, precision="fp32")
    assert load_config_from_yaml(str(run_dir / "run_1_learn.yaml"), ToyConfig) == ran
    assert (run_dir / "run_1_learn.py").read_text() == (REPO / "tests" / "toy_task.py").read_text()
    # and where it trained: the kernels that decide its numbers
    (start,) = json.loads((run_dir / "machine.json").read_text())
    assert start["step"] == 0 and start["device"] == "cpu" and start["torch"] == torch.__version__
    assert start["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and start["threads"] >= 1

    # TensorBoard tags
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/tokens_per_s"}
    expected |= {"train/eta_min", "train/elapsed_min", "val/loss", "val/accuracy", "val/acc_per_position/0"}
    assert expected <= tags, expected - tags
    assert [s for s, _ in scalars(run_dir, "train/loss")] == list(range(1, 41))  # log_every_n_seconds=0
    assert "val/sample/text_summary" in acc.Tags()["tensors"]

    # console: plain text (captured, not a TTY), throughput and ETA shown
    out = capsys.readouterr().out
    assert "\x1b[" not in out and "tokens_per_s" in out and "eta: " in out

    # checkpoint contents, loadable with weights_only
    state = read_checkpoint(run_dir / "ckpt_00000040.pt")
    progress = state.progress
    assert progress.step == 40 and progress.samples_seen == 40 * 32 and progress.tokens_seen == 40 * 32 * 12
    assert (progress.epoch, progress.batch_idx) == (4, 8)
    assert state.classes == {"config": "toy_task:ToyConfig", "trainer": "toy_task:ToyTrainer"}
    assert state.scheduler is not None and len(state.rng) == 1
    assert set(state.rng[0]) == {"python", "numpy", "torch", "cuda"}
    assert "lr: 0.003" in state.config
    assert_same_state(state.model, trainer.model.state_dict())


def test_load_run_leaves_the_callers_random_streams_alone(tmp_path: Path) -> None:
    trainer = train(make_config(tmp_path, max_steps=2))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    loaded = load_run(trainer.run_dir or "")
    assert torch.equal(torch.rand(3), expected)
    assert_same_state(loaded.model.state_dict(), trainer.model.state_dict())  # the saved weights, not fresh draws


def test_load_run_checks_recorded_model_arguments_before_building(tmp_path: Path) -> None:
    """Recorded model arguments are data: unknown or ill-typed ones, or sizes the weights do not have (a model of
    terabytes), are refused in one line naming the checkpoint, before any memory is allocated for the model."""
    trainer = train(make_config(tmp_path, max_steps=2))
    (ckpt,) = list_checkpoints(trainer.run_dir or "")
    state = read_checkpoint(ckpt)
    assert state.model_kwargs is not None
    cases = {
        "build no model .*unexpected keyword argument 'evil'": {"evil": 1},
        "build no model": {"num_layers": "2"},
        "do not describe its weights: shape mismatch": {"dim_model": 2**20, "num_layers": 2**10},
    }
    for expected, patch in cases.items():
        write_checkpoint(ckpt, dataclasses.replace(state, model_kwargs={**state.model_kwargs, **patch}))
        with pytest.raises(ValueError, match=expected):
            load_run(trainer.run_dir or "")


class SlowLoaderTrainer(ToyTrainer):
    """The toy task with a training loader that takes 50 ms to produce each batch."""

    def get_train_dataloader(self) -> Any:
        inner = super().get_train_dataloader()

        class Slow:
            def __iter__(self) -> Any:
                for batch in inner:
                    time.sleep(0.05)
                    yield batch

        return Slow()


def test_the_share_of_time_waiting_for_data_is_logged(tmp_path: Path) -> None:
    shares = {}
    for name, cls in (("fast", ToyTrainer), ("slow", SlowLoaderTrainer)):
        trainer = cls(make_config(tmp_path / name, max_steps=8, log_every_n_seconds=0, eval_every_n_samples=None))
        trainer.run()
        values = [v for _, v in scalars(trainer.run_dir or "", "train/data_wait")]
        assert len(values) == 8 and all(0 <= v <= 1 for v in values)
        shares[name] = sorted(values)[4]  # the median: the first window also holds the first evaluation
    # a toy step takes a few ms on the CPU: waiting 50 ms per batch is most of each step
    assert shares["slow"] > 0.3 and shares["slow"] > 2 * shares["fast"]


@pytest.mark.parametrize("loader_skip, grad_accum_steps", [(True, 1), (False, 2)])
def test_resume_continues_the_same_trajectory(tmp_path: Path, loader_skip: bool, grad_accum_steps: int) -> None:
    """11 steps + resume + 11 more == 22 straight (exactly), with the split in the middle of an epoch."""
    kw = dict(loader_skip=loader_skip, grad_accum_steps=grad_accum_steps)
    first = train(make_config(tmp_path, max_steps=11, run_name="split", **kw))
    state = read_checkpoint(Path(first.run_dir or "") / "ckpt_00000011.pt")
    assert state.progress.batch_idx not in (0, 8)  # 8 micro-batches per epoch: the split is mid-epoch

    resumed = train(make_config(tmp_path, max_steps=22, resume=True, run_name=first.run_dir, **kw))
    assert resumed.run_dir == first.run_dir
    straight = train(make_config(tmp_path, max_steps=22, run_name="straight", **kw))

    assert resumed.progress.step == straight.progress.step == 22
    assert resumed.progress.samples_seen == straight.progress.samples_seen
    assert (resumed.progress.epoch, resumed.progress.batch_idx) == (
        straight.progress.epoch,
        straight.progress.batch_idx,
    )
    assert_same_state(resumed.model.state_dict(), straight.model.state_dict())
    opt_a, opt_b = resumed.optimizer.state_dict()["state"], straight.optimizer.state_dict()["state"]
    for i in opt_a:
        assert_same_state(opt_a[i], opt_b[i])
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    # the recorded config reproduces the run (no "resume" of a path), with the budget of the resumed session
    recorded = load_config_from_yaml(str(Path(first.run_dir or "") / "run_1_split.yaml"), ToyConfig)
    assert recorded == make_config(tmp_path, max_steps=22, run_name="split", compile=False, precision="fp32", **kw)
    ckpt_config = read_checkpoint(Path(first.run_dir or "") / "ckpt_00000022.pt").config
    assert config_from_yaml_string(ckpt_config, ToyConfig) == recorded
    # both checkpoints in the resumed run directory, the TensorBoard curve continues at step 12
    assert [p.name for p in list_checkpoints(first.run_dir or "")] == ["ckpt_00000011.pt", "ckpt_00000022.pt"]
    val_steps = [s for s, _ in scalars(first.run_dir or "", "val/loss")]
    assert val_steps == [0, 3, 6, 9, 11, 12, 15, 18, 21, 22] if grad_accum_steps == 1 else val_steps[-1] == 22
    # each start says where it trained, the resumed one from step 11
    starts = json.loads((Path(first.run_dir or "") / "machine.json").read_text())
    assert [s["step"] for s in starts] == [0, 11] and all(s["torch"] == torch.__version__ for s in starts)


def test_resume_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no run directory 'nope'"):
        train(make_config(tmp_path, resume=True, run_name="nope"))
    empty = rundir.allocate(tmp_path / "logs", "empty")
    with pytest.raises(ValueError, match="holds no checkpoint"):
        train(make_config(tmp_path, resume=True, run_name=empty.base))


def test_resume_refuses_a_run_whose_config_file_cannot_be_written(tmp_path: Path) -> None:
    first = train(make_config(tmp_path, max_steps=2, run_name="y"))
    run = rundir.RunDir(Path(first.run_dir or ""))
    run.config_path.unlink()
    run.config_path.mkdir()  # the resumed run rewrites its YAML here
    before = sorted(p.name for p in run.path.iterdir())
    with pytest.raises(ValueError, match=r"resume: .*run_1_y\.yaml. is not a file"):
        train(make_config(tmp_path, max_steps=4, resume=True, run_name="y"))
    assert sorted(p.name for p in run.path.iterdir()) == before  # refused before any work: no new events file


def test_resume_picks_the_newest_loadable_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = train(make_config(tmp_path, max_steps=4, save_every_n_seconds=1e-6, run_name="a"))
    rundir.allocate(tmp_path / "logs", "failed_start")  # newer, but holds no checkpoint
    newest = Path(first.run_dir or "") / "ckpt_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    capsys.readouterr()
    resumed = train(make_config(tmp_path, max_steps=6, resume=True))  # empty run_name: the newest resumable run
    out = capsys.readouterr().out
    assert (
        resumed.run_dir == first.run_dir and "resume: falling back" in out and "ckpt_00000004.pt is unreadable" in out
    )
    assert "resumed from" in out and "ckpt_00000003.pt at step 3" in out and resumed.progress.step == 6


@pytest.mark.parametrize(
    "patch", [{"rng": 5}, {"progress": [1, 2]}, {"world_size": "2"}, {"val_metrics": [1]}, {"model": [1]}, {"run": 7}]
)
def test_resume_falls_back_past_a_malformed_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], patch: dict[str, Any]
) -> None:
    """A checkpoint that unpickles safely but holds an entry of the wrong type is unreadable: skipped, not a crash."""
    first = train(make_config(tmp_path, max_steps=4, save_every_n_seconds=1e-6, run_name="m"))
    newest = Path(first.run_dir or "") / "ckpt_00000004.pt"
    torch.save({**torch.load(newest, weights_only=True), **patch}, newest)
    capsys.readouterr()
    resumed = train(make_config(tmp_path, max_steps=6, resume=True, run_name="m"))
    out = capsys.readouterr().out
    assert "ckpt_00000004.pt is unreadable" in out and f"({next(iter(patch))} is of type" in out
    assert "ckpt_00000003.pt at step 3" in out and resumed.progress.step == 6


def test_resume_falls_back_past_a_checkpoint_of_another_model_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = train(make_config(tmp_path, max_steps=4, save_every_n_seconds=1e-6, run_name="a"))
    other = train(make_config(tmp_path, max_steps=4, save_every_n_seconds=1e-6, run_name="wide", d_model=48))
    newest = Path(first.run_dir or "") / "ckpt_00000004.pt"
    newest.write_bytes((Path(other.run_dir or "") / "ckpt_00000004.pt").read_bytes())  # valid, of another shape
    capsys.readouterr()
    resumed = train(make_config(tmp_path, max_steps=6, resume=True, run_name="a"))
    out = capsys.readouterr().out
    assert "resume: falling back" in out and "ckpt_00000004.pt does not fit the model (shape mismatch" in out
    assert "ckpt_00000003.pt at step 3" in out and resumed.progress.step == 6
    # no checkpoint of the run's shape left: refused as before, naming the mismatch
    for path in list_checkpoints(first.run_dir or ""):
        path.write_bytes(newest.read_bytes())
    with pytest.raises(ValueError, match="does not fit the model.*nor do the 4 older checkpoint.*shape mismatch"):
        train(make_config(tmp_path, max_steps=8, resume=True, run_name="a"))


def test_resume_refuses_other_data_and_a_second_process(tmp_path: Path) -> None:
    first = train(make_config(tmp_path, max_steps=2, run_name="d"))
    with pytest.raises(ValueError, match="other data.*data_seed: 1234 -> 7"):
        train(make_config(tmp_path, max_steps=4, resume=True, run_name="d", data_seed=7))
    with rundir.RunDir(Path(first.run_dir or "")).lock():  # as if another process were training in it
        with pytest.raises(ValueError, match="in use by another process"):
            train(make_config(tmp_path, max_steps=4, resume=True, run_name="d"))


def test_load_model_path_and_shape_mismatch(tmp_path: Path) -> None:
    first = train(make_config(tmp_path, max_steps=3))
    ckpt = str(Path(first.run_dir or "") / "ckpt_00000003.pt")

    class Probe(ToyTrainer):
        def on_run_start(self) -> None:
            self.initial = {k: v.clone() for k, v in self.model.state_dict().items()}

    probe = Probe(make_config(tmp_path, max_steps=1, load_model_path=ckpt))
    probe.run()
    assert_same_state(probe.initial, first.model.state_dict())
    assert probe.progress.step == 1 and probe.run_dir != first.run_dir  # a new run

    with pytest.raises(ValueError) as exc:
        train(make_config(tmp_path, max_steps=1, load_model_path=ckpt, d_model=48, n_layers=3))
    message = str(exc.value)
    assert "token_embedding.weight: " in message and "(16, 32) vs model (16, 48)" in message
    assert "missing from" in message and "layers.2." in message


class NaNAt(ToyTrainer):
    """Returns a NaN loss at one training step."""

    nan_step = 5

    def get_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        loss, preds = super().get_loss(model, batch)
        if model.training and self.progress.step + 1 == self.nan_step:
            loss = loss * float("nan")
        return loss, preds


def test_nonfinite_loss_stops_after_saving_last_good_state(tmp_path: Path) -> None:
    trainer = NaNAt(make_config(tmp_path, max_steps=10))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\).*step 5.*ckpt_00000004.pt"):
        trainer.run()
    state = read_checkpoint(Path(trainer.run_dir or "") / "ckpt_00000004.pt")
    assert state.step == 4
    assert all(torch.isfinite(v).all() for v in state.model.values())


def test_nonfinite_loss_skipped_when_configured(tmp_path: Path) -> None:
    trainer = NaNAt(make_config(tmp_path, max_steps=10, skip_nonfinite=True, log_every_n_seconds=0))
    trainer.run()
    assert trainer.progress.step == 10 and trainer.progress.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert scalars(trainer.run_dir or "", "train/skipped_steps")[-1] == (10, 1.0)


class SignalAt(ToyTrainer):
    """Sends itself a signal during one training step."""

    signal_step = 4
    signum = signal.SIGTERM

    def get_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if model.training and self.progress.step + 1 == self.signal_step:
            os.kill(os.getpid(), self.signum)
        return super().get_loss(model, batch)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_saves_and_stops_cleanly(tmp_path: Path, signum: int) -> None:
    # As a terminal leaves the signal: a test process started in the background inherits SIGINT ignored, and an
    # ignored signal stays ignored (test_a_run_under_nohup_ignores_a_hangup).
    as_terminal = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
    previous = signal.signal(signum, as_terminal)
    try:
        trainer = SignalAt(make_config(tmp_path, max_steps=50))
        trainer.signum = signal.Signals(signum)
        trainer.run()  # returns normally; the command line then exits with 128 + signum
        assert trainer.progress.step == 4 and trainer.stopped_by_signal == signum
        assert [p.name for p in list_checkpoints(trainer.run_dir or "")] == ["ckpt_00000004.pt"]
        assert signal.getsignal(signum) == as_terminal  # handlers restored
    finally:
        signal.signal(signum, previous)


def test_a_run_under_nohup_ignores_a_hangup(tmp_path: Path) -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
    try:
        trainer = SignalAt(make_config(tmp_path, max_steps=6))
        trainer.signum = signal.SIGHUP
        trainer.run()
        assert trainer.stopped_by_signal is None and trainer.progress.step == 6
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


class DoubleCtrlC(ToyTrainer):
    """Presses Ctrl-C twice in quick succession during one training step."""

    def get_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if model.training and self.progress.step + 1 == 4:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return super().get_loss(model, batch)


def test_a_quick_second_ctrl_c_still_saves(tmp_path: Path) -> None:
    # Two presses in a row are one request to stop (the second used to abort and lose the steps since the last
    # checkpoint); only a press a few seconds later aborts a step that hangs.
    trainer = DoubleCtrlC(make_config(tmp_path, max_steps=50))
    trainer.run()
    assert trainer.stopped_by_signal == signal.SIGINT and trainer.progress.step == 4
    assert [p.name for p in list_checkpoints(trainer.run_dir or "")] == ["ckpt_00000004.pt"]


class SignalInEval(ToyTrainer):
    """Sends itself SIGTERM during the first batch of the evaluation at step ``eval_step``."""

    eval_step = 0

    def val_metrics(self, model: nn.Module, batch: Any, preds: Any) -> dict[str, Any]:
        if self.progress.step == self.eval_step and self._signals.received is None:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().val_metrics(model, batch, preds)


@pytest.mark.parametrize("eval_step", [0, 6])
def test_a_signal_during_the_first_or_final_evaluation_is_not_swallowed(tmp_path: Path, eval_step: int) -> None:
    # The evaluation at step 0 comes before any step, the one at step 6 after the last (max_steps): a signal in
    # either stops the run as a signal does (saved, stopped_by_signal set: exit 143), not as a finished run.
    trainer = SignalInEval(make_config(tmp_path, max_steps=6, eval_every_n_samples=None))
    trainer.eval_step = eval_step
    trainer.run()
    assert trainer.stopped_by_signal == signal.SIGTERM and trainer.progress.step == eval_step
    assert [p.name for p in list_checkpoints(trainer.run_dir or "")] == [f"ckpt_0000000{eval_step}.pt"]


def test_a_signal_during_the_dataset_build_exits_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        data = tmp_path / f"data_{signum.name}"
        args = [f"--tensorboard_logdir={tmp_path / 'logs'}", f"--dataset_path={data}", "--train_size=3000000"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "examples.var_rename", *args],
            env=env,
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 120
        while not data.exists() and time.time() < deadline:  # the build has begun
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.strip() and "%" not in line and "note:" not in line]
        assert proc.returncode == code, err[-2000:]
        assert lines[-1].startswith(f"error: stopped by {signum.name} before training started"), err[-2000:]
        assert "Traceback" not in err


def test_ctrl_c_on_the_command_line_saves_and_exits_130(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    args = [
        f"--tensorboard_logdir={tmp_path / 'logs'}",
        f"--dataset_path={tmp_path / 'data'}",
        "--train_size=256",
        "--test_size=32",
        "--dim_model=16",
        "--max_steps=1000000",
        "--log_every_n_seconds=0",
        "--run_name=c",
    ]
    cmd = [sys.executable, "-m", "examples.var_rename", *args]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    for line in proc.stdout:  # training once the first TRAIN frame is printed
        if line.startswith(b"TRAIN"):
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)  # drain the pipes while it saves and exits
    assert proc.returncode == 130
    assert list_checkpoints(tmp_path / "logs" / "run_1_c")


USER_SCRIPT = """
import sys
from toy_task import ToyConfig, ToyTrainer

if __name__ == "__main__":
    if "--use-main" in sys.argv:
        sys.argv.remove("--use-main")
        ToyTrainer.main()
    else:
        ToyTrainer(ToyConfig(max_steps=2, tensorboard_logdir="logs")).run()
"""


def test_a_user_scripts_flags_are_never_silently_ignored(tmp_path: Path) -> None:
    script = tmp_path / "my_task.py"
    script.write_text(USER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, str(script), *args]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    ignored = run("--lr=0.5")
    assert ignored.returncode != 0 and "has --lr=0.5, but this config was not parsed from it" in ignored.stderr
    assert "ToyTrainer.main()" in ignored.stderr and not (tmp_path / "logs").exists()
    parsed = run("--use-main", "--lr=0.5", "--max_steps=2", "--tensorboard_logdir=logs", "--run_name=m")
    assert parsed.returncode == 0, parsed.stderr
    assert "lr: 0.5" in (tmp_path / "logs" / "run_1_m" / "run_1_m.yaml").read_text()
    helped = run("--use-main", "--help")
    assert helped.returncode == 0 and "--vocab_size" in helped.stdout


def test_budgets(tmp_path: Path) -> None:
    epochs = train(make_config(tmp_path, num_epochs=2, max_steps=None))
    assert epochs.progress.step == 16 and epochs.progress.epoch == 2
    timed = train(make_config(tmp_path, max_steps=None, max_minutes=0.3 / 60, step_sleep=0.02))
    assert 1 <= timed.progress.step < 50
    assert 0.3 <= timed.progress.train_time_s < 30
    state = read_checkpoint(list_checkpoints(timed.run_dir or "")[-1])
    assert state.progress.train_time_s >= 0.3


def test_overwrite_existing_checkpoints_keeps_only_the_newest(tmp_path: Path) -> None:
    kept = train(make_config(tmp_path, max_steps=6, save_every_n_seconds=1e-6, overwrite_existing_checkpoints=True))
    assert [p.name for p in list_checkpoints(kept.run_dir or "")] == ["ckpt_00000006.pt"]
    every = train(make_config(tmp_path, max_steps=3, save_every_n_seconds=1e-6))
    assert len(list_checkpoints(every.run_dir or "")) == 3
    last3 = train(make_config(tmp_path, max_steps=7, save_every_n_seconds=1e-6, keep_last_n=3))
    assert [p.name for p in list_checkpoints(last3.run_dir or "")] == [f"ckpt_0000000{s}.pt" for s in (5, 6, 7)]
    with pytest.raises(ValueError, match="keep_last_n"):
        make_config(tmp_path, keep_last_n=0)


def test_retention_after_a_fallback_resume_keeps_the_good_checkpoints(tmp_path: Path) -> None:
    first = train(make_config(tmp_path, max_steps=3, run_name="k"))
    run_dir = Path(first.run_dir or "")
    garbage = run_dir / "ckpt_00000099.pt"
    garbage.write_bytes(b"not a checkpoint")  # the newest file by name, and unreadable: resume falls back to 3
    train(make_config(tmp_path, max_steps=6, run_name="k", resume=True, keep_last_n=1, save_every_n_seconds=1e-6))
    names = [p.name for p in list_checkpoints(run_dir)]
    # The garbage file is neither kept in place of a good checkpoint nor deleted; the one resumed from stays.
    assert names == ["ckpt_00000003.pt", "ckpt_00000006.pt", "ckpt_00000099.pt"], names
    again = train(make_config(tmp_path, max_steps=8, run_name="k", resume=True, keep_last_n=1))
    assert again.progress.step == 8
    assert [p.name for p in list_checkpoints(run_dir)] == ["ckpt_00000006.pt", "ckpt_00000008.pt", garbage.name]


def test_a_checkpoint_directory_belongs_to_one_run(tmp_path: Path) -> None:
    shared = str(tmp_path / "ckpts")
    a = train(make_config(tmp_path, max_steps=3, run_name="A", save_model_path=shared))
    with pytest.raises(ValueError, match=f"save_model_path: .*holds the checkpoints of the run {a.run_dir}"):
        train(make_config(tmp_path, max_steps=3, run_name="B", save_model_path=shared))
    assert [r.base for r in rundir.list_runs(tmp_path / "logs")] == [Path(a.run_dir or "").name]
    resumed = train(make_config(tmp_path, max_steps=5, run_name="A", resume=True, save_model_path=shared))
    assert resumed.run_dir == a.run_dir and resumed.progress.step == 5
    assert "run_name: A" in (Path(a.run_dir or "") / "run_1_A.yaml").read_text()
    # Another run cannot resume from A's directory either: it names the owner.
    rundir.allocate(tmp_path / "logs", "C")
    with pytest.raises(ValueError, match="holds the checkpoints of the run"):
        train(make_config(tmp_path, max_steps=6, run_name="C", resume=True, save_model_path=shared))


def test_val_metrics_weighted_by_batch_size(tmp_path: Path) -> None:
    # 40 validation sequences in batches of 32 and 8
    trainer = train(make_config(tmp_path, max_steps=2, val_size=40, dropout=0.0))
    model = trainer.model.eval()
    tokens = trainer.val_data
    with torch.no_grad():
        preds = model(tokens[:, :-1])[0].argmax(-1)
    correct = (preds == tokens[:, 1:]).float()
    metrics = trainer.last_val_metrics
    assert metrics["accuracy"] == pytest.approx(float(correct[:, 1:].mean()), abs=1e-6)
    assert metrics["acc_per_position"]["2"] == pytest.approx(float(correct[:, 2].mean()), abs=1e-6)
    assert isinstance(metrics["sample"], str) and metrics["val_sequences"] == 40


def test_kill9_mid_run_then_resume(tmp_path: Path) -> None:
    """SIGKILL a real training process; resuming continues from the newest checkpoint, which is intact."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    logdir = tmp_path / "logs"
    common = [f"--tensorboard_logdir={logdir}", "--num_epochs=-1", "--device=cpu", "--log_every_n_seconds=1"]
    cmd = [sys.executable, "-m", "tests.toy_task", *common, "--run_name=k", "--max_steps=100000"]
    proc = subprocess.Popen(
        [*cmd, "--save_every_n_seconds=0.2", "--step_sleep=0.005"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run_dir = logdir / "run_1_k"
    deadline = time.time() + 60
    try:
        while len(list_checkpoints(run_dir)) < 3:
            assert proc.poll() is None, "training process exited early"
            assert time.time() < deadline, "no checkpoints appeared"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    ckpts = list_checkpoints(run_dir)
    last_step = int(re.findall(r"\d+", ckpts[-1].name)[0])
    for ckpt in ckpts:  # every checkpoint left behind is complete
        assert read_checkpoint(ckpt).step == int(re.findall(r"\d+", ckpt.name)[0])

    target = last_step + 5
    resumed = subprocess.run(
        [sys.executable, "-m", "tests.toy_task", *common, "--resume", "--run_name=k", f"--max_steps={target}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {ckpts[-1]} at step {last_step:,}" in resumed.stdout  # lost only unsaved work
    assert read_checkpoint(run_dir / f"ckpt_{target:08d}.pt").step == target
    assert not [p for p in os.listdir(run_dir) if p.endswith(".tmp")]


def test_bf16_autocast_on_cpu_and_auto_speed_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fp32 = train(make_config(tmp_path, max_steps=3, dropout=0.0))
    auto = capsys.readouterr().out
    assert "speed: compile=False, precision=fp32" in auto  # auto, for a model whose shape the trainer cannot see
    bf16 = train(make_config(tmp_path, max_steps=3, dropout=0.0, precision="bf16", compile=False))
    assert "speed:" not in capsys.readouterr().out  # nothing left to choose: no notice
    a, b = fp32.model.state_dict(), bf16.model.state_dict()
    differences = [float((a[k] - b[k]).abs().max()) for k in a]
    assert 0 < max(differences) < 0.05  # bf16 forward passes: close to fp32, not equal


@pytest.mark.slow
def test_compile_on_cpu(tmp_path: Path) -> None:
    eager = train(make_config(tmp_path, max_steps=3, dropout=0.0))
    compiled = train(make_config(tmp_path, max_steps=3, dropout=0.0, compile=True))
    for k, v in eager.model.state_dict().items():
        torch.testing.assert_close(compiled.model.state_dict()[k], v, rtol=1e-4, atol=1e-5)
    state = read_checkpoint(list_checkpoints(compiled.run_dir or "")[-1])
    assert not any(k.startswith("_orig_mod.") for k in state.model)  # plain module names


@pytest.mark.parametrize("device", devices(pytest.mark.slow))  # on the CPU, compiling takes a minute
def test_bf16_compile_learns_and_resumes(tmp_path: Path, device: str) -> None:
    kw: dict[str, Any] = dict(device=device, precision="bf16", compile=True, eval_every_n_samples=640)
    first = train(make_config(tmp_path, max_steps=40, run_name="gpu", **kw))
    val_loss = scalars(first.run_dir or "", "val/loss")
    assert val_loss[-1][1] < 0.5 * val_loss[0][1]
    assert next(first.model.parameters()).device.type == device
    state = read_checkpoint(Path(first.run_dir or "") / "ckpt_00000040.pt")
    assert len(state.rng[0]["cuda"]) >= (1 if device == "cuda" else 0)
    resumed = train(make_config(tmp_path, max_steps=50, resume=True, run_name=first.run_dir, **kw))
    assert resumed.progress.step == 50
    assert read_checkpoint(Path(first.run_dir or "") / "ckpt_00000050.pt").step == 50


@pytest.mark.parametrize("device", devices())
def test_resume_matches_straight_run_on_each_device(tmp_path: Path, device: str) -> None:
    first = train(make_config(tmp_path, max_steps=11, device=device, run_name="split"))
    resumed = train(make_config(tmp_path, max_steps=22, device=device, resume=True, run_name=first.run_dir))
    straight = train(make_config(tmp_path, max_steps=22, device=device, run_name="straight"))
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@needs_cuda
def test_cuda_nonfinite_detected_without_per_step_sync(tmp_path: Path) -> None:
    # GPU only: on the CPU every step checks at once (test_nonfinite_loss_stops_after_saving_last_good_state).
    trainer = NaNAt(make_config(tmp_path, max_steps=20, device="cuda", log_every_n_seconds=0))
    with pytest.raises(NonFiniteLossError, match="no longer finite"):
        trainer.run()
    assert trainer.progress.step == 5  # noticed at the first log after the bad step
    skipping = NaNAt(make_config(tmp_path, max_steps=10, device="cuda", skip_nonfinite=True))
    skipping.run()
    assert skipping.progress.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in skipping.model.parameters())
