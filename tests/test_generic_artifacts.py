"""The generic artifact primitives of ``benchmarks/generic_artifacts.py``."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import generic_artifacts as ga

SR = 22_050


def _music(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Harmonic notes with a decaying envelope over a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = np.zeros_like(t)
    for i, f0 in enumerate([220.0, 277.2, 329.6, 440.0]):
        env = np.exp(-3 * ((t - 0.7 * i) % 0.7))
        y += sum(env * np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 8))
    return (0.1 * y + 0.003 * rng.normal(size=len(t))).astype(np.float32)


def _lsd_db(a: np.ndarray, b: np.ndarray) -> float:
    la, lb = (10 * np.log10(np.abs(ga._stft(x)) ** 2 + 1e-10) for x in (a, b))
    return float(np.sqrt(np.mean((la - lb) ** 2)))


@pytest.mark.parametrize("name", list(ga.PRIMITIVES))
def test_each_primitive_is_deterministic_keeps_length_and_is_audibly_different(name):
    y = _music()
    fn = ga.PRIMITIVES[name]
    a = fn(y, SR, np.random.default_rng(1))
    b = fn(y, SR, np.random.default_rng(1))
    assert a.dtype == np.float32 and a.shape == y.shape
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all()
    assert _lsd_db(y, a) > 2.0  # measured: 3.8-19 dB on real music


def test_phase_jitter_changes_the_phase_not_the_spectrum():
    y = _music()
    z = ga.phase_jitter(y, SR, np.random.default_rng(0))
    spectrum = [np.log10(np.mean(np.abs(ga._stft(x)) ** 2, axis=1) + 1e-10) for x in (y, z)]
    loud = spectrum[0] > spectrum[0].max() - 3  # bins within 30 dB of the loudest
    assert np.median(np.abs(10 * (spectrum[0] - spectrum[1]))[loud]) < 2.0  # dB
    assert np.corrcoef(y, z)[0, 1] < 0.95  # yet the waveform moved


def test_linear_upsampling_keeps_the_passband_and_drops_what_lies_above_it():
    t = np.arange(SR) / SR
    low = ga.linear_upsampling(np.sin(2 * np.pi * 1000 * t).astype(np.float32), SR, None)
    high = ga.linear_upsampling(np.sin(2 * np.pi * 6000 * t).astype(np.float32), SR, None)
    assert 0.8 < np.std(low[1000:-1000]) / np.std(np.sin(2 * np.pi * 1000 * t)) < 1.05
    assert np.std(high[1000:-1000]) < 0.1 * np.std(np.sin(2 * np.pi * 6000 * t))


def test_mulaw_8bit_has_the_noise_of_8_bits():
    t = np.arange(SR) / SR
    y = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    z = ga.mulaw_8bit(y, SR, None)
    snr = 10 * np.log10(np.mean(y**2) / np.mean((y - z) ** 2))
    assert 25 < snr < 50  # 8-bit mu-law: about 38 dB on a loud tone; none would be infinite
    assert len(np.unique(np.round(z / 0.5, 6))) <= 256
