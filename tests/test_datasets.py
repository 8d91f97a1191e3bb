"""Manifests: one format for every source, with clear errors for bad tables."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from helpers.datasets import (
    ManifestError,
    assign_splits,
    balance,
    folder_manifest,
    load_manifest,
    manifest_fingerprint,
    write_manifest,
)
from helpers.synth import SynthConfig, plan_corpus


def _csv(tmp_path, text: str):
    path = tmp_path / "m.csv"
    path.write_text(text)
    return path


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path):
    m = load_manifest(_csv(tmp_path, "path,label,split\na/x.wav,ai,train\nb.wav,human,test\n"))
    assert m["path"].tolist() == [str(tmp_path / "a" / "x.wav"), str(tmp_path / "b.wav")]
    assert m["track_id"].tolist() == ["x", "b"]
    for column in ("title", "artist", "genre", "source"):
        assert column in m.columns


def test_label_and_split_aliases_are_normalised(tmp_path):
    m = load_manifest(_csv(tmp_path, "path,label,split\nx.wav,Fake,valid\ny.wav,real,TRAIN\n"))
    assert m["label"].tolist() == ["ai", "human"]
    assert m["split"].tolist() == ["val", "train"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("file,label,split\nx.wav,ai,train\n", "missing column(s) ['path']"),
        ("path,label\nx.wav,ai\n", "missing column(s) ['split']"),
        ("path,label,split\nx.wav,robot,train\n", "unknown label"),
        ("path,label,split\nx.wav,ai,holdout\n", "unknown split"),
        ("path,label,split\nx.wav,ai,train\nx.wav,human,test\n", "duplicate path"),
        ("path,label,split\n", "no rows"),
    ],
)
def test_bad_manifests_get_one_clear_error(tmp_path, text, fragment):
    path = _csv(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_missing_files_are_reported_when_asked(tmp_path):
    path = _csv(tmp_path, "path,label,split\nghost.wav,ai,train\n")
    load_manifest(path)  # by default a missing file is found (and skipped) when read
    with pytest.raises(ManifestError, match="do not exist"):
        load_manifest(path, check_files=True)


def test_folder_with_ai_and_human_subfolders(audio_folder):
    m = load_manifest(audio_folder)
    assert set(m["label"]) == {"ai", "human"}
    assert (m["label"] == "ai").sum() == 6
    assert set(m["split"]) <= {"train", "val", "test"}
    assert m["path"].str.startswith(str(audio_folder)).all()


def test_folder_split_and_genre_subfolders(tmp_path):
    for rel in ("ai/test/a.wav", "human/jazz/b.wav", "human/train/rock/c.wav"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    m = folder_manifest(tmp_path).set_index("track_id")
    assert m.loc["ai/test/a", "split"] == "test"
    assert m.loc["human/jazz/b", "genre"] == "jazz"
    assert m.loc["human/train/rock/c", ["split", "genre"]].tolist() == ["train", "rock"]


def test_plain_folder_is_read_with_a_label_and_refused_without(tmp_path):
    for rel in ("a.wav", "jazz/b.flac", "test/c.ogg", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    with pytest.raises(ManifestError, match="manifest.csv or ai/ and human/"):
        load_manifest(tmp_path)
    m = load_manifest(tmp_path, folder_label="human").set_index("track_id")
    assert sorted(m.index) == ["human/a", "human/jazz/b", "human/test/c"]  # no notes.txt
    assert set(m["label"]) == {"human"}
    assert m.loc["human/test/c", "split"] == "test" and m.loc["human/jazz/b", "genre"] == "jazz"
    assert (m["path"].str.startswith(str(tmp_path))).all()
    with pytest.raises(ValueError, match="label must be"):
        folder_manifest(tmp_path, label="robot")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no audio files in it"):
        load_manifest(tmp_path / "empty", folder_label="human")


def test_hash_splits_are_stable_and_roughly_proportional():
    keys = [f"song{i}" for i in range(3000)]
    splits = assign_splits(keys)
    assert splits == assign_splits(keys)
    assert assign_splits(keys[:10]) == splits[:10]  # adding files never moves old ones
    shares = pd.Series(splits).value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.03 and abs(shares["test"] - 0.15) < 0.03


def test_written_manifest_reloads_identically(tmp_path, audio_folder):
    m = load_manifest(audio_folder)
    out = write_manifest(m, tmp_path / "copy" / "manifest.csv")
    again = load_manifest(out)
    pd.testing.assert_frame_equal(m[["path", "label", "split"]], again[["path", "label", "split"]])
    assert manifest_fingerprint(m) == manifest_fingerprint(again)


def test_fingerprint_ignores_row_order_but_not_labels(audio_folder):
    m = load_manifest(audio_folder)
    assert manifest_fingerprint(m) == manifest_fingerprint(m.iloc[::-1])
    flipped = m.copy()
    flipped.loc[0, "label"] = "human" if flipped.loc[0, "label"] == "ai" else "ai"
    assert manifest_fingerprint(m) != manifest_fingerprint(flipped)


def _sonics_and_gtzan(n_ai: int = 49_000, n_human: int = 1_000) -> pd.DataFrame:
    """A manifest shaped like SONICS (AI, official split, Suno/Udio) + GTZAN (human)."""
    rng = np.random.default_rng(0)
    ai = pd.DataFrame({"path": [f"ai/{i}.mp3" for i in range(n_ai)], "label": "ai",
                       "split": rng.choice(["train", "val", "test"], n_ai, p=[0.8, 0.05, 0.15]),
                       "source": rng.choice(["sonics-suno", "sonics-udio"], n_ai, p=[0.7, 0.3])})
    human = pd.DataFrame({"path": [f"gtzan/{i}.wav" for i in range(n_human)], "label": "human",
                          "split": assign_splits(range(n_human)), "source": "gtzan"})
    return pd.concat([ai, human], ignore_index=True)


def test_balance_gives_equal_classes_at_realistic_scale(caplog):
    frame = _sonics_and_gtzan()
    counts = balance(frame, per_class=100, seed=0).groupby(["split", "label"]).size()
    human = frame[frame["label"] == "human"]["split"].value_counts()
    assert counts[("train", "ai")] == counts[("train", "human")] == 100
    for split in ("val", "test"):  # in proportion to GTZAN's split, the larger share
        expected = round(100 * human[split] / human["train"])
        assert counts[(split, "ai")] == counts[(split, "human")] == expected
    with caplog.at_level(logging.WARNING, logger="helpers.datasets"):
        big = balance(frame, per_class=2000, seed=0).groupby(["split", "label"]).size()
    assert big[("train", "ai")] == big[("train", "human")] == human["train"]
    assert big[("test", "ai")] == big[("test", "human")] == human["test"]
    assert "train: class 'human' has only" in caplog.text and "ai cut to" in caplog.text


def test_balance_keeps_generator_shares_and_is_reproducible():
    frame = _sonics_and_gtzan()
    small = balance(frame, per_class=200, seed=3)
    ai = small[(small["label"] == "ai") & (small["split"] == "train")]
    assert ai["source"].value_counts().to_dict() == {"sonics-suno": 140, "sonics-udio": 60}
    assert balance(frame, per_class=200, seed=3).equals(small)
    assert not balance(frame, per_class=200, seed=4).equals(small)
    assert balance(frame, per_class=None) is frame


def test_a_track_in_two_splits_is_refused(tmp_path):
    path = _csv(tmp_path, "path,label,split,track_id\n"
                          "a1.wav,ai,train,song1\na2.wav,ai,train,song1\n"
                          "a3.wav,ai,test,song1\nb.wav,human,val,song2\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert str(path) in message and "1 track_id(s) in more than one split" in message
    assert "'song1' (test: row(s) 4; train: row(s) 2, 3)" in message
    assert "assign_splits" in message  # the fix
    # excerpts of one track in one split are fine, and so are file names that merely repeat
    load_manifest(_csv(tmp_path, "path,label,split,track_id\na1.wav,ai,test,song1\n"
                                 "a2.wav,ai,test,song1\nb.wav,human,train,song2\n"))
    assert load_manifest(_csv(tmp_path, "path,label,split\nx/01.wav,ai,train\n"
                                        "y/01.wav,ai,test\n"))["track_id"].tolist() == ["01"] * 2


def test_an_artist_in_two_splits_warns_and_is_refused_when_asked(tmp_path, caplog):
    path = _csv(tmp_path, "path,label,split,artist\na.wav,ai,train,Ann\nb.wav,ai,test,Ann\n"
                          "c.wav,human,val,Bo\nd.wav,human,val,\ne.wav,human,test,\n")
    with caplog.at_level(logging.WARNING, logger="helpers.datasets"):
        assert len(load_manifest(path)) == 5
    assert "1 artist(s) in more than one split, e.g. 'Ann' (test: row(s) 3; train: row(s) 2)" \
        in caplog.text  # rows without an artist are not one artist
    with pytest.raises(ManifestError, match=r"1 artist\(s\) in more than one split.*'Ann'"):
        load_manifest(path, strict_artists=True)


def test_the_demo_corpus_loads_although_its_artists_cross_splits(caplog):
    # plan_corpus draws splits per clip, so its artists span splits: a warning, not an error
    plan = plan_corpus(SynthConfig(n_per_style_per_label=5))
    with caplog.at_level(logging.WARNING, logger="helpers.datasets"):
        manifest = load_manifest(plan)
    assert len(manifest) == len(plan) and "artist(s) in more than one split" in caplog.text
