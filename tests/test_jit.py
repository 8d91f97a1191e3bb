"""Numba's kernel cache under process pools: workers never write it, damage is found and fixed.

Every test runs librosa in child processes with its own ``NUMBA_CACHE_DIR`` (numba reads it at
import), so nothing here touches the cache other tests use.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# Runs in a child with an empty cache: prepare and start a pool the way synth/preprocess do,
# then make the workers run every kernel in both precisions, and report what they wrote.
POOL_SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np
from helpers import jit

def work(dtype):
    import librosa
    y = (0.1 * np.random.default_rng(1).standard_normal(22_050)).astype(dtype)
    spec = librosa.stft(y, n_fft=512, hop_length=128)
    librosa.griffinlim(np.abs(spec), n_iter=2, hop_length=128, n_fft=512, random_state=0)
    onset = librosa.onset.onset_strength(y=y, sr=22_050)
    return len(librosa.onset.onset_detect(onset_envelope=onset, sr=22_050))

def files(root):
    return {str(p): p.stat().st_mtime_ns for p in Path(root).rglob("*.nb*")}

root = sys.argv[1]
with jit.process_pool(2) as pool:
    before = files(root)
    results = list(pool.map(work, [np.float32, np.float64, np.float32, np.float64]))
after = files(root)
print(json.dumps({"before": before, "after": after, "results": results}))
"""

# Runs the kernels the demo needs (the crash was in onset detection after synth).
USE_SCRIPT = """
import numpy as np, librosa
for dtype in (np.float32, np.float64):
    y = (0.1 * np.random.default_rng(0).standard_normal(22_050)).astype(dtype)
    onset = librosa.onset.onset_strength(y=y, sr=22_050)
    librosa.onset.onset_detect(onset_envelope=onset, sr=22_050)
    librosa.istft(librosa.stft(y))
print("ok")
"""


def _env(cache: Path, home: Path) -> dict[str, str]:
    return {**os.environ, "NUMBA_CACHE_DIR": str(cache), "XDG_CACHE_HOME": str(home)}


def _run(script: str, cache: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], env=_env(cache, home),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory):
    """An empty kernel cache, prepared and used by a 2-worker pool in a child process."""
    base = tmp_path_factory.mktemp("jit")
    cache, home = base / "numba", base / "home"
    child = _run(POOL_SCRIPT, cache, home, str(cache))
    assert child.returncode == 0, child.stderr[-2000:]
    return cache, json.loads(child.stdout.strip().splitlines()[-1])


def test_pool_workers_compile_nothing_into_the_shared_cache(pool_run):
    _cache, report = pool_run
    assert report["before"], "prepare() compiled nothing into the cache"
    assert report["after"] == report["before"], "pool workers wrote to the kernel cache"
    assert report["results"][0] == report["results"][2]


def _swapped_copy(cache: Path, dest: Path, stem: str) -> Path:
    """A copy of `cache` whose `stem` kernel has its first two overloads' code swapped: the
    state two processes compiling different signatures at once can leave behind."""
    shutil.copytree(cache, dest)
    data = sorted(dest.rglob(f"{stem}.*.nbc"))
    assert len(data) >= 2, f"no two overloads of {stem} in the cache"
    a, b = data[0], data[1]
    tmp = a.with_suffix(".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    return next(dest.rglob(f"{stem}.nbi"))


@pytest.mark.parametrize("stem", ["guf-utils.__peak_pick*-*", "spectrum.__overlap_add-*"])
def test_a_mixed_up_cache_is_found_and_repaired_with_one_line(pool_run, tmp_path, stem):
    from helpers import jit

    cache, _ = pool_run
    damaged = tmp_path / "numba"
    index = _swapped_copy(cache, damaged, stem)
    home = tmp_path / "home"
    assert jit.find_corrupt_entries([damaged]) == [index]
    assert jit.find_corrupt_entries([cache]) == []

    broken = _run(USE_SCRIPT, damaged, home)
    assert broken.returncode != 0  # a segfault (peak_pick) or a type error (overlap_add)

    repair = _run("from helpers import jit; jit.ensure_healthy_cache()", damaged, home)
    assert repair.returncode == 0, repair.stderr[-2000:]
    notes = [line for line in repair.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "damaged numba cache" in notes[0]
    assert jit.find_corrupt_entries([damaged]) == []  # removed, then recompiled by the check
    assert _run(USE_SCRIPT, damaged, home).stdout.strip() == "ok"


def test_a_healthy_cache_is_left_alone(pool_run, tmp_path):
    from helpers import jit

    cache, _ = pool_run
    copy = tmp_path / "numba"
    shutil.copytree(cache, copy)
    before = sorted(str(p.relative_to(copy)) for p in copy.rglob("*"))
    check = _run("from helpers import jit; print(jit.ensure_healthy_cache())", copy,
                 tmp_path / "home")
    assert check.stdout.strip() == "False" and "note:" not in check.stderr
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*")) == before
    assert jit.find_corrupt_entries([copy]) == []
