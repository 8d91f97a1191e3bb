"""AI twins of human music: each family's trace, the designs, the manifest and resuming."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from helpers.datasets import load_manifest
from helpers.twins import TwinConfig, make_twin, make_twins, select
from tests.conftest import music

SR = 22_050


def _log_spectral_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS difference of the two log-magnitude spectrograms, in dB."""
    import librosa

    sa, sb = (20 * np.log10(np.abs(librosa.stft(x, n_fft=1024, hop_length=256)) + 1e-4)
              for x in (a, b))
    return float(np.sqrt(np.mean((sa - sb) ** 2)))


@pytest.mark.parametrize("family", ["griffin_lim", "opus_lowrate"])
def test_each_family_is_deterministic_keeps_length_and_changes_the_audio(family):
    y = music(3.0, SR, seed=1).astype(np.float32)
    a = make_twin(y, SR, family, seed=5)
    b = make_twin(y, SR, family, seed=5)
    assert a.dtype == np.float32 and a.shape == y.shape
    np.testing.assert_array_equal(a, b)
    # Audibly different (several dB of log-spectral distance) yet the same music: the
    # envelope correlates with the input's.
    assert _log_spectral_distance(y, a) > 3.0
    env = [np.abs(np.convolve(np.abs(x), np.ones(2048) / 2048, "valid")) for x in (y, a)]
    assert np.corrcoef(*env)[0, 1] > 0.5


def test_griffin_lim_family_destroys_phase_but_keeps_the_band():
    y = music(3.0, SR, seed=2).astype(np.float32)
    z = make_twin(y, SR, "griffin_lim", seed=0)
    snr = 10 * np.log10(np.sum(y**2) / np.sum((y - z) ** 2))
    assert snr < 3.0  # the waveform is new (random phase), not a filtered copy


def test_opus_lowrate_band_limits():
    y = np.random.default_rng(0).standard_normal(3 * SR).astype(np.float32) * 0.1
    z = make_twin(y, SR, "opus_lowrate")
    spec = np.abs(np.fft.rfft(z)) ** 2
    freqs = np.fft.rfftfreq(len(z), 1 / SR)
    assert spec[freqs > 9_000].sum() < 0.01 * spec.sum()  # white noise in, nothing up high


def test_unknown_family_and_missing_autoencoder_are_clear_errors():
    y = np.zeros(SR, np.float32)
    with pytest.raises(ValueError, match="unknown family"):
        make_twin(y, SR, "suno")
    with pytest.raises(ValueError, match="needs a trained autoencoder"):
        make_twin(y, SR, "autoencoder")
    with pytest.raises(ValueError, match="unknown families"):
        TwinConfig(families=("griffin_lim", "udio"))


@pytest.fixture(scope="module")
def human_manifest(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("human")
    rows = []
    for i, (split, seconds) in enumerate([("train", 9.0), ("train", 9.0), ("test", 9.0),
                                          ("test", 3.0)]):
        path = root / f"song {i}.wav"
        sf.write(path, music(seconds, 44_100, seed=10 + i), 44_100)
        rows.append({"path": str(path), "label": "human", "split": split,
                     "track_id": f"t{i}", "artist": f"a{i}"})
    frame = pd.DataFrame(rows)
    frame.to_csv(root / "human.csv", index=False)
    return frame


def test_paired_twins_share_the_excerpt_and_unpaired_do_not(human_manifest, tmp_path):
    for design in ("paired", "unpaired"):
        cfg = TwinConfig(families=("griffin_lim", "opus_lowrate"), design=design,
                         excerpt_seconds=4.0, offset_seconds=0.5)
        path = make_twins(human_manifest, tmp_path / design, cfg, progress=False)
        frame = pd.read_csv(path)
        assert set(frame["family"]) == {"human", "griffin_lim", "opus_lowrate"}
        assert (frame.groupby("track_id")["split"].nunique() == 1).all()
        assert sorted(frame["track_id"].unique()) == ["t0", "t1", "t2"]  # t3 is too short
        skipped = pd.read_csv(tmp_path / design / "skipped.csv")
        assert list(skipped["path"]) == [human_manifest["path"].iloc[3]]
        human = frame[frame["family"] == "human"].set_index("track_id")["excerpt_start_s"]
        ai = frame[frame["family"] == "griffin_lim"].set_index("track_id")["excerpt_start_s"]
        if design == "paired":
            assert (human == ai).all()
        else:
            assert (ai - human >= 4.0).all()  # another excerpt, not overlapping
        loaded = load_manifest(path)  # a manifest train/evaluate accept as is
        assert len(loaded) == len(frame) and loaded["path"].map(
            lambda p: sf.info(p).duration).between(3.99, 4.01).all()
        # Both labels are levelled alike: mean RMS within 1.5 dB.
        rms = loaded.assign(rms=loaded["path"].map(
            lambda p: 20 * np.log10(np.sqrt(np.mean(sf.read(p)[0] ** 2)))))
        by_label = rms.groupby("label")["rms"].mean()
        assert abs(by_label["ai"] - by_label["human"]) < 1.5
        assert set(select(frame, ["opus_lowrate"])["family"]) == {"human", "opus_lowrate"}


def test_twins_resume_without_rewriting_and_train_the_autoencoder_on_train_rows(
        human_manifest, tmp_path):
    cfg = TwinConfig(families=("autoencoder",), excerpt_seconds=2.0, autoencoder_steps=3)
    make_twins(human_manifest, tmp_path, cfg, progress=False)
    assert (tmp_path / "autoencoder.pt").exists()
    wavs = sorted(tmp_path.rglob("*.wav"))
    stamps = {p: p.stat().st_mtime_ns for p in wavs}
    victim = wavs[0]
    victim.unlink()  # as if the job was killed before this file
    make_twins(human_manifest, tmp_path, cfg, progress=False)
    assert victim.exists()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != victim)


def test_twins_command_writes_a_manifest(human_manifest, tmp_path):
    csv = tmp_path / "human.csv"
    human_manifest.to_csv(csv, index=False)
    out = subprocess.run(
        [sys.executable, "-m", "helpers", "twins", "--manifest", str(csv), "--out",
         str(tmp_path / "tw"), "--family", "opus_lowrate", "--seconds", "3", "--jobs", "1"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "not the output of a music generator" in out.stdout
    frame = pd.read_csv(tmp_path / "tw" / "manifest.csv")
    assert (frame["label"] == "ai").sum() == (frame["label"] == "human").sum() == 4


def test_twins_of_a_plain_folder_of_music(tmp_path, capsys):
    from helpers.cli import main

    music_dir = tmp_path / "my music"
    for i in range(3):
        (music_dir / f"album{i % 2}").mkdir(parents=True, exist_ok=True)
        sf.write(music_dir / f"album{i % 2}" / f"song{i}.wav", music(9.0, 22_050, seed=i),
                 22_050)
    assert main(["twins", "--manifest", str(music_dir), "--out", str(tmp_path / "tw"),
                 "--family", "opus_lowrate", "--seconds", "3", "--jobs", "1"]) == 0
    frame = load_manifest(tmp_path / "tw" / "manifest.csv")
    assert (frame["label"] == "ai").sum() == (frame["label"] == "human").sum() == 3
    # each twin keeps its original's split and track
    pairs = frame.groupby("track_id")[["split", "label"]].nunique()
    assert (pairs["split"] == 1).all() and (pairs["label"] == 2).all()


@pytest.mark.parametrize("parent_used_torch", [False, True])
def test_autoencoder_twins_with_worker_processes_do_not_hang(human_manifest, tmp_path,
                                                             parent_used_torch):
    # Training the autoencoder starts torch's OpenMP pool; forked workers that then use
    # torch hung forever. So did they when the caller had used torch before (a notebook that
    # trained a model, a benchmark that scored one). Fresh interpreter, with a deadline.
    csv = tmp_path / "human.csv"
    human_manifest.to_csv(csv, index=False)
    prelude = ("    import torch\n    torch.set_num_threads(2)\n"
               "    (torch.randn(256, 256) @ torch.randn(256, 256)).sum().item()\n"
               if parent_used_torch else "")
    script = (
        "from helpers.twins import TwinConfig, make_twins\n"
        "if __name__ == '__main__':\n"
        + prelude
        + f"    make_twins({str(csv)!r}, {str(tmp_path / 'out')!r},\n"
        "               TwinConfig(families=('autoencoder', 'griffin_lim'), excerpt_seconds=2.0,\n"
        "                          autoencoder_steps=3), n_jobs=2, progress=False)\n")
    (tmp_path / "run.py").write_text(script)
    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, str(tmp_path / "run.py")], capture_output=True,
                          text=True, timeout=120, cwd=root,
                          env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr[-2000:]
    frame = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert (frame["family"] == "autoencoder").sum() == 4  # 2 s excerpts: every track
