"""Feature cache: parallel, resumable, atomic, failures logged and skipped."""

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
from helpers.datasets import load_manifest, write_manifest

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
