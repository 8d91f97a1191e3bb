"""Feature cache: dB mel spectrograms of every clip in a manifest, computed once.

Layout of a cache folder::

    frontend.json              the FrontEndConfig every clip was computed with
    shards/shard_00000.npy     float16 array (clips, n_mels, frames)
    shards/shard_00000.csv     one row per clip of the chunk: path, row in the .npy, error
    failures.csv               files that could not be read, with the reason (rebuilt each run)

A chunk of clips is one unit of work: a worker computes it and writes its ``.csv`` and then its
``.npy`` atomically (temporary file + rename). A shard counts as done only once its ``.npy``
exists, so a job killed at any moment restarts with only the unfinished chunks. float16 keeps
0.06 dB resolution at -80 dB, far below what the model can use, at half the size of float32.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import threadpoolctl
import torch
from tqdm.auto import tqdm

from helpers.audio import AudioError, load_clip, mel_db
from helpers.config import FrontEndConfig
from helpers.io import read_json, write_csv, write_json, write_npy

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


def _read_shard_tables(cache_dir: Path) -> pd.DataFrame:
    """All finished shards' rows, with the shard name; unfinished shards are ignored."""
    tables = []
    for npy in sorted((cache_dir / "shards").glob("shard_*.npy")):
        table_path = npy.with_suffix(".csv")
        try:
            table = pd.read_csv(table_path, dtype={"path": str, "error": str},
                                keep_default_na=False)
        except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError) as err:
            raise CacheError(f"{table_path}: damaged shard table ({err}); delete {npy} "
                             "and re-run preprocess") from err
        table["shard"] = npy.stem
        tables.append(table)
    if not tables:
        return pd.DataFrame(columns=[*_SHARD_COLUMNS, "shard"])
    return pd.concat(tables, ignore_index=True)


def _process_chunk(paths: Sequence[str], config: FrontEndConfig, shard: str) -> list[str]:
    """Compute one chunk and write its shard; returns the error messages of failed files."""
    mels, rows, errors = [], [], []
    for path in paths:
        try:
            mels.append(mel_db(load_clip(path, config), config).astype(np.float16))
            rows.append({"path": path, "row": len(mels) - 1, "error": ""})
        except AudioError as err:
            rows.append({"path": path, "row": -1, "error": str(err)})
            errors.append(str(err))
        except Exception as err:  # noqa: BLE001 - one odd file must not stop a night's batch
            message = f"{path}: unexpected {type(err).__name__}: {err}"
            rows.append({"path": path, "row": -1, "error": message})
            errors.append(message)
    shape = (len(mels), config.n_mels, config.n_frames)
    data = np.stack(mels) if mels else np.zeros(shape, dtype=np.float16)
    base = Path(shard)
    write_csv(base.with_suffix(".csv"), pd.DataFrame(rows, columns=_SHARD_COLUMNS))
    write_npy(base.with_suffix(".npy"), data)  # the commit point of the chunk
    return errors


def _one_thread() -> None:
    # One BLAS thread per worker: the workers already fill the cores, and oversubscribed
    # OpenBLAS threads made the mel filterbank product several times slower.
    threadpoolctl.threadpool_limits(1)


def preprocess(
    manifest: pd.DataFrame,
    cache_dir: str | os.PathLike,
    config: FrontEndConfig | None = None,
    n_jobs: int | None = None,
    chunk_size: int = 32,
    progress: bool = True,
) -> dict:
    """Compute and store the mel spectrogram of every manifest file not yet in the cache.

    Parameters
    ----------
    manifest : pd.DataFrame
        A validated manifest (`helpers.datasets.load_manifest`); only ``path`` is used.
    cache_dir : str or path-like
        Cache folder; created if needed. Re-running resumes: finished chunks are kept.
    config : FrontEndConfig, optional
        Must match the folder's ``frontend.json`` when the folder already has one.
    n_jobs : int, optional
        Worker processes; default all CPU cores. 1 runs in this process.
    chunk_size : int
        Clips per shard: the unit of work lost at most when the job is killed.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``n_clips``, ``n_cached_before``, ``n_computed``, ``n_failed``, ``seconds``,
        ``clips_per_second``, ``bytes_per_clip``, ``failures_csv``.

    Raises
    ------
    CacheError
        The folder was built with a different front end.
    """
    config = config or FrontEndConfig()
    cache_dir = Path(cache_dir)
    (cache_dir / "shards").mkdir(parents=True, exist_ok=True)
    _check_config(cache_dir, config)

    done = _read_shard_tables(cache_dir)
    done_paths = set(done["path"])
    todo = [p for p in dict.fromkeys(manifest["path"]) if p not in done_paths]
    start_id = 1 + max((int(s.split("_")[1]) for s in done["shard"]), default=-1)
    chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
    shards = [str(cache_dir / "shards" / f"shard_{start_id + i:05d}") for i in range(len(chunks))]
    n_jobs = max(1, min(n_jobs or os.cpu_count() or 1, len(chunks) or 1))

    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc="preprocess", unit="clip", disable=not progress,
               initial=0, dynamic_ncols=True)
    n_failed_now = 0
    if n_jobs == 1:
        for chunk, shard in zip(chunks, shards, strict=True):
            n_failed_now += len(_process_chunk(chunk, config, shard))
            bar.update(len(chunk))
    else:
        # fork is fast and safe here (workers use numpy/librosa, not torch threads); other
        # platforms get their default start method.
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
        # librosa loads its submodules lazily (seconds); do it once here so forked workers
        # inherit it instead of each paying for it.
        mel_db(np.full(config.sample_rate, 0.1, dtype=np.float32), config)
        with ProcessPoolExecutor(n_jobs, mp_context=context, initializer=_one_thread) as pool:
            futures = {pool.submit(_process_chunk, c, config, s): c
                       for c, s in zip(chunks, shards, strict=True)}
            for future in as_completed(futures):
                n_failed_now += len(future.result())
                bar.update(len(futures[future]))
                bar.set_postfix(failed=n_failed_now)
    bar.close()
    seconds = time.perf_counter() - t0

    table = _read_shard_tables(cache_dir)
    failures = table[table["row"] < 0][["path", "error"]]
    failures_csv = cache_dir / "failures.csv"
    write_csv(failures_csv, failures)
    wanted = set(manifest["path"])
    n_failed = int(failures["path"].isin(wanted).sum())
    if n_failed:
        log.warning("%d file(s) could not be read; see %s", n_failed, failures_csv)
    n_ok = int(((table["row"] >= 0)).sum())
    data_bytes = sum(p.stat().st_size for p in (cache_dir / "shards").glob("shard_*.npy"))
    return {
        "n_clips": len(wanted),
        "n_cached_before": len(wanted) - len(todo),
        "n_computed": len(todo),
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
        ok = table[table["row"] >= 0]
        self._where = dict(zip(ok["path"], zip(ok["shard"], ok["row"].astype(int), strict=True),
                               strict=True))
        self.failures = dict(zip(table.loc[table["row"] < 0, "path"],
                                 table.loc[table["row"] < 0, "error"], strict=True))
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
