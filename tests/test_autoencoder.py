"""The autoencoder family: a trained model returns a clip that is the input, audibly changed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from helpers.autoencoder import (
    AutoencoderConfig,
    WaveAutoencoder,
    load_autoencoder,
    reconstruct,
    reconstruction_loss,
    save_autoencoder,
    train_autoencoder,
)

SR = 22_050

#: Small enough to train in a few seconds on one busy core, large enough to learn harmonics.
TINY = AutoencoderConfig(channels=8, strides=(4, 4), latent_dim=8, steps=120, batch_size=4,
                         segment_s=0.25, lr=3e-3, stft_sizes=(256, 512), seed=0)


def notes(seconds: float, seed: int) -> np.ndarray:
    """Harmonic notes (random pitches, attack/decay envelopes) over a faint noise floor."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    y = np.zeros(n)
    for start in np.arange(0.0, seconds, 0.25):
        f0 = rng.uniform(150.0, 500.0)
        tt = np.maximum(t - start, 0.0)
        env = (t >= start) * (1 - np.exp(-tt / 0.005)) * np.exp(-tt * 6)
        for k in range(1, 8):
            y += env * np.sin(2 * np.pi * k * f0 * tt + rng.uniform(0, 2 * np.pi)) / k
    y += 0.01 * rng.standard_normal(n)
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


def _snr_db(ref: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2)
                               / np.sum((ref.astype(np.float64) - y) ** 2)))


@pytest.fixture(scope="module")
def train_clips() -> list[np.ndarray]:
    return [notes(2.0, seed) for seed in range(4)]


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    return notes(1.5, seed=100)


@pytest.fixture(scope="module")
def model(train_clips) -> WaveAutoencoder:
    return train_autoencoder(train_clips, TINY)


# --------------------------------------------------------------------------------------------
# Config and architecture
# --------------------------------------------------------------------------------------------


def test_config_round_trips_through_json():
    cfg = AutoencoderConfig(strides=(4, 2), stft_sizes=(256,), seed=3)
    back = AutoencoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.strides == (4, 2)
    with pytest.raises(ValueError, match="unknown"):
        AutoencoderConfig.from_dict({**cfg.to_dict(), "dropout": 0.1})


@pytest.mark.parametrize("bad", [{"strides": (4, 1)}, {"strides": ()}, {"input_kernel": 6},
                                 {"segment_s": 0.01}, {"lr": 0.0}])
def test_config_rejects_impossible_shapes(bad):
    with pytest.raises(ValueError):
        AutoencoderConfig(**bad)


def test_decoder_upsamples_with_transposed_convs_of_kernel_twice_the_stride():
    cfg = AutoencoderConfig(strides=(2, 3, 4))
    model = WaveAutoencoder(cfg)
    ups = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose1d)]
    assert [m.stride[0] for m in ups] == [4, 3, 2]  # the encoder's strides, reversed
    assert [m.kernel_size[0] for m in ups] == [8, 6, 4]
    downs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv1d) and m.stride[0] > 1]
    assert [m.stride[0] for m in downs] == [2, 3, 4]
    z = model.encode(torch.zeros(1, 1, 5 * cfg.hop))
    assert z.shape == (1, cfg.latent_dim, 5)  # a real bottleneck: one frame per hop samples


@pytest.mark.parametrize("strides", [(4, 4), (3, 5)])
@pytest.mark.parametrize("n", [1, 15, 16, 1001, 4099])
def test_forward_preserves_length_for_any_input(strides, n):
    model = WaveAutoencoder(AutoencoderConfig(channels=4, strides=strides, latent_dim=2,
                                              stft_sizes=(256,), segment_s=0.1))
    with torch.inference_mode():
        out = model(torch.randn(2, 1, n))
    assert out.shape == (2, 1, n)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def test_training_reduces_the_loss_on_held_out_audio(model, held_out):
    x = torch.from_numpy(held_out / np.sqrt(np.mean(held_out**2)) * 0.1).reshape(1, 1, -1)
    torch.manual_seed(TINY.seed)
    untrained = WaveAutoencoder(TINY).eval()
    with torch.inference_mode():
        before = reconstruction_loss(untrained(x), x, TINY).item()
        after = reconstruction_loss(model(x), x, TINY).item()
    assert after < 0.6 * before, (before, after)
    hist = model.history
    assert len(hist) == TINY.steps
    assert np.mean(hist[-10:]) < 0.6 * np.mean(hist[:10])


def test_training_is_deterministic_and_leaves_global_state_alone(model, train_clips, held_out):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # training uses two where it can: it must hand back the caller's
    torch.manual_seed(1234)   # training seeds its own init: the caller's RNG must not move
    rng_state = torch.get_rng_state()
    try:
        again = train_autoencoder(train_clips, TINY)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.get_rng_state(), rng_state)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert np.array_equal(reconstruct(model, held_out, SR), reconstruct(again, held_out, SR))
    other = train_autoencoder(train_clips, AutoencoderConfig(**{**TINY.to_dict(), "seed": 1,
                                                                "steps": 2}))
    assert not torch.equal(other.decoder[-1].weight, model.decoder[-1].weight)


def test_training_refuses_empty_or_too_short_clips():
    with pytest.raises(ValueError, match="at least one clip"):
        train_autoencoder([], TINY)
    with pytest.raises(ValueError, match="shorter than one training segment"):
        train_autoencoder([np.zeros(100, np.float32)], TINY)
    with pytest.raises(ValueError, match="mono"):
        train_autoencoder([np.zeros((SR, 2), np.float32)], TINY)


# --------------------------------------------------------------------------------------------
# Reconstruction
# --------------------------------------------------------------------------------------------


def test_reconstruction_resembles_the_input_but_is_not_it(model, held_out):
    z = reconstruct(model, held_out, SR)
    corr = np.corrcoef(held_out, z)[0, 1]
    snr = _snr_db(held_out, z)
    # Recognisably the input: strongly correlated, and at its level (the gain is undone)...
    assert corr > 0.85, corr
    assert snr > 5.0, snr
    assert 0.5 < np.std(z) / np.std(held_out) < 2.0
    # ...yet re-synthesised: at least 1% of the waveform's energy is reconstruction error
    # (about 12 dB SNR here; the identity would be infinite).
    assert snr < 20.0, snr


@pytest.mark.parametrize("n", [1, 63, 1001, 22_051])
def test_reconstruct_keeps_length_and_returns_float32(model, n):
    y = notes(2.0, seed=7)[:n].astype(np.float64)
    z = reconstruct(model, y, SR)
    assert z.shape == (n,) and z.dtype == np.float32
    assert np.all(np.isfinite(z))


def test_chunked_reconstruction_equals_one_pass(model, held_out):
    whole = reconstruct(model, held_out, SR, chunk_s=60.0)
    chunked = reconstruct(model, held_out, SR, chunk_s=0.05)  # ~1100-sample chunks, 30 joins
    assert np.max(np.abs(whole - chunked)) < 1e-5 * np.max(np.abs(whole))


def test_reconstruction_follows_the_input_level(model, held_out):
    quiet = reconstruct(model, 0.1 * held_out, SR)
    np.testing.assert_allclose(quiet, 0.1 * reconstruct(model, held_out, SR), atol=1e-6)
    silent = reconstruct(model, np.zeros(500, np.float32), SR)
    assert np.array_equal(silent, np.zeros(500, np.float32))


def test_wrong_sample_rate_is_refused_naming_both(model, held_out):
    with pytest.raises(ValueError, match=r"22050 Hz.*44100 Hz"):
        reconstruct(model, held_out, 44_100)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_output(model, held_out, tmp_path):
    path = save_autoencoder(model, tmp_path / "sub" / "ae.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["ae.pt"]  # no temp file left
    loaded = load_autoencoder(path)
    assert loaded.config == model.config
    assert loaded.history == pytest.approx(model.history)
    assert np.array_equal(reconstruct(loaded, held_out, SR), reconstruct(model, held_out, SR))


def test_damaged_missing_or_foreign_file_is_named(model, tmp_path):
    path = save_autoencoder(model, tmp_path / "ae.pt")
    path.write_bytes(path.read_bytes()[:200])  # a torn write
    with pytest.raises(ValueError, match="unreadable") as err:
        load_autoencoder(path)
    assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_autoencoder(tmp_path / "missing.pt")
    foreign = tmp_path / "classifier.pt"
    torch.save({"state_dict": model.state_dict()}, foreign)
    with pytest.raises(ValueError, match="not an autoencoder file") as err:
        load_autoencoder(foreign)
    assert str(foreign) in str(err.value)
