"""End to end: each example trains a few steps, evaluates, checkpoints and reloads; the notebook runs headless."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from forked import python_m
from iluvattnshun import load_run
from iluvattnshun.checkpoint import read_checkpoint, write_checkpoint
from iluvattnshun.nn import MultilayerTransformer

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE_ENV = "ILUVATTNSHUN_SHAKESPEARE"


def tiny_args(tmp_path: Path, run_name: str = "t") -> list[str]:
    return [
        "--max_minutes=none",
        "--max_steps=12",
        "--batch_size=16",
        "--num_layers=2",
        "--dim_model=32",
        "--num_heads=2",
        "--train_size=512",
        "--test_size=64",
        f"--dataset_path={tmp_path / 'data'}",
        f"--tensorboard_logdir={tmp_path / 'logs'}",
        f"--run_name={run_name}",
        "--eval_every_n_samples=96",
        "--log_every_n_seconds=0",
        "--device=cpu",
    ]


def run_module(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m module *args`` as a real process, forked from the tests' zygote (``tests/forked.py``)."""
    return python_m(module, args, cwd)


def scalars(run_dir: Path) -> dict[str, list[float]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


SCRIPT = """
from examples.var_eval import PRESETS, VarEvalPrompter
from iluvattnshun.task import main


class EvenPrompter(VarEvalPrompter):
    pass


if __name__ == "__main__":
    main(EvenPrompter, PRESETS)
"""


def test_load_run_of_a_plain_script_uses_its_snapshot_only_when_trusted(tmp_path: Path) -> None:
    # `python my_task.py` records its prompter as __main__:EvenPrompter; in the loading process __main__ is
    # another module (here pytest), so load_run must rebuild the class from the run's script snapshot: code
    # from the run directory, executed only with trust_code=True.
    script = tmp_path / "my_task.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), *tiny_args(tmp_path, "script")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with pytest.raises(ImportError, match="trust_code=True"):
        load_run(tmp_path / "logs" / "run_1_script")
    config, model, prompter, trainer, state, _ = load_run(tmp_path / "logs" / "run_1_script", trust_code=True)
    assert type(prompter).__name__ == "EvenPrompter" and trainer is None
    assert state.step == 12 and torch.equal(model.state_dict()["unembed.weight"], state.model["unembed.weight"])


def test_load_run_never_imports_code_a_checkpoint_names_from_run_folders_or_made_up(tmp_path: Path) -> None:
    # A run directory is data: a checkpoint naming its own snapshot (importable from the current directory as
    # logs.run_1_x.run_1_x), a .py planted beside it, a standard-library module or a class of the wrong kind is
    # refused with one clear error and nothing runs; trust_code=True stays the one way to execute a snapshot.
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from toy_task import ToyConfig, ToyTrainer
    finally:
        sys.path.remove(str(REPO / "tests"))
    config = ToyConfig(
        tensorboard_logdir="logs", run_name="x", max_steps=2, num_epochs=-1, device="cpu", save_every_n_seconds=0
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ToyTrainer(config).run()
    finally:
        os.chdir(cwd)
    run_dir = tmp_path / "logs" / "run_1_x"
    (ckpt,) = run_dir.glob("ckpt_*.pt")
    state = read_checkpoint(ckpt)
    evil = "import pathlib; pathlib.Path('MARKER').write_text('ran')\nclass ToyConfig: pass\n"
    (run_dir / "run_1_x.py").write_text(evil + (run_dir / "run_1_x.py").read_text())
    (run_dir / "planted.py").write_text(evil)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
    load = "import sys; from iluvattnshun import load_run; r = load_run('logs/run_1_x'); print(type(r.prompter))"
    cases = {
        "logs.run_1_x.run_1_x:ToyConfig": "run directory",
        "logs.run_1_x.planted:ToyConfig": "run directory",
        "this:ToyConfig": "standard-library",
        "subprocess:Popen": "standard-library",
        "iluvattnshun.nn:MultilayerTransformer": "not a Config subclass",
        "toy_task:ToyConfig prompter=iluvattnshun.trainer:Trainer": "not a Prompter subclass",
    }
    for recorded, expected in cases.items():
        config_path, _, prompter = recorded.partition(" prompter=")
        classes = {**state.classes, "config": config_path, **({"prompter": prompter} if prompter else {})}
        write_checkpoint(ckpt, dataclasses.replace(state, classes=classes))
        proc = subprocess.run(
            [sys.executable, "-c", load], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode != 0 and expected in proc.stderr, (recorded, proc.stderr[-1500:])
        assert "Zen of Python" not in proc.stdout and not (tmp_path / "MARKER").exists(), recorded
    write_checkpoint(ckpt, state)
    proc = subprocess.run([sys.executable, "-c", load], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-1500:]


def test_load_run_names_what_the_path_is(tmp_path: Path) -> None:
    from iluvattnshun import load_run

    with pytest.raises(FileNotFoundError, match="'.*nope' does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "f").write_text("")
    with pytest.raises(FileNotFoundError, match="'.*f' is a file, not a run directory"):
        load_run(tmp_path / "f")
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        load_run(tmp_path)


@pytest.mark.parametrize("task", ["var_rename", "var_eval", "dag"])
def test_synthetic_example_trains_evaluates_checkpoints_and_reloads(tmp_path: Path, task: str) -> None:
    proc = run_module(f"examples.{task}", [*tiny_args(tmp_path), "--log_attention_maps"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "logs" / "run_1_t"
    assert (run_dir / "run_1_t.yaml").is_file() and (run_dir / "run_1_t.py").is_file()
    assert "✓" in proc.stdout or "✗" in proc.stdout  # the sample decoding with its marker line
    assert "duplicates" in proc.stdout or "test_in_train" in proc.stdout  # dataset statistics were logged

    tags = scalars(run_dir)
    assert "val/accuracy" in tags and "val/loss" in tags and "train/loss" in tags
    assert any(t.startswith("val/acc_per_depth/") for t in tags)
    assert any(t.startswith("val/positions_per_depth/") for t in tags)
    assert all(-1 <= r <= 200 for r in tags["val/depth_reach_90"]) and "val/depth_reach_99" in tags
    assert "depth_reach_90" in proc.stdout  # in the console frame too
    assert all(0.0 <= a <= 1.0 for a in tags["val/accuracy"])
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    assert "val/attention" in events.Tags()["images"]  # --log_attention_maps: one image per evaluation
    image = events.Images("val/attention")[-1]
    assert image.width > 0 and image.height > 0 and len(events.Images("val/attention")) == len(tags["val/loss"])

    config, model, prompter, trainer, state, path = load_run(run_dir)
    assert path.name == "ckpt_00000012.pt" and state.step == 12
    assert type(config).__name__.lower().startswith(task.replace("_", ""))
    assert config.num_layers == 2 and isinstance(model, MultilayerTransformer) and not model.training
    assert (model.unembed.weight is model.token_embedding.weight) == config.tie_weights  # var_eval's quick ties
    assert prompter is not None
    prompt, answer, _ = prompter.get_prompt(__import__("numpy").random.default_rng(0))
    logits = model(torch.tensor([prompter.tokenize(prompt)])).logits
    assert logits.shape == (1, len(prompt), prompter.vocab_size)
    # Reloaded weights are the trained ones, not a fresh initialisation; no trainer was needed.
    assert trainer is None
    fresh = MultilayerTransformer(**(state.model_kwargs or {}))
    assert not torch.equal(fresh.state_dict()["unembed.weight"], model.state_dict()["unembed.weight"])


def test_cli_help_presets_and_errors(tmp_path: Path) -> None:
    proc = run_module("examples.var_rename", ["--help"], cwd=tmp_path)
    assert proc.returncode == 0
    for field in ("num_renames", "num_layers", "lr", "max_minutes", "resume"):
        assert f"--{field}" in proc.stdout
    assert "quick" in proc.stdout and "paper" in proc.stdout
    paper = run_module("examples.var_rename", ["--preset=paper", "--print_config"], cwd=tmp_path)
    cfg = yaml.safe_load(paper.stdout)
    assert cfg["num_layers"] == 8 and cfg["num_renames"] == 150 and cfg["train_size"] == 1_000_000
    bad = run_module("examples.var_rename", ["--num_chains=11"], cwd=tmp_path)
    assert bad.returncode == 2 and "num_chains" in bad.stderr
    typo = run_module("examples.dag", ["--num_node=3"], cwd=tmp_path)
    assert typo.returncode == 2 and "num_nodes" in typo.stderr


ORIGINAL_RUN_YAML = """\
batch_size: 128
dataset_path: data/var_rename
device: cuda
dim_model: 128
dropout_attn: 0.0
dropout_emb: 0.1
dropout_mlp: 0.1
eval_every_n_samples: 1000000
grad_norm_max: 1.0
learning_rate: 0.0001
load_model_path: null
log_every_n_seconds: 3
log_fp: 4
lr_start_factor: 0.001
num_chains: 4
num_epochs: 1000
num_heads: 2
num_layers: 5
num_renames: 150
overwrite_existing_checkpoints: true
rope_base: 2000.0
run_name: sweep_7
save_every_n_seconds: 100
save_model_path: null
tensorboard_logdir: logs/var_rename
test_size: 10000
train_size: 1000000
warmup_steps: 4000
weight_decay: 0.01
"""


def test_original_names_on_the_command_line_and_in_a_saved_original_run_yaml(tmp_path: Path) -> None:
    (tmp_path / "l5h2.yaml").write_text(ORIGINAL_RUN_YAML)  # a run config saved by the original code
    proc = run_module("examples.var_rename", ["--config=l5h2.yaml", "--print_config"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert (cfg["lr"], cfg["warmup_start_factor"], cfg["num_layers"], cfg["num_heads"]) == (1e-4, 1e-3, 5, 2)
    assert "note: config key 'learning_rate' is an earlier name of 'lr'" in proc.stderr
    old = ["--d_model=64", "--n_heads=2", "--n_layers=3", "--max_context_length=32", "--learning_rate=3e-4"]
    proc = run_module("examples.shakespeare", [*old, "--print_config"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert (cfg["dim_model"], cfg["num_heads"], cfg["num_layers"], cfg["context_len"], cfg["lr"]) == (
        64,
        2,
        3,
        32,
        3e-4,
    )
    assert proc.stderr.count("is an earlier name of") == 5
    proc = run_module("examples.var_eval", ["--num_renames=12", "--print_config"], cwd=tmp_path)
    assert proc.returncode == 0 and yaml.safe_load(proc.stdout)["num_statements"] == 12
    typo = run_module("examples.var_rename", ["--learning_rat=1e-3"], cwd=tmp_path)
    assert typo.returncode == 2 and "did you mean --lr?" in typo.stderr


def shakespeare_text() -> str:
    path = os.environ.get(SHAKESPEARE_ENV)
    if not path or not Path(path).is_file():
        pytest.skip(f"set {SHAKESPEARE_ENV} to a Tiny Shakespeare input.txt (.ci/run does)")
    return path


def test_shakespeare_trains_and_samples(tmp_path: Path) -> None:
    text = shakespeare_text()
    args = [
        f"--data_path={text}",
        "--max_steps=30",
        "--num_layers=2",
        "--dim_model=32",
        "--num_heads=2",
        "--context_len=32",
        "--sample_tokens=40",
        f"--tensorboard_logdir={tmp_path / 'logs'}",
        "--run_name=s",
        "--eval_every_n_samples=none",
        "--log_every_n_seconds=0",
        "--device=cpu",
    ]
    proc = run_module("examples.shakespeare", args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tags = scalars(tmp_path / "logs" / "run_1_s")
    assert tags["val/loss"][-1] < tags["val/loss"][0]  # loss falls between the first and the final evaluation
    ratio = [b / a for a, b in zip(tags["val/loss"], tags["val/bits_per_char"])]
    assert all(abs(r - 1 / 0.6931471805599453) < 1e-4 for r in ratio)
    assert "ROMEO:" in proc.stdout  # the sample continues the fixed prompt


def test_shakespeare_validation_covers_split_exactly_once() -> None:
    from examples.shakespeare import IGNORE, ValWindows

    data = torch.arange(1000) % 50
    windows = ValWindows(data, context_len=64, batch_size=5, rank=0, world_size=1)
    targets = torch.cat([b["target"].flatten() for b in windows])
    inputs = torch.cat([b["input"].flatten() for b in windows])
    real = targets != IGNORE
    assert int(real.sum()) == len(data) - 1
    assert torch.equal(targets[real], data[1:]) and torch.equal(inputs[real], data[:-1])


def test_shakespeare_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_module("examples.shakespeare", [f"--data_path={tmp_path / 'nope.txt'}"], cwd=tmp_path)
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_investigate_notebook_runs_headless(tmp_path: Path) -> None:
    # imported here so that the other tests collect where the notebook tools are not installed (a GPU machine)
    import nbformat
    from nbclient import NotebookClient

    proc = run_module("examples.var_rename", tiny_args(tmp_path, "nb"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = nbformat.read(REPO / "examples" / "var_rename" / "investigate.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "saved with outputs"
    os.environ["RUN_DIR"] = str(tmp_path / "logs" / "run_1_nb")
    os.environ["PYTHONPATH"] = str(REPO)
    try:
        client: Any = NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": tmp_path}})
        client.execute()
    finally:
        del os.environ["RUN_DIR"]
    outputs = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "text" in o
    )
    assert "prompt:" in outputs and "answer:" in outputs
    assert "rows: layer whose output is patched" in outputs
    assert "ablated (rows: layer, columns: head)" in outputs and "layer 1: mean span" in outputs


@pytest.mark.parametrize(
    "module, args, names",
    [
        ("iluvattnshun.sweep", ["summarize"], "logdir"),
        ("iluvattnshun.sweep", ["launch", "--cmd=x", "--grid", "lr=1", "--gpus=a,b"], "'a' is not a GPU index"),
        ("examples.var_rename.llm", ["export"], "--out"),
        ("examples.var_rename.llm", ["score", "--min_questions=x", "a", "b"], "--min_questions: invalid int"),
        ("examples.var_rename.mechanism", [], "run_dir"),
        ("examples.var_eval_lookup", ["--prompts=x"], "--prompts: invalid int"),
    ],
)
def test_other_commands_stop_on_a_bad_argument_with_one_line(
    tmp_path: Path, module: str, args: list[str], names: str
) -> None:
    # argparse's own errors (a missing argument, a value of the wrong type) as the training commands give them.
    proc = run_module(module, args, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and names in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and not proc.stdout
