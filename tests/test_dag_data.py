"""DAG data: every example verified by an independent BFS checker; padding; config validation."""

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from checkers import DAG_VOCAB, DagFacts, check_dag, decode, histogram

from examples.dag import DagConfig, DagPrompter
from iluvattnshun import compat
from iluvattnshun.datasets import dataset_arrays

GRAPH_FIELDS = (
    "num_nodes",
    "min_ranks",
    "max_ranks",
    "min_per_rank",
    "max_per_rank",
    "num_errors",
    "min_outdeg",
    "max_outdeg",
    "num_queries",
    "query_first",
)


DOC_EXAMPLE_PARAMS = {  # the graph of the examples/dag.py docstring: a -> c -> 1, b -> d -> 0
    "num_nodes": 4,
    "min_ranks": 2,
    "max_ranks": 2,
    "min_per_rank": 2,
    "max_per_rank": 2,
    "num_errors": 2,
    "min_outdeg": 1,
    "max_outdeg": 2,
}


def _graph_params(cfg: DagConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(cfg).items() if k in GRAPH_FIELDS}


def _check_arrays(p: DagPrompter, cols: dict[str, np.ndarray]) -> list[DagFacts]:
    return [
        check_dag(
            decode(cols["prompt"][i], DAG_VOCAB),
            decode(cols["answer"][i], DAG_VOCAB),
            cols["depth"][i].tolist(),
            max_len=p.max_seq_len,
            **_graph_params(p.config),
        )
        for i in range(len(cols["prompt"]))
    ]


def test_checker_accepts_the_doc_example_and_rejects_broken_graphs() -> None:
    params = DOC_EXAMPLE_PARAMS
    prompt = "c>1;a>c;b>d;d>0;a?"
    check_dag(prompt, "." * 17 + "1", [2] * 18, **params)
    with pytest.raises(AssertionError, match="answer"):
        check_dag(prompt, "." * 17 + "0", [2] * 18, **params)
    with pytest.raises(AssertionError, match="reaches errors"):
        check_dag("c>1;a>c;a>d;d>0;b>d;a?", "." * 21 + "1", [2] * 22, **params)
    with pytest.raises(AssertionError, match="skip ranks"):
        check_dag("c>1;a>c;a>0;b>d;d>0;a?", "." * 21 + "1", [2] * 22, **params)
    with pytest.raises(AssertionError, match="path length"):
        check_dag(prompt, "." * 17 + "1", [1] * 18, **params)
    # several queries: every first-rank node, each with its own target
    two = {**params, "num_queries": 2}
    check_dag(prompt + "b?", "." * 17 + "1.0", [2] * 20, **two)
    with pytest.raises(AssertionError, match="answer"):
        check_dag(prompt + "b?", "." * 17 + "1.1", [2] * 20, **two)
    with pytest.raises(AssertionError, match="repeat"):
        check_dag(prompt + "a?", "." * 17 + "1.1", [2] * 20, **two)
    with pytest.raises(AssertionError, match="first rank"):
        check_dag(prompt + "c?", "." * 17 + "1.1", [2] * 20, **two)
    with pytest.raises(AssertionError, match="1 queries, first rank of 2"):
        check_dag(prompt, "." * 17 + "1", [2] * 18, **two)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"num_nodes": 26, "min_ranks": 1, "max_ranks": 5, "min_per_rank": 5, "max_per_rank": 26, "num_errors": 10},
        {"num_nodes": 12, "min_ranks": 3, "max_ranks": 3, "min_per_rank": 4, "max_per_rank": 4, "max_outdeg": 4},
        {"num_nodes": 6, "min_ranks": 6, "max_ranks": 6, "min_per_rank": 1, "max_per_rank": 1, "num_errors": 1},
        {"num_nodes": 10, "min_outdeg": 3, "max_outdeg": 3, "min_ranks": 2, "max_ranks": 2, "max_per_rank": 5},
        {"num_nodes": 6, "min_ranks": 1, "max_ranks": 3, "max_per_rank": 6, "num_queries": 6},
        {"num_nodes": 12, "min_ranks": 3, "max_ranks": 4, "num_queries": 2},
        {"num_nodes": 6, "min_ranks": 1, "max_ranks": 3, "max_per_rank": 6, "num_queries": 3, "query_first": True},
    ],
)
def test_every_example_passes_the_bfs_checker(overrides: dict[str, Any]) -> None:
    p = DagPrompter(DagConfig(**overrides))
    facts = _check_arrays(p, p.get_prompts(np.random.default_rng(0), 300))
    cfg = p.config
    ranks = histogram([f.num_ranks for f in facts], cfg.max_ranks + 1)
    assert all(ranks[r] > 0 for r in range(cfg.min_ranks, cfg.max_ranks + 1)), ranks
    if cfg.num_errors > 1 and cfg.num_nodes > 1:
        assert len({f.answer for f in facts}) > 1, "answers must vary"


def test_checker_reads_a_query_first_prompt() -> None:
    params = {**DOC_EXAMPLE_PARAMS, "num_queries": 2, "query_first": True}
    prompt = "a?b?c>1;a>c;b>d;d>0;??"
    check_dag(prompt, "." * 20 + "10", [2] * 22, **params)
    with pytest.raises(AssertionError, match="answer"):
        check_dag(prompt, "." * 20 + "01", [2] * 22, **params)


def test_spec_example_shape_and_padding() -> None:
    p = DagPrompter(DagConfig())
    prompt, answer, meta = p.get_prompt(np.random.default_rng(1))
    assert prompt.endswith("?") and answer[:-1] == "." * (len(prompt) - 1) and answer[-1].isdigit()
    cols = p.get_prompts(np.random.default_rng(1), 1)
    assert cols["prompt"].shape == (1, p.max_seq_len)
    text = p.detokenize(cols["prompt"][0])
    assert text.startswith(prompt) and set(text[len(prompt) :]) == {"_"}
    assert cols["depth"][0, len(prompt)] == -1 and meta["depth"][0] == cols["depth"][0, 0]


def test_vocabulary_matches_spec() -> None:
    p = DagPrompter(DagConfig())
    text = "0123456789abcdefghijklmnopqrstuvwxyz>;.?_"
    assert p.tokenize(text) == [DAG_VOCAB[c] for c in text]
    assert p.vocab_size == 41 and p.mask_token == 38 and p.pad_token == 40


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"num_nodes": 27}, "num_nodes"),
        ({"num_errors": 11}, "num_errors"),
        ({"min_ranks": 3, "max_ranks": 2}, "min_ranks"),
        ({"min_outdeg": 0}, "min_outdeg"),
        ({"num_queries": 0}, "num_queries"),
        ({"num_nodes": 8, "min_ranks": 2, "max_ranks": 5, "min_per_rank": 2}, "cannot be split into 5 ranks"),
        ({"num_nodes": 20, "min_ranks": 2, "max_ranks": 2, "max_per_rank": 4}, "cannot be split into 2 ranks"),
    ],
)
def test_impossible_configs_fail_at_construction(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DagConfig(**overrides)


def test_dataset_is_padded_and_masked(tmp_path: Path) -> None:
    p = DagPrompter(DagConfig())
    dsd = compat.make_dataset(p, tmp_path, 300, 30, progress=False)
    arrays = dataset_arrays(dsd["train"])
    assert arrays["prompt"].shape == (300, p.max_seq_len)
    assert arrays["prompt"].dtype == np.uint8 and arrays["depth"].dtype == np.int8  # -1 on padding
    _check_arrays(p, arrays)
    targets = (arrays["answer"] != p.mask_token).sum(axis=1)
    assert (targets == 1).all(), "exactly one target per example, at the query"
