"""SONICS and GTZAN: manifests from their real layouts, and a download that fits a Colab disk.

Downloads go through `fake_kagglehub.FakeKaggleHub`, a stand-in for the kagglehub module that
serves a SONICS-shaped dataset of 49,000 listed songs (audio made only when asked for) and a
GTZAN-shaped one, and records every request.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from collections import namedtuple

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import tone
from fake_kagglehub import SONICS, FakeKaggleHub, sonics_fake_csv

import helpers.sources as sources
from helpers.cache import preprocess
from helpers.cli import main
from helpers.config import FrontEndConfig
from helpers.datasets import ManifestError, load_manifest


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The stand-in kagglehub, its cache in tmp_path, no Kaggle credentials needed."""
    fake = FakeKaggleHub()
    monkeypatch.setitem(sys.modules, "kagglehub", fake.module())
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    return fake


def _mp3_requests(hub: FakeKaggleHub) -> list[str]:
    return [path for handle, path in hub.requests if handle.startswith(SONICS)
            and path not in ("fake_songs.csv", "real_songs.csv")]


@pytest.fixture
def fake_sonics(tmp_path):
    """A complete local SONICS tree: fake_songs/*.mp3 plus the two metadata CSVs."""
    root = tmp_path / "sonics" / "versions" / "2"
    (root / "fake_songs").mkdir(parents=True)
    rows = []
    for i, (split, source, seconds) in enumerate([("train", "suno", 120), ("valid", "udio", 130),
                                                  ("test", "suno", 95), ("train", "udio", 32),
                                                  ("train", "suno", 12)]):
        name = f"fake_{i}_{source}_{i % 2}"  # SONICS' names carry no extension
        sf.write(root / "fake_songs" / f"{name}.mp3", tone(2.0, 44_100, 300 + 50 * i), 44_100)
        rows.append({"id": f"fake_{i}", "filename": name, "title": f"song {i}",
                     "duration": seconds, "split": split, "algorithm": f"{source}-x",
                     "source": source, "no_vocal": i == 1, "target": 1})
    rows.append({**rows[0], "id": "gone", "filename": "gone"})  # listed, no audio
    pd.DataFrame(rows).to_csv(root / "fake_songs.csv", index=False)
    pd.DataFrame({"id": ["real_0", "real_1"], "filename": ["real_0", "real_1"],
                  "youtube_id": ["abcdEFGhij0", "zzzzzzzzzzz"], "split": ["train", "test"],
                  "title": ["a", "b"], "artist": ["Someone", "Other"]}).to_csv(
        root / "real_songs.csv", index=False)
    return root


def test_sonics_manifest_applies_its_official_filters(fake_sonics, caplog):
    with caplog.at_level(logging.WARNING, logger="helpers.sources"):
        m = sources.sonics_manifest(fake_sonics)
    # the 12 s song goes (SONICS keeps duration >= 30 s); "gone" has no audio
    assert m["track_id"].tolist() == ["fake_0", "fake_1", "fake_2", "fake_3"]
    assert m["split"].tolist() == ["train", "val", "test", "train"]
    assert m["source"].tolist() == ["sonics-suno", "sonics-udio", "sonics-suno", "sonics-udio"]
    assert m["path"].str.endswith(".mp3").all() and "1 fake_songs.csv rows" in caplog.text
    no_vocals = sources.sonics_manifest(fake_sonics, drop_instrumental=True)
    assert "fake_1" not in set(no_vocals["track_id"])
    assert len(sources.sonics_manifest(fake_sonics, min_duration=0)) == 5


def test_sonics_manifest_can_list_songs_before_they_are_downloaded(fake_sonics):
    m = sources.sonics_manifest(fake_sonics, only_present=False, min_duration=0)
    assert len(m) == 6  # "gone" too: planned, not yet fetched
    assert m["path"].iloc[-1] == str(fake_sonics / "fake_songs" / "gone.mp3")


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
        sources.sonics_manifest(tmp_path, min_duration=0)


def test_sonics_filters_at_scale(tmp_path):
    listed = sonics_fake_csv(49_000)
    listed.to_csv(tmp_path / "fake_songs.csv", index=False)
    table = sources.sonics_table(tmp_path)
    assert len(table) == (listed["duration"] >= 30).sum() < len(listed)
    assert table.attrs["filtered"] == {"shorter than 30 s": (listed["duration"] < 30).sum()}
    vocal = sources.sonics_table(tmp_path, drop_instrumental=True)
    assert len(vocal) == ((listed["duration"] >= 30) & ~listed["no_vocal"]).sum()


@pytest.fixture
def fake_gtzan(tmp_path):
    """A GTZAN tree with a few clips per genre and the corrupt jazz.00054.wav."""
    root = tmp_path / "gtzan" / "Data" / "genres_original"
    for genre in ("blues", "jazz", "rock", "pop"):
        (root / genre).mkdir(parents=True)
        for i in (0, 1, 2, 15, 22):
            sf.write(root / genre / f"{genre}.{i:05d}.wav", tone(2.0, 22_050, 200 + 9 * i),
                     22_050)
    (root / "jazz" / "jazz.00054.wav").write_bytes(b"RIFF" + bytes(40))
    return tmp_path / "gtzan"


def test_gtzan_uses_the_fault_filtered_split_and_leaves_out_repeats(fake_gtzan):
    m = sources.gtzan_manifest(fake_gtzan)
    ids = set(m["track_id"])
    # pop.00015 and pop.00022 are Sturm's repeats, left out of the fault-filtered partition
    assert {"pop.00015", "pop.00022"} <= set(sources.gtzan_left_out())
    assert not ids & {"pop.00015", "pop.00022"} and len(m) == 19
    split = m.set_index("track_id")["split"]
    assert split["blues.00000"] == "val" and split["blues.00015"] == "test"
    assert split["rock.00000"] == "train" and split["jazz.00054"] == "train"
    assert len(sources.gtzan_manifest(fake_gtzan, split="hash")) == 21


def test_the_fault_filtered_partition_is_the_published_one():
    table = sources.gtzan_fault_filtered()
    assert table["track_id"].is_unique
    assert table["split"].value_counts().to_dict() == {"train": 443, "test": 290, "val": 197}
    assert len(sources.gtzan_left_out()) == 70


def test_the_corrupt_gtzan_file_is_skipped_when_features_are_made(fake_gtzan, tmp_path):
    m = sources.gtzan_manifest(fake_gtzan)
    report = preprocess(m[m["genre"] == "jazz"], tmp_path / "cache",
                        FrontEndConfig(duration=2.0), n_jobs=1, progress=False)
    assert report["n_failed"] == 1
    assert pd.read_csv(report["failures_csv"])["path"].iloc[0].endswith("jazz.00054.wav")


def test_limit_fetches_the_csv_and_only_the_chosen_songs(hub, tmp_path):
    path = sources.download("sonics+gtzan", tmp_path / "data", limit=100, progress=False)
    m = load_manifest(path, check_files=True)
    mp3 = _mp3_requests(hub)
    sonics_requests = [p for h, p in hub.requests if h.startswith(SONICS)]
    assert sonics_requests == ["fake_songs.csv", *mp3]  # the CSV, then single files only
    assert all(p.startswith("fake_songs/") and p.endswith(".mp3") for p in mp3)
    ai = m[m["label"] == "ai"]
    assert len(mp3) == len(set(mp3)) == len(ai)
    assert len(mp3) <= 2 * 100 + (ai["split"] != "train").sum()
    assert sorted(p.rsplit("/", 1)[1] for p in mp3) == sorted(ai["path"].map(
        lambda p: p.rsplit("/", 1)[1]))
    counts = m.groupby(["split", "label"]).size().unstack()
    assert counts.loc["train", "ai"] == 100
    assert ((counts["ai"] - counts["human"]).abs() <= 0.1 * counts.max(axis=1)).all()
    listed = sonics_fake_csv(hub.n_fake).set_index("filename")
    chosen = listed.loc[[p.rsplit("/", 1)[1][:-4] for p in mp3]]
    assert (chosen["duration"] >= 30).all()  # SONICS' own filter, before anything is fetched
    assert set(chosen["source"]) == {"suno", "udio"}


def test_an_interrupted_download_resumes_the_same_files(hub, tmp_path):
    hub.interrupt_after = 15
    with pytest.raises(KeyboardInterrupt):
        sources.download("sonics+gtzan", tmp_path / "data", limit=20, progress=False)
    first = [p for _, p in hub.fetched if p and p.endswith(".mp3")]
    hub.interrupt_after = None
    path = sources.download("sonics+gtzan", tmp_path / "data", limit=20, progress=False)
    fetched = [p for _, p in hub.fetched if p and p.endswith(".mp3")]
    m = load_manifest(path, check_files=True)
    ai = m[m["label"] == "ai"]
    assert len(first) == 15 and len(fetched) == len(set(fetched)) == len(ai)
    assert set(first) <= {f"fake_songs/{p.rsplit('/', 1)[1]}" for p in ai["path"]}


def test_later_files_come_from_the_version_of_the_csv(hub, tmp_path):
    sources.download("sonics+gtzan", tmp_path / "data", limit=5, progress=False)
    handles = {h for h, p in hub.requests if p and p.startswith("fake_songs/")}
    assert handles == {f"{SONICS}/versions/2"}


def test_failed_files_are_left_out_with_a_warning(hub, tmp_path, caplog):
    sources.download("sonics", tmp_path / "probe", limit=10, progress=False)
    victim = _mp3_requests(hub)[3]
    hub.fail_paths.add(victim)  # the network fails for this one file
    with caplog.at_level(logging.WARNING, logger="helpers.sources"):
        m = pd.read_csv(sources.download("sonics", tmp_path / "data", limit=10, progress=False))
    assert not m["path"].str.endswith(victim.rsplit("/", 1)[1]).any()
    assert "1 SONICS file(s) failed" in caplog.text and "run the same command again" in caplog.text


def test_a_download_that_will_not_fit_is_refused_before_any_audio(hub, tmp_path, monkeypatch,
                                                                   capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sources.shutil, "disk_usage",
                        lambda path: usage(80e9, 76e9, 4_000_000_000))
    with pytest.raises(sources.DiskSpaceError) as info:
        sources.download("sonics", tmp_path / "data", limit=2000, progress=False)
    message = str(info.value)
    assert "4.0 GB free" in message and "--limit" in message and "--cache-dir" in message
    needed = float(message.split("needs about ")[1].split(" GB")[0])
    assert needed > 4.0
    assert _mp3_requests(hub) == []
    assert main(["download", "--dataset", "sonics", "--limit", "2000",
                 "--out", str(tmp_path / "cli")]) == 1
    assert "not downloading" in capsys.readouterr().err


def test_gtzan_is_refused_on_a_full_disk_unless_cached(hub, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    free = {"bytes": 1_000_000_000}
    monkeypatch.setattr(sources.shutil, "disk_usage",
                        lambda path: usage(80e9, 79e9, free["bytes"]))
    with pytest.raises(sources.DiskSpaceError, match="GTZAN"):
        sources.download("gtzan", tmp_path / "data", progress=False)
    assert hub.requests == []
    free["bytes"] = 10e9
    sources.download("gtzan", tmp_path / "data", progress=False)
    free["bytes"] = 1_000_000_000  # already cached: nothing more to store
    sources.download("gtzan", tmp_path / "data", progress=False)


def test_cache_dir_moves_kagglehubs_cache(hub, tmp_path):
    drive = tmp_path / "drive" / "kaggle"
    assert main(["download", "--dataset", "sonics", "--limit", "3", "--cache-dir", str(drive),
                 "--out", str(tmp_path / "data")]) == 0
    m = load_manifest(tmp_path / "data" / "manifest.csv", check_files=True)
    assert m["path"].str.startswith(str(drive)).all()


def test_credentials_current_token_flow_first_then_legacy(monkeypatch, tmp_path):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert sources.kaggle_credentials_source() is None
    assert "KAGGLE_API_TOKEN" in sources.CREDENTIALS_HELP
    kaggle = tmp_path / ".kaggle"
    kaggle.mkdir()
    (kaggle / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert sources.kaggle_credentials_source() == "kaggle.json"
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert sources.kaggle_credentials_source() == "environment"
    (kaggle / "access_token").write_text("KGAT_abc")
    assert sources.kaggle_credentials_source() == "access_token"
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_def")
    assert sources.kaggle_credentials_source() == "KAGGLE_API_TOKEN"


def test_colab_token_secret_is_exported_for_kagglehub(monkeypatch, tmp_path):
    import sys
    import types

    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    secrets = {"KAGGLE_API_TOKEN": "KGAT_colab"}

    def get(name):
        if name not in secrets:
            raise KeyError(name)  # what Colab's userdata does for an unknown secret
        return secrets[name]

    colab = types.ModuleType("google.colab")
    colab.userdata = types.SimpleNamespace(get=get)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    assert sources.kaggle_credentials_source() == "colab-secret KAGGLE_API_TOKEN"
    assert os.environ["KAGGLE_API_TOKEN"] == "KGAT_colab"


# --- YouTube (SONICS' human songs) with a stand-in yt_dlp ---------------------------------

BOT = "ERROR: [youtube] x: Sign in to confirm you're not a bot. Use --cookies-from-browser"


class FakeYouTube:
    """yt_dlp stand-in: `script[id]` is a list of outcomes, one per attempt (None: success)."""

    def __init__(self, script: dict[str, list[str | None]], warning: str | None = None):
        self.script, self.warning, self.attempts = script, warning, []

    def module(self):
        outer = self

        class YoutubeDL:
            def __init__(self, options):
                self.out, self.logger = options["outtmpl"], options["logger"]

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def download(self, urls):
                vid = urls[0].rsplit("=", 1)[1]
                outer.attempts.append(vid)
                if outer.warning:
                    self.logger.warning(outer.warning)
                outcomes = outer.script[vid]
                outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
                if outcome is not None:
                    raise RuntimeError(outcome)
                sf.write(self.out.replace("%(id)s.%(ext)s", f"{vid}.wav"), np.zeros(10), 8000)

        return types.SimpleNamespace(YoutubeDL=YoutubeDL, utils=types.SimpleNamespace(
            download_range_func=lambda *a: None))


@pytest.fixture
def youtube(monkeypatch, tmp_path):
    monkeypatch.setattr(sources.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(sources.time, "sleep", lambda s: None)

    def install(script, warning=None):
        fake = FakeYouTube(script, warning)
        monkeypatch.setitem(sys.modules, "yt_dlp", fake.module())
        csv = tmp_path / "real_songs.csv"
        pd.DataFrame({"youtube_id": list(script)}).to_csv(csv, index=False)
        return fake, csv

    return install


@pytest.mark.parametrize(("message", "status"), [
    ("ERROR: [youtube] abc: Video unavailable. This video is private", "gone"),
    ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader",
     "gone"),
    ("ERROR: [youtube] abc: Video unavailable. This content isn't available, try again later.",
     "blocked"),
    (BOT, "blocked"),
    ("ERROR: unable to download video data: HTTP Error 429: Too Many Requests", "blocked"),
    ("ERROR: [youtube] abc: Sign in to confirm your age", "blocked"),
    ("ERROR: Unable to download webpage: <urlopen error [Errno -3] Temporary failure in name "
     "resolution>", "blocked"),
    ("WARNING: [youtube] No supported JavaScript runtime could be found", "no-js"),
    ("ERROR: Postprocessing: audio conversion failed", "failed"),
])
def test_youtube_errors_are_told_apart(message, status):
    assert sources.classify_youtube_error(message) == status


def test_youtube_fetch_retries_what_may_work_later(youtube, tmp_path):
    fake, csv = youtube({
        "ok1": [None],
        "gone": ["Video unavailable. This video is private"],
        "flaky": ["HTTP Error 503: Service Unavailable", None],  # works on the retry
        "bot": [BOT],
        "ok2": [None],
    })
    status = sources.fetch_youtube_audio(csv, tmp_path / "out", retries=1, backoff_s=0,
                                         max_blocked=5, sleep_s=0, progress=False)
    got = status.set_index("youtube_id")
    assert got["status"].to_dict() == {"ok1": "ok", "gone": "gone", "flaky": "ok",
                                       "bot": "blocked", "ok2": "ok"}
    assert got.loc["gone", "attempts"] == "1" and got.loc["bot", "attempts"] == "2"
    fake.script["bot"] = [None]  # YouTube lets us in again
    status = sources.fetch_youtube_audio(csv, tmp_path / "out", sleep_s=0, progress=False)
    assert fake.attempts[-1:] == ["bot"] and fake.attempts.count("gone") == 1
    assert set(status["status"]) == {"ok", "gone"}
    assert status.set_index("youtube_id").loc["bot", "attempts"] == "3"


def test_youtube_bot_checks_stop_the_run_and_keep_the_ids(youtube, tmp_path, caplog):
    fake, csv = youtube({f"id{i}": [BOT] for i in range(6)})
    with caplog.at_level(logging.WARNING, logger="helpers.sources"):
        status = sources.fetch_youtube_audio(csv, tmp_path / "out", retries=0, max_blocked=2,
                                             sleep_s=0, progress=False)
    assert fake.attempts == ["id0", "id1"]
    assert "refusing this machine" in caplog.text and "4 id(s) not tried yet" in caplog.text
    assert (status["status"] == "blocked").all()


def test_youtube_without_a_javascript_runtime_says_so(youtube, tmp_path):
    fake, csv = youtube({"a": ["Requested format is not available"], "b": [None]},
                        warning="[youtube] No supported JavaScript runtime could be found")
    with pytest.raises(RuntimeError, match="JavaScript runtime.*deno"):
        sources.fetch_youtube_audio(csv, tmp_path / "out", sleep_s=0, progress=False)
    assert fake.attempts == ["a"]
    status = pd.read_csv(tmp_path / "out" / "status.csv")
    assert status["status"].tolist() == ["blocked"]  # tried again next run


def test_youtube_limit_counts_fetched_songs(youtube, tmp_path):
    fake, csv = youtube({"g1": ["Video unavailable"], "a": [None], "b": [None], "c": [None]})
    status = sources.fetch_youtube_audio(csv, tmp_path / "out", limit=2, sleep_s=0,
                                         progress=False)
    assert status["status"].tolist() == ["gone", "ok", "ok"]


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
