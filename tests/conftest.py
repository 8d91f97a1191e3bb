"""Shared fixtures: synthetic audio written to temporary folders (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch


def tone(seconds: float, sr: int, freq: float = 440.0, channels: int = 1,
         seed: int = 0) -> np.ndarray:
    """A tone plus a little noise, shape (samples,) or (samples, channels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    y = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))
    if channels > 1:
        y = np.stack([y * (1 - 0.1 * c) for c in range(channels)], axis=1)
    return y.astype(np.float32)


def music(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
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


@pytest.fixture
def write_audio(tmp_path: Path):
    """Write audio to tmp_path and return its path: write_audio(name, y, sr)."""

    def _write(name: str, y: np.ndarray, sr: int, **kwargs) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, y, sr, **kwargs)
        return path

    return _write


@pytest.fixture
def audio_folder(tmp_path: Path) -> Path:
    """A folder with ai/ and human/ subfolders of short clips, plus one corrupt file."""
    root = tmp_path / "corpus"
    for label, base in (("ai", 300.0), ("human", 600.0)):
        for i in range(6):
            path = root / label / f"{label}{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, tone(2.0, 22_050, base + 20 * i, seed=i), 22_050)
    (root / "human" / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wave file")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a test module: small tensors gain nothing from more, and on a
    busy 2-core CI box OpenMP's spinning threads make them many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
