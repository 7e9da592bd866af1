"""Synthetic prompt tasks: ``PromptConfig`` + ``Prompter``, and versioned Hugging Face datasets.

A task describes the parameters that shape its data in a ``PromptConfig`` subclass and its generator
in a ``Prompter`` subclass:

- ``get_prompt(rng) -> (prompt, answer, metadata)`` makes one example as strings. The answer is
  aligned character for character with the prompt; ``MASK_CHAR`` marks positions without a target.
  Metadata values are per-position integer lists (one value per prompt character), e.g. ``depth``.
- ``get_prompts(rng, n)`` makes ``n`` examples at once as token arrays. The default loops over
  ``get_prompt``; fast tasks override it with a vectorised numpy version.
- ``make_dataset(path, train_size, test_size, seed)`` caches a ``DatasetDict`` on disk under
  ``path/<PrompterClass>_<hash>``; the hash covers ``config.data_hash_params()``, the prompter
  class name, its ``GENERATOR_VERSION`` and the build arguments, so nothing else triggers a rebuild.

Dataset columns (every split): ``prompt`` and ``answer`` token ids, shape ``(T,)`` per row, stored as
the smallest unsigned integer type that holds the vocabulary; one column per metadata key (smallest
integer type that holds its values); with ``keep_strings`` also ``prompt_text`` / ``answer_text``.
Prompts shorter than ``max_seq_len`` are right-padded with ``PAD_CHAR`` (answer: ``MASK_CHAR``,
metadata: ``META_PAD``).

The cache records its spec and file sizes; a cache that does not load or does not match is rebuilt
with a ``DatasetCacheWarning``. ``dataset_arrays`` turns a split into numpy arrays (what
``iluvattnshun.data.ArrayLoader`` batches from) and ``leakage_stats`` counts train duplicates and test
prompts that also occur in train.
"""

import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import time
import uuid
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Generic, Iterator, Mapping, Sequence, TypeVar

import datasets
import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]
from datasets.table import InMemoryTable
from tqdm import tqdm

META_PAD = -1
"""Metadata value on padding positions (those positions never carry a target)."""

_META_FILE = "iluvattnshun_dataset.json"
_OWNER_FILE = "owner.json"
_TOKEN_COLUMNS = ("prompt", "answer")
_SPLITS = ("train", "test")
_MIN_EXAMPLES_FOR_PROCESSES = 20_000


class DatasetCacheWarning(UserWarning):
    """A cached dataset could not be used and is being rebuilt."""


class _CacheError(Exception):
    """Why a cached dataset directory is unusable."""


@dataclass(kw_only=True)
class PromptConfig(ABC):
    """Parameters that shape a synthetic dataset.

    Subclasses add task fields, return the names of those that change the generated data from
    ``data_hash_params()``, and reject impossible values in ``validate_data_params()``. All checks
    run at construction, so a bad config fails before any work starts.
    """

    train_size: int = 10_000
    """Number of training examples in the cached dataset."""
    test_size: int = 1_000
    """Number of test examples in the cached dataset."""
    data_seed: int = 42
    """Seed of the dataset generator (separate from the training seed)."""
    dataset_path: str = "data"
    """Directory of cached datasets; each lives in a subdirectory named by prompter and data hash."""

    def __post_init__(self) -> None:
        # Cooperative: a task config may also inherit from TrainerConfig, which has its own checks.
        parent_post_init = getattr(super(), "__post_init__", None)
        if parent_post_init is not None:
            parent_post_init()
        names = {f.name for f in fields(self)}
        params = self.data_hash_params()
        unknown = [p for p in params if p not in names]
        if unknown:
            raise ValueError(
                f"{type(self).__name__}.data_hash_params() names {unknown}, which are not fields; "
                f"fields are {sorted(names)}"
            )
        for name in ("train_size", "test_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.validate_data_params()

    @abstractmethod
    def data_hash_params(self) -> list[str]:
        """Names of the fields whose values shape the generated data (and so version the cache)."""

    def validate_data_params(self) -> None:
        """Raise ``ValueError`` naming the problem if the task parameters are impossible."""

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
    CHUNK_SIZE: ClassVar[int] = 4096
    """Examples per generation chunk; each chunk has its own seed, so output is independent of num_proc."""

    def __init__(self, config: C, seed: int = 42) -> None:
        """Args:
        config: the task config.
        seed: default seed of ``make_dataset`` and ``StreamingDataset``.
        """
        self.config = config
        self.seed = seed
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
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
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

    @property
    def is_vectorised(self) -> bool:
        """Whether this prompter overrides ``get_prompts`` (then ``make_dataset`` defaults to one process)."""
        return type(self).get_prompts is not Prompter.get_prompts

    def generate_chunk(self, seed: int, split: int, chunk: int, n: int) -> dict[str, np.ndarray]:
        """Chunk ``chunk`` of split ``split`` (0 train, 1 test, 2 streaming): checked, compact arrays.

        Each chunk draws from its own ``SeedSequence(seed, spawn_key=(split, chunk))`` stream, so the
        result does not depend on how chunks are spread over processes.
        """
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split, chunk)))
        return self.sample_batch(rng, n)

    def sample_batch(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """``get_prompts(rng, n)``, validated and stored in the smallest dtypes (as datasets hold it).

        Raises ``ValueError`` naming the column when a shape, dtype or token id is wrong.
        """
        cols = self.get_prompts(rng, n)
        name = type(self).__name__
        for key in _TOKEN_COLUMNS:
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
            if key in _TOKEN_COLUMNS:
                if lo < 0 or hi >= self.vocab_size:
                    raise ValueError(
                        f"{name}.get_prompts column {key!r} has token ids {lo}..{hi} outside the vocabulary"
                    )
                out[key] = arr.astype(self.token_dtype, copy=False)
            else:
                out[key] = arr.astype(smallest_int_dtype(lo, hi), copy=False)
        return out

    # --- datasets ---------------------------------------------------------------------------------

    def data_spec(self, **build_args: Any) -> dict[str, Any]:
        """Everything that determines a dataset: prompter, generator version, data params, build args."""
        return {
            "prompter": type(self).__qualname__,
            "generator_version": self.GENERATOR_VERSION,
            "chunk_size": self.CHUNK_SIZE,
            "params": self.config.data_config(),
            **build_args,
        }

    def data_hash(self, **build_args: Any) -> str:
        """Stable 16-hex-digit hash of ``data_spec(**build_args)``."""
        text = json.dumps(self.data_spec(**build_args), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def dataset_dir(
        self,
        path: str | os.PathLike[str],
        train_size: int,
        test_size: int,
        seed: int | None = None,
        keep_strings: bool = False,
        dedup_test: bool = False,
    ) -> Path:
        """Where ``make_dataset`` with these arguments caches its dataset."""
        build = self._build_args(train_size, test_size, seed, keep_strings, dedup_test)
        return Path(path) / f"{type(self).__name__}_{self.data_hash(**build)}"

    def _build_args(
        self, train_size: int, test_size: int, seed: int | None, keep_strings: bool, dedup_test: bool
    ) -> dict[str, Any]:
        for name, value in (("train_size", train_size), ("test_size", test_size)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        return {
            "train_size": int(train_size),
            "test_size": int(test_size),
            "seed": int(self.seed if seed is None else seed),
            "keep_strings": bool(keep_strings),
            "dedup_test": bool(dedup_test),
        }

    def make_dataset(
        self,
        path: str | os.PathLike[str],
        train_size: int,
        test_size: int,
        seed: int | None = None,
        num_proc: int | None = None,
        keep_strings: bool = False,
        dedup_test: bool = False,
        progress: bool = True,
    ) -> datasets.DatasetDict:
        """Load the cached dataset for these arguments, generating and saving it first if needed.

        Args:
            path: parent directory; the dataset lives in ``path/<PrompterClass>_<hash>``.
            train_size: number of training examples.
            test_size: number of test examples (fewer after ``dedup_test``).
            seed: generator seed (default: the prompter's seed). Same seed, same dataset.
            num_proc: generator processes. None: one for vectorised prompters and builds under 20,000
                examples, else the CPU count (at most 8). The output does not depend on it.
            keep_strings: also store ``prompt_text`` / ``answer_text`` string columns.
            dedup_test: drop test examples whose prompt also occurs in train.
            progress: show a progress bar.

        Returns:
            A memory-mapped ``DatasetDict`` with ``train`` and ``test`` splits.

        A cache that fails to load, or whose recorded spec or file sizes differ, is rebuilt with a
        ``DatasetCacheWarning``. The dataset is written to a temporary directory and renamed into
        place, so an interrupted build leaves no dataset behind.
        """
        build = self._build_args(train_size, test_size, seed, keep_strings, dedup_test)
        if num_proc is not None and (not isinstance(num_proc, int) or num_proc < 1):
            raise ValueError(f"num_proc must be a positive integer or None, got {num_proc!r}")
        spec = json.loads(json.dumps(self.data_spec(**build), default=str))
        root = Path(path)
        final = root / f"{type(self).__name__}_{self.data_hash(**build)}"
        root.mkdir(parents=True, exist_ok=True)
        problem = None
        if final.exists():
            try:
                return _load_checked(final, spec)
            except _CacheError as e:
                problem = e
        # One builder at a time per dataset: runs of a sweep started together wait for the first one's build.
        with _exclusive_lock(root / f".lock-{final.name}"):
            _remove_stale_temporaries(root)
            if final.exists():
                try:
                    return _load_checked(final, spec)
                except _CacheError as e:
                    problem = e
            if problem is not None:
                warnings.warn(
                    f"dataset cache {final} is unusable ({problem}); rebuilding it", DatasetCacheWarning, stacklevel=2
                )
            self._build_into(final, spec, build, num_proc, progress)
        return _load_checked(final, spec)

    def _build_into(
        self, final: Path, spec: Mapping[str, Any], build: Mapping[str, Any], num_proc: int | None, progress: bool
    ) -> None:
        """Generate and save the dataset in a temporary directory, then rename it to ``final``."""
        tmp = final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        (tmp / _OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        bars_were_on = datasets.is_progress_bar_enabled()
        try:
            start = time.perf_counter()
            dsd, leakage = self._build_dataset(build, num_proc, progress)
            if not progress:
                datasets.disable_progress_bars()
            dsd.save_to_disk(str(tmp))
            del dsd
            (tmp / _OWNER_FILE).unlink()
            meta = {
                "spec": spec,
                "num_rows": {split: leakage[f"{split}_size"] for split in _SPLITS},
                "files": {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()},
                "leakage": leakage,
                "build_seconds": round(time.perf_counter() - start, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            _write_json_atomic(tmp / _META_FILE, meta)
            _install(tmp, final, spec)
        finally:
            if not progress and bars_were_on:
                datasets.enable_progress_bars()
            shutil.rmtree(tmp, ignore_errors=True)

    def _build_dataset(
        self, build: Mapping[str, Any], num_proc: int | None, progress: bool
    ) -> tuple[datasets.DatasetDict, dict[str, int]]:
        """Generate both splits in memory (compact dtypes, zero-copy into Arrow)."""
        sizes = {"train": build["train_size"], "test": build["test_size"]}
        jobs = [
            (split_idx, chunk, min(self.CHUNK_SIZE, sizes[split] - start))
            for split_idx, split in enumerate(_SPLITS)
            for chunk, start in enumerate(range(0, sizes[split], self.CHUNK_SIZE))
        ]
        if num_proc is None:
            # Starting a process costs about a second (imports); worth it only for slow, big builds.
            small = sum(sizes.values()) < _MIN_EXAMPLES_FOR_PROCESSES
            num_proc = 1 if self.is_vectorised or small else min(os.cpu_count() or 1, 8)
        num_proc = min(num_proc, len(jobs))
        chunks: dict[str, list[dict[str, np.ndarray]]] = {split: [] for split in _SPLITS}
        seed = build["seed"]
        with tqdm(
            total=sum(sizes.values()), desc=f"Generating {type(self).__name__}", unit="ex", disable=not progress
        ) as bar:
            if num_proc == 1:
                for split_idx, chunk, n in jobs:
                    chunks[_SPLITS[split_idx]].append(self.generate_chunk(seed, split_idx, chunk, n))
                    bar.update(n)
            else:
                # spawn, not fork: the parent may hold threads (torch, tqdm) that fork would copy mid-state.
                ctx = multiprocessing.get_context("spawn")
                pool = concurrent.futures.ProcessPoolExecutor(num_proc, mp_context=ctx)
                try:
                    futures = [pool.submit(self.generate_chunk, seed, s, c, n) for s, c, n in jobs]
                    for (split_idx, _, n), future in zip(jobs, futures):
                        chunks[_SPLITS[split_idx]].append(future.result())
                        bar.update(n)
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)  # on Ctrl-C or a failed chunk, stop at once
                    raise
                pool.shutdown()
        columns = _merge_chunk_schemas(chunks, type(self).__name__)
        if build["dedup_test"]:
            in_train = _rows_in(_split_rows(chunks["train"], "prompt"), _split_rows(chunks["test"], "prompt"))
            if in_train.all():
                raise ValueError("dedup_test removed every test example: the task has too few distinct prompts")
            keep = ~in_train
            offsets = np.cumsum([0] + [len(c["prompt"]) for c in chunks["test"]])
            chunks["test"] = [
                {k: v[keep[lo:hi]] for k, v in c.items()}
                for c, lo, hi in zip(chunks["test"], offsets[:-1], offsets[1:])
            ]
        leakage = _leakage(_split_rows(chunks["train"], "prompt"), _split_rows(chunks["test"], "prompt"))
        splits = {}
        for split in _SPLITS:
            arrays: dict[str, Any] = {}
            for key in columns:
                arrays[key] = pa.chunked_array(
                    [_to_arrow(c[key]) for c in chunks[split]], type=_arrow_type(chunks[split][0][key])
                )
            if build["keep_strings"]:
                for key in _TOKEN_COLUMNS:
                    texts = [self._id_to_char[c[key]].view(f"S{c[key].shape[1]}").ravel() for c in chunks[split]]
                    arrays[f"{key}_text"] = pa.chunked_array([pa.array(t).cast(pa.string()) for t in texts])
            table = InMemoryTable(pa.table(arrays))
            # An explicit fingerprint: otherwise datasets hashes (pickles) the whole table, using GBs of memory.
            fingerprint = hashlib.sha256(f"{self.data_hash(**build)}-{split}".encode()).hexdigest()[:16]
            splits[split] = datasets.Dataset(table, split=datasets.NamedSplit(split), fingerprint=fingerprint)
            del arrays, table
        return datasets.DatasetDict(splits), leakage


# --- leakage ----------------------------------------------------------------------------------------


def row_hashes(rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash of every row of a 2-D integer array (equal rows, equal hashes)."""
    rows = np.ascontiguousarray(rows)
    n = rows.shape[0]
    row_bytes = rows.reshape(n, -1).view(np.uint8).reshape(n, -1)
    words = (row_bytes.shape[1] + 7) // 8
    out = np.empty(n, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    block = 65536  # keeps each block's words in cache while folding column by column
    for start in range(0, n, block):
        part = row_bytes[start : start + block]
        padded = np.zeros((part.shape[0], words * 8), dtype=np.uint8)
        padded[:, : part.shape[1]] = part
        w = padded.view(np.uint64)
        h = np.full(part.shape[0], 0xCBF29CE484222325, dtype=np.uint64)
        for j in range(words):
            h ^= w[:, j]
            h *= prime
        out[start : start + part.shape[0]] = h
    return out


class _Rows:
    """Rows of a list of 2-D chunks addressed by one global index, without concatenating them."""

    def __init__(self, chunks: Sequence[np.ndarray]) -> None:
        self.chunks = list(chunks)
        self.offsets = np.cumsum([0] + [len(c) for c in self.chunks])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        row: np.ndarray = self.chunks[k][i - int(self.offsets[k])]
        return row

    def hashes(self) -> np.ndarray:
        if not self.chunks:
            return np.empty(0, dtype=np.uint64)
        return np.concatenate([row_hashes(c) for c in self.chunks])


def _distinct_count(rows: _Rows) -> int:
    """Exact number of distinct rows (hash, then compare bytes within equal-hash groups)."""
    if len(rows) == 0:
        return 0
    h = rows.hashes()
    order = np.argsort(h, kind="stable")
    hs = h[order]
    starts = np.flatnonzero(np.r_[True, hs[1:] != hs[:-1]])
    sizes = np.diff(np.r_[starts, len(hs)])
    count = len(starts)
    for s, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        count += len({rows[int(i)].tobytes() for i in order[s : s + size]}) - 1
    return count


def _rows_in(haystack: _Rows, needles: _Rows) -> np.ndarray:
    """Boolean mask over ``needles``: does the exact row occur in ``haystack``?"""
    hh = haystack.hashes()
    order = np.argsort(hh, kind="stable")
    hs = hh[order]
    nh = needles.hashes()
    lo = np.searchsorted(hs, nh, side="left")
    hi = np.searchsorted(hs, nh, side="right")
    found = np.zeros(len(needles), dtype=bool)
    for i in np.flatnonzero(hi > lo):
        row = needles[int(i)]
        found[i] = any(np.array_equal(haystack[int(j)], row) for j in order[lo[i] : hi[i]])
    return found


def _leakage(train: _Rows, test: _Rows) -> dict[str, int]:
    train_unique = _distinct_count(train)
    return {
        "train_size": len(train),
        "train_unique": train_unique,
        "train_duplicates": len(train) - train_unique,
        "test_size": len(test),
        "test_unique": _distinct_count(test),
        "test_in_train": int(_rows_in(train, test).sum()),
    }


def leakage_stats(dsd: datasets.DatasetDict, column: str = "prompt") -> dict[str, int]:
    """Train duplicates and test examples whose ``column`` also occurs in train (exact, vectorised).

    Returns:
        ``train_size``, ``train_unique``, ``train_duplicates``, ``test_size``, ``test_unique``,
        ``test_in_train``.
    """
    train = dataset_arrays(dsd["train"], [column])[column]
    test = dataset_arrays(dsd["test"], [column])[column]
    return _leakage(_Rows([train]), _Rows([test]))


# --- arrow <-> numpy ----------------------------------------------------------------------------------


def dataset_arrays(ds: datasets.Dataset, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Numeric columns of a dataset as numpy arrays in their stored dtype, without per-row Python.

    Fixed-length list columns become ``(n, T)`` arrays, scalar columns ``(n,)``. Goes through Arrow
    directly: much faster than ``with_format("numpy")``, which also widens everything to int64.

    Args:
        ds: a dataset (select / shuffle / filter views are honoured).
        columns: names to extract; default every numeric column.
    """
    table = ds.with_format("arrow")[:]
    names = (
        list(columns)
        if columns is not None
        else [n for n in table.column_names if _is_numeric(table.schema.field(n).type)]
    )
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValueError(f"dataset has no columns {missing}; it has {table.column_names}")
    out: dict[str, np.ndarray] = {}
    for name in names:
        typ = table.schema.field(name).type
        if not _is_numeric(typ):
            raise ValueError(
                f"column {name!r} has type {typ}; only numeric and fixed-length numeric list columns convert"
            )
        col = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(typ):
            out[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), typ.list_size)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def _is_numeric(typ: Any) -> bool:
    if pa.types.is_fixed_size_list(typ):
        typ = typ.value_type
    return bool(pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ))


def _to_arrow(arr: np.ndarray) -> Any:
    """Zero-copy Arrow view of a ``(n,)`` or ``(n, T)`` array (the latter as a fixed-size list)."""
    arr = np.ascontiguousarray(arr)
    if arr.ndim == 1:
        return pa.array(arr)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])


def _arrow_type(arr: np.ndarray) -> Any:
    value = pa.from_numpy_dtype(arr.dtype)
    return value if arr.ndim == 1 else pa.list_(value, arr.shape[1])


def _split_rows(chunks: list[dict[str, np.ndarray]], key: str) -> _Rows:
    return _Rows([c[key] for c in chunks])


def _merge_chunk_schemas(chunks: dict[str, list[dict[str, np.ndarray]]], name: str) -> list[str]:
    """Make every chunk share column names, widths and dtypes (casting metadata to a common dtype)."""
    all_chunks = [c for split in _SPLITS for c in chunks[split]]
    keys = [*_TOKEN_COLUMNS, *sorted(k for k in all_chunks[0] if k not in _TOKEN_COLUMNS)]
    for c in all_chunks:
        if sorted(c) != sorted(keys):
            raise ValueError(f"{name}.get_prompts returned different columns across calls: {keys} vs {sorted(c)}")
    for key in keys:
        shapes = {c[key].shape[1:] for c in all_chunks}
        if len(shapes) > 1:
            raise ValueError(
                f"{name}.get_prompts returned column {key!r} with different widths {sorted(shapes)} across chunks: "
                "set PAD_CHAR and override max_seq_len"
            )
        dtype = np.result_type(*{c[key].dtype for c in all_chunks})
        for c in all_chunks:
            c[key] = c[key].astype(dtype, copy=False)
    return keys


# --- cache directory --------------------------------------------------------------------------------


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _load_checked(directory: Path, spec: Mapping[str, Any]) -> datasets.DatasetDict:
    """Load a cached dataset, or raise ``_CacheError`` saying why it cannot be trusted."""
    try:
        meta = json.loads((directory / _META_FILE).read_text())
        recorded, files, num_rows = meta["spec"], dict(meta["files"]), dict(meta["num_rows"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _CacheError(f"cannot read {_META_FILE}: {type(e).__name__}: {e}") from None
    if recorded != spec:
        raise _CacheError(f"recorded spec {recorded} differs from the requested {dict(spec)}")
    for rel, size in files.items():
        p = directory / rel
        actual = p.stat().st_size if p.is_file() else None
        if actual != size:
            raise _CacheError(f"{rel} has {actual} bytes, {size} were written")
    try:
        dsd = datasets.load_from_disk(str(directory))
    except Exception as e:  # any failure inside datasets/arrow means the files are not usable
        raise _CacheError(f"load_from_disk failed: {type(e).__name__}: {e}") from None
    if not isinstance(dsd, datasets.DatasetDict) or sorted(dsd) != sorted(_SPLITS):
        raise _CacheError("not a DatasetDict with train and test splits")
    for split in _SPLITS:
        if dsd[split].num_rows != num_rows.get(split):
            raise _CacheError(f"{split} has {dsd[split].num_rows} rows, {num_rows.get(split)} were written")
    return dsd


def _install(tmp: Path, final: Path, spec: Mapping[str, Any]) -> None:
    """Rename the finished ``tmp`` into ``final``, replacing an unusable old cache."""
    trash = None
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(final, trash)
        except FileNotFoundError:
            trash = None  # another process moved it meanwhile
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.exists():
            raise
        # Another process installed the same dataset first; keep theirs if it is good.
        try:
            _load_checked(final, spec)
        except _CacheError as e:
            raise RuntimeError(
                f"could not install dataset {final}: a concurrent build left it unusable ({e})"
            ) from None
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_temporaries(root: Path) -> None:
    """Delete temp dirs of builds killed on this host (their process is gone) and old trash dirs."""
    host = socket.gethostname()
    for p in [*root.glob(".tmp-*"), *root.glob(".trash-*")]:
        try:
            if p.name.startswith(".trash-"):
                stale = time.time() - p.stat().st_mtime > 3600
            else:
                try:
                    owner = json.loads((p / _OWNER_FILE).read_text())
                    stale = owner["host"] == host and not _pid_alive(int(owner["pid"]))
                except (OSError, ValueError, KeyError, TypeError):
                    # No owner file: the build got past saving, or was killed at birth; old ones are safe to drop.
                    stale = time.time() - p.stat().st_mtime > 3600
        except FileNotFoundError:
            continue  # another process removed it meanwhile
        if stale:
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (released by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock; concurrent builds then just race to rename
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
