"""examples.var_eval_lookup: the split by binding distance, checked with two hand-written answer rules."""

from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn as nn
from test_examples import run_module, tiny_args

from examples.var_eval import VOCAB, VarEvalConfig, VarEvalPrompter
from examples.var_eval_lookup import lookup_report

Rule = Callable[[dict[int, int], int, int, int], int]
"""(values bound so far, used variable, addend, previous statement's value) -> the answer to give."""


class RuleModel(nn.Module):
    """Answers every statement by ``rule`` (logits one-hot on its answer)."""

    def __init__(self, rule: Rule) -> None:
        super().__init__()
        self.rule = rule
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the report a device

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        logits = torch.zeros(*x.shape, len(VOCAB))
        for b, row in enumerate(x.tolist()):
            values: dict[int, int] = {}
            previous = 0
            for r in range(len(row) // 6):
                old, addend, new = row[6 * r], row[6 * r + 2], row[6 * r + 4]
                guess = self.rule(values, old, addend, previous)
                logits[b, 6 * r + 4, guess] = 1.0
                values[new] = previous = right(values, old, addend, previous)
        return SimpleNamespace(logits=logits)


def right(values: dict[int, int], old: int, addend: int, previous: int) -> int:
    return ((old if old < 10 else values[old]) + addend) % 10


def by_recency(values: dict[int, int], old: int, addend: int, previous: int) -> int:
    return ((old if old < 10 else previous) + addend) % 10


def test_a_model_that_is_always_right_scores_one_everywhere() -> None:
    report = lookup_report(RuleModel(right), VarEvalPrompter(VarEvalConfig()), num_prompts=300)
    assert {d for d, _ in report.counts} == {1, 2} and {b for _, b in report.counts} == {1, 2, 3, 4}
    assert all(report.accuracy(*key) == 1.0 for key in report.counts)
    assert report.previous_value == {}


def test_a_model_that_looks_up_by_recency_is_right_only_for_the_previous_statement() -> None:
    report = lookup_report(RuleModel(by_recency), VarEvalPrompter(VarEvalConfig()), num_prompts=300)
    for depth in (1, 2):
        assert report.accuracy(depth, 1) == 1.0
        # elsewhere right only when the previous statement's value happens to equal the bound one (~1 in 10)
        assert all(report.accuracy(depth, back) < 0.25 for back in (2, 3, 4))
        wrong = sum(report.counts[depth, b] - report.hits[depth, b] for b in (2, 3, 4))
        assert report.previous_value[depth] == wrong  # every wrong answer is the recency answer
    assert "previous statement's value + addend" in report.format()


def test_cli_reads_a_trained_run(tmp_path: Path) -> None:
    proc = run_module("examples.var_eval", tiny_args(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "logs" / "run_1_t"
    proc = run_module("examples.var_eval_lookup", [str(run_dir), "--prompts=50"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("depth  bound") and "previous" in proc.stdout
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "ckpt_00000001.pt").write_text("junk")
    for args, expected in (
        ([str(tmp_path / "missing")], "error: run_dir: run directory"),
        ([str(tmp_path / "junk")], "error: run_dir: cannot load checkpoint"),
        ([str(run_dir), "--prompts=0"], "error: --prompts must be in 1..1,000,000"),
    ):
        proc = run_module("examples.var_eval_lookup", args, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.startswith(expected), proc.stderr[-2000:]
        assert len(proc.stderr.splitlines()) == 1
