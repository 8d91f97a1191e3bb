"""Feature cache: dB mel spectrograms of every clip in a manifest, computed once.

Layout of a cache folder::

    frontend.json              the FrontEndConfig every clip was computed with
    shards/shard_00000.npy     float16 array (clips, n_mels, frames)
    shards/shard_00000.csv     one row per clip of the chunk: path, row in the .npy, error
    failures.csv               files that could not be read, with the reason (rebuilt each run)
    .lock                      held by the `preprocess` writing to the folder (empty file)

A chunk of clips is one unit of work: a worker computes it and writes its ``.csv`` and then its
``.npy`` atomically (`helpers.io`). A shard counts as done only once its ``.npy`` exists, so a
job killed at any moment restarts with only the unfinished chunks. float16 keeps 0.06 dB
resolution at -80 dB, far below what the model can use, at half the size of float32.

Files that could not be read are tried again by the next `preprocess` (a download finished, a
file was fixed); a file that fails again is recorded again, and the older record is dropped.

Two `preprocess` runs on one folder (two notebooks, a CLI run beside a training run) take turns:
each holds an exclusive POSIX lock on ``.lock`` (``fcntl.lockf``) from reading the finished
shards to writing ``failures.csv``, so shard numbers are never chosen twice and a clip is
computed once. The lock is released by the kernel when its process dies, so a killed run never
blocks the next one. On Windows (no ``fcntl``), and on file systems that refuse locks, there is
no lock: run one `preprocess` per cache folder at a time there.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from helpers import jit
from helpers.audio import AudioError, load_clip, mel_db
from helpers.config import FrontEndConfig
from helpers.io import file_lock, read_json, write_csv, write_json, write_npy

log = logging.getLogger(__name__)

_SHARD_COLUMNS = ["path", "row", "error"]


class CacheError(RuntimeError):
    """A cache folder that cannot be used as asked; the message says why and what to do."""


def _check_config(cache_dir: Path, config: FrontEndConfig) -> None:
    saved = cache_dir / "frontend.json"
    if saved.exists():
        existing = FrontEndConfig.from_dict(read_json(saved))
        if not existing.same_features(config):
            raise CacheError(
                f"{cache_dir} holds features made with a different front end "
                f"({existing} vs {config}); use another --cache folder or delete this one"
            )
    else:
        write_json(saved, config.to_dict())


def _shard_number(path: Path) -> int:
    return int(path.stem.split("_")[1])


def _read_shard_tables(cache_dir: Path) -> pd.DataFrame:
    """All finished shards' rows, oldest shard first, with the shard name.

    Unfinished shards (no ``.npy`` yet) are ignored.
    """
    tables = []
    for npy in sorted((cache_dir / "shards").glob("shard_*.npy"), key=_shard_number):
        table_path = npy.with_suffix(".csv")
        try:
            table = pd.read_csv(table_path, dtype={"path": str, "error": str},
                                keep_default_na=False)
        except FileNotFoundError as err:
            if not npy.exists():  # removed by a preprocess since the listing (see _prune)
                continue
            raise CacheError(f"{table_path}: missing shard table; delete {npy} and re-run "
                             "preprocess") from err
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
            raise CacheError(f"{table_path}: damaged shard table ({err}); delete {npy} "
                             "and re-run preprocess") from err
        table["shard"] = npy.stem
        tables.append(table)
    if not tables:
        return pd.DataFrame(columns=[*_SHARD_COLUMNS, "shard"])
    return pd.concat(tables, ignore_index=True)


def _failures(table: pd.DataFrame) -> pd.DataFrame:
    """The latest failure of each file that is not cached: columns path, error."""
    ok = set(table.loc[table["row"] >= 0, "path"])
    failed = table[(table["row"] < 0) & ~table["path"].isin(ok)]
    return failed.drop_duplicates("path", keep="last")[["path", "error"]]


def _process_chunk(paths: Sequence[str], config: FrontEndConfig, shard: str) -> list[str]:
    """Compute one chunk and write its shard; returns the error messages of failed files.

    Only `AudioError` (a file that cannot be read or is not usable audio; `load_clip` wraps
    the decoder's own errors into it) marks a file as failed. Anything else is a bug or a
    broken environment, and raises: recording it per file would hide it in failures.csv.
    """
    mels, rows, errors = [], [], []
    for path in paths:
        try:
            mels.append(mel_db(load_clip(path, config), config).astype(np.float16))
            rows.append({"path": path, "row": len(mels) - 1, "error": ""})
        except AudioError as err:
            rows.append({"path": path, "row": -1, "error": str(err)})
            errors.append(str(err))
    shape = (len(mels), config.n_mels, config.n_frames)
    data = np.stack(mels) if mels else np.zeros(shape, dtype=np.float16)
    base = Path(shard)
    write_csv(base.with_suffix(".csv"), pd.DataFrame(rows, columns=_SHARD_COLUMNS))
    write_npy(base.with_suffix(".npy"), data)  # the commit point of the chunk
    return errors


def _plan(cache_dir: Path, wanted: list[str], chunk_size: int,
          retry_failed: bool) -> tuple[list[str], int, list[tuple[list[str], str]]]:
    """Files to compute, how many of them failed before, and (chunk, shard base path) pairs.

    Shard numbers continue after the highest finished shard; the caller holds the lock, so
    no other process picks the same numbers.
    """
    done = _read_shard_tables(cache_dir)
    cached = set(done.loc[done["row"] >= 0, "path"])
    failed_before = set(done["path"]) - cached
    skip = cached if retry_failed else cached | failed_before
    todo = [p for p in wanted if p not in skip]
    shards_dir = cache_dir / "shards"
    start = 1 + max(map(_shard_number, shards_dir.glob("shard_*.npy")), default=-1)
    chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
    named = [(chunk, str(shards_dir / f"shard_{start + i:05d}")) for i, chunk in
             enumerate(chunks)]
    return todo, len(failed_before.intersection(todo)), named


def _compute(jobs: list[tuple[list[str], str]], config: FrontEndConfig, n_jobs: int,
             bar: tqdm) -> None:
    """Run every (chunk, shard) job, serially or in worker processes."""
    n_failed = 0
    if n_jobs == 1:
        for chunk, shard in jobs:
            n_failed += len(_process_chunk(chunk, config, shard))
            bar.update(len(chunk))
            bar.set_postfix(failed=n_failed)
        return
    # librosa loads its submodules lazily (seconds); do it once here so forked workers
    # inherit it instead of each paying for it.
    mel_db(np.full(config.sample_rate, 0.1, dtype=np.float32), config)
    with jit.process_pool(n_jobs) as pool:
        futures = {pool.submit(_process_chunk, c, config, s): c for c, s in jobs}
        try:
            for future in as_completed(futures):
                n_failed += len(future.result())
                bar.update(len(futures[future]))
                bar.set_postfix(failed=n_failed)
        except BaseException:
            # a bug raised in a worker (or Ctrl-C): stop now rather than finish the queue
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _prune(cache_dir: Path, table: pd.DataFrame) -> None:
    """Drop failure rows that a later shard superseded (the file was tried again).

    Runs after the new shards are committed, so a kill in between leaves a duplicate record,
    which readers resolve (the latest row wins), never a lost one. A shard left with no rows
    (it held only failures) is removed, ``.npy`` first: without it the table is ignored.
    """
    stale = (table["row"] < 0) & table["path"].duplicated(keep="last")
    for shard in table.loc[stale, "shard"].unique():
        keep = table[(table["shard"] == shard) & ~stale]
        base = cache_dir / "shards" / shard
        if keep.empty:
            base.with_suffix(".npy").unlink()
            base.with_suffix(".csv").unlink(missing_ok=True)
        else:
            write_csv(base.with_suffix(".csv"), keep[_SHARD_COLUMNS])


def preprocess(
    manifest: pd.DataFrame,
    cache_dir: str | os.PathLike,
    config: FrontEndConfig | None = None,
    n_jobs: int | None = None,
    chunk_size: int = 32,
    progress: bool = True,
    retry_failed: bool = True,
) -> dict:
    """Compute and store the mel spectrogram of every manifest file not yet in the cache.

    Parameters
    ----------
    manifest : pd.DataFrame
        A validated manifest (`helpers.datasets.load_manifest`); only ``path`` is used.
    cache_dir : str or path-like
        Cache folder; created if needed. Re-running resumes: finished chunks are kept. Another
        `preprocess` writing to the same folder is waited for (see the module docstring).
    config : FrontEndConfig, optional
        Must match the folder's ``frontend.json`` when the folder already has one.
    n_jobs : int, optional
        Worker processes; default all CPU cores. 1 runs in this process.
    chunk_size : int
        Clips per shard: the unit of work lost at most when the job is killed.
    progress : bool
        Show a progress bar.
    retry_failed : bool
        Try files that failed in an earlier run again (default). ``False`` keeps their
        recorded failure, e.g. for a large corpus with many files known to be broken.

    Returns
    -------
    dict
        ``n_clips``, ``n_cached_before``, ``n_computed`` (including ``n_retried`` files that
        had failed before), ``n_failed``, ``seconds``, ``clips_per_second``,
        ``bytes_per_clip``, ``failures_csv``.

    Raises
    ------
    CacheError
        The folder was built with a different front end, or a shard table is damaged.
    Exception
        Whatever is not an `AudioError` (a bug, a full disk) propagates: finished chunks are
        kept, the failing chunk is not recorded.
    """
    config = config or FrontEndConfig()
    cache_dir = Path(cache_dir)
    (cache_dir / "shards").mkdir(parents=True, exist_ok=True)
    wanted = list(dict.fromkeys(manifest["path"]))
    with file_lock(cache_dir / ".lock", "another preprocess"):
        _check_config(cache_dir, config)
        todo, n_retried, jobs = _plan(cache_dir, wanted, chunk_size, retry_failed)
        n_jobs = max(1, min(n_jobs or os.cpu_count() or 1, len(jobs) or 1))
        t0 = time.perf_counter()
        with tqdm(total=len(todo), desc="preprocess", unit="clip", disable=not progress,
                  dynamic_ncols=True) as bar:
            _compute(jobs, config, n_jobs, bar)
        seconds = time.perf_counter() - t0
        _prune(cache_dir, _read_shard_tables(cache_dir))
        table = _read_shard_tables(cache_dir)
        failures = _failures(table)
        failures_csv = write_csv(cache_dir / "failures.csv", failures)
    n_failed = int(failures["path"].isin(wanted).sum())
    if n_failed:
        log.warning("%d file(s) could not be read; see %s", n_failed, failures_csv)
    n_ok = int((table["row"] >= 0).sum())
    data_bytes = sum(p.stat().st_size for p in (cache_dir / "shards").glob("shard_*.npy"))
    return {
        "n_clips": len(wanted),
        "n_cached_before": len(wanted) - len(todo),
        "n_computed": len(todo),
        "n_retried": n_retried,
        "n_failed": n_failed,
        "seconds": round(seconds, 3),
        "clips_per_second": round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
        "bytes_per_clip": round(data_bytes / n_ok) if n_ok else None,
        "failures_csv": str(failures_csv),
    }


class FeatureCache:
    """Read access to a cache folder written by `preprocess`.

    Shards are memory-mapped, so opening a cache of 100k clips reads only its small tables.

    Parameters
    ----------
    cache_dir : str or path-like
    """

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        self.cache_dir = Path(cache_dir)
        if not (self.cache_dir / "frontend.json").exists():
            raise CacheError(f"{self.cache_dir}: not a feature cache (no frontend.json); run "
                             "`python -m helpers preprocess --manifest M --cache DIR` first")
        self.config = FrontEndConfig.from_dict(read_json(self.cache_dir / "frontend.json"))
        table = _read_shard_tables(self.cache_dir)
        ok = table[table["row"] >= 0]  # oldest first: a later row for a path wins
        self._where = dict(zip(ok["path"], zip(ok["shard"], ok["row"].astype(int), strict=True),
                               strict=True))
        failed = _failures(table)
        self.failures = dict(zip(failed["path"], failed["error"], strict=True))
        self._shards: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._where)

    def has(self, path: str) -> bool:
        """Whether the clip at `path` is cached (failed files are not)."""
        return path in self._where

    def _shard(self, name: str) -> np.ndarray:
        if name not in self._shards:
            file = self.cache_dir / "shards" / f"{name}.npy"
            try:
                self._shards[name] = np.load(file, mmap_mode="r")
            except (ValueError, OSError) as err:
                raise CacheError(f"{file}: damaged shard ({err}); delete it and its .csv, "
                                 "then re-run preprocess") from err
        return self._shards[name]

    def get(self, path: str) -> np.ndarray:
        """The clip's dB mel spectrogram, shape (n_mels, frames), float16."""
        try:
            shard, row = self._where[path]
        except KeyError:
            reason = self.failures.get(path, "not in the cache; run preprocess on its manifest")
            raise KeyError(f"{path}: {reason}") from None
        return self._shard(shard)[row]


class CacheDataset(torch.utils.data.Dataset):
    """Torch dataset of (mel, label) pairs read from a feature cache.

    Rows whose file failed preprocessing (or is not cached) are dropped and listed in
    `dropped`; `frame` holds the kept manifest rows in item order.

    Parameters
    ----------
    cache_dir : str or path-like
    manifest : pd.DataFrame
        Rows to serve (e.g. one split).

    Examples
    --------
    >>> ds = CacheDataset("cache", manifest[manifest.split == "train"])  # doctest: +SKIP
    >>> x, y = ds[0]  # x: (n_mels, frames) float32 dB, y: 1.0 for ai, 0.0 for human
    """

    def __init__(self, cache_dir: str | os.PathLike, manifest: pd.DataFrame) -> None:
        self.cache = FeatureCache(cache_dir)
        keep = manifest["path"].map(self.cache.has)
        self.dropped = manifest.loc[~keep, "path"].tolist()
        if self.dropped:
            log.warning("%d clip(s) not in the cache are left out (first: %s)",
                        len(self.dropped), self.dropped[0])
        self.frame = manifest[keep].reset_index(drop=True)
        self._paths = self.frame["path"].tolist()
        self.labels = (self.frame["label"] == "ai").to_numpy(np.float32)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        mel = torch.from_numpy(np.asarray(self.cache.get(self._paths[i]), dtype=np.float32))
        return mel, torch.tensor(self.labels[i])
