"""The artifact-feature baseline: features measure what they claim, the classifier separates
Griffin-Lim twins from their originals on held-out clips, and nothing leaks into it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import music
from scipy import signal
from sklearn.metrics import roc_auc_score

from helpers.artifacts import ArtifactConfig, apply_artifacts, mel_round_trip, normalize_loudness
from helpers.audio import AudioError, read_audio
from helpers.baselines import (
    ArtifactFeatureBaseline,
    ArtifactFeatureConfig,
    artifact_features,
    feature_names,
    features_for_files,
)

SR = 22_050
NAMES = feature_names()


def feature(x: np.ndarray, name: str) -> float:
    return float(x[NAMES.index(name)])


def tones(seconds: float, sr: int) -> np.ndarray:
    """Harmonic notes below 4 kHz, no noise: the same band-limited signal at any rate."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = np.array([220.0, 277.2, 329.6, 392.0])[(t * 4).astype(int) % 4]
    phase = 2 * np.pi * np.cumsum(f0) / sr
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t)
    y = sum(np.sin(k * phase) / k for k in range(1, 10)) * env
    return (0.2 * y).astype(np.float32)


@pytest.fixture(scope="module")
def twins() -> dict[str, np.ndarray]:
    """Features of 16 music-like clips and their "AI" (default artifact chain) twins.

    Both classes are loudness-normalised with the same +-1 dB spread, as the corpora are.
    """
    rng = np.random.default_rng(0)
    rows, labels, groups = [], [], []
    for i in range(16):
        y = music(2.0, SR, seed=100 + i)
        ai = apply_artifacts(y, SR, ArtifactConfig(), np.random.default_rng(i))
        for label, clip in ((0, y), (1, ai)):
            clip = normalize_loudness(clip, -20.0 + rng.uniform(-1, 1))
            rows.append(artifact_features(clip, SR))
            labels.append(label)
            groups.append(i)
    return {"X": np.array(rows), "y": np.array(labels), "groups": np.array(groups)}


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def test_feature_vector_matches_names():
    x = artifact_features(music(1.0, SR), SR)
    assert x.dtype == np.float64
    assert x.shape == (len(NAMES),)
    assert len(set(NAMES)) == len(NAMES)
    assert 100 <= len(NAMES) <= 200
    # every family of the module docstring is present
    for prefix in ("dmel_", "flat_", "fine_", "hf_", "edge_", "ifdev_", "gdev_", "peak_",
                   "mirror_"):
        assert any(n.startswith(prefix) for n in NAMES), prefix


@pytest.mark.parametrize("kind", ["silence", "0.1 s", "dc", "clipped", "empty", "5 samples"])
def test_features_finite_on_awkward_input(kind):
    y = music(1.0, SR)
    clip = {
        "silence": np.zeros(SR, np.float32),
        "0.1 s": y[: SR // 10],
        "dc": np.full(SR, 0.5, np.float32),
        "clipped": np.clip(20 * y, -1, 1),
        "empty": np.zeros(0, np.float32),
        "5 samples": y[:5],
    }[kind]
    x = artifact_features(clip, SR)
    assert x.shape == (len(NAMES),)
    assert np.isfinite(x).all()


def test_features_ignore_level():
    """Scaling a clip by -40 dB changes no feature: level cannot reveal a label."""
    y = music(2.0, SR, seed=3)
    a = artifact_features(y, SR)
    b = artifact_features(0.01 * y, SR)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_resampling_44k_gives_nearly_the_features_of_22k():
    a = artifact_features(tones(3.0, SR), SR)
    b = artifact_features(tones(3.0, 44_100), 44_100)
    unresampled = artifact_features(tones(3.0, 44_100), SR)  # read as 22.05 kHz: an octave down

    def close(u, v):
        """Fraction of features within 5 % (or 0.02 absolute) of each other."""
        return np.mean(np.abs(u - v) <= 0.05 * np.maximum(np.abs(u), np.abs(v)) + 0.02)

    assert close(a, b) >= 0.95
    assert close(a, unresampled) < 0.6  # the measure does tell different signals apart


def test_griffin_lim_breaks_phase_coherence():
    """A Griffin-Lim round trip keeps the mel envelope but not the steady inst. frequency."""
    y = tones(3.0, SR) + 0.002 * np.random.default_rng(0).standard_normal(3 * SR)
    gl = mel_round_trip(y, SR, seed=0)
    clean, resyn = artifact_features(y, SR), artifact_features(gl, SR)
    assert feature(resyn, "ifdev_all_mean") > 1.5 * feature(clean, "ifdev_all_mean")
    assert feature(resyn, "ifdev_all_coherent") < feature(clean, "ifdev_all_coherent") - 0.1


def test_flatness_higher_for_noise_than_tones():
    noise = np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32)
    f_noise, f_tones = artifact_features(noise, SR), artifact_features(tones(2.0, SR), SR)
    for band in ("flat_0_nyq", "flat_0_2000", "flat_2000_5000"):
        assert feature(f_noise, f"{band}_p50") > feature(f_tones, f"{band}_p50") + 10  # dB


def test_high_band_ratio_falls_when_band_limited():
    noise = np.random.default_rng(1).standard_normal(2 * SR)
    low = signal.sosfiltfilt(signal.butter(8, 4_000, fs=SR, output="sos"), noise)
    f_full, f_low = artifact_features(noise, SR), artifact_features(low, SR)
    assert feature(f_low, "hf_5000_ratio_db") < feature(f_full, "hf_5000_ratio_db") - 20
    assert feature(f_low, "edge_rolloff0.99") < 0.45 < feature(f_full, "edge_rolloff0.99")


def test_upsampling_images_raise_mirror_correlation():
    """Zero-stuffing 2x mirrors the spectrum around sr / 4; an ideal resampler does not."""
    low = music(2.0, SR // 2, seed=5)
    stuffed = np.zeros(2 * len(low))
    stuffed[::2] = low
    imaged = np.convolve(stuffed, [0.5, 1.0, 0.5])[1:-1]  # linear-interpolation kernel
    clean = signal.resample_poly(low, 2, 1)
    assert (feature(artifact_features(imaged, SR), "mirror_sr_over_4_corr")
            > feature(artifact_features(clean, SR), "mirror_sr_over_4_corr") + 0.3)


def test_features_for_files_rows_in_order_and_names_bad_file(tmp_path, write_audio):
    paths = [write_audio(f"c{i}.wav", music(1.0, SR, seed=i), SR, subtype="FLOAT")
             for i in range(3)]
    X = features_for_files(paths)
    expected = [artifact_features(*read_audio(p)) for p in paths]
    np.testing.assert_array_equal(X, np.array(expected))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00not a wave file")
    for n_jobs in (1, 2):
        with pytest.raises(AudioError, match="broken.wav.*cannot decode"):
            features_for_files([paths[0], broken, paths[1]], n_jobs=n_jobs)


def test_features_for_files_reads_at_most_max_seconds(write_audio):
    path = write_audio("long.wav", music(3.0, SR, seed=1), SR, subtype="FLOAT")
    cfg = ArtifactFeatureConfig(max_seconds=1.0)
    y, sr = read_audio(path, max_seconds=1.0)
    np.testing.assert_array_equal(features_for_files([path], cfg)[0],
                                  artifact_features(y, sr, cfg))


def test_config_rejects_inconsistent_groups():
    with pytest.raises(ValueError, match="must divide n_mels"):
        ArtifactFeatureConfig(n_mels=64, n_band_groups=6)


# --------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------


def test_baseline_separates_griffin_lim_twins_on_held_out_clips(twins):
    X, y, g = twins["X"], twins["y"], twins["groups"]
    test = g % 3 == 0  # 6 clips held out, both versions of each
    model = ArtifactFeatureBaseline().fit(X[~test], y[~test], groups=g[~test])
    p = model.predict_proba(X[test])
    assert p.shape == (test.sum(),)
    assert roc_auc_score(y[test], p) >= 0.9
    np.testing.assert_allclose(model.decision_function(X[test]),
                               np.log(p / (1 - p)), rtol=1e-6, atol=1e-6)


def test_twins_that_differ_only_in_level_are_not_separable(twins):
    """The control: if level leaked, these would separate as well as the real twins."""
    rows, labels, groups = [], [], []
    for i in range(16):
        y = music(2.0, SR, seed=100 + i)
        for label, gain in ((0, 1.0), (1, 0.3)):  # the "AI" twin is 10 dB quieter
            rows.append(artifact_features(gain * y, SR))
            labels.append(label)
            groups.append(i)
    X, y, g = np.array(rows), np.array(labels), np.array(groups)
    test = g % 3 == 0
    p = ArtifactFeatureBaseline().fit(X[~test], y[~test], g[~test]).predict_proba(X[test])
    assert 0.2 <= roc_auc_score(y[test], p) <= 0.8


def test_C_is_chosen_on_training_rows_only_and_deterministically(twins):
    X, y, g = twins["X"], twins["y"], twins["groups"]
    train = g < 10
    a = ArtifactFeatureBaseline().fit(X[train], y[train], g[train])
    b = ArtifactFeatureBaseline().fit(X[train], y[train], g[train])
    assert a.C_ == b.C_ and a.C_ in a.Cs
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    # the held-out rows differ from one evaluation to the next: C_ and the model do not
    held_1, held_2 = X[g == 12], X[g == 14]
    assert a.predict_proba(held_1).shape == b.predict_proba(held_2).shape
    assert a.C_ == b.C_
    assert set(a.cv_scores_) == set(a.Cs)
    assert a.cv_scores_[a.C_] >= max(a.cv_scores_.values()) - 1e-4


def test_grouped_cv_keeps_groups_together():
    """Rows repeated within a group: row-wise CV rewards memorising them, grouped CV not."""
    rng = np.random.default_rng(0)
    n_groups, reps, dims = 24, 6, 30
    labels = np.arange(n_groups) % 2
    centres = rng.standard_normal((n_groups, dims))
    centres[:, 0] += 1.0 * labels  # a weak real signal in one dimension; the rest is noise
    X = np.repeat(centres, reps, axis=0) + 0.01 * rng.standard_normal((n_groups * reps, dims))
    y = np.repeat(labels, reps)
    groups = np.repeat(np.arange(n_groups), reps)
    cfg = ArtifactFeatureConfig()
    X = np.pad(X, ((0, 0), (0, len(feature_names(cfg)) - dims)))  # the width fit expects
    grouped = ArtifactFeatureBaseline(cfg).fit(X, y, groups)
    rowwise = ArtifactFeatureBaseline(cfg).fit(X, y)
    assert rowwise.C_ == max(rowwise.Cs)
    assert grouped.C_ <= 0.1
    # the winner has the best mean validation AUC (here the candidates differ)
    assert max(grouped.cv_scores_.values()) - min(grouped.cv_scores_.values()) > 0.05
    assert grouped.cv_scores_[grouped.C_] >= max(grouped.cv_scores_.values()) - 1e-4
    # too few groups per class: no cross-validation, the fixed C
    few = np.isin(groups, [0, 1, 2, 3])
    fallback = ArtifactFeatureBaseline(cfg, fallback_C=0.5).fit(X[few], y[few], groups[few])
    assert fallback.C_ == 0.5 and fallback.cv_scores_ == {}


def test_baseline_rejects_bad_input(twins):
    X, y = twins["X"], twins["y"]
    model = ArtifactFeatureBaseline()
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict_proba(X)
    with pytest.raises(ValueError, match=f"shape \\(n, {len(NAMES)}\\)"):
        model.fit(X[:, :10], y)
    with pytest.raises(ValueError, match="both present"):
        model.fit(X, np.zeros(len(y)))
    # other descriptors: their own width, still checked
    other = ArtifactFeatureBaseline(n_features=10).fit(X[:, :10], y, groups=twins["groups"])
    assert other.predict_proba(X[:, :10]).shape == (len(y),)
    with pytest.raises(ValueError, match="shape \\(n, 10\\) \\(n_features\\)"):
        other.predict_proba(X)


def test_human_deviation_ranks_unseen_artifacts_above_held_out_human_features():
    from helpers.baselines import HumanDeviationBaseline

    rng = np.random.default_rng(0)
    human = rng.standard_normal((200, 20))
    shifted = rng.standard_normal((50, 20)) + np.r_[5.0, np.zeros(19)]  # one feature moved
    model = HumanDeviationBaseline().fit(np.vstack([human[:150], shifted]),
                                         np.r_[np.zeros(150), np.ones(50)])
    held_out = model.predict_proba(human[150:])
    far = model.predict_proba(shifted)
    assert np.mean(far[:, None] > held_out[None, :]) > 0.9  # ROC-AUC of the ranking
    # AI rows are ignored by fit: the same model as fitting on human rows alone.
    alone = HumanDeviationBaseline().fit(human[:150])
    np.testing.assert_allclose(alone.decision_function(shifted), model.decision_function(shifted))
    assert ((0 < far) & (far < 1)).all()
    with pytest.raises(ValueError, match="2 human rows"):
        HumanDeviationBaseline().fit(human[:1])
