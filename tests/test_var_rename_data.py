"""var_rename data: task rules (independent checker), vectorised == per-example distribution, dataset."""

from pathlib import Path

from typing import Any

import numpy as np

from iluvattnshun import compat
import pytest
from checkers import VAR_RENAME_VOCAB, ChainFacts, check_var_rename, decode, histogram, two_sample_chi2_p

from examples.var_rename import VarRenameConfig, VarRenamePrompter


def _facts_per_example(prompter: VarRenamePrompter, n: int, seed: int) -> list[ChainFacts]:
    cfg = prompter.config
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt, answer, meta = prompter.get_prompt(rng)
        out.append(check_var_rename(prompt, answer, meta["depth"], cfg.num_chains, cfg.num_renames, cfg.bind_first))
    return out


def _facts_vectorised(prompter: VarRenamePrompter, n: int, seed: int) -> list[ChainFacts]:
    cfg = prompter.config
    cols = prompter.get_prompts(np.random.default_rng(seed), n)
    assert cols["prompt"].shape == cols["answer"].shape == cols["depth"].shape == (n, 4 * cfg.num_renames)
    return [
        check_var_rename(
            decode(cols["prompt"][i], VAR_RENAME_VOCAB),
            decode(cols["answer"][i], VAR_RENAME_VOCAB),
            cols["depth"][i].tolist(),
            cfg.num_chains,
            cfg.num_renames,
            cfg.bind_first,
        )
        for i in range(n)
    ]


def _statistics(facts: list[ChainFacts], num_renames: int) -> dict[str, np.ndarray]:
    """Histograms of the task's invariants that both generators must share."""
    return {
        # which chain (by its starting digit) each statement extends
        "statement_digit": histogram([f.start_digits[c] for f in facts for c in f.chain_of_statement], 10),
        "depth": histogram([d for f in facts for d in f.depths], num_renames),
        "new_letter": histogram([ord(x) - ord("a") for f in facts for x in f.new_letters], 26),
        "first_digit": histogram([f.start_digits[0] for f in facts], 10),
        "chains_used": histogram([len(f.start_digits) for f in facts], 11),
        # a letter is re-bound only once it is no longer live: how many distinct letters a prompt uses
        "distinct_letters": histogram([len(set(f.new_letters)) for f in facts], 27),
        "same_chain_as_previous": histogram(
            [int(a == b) for f in facts for a, b in zip(f.chain_of_statement, f.chain_of_statement[1:])], 2
        ),
    }


def test_spec_example_passes_and_checker_rejects_broken_examples() -> None:
    # The example with digits 0..num_chains-1 (its "1>a;2>b;" would need 3 chains, one never bound).
    prompt, answer = "1>a;0>b;a>c;b>d;d>e;", "1.1.0.0.1.1.0.0.0.0."
    depth = [0] * 8 + [1] * 8 + [2] * 4
    check_var_rename(prompt, answer, depth, num_chains=2, num_renames=5)
    with pytest.raises(AssertionError, match="answer"):
        check_var_rename(prompt, "1.1.0.0.0.0.0.0.0.0.", depth, 2, 5)
    with pytest.raises(AssertionError, match="is live"):
        check_var_rename("1>a;0>a;", "1.1.0.0.", [0] * 8, 2, 2)
    with pytest.raises(AssertionError, match="is live"):
        check_var_rename("0>a;a>a;", "0.0.0.0.", [0] * 4 + [1] * 4, 1, 2)
    with pytest.raises(AssertionError, match="not a live variable"):
        check_var_rename("0>a;c>b;", "0.0.0.0.", [0] * 4 + [1] * 4, 1, 2)
    with pytest.raises(AssertionError, match="depth"):
        check_var_rename("0>a;a>b;", "0.0.0.0.", [0] * 8, 1, 2)
    with pytest.raises(AssertionError, match="second chain"):
        check_var_rename("1>a;1>b;", "1.1.1.1.", [0] * 8, 2, 2)
    with pytest.raises(AssertionError, match="bound first"):
        check_var_rename("1>a;a>b;0>c;", "1.1.1.1.0.0.", [0] * 4 + [1] * 4 + [0] * 4, 2, 3)


def test_vocabulary_matches_spec() -> None:
    p = VarRenamePrompter(VarRenameConfig())
    assert p.vocab_size == 39 and p.mask_token == 38
    text = "0123456789abcdefghijklmnopqrstuvwxyz>;."
    assert p.tokenize(text) == [VAR_RENAME_VOCAB[c] for c in text]
    assert p.detokenize(p.tokenize("1>a;")) == "1>a;"
    with pytest.raises(ValueError, match="not in the"):
        p.tokenize("1+a")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_chains": 11}, "num_chains"),
        ({"num_chains": 0}, "num_chains"),
        ({"num_renames": 0}, "num_renames"),
        ({"num_chains": 4, "num_renames": 3}, "num_renames"),
        ({"train_size": 0}, "train_size"),
        ({"test_size": -1}, "test_size"),
    ],
)
def test_impossible_configs_fail_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VarRenameConfig(**kwargs)


@pytest.mark.parametrize(
    ("num_chains", "num_renames", "bind_first"),
    [(1, 5, True), (3, 12, True), (10, 40, True), (4, 3, False), (4, 30, False)],
)
def test_every_example_follows_the_rules(num_chains: int, num_renames: int, bind_first: bool) -> None:
    p = VarRenamePrompter(VarRenameConfig(num_chains=num_chains, num_renames=num_renames, bind_first=bind_first))
    _facts_per_example(p, 200, seed=1)
    _facts_vectorised(p, 1000, seed=2)


def test_long_prompts_with_wide_depths() -> None:
    # > 256 renames: depths no longer fit a byte, the vectorised path switches representation
    p = VarRenamePrompter(VarRenameConfig(num_chains=1, num_renames=300))
    facts = _facts_vectorised(p, 20, seed=3)
    assert max(max(f.depths) for f in facts) == 299


@pytest.mark.parametrize("bind_first", [True, False])
def test_vectorised_and_per_example_have_the_same_distribution(bind_first: bool) -> None:
    p = VarRenamePrompter(VarRenameConfig(num_chains=3, num_renames=12, bind_first=bind_first))
    per_example = _statistics(_facts_per_example(p, 2500, seed=10), 12)
    vectorised = _statistics(_facts_vectorised(p, 2500, seed=11), 12)
    for name in per_example:
        pval = two_sample_chi2_p(per_example[name], vectorised[name])
        assert pval > 1e-4, f"{name}: p={pval:.2e}\n{per_example[name]}\n{vectorised[name]}"
    # the test has power: a different task (4 chains) is told apart
    other = _statistics(
        _facts_vectorised(
            VarRenamePrompter(VarRenameConfig(num_chains=4, num_renames=12, bind_first=bind_first)), 2500, 12
        ),
        12,
    )
    assert two_sample_chi2_p(per_example["statement_digit"], other["statement_digit"]) < 1e-6


def test_original_layout_starts_chains_anywhere() -> None:
    # bind_first=False: the first statement that picks a chain binds its digit, wherever it falls
    p = VarRenamePrompter(VarRenameConfig(num_chains=4, num_renames=12, bind_first=False))
    facts = _facts_vectorised(p, 2000, seed=4)
    first_statement = [f.chain_of_statement.index(len(f.start_digits) - 1) for f in facts]
    assert max(first_statement) > 4, "some last-bound chain starts after the first num_chains statements"
    assert any(len(f.start_digits) < 4 for f in facts), "some prompt never starts a chain"


def test_uniform_choices() -> None:
    p = VarRenamePrompter(VarRenameConfig(num_chains=4, num_renames=30))
    stats = _statistics(_facts_vectorised(p, 3000, seed=5), 30)
    n = stats["statement_digit"][:4]
    expected = np.full(4, n.sum() / 4)
    assert two_sample_chi2_p(n, expected) > 1e-4  # chains picked uniformly
    assert stats["statement_digit"][4:].sum() == 0
    letters = stats["new_letter"]
    assert two_sample_chi2_p(letters, np.full(26, letters.sum() / 26)) > 1e-4  # letters by symmetry uniform


def test_dataset_columns_dtypes_and_rules(tmp_path: Path) -> None:
    p = VarRenamePrompter(VarRenameConfig(num_chains=2, num_renames=6))
    dsd = compat.make_dataset(p, tmp_path, train_size=300, test_size=50, keep_strings=True, progress=False)
    train = dsd["train"].with_format("numpy")
    assert train.column_names == ["prompt", "answer", "depth", "prompt_text", "answer_text"]
    assert dsd["train"].features["prompt"].feature.dtype == "uint8"
    assert dsd["train"].features["depth"].feature.dtype == "uint8"
    for row in train.select(range(100)):
        assert decode(row["prompt"], VAR_RENAME_VOCAB) == row["prompt_text"]
        check_var_rename(row["prompt_text"], row["answer_text"], row["depth"].tolist(), 2, 6)


def test_mixed_layouts_hold_both_layouts_and_follow_the_rules() -> None:
    # mix_layouts: every prompt follows the rules of one layout (the checker's bind_first=False accepts both), and
    # both appear: about half the prompts bind every chain in the first statements, the rest start chains anywhere.
    config = VarRenameConfig(num_chains=3, num_renames=12, mix_layouts=True, bind_first=False)
    p = VarRenamePrompter(config)
    for facts in (_facts_vectorised(p, 2000, seed=6), _facts_per_example(p, 600, seed=7)):
        bound_first = [sorted(f.chain_of_statement[:3]) == [0, 1, 2] for f in facts]
        original = VarRenamePrompter(VarRenameConfig(num_chains=3, num_renames=12, bind_first=False))
        by_chance = np.mean(
            [sorted(f.chain_of_statement[:3]) == [0, 1, 2] for f in _facts_vectorised(original, 2000, seed=8)]
        )
        # half bind-first (always bound first) + half original (bound first by chance)
        assert abs(np.mean(bound_first) - (0.5 + 0.5 * by_chance)) < 0.05
    assert config.data_hash_params()[-1] == "mix_layouts"
    assert "mix_layouts" not in VarRenameConfig(num_chains=3, num_renames=12).data_hash_params()  # old hashes kept


def test_layout_curriculum_streams_bind_first_prompts_until_the_mix_starts() -> None:
    # mix_layouts_from: the steps before it stream bind-first prompts only; from it on, both layouts.
    config = VarRenameConfig(
        num_chains=3,
        num_renames=12,
        mix_layouts=True,
        bind_first=False,
        mix_layouts_from=100,
        streaming=True,
        min_renames=6,
    )
    config.validate()
    p = VarRenamePrompter(config)
    for step, bound_share in ((0, 1.0), (99, 1.0), (100, None), (9000, None)):
        stage = p.at_step(step)
        facts = _facts_vectorised(stage, 1000, seed=step)
        share = np.mean([sorted(f.chain_of_statement[:3]) == [0, 1, 2] for f in facts])
        if bound_share is not None:
            assert share == bound_share and not stage.config.mix_layouts
        else:
            assert 0.5 < share < 0.9 and stage.config.mix_layouts
    assert p.at_step(0).config.num_renames == 6 and p.at_step(9000).config.num_renames == 12
    # The delay is a training-stream field: it versions no cached dataset.
    assert "mix_layouts_from" in config.data_fields() and "mix_layouts_from" not in config.data_hash_params()
