"""PromptConfig / Prompter machinery: hashing, tokenising, padding, cached datasets, leakage."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from examples.var_rename import VarRenamePromptConfig, VarRenamePrompter
from iluvattnshun.prompter import (
    DatasetCacheWarning,
    PromptConfig,
    Prompter,
    dataset_arrays,
    leakage_stats,
    row_hashes,
    smallest_int_dtype,
    smallest_uint_dtype,
)


@dataclass(kw_only=True)
class ToyConfig(PromptConfig):
    """A toy task: random words over {a, b} of length 1..max_length."""

    max_length: int = 6
    """Longest word."""
    note: str = "not part of the data"
    """A field outside data_hash_params."""

    def data_hash_params(self) -> list[str]:
        return ["max_length"]

    def validate_data_params(self) -> None:
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")


class ToyPrompter(Prompter[ToyConfig]):
    """Variable-length prompts (padded); the answer repeats the prompt's first letter at each 'b'."""

    VOCAB = "ab._"
    PAD_CHAR: ClassVar[str | None] = "_"
    CHUNK_SIZE = 64
    calls = 0

    @property
    def max_seq_len(self) -> int:
        return self.config.max_length

    def get_prompt(self, rng: np.random.Generator) -> tuple[str, str, dict[str, list[int]]]:
        type(self).calls += 1
        n = int(rng.integers(1, self.config.max_length + 1))
        word = "".join("ab"[int(x)] for x in rng.integers(0, 2, size=n))
        answer = "".join(word[0] if c == "b" else "." for c in word)
        return word, answer, {"position": list(range(n))}


class FailingPrompter(ToyPrompter):
    """Dies in the middle of generation, like a Ctrl-C."""

    def get_prompts(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        if type(self).calls > 100:
            raise KeyboardInterrupt
        return super().get_prompts(rng, n)


def _dirs(root: Path) -> list[str]:
    """Entries of a dataset root, without the (empty, hidden) build lock files."""
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".lock-"))


# --- config and hash ----------------------------------------------------------------------------------


def test_config_rejects_unknown_hash_params_and_bad_sizes() -> None:
    @dataclass(kw_only=True)
    class Bad(PromptConfig):
        num_chains: int = 2

        def data_hash_params(self) -> list[str]:
            return ["num_chains", "num_chian"]

    with pytest.raises(ValueError, match="num_chian"):
        Bad()
    with pytest.raises(ValueError, match="train_size"):
        ToyConfig(train_size=0)
    with pytest.raises(ValueError, match="max_length"):
        ToyConfig(max_length=0)
    with pytest.raises(TypeError):
        PromptConfig()  # type: ignore[abstract]
    assert ToyConfig(max_length=3).data_config() == {"max_length": 3}


def test_hash_is_stable_and_covers_exactly_the_data_params() -> None:
    base = ToyPrompter(ToyConfig())
    # A pure function of the documented spec: no dependence on the process (PYTHONHASHSEED) or the run.
    spec = {"chunk_size": 64, "generator_version": 1, "params": {"max_length": 6}, "prompter": "ToyPrompter"}
    expected = hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert base.data_hash() == expected
    assert ToyPrompter(ToyConfig(note="other", train_size=5)).data_hash() == base.data_hash()
    assert ToyPrompter(ToyConfig(max_length=7)).data_hash() != base.data_hash()

    class Bumped(ToyPrompter):
        GENERATOR_VERSION = 2

    class Renamed(ToyPrompter):
        pass

    assert Bumped(ToyConfig()).data_hash() != base.data_hash()
    assert Renamed(ToyConfig()).data_hash() != base.data_hash()
    assert base.data_hash(seed=1) != base.data_hash(seed=2)


# --- tokens ------------------------------------------------------------------------------------------


def test_tokenize_detokenize_and_dtypes() -> None:
    p = ToyPrompter(ToyConfig())
    assert p.vocab_size == 4 and p.mask_token == 2 and p.pad_token == 3
    assert p.tokenize("ab._") == [0, 1, 2, 3]
    assert p.detokenize(np.array([1, 0, 3])) == "ba_"
    with pytest.raises(ValueError, match=r"\['c', 'é'\]"):
        p.tokenize("abcé")
    with pytest.raises(ValueError, match="token ids"):
        p.detokenize([4])
    assert smallest_uint_dtype(255) == np.uint8 and smallest_uint_dtype(256) == np.uint16
    assert smallest_int_dtype(-1, 127) == np.int8 and smallest_int_dtype(-1, 128) == np.int16
    assert smallest_int_dtype(0, 70000) == np.uint32


def test_default_get_prompts_pads_and_checks() -> None:
    p = ToyPrompter(ToyConfig(max_length=5))
    cols = p.get_prompts(np.random.default_rng(0), 50)
    assert cols["prompt"].shape == cols["answer"].shape == cols["position"].shape == (50, 5)
    for i in range(50):
        text = p.detokenize(cols["prompt"][i])
        n = len(text.rstrip("_"))
        assert set(text[n:]) <= {"_"} and set(p.detokenize(cols["answer"][i])[n:]) <= {"."}
        assert cols["position"][i].tolist() == list(range(n)) + [-1] * (5 - n)

    class NoPad(ToyPrompter):
        PAD_CHAR = None

        @property
        def max_seq_len(self) -> None:  # type: ignore[override]
            return None

    with pytest.raises(ValueError, match="different lengths"):
        NoPad(ToyConfig()).get_prompts(np.random.default_rng(0), 50)


# --- cached datasets -----------------------------------------------------------------------------------


def test_make_dataset_is_deterministic_and_cached(tmp_path: Path) -> None:
    p = ToyPrompter(ToyConfig())
    a = p.make_dataset(tmp_path / "a", train_size=300, test_size=40, seed=1, progress=False)
    b = p.make_dataset(tmp_path / "b", train_size=300, test_size=40, seed=1, progress=False)
    c = p.make_dataset(tmp_path / "c", train_size=300, test_size=40, seed=2, progress=False)
    arrays = {k: dataset_arrays(d["train"]) for k, d in {"a": a, "b": b, "c": c}.items()}
    assert np.array_equal(arrays["a"]["prompt"], arrays["b"]["prompt"])
    assert not np.array_equal(arrays["a"]["prompt"], arrays["c"]["prompt"])
    assert arrays["a"]["prompt"].dtype == np.uint8 and arrays["a"]["position"].dtype == np.int8
    assert (a["train"].num_rows, a["test"].num_rows) == (300, 40)

    calls = ToyPrompter.calls
    again = ToyPrompter(ToyConfig(note="changed")).make_dataset(
        tmp_path / "a", train_size=300, test_size=40, seed=1, progress=False
    )
    assert ToyPrompter.calls == calls, "a non-hash parameter must not regenerate"
    assert np.array_equal(dataset_arrays(again["train"])["prompt"], arrays["a"]["prompt"])
    ToyPrompter(ToyConfig(max_length=5)).make_dataset(tmp_path / "a", 300, 40, seed=1, progress=False)
    assert ToyPrompter.calls > calls, "a hash parameter change must regenerate"
    assert len(_dirs(tmp_path / "a")) == 2
    assert (tmp_path / "a" / p.dataset_dir(".", 300, 40, 1).name).is_dir()


def test_multiprocess_generation_gives_the_same_dataset(tmp_path: Path) -> None:
    p = ToyPrompter(ToyConfig())
    one = p.make_dataset(tmp_path / "one", 400, 64, num_proc=1, progress=False)
    two = p.make_dataset(tmp_path / "two", 400, 64, num_proc=2, progress=False)
    for split in ("train", "test"):
        x, y = dataset_arrays(one[split]), dataset_arrays(two[split])
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("damage", ["truncate_arrow", "delete_arrow", "garbage_meta", "other_spec"])
def test_corrupted_cache_is_rebuilt_with_a_warning(tmp_path: Path, damage: str) -> None:
    p = ToyPrompter(ToyConfig())
    good = dataset_arrays(p.make_dataset(tmp_path, 200, 20, progress=False)["train"])
    ds_dir = p.dataset_dir(tmp_path, 200, 20)
    arrow = next((ds_dir / "train").glob("*.arrow"))
    meta = ds_dir / "iluvattnshun_dataset.json"
    if damage == "truncate_arrow":
        arrow.write_bytes(arrow.read_bytes()[:100])
    elif damage == "delete_arrow":
        arrow.unlink()
    elif damage == "garbage_meta":
        meta.write_text("{not json")
    else:
        recorded = json.loads(meta.read_text())
        recorded["spec"]["params"]["max_length"] = 99
        meta.write_text(json.dumps(recorded))
    calls = ToyPrompter.calls
    with pytest.warns(DatasetCacheWarning, match="rebuilding"):
        rebuilt = p.make_dataset(tmp_path, 200, 20, progress=False)
    assert ToyPrompter.calls > calls
    assert np.array_equal(dataset_arrays(rebuilt["train"])["prompt"], good["prompt"])
    assert _dirs(tmp_path) == [ds_dir.name], "no temporary or trash directory may remain"


def test_interrupted_generation_leaves_nothing(tmp_path: Path) -> None:
    FailingPrompter.calls = 0
    with pytest.raises(KeyboardInterrupt):
        FailingPrompter(ToyConfig()).make_dataset(tmp_path, 1000, 10, progress=False)
    assert _dirs(tmp_path) == []


def test_killed_generation_leaves_no_dataset_and_is_cleaned_up(tmp_path: Path) -> None:
    script = f"""
import sys, time
sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parents[1])]!r}
import numpy as np
from test_prompter import ToyConfig, ToyPrompter

class Slow(ToyPrompter):
    def get_prompts(self, rng, n):
        time.sleep(0.2)
        return super().get_prompts(rng, n)

Slow(ToyConfig()).make_dataset({str(tmp_path)!r}, 100_000, 10, progress=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not any(tmp_path.glob(".tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(tmp_path.glob(".tmp-*")), "generation never started"
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert [d for d in _dirs(tmp_path) if not d.startswith(".")] == []
    ToyPrompter(ToyConfig()).make_dataset(tmp_path, 50, 10, progress=False)
    assert [d for d in _dirs(tmp_path) if d.startswith(".")] == [], "the dead build's temp dir is removed"


def test_concurrent_builds_generate_once(tmp_path: Path) -> None:
    script = f"""
import sys
sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parents[1])]!r}
from test_prompter import ToyConfig, ToyPrompter
ToyPrompter(ToyConfig()).make_dataset({str(tmp_path)!r}, 3000, 100, progress=False)
print(ToyPrompter.calls)
"""
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    calls = sorted(int(proc.communicate()[0]) for proc in procs)
    assert all(proc.returncode == 0 for proc in procs)
    assert calls[:2] == [0, 0] and calls[2] == 3100, "one process generates, the others wait and load"
    assert [d for d in _dirs(tmp_path) if not d.startswith(".lock-")] == [
        ToyPrompter(ToyConfig()).dataset_dir(".", 3000, 100).name
    ]


# --- leakage ---------------------------------------------------------------------------------------------


def test_leakage_stats_match_a_python_count(tmp_path: Path) -> None:
    p = VarRenamePrompter(VarRenamePromptConfig(num_chains=2, num_renames=2))  # ~2,700 distinct prompts
    dsd = p.make_dataset(tmp_path, 2000, 500, keep_strings=True, progress=False)
    train, test = list(dsd["train"]["prompt_text"]), list(dsd["test"]["prompt_text"])
    stats = leakage_stats(dsd)
    train_set = set(train)
    assert stats["train_duplicates"] == len(train) - len(train_set) > 0
    assert stats["test_in_train"] == sum(t in train_set for t in test) > 0
    assert stats["test_unique"] == len(set(test))

    deduped = p.make_dataset(tmp_path, 2000, 500, dedup_test=True, keep_strings=True, progress=False)
    assert np.array_equal(dataset_arrays(deduped["train"])["prompt"], dataset_arrays(dsd["train"])["prompt"])
    assert deduped["test"].num_rows == 500 - stats["test_in_train"]
    assert leakage_stats(deduped)["test_in_train"] == 0


def test_row_hashes() -> None:
    rows = np.random.default_rng(0).integers(0, 40, size=(1000, 13), dtype=np.uint8)
    rows[500] = rows[3]
    h = row_hashes(rows)
    assert h[500] == h[3] and len(np.unique(h)) == 999
    assert np.array_equal(row_hashes(rows.astype(np.uint16)[:10]), row_hashes(rows.astype(np.uint16)[:10]))
