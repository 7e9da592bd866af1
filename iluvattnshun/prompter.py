"""Synthetic prompt tasks as pure generators: ``PromptConfig`` (what shapes the data) and ``Prompter``.

A task describes the parameters that shape its data in a ``PromptConfig`` subclass and its generator in a
``Prompter`` subclass:

- ``get_prompt(rng) -> (prompt, answer, metadata)`` makes one example as strings. The answer is aligned
  character for character with the prompt; ``MASK_CHAR`` marks positions without a target. Metadata values
  are per-position integer lists (one value per prompt character), e.g. ``depth``.
- ``get_prompts(rng, n)`` makes ``n`` examples at once as token arrays. The default loops over ``get_prompt``;
  fast tasks override it with a vectorised numpy version. ``sample_batch`` checks and compacts its output.

Prompts shorter than ``max_seq_len`` are right-padded with ``PAD_CHAR`` (answer: ``MASK_CHAR``, metadata:
``META_PAD``). Caching a prompter's examples as a versioned dataset is ``iluvattnshun.datasets``' job.
"""

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from iluvattnshun.config import Config, declared_config_class

if TYPE_CHECKING:
    import datasets as hf_datasets

META_PAD = -1
"""Metadata value on padding positions (those positions never carry a target)."""

TOKEN_COLUMNS = ("prompt", "answer")
"""The token columns of every example batch (and dataset)."""


@dataclass(kw_only=True)
class PromptConfig(Config, ABC):
    """Parameters that shape a synthetic dataset: the task's own (``data_hash_params()``), sizes and seed.

    Subclasses add task fields, return the names of those that change the generated data from
    ``data_hash_params()``, and reject impossible values in ``validate()``.
    """

    TASK_DEFAULTS = {"dataset_path": "data/{task}"}

    train_size: int = 10_000
    """Number of training examples in the cached dataset."""
    test_size: int = 1_000
    """Number of test examples in the cached dataset."""
    data_seed: int = 42
    """Seed of the data: the cached dataset and the streamed examples (separate from the training seed)."""
    dedup_test: bool = False
    """Remove test prompts that also occur in the train split."""
    dataset_path: str = ""
    """Directory of cached datasets (empty: data/<task>); each lives in a subdirectory named by prompter and hash."""

    def validate(self) -> None:
        super().validate()
        names = {f.name for f in fields(self)}
        unknown = [p for p in self.data_hash_params() if p not in names]
        if unknown:
            raise ValueError(
                f"{type(self).__name__}.data_hash_params() names {unknown}, which are not fields; "
                f"fields are {sorted(names)}"
            )
        for name in ("train_size", "test_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.data_seed < 0:
            # numpy's SeedSequence (every chunk's and stream's seed) takes only non-negative integers.
            raise ValueError(f"data_seed must be >= 0 (a numpy seed), got {self.data_seed}")

    @abstractmethod
    def data_hash_params(self) -> list[str]:
        """Names of the fields whose values shape the generated data (and so version the cache)."""

    def data_fields(self) -> list[str]:
        return [*super().data_fields(), *self.data_hash_params(), "train_size", "test_size", "data_seed", "dedup_test"]

    def data_config(self) -> dict[str, Any]:
        """The values of ``data_hash_params()``, by name."""
        return {name: getattr(self, name) for name in self.data_hash_params()}


C = TypeVar("C", bound=PromptConfig)


def smallest_uint_dtype(max_value: int) -> np.dtype[Any]:
    """The smallest unsigned integer dtype that holds ``0..max_value``."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{max_value} does not fit in 64 bits")


def smallest_int_dtype(lo: int, hi: int) -> np.dtype[Any]:
    """The smallest integer dtype (unsigned when ``lo >= 0``) that holds ``lo..hi``."""
    if lo >= 0:
        return smallest_uint_dtype(hi)
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    raise ValueError(f"{lo}..{hi} does not fit in 64 bits")


class Prompter(ABC, Generic[C]):
    """Turns a task config into examples, token arrays and a versioned dataset.

    Character-level tasks set ``VOCAB`` (token id = index in the string), ``MASK_CHAR`` and, when
    prompts have variable length, ``PAD_CHAR`` and ``max_seq_len``; tokenisation then comes for free.
    Bump ``GENERATOR_VERSION`` whenever the generator's output changes, so old caches are not reused.
    """

    VOCAB: ClassVar[str] = ""
    """Characters of the vocabulary in token order."""
    MASK_CHAR: ClassVar[str] = "."
    """Answer character for positions without a target."""
    PAD_CHAR: ClassVar[str | None] = None
    """Prompt character used to right-pad variable-length prompts (None: prompts have a fixed length)."""
    GENERATOR_VERSION: ClassVar[int] = 1
    """Part of the data hash: bump it when the generator changes."""
    TOKEN_COLUMNS: ClassVar[tuple[str, ...]] = TOKEN_COLUMNS
    """The token columns of its batches and datasets (the module's ``TOKEN_COLUMNS``)."""
    CHUNK_SIZE: ClassVar[int] = 4096
    """Examples per generation chunk; each chunk has its own seed, so output is independent of num_proc."""

    def __init__(self, config: C) -> None:
        self.config = config
        vocab = self.VOCAB
        if vocab:
            if not vocab.isascii() or len(set(vocab)) != len(vocab):
                raise ValueError(f"{type(self).__name__}.VOCAB must be distinct ASCII characters, got {vocab!r}")
            for attr in ("MASK_CHAR", "PAD_CHAR"):
                char = getattr(self, attr)
                if char is not None and (len(char) != 1 or char not in vocab):
                    raise ValueError(f"{type(self).__name__}.{attr}={char!r} must be one character of VOCAB")
            self._char_to_id = np.full(256, -1, dtype=np.int16)
            self._char_to_id[np.frombuffer(vocab.encode("ascii"), dtype=np.uint8)] = np.arange(len(vocab))
            self._id_to_char = np.frombuffer(vocab.encode("ascii"), dtype=np.uint8)

    # --- vocabulary -------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        if not self.VOCAB:
            raise NotImplementedError(f"{type(self).__name__} sets no VOCAB: override vocab_size and tokenize")
        return len(self.VOCAB)

    @property
    def mask_token(self) -> int:
        """Token id of ``MASK_CHAR`` (answer positions without a target)."""
        return self.VOCAB.index(self.MASK_CHAR)

    @property
    def pad_token(self) -> int | None:
        """Token id of ``PAD_CHAR``, or None when prompts have a fixed length."""
        return None if self.PAD_CHAR is None else self.VOCAB.index(self.PAD_CHAR)

    @property
    def token_dtype(self) -> np.dtype[Any]:
        """Smallest unsigned dtype holding every token id (how token columns are stored)."""
        return smallest_uint_dtype(self.vocab_size - 1)

    @property
    def max_seq_len(self) -> int | None:
        """Length every prompt is padded to; None means all prompts already have one fixed length."""
        return None

    def tokenize_array(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as an int64 array; ``ValueError`` names characters outside the vocabulary."""
        if not self.VOCAB:
            raise NotImplementedError(f"{type(self).__name__} sets no VOCAB: override tokenize")
        if text.isascii():
            ids = self._char_to_id[np.frombuffer(text.encode("ascii"), dtype=np.uint8)].astype(np.int64)
            if not ids.size or ids.min() >= 0:
                return ids
        bad = sorted({ch for ch in text if ch not in self.VOCAB})
        raise ValueError(f"characters {bad} are not in the {type(self).__name__} vocabulary {self.VOCAB!r}")

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        ids: list[int] = self.tokenize_array(text).tolist()
        return ids

    def detokenize(self, tokens: npt.ArrayLike) -> str:
        """Text of a 1-D sequence of token ids (a list, numpy array or CPU torch tensor)."""
        if not self.VOCAB:
            raise NotImplementedError(f"{type(self).__name__} sets no VOCAB: override detokenize")
        raw = np.asarray(tokens)
        if raw.size and raw.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers, got {raw.dtype} ({raw.reshape(-1)[:5].tolist()}...)")
        ids = raw.astype(np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.VOCAB)):
            raise ValueError(f"token ids must be in [0, {len(self.VOCAB)}), got {ids.min()}..{ids.max()}")
        return self._id_to_char[ids].tobytes().decode("ascii")

    # --- generation -------------------------------------------------------------------------------

    @abstractmethod
    def get_prompt(self, rng: np.random.Generator) -> tuple[str, str, dict[str, list[int]]]:
        """One example: prompt, aligned answer, per-position metadata (one int per prompt character)."""

    def get_prompts(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """``n`` examples as arrays: ``prompt`` and ``answer`` token ids ``(n, T)``, metadata ``(n, T)``.

        This default loops over ``get_prompt``. Prompts shorter than ``T = max_seq_len`` are right-padded
        (prompt: ``PAD_CHAR``, answer: ``MASK_CHAR``, metadata: ``META_PAD``); with ``max_seq_len`` None
        every prompt must have the same length. Overrides must return the same columns and
        distribution; they may also return 1-D ``(n,)`` per-example metadata.
        """
        examples = [self.get_prompt(rng) for _ in range(n)]
        lengths = [len(p) for p, _, _ in examples]
        width = self.max_seq_len
        if width is None:
            if len(set(lengths)) > 1:
                raise ValueError(
                    f"{type(self).__name__} makes prompts of different lengths ({min(lengths)}..{max(lengths)}): "
                    "set PAD_CHAR and override max_seq_len"
                )
            width = lengths[0] if lengths else 0
        elif max(lengths, default=0) > width:
            raise ValueError(f"{type(self).__name__} made a prompt of length {max(lengths)} > max_seq_len={width}")
        if min(lengths, default=width) < width and self.pad_token is None:
            raise ValueError(f"{type(self).__name__} needs PAD_CHAR to pad prompts to max_seq_len={width}")
        keys = sorted(examples[0][2]) if examples else []
        prompt = np.full((n, width), self.pad_token if self.pad_token is not None else 0, dtype=self.token_dtype)
        answer = np.full((n, width), self.mask_token, dtype=self.token_dtype)
        meta = {k: np.full((n, width), META_PAD, dtype=np.int64) for k in keys}
        for i, (p, a, m) in enumerate(examples):
            if len(a) != len(p):
                raise ValueError(f"answer length {len(a)} != prompt length {len(p)}: the answer must be aligned")
            if sorted(m) != keys:
                raise ValueError(f"metadata keys differ between examples: {keys} vs {sorted(m)}")
            prompt[i, : len(p)] = self.tokenize_array(p)
            answer[i, : len(a)] = self.tokenize_array(a)
            for k in keys:
                if len(m[k]) != len(p):
                    raise ValueError(f"metadata {k!r} has {len(m[k])} values for a prompt of length {len(p)}")
                meta[k][i, : len(p)] = m[k]
        return {"prompt": prompt, "answer": answer, **meta}

    def at_step(self, step: int) -> "Prompter[C]":
        """The prompter that makes the streamed examples of training step ``step``: a task with a curriculum
        returns one for that stage (e.g. shorter prompts early on). Default: this one at every step."""
        return self

    @property
    def is_vectorised(self) -> bool:
        """Whether this prompter overrides ``get_prompts`` (then ``make_dataset`` defaults to one process)."""
        return type(self).get_prompts is not Prompter.get_prompts

    def make_dataset(
        self,
        path: str | os.PathLike[str] | None = None,
        train_size: int | None = None,
        test_size: int | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> "hf_datasets.DatasetDict":
        """The prompter's cached dataset, in the call form users code against: each argument given replaces the
        config's ``dataset_path``, ``train_size``, ``test_size`` or ``data_seed`` (``iluvattnshun.compat``);
        ``kwargs`` go to ``iluvattnshun.datasets.make_dataset``, which builds or loads it."""
        # Imported here: the dataset cache loads Hugging Face datasets, which a prompter alone never needs.
        from iluvattnshun.compat import make_dataset

        return make_dataset(self, path, train_size, test_size, seed, **kwargs)

    def sample_batch(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """``get_prompts(rng, n)``, validated and stored in the smallest dtypes (as datasets hold it).

        Raises ``ValueError`` naming the column when a shape, dtype or token id is wrong.
        """
        cols = self.get_prompts(rng, n)
        name = type(self).__name__
        for key in TOKEN_COLUMNS:
            if key not in cols:
                raise ValueError(f"{name}.get_prompts must return a {key!r} column, got {sorted(cols)}")
        shape = cols["prompt"].shape
        if len(shape) != 2 or shape[0] != n or cols["answer"].shape != shape:
            raise ValueError(
                f"{name}.get_prompts: prompt/answer must both be ({n}, T), got {shape}, {cols['answer'].shape}"
            )
        out: dict[str, np.ndarray] = {}
        for key, arr in cols.items():
            arr = np.asarray(arr)
            if arr.dtype.kind not in "iu":
                raise ValueError(f"{name}.get_prompts column {key!r} must hold integers, got {arr.dtype}")
            if arr.shape[0] != n or (arr.ndim == 2 and arr.shape[1] != shape[1]) or arr.ndim > 2:
                raise ValueError(f"{name}.get_prompts column {key!r} must be ({n},) or {shape}, got {arr.shape}")
            lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
            if key in TOKEN_COLUMNS:
                if lo < 0 or hi >= self.vocab_size:
                    raise ValueError(
                        f"{name}.get_prompts column {key!r} has token ids {lo}..{hi} outside the vocabulary"
                    )
                out[key] = arr.astype(self.token_dtype, copy=False)
            else:
                out[key] = arr.astype(smallest_int_dtype(lo, hi), copy=False)
        return out

    @classmethod
    def config_class(cls) -> type[PromptConfig]:
        """The config class this prompter is declared for (``Prompter[TheConfig]``)."""
        config_class: type[PromptConfig] = declared_config_class(cls, Prompter)
        return config_class
