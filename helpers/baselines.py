"""A strong, simple baseline for telling re-synthesised ("AI") music from human music.

Every Model 1 number is reported beside this one: a logistic regression on about 150 hand-made
statistics of the short-time spectrum, each aimed at a trace that the *last* stage of a music
generator (the vocoder or decoder that turns a spectrogram or latent into a waveform) leaves
behind, the same stage `helpers.artifacts` imitates. If the transformer cannot beat it, the
transformer has not learned anything these statistics do not already show.

What the features measure, and why generator traces show there
-----------------------------------------------------------------
* **Frame-to-frame change of the log-mel spectrum** (``dmel_*``; n_fft 1024, hop 256 at
  22.05 kHz, 64 mel bands in 8 groups): mean, spread and percentiles of ``|Δ dB|`` between
  consecutive frames, and its ratio at lag 1 to lag 4. A vocoder that re-estimates the phase
  (Griffin-Lim, cheap neural vocoders) smears transients over neighbouring frames and makes
  steady partials beat against their own leakage, so the change statistics move in both
  directions: smoother at onsets, rougher on sustained notes.
* **Spectral flatness** (``flat_*``; per frame, in dB, in four bands): phase that is not
  coherent between overlapping frames spreads a partial's energy into the valleys between
  harmonics, so the spectrum gets flatter ("phasiness"); mel inversion also fills the detail
  finer than a mel band.
* **Fine time resolution** (``fine_*``; n_fft 256, hop 64): the same change statistics at
  2.9 ms hops, where transient smearing by a long synthesis window is plainest.
* **High-band energy and the band edge** (``hf_*``, ``edge_*``): generators that work at a low
  rate leave nothing, or only upsampling images, above their Nyquist frequency; the energy
  above 5, 8 and 10 kHz and the frequency where the long-term spectrum ends show that.
* **Phase coherence** (``ifdev_*``, ``gdev_*``): for a recorded partial, the phase advance
  between frames (the instantaneous frequency) is steady, so its second difference over time
  is near zero; across frequency, the phase of a Hann-windowed partial is flat over its main
  lobe (group delay). Griffin-Lim only approximates a phase consistent with the magnitudes,
  so both deviations grow, weighted here by magnitude, per band.
* **Spectral peakiness** (``peak_*``, ``mirror_*``): a strided transposed convolution
  (zero-stuffing plus a short kernel) mirrors the low-rate spectrum above its Nyquist
  frequency and, with uneven kernel overlap (checkerboard), adds periodic peaks (Odena et al.
  2016; Afchar et al. 2024). The long-term spectrum's narrow peaks above a quarter of the
  rate, and the correlation of its fine structure mirrored around 5.5 kHz and 2.8 kHz (the
  image folds of 2x and 4x upsampling to 22.05 kHz), measure them.

Every statistic is a ratio or a dB *difference* with a floor set relative to the clip's own
maximum, so scaling a clip leaves its features unchanged: level cannot reveal the label.
Silent, constant, very short or clipped input gives finite features (zeros where a statistic
has nothing to measure).

Public API
----------
`ArtifactFeatureConfig`, `feature_names`, `artifact_features`, `features_for_files`, and
`ArtifactFeatureBaseline` (standardisation + logistic regression, its ``C`` chosen by
grouped cross-validation on the training data only).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass
from functools import lru_cache

import librosa
import numpy as np
import scipy.fft
import scipy.ndimage
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from helpers import jit
from helpers.audio import AudioError, read_audio, resample

__all__ = [
    "ArtifactFeatureBaseline",
    "ArtifactFeatureConfig",
    "artifact_features",
    "feature_names",
    "features_for_files",
]

_STATS = ("mean", "std", "p10", "p50", "p90")
_AMIN = 1e-20  # absolute power floor: only silent input reaches it
_FLAT_BANDS_HZ = ((0.0, None), (0.0, 2_000.0), (2_000.0, 5_000.0), (5_000.0, None))
_MIRROR_FOLDS = (4, 8)  # fold at sr / 4 and sr / 8: images of 2x and 4x upsampling
_COHERENT_RAD = np.pi / 4  # a phase step counts as coherent below this deviation


@dataclass(frozen=True)
class ArtifactFeatureConfig:
    """How a clip becomes the baseline's feature vector.

    Parameters
    ----------
    sample_rate : int
        Rate in Hz every clip is resampled to before analysis. 22.05 kHz keeps content up to
        11 kHz, where upsampling images and band limits show.
    n_fft, hop_length : int
        Main STFT (periodic Hann window, centred frames), in samples: 46 ms / 11.6 ms.
    n_mels : int
        Mel bands of the change statistics (Slaney filterbank, 0 Hz to Nyquist).
    n_band_groups : int
        The mel bands are averaged in this many groups of consecutive bands; the phase
        statistics use the same frequency groups. Must divide `n_mels`.
    fine_n_fft, fine_hop_length, fine_n_mels, fine_band_groups : int
        The fine-resolution pass (2.9 ms hops by default) and its mel grouping.
    high_band_hz : tuple of float
        Cut-offs of the high-band energy ratios, in Hz (each below Nyquist).
    top_db : float
        Dynamic range kept below the clip's loudest bin, in dB: quieter bins are raised to it,
        and frames quieter than this below the loudest frame are left out of flatness.
    max_seconds : float or None
        Seconds read from the start of each file by `features_for_files` (``None``: whole).
    """

    sample_rate: int = 22_050
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 64
    n_band_groups: int = 8
    fine_n_fft: int = 256
    fine_hop_length: int = 64
    fine_n_mels: int = 16
    fine_band_groups: int = 4
    high_band_hz: tuple[float, ...] = (5_000.0, 8_000.0, 10_000.0)
    top_db: float = 80.0
    max_seconds: float | None = 30.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "n_band_groups",
                     "fine_n_fft", "fine_hop_length", "fine_n_mels", "fine_band_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_mels % self.n_band_groups:
            raise ValueError(f"n_band_groups ({self.n_band_groups}) must divide n_mels "
                             f"({self.n_mels})")
        if self.fine_n_mels % self.fine_band_groups:
            raise ValueError(f"fine_band_groups ({self.fine_band_groups}) must divide "
                             f"fine_n_mels ({self.fine_n_mels})")
        if self.n_fft % 2 or self.fine_n_fft % 2:
            # the centre-referenced phase of `_stft` is a half-window rotation: even sizes only
            raise ValueError(f"n_fft and fine_n_fft must be even, got {self.n_fft}, "
                             f"{self.fine_n_fft}")
        if self.hop_length > self.n_fft or self.fine_hop_length > self.fine_n_fft:
            raise ValueError("hop lengths must not exceed their n_fft")
        nyquist = self.sample_rate / 2
        if not all(0 < f < nyquist for f in self.high_band_hz):
            raise ValueError(f"high_band_hz must lie in (0, {nyquist}), got {self.high_band_hz}")
        if self.top_db <= 0:
            raise ValueError(f"top_db must be > 0, got {self.top_db}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {self.max_seconds}")


# --------------------------------------------------------------------------------------------
# Spectral building blocks
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _window(n_fft: int) -> np.ndarray:
    # periodic Hann, as helpers.audio's front end
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def _stft(y: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Centred, zero-padded STFT, shape (n_fft // 2 + 1, frames), complex64.

    The frame's phase is taken relative to its centre (the spectrum of the frame rotated by
    half a window), so a partial's phase is flat across its main lobe.
    """
    y = np.pad(np.asarray(y, dtype=np.float32), n_fft // 2)
    if len(y) < n_fft:
        y = np.pad(y, (0, n_fft - len(y)))
    frames = sliding_window_view(y, n_fft)[::hop] * _window(n_fft)  # (frames, n_fft)
    spec = scipy.fft.rfft(frames, axis=1)
    spec[:, 1::2] *= -1  # a half-window rotation (n_fft is even): centre-referenced phase
    return spec.T


@lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=0.0,
                               fmax=sr / 2, dtype=np.float32)


@lru_cache(maxsize=8)
def _group_edges_hz(sr: int, n_mels: int, n_groups: int) -> np.ndarray:
    """Frequency edges (Hz) of `n_groups` groups of consecutive mel bands, shape (n_groups+1,)."""
    # band m of a Slaney filterbank spans points[m] .. points[m + 2]
    points = librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=sr / 2)
    per = n_mels // n_groups
    return np.array([points[g * per] for g in range(n_groups)] + [sr / 2])


def _db(power: np.ndarray, top_db: float) -> np.ndarray:
    """10 log10 of power, raised to `top_db` below its maximum (level-invariant)."""
    db = 10.0 * np.log10(np.maximum(power, _AMIN))
    return np.maximum(db, db.max(initial=-200.0) - top_db)


def _stats(x: np.ndarray) -> np.ndarray:
    """mean, std, p10, p50, p90 along the last axis; zeros where there is nothing."""
    if x.shape[-1] == 0:
        return np.zeros((*x.shape[:-1], len(_STATS)))
    pct = np.percentile(x, (10, 50, 90), axis=-1)  # (3, ...)
    return np.stack([x.mean(axis=-1), x.std(axis=-1), *pct], axis=-1)


def _ratio(num: float, den: float) -> float:
    """num / den, 0 when den is 0 (a weighted mean with no weight)."""
    return float(num / den) if den > 0 else 0.0


def _princarg(x: np.ndarray) -> np.ndarray:
    """Wrap angles to [-pi, pi] (rounding is several times faster than a float modulo)."""
    return x - np.float32(2 * np.pi) * np.round(x * np.float32(1 / (2 * np.pi)))


def _change_features(out: dict[str, float], prefix: str, mel_db: np.ndarray,
                     n_groups: int, ratio: bool) -> None:
    """|Δ dB| between consecutive frames, per group of mel bands and over all bands."""
    n_mels, n_frames = mel_db.shape
    d1 = np.abs(np.diff(mel_db, axis=1))  # (n_mels, frames - 1)
    grouped = d1.reshape(n_groups, n_mels // n_groups, -1).mean(axis=1)  # (groups, frames-1)
    for g, row in enumerate(_stats(grouped)):
        for s, v in zip(_STATS, row):
            out[f"{prefix}_g{g}_{s}"] = v
    for s, v in zip(_STATS, _stats(d1.mean(axis=0))):
        out[f"{prefix}_all_{s}"] = v
    if ratio:
        # A smeared signal changes little over one hop compared with four: lag-1 / lag-4.
        d4 = np.abs(mel_db[:, 4:] - mel_db[:, :-4]) if n_frames > 4 else np.zeros((n_mels, 0))
        m1 = grouped.mean(axis=1) if grouped.shape[1] else np.zeros(n_groups)
        m4 = (d4.reshape(n_groups, n_mels // n_groups, -1).mean(axis=(1, 2)) if d4.shape[1]
              else np.zeros(n_groups))
        for g in range(n_groups):
            out[f"{prefix}_g{g}_lag1_over_lag4"] = m1[g] / m4[g] if m4[g] > 1e-9 else 1.0


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def _feature_dict(y: np.ndarray, cfg: ArtifactFeatureConfig) -> dict[str, float]:
    """Every feature by name, in a fixed order, for mono audio at ``cfg.sample_rate``."""
    sr = cfg.sample_rate
    out: dict[str, float] = {}

    spec = _stft(y, cfg.n_fft, cfg.hop_length)  # (bins, frames)
    power = spec.real**2 + spec.imag**2
    freqs = np.arange(power.shape[0]) * sr / cfg.n_fft
    peak_power = float(power.max(initial=0.0))
    floor = peak_power * 10 ** (-cfg.top_db / 10) + _AMIN  # relative floor: level-invariant

    # 1. Frame-to-frame change of the log-mel spectrum.
    mel = _mel_basis(sr, cfg.n_fft, cfg.n_mels) @ power  # (n_mels, frames)
    _change_features(out, "dmel", _db(mel, cfg.top_db), cfg.n_band_groups, ratio=True)

    # 2. Spectral flatness (dB) per band, over frames within top_db of the loudest frame.
    frame_power = power.sum(axis=0)
    active = frame_power > frame_power.max(initial=0.0) * 10 ** (-cfg.top_db / 10)
    logp = np.log10(power[:, active] + floor)
    for lo, hi in _FLAT_BANDS_HZ:
        band = (freqs >= lo) & (freqs < (hi if hi is not None else np.inf))
        flat = 10 * (logp[band].mean(axis=0) - np.log10(power[band][:, active].mean(axis=0)
                                                         + floor))
        name = f"flat_{int(lo)}_{'nyq' if hi is None else int(hi)}"
        for s, v in zip(_STATS, _stats(flat)):
            out[f"{name}_{s}"] = v

    # 3. The same change statistics at fine time resolution.
    fine = _stft(y, cfg.fine_n_fft, cfg.fine_hop_length)
    fine_mel = _mel_basis(sr, cfg.fine_n_fft, cfg.fine_n_mels) @ (fine.real**2 + fine.imag**2)
    _change_features(out, "fine", _db(fine_mel, cfg.top_db), cfg.fine_band_groups,
                     ratio=False)

    # 4. High-band energy: clip-level ratio and its per-frame distribution (dB).
    total = power.sum() + floor
    for cut in cfg.high_band_hz:
        hi = power[freqs >= cut]
        out[f"hf_{int(cut)}_ratio_db"] = 10 * np.log10(hi.sum() / total + 1e-12)
        per_frame = 10 * np.log10((hi.sum(axis=0)[active] + floor) /
                                  (frame_power[active] + floor))
        for s, v in zip(_STATS[2:], _stats(per_frame)[2:]):
            out[f"hf_{int(cut)}_frame_{s}"] = v
    ltas = power.mean(axis=1) if power.shape[1] else np.zeros(power.shape[0])  # (bins,)
    ltas_db = _db(ltas, cfg.top_db)
    cum = np.cumsum(ltas)
    for q in (0.99, 0.999):
        k = int(np.searchsorted(cum, q * cum[-1])) if cum[-1] > 0 else len(cum) - 1
        out[f"edge_rolloff{q:g}"] = min(k, len(cum) - 1) / (len(cum) - 1)
    # steepest drop of the long-term spectrum over 1/32 of the band, above sr / 8
    step = max(1, len(ltas_db) // 32)
    upper = ltas_db[len(ltas_db) // 4:]
    out["edge_max_drop_db"] = float(np.max(upper[:-step] - upper[step:], initial=0.0))

    # 5. Phase coherence, magnitude-weighted per band of the mel groups.
    mag = np.sqrt(power)
    phase = np.angle(spec)  # float32
    advance = (2 * np.pi * cfg.hop_length / cfg.n_fft * np.arange(power.shape[0]))
    inst = _princarg(np.diff(phase, axis=1) - advance.astype(np.float32)[:, None])
    d2 = np.abs(_princarg(np.diff(inst, axis=1)))  # (bins, frames - 2): change of inst. freq.
    w2 = np.minimum(np.minimum(mag[:, :-2], mag[:, 1:-1]), mag[:, 2:])
    w2[w2**2 <= floor] = 0.0  # bins at the floor carry only noise phase
    gd = np.abs(_princarg(np.diff(phase, axis=0)))  # (bins - 1, frames): across frequency
    wg = np.minimum(mag[:-1], mag[1:])
    wg[wg**2 <= floor] = 0.0
    # per-bin sums over time first, then per band: one pass over the big arrays
    dw = d2 * w2
    if_sum = dw.sum(axis=1, dtype=np.float64)
    coh_sum = np.where(d2 < _COHERENT_RAD, w2, 0.0).sum(axis=1, dtype=np.float64)
    w2_sum = w2.sum(axis=1, dtype=np.float64)
    gd_sum = (gd * wg).sum(axis=1, dtype=np.float64)
    wg_sum = wg.sum(axis=1, dtype=np.float64)
    edges = _group_edges_hz(sr, cfg.n_mels, cfg.n_band_groups)
    bands = np.clip(np.searchsorted(edges, freqs, side="right") - 1, 0, cfg.n_band_groups - 1)
    for g in range(cfg.n_band_groups):
        rows = bands == g
        out[f"ifdev_g{g}_mean"] = _ratio(if_sum[rows].sum(), w2_sum[rows].sum())
        out[f"ifdev_g{g}_coherent"] = _ratio(coh_sum[rows].sum(), w2_sum[rows].sum())
        out[f"gdev_g{g}_mean"] = _ratio(gd_sum[rows[:-1]].sum(), wg_sum[rows[:-1]].sum())
    out["ifdev_all_mean"] = _ratio(if_sum.sum(), w2_sum.sum())
    out["ifdev_all_coherent"] = _ratio(coh_sum.sum(), w2_sum.sum())
    out["gdev_all_mean"] = _ratio(gd_sum.sum(), wg_sum.sum())
    # per-frame spread of the phase-coherence statistic: vocoder phase errors come and go
    w_frame = w2.sum(axis=0)
    per_frame = dw.sum(axis=0)[w_frame > 0] / w_frame[w_frame > 0]
    for s, v in zip(_STATS[1:], _stats(per_frame)[1:]):
        out[f"ifdev_frame_{s}"] = v

    # 6. Peakiness: narrow peaks of the long-term spectrum, and its mirror images.
    resid = ltas_db - scipy.ndimage.median_filter(ltas_db, size=15, mode="nearest")
    half = len(resid) // 2
    for name, part in (("low", resid[:half]), ("high", resid[half:])):
        out[f"peak_{name}_max_db"] = float(part.max(initial=0.0))
        out[f"peak_{name}_std_db"] = float(part.std()) if part.size else 0.0
        out[f"peak_{name}_p99_db"] = float(np.percentile(part, 99)) if part.size else 0.0
    hi_bins = power[freqs >= sr / 4][:, active]
    frame_peak = 10 * np.log10((hi_bins.max(axis=0, initial=0.0) + floor) /
                               (hi_bins.mean(axis=0) + floor)) if hi_bins.size else np.zeros(0)
    for s, v in zip(("mean", "p50", "p90"), _stats(frame_peak)[[0, 3, 4]]):
        out[f"peak_frame_high_{s}"] = v
    for fold in _MIRROR_FOLDS:
        centre = len(resid) * 2 // fold  # bin of sr / fold
        width = min(centre, len(resid) - 1 - centre, len(resid) // 8)
        a = resid[centre - width:centre][::-1]
        b = resid[centre + 1:centre + 1 + width]
        ok = width > 2 and a.std() > 1e-9 and b.std() > 1e-9
        out[f"mirror_sr_over_{fold}_corr"] = float(np.corrcoef(a, b)[0, 1]) if ok else 0.0
    return out


def feature_names(config: ArtifactFeatureConfig | None = None) -> list[str]:
    """Names of the features `artifact_features` returns, in order.

    Parameters
    ----------
    config : ArtifactFeatureConfig, optional

    Returns
    -------
    list of str
        E.g. ``"dmel_g3_p90"`` (90th percentile of the 4th band group's frame-to-frame log-mel
        change); see the module docstring for the families.
    """
    return list(_feature_names(config or ArtifactFeatureConfig()))


@lru_cache(maxsize=8)
def _feature_names(cfg: ArtifactFeatureConfig) -> tuple[str, ...]:
    # Read off the features of a short silence, so names and values cannot drift apart.
    return tuple(_feature_dict(np.zeros(cfg.n_fft, dtype=np.float32), cfg))


def artifact_features(
    y: np.ndarray, sr: int, config: ArtifactFeatureConfig | None = None
) -> np.ndarray:
    """The baseline's feature vector of one clip.

    Parameters
    ----------
    y : np.ndarray, shape (samples,)
        Mono audio (any length, including empty or silent), at rate `sr`.
    sr : int
        Its sample rate in Hz; resampled to ``config.sample_rate`` (soxr HQ) when different.
    config : ArtifactFeatureConfig, optional

    Returns
    -------
    np.ndarray, shape (len(feature_names(config)),), float64
        Always finite; unchanged (up to rounding) when `y` is scaled by a constant.

    Raises
    ------
    ValueError
        `y` is not one-dimensional, or holds NaN or Inf.

    Examples
    --------
    >>> y = np.random.default_rng(0).standard_normal(22_050).astype(np.float32)
    >>> artifact_features(y, 22_050).shape == (len(feature_names()),)
    True
    """
    cfg = config or ArtifactFeatureConfig()
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"expected mono audio of shape (samples,), got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("audio holds NaN or Inf samples")
    if sr != cfg.sample_rate and len(y):
        y = resample(y, sr, cfg.sample_rate)
    # Remove DC: a constant offset says nothing about the generator, and would dominate bin 0.
    y = y - y.mean() if len(y) else y
    values = np.fromiter(_feature_dict(y, cfg).values(), dtype=np.float64)
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)


def _file_features(path: str, config: ArtifactFeatureConfig) -> np.ndarray | tuple[str, str]:
    """Features of one file, or an unreadable file's ``(problem, fix)``.

    The error goes back as plain strings: an `AudioError` does not survive pickling out of a
    worker process (its constructor needs more than the message).
    """
    try:
        y, sr = read_audio(path, max_seconds=config.max_seconds)
    except AudioError as err:
        return err.problem, _fix(err)
    return artifact_features(y, sr, config)


def _fix(err: AudioError) -> str:
    """The fix part of an `AudioError`'s message (it keeps no attribute for it)."""
    rest = str(err)[len(f"{err.path}: {err.problem}"):]
    return rest[2:-1] if rest.startswith(" (") else ""


def features_for_files(
    paths: Sequence[str | os.PathLike],
    config: ArtifactFeatureConfig | None = None,
    n_jobs: int = 1,
    progress: bool = False,
) -> np.ndarray:
    """Feature matrix of audio files, one row per path, in order.

    Parameters
    ----------
    paths : sequence of str or path-like
        Files `helpers.audio.read_audio` accepts; the first ``config.max_seconds`` are used.
    config : ArtifactFeatureConfig, optional
    n_jobs : int
        Worker processes (``helpers.jit.process_pool``); 1 works in this process. The result
        does not depend on it.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    np.ndarray, shape (len(paths), len(feature_names(config))), float64

    Raises
    ------
    AudioError
        A file cannot be read (missing, empty, not decodable); the message names it.
    """
    cfg = config or ArtifactFeatureConfig()
    paths = [os.fspath(p) for p in paths]
    out = np.zeros((len(paths), len(feature_names(cfg))))
    n_jobs = max(1, min(int(n_jobs), len(paths)))
    with tqdm(total=len(paths), desc="artifact features", unit="file",
              disable=not progress) as bar:
        if n_jobs == 1:
            for i, path in enumerate(paths):
                out[i] = _raise_or_row(path, _file_features(path, cfg))
                bar.update()
        else:
            with jit.process_pool(n_jobs) as pool:
                futures = {pool.submit(_file_features, p, cfg): i for i, p in enumerate(paths)}
                try:
                    for future in as_completed(futures):
                        i = futures[future]
                        out[i] = _raise_or_row(paths[i], future.result())
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    return out


def _raise_or_row(path: str, row: np.ndarray | tuple[str, str]) -> np.ndarray:
    if isinstance(row, tuple):
        raise AudioError(path, *row)
    return row


# --------------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------------


class ArtifactFeatureBaseline:
    """Standardisation + logistic regression on `artifact_features`, P(AI) out.

    The inverse regularisation strength ``C`` is chosen on the training data alone: a
    stratified, grouped K-fold split (`sklearn.model_selection.StratifiedGroupKFold`, no
    shuffling) keeps every group (a track, or an excerpt and its "AI" twin) on one side of
    each fold, so near-duplicates cannot make a weakly regularised model look good. The
    ``C`` with the best mean validation ROC-AUC wins; ties (AUC equal to 4 decimals, common
    when the classes separate) go to the lower validation log loss. With fewer than 3 groups
    in either class there is nothing to cross-validate and `fallback_C` is used. Fitting is
    deterministic.

    Parameters
    ----------
    config : ArtifactFeatureConfig, optional
        The features the model expects; `fit` checks the width of ``X`` against it.
    n_features : int, optional
        The width of ``X`` when it holds other descriptors (e.g.
        `helpers.consistency.consistency_features`); it replaces the check against `config`.
    Cs : sequence of float
        Candidate values of ``C`` (larger: weaker regularisation).
    n_splits : int
        Folds of the grouped cross-validation (fewer when a class has fewer groups).
    fallback_C : float
        ``C`` used when cross-validation is not possible.
    max_iter : int
        Iterations of the lbfgs solver.

    Attributes
    ----------
    C_ : float
        The chosen ``C``.
    cv_scores_ : dict of float to float
        Mean validation ROC-AUC per candidate ``C`` (empty when `fallback_C` was used).
    pipeline_ : sklearn.pipeline.Pipeline
        The scaler and logistic regression fitted on all training rows with `C_`.

    Examples
    --------
    >>> model = ArtifactFeatureBaseline().fit(X_train, y_train, groups=track_ids)  # doctest: +SKIP
    >>> p_ai = model.predict_proba(X_test)  # doctest: +SKIP
    """

    def __init__(
        self,
        config: ArtifactFeatureConfig | None = None,
        n_features: int | None = None,
        Cs: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
        n_splits: int = 5,
        fallback_C: float = 1.0,
        max_iter: int = 5_000,
    ) -> None:
        self.config = config or ArtifactFeatureConfig()
        self.n_features = n_features
        self.Cs = tuple(float(c) for c in Cs)
        self.n_splits = n_splits
        self.fallback_C = fallback_C
        self.max_iter = max_iter
        if not self.Cs or min(self.Cs) <= 0 or fallback_C <= 0:
            raise ValueError(f"Cs and fallback_C must be positive, got {Cs}, {fallback_C}")
        if n_splits < 2:
            raise ValueError(f"n_splits must be >= 2, got {n_splits}")

    def _pipeline(self, c: float) -> Pipeline:
        return make_pipeline(StandardScaler(),
                             LogisticRegression(C=c, max_iter=self.max_iter))

    def fit(self, X: np.ndarray, y: np.ndarray,
            groups: Sequence | np.ndarray | None = None) -> ArtifactFeatureBaseline:
        """Choose ``C`` by grouped cross-validation, then fit on all rows.

        Parameters
        ----------
        X : np.ndarray, shape (n, len(feature_names(config)))
            Features from `artifact_features` / `features_for_files`.
        y : np.ndarray, shape (n,)
            1 for AI, 0 for human; both must occur.
        groups : sequence, shape (n,), optional
            Group of each row (track id); rows of one group never straddle a fold. ``None``
            treats every row as its own group.

        Returns
        -------
        ArtifactFeatureBaseline
            self.

        Raises
        ------
        ValueError
            Wrong shapes, non-finite features, labels other than 0/1, or one class only.
        """
        X = self._check_X(X)
        y = np.asarray(y)
        if y.shape != (len(X),):
            raise ValueError(f"y must have shape ({len(X)},), got {y.shape}")
        if not np.isin(y, (0, 1)).all() or len(np.unique(y)) < 2:
            raise ValueError("y must hold 0 (human) and 1 (AI), both present, got "
                             f"values {np.unique(y)[:5].tolist()}")
        y = y.astype(int)
        groups = np.arange(len(X)) if groups is None else np.asarray(groups)
        if groups.shape != (len(X),):
            raise ValueError(f"groups must have shape ({len(X)},), got {groups.shape}")
        per_class = min(len(np.unique(groups[y == c])) for c in (0, 1))
        self.cv_scores_: dict[float, float] = {}
        if per_class < 3:
            self.C_ = float(self.fallback_C)
        else:
            self.C_ = self._select_C(X, y, groups, min(self.n_splits, per_class))
        self.pipeline_ = self._pipeline(self.C_).fit(X, y)
        self.n_features_in_ = X.shape[1]
        return self

    def _select_C(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
                  n_splits: int) -> float:
        splits = [(tr, va) for tr, va in
                  StratifiedGroupKFold(n_splits=n_splits).split(X, y, groups)
                  if len(np.unique(y[va])) == 2 and len(np.unique(y[tr])) == 2]
        if not splits:
            return float(self.fallback_C)
        keys = {}
        for c in self.Cs:
            aucs, losses = [], []
            for tr, va in splits:
                p = self._pipeline(c).fit(X[tr], y[tr]).predict_proba(X[va])[:, 1]
                aucs.append(roc_auc_score(y[va], p))
                losses.append(log_loss(y[va], p, labels=(0, 1)))
            self.cv_scores_[c] = float(np.mean(aucs))
            keys[c] = (round(float(np.mean(aucs)), 4), -float(np.mean(losses)))
        return max(self.Cs, key=lambda c: keys[c])  # first (smallest listed) C wins exact ties

    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        width = self.n_features or len(feature_names(self.config))
        if X.ndim != 2 or X.shape[1] != width:
            what = ("n_features" if self.n_features else
                    "the features of artifact_features for this config")
            raise ValueError(f"X must have shape (n, {width}) ({what}), got {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("X holds NaN or Inf")
        return X

    def _check_fitted(self) -> None:
        if not hasattr(self, "pipeline_"):
            raise RuntimeError("ArtifactFeatureBaseline is not fitted: call fit(X, y) first")

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Log-odds of AI, shape (n,)."""
        self._check_fitted()
        return self.pipeline_.decision_function(self._check_X(X))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(AI) per row, shape (n,), float64 in [0, 1]."""
        self._check_fitted()
        return self.pipeline_.predict_proba(self._check_X(X))[:, 1]

    def predict(self, X: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """1 (AI) where P(AI) >= `threshold`, else 0, shape (n,)."""
        return (self.predict_proba(X) >= threshold).astype(int)


class HumanDeviationBaseline:
    """Artifact-agnostic: how far a clip's `artifact_features` lie from human music's.

    Fitted on human clips only, so no generator is ever seen: the score is the Mahalanobis
    distance of a clip's standardised features from the human training clips (Ledoit-Wolf
    shrunk covariance, stable with fewer clips than features). Any generator that disturbs
    these statistics moves its clips away, whichever family it is; how far depends on the
    family. The price: human music unlike the training music (another genre, a lo-fi
    recording) also scores high.

    Attributes
    ----------
    mean_, precision_ : np.ndarray
        Centre and shrunk inverse covariance of the standardised human features.
    """

    def fit(self, X: np.ndarray, y: np.ndarray | None = None,
            groups: np.ndarray | None = None) -> HumanDeviationBaseline:
        """Fit on the human rows of `X` (``y == 0``; all rows when `y` is None).

        Parameters
        ----------
        X : np.ndarray, shape (n, n_features)
        y : np.ndarray, shape (n,), optional
            1 for AI rows, which are ignored.
        groups : np.ndarray, optional
            Unused (for the same call as `ArtifactFeatureBaseline.fit`).

        Returns
        -------
        HumanDeviationBaseline
        """
        from sklearn.covariance import LedoitWolf

        X = np.asarray(X, np.float64)
        human = X if y is None else X[np.asarray(y) == 0]
        if len(human) < 2:
            raise ValueError(f"need at least 2 human rows to fit, got {len(human)}")
        self.scaler_ = StandardScaler().fit(human)
        z = self.scaler_.transform(human)
        cov = LedoitWolf().fit(z)
        self.mean_, self.precision_ = cov.location_, cov.precision_
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Mahalanobis distance to the human clips, ``(n,)`` (larger: less human)."""
        d = self.scaler_.transform(np.asarray(X, np.float64)) - self.mean_
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision_, d), 0.0))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """A monotone map of the distance to (0, 1): a ranking score, not a calibrated P(AI)."""
        return 1.0 - np.exp(-self.decision_function(X) / np.sqrt(self.mean_.size))
