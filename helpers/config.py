"""Configuration shared by every stage: the audio front end.

One `FrontEndConfig` defines how a file becomes a mel spectrogram. It is saved as JSON in every
feature cache and every run folder, so training, evaluation, the CLI and the notebooks cannot
drift apart (the Audio Spectrogram Transformer's data loader owns its front end the same way).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class FrontEndConfig:
    """How audio becomes a dB mel spectrogram.

    The defaults follow SONICS' SpecTTTra front end (16 kHz, 128 mel bins, hop 512), and the
    design's rule of classifying the first 30 s of a song.

    Parameters
    ----------
    sample_rate : int
        Rate every clip is resampled to, in Hz. 16 kHz keeps content up to 8 kHz.
    duration : float
        Seconds read from the start of each file; longer files are cropped, shorter ones padded
        (see `pad_mode`).
    min_duration : float
        Files with fewer seconds of audio than this are rejected as too short: padding a
        blip to 30 s would teach the model about padding, not music.
    pad_mode : str
        ``"zero"`` appends silence (default), ``"repeat"`` loops the clip until it fills
        `duration` seconds.
    n_fft, hop_length, win_length : int
        STFT parameters in samples (periodic Hann window, centred frames, zero padding).
    n_mels, fmin, fmax : int, float, float
        Slaney-style mel filterbank (librosa's default); `fmax` ``None`` means Nyquist.
    top_db : float
        Dynamic range kept below each clip's maximum, in dB.
    codec : str or None
        Confound control. ``None`` uses the decoded audio as is. ``"mp3"`` passes every clip
        through the same MP3 encoder at `codec_bitrate_kbps` and back (after resampling,
        before the features), so a classifier cannot separate MP3 sources from WAV sources
        by their codec. Use it when the two classes come from different sources; it costs
        some detection (the band above ~6 kHz is dropped at 24 kbps).
    codec_bitrate_kbps : int
        Bitrate of the control's round trip. It must be *lossier* than the sources' own
        codecs, because one more encode cannot undo what a lossier one removed: at 16 kHz,
        128 kbps is nearly transparent and left a detector's P(AI) for 32 kbps MP3 copies
        of human songs above their WAV originals, while 24 kbps brought the difference to
        chance (`benchmarks/results/robustness.json`, demo corpus).
    """

    sample_rate: int = 16_000
    duration: float = 30.0
    min_duration: float = 0.5
    pad_mode: str = "zero"
    n_fft: int = 2048
    hop_length: int = 512
    win_length: int = 2048
    n_mels: int = 128
    fmin: float = 20.0
    fmax: float | None = 8_000.0
    top_db: float = 80.0
    codec: str | None = None
    codec_bitrate_kbps: int = 24

    def __post_init__(self) -> None:
        if self.pad_mode not in ("zero", "repeat"):
            raise ValueError(f"pad_mode must be 'zero' or 'repeat', got {self.pad_mode!r}")
        if self.codec not in (None, "mp3"):
            raise ValueError(f"codec must be None or 'mp3', got {self.codec!r}")
        if self.min_duration > self.duration:
            raise ValueError("min_duration must not exceed duration")
        if not 1 <= self.hop_length <= self.win_length <= self.n_fft:
            raise ValueError(
                f"need 1 <= hop_length <= win_length <= n_fft, got hop_length "
                f"{self.hop_length}, win_length {self.win_length}, n_fft {self.n_fft}")
        if self.n_fft < 2 * self.n_mels:
            # Fewer FFT bins than mel bands leaves some mel filters empty (silent rows).
            raise ValueError(f"n_fft {self.n_fft} is too small for {self.n_mels} mel bands: "
                             f"use at least {2 * self.n_mels}")

    @property
    def n_samples(self) -> int:
        """Samples in one clip after resampling and pad/crop."""
        return int(round(self.duration * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """Spectrogram frames in one clip (centred STFT)."""
        return 1 + self.n_samples // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def same_features(self, other: FrontEndConfig) -> bool:
        """True when both configs make identical features (the bitrate of an unused codec
        control does not count, so caches made before its default changed stay valid)."""
        if self.codec is None and other.codec is None:
            return replace(self, codec_bitrate_kbps=other.codec_bitrate_kbps) == other
        return self == other

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrontEndConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown front-end settings {sorted(unknown)}")
        return cls(**data)

