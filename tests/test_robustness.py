"""Perturbations, robustness evaluation, augmentation copies and the codec confound check."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from helpers.config import FrontEndConfig
from helpers.robustness import (
    PERTURBATIONS,
    UNAVAILABLE,
    apply_perturbation,
    codec_confound_check,
    evaluate_robustness,
    paired_sign_flip_p,
    perturbed_manifest,
)
from helpers.train import TrainConfig, train

SR = 22_050


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _music(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Harmonic tones with note changes plus a little noise: broadband enough for codecs."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = rng.choice([220.0, 277.2, 329.6, 392.0], size=n // (sr // 4) + 1)[
        np.arange(n) // (sr // 4)]
    phase = 2 * np.pi * np.cumsum(f0) / sr
    y = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.6 + 0.4 * np.sin(2 * np.pi * t))
    y = y + 0.02 * rng.standard_normal(n)
    return (0.3 * y / np.max(np.abs(y))).astype(np.float32)


def _peak_hz(y: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spec)])


def test_every_perturbation_keeps_rate_and_expected_length():
    y = _music(6.0, SR)
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
    y = _music(1.0, SR)
    assert np.array_equal(apply_perturbation("clean", y, SR), y)
    with pytest.raises(KeyError, match="registered"):
        apply_perturbation("vinyl_crackle", y, SR)


@pytest.mark.parametrize("semitones", [-2, -1, 1, 2])
def test_pitch_shift_moves_a_tone_by_the_right_ratio(semitones):
    sr = 16_000
    t = np.arange(2 * sr) / sr
    y = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    z = apply_perturbation(f"pitch{semitones:+d}", y, sr)
    assert _peak_hz(z, sr) == pytest.approx(440.0 * 2 ** (semitones / 12), rel=0.01)


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
    y = _music(3.0, SR)
    z = apply_perturbation(f"noise{snr}dB", y, SR, np.random.default_rng(1))
    measured = 10 * np.log10(np.mean(y.astype(float) ** 2) / np.mean((z - y).astype(float) ** 2))
    assert measured == pytest.approx(snr, abs=0.5)


def test_aac_is_registered_when_pyav_is_installed():
    pytest.importorskip("av")
    assert {"aac_64", "aac_128"} <= set(PERTURBATIONS)
    assert not {"aac_64", "aac_128"} & set(UNAVAILABLE)


def test_gain_scales_and_clips():
    y = _music(1.0, SR)
    down = apply_perturbation("gain-6dB", y, SR)
    assert np.allclose(down, y * 10 ** (-6 / 20), atol=1e-6)
    loud = apply_perturbation("gain+6dB", y * 3, SR)
    assert np.max(np.abs(loud)) <= 1.0


@pytest.mark.parametrize("name", [n for n in PERTURBATIONS if n.split("_")[0] in
                                  ("mp3", "aac", "opus")])
def test_codec_round_trips_stay_aligned_and_close(name):
    y = _music(3.0, SR)
    z = apply_perturbation(name, y, SR)
    assert np.corrcoef(y, z)[0, 1] > 0.9  # aligned: a misplaced encoder delay would fail this


# ------------------------------------------------------------------------------------------
# Evaluation on a tiny trained run
# ------------------------------------------------------------------------------------------

FRONTEND = FrontEndConfig(duration=2.0, sample_rate=16_000)
FAST = TrainConfig(epochs=2, batch_size=8, lr=2e-3, device="cpu", patience=0, seed=3)


def _labelled_clip(label: str, rng: np.random.Generator, sr: int) -> np.ndarray:
    t = np.arange(int(2.0 * sr)) / sr
    if label == "ai":
        f0 = rng.uniform(200, 800)
        y = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in (1, 2, 3))
        y = y + 0.01 * rng.standard_normal(t.size)
    else:
        y = rng.standard_normal(t.size) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
    return (0.3 * y / np.max(np.abs(y))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    rng = np.random.default_rng(0)
    rows = []
    for label in ("ai", "human"):
        for track in range(8):
            path = root / "audio" / f"{label}_{track}.wav"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, _labelled_clip(label, rng, 16_000), 16_000)
            rows.append({"path": str(path), "label": label, "track_id": f"{label}{track}",
                         "split": "test" if track >= 6 else "train"})
    manifest = pd.DataFrame(rows)
    run = train(manifest, root / "run", preset="tiny", train_config=FAST, frontend=FRONTEND,
                progress=False)
    return run, manifest


def test_evaluate_robustness_gives_one_finite_row_per_perturbation(tiny_run, tmp_path):
    run, manifest = tiny_run
    names = ["mp3_64", "pitch+2", "stretch0.9", "gain-6dB", "noise20dB", "lowpass8k"]
    table = evaluate_robustness(run, manifest, perturbations=names, progress=False,
                                out_dir=tmp_path)
    assert table["perturbation"].tolist() == ["clean", *names]
    assert np.isfinite(table["roc_auc"]).all() and np.isfinite(table["fpr_on_human"]).all()
    assert (table["n"] == 4).all() and (table["n_human"] == 2).all()
    assert table.loc[0, "auc_drop"] == 0.0
    assert (tmp_path / "robustness.csv").exists() and (tmp_path / "robustness.json").exists()
    preds = pd.read_csv(tmp_path / "robustness_predictions.csv")
    assert len(preds) == 4 * len(table)


def test_trimming_a_clip_to_nothing_is_counted_not_fatal(tiny_run):
    run, manifest = tiny_run  # 2 s clips: trimming 5 s leaves no audio
    table = evaluate_robustness(run, manifest, perturbations=["trim5s"], progress=False)
    row = table.set_index("perturbation").loc["trim5s"]
    assert row["n"] == 0 and row["n_failed"] == 4 and math.isnan(row["roc_auc"])


def test_perturbed_manifest_adds_copies_of_train_rows_only(tiny_run, tmp_path):
    _, manifest = tiny_run
    path = perturbed_manifest(manifest, tmp_path, perturbations=["gain-6dB", "pitch+1"],
                              copies=1, progress=False)
    out = pd.read_csv(path, dtype=str, keep_default_na=False)
    copies = out[out["perturbation"] != ""]
    n_train = int((out["split"] == "train").sum() - len(copies))
    assert len(copies) == n_train and (copies["split"] == "train").all()
    assert set(out["split"]) == {"train", "val", "test"}  # val carved before copying
    val_tracks = set(out.loc[out["split"] == "val", "track_id"])
    assert not val_tracks & set(copies["parent_track_id"])
    assert copies["track_id"].str.contains("#").all()
    again = perturbed_manifest(manifest, tmp_path, perturbations=["gain-6dB", "pitch+1"],
                               copies=1, progress=False)  # reuses the written copies
    assert pd.read_csv(again, dtype=str, keep_default_na=False).equals(out)


def test_codec_confound_check_sees_low_bitrate_mp3_and_scores_runs(tiny_run, tmp_path):
    run, _ = tiny_run
    sr = 16_000
    paths = []
    for i in range(16):
        path = tmp_path / "songs" / f"song{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, _music(2.0, sr, seed=i), sr)
        paths.append(path)
    result = codec_confound_check(paths, tmp_path / "check", frontend=FRONTEND,
                                  bitrate_kbps=32, n_splits=4, runs={"tiny": run},
                                  n_permutations=50, progress=False)
    assert result["n_songs"] == 16
    # 32 kbps MP3 band-limits below 8 kHz: the probe must see it, or it could see nothing.
    plain = result["probe"]["plain"]
    assert plain["auc"] > 0.8 and plain["p_value"] < 0.05 and not plain["at_chance"]
    assert len(plain["fold_aucs"]) == 4
    assert plain["auc"] > plain["null_auc_95th_percentile"]
    control = result["probe"]["codec_control"]
    assert 0.0 <= control["auc"] <= 1.0 and 0.0 < control["p_value"] <= 1.0
    clf = result["classifiers"]["tiny"]
    assert clf["codec_control"] is None  # recorded from the run's own front end
    assert 0.0 <= clf["auc_mp3_vs_wav"] <= 1.0
    assert clf["mean_dp"] == pytest.approx(clf["mean_p_ai_mp3"] - clf["mean_p_ai_wav"])
    lo, hi = clf["mean_dp_ci"]
    assert lo <= clf["mean_dp"] <= hi
    assert clf["at_chance"] == (-0.02 < lo and hi < 0.02)
    assert clf["shift_detected"] == (clf["p_value"] < 0.05)
    assert 0.0 <= clf["decision_flips"] <= 1.0 and 0.0 <= clf["share_mp3_scored_higher"] <= 1.0
    saved = json.loads((tmp_path / "check" / "codec_confound.json").read_text())
    assert saved["classifiers"]["tiny"]["p_value"] == clf["p_value"]


def test_paired_sign_flip_p_tells_a_shift_from_noise():
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(40)
    assert paired_sign_flip_p(np.zeros(40)) == 1.0
    assert paired_sign_flip_p(noise - noise.mean()) > 0.9  # mean exactly zero
    assert paired_sign_flip_p(noise + 1.0) < 0.001
    assert paired_sign_flip_p(-(noise + 1.0)) < 0.001  # two-sided
    ps = [paired_sign_flip_p(rng.standard_normal(20), 2000, seed=s) for s in range(200)]
    assert 0.02 < np.mean(np.array(ps) < 0.05) < 0.10  # about alpha under the null
