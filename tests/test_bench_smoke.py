"""The benchmarks on tiny shapes (training, the model step variants, the long step), so that the scripts do not rot."""

import dataclasses
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
import torch.nn.functional as F

from bench import bench_nn
from bench import bench_train as bt
from devices import needs_cuda
from iluvattnshun.task import PromptTaskTrainer
from examples.var_rename.task import quick as var_rename_quick
from iluvattnshun.nn import MultilayerTransformer, flops_per_token


def tiny_case(tmp_path: Path, warmup: int = 1, steps: int = 3) -> bt.Case:
    config = bt.bench_config(
        var_rename_quick(),
        tmp_path,
        "cpu",
        False,
        num_layers=2,
        dim_model=32,
        num_heads=2,
        batch_size=8,
        train_size=64,
        test_size=16,
    )
    return bt.Case("tiny", PromptTaskTrainer, config, bt.var_rename_loss, 32, warmup=warmup, steps=steps)


class EpochLoader:
    """Three batches per epoch; records set_epoch calls."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return 3

    def __iter__(self) -> Iterator[int]:
        return iter(range(3))


def test_timed_loader_stamps_each_batch_once_across_epochs() -> None:
    inner = EpochLoader()
    synced: list[int] = []
    timed = bt.timed_loader(inner, lambda: synced.append(len(timed.stamps)), sync_at=[0, 4])
    assert len(timed) == 3  # type: ignore[arg-type]
    seen = []
    for epoch in range(2):
        timed.set_epoch(epoch)
        seen += list(timed)
    assert seen == [0, 1, 2, 0, 1, 2]
    assert inner.epochs == [0, 1]
    # One stamp per batch, no more, across the end of epoch 0; the data wait is the WaitTimer's running sum.
    assert len(timed.stamps) == len(timed.waited) == 6 and timed.waited == sorted(timed.waited)
    assert timed.stamps == sorted(timed.stamps)
    assert synced == [0, 4]
    window = timed.window(1, 4)
    assert window.step_s > 0 and window.median_step_s > 0
    # per step: the mean of the window's own three waits
    assert window.wait_s == pytest.approx((timed.waited[4] - timed.waited[1]) / 3) and timed.timer.wait_s > 0
    assert timed.timer.batches == 6


def test_timed_loader_has_no_length_where_the_loader_has_none() -> None:
    def stream() -> Iterator[int]:
        yield from range(5)

    class Stream:
        def __iter__(self) -> Iterator[int]:
            return stream()

    timed = bt.timed_loader(Stream(), lambda: None, sync_at=[])
    assert not hasattr(timed, "__len__")
    assert list(timed) == [0, 1, 2, 3, 4]


def test_trainer_and_bare_loop_train_the_same_model_on_the_same_batches(tmp_path: Path) -> None:
    # The Trainer runs warmup + steps + 1 = 4 steps; give the bare loop the same 4 batches.
    trainer_case = tiny_case(tmp_path, warmup=1, steps=2)
    bare_case = dataclasses.replace(trainer_case, steps=3)
    task, model, batches = bt.bare_setup(bare_case)
    window, trained = bt.run_trainer(trainer_case, tmp_path)
    assert window.step_s > 0 and 0 <= window.wait_s < window.step_s
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").iterdir())  # run dir cleaned up
    bt.run_bare(bare_case, task, model, batches)
    expected = trained.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory: pytest.TempPathFactory) -> bt.CaseResult:
    tmp = tmp_path_factory.mktemp("bench")
    return bt.measure_case(tiny_case(tmp), rounds=2, workdir=tmp, peak_fn=lambda: 1e9)


def test_measure_case_alternates_runs_and_counts_flops(tiny_result: bt.CaseResult) -> None:
    r = tiny_result
    assert len(r.trainer) == len(r.bare) == len(r.peaks) == 2
    assert r.tokens_per_step == 8 * 32
    model = MultilayerTransformer(39, d_model=32, n_heads=2, n_layers=2)
    assert r.gflop_per_token == pytest.approx(flops_per_token(model, 32) / 1e9)
    assert all(w.step_s > 0 for w in r.trainer + r.bare)
    assert 0 <= r.wait_share() < 1
    assert r.peak_fraction("bare") > 0
    assert len(r.overheads()) == len(r.overheads(median=True)) == 2


def test_generation_cached_vs_recompute_measured_or_estimated() -> None:
    cpu = torch.device("cpu")
    measured = bt.generation(cpu, [2], [5], repeats=1, cap_s=60.0)
    estimated = bt.generation(cpu, [2], [5], repeats=1, cap_s=0.0)
    assert [(g.batch, g.new_tokens, g.recompute_estimated) for g in measured + estimated] == [
        (2, 5, False),
        (2, 5, True),
    ]
    assert all(g.cached_tps > 0 and g.recompute_tps > 0 for g in measured + estimated)


def test_profile_names_the_attention_kernel_and_matmuls(tmp_path: Path) -> None:
    prof = bt.profile_case(tiny_case(tmp_path), steps=1)
    labels = {label for label, _ in prof.categories}
    assert {"matmul (mm / addmm / bmm)", "attention kernel (SDPA fwd + bwd)"} <= labels
    assert prof.total_ms == pytest.approx(sum(ms for _, ms in prof.categories))
    assert len(prof.top) <= 15 and prof.top == sorted(prof.top, key=lambda t: -t[1])


def test_report_section_is_replaced_not_duplicated(tiny_result: bt.CaseResult, tmp_path: Path) -> None:
    args = bt.parse_args(["--quick"])
    gens = [bt.GenResult(1, 100, 1000.0, 100.0, False), bt.GenResult(32, 1000, 9000.0, 90.0, True)]
    text = bt.report(args, torch.device("cpu"), 1e9, "float32", [tiny_result], [tiny_result], None, gens, [], "")
    assert text.startswith(bt.SECTION_START) and text.rstrip().endswith(bt.SECTION_END)
    assert "| tiny | 8 x 32 |" in text and "**10.0x**" in text and "90 (est.)" in text
    assert "(2 layers, d_model 32, 2 heads, 32 tokens, batch 8)" in text
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n<!-- other:start -->\nother\n<!-- other:end -->\n")
    bt.write_section(text, results)
    bt.write_section(text.replace("tiny", "small"), results)
    content = results.read_text()
    assert content.count(bt.SECTION_START) == 1 and "| small |" in content and "| tiny |" not in content
    assert "<!-- other:start -->\nother\n<!-- other:end -->" in content


def test_bad_arguments_are_rejected(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        bt.parse_args(["--skip=train,nonsense"])
    assert "nonsense" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    text = bt.main(["--quick", "--write", f"--results={results}"])
    assert results.read_text().strip().endswith(bt.SECTION_END)
    for heading in ("### 1.", "### 2.", "### 4.", "### 5."):
        assert heading in text


def test_plateau_variants_change_the_earlier_recipe_in_one_place_and_train() -> None:
    from bench import bench_plateau as bp
    from examples.var_rename.task import depth

    baseline, recipe = bp.config_of("baseline"), bp.config_of("depth_recipe")
    assert (baseline.batch_tokens, baseline.renames_growth_steps, baseline.qk_norm) == (0, 3000, False)
    assert (recipe.batch_tokens, recipe.renames_growth_steps, recipe.qk_norm) == (
        depth().batch_tokens,
        depth().renames_growth_steps,
        True,
    )
    assert bp.config_of("qk_norm") == dataclasses.replace(baseline, qk_norm=True)
    curriculum = bp.config_of("layout_curriculum", num_layers=4)
    assert (curriculum.mix_layouts_from, curriculum.num_layers) == (depth().mix_layouts_from, 4)
    assert bp.config_of("layout_curriculum+lr_2e-3", 4) == dataclasses.replace(curriculum, lr=2e-3)
    assert bp.config_of("layout_curriculum+wd_0.1", 4) == dataclasses.replace(curriculum, weight_decay=0.1)
    result = bp.run_one("qk_norm", seed=0, max_steps=4, eval_every=2, eval_prompts=20, num_layers=1)
    assert result["steps"] == 4 and len(result["acc"]) == 6 and 0.0 <= result["acc"][0] <= 1.0


def test_long_step_bench_trains_the_depth_model_and_sorts_its_profile() -> None:
    from bench import bench_long_step as bl

    tokens, step = bl.batch_and_step(renames=8, rows=4)
    assert tokens == 4 * 32  # 8 renames of 4 characters
    shares = bl.profile_kinds(step, steps=1)
    assert {"attention", "matmul", "GELU"} <= set(shares) and sum(shares.values()) == pytest.approx(1.0)
    assert list(shares.values()) == sorted(shares.values(), reverse=True)


@pytest.mark.parametrize("blocks", [2, 3, 4])
def test_attention_in_query_blocks_is_causal_attention(blocks: int) -> None:
    from bench import bench_long_step as bl

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8, requires_grad=True) for _ in range(3))
    grad = torch.randn(2, 3, 16, 8)

    def output_and_grads(out: torch.Tensor) -> list[torch.Tensor]:
        return [out, *torch.autograd.grad(out, (q, k, v), grad)]

    want = output_and_grads(F.scaled_dot_product_attention(q, k, v, is_causal=True))
    got = output_and_grads(bl.block_causal(q, k, v, blocks))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def _trained_weights(variant: str, device: str, steps: int = 5) -> dict[str, torch.Tensor]:
    shape = bench_nn.Shape("tiny", 2, 32, 4, 16, 4, 39)
    step, model = bench_nn.training_step(shape, variant, torch.device(device))
    for _ in range(steps):
        step()
    return {k: v.detach().float().cpu() for k, v in model.state_dict().items()}


def test_step_variants_refuse_a_cuda_graph_without_cuda() -> None:
    with pytest.raises(ValueError, match="cuda_graph needs CUDA"):
        bench_nn.training_step(bench_nn.Shape("tiny", 1, 32, 4, 8, 2, 39), "cuda_graph", torch.device("cpu"))


@pytest.mark.slow
def test_compiled_step_trains_like_the_eager_one() -> None:
    eager, compiled = _trained_weights("eager", "cpu"), _trained_weights("compile", "cpu")
    assert any(not torch.equal(v, _trained_weights("eager", "cpu", steps=0)[k]) for k, v in eager.items())
    for k, v in eager.items():
        torch.testing.assert_close(compiled[k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@needs_cuda
def test_cuda_graph_step_trains_like_the_eager_one() -> None:
    # The captured step replays the same kernels on each copied-in batch: after 5 steps the weights agree.
    eager, graphed = _trained_weights("eager", "cuda"), _trained_weights("cuda_graph", "cuda")
    for k, v in eager.items():
        torch.testing.assert_close(graphed[k], v, rtol=1e-4, atol=1e-5)
    tiny = bench_nn.Shape("tiny", 2, 32, 4, 16, 4, 39)
    times = bench_nn.step_variant_times(tiny, list(bench_nn.STEP_VARIANTS), torch.device("cuda"), repeats=2, window=2)
    assert set(times) == set(bench_nn.STEP_VARIANTS) and all(t > 0 for t in times.values())
