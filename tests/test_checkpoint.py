"""Checkpoint files: the schema and its version, both call forms of load_checkpoint, clear errors for files of
another kind, finding what to resume, retention, cleanup of half-written files."""

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from iluvattnshun.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    Progress,
    cleanup_temp_files,
    find_resumable,
    get_rng_state,
    prune_checkpoints,
    read_checkpoint,
    restore,
    save_checkpoint,
    write_checkpoint,
)
from iluvattnshun.files import temporary_name
from iluvattnshun.nn import MultilayerTransformer
from iluvattnshun.rundir import checkpoint_name, list_checkpoints
from iluvattnshun.utils import load_checkpoint


def model() -> MultilayerTransformer:
    return MultilayerTransformer(10, d_model=16, n_heads=2, n_layers=1)  # the original constructor's names


def test_original_call_form_loads_into_the_model_and_optimizer(tmp_path: Path) -> None:
    saved, other = model(), model()
    opt = torch.optim.AdamW(saved.parameters(), lr=0.1)
    saved(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    path = tmp_path / "original.pt"  # the original code's checkpoint layout
    state = {"model_state_dict": saved.state_dict(), "optimizer_state_dict": opt.state_dict(), "epoch": 3}
    torch.save({**state, "step": {"train": 10}, "metrics": {"accuracy": 0.5}}, path)
    new_opt = torch.optim.AdamW(other.parameters(), lr=0.1)
    assert load_checkpoint(str(path), other, new_opt) == (3, {"train": 10}, {"accuracy": 0.5})
    assert torch.equal(other.unembed.weight, saved.unembed.weight)
    assert new_opt.state_dict()["state"][0]["step"] == 1

    ours = tmp_path / "ours.pt"  # this project's layout, and the dict form
    save_checkpoint(ours, {"model": saved.state_dict(), "progress": {"epoch": 1, "step": 7}, "val_metrics": {}})
    assert load_checkpoint(ours, model())[:2] == (1, 7)
    assert isinstance(load_checkpoint(ours), dict) and isinstance(load_checkpoint(ours, "cpu"), dict)


class RunsCommand:
    """Unpickled, it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_files_of_another_kind_get_clear_errors(tmp_path: Path) -> None:
    torch.save(model(), tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="weights-only loading refuses.*: Unsupported global: GLOBAL "):
        load_checkpoint(tmp_path / "pickled.pt", model())
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": model().state_dict()})
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "truncated.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"'.*empty.pt': the file is empty \(0 bytes\)"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "noise.pt").write_bytes(b"C" + bytes(range(200)))  # no pickle: corrupt, not "Python objects"
    with pytest.raises(ValueError, match=r"truncated or corrupt \(Unsupported operand") as noise:
        load_checkpoint(tmp_path / "noise.pt")
    assert "\n" not in str(noise.value) and "weights-only loading refuses" not in str(noise.value)
    # A plain pickle whose loading would run a command: refused in one line, no torch warning, nothing run.
    (tmp_path / "plain.pt").write_bytes(pickle.dumps(RunsCommand(tmp_path / "MARK"), protocol=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            ValueError, match=r"it is a plain Python pickle \(protocol 4\), not a file torch.save wrote"
        ):
            load_checkpoint(tmp_path / "plain.pt")
    assert not (tmp_path / "MARK").exists()
    torch.save({"foo": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="holds no model state dict"):
        load_checkpoint(tmp_path / "other.pt", model())
    with pytest.raises(ValueError, match="shape mismatch"):
        load_checkpoint(good, MultilayerTransformer(10, dim_model=32, num_heads=2, num_layers=1))


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path / checkpoint_name(step), {"step": step})
    assert [p.name for p in prune_checkpoints(tmp_path, 2)] == [checkpoint_name(1), checkpoint_name(2)]
    assert [p.name for p in list_checkpoints(tmp_path)] == [checkpoint_name(3), checkpoint_name(4)]


def test_prune_counts_and_deletes_only_good_checkpoints_of_the_run(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        save_checkpoint(tmp_path / checkpoint_name(step), {"step": step, "run": "run_1_a"})
    save_checkpoint(tmp_path / checkpoint_name(4), {"step": 4, "run": "run_2_b"})  # another run's
    (tmp_path / checkpoint_name(9)).write_bytes(b"garbage")  # newest by name, unreadable
    deleted = prune_checkpoints(tmp_path, 1, protect=[tmp_path / checkpoint_name(1)], run="run_1_a")
    assert [p.name for p in deleted] == [checkpoint_name(2)]
    assert [p.name for p in list_checkpoints(tmp_path)] == [checkpoint_name(s) for s in (1, 3, 4, 9)]


def trainer_checkpoint(step: int = 3) -> Checkpoint:
    m = model()
    return Checkpoint(
        model=m.state_dict(),
        optimizer=torch.optim.AdamW(m.parameters()).state_dict(),
        scheduler=None,
        progress=Progress(step=step, samples_seen=step * 4),
        rng=[get_rng_state()],
        config="lr: 0.1\n",
        classes={"config": "toy_task:ToyConfig"},
        model_kwargs=m.init_kwargs,
        run="run_1_a",
    )


def test_schema_round_trips_and_refuses_another_format_version(tmp_path: Path) -> None:
    path = tmp_path / checkpoint_name(3)
    write_checkpoint(path, trainer_checkpoint())
    back = read_checkpoint(path)
    assert back.step == 3 and back.progress == Progress(step=3, samples_seen=12) and back.run == "run_1_a"
    assert back.classes == {"config": "toy_task:ToyConfig"} and back.config == "lr: 0.1\n"
    assert back["progress"]["step"] == 3  # the earlier dict access of load_run(...).checkpoint
    fresh = model()
    restore(back, fresh, torch.optim.AdamW(fresh.parameters()), None)
    assert torch.equal(fresh.unembed.weight, back.model["unembed.weight"])

    save_checkpoint(path, {**trainer_checkpoint().to_dict(), "format_version": FORMAT_VERSION + 1})
    with pytest.raises(ValueError, match=f"checkpoint format {FORMAT_VERSION + 1}, .* reads format") as e:
        read_checkpoint(path)
    assert "\n" not in str(e.value)
    save_checkpoint(path, {"model": model().state_dict()})  # a bare weights file: not a trainer checkpoint
    with pytest.raises(ValueError, match="not a trainer checkpoint"):
        read_checkpoint(path)


def test_find_resumable_skips_unreadable_and_cleanup_removes_only_checkpoint_temporaries(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / checkpoint_name(2), trainer_checkpoint(2))
    (tmp_path / checkpoint_name(5)).write_bytes(b"garbage")  # newest, half-written by hand
    path, skipped = find_resumable(tmp_path)
    assert path == tmp_path / checkpoint_name(2) and len(skipped) == 1 and checkpoint_name(5) in skipped[0]
    assert find_resumable(tmp_path / "missing") == (None, [])

    killed = tmp_path / temporary_name(checkpoint_name(7))  # a checkpoint write killed half-way
    other = tmp_path / temporary_name("run_1_a.yaml")  # another file's temporary: not this module's
    killed.write_bytes(b"x")
    other.write_bytes(b"x")
    assert cleanup_temp_files(tmp_path) == [killed]
    assert not killed.exists() and other.exists()


def test_resume_refuses_another_tasks_checkpoint_in_one_line() -> None:
    from examples.var_rename.task import VarRenameConfig
    from iluvattnshun.checkpoint import Checkpoint, Progress, check_same_task, class_path

    def written_by(config_class: object) -> Checkpoint:
        return Checkpoint({}, {}, None, Progress(), [], "", classes={"config": config_class})  # type: ignore[dict-item]

    check_same_task(written_by(class_path(VarRenameConfig)), VarRenameConfig(), "own.pt")  # its own task: accepted
    check_same_task(Checkpoint({}, {}, None, Progress(), [], ""), VarRenameConfig(), "old.pt")  # none recorded
    for other in ("examples.dag.task:DagConfig", 7, "x" * 10_000):  # another task's, or a malformed record
        with pytest.raises(ValueError, match=r"^resume: 'p.pt' is a checkpoint of another task \(config ") as e:
            check_same_task(written_by(other), VarRenameConfig(), "p.pt")
        assert len(str(e.value)) < 400 and "\n" not in str(e.value)
