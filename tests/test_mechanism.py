"""examples.var_rename.mechanism: hop spans counted right on attention patterns set by hand, and its command."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from examples.var_rename import mechanism
from examples.var_rename.task import VarRenameConfig, VarRenamePrompter
from iluvattnshun.model_config import build_model
from iluvattnshun.nn import HookFn
from tests.test_examples import run_module, tiny_args


def introduced_at(prompt: str) -> list[int | None]:
    """For each statement ``old>new;``: the statement that introduced ``old`` as its ``new`` (None: a digit)."""
    stmts = [prompt[i : i + 4] for i in range(0, len(prompt), 4)]
    where: dict[str, int] = {}
    out: list[int | None] = []
    for r, stmt in enumerate(stmts):
        out.append(None if stmt[0].isdigit() else where[stmt[0]])
        where[stmt[2]] = r
    return out


def pattern(prompts: list[str], T: int, heads: int, key_of: "list[list[int]]") -> torch.Tensor:
    """(B, H, T, T) attention with all of query t's weight on key ``key_of[b][t]``."""
    weights = torch.zeros(len(prompts), heads, T, T)
    for b, keys in enumerate(key_of):
        for t, k in enumerate(keys):
            weights[b, :, t, k] = 1.0
    return weights


def test_hop_spans_sum_each_heads_attention_by_hops_along_the_chain() -> None:
    config = VarRenameConfig(num_chains=2, num_renames=16, bind_first=False, num_layers=3, dim_model=32, num_heads=2)
    prompter = VarRenamePrompter(config)
    cols = prompter.sample_batch(np.random.default_rng(0), 40)
    texts = ["".join(prompter.VOCAB[i] for i in row) for row in cols["prompt"]]
    T = cols["prompt"].shape[1]
    # Layer 0: every statement's first character looks at the character that introduced its variable (1 hop);
    # layer 1: at itself; layer 2: at the first character of the statement two hops back where there is one.
    one_hop, two_hops = [], []
    for text in texts:
        back = introduced_at(text)
        one_hop.append([4 * back[t // 4] + 2 if t % 4 == 0 and back[t // 4] is not None else t for t in range(T)])
        two = [back[b] if b is not None else None for b in back]
        two_hops.append([4 * two[t // 4] if t % 4 == 0 and two[t // 4] is not None else t for t in range(T)])
    patterns = {0: pattern(texts, T, 2, one_hop), 1: pattern(texts, T, 2, [list(range(T))] * 40)}
    patterns[2] = pattern(texts, T, 2, two_hops)

    def set_to(layer: int) -> HookFn:
        return lambda w, name: patterns[layer]

    model = build_model(prompter.vocab_size, config)
    with model.hooks({f"layers.{i}.attn.weights": set_to(i) for i in range(3)}):
        spans = mechanism.hop_spans(model, cols, prompter.mask_token, batch=40)  # one pass: the patterns span all 40
    bins = {name: i for i, name in enumerate(mechanism.BINS)}
    assert spans.queries == int((cols["depth"][:, 0::4] >= 1).sum())
    np.testing.assert_allclose(spans.shares.sum(axis=2), 1.0, rtol=1e-6)
    np.testing.assert_allclose(spans.shares[0, :, bins["span 1"]], 1.0, rtol=1e-6)
    np.testing.assert_allclose(spans.mean_span[0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(spans.shares[1, :, bins["this statement"]], 1.0, rtol=1e-6)
    assert np.isnan(spans.mean_span[1]).all()  # no attention on the chain: no span
    depth1 = (cols["depth"][:, 0::4] == 1).sum() / spans.queries  # they have no statement two hops back
    np.testing.assert_allclose(spans.shares[2, :, bins["span 2"]], 1 - depth1, rtol=1e-6)
    np.testing.assert_allclose(spans.shares[2, :, bins["this statement"]], depth1, rtol=1e-6)
    assert len(mechanism.table(spans)) == 2 + 3 * 2


def test_span_bins_double_in_width() -> None:
    spans = np.array([1, 2, 3, 4, 5, 8, 9, 16, 17, 100])
    names = [mechanism.BINS[i] for i in mechanism.bin_of_span(spans)]
    assert (
        names
        == ["span 1", "span 2", "span 3-4", "span 3-4", "span 5-8", "span 5-8", "span 9-16", "span 9-16"]
        + ["span 17+"] * 2
    )


def test_depth_by_position_counts_each_target_in_its_depth_and_statement_band() -> None:
    config = VarRenameConfig(num_chains=2, num_renames=20, bind_first=False)
    prompter = VarRenamePrompter(config)
    cols = prompter.sample_batch(np.random.default_rng(0), 30)

    class AlwaysOne(torch.nn.Module):
        """Predicts the digit 1 everywhere: right exactly where the answer is 1."""

        def forward(self, prompt: torch.Tensor) -> SimpleNamespace:
            logits = torch.zeros(*prompt.shape, len(prompter.VOCAB))
            logits[..., prompter.VOCAB.index("1")] = 1.0
            return SimpleNamespace(logits=logits)

    found = mechanism.depth_by_position(AlwaysOne(), cols, prompter.mask_token, band=8, batch=7)
    total, right = np.zeros_like(found.total), np.zeros_like(found.right)
    for answer, depth in zip(cols["answer"], cols["depth"]):
        for t, (a, d) in enumerate(zip(answer, depth)):
            if a != prompter.mask_token:
                total[d, t // 4 // 8] += 1
                right[d, t // 4 // 8] += int(a == prompter.VOCAB.index("1"))
    assert found.total.shape == (int(cols["depth"].max()) + 1, 3)  # statements 0-7, 8-15, 16-19
    assert (found.total == total).all() and (found.right == right).all() and 0 < right.sum() < total.sum()
    rows = mechanism.position_table(found, min_count=1)
    assert rows[0] == "| depth | statements 0-7 | statements 8-15 | statements 16-23 |"
    d0 = right[0, 0] / total[0, 0]
    assert rows[2].startswith(f"| 0 | {d0:.2f} ({total[0, 0]}) |")


def test_command_prints_the_table_of_a_run_and_refuses_a_bad_run_dir(tmp_path: Path) -> None:
    train = run_module("examples.var_rename", [*tiny_args(tmp_path, "m"), "--bind_first=false"], cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-2000:]
    (run_dir,) = (tmp_path / "logs").glob("run_*_m")
    proc = run_module("examples.var_rename.mechanism", [str(run_dir), "--prompts=20"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "2 layers x 2 heads, step 12" in lines[0] and "20 original prompts of 8 renames" in lines[0]
    assert lines[1].startswith("| layer | head | this statement | span 1 |") and lines[7] == ""
    assert "trained on prompts of up to 8 renames (statements 0-7)" in lines[8]
    assert lines[9] == "| depth | statements 0-15 |" and lines[11].startswith("| 0 | ")
    bad = run_module("examples.var_rename.mechanism", [str(tmp_path / "nope")], cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: run_dir:") and len(bad.stderr.splitlines()) == 1
    for args in (["--renames=100000000"], ["--prompts=1000000000000"]):  # attention maps or prompts beyond memory
        big = run_module("examples.var_rename.mechanism", [str(run_dir), *args], cwd=tmp_path)
        assert big.returncode == 2 and big.stderr.startswith("error: --renames / --prompts: "), big.stderr[-2000:]
        assert len(big.stderr.splitlines()) == 1


@pytest.mark.parametrize("args", [["--prompts=0"], ["--renames=-1"]])
def test_bad_counts_stop_with_one_line(tmp_path: Path, args: list[str]) -> None:
    proc = run_module("examples.var_rename.mechanism", [str(tmp_path), *args], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
