"""PromptConfig / Prompter machinery: config checks, tokenising, padding, the config class a prompter declares.

``ToyConfig`` / ``ToyPrompter`` are also the toy task of ``test_datasets``.
"""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from iluvattnshun.prompter import PromptConfig, Prompter, smallest_int_dtype, smallest_uint_dtype


@dataclass(kw_only=True)
class ToyConfig(PromptConfig):
    """A toy task: random words over {a, b} of length 1..max_length."""

    max_length: int = 6
    """Longest word."""
    note: str = "not part of the data"
    """A field outside data_hash_params."""

    def data_hash_params(self) -> list[str]:
        return ["max_length"]

    def validate(self) -> None:
        super().validate()
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


# --- config ----------------------------------------------------------------------------------


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


def test_prompter_knows_its_config_class_and_the_config_its_task_directories() -> None:
    assert ToyPrompter.config_class() is ToyConfig
    assert ToyConfig().dataset_path == "data/default"

    @dataclass(kw_only=True)
    class Named(ToyConfig):
        TASK = "named"

    assert Named().dataset_path == "data/named" and Named(dataset_path="x").dataset_path == "x"
