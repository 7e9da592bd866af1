"""Config <-> command line / YAML: parsing by annotated type, --help, presets, errors with exit status 2."""

import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from forked import python_m
from iluvattnshun.config import (
    config_from_dict,
    config_to_dict,
    field_docs,
    get_yaml_string,
    load_config_from_yaml,
    parse_config,
)
from iluvattnshun.trainer import TrainerConfig

REPO = Path(__file__).resolve().parents[1]


@dataclass(kw_only=True)
class PromptLike:
    """Stands in for PromptConfig: a second kw_only base class."""

    num_chains: int = 3
    """Number of chains in a prompt."""
    mask_char: str = "."
    """Character marking positions without a target."""


@dataclass(kw_only=True)
class TaskConfig(TrainerConfig, PromptLike):
    """A task config inheriting from both bases."""

    num_layers: int = 4
    """Number of transformer layers."""
    lr: float = 1e-3
    """Learning rate."""
    dims: tuple[int, ...] = (8, 16)
    """Hidden sizes."""
    mode: Literal["fast", "slow"] = "fast"
    """Which mode."""
    note: str | None = None
    """Free-text note."""

    def validate(self) -> None:
        super().validate()
        if self.num_layers > 64:
            raise ValueError(f"num_layers must be <= 64, got {self.num_layers}")


PRESETS = {"small": lambda: TaskConfig(num_layers=2), "big": lambda: TaskConfig(num_layers=12, lr=3e-4)}


def parse(argv: list[str]) -> TaskConfig:
    return parse_config(TaskConfig, argv, presets=PRESETS, default_preset="small", prog="task")


def expect_exit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Parse, expect exit status 2, return the single stderr line."""
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_parse_by_annotated_type() -> None:
    cfg = parse(
        [
            "--num_layers=6",
            "--lr=3e-4",
            "--max_minutes=5",  # float | None: parsed as float, not by the current value None
            "--eval_every_n_samples=1e4",  # ints accept an integral float literal
            "--compile",  # bare flag -> True
            "--resume=no",
            "--mode=slow",
            "--dims=1,2,3",
            "--note=none",
            "--grad-accum-steps=2",  # dashes map to underscores
            "--run_name=exp 1",
        ]
    )
    assert cfg.num_layers == 6 and isinstance(cfg.num_layers, int)
    assert cfg.lr == 3e-4
    assert cfg.max_minutes == 5.0 and isinstance(cfg.max_minutes, float)
    assert cfg.eval_every_n_samples == 10_000 and isinstance(cfg.eval_every_n_samples, int)
    assert cfg.compile is True and cfg.resume is False
    assert cfg.mode == "slow" and cfg.dims == (1, 2, 3) and cfg.note is None
    assert cfg.grad_accum_steps == 2 and cfg.run_name == "exp 1"
    for text, expected in [("false", False), ("0", False), ("NO", False), ("true", True), ("1", True)]:
        assert parse([f"--compile={text}"]).compile is expected
    assert parse(["--max_steps=none"]).max_steps is None
    assert parse(["--max_steps=7"]).max_steps == 7


def test_presets() -> None:
    assert parse([]).num_layers == 2  # default preset
    big = parse(["--preset=big", "--lr=0.1"])
    assert big.num_layers == 12 and big.lr == 0.1
    assert parse_config(TaskConfig, []).num_layers == 4  # no presets: cls()


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--num_layer=3"], ["unknown option --num_layer", "did you mean --num_layers"]),
        (["--bogus_field=3"], ["unknown option --bogus_field"]),
        (["--num_layers=abc"], ["'abc'", "--num_layers", "int"]),
        (["--num_layers=2.5"], ["'2.5'", "--num_layers", "int"]),
        (["--compile=maybe"], ["'maybe'", "--compile", "bool"]),
        (["--mode=medium"], ["'medium'", "--mode", "fast,slow"]),
        (["--lr"], ["--lr needs a value"]),
        (["junk"], ["unexpected argument 'junk'"]),
        (["--num_layers", "4"], ["unexpected argument '4'"]),
        (["--preset=huge"], ["unknown preset 'huge'", "small, big"]),
        (["--num_layers=100"], ["num_layers must be <= 64"]),  # validate() hook
        (["--batch_size=0"], ["batch_size must be >= 1"]),  # TrainerConfig.validate via super()
        (["--config=/nonexistent/run.yaml"], ["no such file"]),
        # One value per field: a second one (same name or another of its names) is an error naming both.
        (["--num_layers=3", "--num_layers=5"], ["--num_layers is given twice"]),
        (["--preset=small", "--preset=big"], ["--preset is given twice"]),
    ],
)
def test_errors_exit_2_with_one_line(argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    line = expect_exit(argv, capsys)
    for fragment in fragments:
        assert fragment in line, line


def test_help_lists_every_field_with_type_default_and_doc(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(["--preset=big", "--help", "--bogus=1"])  # --help wins over later errors
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: task" in out and "small" in out and "big" in out
    assert "--num_layers: int = 12" in out  # default of the chosen preset
    assert "Number of transformer layers." in out
    assert "--max_minutes: float | None = none" in out
    assert "--mode: {fast,slow} = 'fast'" in out
    # docs inherited from both bases (multiple inheritance)
    assert "Number of chains in a prompt." in out
    assert "Samples per micro-batch on each process." in out
    for name in config_to_dict(TaskConfig()):
        assert f"--{name}:" in out


def test_field_docs_follow_mro() -> None:
    docs = field_docs(TaskConfig)
    assert docs["num_chains"] == "Number of chains in a prompt."
    assert docs["lr"] == "Learning rate."
    assert docs["seed"].startswith("Seed for python")


def test_print_config_and_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(["--num_layers=7", "--note=hi", "--print_config"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    path = tmp_path / "run.yaml"
    path.write_text(printed)
    loaded = load_config_from_yaml(str(path), TaskConfig)
    assert loaded == TaskConfig(num_layers=7, note="hi")
    # --config as the base, later flags override it
    cfg = parse([f"--config={path}", "--lr=0.5"])
    assert cfg == TaskConfig(num_layers=7, note="hi", lr=0.5)


def test_partial_config_starts_from_the_default_preset_and_bad_files_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "partial.yaml"
    path.write_text("lr: 0.5\n")
    assert parse([f"--config={path}"]) == TaskConfig(num_layers=2, lr=0.5)  # the small preset's num_layers
    path.write_text("lr: 0.5\nnum_layers: 3\nlr: 0.6\n")
    assert "duplicate key 'lr'" in expect_exit([f"--config={path}"], capsys)
    assert "is a directory" in expect_exit([f"--config={tmp_path}"], capsys)


@dataclass(kw_only=True)
class Renamed(TaskConfig):
    """A config whose fields had other names once."""

    ALIASES = {"learning_rate": "lr", "n_layers": "num_layers"}


def test_earlier_names_are_accepted_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse_config(Renamed, ["--learning_rate=0.25", "--n_layers=3"])
    assert (cfg.lr, cfg.num_layers) == (0.25, 3)
    assert capsys.readouterr().err.splitlines() == [
        "note: --learning_rate is an earlier name of --lr",
        "note: --n_layers is an earlier name of --num_layers",
    ]
    path = tmp_path / "old.yaml"
    path.write_text("learning_rate: 0.5\n")
    assert parse_config(Renamed, [f"--config={path}"]).lr == 0.5
    assert "config key 'learning_rate' is an earlier name of 'lr'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(Renamed, ["--learning_rat=1"])
    assert "unknown option --learning_rat; did you mean --lr?" in capsys.readouterr().err
    path.write_text("learning_rate: 0.5\nlr: 0.1\n")
    with pytest.raises(SystemExit):
        parse_config(Renamed, [f"--config={path}"])
    assert "both set 'lr'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(Renamed, ["--help"])
    assert "--learning_rate -> --lr" in capsys.readouterr().out
    for argv in (["--lr=0.5", "--learning_rate=0.001"], ["--learning_rate=0.001", "--lr=0.5"]):
        with pytest.raises(SystemExit) as exc:
            parse_config(Renamed, argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"error: {argv[0].split('=')[0]} and {argv[1].split('=')[0]} both set --lr; give it once" in err, err


def test_yaml_aliases_and_huge_or_binary_files_are_refused_quickly(tmp_path: Path) -> None:
    # A "billion laughs": each level holds 9 aliases of the one before, all under one valid key (kept to 9^6 items
    # here, so that code that expands it fails the test instead of hanging it).
    levels = ["&l0 [x, x, x, x, x, x, x, x, x]"] + [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 6)]
    path = tmp_path / "bomb.yaml"
    path.write_text("lr: [" + ", ".join(levels) + "]\n")
    with pytest.raises(ValueError, match=r"bomb.yaml.*aliases \(\*name\) are not allowed") as exc:
        load_config_from_yaml(str(path), TaskConfig)
    assert len(str(exc.value)) < 1000
    path.write_text("note: [" + ", ".join(["1"] * 10_000) + "]\n")  # a long value: the error shows a short form
    with pytest.raises(ValueError, match="note") as exc:
        load_config_from_yaml(str(path), TaskConfig)
    assert len(str(exc.value)) < 500
    path.write_bytes(b"lr: 0.1\n\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"bomb.yaml is not a UTF-8 text file"):
        load_config_from_yaml(str(path), TaskConfig)
    path.write_text("lr: 0.1\n" + "#" * (2 << 20))
    with pytest.raises(ValueError, match="a config is at most"):
        load_config_from_yaml(str(path), TaskConfig)


def test_yaml_round_trip_is_exact(tmp_path: Path) -> None:
    cfg = TaskConfig(
        lr=0.1 + 0.2,
        max_minutes=math.inf,
        run_name="1e-3",  # a string that YAML would read as a number if unquoted
        note="none",
        mask_char="#",
        dims=(),
        grad_norm_max=None,
        tensorboard_logdir="logs/x: y",
    )
    path = tmp_path / "c.yaml"
    path.write_text(get_yaml_string(cfg))
    assert load_config_from_yaml(str(path), TaskConfig) == cfg
    assert config_from_dict(config_to_dict(cfg), TaskConfig) == cfg


def test_yaml_load_rejects_unknown_keys_and_bad_types(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("num_layers: 3\nnum_layer: 4\nextra: 1\n")
    with pytest.raises(ValueError, match=r"num_layer, extra.*did you mean num_layers"):
        load_config_from_yaml(str(path), TaskConfig)
    path.write_text("num_layers: three\n")
    with pytest.raises(ValueError, match="num_layers"):
        load_config_from_yaml(str(path), TaskConfig)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config_from_yaml(str(path), TaskConfig)
    # hand-written YAML: 1e-3 is a string to YAML 1.1 but the field is a float
    path.write_text("lr: 1e-3\nbatch_size: 8\n")
    assert load_config_from_yaml(str(path), TaskConfig).lr == 1e-3
    assert yaml.safe_load(get_yaml_string(TaskConfig()))["dims"] == [8, 16]


def _run_toy(*args: str) -> subprocess.CompletedProcess[str]:
    return python_m("tests.toy_task", args, REPO, timeout=120)


def test_cli_subprocess_contract() -> None:
    bad = _run_toy("--batch_sise=4", "--tensorboard_logdir=/nonexistent/should/not/be/created")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: unknown option --batch_sise; did you mean --batch_size?"]
    assert bad.stdout == ""
    assert not os.path.exists("/nonexistent/should/not/be/created")

    shown = _run_toy("--preset=tiny", "--print_config", "--batch_size=7")
    assert shown.returncode == 0, shown.stderr
    printed = yaml.safe_load(shown.stdout)
    assert printed["batch_size"] == 7 and printed["d_model"] == 16

    helped = _run_toy("--help")
    assert helped.returncode == 0
    assert "--vocab_size: int = 16" in helped.stdout and "Modulus V" in helped.stdout
    assert "tiny" in helped.stdout
