"""Perturbations users' files go through, and perturbed copies of a training split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import music, tone

from helpers.datasets import load_manifest
from helpers.perturb import (
    PERTURBATIONS,
    UNAVAILABLE,
    apply_perturbation,
    perturbed_manifest,
    resolve_perturbations,
)

SR = 22_050


def _peak_hz(y: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spec)])


def _rms_db(y: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.asarray(y, np.float64) ** 2)))


def _lag(reference: np.ndarray, y: np.ndarray, max_lag: int) -> int:
    """Samples by which `y` lags `reference` (cross-correlation peak within ±max_lag)."""
    core = reference[max_lag:-max_lag]
    scores = [np.dot(core, y[max_lag + lag: len(y) - max_lag + lag])
              for lag in range(-max_lag, max_lag + 1)]
    return int(np.argmax(scores)) - max_lag


def test_every_perturbation_keeps_rate_and_expected_length():
    y = music(6.0, SR)
    for name in PERTURBATIONS:
        z = apply_perturbation(name, y, SR, np.random.default_rng(0))
        assert z.dtype == np.float32 and z.ndim == 1 and np.isfinite(z).all(), name
        if name.startswith("stretch"):
            rate = float(name.removeprefix("stretch"))
            assert abs(len(z) - len(y) / rate) <= 0.01 * len(y), name
        elif name == "trim5s":
            assert len(z) == len(y) - 5 * SR
        else:
            assert len(z) == len(y), name
        if name != "lowpass8k":  # a tone-ish clip at 22 kHz has little above 8 kHz
            m = min(len(y), len(z))
            assert not np.allclose(z[:m], y[:m], atol=1e-4), f"{name} changed nothing"


def test_clean_is_identity_and_unknown_names_fail_helpfully():
    y = music(1.0, SR)
    assert np.array_equal(apply_perturbation("clean", y, SR), y)
    with pytest.raises(KeyError, match="registered"):
        apply_perturbation("vinyl_crackle", y, SR)
    with pytest.raises(KeyError, match="vinyl_crackle"):
        resolve_perturbations(["pitch+1", "vinyl_crackle"])
    assert resolve_perturbations(["pitch+1", "clean"]) == ["clean", "pitch+1"]
    assert resolve_perturbations(None) == ["clean", *PERTURBATIONS]


@pytest.mark.parametrize("semitones", [-2, -1, 1, 2])
def test_pitch_shift_moves_a_tone_by_the_right_ratio(semitones):
    sr = 16_000
    t = np.arange(2 * sr) / sr
    y = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    z = apply_perturbation(f"pitch{semitones:+d}", y, sr)
    assert _peak_hz(z, sr) == pytest.approx(440.0 * 2 ** (semitones / 12), rel=0.01)


@pytest.mark.parametrize("rate", [0.9, 1.1])
def test_time_stretch_keeps_the_pitch(rate):
    sr = 16_000
    y = tone(3.0, sr, freq=440.0)
    z = apply_perturbation(f"stretch{rate:.1f}", y, sr)
    assert _peak_hz(z, sr) == pytest.approx(440.0, rel=0.01)


def test_lowpass_removes_energy_above_8khz():
    sr = 44_100
    y = np.random.default_rng(0).standard_normal(2 * sr).astype(np.float32) * 0.1
    z = apply_perturbation("lowpass8k", y, sr)
    f = np.fft.rfftfreq(len(y), 1 / sr)

    def band_power(x: np.ndarray, lo: float, hi: float) -> float:
        spec = np.abs(np.fft.rfft(x)) ** 2
        return float(spec[(f >= lo) & (f < hi)].sum())

    # order-8 Butterworth run forwards and backwards: > 40 dB down from 10 kHz on
    assert band_power(z, 10_000, 22_000) < 1e-4 * band_power(y, 10_000, 22_000)
    assert band_power(z, 100, 6_000) > 0.9 * band_power(y, 100, 6_000)


@pytest.mark.parametrize("snr", [30, 20])
def test_noise_is_added_at_the_target_snr(snr):
    y = music(3.0, SR)
    z = apply_perturbation(f"noise{snr}dB", y, SR, np.random.default_rng(1))
    measured = 10 * np.log10(np.mean(y.astype(float) ** 2) / np.mean((z - y).astype(float) ** 2))
    assert measured == pytest.approx(snr, abs=0.5)


def test_aac_is_registered_when_pyav_is_installed():
    pytest.importorskip("av")
    assert {"aac_64", "aac_128"} <= set(PERTURBATIONS)
    assert not {"aac_64", "aac_128"} & set(UNAVAILABLE)


@pytest.mark.parametrize("db", [-6, 6])
def test_gain_changes_the_level_by_the_given_db(db):
    y = music(1.0, SR)  # peak 0.3: +6 dB stays below full scale
    z = apply_perturbation(f"gain{db:+d}dB", y, SR)
    assert _rms_db(z) - _rms_db(y) == pytest.approx(db, abs=0.01)
    assert np.corrcoef(y, z)[0, 1] > 0.9999  # a level change, not a different signal


def test_gain_clips_at_full_scale_like_a_pcm_file():
    y = 3 * music(1.0, SR)  # peak 0.9
    z = apply_perturbation("gain+6dB", y, SR)
    assert np.max(np.abs(z)) == pytest.approx(1.0)
    loud = np.abs(y) * 10 ** (6 / 20) > 1.0
    assert loud.any() and np.all(np.abs(z[loud]) == pytest.approx(1.0))
    assert np.array_equal(np.sign(z[loud]), np.sign(y[loud]))


@pytest.mark.parametrize("name", [n for n in PERTURBATIONS if n.split("_")[0] in
                                  ("mp3", "aac", "opus")])
def test_codec_round_trips_keep_length_and_timing(name):
    y = music(3.0, SR)
    z = apply_perturbation(name, y, SR)
    assert len(z) == len(y)
    # an encoder delay left in (AAC: 1024 samples at 44.1 kHz, Opus: 312 at 48 kHz) shifts
    # everything by hundreds of samples here
    assert abs(_lag(y, z, max_lag=1500)) <= 1
    assert np.corrcoef(y, z)[0, 1] > 0.99


# ------------------------------------------------------------------------------------------
# Perturbed copies of the training split
# ------------------------------------------------------------------------------------------


@pytest.fixture
def small_manifest(tmp_path) -> pd.DataFrame:
    rows = []
    for label, base in (("ai", 300.0), ("human", 600.0)):
        for track in range(8):
            path = tmp_path / "audio" / f"{label}_{track}.wav"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, tone(2.0, 16_000, base + 25 * track, seed=track), 16_000)
            rows.append({"path": str(path), "label": label, "track_id": f"{label}{track}",
                         "split": "test" if track >= 6 else "train"})
    return pd.DataFrame(rows)


def test_perturbed_manifest_adds_copies_of_train_rows_only(small_manifest, tmp_path):
    out_dir = tmp_path / "augmented"
    path = perturbed_manifest(small_manifest, out_dir, perturbations=["gain-6dB", "pitch+1"],
                              copies=1, progress=False)
    out = pd.read_csv(path, dtype=str, keep_default_na=False)
    copies = out[out["perturbation"] != ""]
    n_train = int((out["split"] == "train").sum() - len(copies))
    assert len(copies) == n_train and (copies["split"] == "train").all()
    assert set(out["split"]) == {"train", "val", "test"}  # val carved before copying
    val_tracks = set(out.loc[out["split"] == "val", "track_id"])
    assert not val_tracks & set(copies["parent_track_id"])
    assert copies["track_id"].str.contains("#").all()
    again = perturbed_manifest(small_manifest, out_dir, perturbations=["gain-6dB", "pitch+1"],
                               copies=1, progress=False)  # reuses the written copies
    assert pd.read_csv(again, dtype=str, keep_default_na=False).equals(out)


def test_perturbed_copies_check_the_disk_before_writing(small_manifest, tmp_path, monkeypatch):
    import shutil

    from helpers import perturb

    monkeypatch.setattr(perturb.shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError, match="augmented copies need up to .* GB free.*--augment 0"):
        perturbed_manifest(small_manifest, tmp_path / "augmented", perturbations=["gain-6dB"],
                           copies=1, progress=False, max_seconds=30.0)
    assert not (tmp_path / "augmented" / "audio").exists()


def test_perturbed_copies_hold_the_perturbed_audio(small_manifest, tmp_path):
    path = perturbed_manifest(small_manifest, tmp_path / "augmented", perturbations=["gain-6dB"],
                              copies=1, progress=False)
    out = load_manifest(path)  # paths relative to the manifest's folder, resolved
    copies = out[out["perturbation"] == "gain-6dB"]
    assert len(copies) > 0
    sources = small_manifest.set_index("track_id")["path"]
    for _, row in copies.iterrows():
        copy, sr = sf.read(row["path"], dtype="float32")
        source, source_sr = sf.read(sources[row["parent_track_id"]], dtype="float32")
        assert sr == source_sr and len(copy) == len(source)
        assert _rms_db(copy) - _rms_db(source) == pytest.approx(-6.0, abs=0.05)
