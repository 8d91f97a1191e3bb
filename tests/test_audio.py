"""The audio front end: reading, resampling, pad/crop, mel parity, and bad input."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from bad_inputs import refuse_to_open
from conftest import tone

from helpers.audio import (
    AudioError,
    MelSpectrogram,
    codec_round_trip,
    fit_length,
    load_clip,
    mel_db,
    read_audio,
)
from helpers.config import FrontEndConfig

CFG = FrontEndConfig(duration=2.0)


def test_reads_only_the_first_seconds(write_audio):
    y = tone(10.0, 22_050)
    path = write_audio("long.wav", y, 22_050)
    got, sr = read_audio(path, max_seconds=3.0)
    assert sr == 22_050
    assert len(got) == 3 * 22_050
    np.testing.assert_allclose(got, y[: 3 * 22_050], atol=1e-4)  # 16-bit PCM rounding


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_common_formats_load_to_fixed_length(write_audio, fmt):
    path = write_audio(f"clip.{fmt}", tone(3.0, 44_100), 44_100)
    clip = load_clip(path, CFG)
    assert clip.shape == (CFG.n_samples,)
    assert clip.dtype == np.float32
    assert np.abs(clip).max() > 0.1


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_multichannel_is_downmixed_by_mean(write_audio, channels):
    y = tone(2.0, 16_000, channels=channels)
    path = write_audio(f"ch{channels}.wav", y, 16_000, subtype="FLOAT")
    got, _ = read_audio(path)
    expected = y if channels == 1 else y.mean(axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("sr", [8_000, 22_050, 96_000])
def test_any_rate_is_resampled_with_the_tone_kept(write_audio, sr):
    path = write_audio(f"r{sr}.wav", tone(2.0, sr, freq=1000.0), sr)
    clip = load_clip(path, CFG)
    spectrum = np.abs(np.fft.rfft(clip))
    peak_hz = np.argmax(spectrum) * CFG.sample_rate / len(clip)
    assert abs(peak_hz - 1000.0) < 2.0


def test_short_clips_are_zero_padded_at_the_end(write_audio):
    path = write_audio("short.wav", tone(1.0, 16_000), 16_000, subtype="FLOAT")
    clip = load_clip(path, CFG)
    assert np.abs(clip[:16_000]).max() > 0.1
    assert not clip[16_100:].any()


def test_repeat_padding_loops_the_clip():
    y = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(y, 12, "repeat"), np.resize(y, 12))
    np.testing.assert_array_equal(fit_length(y, 3), y[:3])


def test_mel_numpy_and_torch_agree():
    config = FrontEndConfig(duration=3.0)
    rng = np.random.default_rng(1)
    batch = np.stack([tone(3.0, 16_000, f, seed=i) + 0.05 * rng.standard_normal(48_000)
                      for i, f in enumerate((220.0, 1_000.0, 3_000.0))]).astype(np.float32)
    batch[1] *= 0.01  # a quiet clip: its dB floor is relative to its own maximum
    expected = np.stack([mel_db(y, config) for y in batch])
    got = MelSpectrogram(config)(torch.from_numpy(batch)).numpy()
    assert got.shape == expected.shape == (3, config.n_mels, config.n_frames)
    # float32 FFTs differ in rounding only: well under 0.01 dB anywhere (measured ~3e-5 dB).
    assert np.abs(got - expected).max() < 1e-2
    assert (expected.max(axis=(1, 2)) - expected.min(axis=(1, 2)) <= config.top_db + 1e-4).all()


def test_codec_round_trip_keeps_the_music_and_length():
    y = tone(2.0, 16_000)
    z = codec_round_trip(y, 16_000, 128)
    assert z.shape == y.shape
    assert np.corrcoef(y, z)[0, 1] > 0.98
    assert not np.array_equal(y, z)


@pytest.mark.parametrize(("sr", "kbps"), [(16_000, 16), (16_000, 128), (22_050, 32),
                                          (44_100, 32), (44_100, 192)])
def test_codec_round_trip_keeps_the_timing(sr, kbps):
    # Below ~56 kbps the MP3 frames are too small for the gapless header, so the decoder
    # leaves ~1105 samples of encoder delay in front unless the round trip removes them.
    y = np.zeros(2 * sr, np.float32)
    y[sr], y[sr + 1] = 0.9, -0.9
    z = codec_round_trip(y, sr, kbps)
    assert z.shape == y.shape
    assert abs(int(np.argmax(np.abs(z))) - sr) <= 3


def test_codec_switch_applies_the_round_trip(write_audio):
    path = write_audio("x.wav", tone(2.0, 16_000), 16_000, subtype="FLOAT")
    plain = load_clip(path, CFG)
    coded = load_clip(path, FrontEndConfig(duration=2.0, codec="mp3"))
    assert plain.shape == coded.shape
    assert 0.9 < np.corrcoef(plain, coded)[0, 1] < 1.0


# --- bad input: one clear error naming the file ----------------------------------------------


def _expect_error(path, fragment: str, config: FrontEndConfig = CFG) -> None:
    with pytest.raises(AudioError) as info:
        load_clip(path, config)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.wav", "not found")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    _expect_error(path, "empty")


def test_corrupt_and_wrong_content(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("this is a text file, not audio")
    _expect_error(text, "cannot decode")


def test_an_mp3_cut_before_its_first_frames_is_an_error(write_audio, tmp_path):
    path = write_audio("full.mp3", tone(4.0, 44_100), 44_100)
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(path.read_bytes()[:300])  # the header and part of the first frame
    _expect_error(cut, "cannot decode")


def test_a_truncated_mp3_gives_its_decodable_start_zero_padded(write_audio, tmp_path):
    # A cut download still holds music: its decodable start is a clip, like a short file.
    config = FrontEndConfig(duration=4.0)
    path = write_audio("full.mp3", tone(4.0, 44_100), 44_100)
    cut = tmp_path / "cut.mp3"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    clip, full = load_clip(cut, config), load_clip(path, config)
    heard = int(np.flatnonzero(clip)[-1]) + 1
    assert 1.5 < heard / config.sample_rate < 2.5  # half the bytes of a CBR file: ~2 of 4 s
    # the same samples as the whole file up to the resampler's tail at the cut
    np.testing.assert_array_equal(clip[: heard - 200], full[: heard - 200])


def test_silent_file(write_audio):
    _expect_error(write_audio("silent.wav", np.zeros(32_000, np.float32), 16_000), "silent")


def test_too_short_file(write_audio):
    _expect_error(write_audio("blip.wav", tone(0.05, 16_000), 16_000), "too short")


def test_nan_samples(write_audio):
    y = tone(2.0, 16_000)
    y[100] = np.nan
    _expect_error(write_audio("nan.wav", y, 16_000, subtype="FLOAT"), "NaN")


def test_unreadable_file(write_audio, monkeypatch):
    path = write_audio("locked.wav", tone(1.0, 16_000), 16_000)
    path.chmod(0)
    refuse_to_open(monkeypatch, path)  # root (CI) reads a mode-000 file: the OS refusal
    _expect_error(path, "permission denied")


@pytest.mark.parametrize("freq", [440.0, 1_000.0, 3_000.0])
def test_mel_of_a_tone_matches_librosa_and_peaks_in_its_band(freq):
    y = tone(2.0, 16_000, freq=freq)
    mel = mel_db(y, CFG)
    assert mel.shape == (CFG.n_mels, CFG.n_frames)
    power = librosa.feature.melspectrogram(
        y=y, sr=CFG.sample_rate, n_fft=CFG.n_fft, hop_length=CFG.hop_length,
        win_length=CFG.win_length, window="hann", center=True, pad_mode="constant", power=2.0,
        n_mels=CFG.n_mels, fmin=CFG.fmin, fmax=CFG.fmax)
    expected = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=CFG.top_db)
    np.testing.assert_allclose(mel, expected, atol=1e-3)  # dB; measured 4e-6
    # the loudest band is the one whose centre frequency is nearest the tone
    edges = librosa.mel_frequencies(CFG.n_mels + 2, fmin=CFG.fmin, fmax=CFG.fmax)
    nearest = int(np.argmin(np.abs(edges[1:-1] - freq)))
    assert int(np.argmax(mel.mean(axis=1))) == nearest


@pytest.mark.parametrize("settings, message", [
    ({"hop_length": 0}, "got hop_length 0"),
    ({"n_fft": 1024}, "win_length 2048, n_fft 1024"),  # a window longer than the FFT
    ({"n_fft": 128, "win_length": 128, "hop_length": 64}, "too small for 128 mel bands"),
])
def test_front_end_settings_that_cannot_work_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        FrontEndConfig(**settings)
    FrontEndConfig(n_fft=1024, win_length=1024, hop_length=256)  # the finer recipe is fine
