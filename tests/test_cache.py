"""Feature cache: parallel, resumable, atomic, safe to share, failures logged and retried."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import tone

import helpers.cache as cache_module
from helpers.audio import load_clip, mel_db
from helpers.cache import CacheDataset, CacheError, FeatureCache, preprocess
from helpers.config import FrontEndConfig
from helpers.datasets import load_manifest, validate_manifest, write_manifest

CFG = FrontEndConfig(duration=2.0)


def _all_mels(cache_dir, manifest) -> dict[str, np.ndarray]:
    cache = FeatureCache(cache_dir)
    return {p: np.array(cache.get(p)) for p in manifest["path"] if cache.has(p)}


def test_preprocess_stores_float16_mels_equal_to_the_front_end(tmp_path, audio_folder):
    manifest = load_manifest(audio_folder)
    report = preprocess(manifest, tmp_path / "c", CFG, n_jobs=1, chunk_size=4, progress=False)
    assert report["n_computed"] == len(manifest) and report["n_failed"] == 1
    assert report["bytes_per_clip"] < 2 * CFG.n_mels * CFG.n_frames + 200
    cache = FeatureCache(tmp_path / "c")
    path = manifest["path"][0]
    expected = mel_db(load_clip(path, CFG), CFG)
    assert cache.get(path).dtype == np.float16
    assert np.abs(cache.get(path).astype(np.float32) - expected).max() < 0.05  # fp16 step


def test_failures_are_logged_and_the_rest_finishes(tmp_path, audio_folder):
    manifest = load_manifest(audio_folder)
    report = preprocess(manifest, tmp_path / "c", CFG, n_jobs=2, chunk_size=3, progress=False)
    failures = pd.read_csv(report["failures_csv"])
    assert failures["path"].tolist() == [str(audio_folder / "human" / "broken.wav")]
    assert "cannot decode" in failures["error"][0]
    dataset = CacheDataset(tmp_path / "c", manifest)
    assert len(dataset) == len(manifest) - 1
    assert dataset.dropped == [str(audio_folder / "human" / "broken.wav")]
    x, y = dataset[0]
    assert tuple(x.shape) == (CFG.n_mels, CFG.n_frames) and str(x.dtype) == "torch.float32"
    assert float(y) == (1.0 if dataset.frame["label"][0] == "ai" else 0.0)


def test_parallel_and_serial_give_identical_features(tmp_path, audio_folder):
    manifest = load_manifest(audio_folder)
    preprocess(manifest, tmp_path / "a", CFG, n_jobs=1, progress=False)
    preprocess(manifest, tmp_path / "b", CFG, n_jobs=2, chunk_size=2, progress=False)
    a, b = _all_mels(tmp_path / "a", manifest), _all_mels(tmp_path / "b", manifest)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_preprocess_resumes_after_a_crash(tmp_path, audio_folder, monkeypatch):
    manifest = load_manifest(audio_folder)
    real = cache_module._process_chunk
    calls = {"n": 0}

    def crash_after_two(paths, config, shard):
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the job dies here
        calls["n"] += 1
        return real(paths, config, shard)

    monkeypatch.setattr(cache_module, "_process_chunk", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        preprocess(manifest, tmp_path / "c", CFG, n_jobs=1, chunk_size=3, progress=False)
    monkeypatch.setattr(cache_module, "_process_chunk", real)
    report = preprocess(manifest, tmp_path / "c", CFG, n_jobs=1, chunk_size=3, progress=False)
    assert report["n_cached_before"] == 6 and report["n_computed"] == len(manifest) - 6
    preprocess(manifest, tmp_path / "ref", CFG, n_jobs=1, progress=False)
    got, ref = _all_mels(tmp_path / "c", manifest), _all_mels(tmp_path / "ref", manifest)
    assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)


def test_preprocess_resumes_after_kill(tmp_path):
    """SIGKILL the CLI mid-way; the restart computes only the rest, with identical results."""
    folder = tmp_path / "songs"
    rows = []
    for i in range(30):
        path = folder / f"s{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, tone(6.0, 44_100, 200.0 + 10 * i, seed=i), 44_100)
        rows.append({"path": path.name, "label": "ai" if i % 2 else "human", "split": "train"})
    manifest_csv = write_manifest(pd.DataFrame(rows), folder / "manifest.csv")
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "helpers", "preprocess", "--manifest", str(manifest_csv),
           "--cache", str(cache), "--jobs", "1", "--chunk-size", "1", "--duration", "6"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((cache / "shards").glob("*.npy"))) < 10 and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list((cache / "shards").glob("*.npy")))
    assert 10 <= finished < 30, "the kill should land mid-way"
    out = subprocess.run([*cmd], capture_output=True, text=True, check=True)
    assert f'"n_cached_before": {finished}' in out.stdout
    manifest = load_manifest(manifest_csv)
    config = FrontEndConfig(duration=6.0)
    preprocess(manifest, tmp_path / "ref", config, n_jobs=1, progress=False)
    got, ref = _all_mels(cache, manifest), _all_mels(tmp_path / "ref", manifest)
    assert len(got) == 30 and all(np.array_equal(got[k], ref[k]) for k in ref)


def test_a_cache_refuses_a_different_front_end(tmp_path, audio_folder):
    manifest = load_manifest(audio_folder)
    preprocess(manifest.head(2), tmp_path / "c", CFG, n_jobs=1, progress=False)
    with pytest.raises(CacheError, match="different front end"):
        preprocess(manifest, tmp_path / "c", FrontEndConfig(duration=3.0), n_jobs=1)
    with pytest.raises(CacheError, match="different front end"):
        preprocess(manifest, tmp_path / "c", replace(CFG, codec="mp3"), n_jobs=1)
    # An unused control's bitrate does not change a feature; such a cache stays usable.
    unused = replace(CFG, codec_bitrate_kbps=CFG.codec_bitrate_kbps + 8)
    preprocess(manifest.head(2), tmp_path / "c", unused, n_jobs=1, progress=False)


def test_not_a_cache_and_damaged_shard(tmp_path, audio_folder):
    with pytest.raises(CacheError, match="not a feature cache"):
        FeatureCache(tmp_path)
    manifest = load_manifest(audio_folder)
    preprocess(manifest, tmp_path / "c", CFG, n_jobs=1, progress=False)
    shard = next((tmp_path / "c" / "shards").glob("*.npy"))
    shard.write_bytes(shard.read_bytes()[:100])  # truncated on disk
    cache = FeatureCache(tmp_path / "c")
    with pytest.raises(CacheError, match="damaged shard"):
        cache.get(manifest["path"][0])


def test_new_manifest_rows_are_added_without_recomputing(tmp_path, audio_folder):
    manifest = load_manifest(audio_folder)
    preprocess(manifest.head(5), tmp_path / "c", CFG, n_jobs=1, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in Path(tmp_path / "c/shards").glob("*.npy")}
    report = preprocess(manifest, tmp_path / "c", CFG, n_jobs=1, progress=False)
    assert report["n_cached_before"] == 5
    after = {p.name: p.stat().st_mtime_ns for p in Path(tmp_path / "c/shards").glob("*.npy")}
    assert all(after[name] == t for name, t in before.items())


def _shard_rows(cache_dir) -> pd.DataFrame:
    """Every row of every finished shard table (a shard is finished once its .npy exists)."""
    tables = [pd.read_csv(npy.with_suffix(".csv"), keep_default_na=False)
              for npy in (Path(cache_dir) / "shards").glob("shard_*.npy")]
    return pd.concat(tables, ignore_index=True)


def _expect_served(cache_dir, manifest, config) -> None:
    """The cache serves every clip of `manifest`, each with its own file's features."""
    dataset = CacheDataset(cache_dir, manifest)
    assert len(dataset) == len(manifest) and not dataset.dropped
    for i, path in enumerate(dataset.frame["path"]):
        expected = mel_db(load_clip(path, config), config)
        assert np.abs(dataset[i][0].numpy() - expected).max() < 0.05, path  # fp16 step


def test_failed_files_are_retried_on_the_next_run(tmp_path, audio_folder):
    manifest = load_manifest(audio_folder)
    late = audio_folder / "ai" / "late.wav"  # listed, but its download had not finished
    manifest = validate_manifest(pd.concat([manifest, pd.DataFrame(
        [{"path": str(late), "label": "ai", "split": "train"}])], ignore_index=True))
    broken = str(audio_folder / "human" / "broken.wav")
    first = preprocess(manifest, tmp_path / "c", CFG, n_jobs=1, chunk_size=4, progress=False)
    assert first["n_failed"] == 2
    sf.write(late, tone(2.0, 22_050, 880.0), 22_050)
    second = preprocess(manifest, tmp_path / "c", CFG, n_jobs=1, chunk_size=4, progress=False)
    cache = FeatureCache(tmp_path / "c")
    assert cache.has(str(late)) and list(cache.failures) == [broken]
    assert (second["n_computed"], second["n_retried"], second["n_failed"]) == (2, 2, 1)
    # the file that failed again is recorded again, once; the fixed one is no failure now
    assert pd.read_csv(second["failures_csv"])["path"].tolist() == [broken]
    assert _shard_rows(tmp_path / "c")["path"].value_counts().max() == 1
    _expect_served(tmp_path / "c", manifest[manifest["path"] != broken], CFG)
    kept = preprocess(manifest, tmp_path / "c", CFG, n_jobs=1, progress=False,
                      retry_failed=False)
    assert (kept["n_computed"], kept["n_failed"]) == (0, 1)


def test_a_bug_in_the_front_end_raises_instead_of_becoming_a_failed_file(
        tmp_path, audio_folder, monkeypatch):
    def buggy_mel(y, config):
        raise TypeError("unsupported operand type(s)")  # a programming error, not a bad file

    monkeypatch.setattr(cache_module, "mel_db", buggy_mel)
    with pytest.raises(TypeError, match="unsupported operand"):
        preprocess(load_manifest(audio_folder), tmp_path / "c", CFG, n_jobs=1, progress=False)
    assert not list((tmp_path / "c" / "shards").glob("*.npy"))  # no chunk was recorded
    assert not (tmp_path / "c" / "failures.csv").exists()


# The other run: imports first, then waits for the start signal, so that both runs read the
# cache folder at the same moment.
_RACER = """
import sys, time
from pathlib import Path
import helpers.cache
from helpers.cli import main
Path(sys.argv[1]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("shared", [0, 6], ids=["different_clips", "overlapping_clips"])
def test_two_preprocess_runs_at_once_on_one_cache_lose_nothing(tmp_path, shared):
    """A CLI process and this one, 12 clips each, one cache: every clip is there exactly once."""
    folder = tmp_path / "songs"
    folder.mkdir()
    rows = []
    for i in range(24 - shared):
        sf.write(folder / f"s{i:02d}.wav", tone(2.0, 16_000, 200.0 + 25 * i, seed=i), 16_000)
        rows.append({"path": f"s{i:02d}.wav", "label": ("ai", "human")[i % 2],
                     "split": "train"})
    frame = validate_manifest(pd.DataFrame(rows), base_dir=folder)
    other = write_manifest(frame.iloc[12 - shared:], folder / "other.csv")
    cache, ready, go = tmp_path / "cache", tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen(
        [sys.executable, "-c", _RACER, str(ready), str(go), "preprocess", "--manifest",
         str(other), "--cache", str(cache), "--jobs", "1", "--chunk-size", "2",
         "--duration", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.01)
    go.touch()
    preprocess(frame.iloc[:12], cache, CFG, n_jobs=1, chunk_size=2, progress=False)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    rows = _shard_rows(cache)
    assert sorted(rows["path"]) == sorted(frame["path"])
    assert (rows["row"] >= 0).all()
    _expect_served(cache, frame, CFG)
