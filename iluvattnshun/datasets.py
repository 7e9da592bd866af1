"""Versioned dataset caches of a prompter's examples: ``make_dataset(prompter)``, and reading them back.

``make_dataset(prompter)`` caches a ``DatasetDict`` (``train`` and ``test`` splits) on disk under
``<dataset_path>/<PrompterClass>_<hash>``, built from the prompter's config alone: the hash covers the
prompter class, its ``GENERATOR_VERSION`` and ``CHUNK_SIZE``, ``config.data_hash_params()`` and the build
parameters (sizes, ``data_seed``, ``dedup_test``), so nothing else triggers a rebuild.

Columns (every split): ``prompt`` and ``answer`` token ids, shape ``(T,)`` per row, stored as the smallest
unsigned integer type that holds the vocabulary; one column per metadata key (smallest integer type that holds
its values); with ``keep_strings`` also ``prompt_text`` / ``answer_text``.

Each chunk of ``CHUNK_SIZE`` examples draws from ``SeedSequence(data_seed, spawn_key=(split, chunk))``, so the
data does not depend on how many processes generate it. A build goes to a temporary directory that is renamed
into place; one builder at a time holds a lock per dataset; a cache that does not load, or whose recorded spec
or files do not match, is rebuilt with a ``DatasetCacheWarning``. ``dataset_arrays`` turns a split into numpy
arrays (what ``iluvattnshun.data.ArrayLoader`` batches from); ``leakage_stats`` counts train duplicates and
test prompts that also occur in train.

One concept, the on-disk cache: building, locking, verifying and reading it back share the hash and the file
layout, which nothing outside this module knows.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol, Sequence

import datasets
import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import xxhash
from datasets.table import InMemoryTable
from tqdm import tqdm

from iluvattnshun.files import atomic_write, file_lock

META_FILE = "iluvattnshun_dataset.json"
"""The file in a cached dataset that records its spec, sizes, files and leakage statistics."""

_OWNER_FILE = "owner.json"
_SPLITS = ("train", "test")
_MIN_EXAMPLES_FOR_PROCESSES = 20_000


class DataConfig(Protocol):
    """The config fields a dataset is built from: a dataclass (``iluvattnshun.prompter.PromptConfig`` is one)."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    @property
    def train_size(self) -> int: ...
    @property
    def test_size(self) -> int: ...
    @property
    def data_seed(self) -> int: ...
    @property
    def dedup_test(self) -> bool: ...
    @property
    def dataset_path(self) -> str: ...
    def data_hash_params(self) -> list[str]: ...
    def data_config(self) -> dict[str, Any]: ...


class DataSource(Protocol):
    """What this module needs of a prompter (``iluvattnshun.prompter.Prompter`` is one): its config, its class's
    data constants and its batches. A protocol, so that the dataset cache does not depend on the prompter's module
    (which reaches this one through ``Prompter.make_dataset``)."""

    VOCAB: ClassVar[str]
    TOKEN_COLUMNS: ClassVar[tuple[str, ...]]
    GENERATOR_VERSION: ClassVar[int]
    CHUNK_SIZE: ClassVar[int]

    def __init__(self, config: Any) -> None: ...
    @property
    def config(self) -> DataConfig: ...
    @property
    def is_vectorised(self) -> bool: ...
    @property
    def vocab_size(self) -> int: ...
    def sample_batch(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]: ...


class DatasetCacheWarning(UserWarning):
    """A cached dataset could not be used and is being rebuilt."""


class _CacheError(Exception):
    """Why a cached dataset directory is unusable."""


# --- building -----------------------------------------------------------------------------------------


def data_spec(prompter: DataSource, keep_strings: bool = False) -> dict[str, Any]:
    """Everything that determines a prompter's dataset: class, generator version, data and build parameters."""
    config = prompter.config
    return {
        "prompter": type(prompter).__qualname__,
        "generator_version": prompter.GENERATOR_VERSION,
        "chunk_size": prompter.CHUNK_SIZE,
        "params": config.data_config(),
        "train_size": config.train_size,
        "test_size": config.test_size,
        "seed": config.data_seed,
        "keep_strings": bool(keep_strings),
        "dedup_test": config.dedup_test,
    }


def data_hash(prompter: DataSource, keep_strings: bool = False) -> str:
    """Stable 16-hex-digit hash of ``data_spec``."""
    text = json.dumps(data_spec(prompter, keep_strings), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dataset_dir(prompter: DataSource, keep_strings: bool = False) -> Path:
    """Where ``make_dataset`` caches the prompter's dataset: ``<dataset_path>/<PrompterClass>_<hash>``."""
    return Path(prompter.config.dataset_path) / f"{type(prompter).__name__}_{data_hash(prompter, keep_strings)}"


def make_dataset(
    prompter: DataSource, num_proc: int | None = None, keep_strings: bool = False, progress: bool = True
) -> datasets.DatasetDict:
    """Load the prompter's cached dataset, generating and saving it first if needed.

    Args:
        prompter: its config gives the sizes, seed, ``dedup_test`` and ``dataset_path``.
        num_proc: generator processes. None: one for vectorised prompters and builds under 20,000 examples,
            else the CPU count (at most 8). The output does not depend on it.
        keep_strings: also store ``prompt_text`` / ``answer_text`` string columns.
        progress: show a progress bar.

    Returns:
        A memory-mapped ``DatasetDict`` with ``train`` and ``test`` splits.
    """
    if num_proc is not None and (not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"num_proc must be a positive integer or None, got {num_proc!r}")
    spec = json.loads(json.dumps(data_spec(prompter, keep_strings), default=str))
    final = dataset_dir(prompter, keep_strings)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    problem = None
    if final.exists():
        try:
            return _load_verified(final, spec, prompter)
        except _CacheError as e:
            problem = e
    # One builder at a time per dataset: runs of a sweep started together wait for the first one's build.
    with file_lock(root / f".lock-{final.name}"):
        _remove_stale_temporaries(root)
        if final.exists():
            try:
                return _load_verified(final, spec, prompter)
            except _CacheError as e:
                problem = e
        if problem is not None:
            warnings.warn(
                f"dataset cache {final} is unusable ({problem}); rebuilding it", DatasetCacheWarning, stacklevel=2
            )
        _build_into(prompter, final, spec, num_proc, progress)
    return _load_checked(final, spec)


def dataset_meta(prompter: DataSource, keep_strings: bool = False) -> dict[str, Any]:
    """The record of the prompter's cached dataset (spec, sizes, files, ``leakage``), or {} when not built."""
    try:
        meta = json.loads((dataset_dir(prompter, keep_strings) / META_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def generate_chunk(prompter: DataSource, split: int, chunk: int, n: int) -> dict[str, np.ndarray]:
    """Chunk ``chunk`` of split ``split`` (0 train, 1 test): ``n`` checked, compact examples.

    Each chunk draws from its own ``SeedSequence(data_seed, spawn_key=(split, chunk))`` stream, so the result
    does not depend on how chunks are spread over processes.
    """
    rng = np.random.default_rng(np.random.SeedSequence(prompter.config.data_seed, spawn_key=(split, chunk)))
    return prompter.sample_batch(rng, n)


def _build_into(
    prompter: DataSource, final: Path, spec: Mapping[str, Any], num_proc: int | None, progress: bool
) -> None:
    """Generate and save the dataset in a temporary directory, then rename it to ``final``."""
    tmp = final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    (tmp / _OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    bars_were_on = datasets.is_progress_bar_enabled()
    try:
        start = time.perf_counter()
        dsd, leakage = _build_dataset(prompter, spec, num_proc, progress)
        if not progress:
            datasets.disable_progress_bars()
        dsd.save_to_disk(str(tmp))
        del dsd
        (tmp / _OWNER_FILE).unlink()
        meta = {
            "spec": spec,
            "num_rows": {split: leakage[f"{split}_size"] for split in _SPLITS},
            "files": {str(p.relative_to(tmp)): _file_record(p) for p in sorted(tmp.rglob("*")) if p.is_file()},
            "leakage": leakage,
            "build_seconds": round(time.perf_counter() - start, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write(tmp / META_FILE, json.dumps(meta, indent=2, sort_keys=True))
        _install(tmp, final, spec)
    finally:
        if not progress and bars_were_on:
            datasets.enable_progress_bars()
        shutil.rmtree(tmp, ignore_errors=True)


def _build_dataset(
    prompter: DataSource, spec: Mapping[str, Any], num_proc: int | None, progress: bool
) -> tuple[datasets.DatasetDict, dict[str, int]]:
    """Generate both splits in memory (compact dtypes, zero-copy into Arrow)."""
    config = prompter.config
    name = type(prompter).__name__
    sizes = {"train": config.train_size, "test": config.test_size}
    chunk_size = prompter.CHUNK_SIZE
    jobs = [
        (split_idx, chunk, min(chunk_size, sizes[split] - start))
        for split_idx, split in enumerate(_SPLITS)
        for chunk, start in enumerate(range(0, sizes[split], chunk_size))
    ]
    if num_proc is None:
        # Starting a process costs about a second (imports); worth it only for slow, big builds.
        small = sum(sizes.values()) < _MIN_EXAMPLES_FOR_PROCESSES
        num_proc = 1 if prompter.is_vectorised or small else min(os.cpu_count() or 1, 8)
    num_proc = min(num_proc, len(jobs))
    chunks: dict[str, list[dict[str, np.ndarray]]] = {split: [] for split in _SPLITS}
    with tqdm(total=sum(sizes.values()), desc=f"Generating {name}", unit="ex", disable=not progress) as bar:
        if num_proc == 1:
            for split_idx, chunk, n in jobs:
                chunks[_SPLITS[split_idx]].append(generate_chunk(prompter, split_idx, chunk, n))
                bar.update(n)
        else:
            # spawn, not fork: the parent may hold threads (torch, tqdm) that fork would copy mid-state.
            ctx = multiprocessing.get_context("spawn")
            pool = concurrent.futures.ProcessPoolExecutor(num_proc, mp_context=ctx)
            try:
                futures = [pool.submit(generate_chunk, prompter, s, c, n) for s, c, n in jobs]
                for (split_idx, _, n), future in zip(jobs, futures):
                    chunks[_SPLITS[split_idx]].append(future.result())
                    bar.update(n)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # on Ctrl-C or a failed chunk, stop at once
                raise
            pool.shutdown()
    columns = _merge_chunk_schemas(chunks, name, prompter.TOKEN_COLUMNS)
    if config.dedup_test:
        in_train = _rows_in(_split_rows(chunks["train"], "prompt"), _split_rows(chunks["test"], "prompt"))
        if in_train.all():
            raise ValueError("dedup_test removed every test example: the task has too few distinct prompts")
        keep = ~in_train
        offsets = np.cumsum([0] + [len(c["prompt"]) for c in chunks["test"]])
        chunks["test"] = [
            {k: v[keep[lo:hi]] for k, v in c.items()} for c, lo, hi in zip(chunks["test"], offsets[:-1], offsets[1:])
        ]
    leakage = _leakage(_split_rows(chunks["train"], "prompt"), _split_rows(chunks["test"], "prompt"))
    version = data_hash(prompter, spec["keep_strings"])
    splits = {}
    for split in _SPLITS:
        arrays: dict[str, Any] = {}
        for key in columns:
            arrays[key] = pa.chunked_array(
                [_to_arrow(c[key]) for c in chunks[split]], type=_arrow_type(chunks[split][0][key])
            )
        if spec["keep_strings"]:
            id_to_char = np.frombuffer(prompter.VOCAB.encode("ascii"), dtype=np.uint8)
            for key in prompter.TOKEN_COLUMNS:
                texts = [id_to_char[c[key]].view(f"S{c[key].shape[1]}").ravel() for c in chunks[split]]
                arrays[f"{key}_text"] = pa.chunked_array([pa.array(t).cast(pa.string()) for t in texts])
        table = InMemoryTable(pa.table(arrays))
        # An explicit fingerprint: otherwise datasets hashes (pickles) the whole table, using GBs of memory.
        fingerprint = hashlib.sha256(f"{version}-{split}".encode()).hexdigest()[:16]
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


def _merge_chunk_schemas(
    chunks: dict[str, list[dict[str, np.ndarray]]], name: str, token_columns: Sequence[str]
) -> list[str]:
    """Make every chunk share column names, widths and dtypes (casting metadata to a common dtype)."""
    all_chunks = [c for split in _SPLITS for c in chunks[split]]
    keys = [*token_columns, *sorted(k for k in all_chunks[0] if k not in token_columns)]
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


def _load_verified(directory: Path, spec: Mapping[str, Any], prompter: DataSource) -> datasets.DatasetDict:
    """``_load_checked``, and every token id within the prompter's vocabulary."""
    dsd = _load_checked(directory, spec)
    _check_tokens(dsd, prompter.TOKEN_COLUMNS, prompter.vocab_size)
    return dsd


def _load_checked(directory: Path, spec: Mapping[str, Any]) -> datasets.DatasetDict:
    """Load a cached dataset, or raise ``_CacheError`` saying why it cannot be trusted."""
    try:
        meta = json.loads((directory / META_FILE).read_text())
        recorded, files, num_rows = meta["spec"], dict(meta["files"]), dict(meta["num_rows"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _CacheError(f"cannot read {META_FILE}: {type(e).__name__}: {e}") from None
    if recorded != spec:
        raise _CacheError(f"recorded spec {recorded} differs from the requested {dict(spec)}")
    for rel, written in files.items():
        p = directory / rel
        if not isinstance(written, dict):
            raise _CacheError("it was recorded without checksums (by an earlier version)")
        actual = p.stat().st_size if p.is_file() else None
        if actual != written["bytes"]:
            raise _CacheError(f"{rel} has {actual} bytes, {written['bytes']} were written")
        if _file_record(p)["xxh3"] != written["xxh3"]:
            raise _CacheError(f"{rel} does not hold the bytes that were written (checksum mismatch)")
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


def _file_record(path: Path) -> dict[str, Any]:
    """Size and content checksum (xxh3, 64 bits) of a cache file, read in 16 MB blocks."""
    digest = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return {"bytes": path.stat().st_size, "xxh3": digest.hexdigest()}


def _check_tokens(dsd: datasets.DatasetDict, token_columns: Sequence[str], vocab_size: int) -> None:
    """Raise ``_CacheError`` when a token column holds an id outside the vocabulary."""
    for split in _SPLITS:
        table = dsd[split].data.table
        for key in token_columns:
            column = table.column(key)
            values = pc.list_flatten(column) if pa.types.is_fixed_size_list(column.type) else column
            top = pc.max(values).as_py()
            if top is not None and top >= vocab_size:
                raise _CacheError(
                    f"{split} column {key!r} holds token id {top}, outside the vocabulary of {vocab_size}"
                )


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
