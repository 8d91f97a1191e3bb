"""The command line: every stage has a --help that teaches, and errors are one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf
from conftest import tone

from helpers.cli import build_parser, main
from helpers.datasets import write_manifest
from helpers.index import CatalogIndex

COMMANDS = ["download", "synth", "twins", "preprocess", "train", "evaluate", "weights", "index",
            "recommend", "demo"]


def test_every_stage_has_help(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert f"python -m helpers {command}" in out
        assert len(out.splitlines()) > 4


def test_top_level_help_lists_the_stages():
    out = subprocess.run([sys.executable, "-m", "helpers", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in COMMANDS:
        assert command in out


def test_a_bad_manifest_is_one_line_and_nonzero(tmp_path, capsys):
    bad = tmp_path / "m.csv"
    bad.write_text("file,label\nx.wav,ai\n")
    code = main(["preprocess", "--manifest", str(bad), "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and str(bad) in err and "missing column" in err


def test_recommend_names_a_missing_run_before_reading_any_audio(tmp_path, capsys):
    song = tmp_path / "song.wav"
    song.write_bytes(b"")  # unreadable too: the missing run is what must be reported
    code = main(["recommend", str(song), "--run", str(tmp_path / "run"),
                 "--index", str(tmp_path / "index")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'run' / 'run.json'}")


def test_index_label_all_puts_both_labels_in_the_catalog(tmp_path, capsys):
    rows = []
    for i, label in enumerate(["ai", "ai", "human", "human"]):
        sf.write(tmp_path / f"c{i}.wav", tone(1.0, 16_000, 300.0 + 100 * i, seed=i), 16_000)
        rows.append({"path": f"c{i}.wav", "label": label, "split": "train"})
    csv = write_manifest(pd.DataFrame(rows), tmp_path / "manifest.csv")
    code = main(["index", "--manifest", str(csv), "--out", str(tmp_path / "index"),
                 "--embedder", "features", "--label", "all"])
    assert code == 0, capsys.readouterr().err
    assert len(CatalogIndex.load(tmp_path / "index")) == 4


def test_parser_defaults_are_the_documented_ones():
    args = build_parser().parse_args(["recommend", "a.mp3", "--run", "r", "--index", "i"])
    assert args.k == 5 and args.threshold is None and not args.windows
    assert build_parser().parse_args(["recommend", "a.mp3", "--index", "i"]).run is None


def test_recommend_without_a_run_lists_similar_tracks(tmp_path):
    rows = []
    for i in range(4):
        sf.write(tmp_path / f"c{i}.wav", tone(1.0, 16_000, 300.0 + 100 * i, seed=i), 16_000)
        rows.append({"path": f"c{i}.wav", "label": "human", "split": "train", "title": f"t{i}"})
    csv = write_manifest(pd.DataFrame(rows), tmp_path / "manifest.csv")
    assert main(["index", "--manifest", str(csv), "--out", str(tmp_path / "index"),
                 "--embedder", "features"]) == 0
    songs = []
    for i in range(2):
        songs.append(str(tmp_path / f"song{i}.wav"))
        sf.write(songs[-1], tone(1.0, 16_000, 310.0 + 200 * i, seed=9 + i), 16_000)
    command = [sys.executable, "-m", "helpers", "recommend", *songs, "--index",
               str(tmp_path / "index"), "-k", "2"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("similar human tracks") == 2 and "P(AI)" not in proc.stdout
    results = json.loads(subprocess.run([*command, "--json"], capture_output=True, text=True,
                                        timeout=300, check=True).stdout)
    assert [r["p_ai"] for r in results] == [None, None]
    assert [rec["title"] for rec in results[0]["recommendations"]] == ["t0", "t1"]  # 300, 400 Hz
    assert [rec["title"] for rec in results[1]["recommendations"]][0] == "t2"  # 510 Hz
    refused = subprocess.run([*command, "--windows"], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and "need --run" in refused.stderr
    # a folder stands for its audio files; one without any is reported, the rest answered
    queries, empty = tmp_path / "queries", tmp_path / "nothing here"
    (queries / "sub").mkdir(parents=True)
    empty.mkdir()
    sf.write(queries / "sub" / "a.wav", tone(1.0, 16_000, 310.0, seed=9), 16_000)
    sf.write(queries / "b.flac", tone(1.0, 16_000, 510.0, seed=10), 16_000)
    (queries / "notes.txt").write_text("not audio")
    folder = subprocess.run(
        [sys.executable, "-m", "helpers", "recommend", str(queries), str(empty), "--index",
         str(tmp_path / "index"), "-k", "2", "--json"], capture_output=True, text=True,
        timeout=300)
    assert folder.returncode == 1
    answered = json.loads(folder.stdout)
    assert [Path(r["input"]).name for r in answered] == ["b.flac", "a.wav", "nothing here"]
    assert "error" in answered[2] and all("recommendations" in r for r in answered[:2])


def test_synth_writes_the_corpus_and_prints_its_manifest(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "demo"), "--per-style", "1"]) == 0
    printed = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    assert printed == str(tmp_path / "demo" / "manifest.csv")
    assert len(pd.read_csv(printed)) == 12  # 6 styles x 2 labels


def _training_manifest(folder: Path, seconds: float, sr: int) -> Path:
    """Eight tones, alternately labelled, all in the train split (val is carved from them)."""
    rows = []
    for i in range(8):
        sf.write(folder / f"c{i}.wav", tone(seconds, sr, 220.0 * (1 + i % 4), seed=i), sr)
        rows.append({"path": f"c{i}.wav", "label": "ai" if i % 2 else "human",
                     "split": "train", "track_id": f"t{i}"})
    return write_manifest(pd.DataFrame(rows), folder / "manifest.csv")


def test_train_recipe_flags_reach_the_run(tmp_path):
    csv = _training_manifest(tmp_path, 2.0, 16_000)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "helpers", "train", "--manifest", str(csv), "--out",
               str(run), "--epochs", "1", "--batch-size", "4", "--duration", "2",
               "--augment", "1", "--n-fft", "1024", "--hop-length", "256",
               "--input-norm", "band"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "augment: 1 perturbed copy per training clip" in proc.stderr
    frontend = json.loads((run / "run.json").read_text())["frontend"]
    assert (frontend["n_fft"], frontend["win_length"], frontend["hop_length"]) == (1024, 1024, 256)
    assert json.loads((run / "run.json").read_text())["model_config"]["input_norm"] == "band"
    augmented = pd.read_csv(run / "augmented" / "manifest.csv").fillna({"perturbation": ""})
    copies = augmented[augmented["perturbation"] != ""]
    originals = augmented[augmented["perturbation"] == ""]
    # One copy of every training clip, none of a validation clip, each from a training track.
    assert len(copies) == (originals["split"] == "train").sum() > 0
    assert (originals["split"] == "val").any()
    val_tracks = set(originals.loc[originals["split"] == "val", "track_id"])
    assert not set(copies["parent_track_id"]) & val_tracks
    trained = pd.read_csv(run / "splits.csv")
    assert len(trained[trained["split"] == "train"]) == 2 * len(copies)


@pytest.mark.parametrize("flags, copies", [([], 1), (["--preset", "base"], 0),
                                           (["--augment", "0"], 0), (["--resume"], 0)])
def test_train_augments_by_default_with_tiny_only(tmp_path, monkeypatch, flags, copies):
    import helpers.train

    csv = _training_manifest(tmp_path, 40.0, 8_000)
    seen = {}
    monkeypatch.setattr(helpers.train, "train",
                        lambda manifest, out, **kw: seen.setdefault("manifest", manifest))
    assert main(["train", "--manifest", str(csv), "--out", str(tmp_path / "run"), *flags]) == 0
    augmented = tmp_path / "run" / "augmented" / "manifest.csv"
    # a run resumed without copies of its own (made before the default) stays without
    assert augmented.exists() == bool(copies)
    if copies:
        assert Path(seen["manifest"]) == augmented
        frame = pd.read_csv(augmented).fillna({"perturbation": ""})
        made = frame[frame["perturbation"] != ""]
        assert len(made) == (frame.loc[frame["perturbation"] == "", "split"] == "train").sum()
        # only the front end's 30 s (+ what a perturbation consumes) are copied, not 40 s
        assert all(sf.info(augmented.parent / p).duration <= 30 * 1.1 + 5 + 0.01
                   for p in made["path"])
    else:
        assert Path(seen["manifest"]) == csv


@pytest.mark.parametrize("value", ["-1", "9", "two"])
def test_train_refuses_a_bad_augment_count_before_any_work(value, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["train", "--manifest", "m.csv", "--out", "r",
                                   "--augment", value])
    assert info.value.code == 2
    assert "--augment" in capsys.readouterr().err
