"""Atomic file writes: the one place that knows how to put bytes on disk safely.

Every file the package writes (checkpoints, manifests, shards, index parts, figures, JSON) goes
through `atomic_path`: the data lands in a temporary file beside the target, is flushed to the
device with ``fsync``, and is renamed onto the target in one step. A reader therefore sees the
old file or the new one, never half of one, even when the process is killed or the machine
loses power; the ``fsync`` matters on network file systems such as Google Drive on Colab, where
a rename can otherwise reach the server before the data. Temporary names carry the process id
and a random part, so two processes (or threads) writing the same target never share one.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

log = logging.getLogger(__name__)

__all__ = [
    "atomic_path",
    "file_lock",
    "finite",
    "json_default",
    "read_json",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_npy",
    "write_text",
]


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (POSIX only; Windows cannot open a folder)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems (FUSE mounts) refuse fsync on folders: best effort
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` atomically.

    Parameters
    ----------
    path : str or path-like
        The target. Its folder is created when missing.
    suffix : str
        Appended to the temporary name, for writers that infer the format from the extension
        (``soundfile.write``, ``Figure.savefig``), e.g. ``".wav"``.

    Yields
    ------
    Path
        Where the caller writes. If the block raises, the temporary file is removed and the
        target is left as it was.

    Examples
    --------
    >>> with atomic_path("clip.wav", suffix=".wav") as tmp:  # doctest: +SKIP
    ...     soundfile.write(tmp, y, sr)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars/arrays and paths: plain JSON values."""
    if hasattr(obj, "tolist"):  # numpy scalars and arrays alike
        return finite(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot store {type(obj).__name__} as JSON")


def finite(obj: Any) -> Any:
    """`obj` with every NaN/inf float (nested in dicts, lists, tuples) replaced by ``None``.

    Strict JSON has no NaN; a metric that is undefined (one class only, say) is stored as null.
    """
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if isinstance(obj, float | np.floating) and not math.isfinite(float(obj)):
        return None
    return obj


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write `data` as strict, indented, key-sorted JSON atomically.

    numpy values become plain numbers or lists, NaN/inf become ``null`` (see `finite`).
    """
    text = json.dumps(finite(data), indent=2, sort_keys=True, default=json_default,
                      allow_nan=False)
    return write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in the error when it is damaged."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: damaged JSON ({err}); delete it and re-run") from err


def write_csv(path: str | os.PathLike, frame: pd.DataFrame, index: bool = False) -> Path:
    """Write a DataFrame as CSV atomically; returns the path."""
    return write_text(path, frame.to_csv(index=index))


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write one array in ``.npy`` format atomically (no pickles); returns the path."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, what: str = "another process") -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing), waiting while another holds it.

    Shared on-disk state (a feature cache, an index folder, numba's kernel cache) is changed
    only under this lock. On POSIX it is a record lock (``fcntl.lockf``): the kernel releases
    it when the process dies, so a killed job never blocks the next one, and forked pool
    workers do not inherit it. Locks are per process: threads of one process are not kept
    apart, and a nested lock on the same file in one process does not block. On Windows it is
    ``msvcrt.locking`` on the first byte. Where the file system refuses locks (some network
    mounts), a warning is logged and the block runs unlocked.

    Parameters
    ----------
    path : str or path-like
        The lock file (an empty file; never truncated, never removed).
    what : str
        Named in the log line shown while waiting, e.g. ``"another preprocess"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:  # "a": create, never truncate
        try:
            _lock(handle, path, what)
        except OSError as err:
            log.warning("%s: this file system refuses file locks (%s); run one job at a time "
                        "here", path, err.strerror)
            yield
            return
        try:
            yield
        finally:
            _unlock(handle)


def _lock(handle: Any, path: Path, what: str) -> None:
    if fcntl is not None:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
        log.info("%s: %s holds this lock; waiting for it", path, what)
        fcntl.lockf(handle, fcntl.LOCK_EX)
        return
    handle.seek(0)
    while True:
        try:  # LK_LOCK retries for 10 s, then raises: keep waiting
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
            return
        except OSError:
            log.info("%s: %s holds this lock; waiting for it", path, what)


def _unlock(handle: Any) -> None:
    if fcntl is not None:
        fcntl.lockf(handle, fcntl.LOCK_UN)
    else:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
