"""What makes a clip "AI" in this project: the artifact chain, one function per family.

Neither the demo corpus (`helpers.synth`) nor the real-music benchmarks
(``benchmarks/real_detection.py``) contain the output of a generative model. Their "AI" class is
a human-made clip passed through `apply_artifacts`, which imitates the traces that published
detectors of generated music find in the *last* stages of a generator, the ones that turn a
latent or a spectrogram back into a waveform. The chain is the only systematic difference
between the two classes, so a detector trained on these corpora learns these traces and
nothing else.

The families, in the order `apply_artifacts` runs them
-----------------------------------------------------
The imitated generator works at a low rate: the clip is first decimated by
``ArtifactConfig.upsample_factor``.

1. `mel_round_trip`: mel spectrogram, mel inversion, then Griffin-Lim phase reconstruction
   (Griffin and Lim 1984, "Signal estimation from modified short-time Fourier transform"). It
   stands in for a mel-domain generator whose waveform comes from a vocoder: the phase is
   re-estimated rather than recorded (incoherent phase, smeared transients, "phasiness") and
   detail finer than a mel band is lost, while the mel envelope is kept. SONICS (Rahman et
   al. 2024) and Afchar et al. (2024) both place the detectable traces in this
   vocoder / decoder stage.
2. `transposed_conv_upsample`: zero-stuffing followed by a short fixed kernel, the operation of
   a strided transposed convolution. Afchar, Meseguer-Brocal and Hennequin (2024, "Detecting
   music deepfakes is easy but actually hard") show such decoder layers leave spectral images
   and periodic peaks at multiples of the low rate, which make detection easy; Odena et al.
   (2016, "Deconvolution and checkerboard artifacts") explain the uneven kernel overlap
   behind them. The peaks come from low-frequency content (which music has plenty of) imaged
   by the uneven kernel; white noise shows images but no peaks.
3. `codec_quantize`: band-limit and round the STFT log-magnitude to coarse steps, keeping the
   phase: the coarse, band-limited latent of a neural audio codec (EnCodec, Défossez et al.
   2022; DAC, Kumar et al. 2023) of the kind music language models generate tokens for.

`normalize_loudness` is not an artifact: both classes go through it so that level cannot
reveal the label.

These are proxies. A detector that separates them shows that the code can learn generation
traces of this kind; it says nothing about the traces of a particular commercial generator
(Suno, Udio, ...), whose decoders differ and change between versions.

Adding a family
---------------
Write one function ``(y, sr, ..., seed) -> np.ndarray`` here with a docstring naming the
observation it models; give it a switch and its parameters in `ArtifactConfig` (off by
default, so existing corpora keep their fingerprint); compose it in `apply_artifacts`; and add
a test in ``tests/test_artifacts.py`` that measures the change it claims. Changing what the
default chain outputs changes the demo corpus: bump ``helpers.synth.GENERATOR_VERSION``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import librosa
import numpy as np
from scipy import signal

UPSAMPLE_KERNELS = ("nearest", "linear", "checkerboard")
MEL_INVERSIONS = ("fast", "librosa")


@dataclass(frozen=True)
class ArtifactConfig:
    """Which families `apply_artifacts` runs, and their settings.

    The clip is decimated by `upsample_factor`, the mel round trip runs at that low rate, the
    transposed-convolution upsampling brings it back, then the optional codec stage runs.
    `strength` blends the result with the input. This config is part of
    ``SynthConfig.artifacts``, so it fingerprints a demo corpus folder.

    Parameters
    ----------
    griffin_lim : bool
        Run `mel_round_trip` (mel spectrogram, mel inversion, Griffin-Lim).
    gl_iters : int
        Griffin-Lim iterations. Few (16-32) keep the build fast and leave the phasiness of a
        cheap vocoder; hundreds would approach a clean reconstruction.
    gl_n_fft, gl_hop_length, gl_n_mels : int
        STFT size, hop and mel bands of the round trip, in samples / bands.
    mel_inversion : str
        ``"fast"`` (default) solves the non-negative least-squares mel inversion with a few
        multiplicative updates started from the pseudo-inverse (tens of milliseconds);
        ``"librosa"`` uses ``librosa.feature.inverse.mel_to_stft`` (exact L-BFGS-B, about 3 s
        per 10 s clip). Both produce the same kind of artifact.
    upsample_factor : int
        Decimate by this factor, then `transposed_conv_upsample` back. ``1`` disables both.
    kernel : str
        The fixed "learned" interpolation kernel: ``"nearest"`` (zero-order hold, kernel equal
        to the stride: strong images), ``"linear"`` (triangle of length ``2 * factor - 1``) or
        ``"checkerboard"`` (the triangle with its on-grid tap raised by `checkerboard_gain`:
        the uneven overlap of Odena et al. 2016, which adds a periodic gain pattern and hence
        peaks at multiples of the low rate).
    checkerboard_gain : float
        Relative excess gain of the on-grid tap for ``kernel="checkerboard"``.
    codec : bool
        Run `codec_quantize`.
    codec_cutoff_hz : float
        Content above this frequency is removed by the codec stage.
    codec_step_db : float
        Quantisation step of the codec stage's log-magnitude, in dB.
    strength : float
        Wet/dry mix in [0, 1]: ``y + strength * (chain(y) - y)``. Below 1 the dry signal leaks
        in, which hides part of the artifacts (and, with `griffin_lim`, adds a faint comb
        filter, as a partial re-synthesis would).
    """

    griffin_lim: bool = True
    gl_iters: int = 16
    gl_n_fft: int = 1024
    gl_hop_length: int = 256
    gl_n_mels: int = 128
    mel_inversion: str = "fast"
    upsample_factor: int = 2
    kernel: str = "checkerboard"
    checkerboard_gain: float = 0.25
    codec: bool = False
    codec_cutoff_hz: float = 8_000.0
    codec_step_db: float = 3.0
    strength: float = 1.0

    def __post_init__(self) -> None:
        if self.kernel not in UPSAMPLE_KERNELS:
            raise ValueError(
                f"kernel must be 'nearest', 'linear' or 'checkerboard', got {self.kernel!r}"
            )
        if self.mel_inversion not in MEL_INVERSIONS:
            raise ValueError(
                f"mel_inversion must be 'fast' or 'librosa', got {self.mel_inversion!r}"
            )
        if self.upsample_factor < 1:
            raise ValueError(f"upsample_factor must be >= 1, got {self.upsample_factor}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if self.gl_iters < 1:
            raise ValueError(f"gl_iters must be >= 1, got {self.gl_iters}")

    @classmethod
    def none(cls) -> ArtifactConfig:
        """Every family off: `apply_artifacts` returns its input, as float32, unchanged."""
        return cls(griffin_lim=False, upsample_factor=1, codec=False)


# --------------------------------------------------------------------------------------------
# Family 1: mel-domain generator + Griffin-Lim vocoder
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)


def _invert_mel_fast(m: np.ndarray, sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Magnitude STFT whose mel projection approximates `m` (non-negative least squares).

    The problem ``librosa.feature.inverse.mel_to_stft`` solves, by a few multiplicative updates
    (Lee and Seung 2001) started from the filterbank transpose: ~50x faster, and the same
    artifact, detail within a mel band is lost.
    """
    fb = _mel_basis(sr, n_fft, n_mels)
    power = fb.T @ m / (fb.sum(axis=0)[:, None] ** 2 + 1e-10)  # (n_fft // 2 + 1, frames)
    numer = fb.T @ m
    for _ in range(6):
        power *= numer / (fb.T @ (fb @ power) + 1e-10)
    return np.sqrt(power)


def mel_round_trip(
    y: np.ndarray,
    sr: int,
    *,
    n_fft: int = ArtifactConfig.gl_n_fft,
    hop_length: int = ArtifactConfig.gl_hop_length,
    n_mels: int = ArtifactConfig.gl_n_mels,
    n_iter: int = ArtifactConfig.gl_iters,
    inversion: str = ArtifactConfig.mel_inversion,
    seed: int = 0,
) -> np.ndarray:
    """Re-synthesise a clip from its mel spectrogram with Griffin-Lim, as a vocoder would.

    Models a mel-domain generator followed by a phase-reconstructing vocoder: the mel envelope
    survives, the recorded phase does not (it is re-estimated from a random start), so the
    waveform changes completely while it sounds similar, with smeared transients and
    "phasiness".

    Parameters
    ----------
    y : np.ndarray, shape (samples,)
        Mono audio.
    sr : int
        Its sample rate in Hz.
    n_fft, hop_length, n_mels : int
        STFT size and hop in samples, and mel bands.
    n_iter : int
        Griffin-Lim iterations.
    inversion : str
        ``"fast"`` (multiplicative-update NNLS) or ``"librosa"`` (``mel_to_stft``); see
        `ArtifactConfig.mel_inversion`.
    seed : int
        Seeds Griffin-Lim's random initial phase.

    Returns
    -------
    np.ndarray, shape (samples,), float64
    """
    if inversion not in MEL_INVERSIONS:
        raise ValueError(f"inversion must be 'fast' or 'librosa', got {inversion!r}")
    m = librosa.feature.melspectrogram(
        y=y, sr=sr, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels
    )
    if inversion == "librosa":
        mag = librosa.feature.inverse.mel_to_stft(m, sr=sr, n_fft=n_fft)
    else:
        mag = _invert_mel_fast(m, sr, n_fft, n_mels)
    out = librosa.griffinlim(
        mag, n_iter=n_iter, hop_length=hop_length, n_fft=n_fft, length=len(y), random_state=seed
    )
    return out.astype(np.float64)


# --------------------------------------------------------------------------------------------
# Family 2: a decoder's transposed-convolution upsampling
# --------------------------------------------------------------------------------------------


def upsample_kernel(factor: int, kind: str, gain: float = 0.0) -> np.ndarray:
    """The fixed kernel of `transposed_conv_upsample` (see `ArtifactConfig.kernel`).

    Returns
    -------
    np.ndarray, shape (factor,) for ``"nearest"``, else (2 * factor - 1,)
    """
    if kind not in UPSAMPLE_KERNELS:
        raise ValueError(f"kernel must be one of {UPSAMPLE_KERNELS}, got {kind!r}")
    if kind == "nearest":
        return np.ones(factor)
    tri = 1.0 - np.abs(np.arange(-(factor - 1), factor)) / factor  # length 2 * factor - 1
    if kind == "checkerboard":
        tri[factor - 1] *= 1.0 + gain  # uneven overlap: one output phase gets more weight
    return tri


def transposed_conv_upsample(
    low: np.ndarray,
    factor: int,
    *,
    kernel: str = ArtifactConfig.kernel,
    checkerboard_gain: float = ArtifactConfig.checkerboard_gain,
    length: int | None = None,
) -> np.ndarray:
    """Upsample by zero-stuffing and a short fixed kernel, as a strided transposed conv does.

    Unlike an ideal resampler, this leaves images of the low-rate spectrum above its Nyquist
    frequency; with the ``"checkerboard"`` kernel, output samples on the low-rate grid get
    more weight than those between, a periodic gain that puts spectral peaks at multiples of
    ``sr / factor`` wherever the input has low-frequency content (Afchar et al. 2024; Odena et
    al. 2016).

    Parameters
    ----------
    low : np.ndarray, shape (low_samples,)
        Audio at the low rate.
    factor : int
        Stride of the transposed convolution (>= 1).
    kernel : str
        ``"nearest"``, ``"linear"`` or ``"checkerboard"``; see `upsample_kernel`.
    checkerboard_gain : float
        Excess gain of the on-grid tap for the checkerboard kernel.
    length : int, optional
        Output length; cropped or zero-padded to it. Defaults to ``low_samples * factor``.

    Returns
    -------
    np.ndarray, shape (length,), float64
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    n_out = len(low) * factor if length is None else length
    kern = upsample_kernel(factor, kernel, checkerboard_gain)
    stuffed = np.zeros(len(low) * factor)
    stuffed[::factor] = low
    # The triangle kernels are centred on tap factor - 1; the hold kernel starts at its sample.
    out = np.convolve(stuffed, kern)[0 if kernel == "nearest" else factor - 1 :]
    return out[:n_out] if len(out) >= n_out else np.pad(out, (0, n_out - len(out)))


# --------------------------------------------------------------------------------------------
# Family 3: a neural codec's coarse latent
# --------------------------------------------------------------------------------------------


def codec_quantize(
    y: np.ndarray,
    sr: int,
    *,
    cutoff_hz: float = ArtifactConfig.codec_cutoff_hz,
    step_db: float = ArtifactConfig.codec_step_db,
) -> np.ndarray:
    """Band-limit a clip and round its STFT log-magnitude to coarse steps, keeping the phase.

    Models the band-limited, coarsely quantised latent of a neural audio codec (EnCodec, DAC)
    that a music language model generates tokens for: nothing survives above `cutoff_hz`, and
    levels below it move by up to ``step_db / 2`` dB.

    Parameters
    ----------
    y : np.ndarray, shape (samples,)
        Mono audio.
    sr : int
        Its sample rate in Hz.
    cutoff_hz : float
        STFT bins above this frequency are zeroed.
    step_db : float
        Quantisation step of the log-magnitude, in dB.

    Returns
    -------
    np.ndarray, shape (samples,)
    """
    n_fft, hop = 1024, 256
    spec = librosa.stft(y, n_fft=n_fft, hop_length=hop)
    freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
    mag, phase = np.abs(spec), np.angle(spec)
    db = 20 * np.log10(np.maximum(mag, 1e-8))
    db = np.round(db / step_db) * step_db
    mag = np.where(freqs[:, None] <= cutoff_hz, 10 ** (db / 20), 0.0)
    mag[mag < 1.1e-8] = 0.0  # bins at the -160 dB floor were silent: keep them silent
    return librosa.istft(mag * np.exp(1j * phase), hop_length=hop, length=len(y))


# --------------------------------------------------------------------------------------------
# The chain
# --------------------------------------------------------------------------------------------


def apply_artifacts(
    y: np.ndarray,
    sr: int,
    config: ArtifactConfig | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Turn a "human" clip into an "AI" one: the families of `config`, composed in order.

    Decimate by ``config.upsample_factor``; `mel_round_trip` at that low rate; then
    `transposed_conv_upsample` back to `sr`; then `codec_quantize`; then blend with the input
    by ``config.strength``. With ``ArtifactConfig.none()`` the input comes back unchanged.

    Parameters
    ----------
    y : np.ndarray, shape (samples,)
        Mono audio.
    sr : int
        Its sample rate in Hz.
    config : ArtifactConfig, optional
        Which families to run; defaults to ``ArtifactConfig()`` (Griffin-Lim round trip, then
        2x checkerboard upsampling).
    rng : np.random.Generator, optional
        Seeds Griffin-Lim's random initial phase; pass one derived from the clip for
        reproducible output. ``None`` uses a fixed seed.

    Returns
    -------
    np.ndarray, shape (samples,), float32
        Same length as `y`; not loudness-normalised (see `normalize_loudness`).

    Examples
    --------
    >>> y = np.random.default_rng(0).standard_normal(22_050).astype(np.float32)
    >>> z = apply_artifacts(y, 22_050, ArtifactConfig(), np.random.default_rng(1))
    >>> z.shape, z.dtype
    ((22050,), dtype('float32'))
    """
    cfg = config or ArtifactConfig()
    rng = rng if rng is not None else np.random.default_rng(0)
    x = np.asarray(y, dtype=np.float64)
    factor = cfg.upsample_factor
    # The imitated generator works at a low rate and its decoder's last layers upsample, so
    # the vocoder stage runs on the decimated signal (which also halves its cost).
    out = signal.resample_poly(x, 1, factor) if factor > 1 else x.copy()
    if cfg.griffin_lim:
        out = mel_round_trip(
            out,
            sr // factor,
            n_fft=cfg.gl_n_fft,
            hop_length=cfg.gl_hop_length,
            n_mels=cfg.gl_n_mels,
            n_iter=cfg.gl_iters,
            inversion=cfg.mel_inversion,
            seed=int(rng.integers(2**31)),
        )
    if factor > 1:
        out = transposed_conv_upsample(
            out,
            factor,
            kernel=cfg.kernel,
            checkerboard_gain=cfg.checkerboard_gain,
            length=len(x),
        )
    if cfg.codec:
        out = codec_quantize(out, sr, cutoff_hz=cfg.codec_cutoff_hz, step_db=cfg.codec_step_db)
    out = x + cfg.strength * (out - x)
    return out.astype(np.float32)


def normalize_loudness(
    y: np.ndarray, target_rms_dbfs: float = -20.0, peak_dbfs: float = -0.5
) -> np.ndarray:
    """Scale to a target RMS, then down if needed so no sample exceeds `peak_dbfs`.

    Every clip of both labels goes through this, so overall level cannot reveal the label.

    Parameters
    ----------
    y : np.ndarray, shape (samples,)
        Mono audio.
    target_rms_dbfs : float
        RMS level to reach, in dB relative to full scale.
    peak_dbfs : float
        Ceiling for the absolute peak after scaling; wins over `target_rms_dbfs`.

    Returns
    -------
    np.ndarray, shape (samples,), float32
        A silent input (RMS below 1e-12) is returned unscaled.
    """
    y = np.asarray(y, dtype=np.float64)
    rms = np.sqrt(np.mean(y**2))
    if rms < 1e-12:
        return y.astype(np.float32)
    gain = 10 ** (target_rms_dbfs / 20) / rms
    peak = np.max(np.abs(y)) * gain
    gain *= min(1.0, 10 ** (peak_dbfs / 20) / peak)
    return (y * gain).astype(np.float32)
