"""Where a benchmark number came from, and when an earlier artifact may stand in for a new one.

Two jobs, one rule each:

* **Provenance.** `write_result` adds `provenance` (the commit and whether the tree had
  uncommitted changes, the UTC date, library versions, the CPU, thread settings, the load
  average and the benchmark's own settings) to every results JSON and writes it atomically.
  A number without these cannot be compared with another, or traced to the code that made it.
* **Reuse by fingerprint.** Benchmarks keep expensive artifacts (a corpus, a feature cache, a
  demo run) between runs. An artifact is reused only when the fingerprint of the settings that
  made it, stored beside it when it was made (`stamp`), equals the fingerprint of the settings
  wanted now; otherwise it is rebuilt, or, for a folder the user named, refused. Existence
  alone proves nothing: an artifact left by another configuration would otherwise be measured
  and then reported under the settings that were *meant*.

    >>> record = prepare(work / "corpus", {"sr": 22050}, build=lambda: make(work / "corpus"))
    >>> write_result(out, {"corpus": record, ...}, config=vars(args))
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from helpers.io import finite, json_default, read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
#: Libraries whose version can change a benchmark's numbers; recorded when installed.
LIBRARIES = ("numpy", "torch", "librosa", "soundfile", "soxr", "scipy", "scikit-learn",
             "faiss-cpu", "pandas", "resampy", "h5py", "threadpoolctl")
#: CPU features that decide which kernels torch, oneDNN and BLAS pick.
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


class StaleArtifactError(RuntimeError):
    """An artifact exists but was made with other (or unrecorded) settings, and may not be
    rebuilt in place; the message names it and says what to do."""


# ------------------------------------------------------------------------------------------
# Provenance
# ------------------------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


#: Paths whose changes say nothing about the code that ran: benchmark outputs. A rerun
#: changes its own results file before it is committed, and the table built from them.
OUTPUT_PREFIXES = ("benchmarks/results/",)


def dirty_code(changed: list[str]) -> bool:
    """Whether any of `changed` is code or data the numbers depend on (not an output)."""
    return any(not path.startswith(OUTPUT_PREFIXES) for path in changed)


def git_state() -> dict[str, Any]:
    """The checked-out commit and the paths that differ from it (``None`` outside a checkout).

    ``dirty`` is true when a path other than a benchmark output (`OUTPUT_PREFIXES`) differs:
    the code that ran is then not the commit's. Every changed path is listed either way.
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    changed = [line[3:] for line in (status or "").splitlines() if line.strip()]
    return {"commit": commit.strip() if commit else None,
            "dirty": dirty_code(changed) if status is not None else None,
            "changed_paths": changed[:30], "n_changed_paths": len(changed)}


def _cpuinfo() -> dict[str, Any]:
    """CPU model and the `CPU_FLAGS` it has, from ``/proc/cpuinfo`` (Linux)."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu_model": model or platform.processor() or platform.machine(),
            "cpu_flags": [f for f in CPU_FLAGS if f in flags]}


def machine() -> dict[str, Any]:
    """CPU model, core counts, relevant instruction-set flags, platform and load average."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {**_cpuinfo(), "cpu_count": os.cpu_count(), "cpu_affinity": affinity,
            "platform": platform.platform(),
            "load_average_1_5_15_min": [round(v, 2) for v in load] if load else None}


def threads() -> dict[str, Any]:
    """Thread settings in force: environment variables, torch's (if loaded), BLAS/OpenMP pools."""
    out: dict[str, Any] = {"env": {v: os.environ[v] for v in THREAD_VARIABLES
                                   if v in os.environ}}
    torch = sys.modules.get("torch")  # only if the benchmark loaded it: importing costs seconds
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
        out["torch_interop_threads"] = torch.get_num_interop_threads()
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return out
    out["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads")}
                          for p in threadpool_info()]
    return out


def versions() -> dict[str, str]:
    """Python and the installed versions of `LIBRARIES`."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def provenance(config: Mapping[str, Any]) -> dict[str, Any]:
    """Everything needed to trace and compare one benchmark run.

    Parameters
    ----------
    config : mapping
        The benchmark's settings as run (e.g. ``vars(args)``); stored under ``config``.

    Returns
    -------
    dict
        ``git`` (commit, dirty, changed paths), ``date_utc`` (ISO 8601), ``versions``,
        ``machine`` (CPU model, cores, flags, platform, load average), ``threads``,
        ``command`` (argv) and ``config``.
    """
    return {"git": git_state(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": versions(), "machine": machine(), "threads": threads(),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]], "config": dict(config)}


def write_result(path: str | os.PathLike, result: Mapping[str, Any],
                 config: Mapping[str, Any]) -> dict[str, Any]:
    """Add `provenance(config)` to `result` and write it atomically as JSON.

    Returns
    -------
    dict
        What was written (a new dict; `result` is not modified).
    """
    out = {**result, "provenance": provenance(config)}
    write_json(path, out)
    return out


# ------------------------------------------------------------------------------------------
# Reuse by fingerprint
# ------------------------------------------------------------------------------------------


def fingerprint(settings: Mapping[str, Any]) -> str:
    """SHA-256 of the settings as canonical JSON (sorted keys): equal settings, equal hash."""
    text = json.dumps(finite(dict(settings)), sort_keys=True, default=json_default,
                      separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def stamp_path(artifact: str | os.PathLike) -> Path:
    """Where `artifact`'s fingerprint lives: a hidden JSON beside it (a file or a folder)."""
    artifact = Path(artifact)
    return artifact.with_name(f".{artifact.name}.fingerprint.json")


def read_stamp(artifact: str | os.PathLike) -> dict[str, Any] | None:
    """The stamp stored beside `artifact`, or ``None`` when it has none (or a damaged one)."""
    try:
        record = read_json(stamp_path(artifact))
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_current(artifact: str | os.PathLike, settings: Mapping[str, Any]) -> bool:
    """True when `artifact` exists and its stamp's fingerprint is that of `settings`."""
    record = read_stamp(artifact)
    return (Path(artifact).exists() and record is not None
            and record.get("fingerprint") == fingerprint(settings))


def stamp(artifact: str | os.PathLike, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Record that `artifact`, now complete, was made with `settings`; returns the record.

    Call it only after the artifact is finished: the stamp is what makes it reusable.
    """
    git = git_state()
    record = {"fingerprint": fingerprint(settings), "settings": dict(settings),
              "made_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "made_at_commit": git["commit"], "made_with_dirty_tree": git["dirty"]}
    write_json(stamp_path(artifact), record)
    return record


def discard_if_stale(artifact: str | os.PathLike, settings: Mapping[str, Any],
                     rebuild: bool = True) -> bool:
    """Remove `artifact` (and its stamp) unless it is current; True when it was current.

    With ``rebuild=False`` a stale artifact is not removed: `StaleArtifactError` is raised
    instead (for folders the user named, which this code must not delete).
    """
    artifact = Path(artifact)
    if is_current(artifact, settings):
        return True
    if artifact.exists() or artifact.is_symlink():
        if not rebuild:
            recorded = read_stamp(artifact)
            raise StaleArtifactError(
                f"{artifact} was made with "
                + (f"other settings ({recorded.get('settings')})" if recorded
                   else "unrecorded settings (no fingerprint beside it)")
                + f", not with {dict(settings)}; delete it, or pass a new or empty path")
        if artifact.is_dir() and not artifact.is_symlink():
            shutil.rmtree(artifact)
        else:
            artifact.unlink()
    # Before any rebuild: an interrupted rebuild must never look finished.
    stamp_path(artifact).unlink(missing_ok=True)
    return False


def prepare(artifact: str | os.PathLike, settings: Mapping[str, Any],
            build: Callable[[], object], rebuild: bool = True) -> dict[str, Any]:
    """Reuse `artifact` if its fingerprint matches `settings`, else (re)build and stamp it.

    Parameters
    ----------
    artifact : str or path-like
        A file or folder.
    settings : mapping
        Everything that decides the artifact's content (JSON-serialisable).
    build : callable
        Makes the artifact from nothing (called only when it is not current).
    rebuild : bool
        False for paths the user named: a stale one raises `StaleArtifactError`.

    Returns
    -------
    dict
        The stamp of the artifact actually used (its settings, when and at which commit it
        was made) plus ``reused``: store it in the results JSON.
    """
    reused = discard_if_stale(artifact, settings, rebuild=rebuild)
    if not reused:
        build()
        stamp(artifact, settings)
    return {**(read_stamp(artifact) or {}), "reused": reused}
