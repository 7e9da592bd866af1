"""The auto rule for --compile and --precision: the measured winner per device and shape (bench/RESULTS.md)."""

import pytest
import torch

from iluvattnshun import speed

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "seq_len, dim_model, bf16_where_native",
    [(32, 64, False), (160, 64, False), (600, 128, True), (1024, 256, True)],
)
def test_cpu_auto_picks_the_measured_winner(seq_len: int, dim_model: int, bf16_where_native: bool) -> None:
    choice = speed.choose(CPU, "auto", "auto", dim_model, seq_len)
    native = speed.cpu_has_native_bf16()
    assert choice.precision == ("bf16" if bf16_where_native and native else "fp32")
    assert choice.compile is False  # never measured faster on a CPU
    assert f"T {seq_len} x d_model {dim_model}" in choice.reason


def test_explicit_values_win_and_unknown_shapes_take_the_plain_path() -> None:
    assert speed.choose(CPU, True, "bf16", 128, 600) == speed.SpeedChoice(True, "bf16", "as configured")
    assert speed.choose(CPU, "auto", "fp32", 128, 600).precision == "fp32"
    assert speed.choose(CPU, True, "auto", 64, 32).compile is True
    unknown = speed.choose(CPU, "auto", "auto", None, None)
    assert (unknown.compile, unknown.precision) == (False, "fp32") and "shape unknown" in unknown.reason
