"""The out-of-distribution check: descriptors of synthetic clips, a threshold on validation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tone

from helpers.ood import LEVEL_FEATURES, OODCheck, clip_descriptors, file_descriptors

SR = 16_000


def _cloud(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    base = np.linspace(1.0, 50.0, 20)  # descriptors in different units
    return base + base * 0.1 * rng.standard_normal((n, 20)) + shift * base


def test_threshold_is_the_validation_quantile_and_other_clouds_are_out():
    rng = np.random.default_rng(0)
    val = _cloud(rng, 100)
    check, info = OODCheck.fit(_cloud(rng, 300), val, quantile=0.9, max_reference=200,
                               seconds=10.0)
    assert check.threshold == pytest.approx(np.quantile(check.distance(val), 0.9))
    assert info["n_reference"] == len(check.reference) == 200  # a sample of the 300
    assert info["val_flagged"] == pytest.approx(0.1, abs=0.011)
    assert (info["threshold"], info["n_val"]) == (check.threshold, 100)
    assert (check.distance(_cloud(rng, 50, shift=0.5)) > check.threshold).all()
    assert (check.distance(_cloud(rng, 400)) > check.threshold).mean() < 0.2


def test_a_saved_check_gives_the_same_distances(tmp_path):
    rng = np.random.default_rng(1)
    check, info = OODCheck.fit(_cloud(rng, 50), _cloud(rng, 20), seconds=2.0)
    check.save(tmp_path)
    loaded = OODCheck.load(tmp_path, {"ood": info})
    queries = _cloud(rng, 10, shift=0.2)
    np.testing.assert_allclose(loaded.distance(queries), check.distance(queries))
    assert (loaded.threshold, loaded.seconds) == (check.threshold, 2.0)
    assert OODCheck.load(tmp_path, {}) is None  # a run from before the check


def test_descriptors_ignore_level_and_read_only_the_clip(write_audio):
    y = tone(3.0, SR, 440.0, seed=0)
    loud, quiet = clip_descriptors(y, SR, 2.0), clip_descriptors(0.1 * y, SR, 2.0)
    assert loud.shape == (93 - len(LEVEL_FEATURES),)
    np.testing.assert_allclose(loud, quiet, rtol=0.05, atol=0.05)  # no rms, no energy
    tail_changed = y.copy()
    tail_changed[2 * SR:] = 0.3 * np.random.default_rng(1).standard_normal(SR)
    np.testing.assert_array_equal(clip_descriptors(tail_changed, SR, 2.0), loud)
    path = write_audio("a.wav", y, SR, subtype="FLOAT")
    from_files = file_descriptors([path, path.parent / "missing.wav"], seconds=2.0)
    assert from_files.shape == (1, len(loud))  # the unreadable file is skipped
    np.testing.assert_allclose(from_files[0], loud, rtol=1e-4, atol=1e-4)


def test_noise_is_out_of_a_tone_corpus_and_its_own_tones_are_in():
    rng = np.random.default_rng(2)
    tones = [clip_descriptors(tone(2.0, SR, f, seed=i), SR) for i, f in
             enumerate(rng.uniform(300, 900, 60))]
    check, _ = OODCheck.fit(np.stack(tones[:40]), np.stack(tones[40:]))
    new_tones = np.stack([clip_descriptors(tone(2.0, SR, f, seed=100 + i), SR)
                          for i, f in enumerate(rng.uniform(320, 880, 10))])
    assert (check.distance(new_tones) <= check.threshold).mean() >= 0.8
    noise = 0.1 * rng.standard_normal(2 * SR).astype(np.float32)
    assert check.audio_distance(noise, SR) > 3 * check.threshold
