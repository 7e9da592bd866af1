"""var_eval data: task rules (independent checker), vectorised == per-example distribution, dataset."""

from pathlib import Path

from typing import Any

import numpy as np

from iluvattnshun import compat
import pytest
from checkers import VAR_EVAL_VOCAB, ChainFacts, check_var_eval, decode, histogram, two_sample_chi2_p

from examples.var_eval import VarEvalConfig, VarEvalPrompter


def _per_example(p: VarEvalPrompter, n: int, seed: int) -> list[tuple[ChainFacts, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt, answer, meta = p.get_prompt(rng)
        out.append(
            (
                check_var_eval(
                    prompt, answer, meta["depth"], p.config.num_chains, p.config.num_statements, p.config.bind_first
                ),
                answer,
            )
        )
    return out


def _vectorised(p: VarEvalPrompter, n: int, seed: int) -> list[tuple[ChainFacts, str]]:
    cols = p.get_prompts(np.random.default_rng(seed), n)
    out = []
    for i in range(n):
        prompt, answer = decode(cols["prompt"][i], VAR_EVAL_VOCAB), decode(cols["answer"][i], VAR_EVAL_VOCAB)
        cfg = p.config
        facts = check_var_eval(
            prompt, answer, cols["depth"][i].tolist(), cfg.num_chains, cfg.num_statements, cfg.bind_first
        )
        out.append((facts, answer))
    return out


def _statistics(examples: list[tuple[ChainFacts, str]], num_statements: int) -> dict[str, np.ndarray]:
    facts = [f for f, _ in examples]
    return {
        "result_digit": histogram([int(a[j]) for _, a in examples for j in range(4, len(a), 6)], 10),
        "start_digit": histogram([d for f in facts for d in f.start_digits], 10),
        "depth": histogram([d for f in facts for d in f.depths], num_statements),
        "chains_used": histogram([len(f.start_digits) for f in facts], 26),
        "new_letter": histogram([ord(x) - ord("a") for f in facts for x in f.new_letters], 26),
        "distinct_letters": histogram([len(set(f.new_letters)) for f in facts], 27),
    }


def test_spec_example_and_checker_teeth() -> None:
    prompt, answer = "1+3>a;2+4>b;a+3>c;", "....4.....6.....7."
    check_var_eval(prompt, answer, [0] * 12 + [1] * 6, num_chains=2, num_statements=3)
    with pytest.raises(AssertionError, match="answer"):
        check_var_eval(prompt, "....4.....6.....8.", [0] * 12 + [1] * 6, 2, 3)
    with pytest.raises(AssertionError, match="chains are started first"):
        check_var_eval("1+3>a;2+4>b;5+1>c;", "....4.....6.....6.", [0] * 18, 2, 3)
    with pytest.raises(AssertionError, match="fresh"):
        check_var_eval("1+3>a;a+4>a;", "....4.....8.", [0] * 6 + [1] * 6, 1, 2)


def test_vocabulary_matches_spec() -> None:
    p = VarEvalPrompter(VarEvalConfig())
    text = "0123456789abcdefghijklmnopqrstuvwxyz>;.+"
    assert p.tokenize(text) == [VAR_EVAL_VOCAB[c] for c in text]
    assert p.vocab_size == 40 and p.mask_token == 38


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"num_chains": 26}, "num_chains"), ({"num_chains": 0}, "num_chains"), ({"num_statements": 0}, "num_statements")],
)
def test_impossible_configs_fail_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VarEvalConfig(**kwargs)


@pytest.mark.parametrize(
    ("num_chains", "num_statements", "bind_first"), [(1, 4, True), (2, 12, True), (25, 60, True), (3, 20, False)]
)
def test_every_example_follows_the_rules(num_chains: int, num_statements: int, bind_first: bool) -> None:
    p = VarEvalPrompter(VarEvalConfig(num_chains=num_chains, num_statements=num_statements, bind_first=bind_first))
    _per_example(p, 200, seed=1)
    _vectorised(p, 500, seed=2)


@pytest.mark.parametrize("bind_first", [True, False])
def test_vectorised_and_per_example_have_the_same_distribution(bind_first: bool) -> None:
    p = VarEvalPrompter(VarEvalConfig(num_chains=3, num_statements=10, bind_first=bind_first))
    a = _statistics(_per_example(p, 2500, seed=10), 10)
    b = _statistics(_vectorised(p, 2500, seed=11), 10)
    for name in a:
        pval = two_sample_chi2_p(a[name], b[name])
        assert pval > 1e-4, f"{name}: p={pval:.2e}\n{a[name]}\n{b[name]}"
    # results are uniform digits (mod-10 sums of uniform addends)
    assert two_sample_chi2_p(b["result_digit"], np.full(10, b["result_digit"].sum() / 10)) > 1e-4


def test_dataset(tmp_path: Path) -> None:
    p = VarEvalPrompter(VarEvalConfig(num_chains=2, num_statements=5))
    dsd = compat.make_dataset(p, tmp_path, 200, 20, keep_strings=True, progress=False)
    assert dsd["train"].features["prompt"].feature.dtype == "uint8"
    for row in dsd["test"].with_format("numpy"):
        check_var_eval(row["prompt_text"], row["answer_text"], row["depth"].tolist(), 2, 5)
