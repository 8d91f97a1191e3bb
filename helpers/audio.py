"""Audio front end: read the start of a file, downmix, resample, pad/crop, mel spectrogram.

One definition of the dB mel spectrogram, two implementations:

* `mel_db` (numpy/librosa) for one clip on the CPU, used by the feature cache workers;
* `MelSpectrogram` (torch, batched, on the GPU when present), used for on-the-fly features.

Both compute ``10 * log10(max(M @ |STFT(y)|**2, 1e-10))`` with a periodic Hann window, centred
frames padded with zeros, and librosa's Slaney mel filterbank, then clip each clip to
``top_db`` below its own maximum. ``tests/test_audio.py`` checks that they agree.

Resampling uses soxr at "HQ" quality (a linear-phase polyphase filter with a passband to 91 %
of Nyquist and more than 100 dB of stopband rejection; librosa's default ``soxr_hq``).
"""

from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path

import librosa
import numpy as np
import scipy.signal
import soundfile as sf
import soxr
import torch

from helpers.config import FrontEndConfig

#: Extensions the front end reads (through libsndfile, which decodes all of them natively).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")

_SILENCE_PEAK = 1e-5  # -100 dBFS: below this a clip carries no music to classify
_AMIN = 1e-10  # floor of the power mel spectrogram before the log
_MAX_PRIMING = 4 * 1152  # generous bound on an MP3 encoder delay, in samples


class AudioError(ValueError):
    """A file that cannot be turned into a clip; the message names the file and the fix."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str = "") -> None:
        self.path = os.fspath(path)
        self.problem = problem
        message = f"{self.path}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


def read_audio(
    path: str | os.PathLike, max_seconds: float | None = 30.0
) -> tuple[np.ndarray, int]:
    """Read at most the first `max_seconds` of a file as mono float32 at its native rate.

    Only the frames needed are decoded, so reading 30 s of a 10-minute MP3 costs 30 s of
    decoding, not ten minutes.

    Parameters
    ----------
    path : str or path-like
        A WAV, FLAC, OGG/Vorbis/Opus or MP3 file with any number of channels at any rate.
    max_seconds : float or None
        Seconds to read from the start; ``None`` reads the whole file.

    Returns
    -------
    y : np.ndarray, shape (samples,), float32
        Channels averaged to mono.
    sr : int
        The file's sample rate.

    Raises
    ------
    AudioError
        The file is missing, empty, not decodable, or holds NaN/Inf samples.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file not found", "check the path or the manifest's 'path' column")
    if path.is_dir():
        raise AudioError(path, "is a folder, not an audio file")
    try:
        # Open it ourselves first: the OS says why a file cannot be read (permissions, an I/O
        # error on a network drive) where libsndfile says only "System error", and unlike
        # os.access this holds for root and on FUSE mounts such as Google Drive too.
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
    except PermissionError as err:
        raise AudioError(path, "permission denied", "check file permissions") from err
    except OSError as err:
        raise AudioError(path, f"cannot read ({err.strerror})",
                         "check the file and the drive it is on") from err
    if size == 0:
        raise AudioError(path, "empty file (0 bytes)", "re-download or remove it")
    try:
        # soundfile encodes a str name strictly as UTF-8, so a name that is not valid UTF-8
        # (bytes that os.fsdecode turned into surrogates) must go in as the raw bytes.
        name = os.fsencode(path) if os.name == "posix" else os.fspath(path)
        with sf.SoundFile(name) as f:
            sr = f.samplerate
            frames = -1 if max_seconds is None else int(np.ceil(max_seconds * sr))
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, EOFError, OSError) as err:
        # libsndfile's own text, without its repeat of the name; its "does not exist" means
        # here (the file exists) that no known format was found in the data
        reason = getattr(err, "error_string", None) or str(err)
        if "does not exist" in reason:
            reason = "no decodable audio data"
        raise AudioError(
            path,
            f"cannot decode audio ({reason.rstrip('.')})",
            "corrupt, truncated or not an audio file; supported: wav, flac, ogg, opus, mp3. "
            "Convert other formats with ffmpeg",
        ) from err
    if data.size == 0:
        raise AudioError(path, "contains no audio samples", "re-download or remove it")
    if not np.isfinite(data).all():
        raise AudioError(path, "contains NaN or Inf samples", "the file is damaged; re-export it")
    return data.mean(axis=1, dtype=np.float32), int(sr)


def resample(y: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample with soxr's high-quality filter; returns float32."""
    if sr_in == sr_out:
        return np.asarray(y, dtype=np.float32)
    return soxr.resample(y, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def fit_length(y: np.ndarray, n_samples: int, pad_mode: str = "zero") -> np.ndarray:
    """Crop to `n_samples`, or pad: with zeros (``"zero"``) or by looping (``"repeat"``)."""
    if len(y) >= n_samples:
        return y[:n_samples]
    if pad_mode == "repeat":
        return np.resize(y, n_samples).astype(y.dtype, copy=False)
    return np.pad(y, (0, n_samples - len(y)))


def write_mp3(target: str | os.PathLike | io.BytesIO, y: np.ndarray, sr: int,
              bitrate_kbps: int = 128) -> None:
    """Write mono audio as constant-bitrate MP3 (LAME through libsndfile).

    Parameters
    ----------
    target : str, path-like or file-like
    y : np.ndarray, shape (samples,)
    sr : int
        Sample rate; MP3 supports 8 to 48 kHz.
    bitrate_kbps : int
        Target constant bitrate; clipped to what the rate's MPEG version offers.
    """
    # libsndfile maps a compression level in [0, 1) linearly onto the bitrates of the MPEG
    # version the rate implies: MPEG-1 (32-48 kHz) spans 320..32 kbps, MPEG-2/2.5 160..8 kbps.
    hi, lo = (320, 32) if sr >= 32_000 else (160, 8)
    level = float(np.clip((hi - bitrate_kbps) / (hi - lo), 0.0, 0.99))
    sf.write(target, y, sr, format="MP3", compression_level=level, bitrate_mode="CONSTANT")


def codec_round_trip(y: np.ndarray, sr: int, bitrate_kbps: int = 128) -> np.ndarray:
    """Encode to constant-bitrate MP3 in memory and decode again (the confound control).

    Parameters
    ----------
    y : np.ndarray, shape (samples,)
    sr : int
        Sample rate; MP3 supports 8 to 48 kHz.
    bitrate_kbps : int
        Target constant bitrate.

    Returns
    -------
    np.ndarray, shape (samples,), float32
        Same length and timing as `y`: the encoder's priming delay is cut, its tail padded.
    """
    buf = io.BytesIO()
    write_mp3(buf, y, sr, bitrate_kbps)
    buf.seek(0)
    decoded, _ = sf.read(buf, dtype="float32")
    return fit_length(decoded[_priming_samples(y, decoded):], len(y))


def _priming_samples(y: np.ndarray, decoded: np.ndarray) -> int:
    """Encoder delay left in front of `decoded` (0 when the decoder already removed it).

    libsndfile cuts LAME's delay only when the file carries a LAME/Xing gapless header, and
    low-bitrate frames are too small to hold one: at 48 kbps and below the ~1105 samples of
    priming stay in front of the music. The lag is found by cross-correlation over the extra
    samples the decoder returned, so it also holds for other encoder versions.
    """
    extra = min(len(decoded) - len(y), _MAX_PRIMING)
    if extra <= 0:
        return 0
    n = min(len(y), len(decoded) - extra)
    corr = scipy.signal.correlate(decoded[: n + extra], y[:n], mode="valid", method="fft")
    return int(np.argmax(corr))


def load_clip(path: str | os.PathLike, config: FrontEndConfig | None = None) -> np.ndarray:
    """Read the first ``config.duration`` seconds of a file as a fixed-length mono clip.

    Parameters
    ----------
    path : str or path-like
        Any file `read_audio` accepts.
    config : FrontEndConfig, optional
        Front-end settings; the defaults read 30 s at 16 kHz.

    Returns
    -------
    np.ndarray, shape (config.n_samples,), float32

    Raises
    ------
    AudioError
        As `read_audio`, plus clips shorter than ``config.min_duration`` and silent clips.
    """
    config = config or FrontEndConfig()
    y, sr = read_audio(path, max_seconds=config.duration)
    return prepare_clip(y, sr, config, name=path)


def prepare_clip(
    y: np.ndarray, sr: int, config: FrontEndConfig | None = None,
    name: str | os.PathLike = "<audio>",
) -> np.ndarray:
    """Turn decoded mono audio into the front end's fixed-length clip.

    Used by `load_clip`, and by callers that decoded a file once for several models.

    Parameters
    ----------
    y : np.ndarray, shape (samples,)
        Mono audio at rate `sr`; only its first ``config.duration`` seconds are used.
    sr : int
    config : FrontEndConfig, optional
    name : str or path-like
        Named in errors (the file the audio came from).

    Returns
    -------
    np.ndarray, shape (config.n_samples,), float32

    Raises
    ------
    AudioError
        Too short, silent, or NaN/Inf samples.
    """
    config = config or FrontEndConfig()
    y = np.asarray(y, dtype=np.float32)[: int(np.ceil(config.duration * sr))]
    if not np.isfinite(y).all():
        raise AudioError(name, "contains NaN or Inf samples", "the audio is damaged")
    seconds = len(y) / sr
    if seconds < config.min_duration:
        raise AudioError(
            name,
            f"too short: {seconds:.3f} s of audio, at least {config.min_duration} s needed",
            "lower FrontEndConfig.min_duration to accept it",
        )
    if float(np.max(np.abs(y))) < _SILENCE_PEAK:
        raise AudioError(name, "silent (peak below -100 dBFS)", "nothing to classify; remove it")
    y = resample(y, sr, config.sample_rate)
    if config.codec == "mp3":
        y = codec_round_trip(y, config.sample_rate, config.codec_bitrate_kbps)
    return fit_length(y, config.n_samples, config.pad_mode)


@lru_cache(maxsize=8)
def mel_filterbank(config: FrontEndConfig) -> np.ndarray:
    """Slaney mel filterbank, shape (n_mels, n_fft // 2 + 1), float32."""
    return librosa.filters.mel(
        sr=config.sample_rate,
        n_fft=config.n_fft,
        n_mels=config.n_mels,
        fmin=config.fmin,
        fmax=config.fmax,
        dtype=np.float32,
    )


def mel_db(y: np.ndarray, config: FrontEndConfig | None = None) -> np.ndarray:
    """dB mel spectrogram of one clip (numpy/librosa implementation).

    Parameters
    ----------
    y : np.ndarray, shape (samples,)
        Mono audio at ``config.sample_rate``.
    config : FrontEndConfig, optional

    Returns
    -------
    np.ndarray, shape (n_mels, frames), float32
        Values in [max - top_db, max] dB (power, reference 1.0).
    """
    config = config or FrontEndConfig()
    spec = librosa.stft(
        np.asarray(y, dtype=np.float32),
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        win_length=config.win_length,
        window="hann",  # scipy's periodic Hann, as torch.hann_window(periodic=True)
        center=True,
        pad_mode="constant",
    )
    power = spec.real**2 + spec.imag**2
    db = 10.0 * np.log10(np.maximum(mel_filterbank(config) @ power, _AMIN))
    return np.maximum(db, db.max() - config.top_db).astype(np.float32)


class MelSpectrogram(torch.nn.Module):
    """dB mel spectrogram as a batched torch module (same definition as `mel_db`).

    Parameters
    ----------
    config : FrontEndConfig, optional

    Examples
    --------
    >>> mel = MelSpectrogram(FrontEndConfig(duration=2.0))
    >>> mel(torch.zeros(4, 32000) + 0.1).shape
    torch.Size([4, 128, 63])
    """

    def __init__(self, config: FrontEndConfig | None = None) -> None:
        super().__init__()
        self.config = config or FrontEndConfig()
        self.register_buffer(
            "window", torch.hann_window(self.config.win_length, periodic=True), persistent=False
        )
        self.register_buffer(
            "filterbank", torch.from_numpy(mel_filterbank(self.config)), persistent=False
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """(batch, samples) float → (batch, n_mels, frames) float32 dB."""
        c = self.config
        spec = torch.stft(
            y.float(),
            n_fft=c.n_fft,
            hop_length=c.hop_length,
            win_length=c.win_length,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )  # (batch, n_fft // 2 + 1, frames)
        power = spec.real.square() + spec.imag.square()
        db = 10.0 * torch.log10(torch.clamp(self.filterbank @ power, min=_AMIN))
        floor = db.amax(dim=(-2, -1), keepdim=True) - c.top_db  # per clip, not per batch
        return torch.maximum(db, floor)


def default_device() -> torch.device:
    """CUDA when present, then Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
