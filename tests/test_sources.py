"""SONICS and GTZAN manifests, built from fake folder trees with the real layouts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import tone

import helpers.sources as sources
from helpers.cache import preprocess
from helpers.config import FrontEndConfig
from helpers.datasets import ManifestError


@pytest.fixture
def fake_sonics(tmp_path):
    """kagglehub-like SONICS tree: fake_songs/*.mp3 plus the two metadata CSVs."""
    root = tmp_path / "sonics" / "versions" / "2"
    (root / "fake_songs").mkdir(parents=True)
    rows = []
    for i, (split, algo) in enumerate([("train", "chirp-v3.5"), ("valid", "udio-120s"),
                                       ("test", "chirp-v2-xxl-alpha"), ("train", "udio-30s")]):
        name = f"fake_{i:05d}_{algo}_0"
        sf.write(root / "fake_songs" / f"{name}.mp3", tone(2.0, 44_100, 300 + 50 * i), 44_100)
        rows.append({"id": name, "filename": name, "title": f"song {i}", "duration": "120.0",
                     "split": split, "algorithm": algo, "source": algo.split("-")[0],
                     "no_vocal": "False", "target": "1"})
    rows.append({**rows[0], "id": "gone", "filename": "gone"})  # listed, no audio
    pd.DataFrame(rows).to_csv(root / "fake_songs.csv", index=False)
    pd.DataFrame({"id": ["real_0", "real_1"], "filename": ["real_0", "real_1"],
                  "youtube_id": ["abcdEFGhij0", "zzzzzzzzzzz"], "split": ["train", "test"],
                  "title": ["a", "b"], "artist": ["Someone", "Other"]}).to_csv(
        root / "real_songs.csv", index=False)
    return root


@pytest.fixture
def fake_gtzan(tmp_path):
    """kagglehub-like GTZAN tree, with a corrupt jazz.00054.wav as in the real archive."""
    root = tmp_path / "gtzan" / "Data" / "genres_original"
    for genre in ("blues", "jazz", "rock"):
        (root / genre).mkdir(parents=True)
        for i in range(3):
            sf.write(root / genre / f"{genre}.{i:05d}.wav", tone(2.0, 22_050, 200 + 90 * i),
                     22_050)
    (root / "jazz" / "jazz.00054.wav").write_bytes(b"RIFF" + bytes(40))
    return tmp_path / "gtzan"


def test_sonics_manifest_uses_its_split_and_algorithm(fake_sonics):
    m = sonics_manifest = sources.sonics_manifest(fake_sonics)
    assert len(m) == 4 and (m["label"] == "ai").all()
    assert m["split"].tolist() == ["train", "val", "test", "train"]
    assert m["algorithm"].tolist()[:2] == ["chirp-v3.5", "udio-120s"]
    assert sonics_manifest["path"].str.endswith(".mp3").all()


def test_sonics_human_songs_join_when_fetched(fake_sonics, tmp_path):
    fetched = tmp_path / "yt"
    fetched.mkdir()
    sf.write(fetched / "abcdEFGhij0.mp3", tone(2.0, 44_100), 44_100)
    m = sources.sonics_manifest(fake_sonics, human_audio_dir=fetched)
    human = m[m["label"] == "human"]
    assert len(human) == 1 and human["artist"].iloc[0] == "Someone"


def test_sonics_without_audio_is_a_clear_error(tmp_path):
    (tmp_path / "fake_songs.csv").write_text("id,filename,split\nx,x,train\n")
    with pytest.raises(ManifestError, match="no SONICS audio"):
        sources.sonics_manifest(tmp_path)


def test_gtzan_manifest_and_the_corrupt_file_is_skipped(fake_gtzan, tmp_path):
    m = sources.gtzan_manifest(fake_gtzan)
    assert len(m) == 10 and set(m["genre"]) == {"blues", "jazz", "rock"}
    assert (m["label"] == "human").all()
    assert m.equals(sources.gtzan_manifest(fake_gtzan))  # the split is fixed
    report = preprocess(m, tmp_path / "cache", FrontEndConfig(duration=2.0), n_jobs=1,
                        progress=False)
    assert report["n_failed"] == 1
    failures = pd.read_csv(report["failures_csv"])
    assert failures["path"].iloc[0].endswith("jazz.00054.wav")


def test_download_builds_a_combined_subset_manifest(fake_sonics, fake_gtzan, tmp_path,
                                                    monkeypatch):
    trees = {sources.SONICS_HANDLE: fake_sonics, sources.GTZAN_HANDLE: fake_gtzan}
    monkeypatch.setattr(sources, "kaggle_download", lambda handle: trees[handle])
    path = sources.download("sonics+gtzan", tmp_path / "data", limit=2)
    m = pd.read_csv(path)
    train = m[m["split"] == "train"].groupby("label").size()
    assert train["ai"] <= 2 and train["human"] <= 2
    assert set(m["label"]) == {"ai", "human"}


def test_missing_credentials_message(monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert sources.kaggle_credentials_source() is None
    assert "KAGGLE_USERNAME" in sources.CREDENTIALS_HELP
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert sources.kaggle_credentials_source() == "kaggle.json"


def test_youtube_fetch_without_yt_dlp_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_yt_dlp(name, *args, **kwargs):
        if name == "yt_dlp":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_yt_dlp)
    with pytest.raises(RuntimeError, match="pip install yt-dlp"):
        sources.fetch_youtube_audio(tmp_path / "real_songs.csv", tmp_path / "out")


def test_youtube_fetch_is_resumable_and_records_failures(tmp_path, monkeypatch):
    """A fake yt_dlp module: one id works, one is gone; a re-run tries nothing again."""
    import sys
    import types

    attempts = []

    class FakeYDL:
        def __init__(self, options):
            self.out = options["outtmpl"]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def download(self, urls):
            vid = urls[0].rsplit("=", 1)[1]
            attempts.append(vid)
            if vid == "gone":
                raise RuntimeError("Video unavailable")
            sf.write(self.out.replace("%(id)s.%(ext)s", f"{vid}.wav"), np.zeros(10), 8000)

    fake = types.SimpleNamespace(YoutubeDL=FakeYDL, utils=types.SimpleNamespace(
        download_range_func=lambda *a: None))
    monkeypatch.setitem(sys.modules, "yt_dlp", fake)
    monkeypatch.setattr(sources.shutil, "which", lambda name: "/usr/bin/" + name)
    csv = tmp_path / "real_songs.csv"
    pd.DataFrame({"youtube_id": ["ok1", "gone", "ok2"]}).to_csv(csv, index=False)
    status = sources.fetch_youtube_audio(csv, tmp_path / "out", limit=2, sleep_s=0,
                                         progress=False)
    assert status["status"].tolist() == ["ok", "failed"]
    assert "unavailable" in status["detail"][1]
    status = sources.fetch_youtube_audio(csv, tmp_path / "out", sleep_s=0, progress=False)
    assert attempts == ["ok1", "gone", "ok2"]
    assert status["status"].tolist() == ["ok", "failed", "ok"]
