"""Logger: console frames (colour only on a TTY without NO_COLOR), TensorBoard scalars/text/images/hparams."""

import io
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from iluvattnshun.logger import Logger, NullLogger, format_duration, format_value


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def read_events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def test_format_value() -> None:
    assert format_value(1234567) == "1,234,567"
    assert format_value(0.123456, precision=4) == "0.1235"
    assert format_value(3e-5, precision=4) == "3.0000e-05"
    assert format_value(0.0, precision=2) == "0.00"
    assert format_value(12345.5, precision=1) == "12,345.5"
    assert format_value(float("nan")) == "nan"
    assert format_value(True) == "True"
    assert format_value("abc") == "abc"
    assert format_duration(3725) == "1h 2m 5s" and format_duration(42.7) == "42s" and format_duration(61) == "1m 1s"


def test_console_frame_plain_when_not_a_tty(tmp_path: Path) -> None:
    out = io.StringIO()
    logger = Logger(tmp_path / "run_1_x", precision=3, log_every_n_seconds=0, stream=out)
    assert logger.log_metrics(
        {"loss": 0.123456, "count": 12345, "lr": 3e-5, "acc_per_depth": {"0": 0.9, "1": 0.5}, "sample": "a b"},
        mode="train",
        step=1000,
        header={"epoch": 2, "samples": 64000},
    )
    logger.close()
    text = out.getvalue()
    assert "\x1b[" not in text
    header = next(line for line in text.splitlines() if line.startswith("TRAIN"))
    for part in ["epoch: 2", "samples: 64,000", "step: 1,000", "time: ", "run_1_x"]:
        assert part in header, header
    lines = text.splitlines()
    assert any(line.startswith("loss") and line.endswith(": 0.123") for line in lines)
    assert any(line.startswith("count") and line.endswith(": 12,345") for line in lines)
    assert any(line.startswith("lr") and line.endswith("3.000e-05") for line in lines)
    depth0 = next(i for i, line in enumerate(lines) if line.startswith("acc_per_depth"))
    assert lines[depth0 + 1].startswith("    0") and lines[depth0 + 1].endswith("0.900")
    assert lines[depth0 + 2].startswith("    1")


def test_colour_on_tty_unless_no_color(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty = FakeTTY()
    logger = Logger(tmp_path / "a", log_every_n_seconds=0, stream=tty)
    logger.log_metrics({"loss": 1.0}, "val", 1)
    logger.close()
    assert "\x1b[" in tty.getvalue()

    monkeypatch.setenv("NO_COLOR", "1")
    tty = FakeTTY()
    logger = Logger(tmp_path / "b", log_every_n_seconds=0, stream=tty)
    logger.log_metrics({"loss": 1.0}, "val", 1)
    logger.close()
    assert "\x1b[" not in tty.getvalue()


def test_throttling(tmp_path: Path) -> None:
    out = io.StringIO()
    logger = Logger(tmp_path, log_every_n_seconds=3600, stream=out)
    assert logger.should_log("train")
    assert logger.log_metrics({"loss": 1.0}, "train", 1)
    assert not logger.should_log("train")
    assert not logger.log_metrics({"loss": 2.0}, "train", 2)
    assert logger.should_log("val")  # throttled per mode
    assert logger.log_metrics({"loss": 3.0}, "train", 3, force=True)
    logger.close()
    assert out.getvalue().count("TRAIN") == 2


def test_tensorboard_events(tmp_path: Path) -> None:
    logger = Logger(tmp_path, log_every_n_seconds=0, stream=io.StringIO())
    logger.log_metrics({"loss": 2.0, "acc_per_depth": {"0": 0.25, "1": 0.75}, "sample": "x y z"}, "val", 5)
    logger.log_metrics({"loss": 1.0}, "val", 10)
    logger.log_text("config.yaml", "a: 1\n")
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[0, 0] = 255
    logger.log_image("attn/layer0", image, step=10)
    logger.log_hparams({"lr": 0.1, "name": "x", "opt": None, "dims": (1, 2)}, {"loss": 1.0, "acc": {"0": 0.5}})
    logger.close()

    assert (tmp_path / "config.yaml").read_text() == "a: 1\n"
    acc = read_events(tmp_path)
    tags = acc.Tags()
    assert {"val/loss", "val/acc_per_depth/0", "val/acc_per_depth/1"} <= set(tags["scalars"])
    assert [(e.step, e.value) for e in acc.Scalars("val/loss")] == [(5, 2.0), (10, 1.0)]
    assert acc.Scalars("val/acc_per_depth/1")[0].value == 0.75
    assert "attn/layer0" in tags["images"]
    img = acc.Images("attn/layer0")[0]
    assert (img.width, img.height) == (6, 4)
    text_tags = set(tags["tensors"])
    assert {"val/sample/text_summary", "config.yaml/text_summary"} <= text_tags
    # hparams go to the same directory, final metrics under final/ so the curves get no extra points
    final = EventAccumulator(str(tmp_path))
    final.Reload()
    assert "final/loss" in final.Tags()["scalars"] and "final/acc/0" in final.Tags()["scalars"]
    assert len(acc.Scalars("val/loss")) == 2


def test_log_image_rejects_bad_input(tmp_path: Path) -> None:
    logger = Logger(tmp_path, stream=io.StringIO())
    with pytest.raises(ValueError, match="uint8"):
        logger.log_image("x", np.zeros((4, 4, 3), dtype=np.float32), 0)
    with pytest.raises(ValueError, match="H, W"):
        logger.log_image("x", np.zeros((3, 4, 4, 4), dtype=np.uint8), 0)
    logger.close()


def test_null_logger_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    logger = NullLogger()
    assert not logger.should_log("train")
    assert not logger.log_metrics({"loss": 1.0}, "train", 1, force=True)
    logger.log_text("a.txt", "x")
    logger.notice("hello", "world")
    logger.log_hparams({"a": 1}, {"b": 2.0})
    logger.close()
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""
