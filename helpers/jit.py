"""Numba's on-disk cache, kept safe for this package's process pools.

librosa compiles a few kernels with numba and caches the machine code on disk (``cache=True``):
an index file per function maps each signature to a numbered data file. When two processes
compile *different* signatures of one function at the same moment, both read an empty index,
both pick data file ``.1.nbc``, and the index that survives can point at the other signature's
machine code. Every later process that loads it runs the wrong code: measured as a segfault in
``librosa.onset.onset_detect`` on 1 of 3 fresh ``python -m helpers demo`` runs, whose two synth
workers compiled ``istft``'s kernels in parallel, and in every run after it.

Two rules keep it from happening, and one check repairs a cache broken some other way:

* compile in one process: `warm_up` runs the numba-compiled librosa paths this package uses,
  in float32 and float64, in the parent *before* a process pool starts (`process_pool`), so
  forked workers inherit compiled code and spawned ones read a complete cache: no worker writes;
* check before trusting: `ensure_healthy_cache` compares every cached kernel's stored signature
  with the one its index claims, and loads the cache in a child process whenever its files have
  changed since the last check. A mismatch or a crash deletes the cache files (one line says
  so); numba recompiles them on next use.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import threadpoolctl

from helpers.io import file_lock, write_json

log = logging.getLogger(__name__)

__all__ = ["cache_dirs", "ensure_healthy_cache", "find_corrupt_entries", "prepare",
           "process_pool", "warm_up"]


def cache_dirs() -> list[Path]:
    """Folders where numba keeps librosa's compiled kernels.

    ``NUMBA_CACHE_DIR`` when set (numba then mirrors source paths below it), else the
    ``__pycache__`` folders beside librosa's sources (numba's default when they are writable).
    """
    user = os.environ.get("NUMBA_CACHE_DIR")
    if user:
        return [Path(user)] if Path(user).is_dir() else []
    import importlib.util  # noqa: PLC0415 - only to locate librosa without importing it

    spec = importlib.util.find_spec("librosa")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    return sorted(p for p in root.rglob("__pycache__") if p.is_dir())


def _index_files(dirs: list[Path]) -> Iterator[Path]:
    for d in dirs:
        yield from d.rglob("*.nbi")


def _read_index(nbi: Path) -> dict:
    with open(nbi, "rb") as f:
        pickle.load(f)  # numba version
        _stamp, overloads = pickle.loads(f.read())
    return overloads


def _entry_ok(nbi: Path, key: tuple, data_name: str) -> bool:
    """Whether one cached overload holds the code for the signature its index entry claims."""
    with open(nbi.parent / data_name, "rb") as f:
        data = pickle.loads(f.read())
    claimed = key[0]
    stored = data[3] if len(data) > 3 else None
    if type(stored).__name__ == "Signature":  # a compiled function: its signature is stored
        # The index key is a signature object or its text ("void(float32[:], bool_[:])"); the
        # element types are what a mixed-up entry gets wrong, so compare those.
        return _arg_dtypes(claimed) == _arg_dtypes(stored)
    blobs = [b for b in data[-1] if isinstance(b, bytes)] if isinstance(data[-1], tuple) else []
    if blobs and hasattr(claimed, "args"):  # a gufunc wrapper: LLVM bitcode naming its kernel
        from numba.core import itanium_mangler  # noqa: PLC0415 - numba loads with librosa

        expected = itanium_mangler.mangle_args(claimed.args).encode()
        return any(expected in blob for blob in blobs)
    return True


def _arg_dtypes(signature: object) -> list[str]:
    """Element types of a signature's arguments, from a numba Signature or its text.

    Only the arguments: whether a key spells out the return type differs between librosa
    versions ("(complex64,) -> float32" in 0.11, the arguments alone in 1.0).
    """
    args = getattr(signature, "args", None)
    if args is not None:
        return _dtypes(str(tuple(args)))
    text = str(signature)
    if "->" in text:  # "(float32, ...) -> none"
        text = text.split("->")[0]
    elif "(" in text:  # "void(float32[:], bool_[:])": the return type comes first
        text = text[text.index("("):]
    return _dtypes(text)


def _dtypes(text: str) -> list[str]:
    return re.findall(r"\b(u?int\d+|float\d+|complex\d+|bool)", text)


def find_corrupt_entries(dirs: list[Path] | None = None) -> list[Path]:
    """Index files (``*.nbi``) whose entries point at another signature's code, or unreadable.

    Parameters
    ----------
    dirs : list of Path, optional
        Default `cache_dirs()`.

    Returns
    -------
    list of Path
    """
    bad = []
    for nbi in _index_files(cache_dirs() if dirs is None else dirs):
        try:
            overloads = _read_index(nbi)
            if not all(_entry_ok(nbi, key, name) for key, name in overloads.items()):
                bad.append(nbi)
        except FileNotFoundError:
            bad.append(nbi)  # the index names a data file that is gone
        except Exception:  # noqa: BLE001 - any unreadable index or data file is damage
            bad.append(nbi)
    return bad


def _remove_entries(index_files: list[Path]) -> None:
    for nbi in index_files:
        stem = nbi.name[: -len(".nbi")]
        for data in nbi.parent.glob(f"{stem}.*.nbc"):
            data.unlink(missing_ok=True)
        nbi.unlink(missing_ok=True)


def _stamp(dirs: list[Path]) -> list[list]:
    files = [p for d in dirs for pattern in ("*.nbi", "*.nbc") for p in d.rglob(pattern)]
    return sorted([str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files
                  if p.exists())


def _verified_file() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "helpers" / "numba_verified.json"


def ensure_healthy_cache(check_in_child: bool = True) -> bool:
    """Repair numba's cache of librosa kernels if it is damaged; True if it was.

    Entries whose data does not match their index are deleted at once. Then, if the cache
    files changed since the last check, a child process loads and runs every kernel
    (`warm_up`); if it crashes, all of librosa's cached kernels are deleted. Each repair prints
    one line to stderr.

    Parameters
    ----------
    check_in_child : bool
        Run the child-process check when the cache changed (about 2-4 s, once per change).
    """
    dirs = cache_dirs()
    bad = find_corrupt_entries(dirs)
    repaired = False
    if bad:
        _remove_entries(bad)
        print(f"note: removed {len(bad)} damaged numba cache entr"
              f"{'y' if len(bad) == 1 else 'ies'} (a concurrent compile had mixed them up); "
              "they are recompiled on first use", file=sys.stderr)
        repaired = True
    if not check_in_child:
        return repaired
    stamp = _stamp(dirs)
    verified = _verified_file()
    try:
        if json.loads(verified.read_text()) == stamp:
            return repaired
    except (OSError, ValueError):
        pass
    child = subprocess.run([sys.executable, "-c", "import helpers.jit as j; j.warm_up()"],
                           capture_output=True, text=True, env=os.environ.copy())
    if child.returncode < 0 or child.returncode > 1:  # killed by a signal (segfault)
        _remove_entries(list(_index_files(dirs)))
        print("note: numba's cache of librosa kernels crashed a test process (exit "
              f"{child.returncode}); deleted it, it is rebuilt on first use", file=sys.stderr)
        repaired = True
    elif child.returncode == 0:
        try:
            write_json(verified, _stamp(dirs))
        except OSError:  # a read-only home: check again next time
            pass
    return repaired


def warm_up() -> None:
    """Compile (or load) every numba kernel of librosa that this package's code reaches.

    Runs the STFT/ISTFT, Griffin-Lim, onset, tempo, zero-crossing and spectral-feature paths
    on one second of noise in float32 and float64, so that a process pool started afterwards
    has nothing left to compile.
    """
    import librosa  # noqa: PLC0415 - heavy; only when a pool or a check needs it

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        y = (0.1 * rng.standard_normal(22_050)).astype(dtype)
        spec = librosa.stft(y, n_fft=512, hop_length=128)
        librosa.istft(spec, hop_length=128, length=len(y))
        librosa.griffinlim(np.abs(spec), n_iter=2, hop_length=128, n_fft=512,
                           random_state=0, length=len(y))
        onset = librosa.onset.onset_strength(y=y, sr=22_050)
        librosa.onset.onset_detect(onset_envelope=onset, sr=22_050)
        librosa.feature.tempo(onset_envelope=onset, sr=22_050)
        librosa.feature.zero_crossing_rate(y)
        librosa.zero_crossings(y)
        librosa.util.localmax(onset)
        librosa.util.localmin(onset)


def prepare() -> None:
    """Check and repair the cache, then compile every kernel, one process at a time.

    Two processes preparing at once (two notebooks, two CLI jobs) take turns on a file lock,
    so the compile itself can never race. Call it before work that uses librosa's kernels
    from several processes; `process_pool` does. Once per process: after it, this process
    holds every kernel compiled in memory (the demo would otherwise repeat it at each stage).
    """
    global _prepared
    if _prepared:
        return
    with file_lock(_verified_file().with_name("numba.lock"), "another process compiling"):
        ensure_healthy_cache()
        warm_up()
    _prepared = True


_prepared = False  # set by `prepare` in this process (and inherited by forked workers)


def _one_blas_thread() -> None:
    # Workers already fill the cores; oversubscribed BLAS threads in each made the small
    # matrix products several times slower (measured in the cache and synth benchmarks).
    threadpoolctl.threadpool_limits(1)


def process_pool(n_jobs: int, uses_torch: bool = False) -> ProcessPoolExecutor:
    """A process pool whose workers never compile numba code into the shared cache.

    The parent prepares the cache first (`prepare`): forked workers (Linux) inherit the
    compiled kernels, spawned ones (macOS, Windows) load them from a complete cache. Each
    worker uses one BLAS thread.

    Parameters
    ----------
    n_jobs : int
        Worker processes.
    uses_torch : bool
        The workers run torch. If this process has imported torch, they are spawned, not
        forked: a forked child that runs torch after its parent started torch's OpenMP pool
        hangs for ever (GNU OpenMP is not fork-safe), and a notebook or script that trained
        or scored a model before has started it.
    """
    prepare()
    fork = sys.platform == "linux" and not (uses_torch and "torch" in sys.modules)
    context = multiprocessing.get_context("fork" if fork else "spawn")
    return ProcessPoolExecutor(n_jobs, mp_context=context, initializer=_one_blas_thread)
