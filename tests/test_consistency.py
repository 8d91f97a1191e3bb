"""Re-degradation consistency features: their shape and determinism, and the principle they
rest on (audio that has already been through a lossy process changes less under it)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import music

from helpers.audio import codec_round_trip
from helpers.consistency import ConsistencyConfig, consistency_features, consistency_names

SR = 22_050
NAMES = consistency_names()


def block(x: np.ndarray, probe: str, prefix: str) -> np.ndarray:
    return np.array([v for v, n in zip(x, NAMES, strict=True)
                     if n.startswith(f"{probe}/{prefix}")])


def test_vector_matches_names_and_is_deterministic():
    y = music(3.0, SR, seed=1)
    a, b = consistency_features(y, SR), consistency_features(y, SR)
    assert a.shape == (len(NAMES),) and len(set(NAMES)) == len(NAMES)
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    one = ConsistencyConfig(probes=("mp3_64",))
    assert consistency_features(y, SR, one).shape == (len(consistency_names(one)),)


def test_a_clip_already_coded_changes_less_under_the_same_codec():
    for seed in range(3):
        y = music(4.0, SR, seed=seed)
        coded = codec_round_trip(y, SR, 64)
        fresh, again = consistency_features(y, SR), consistency_features(coded, SR)
        # what the codec removed (the top band) it cannot remove again: the second pass
        # moves the coded clip's top band far less than the first moved the original's
        assert block(again, "mp3_64", "lsd")[-1] < 0.6 * block(fresh, "mp3_64", "lsd")[-1]


def test_phase_probe_ignores_level():
    # Griffin-Lim re-phasing commutes with scaling and the features are level-free, so a
    # quieter copy changes the same way (the MP3 probe's quantisation does depend on level)
    y = music(3.0, SR, seed=2)
    loud, quiet = consistency_features(y, SR), consistency_features(0.25 * y, SR)
    for prefix in ("d_", "lsd"):
        np.testing.assert_allclose(block(quiet, "phase_gl", prefix),
                                   block(loud, "phase_gl", prefix), atol=1e-3, rtol=1e-3)


def test_other_rates_are_resampled_first():
    y = music(3.0, 44_100, seed=3)
    assert consistency_features(y, 44_100).shape == (len(NAMES),)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 4096), np.float32), "mono"),
    (np.full(4096, np.nan, np.float32), "NaN"),
    (np.zeros(100, np.float32), "at least"),
])
def test_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        consistency_features(bad, SR)


def test_config_rejects_unknown_probe():
    with pytest.raises(ValueError, match="probes"):
        ConsistencyConfig(probes=("suno",))
