"""How much a clip changes when it is degraded once more: features any lossy generator moves.

A generator's output has already lost what a lossy process removes (detail above a codec's
band, phase coherence between frames, sharp transients), so degrading it again changes it
less than it changes a recording. This is the principle of double-compression forensics, and
of reconstruction-error detectors such as AEROBLADE (Ricker et al., CVPR 2024). Because each
clip is compared with *itself*, a composer's timbre, mix and genre largely cancel: the
human-deviation baseline (`helpers.baselines.HumanDeviationBaseline`) lacks exactly this,
and flags a third or more of unseen composers' music.

The probes are fixed and generic, not the project's "AI" families:

* ``mp3_64``: an MP3 round trip at 64 kbps (a perceptual codec, not the Opus/SILK coder
  of the ``opus_lowrate`` family);
* ``phase_gl``: the clip's STFT magnitude re-phased by Griffin-Lim (no mel projection, no
  decimation, no upsampling, unlike the ``griffin_lim`` family): how far the recording's
  own phase is from one that phase retrieval finds.

Each probe contributes the change of the artifact features (`helpers.baselines`) and the
log-spectral distance between the clip and its probe in band groups.

Public API
----------
`ConsistencyConfig`, `consistency_names`, `consistency_features`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import librosa
import numpy as np

from helpers.audio import codec_round_trip, resample
from helpers.baselines import ArtifactFeatureConfig, artifact_features, feature_names

__all__ = ["PROBES", "ConsistencyConfig", "consistency_features", "consistency_names"]

#: The probes, each a lossy process applied to the clip (see the module docstring).
PROBES = ("mp3_64", "phase_gl")


@dataclass(frozen=True)
class ConsistencyConfig:
    """Which probes, and how they and the distances are computed.

    Parameters
    ----------
    probes : tuple of str
        Names from `PROBES`.
    mp3_kbps : int
        Bitrate of the ``mp3_64`` probe's round trip.
    gl_n_fft, gl_hop_length, gl_iterations : int
        STFT and iterations of the ``phase_gl`` probe (at ``features.sample_rate``).
    n_band_groups : int
        Groups of the log-spectral distance (equal widths on the mel scale).
    features : ArtifactFeatureConfig
        The artifact features whose change is measured; its rate is the analysis rate.
    """

    probes: tuple[str, ...] = PROBES
    mp3_kbps: int = 64
    gl_n_fft: int = 1024
    gl_hop_length: int = 256
    gl_iterations: int = 16
    n_band_groups: int = 8
    features: ArtifactFeatureConfig = field(default_factory=ArtifactFeatureConfig)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.probes) - set(PROBES))
        if unknown or not self.probes:
            raise ValueError(f"probes must be a non-empty subset of {list(PROBES)}, "
                             f"got {list(self.probes)}")
        if not 1 <= self.gl_hop_length <= self.gl_n_fft or self.gl_iterations < 1:
            raise ValueError("need 1 <= gl_hop_length <= gl_n_fft and gl_iterations >= 1")


def consistency_names(config: ConsistencyConfig | None = None) -> list[str]:
    """Names of `consistency_features`' entries, in order."""
    cfg = config or ConsistencyConfig()
    base = feature_names(cfg.features)
    names = []
    for probe in cfg.probes:
        names += [f"{probe}/d_{n}" for n in base]
        names += [f"{probe}/lsd_g{g}" for g in range(cfg.n_band_groups)]
    return names


def _probe(name: str, y: np.ndarray, sr: int, cfg: ConsistencyConfig) -> np.ndarray:
    if name == "mp3_64":
        return codec_round_trip(y, sr, cfg.mp3_kbps)
    magnitude = np.abs(librosa.stft(y, n_fft=cfg.gl_n_fft, hop_length=cfg.gl_hop_length))
    # A fixed random start: the probe must be deterministic for a clip's features to be.
    out = librosa.griffinlim(magnitude, n_iter=cfg.gl_iterations, hop_length=cfg.gl_hop_length,
                             n_fft=cfg.gl_n_fft, init="random", random_state=0, length=len(y))
    return out.astype(np.float32)


def _mel(y: np.ndarray, sr: int, cfg: ConsistencyConfig) -> np.ndarray:
    fc = cfg.features
    return librosa.feature.melspectrogram(y=y, sr=sr, n_fft=fc.n_fft, hop_length=fc.hop_length,
                                          n_mels=fc.n_mels)


def _band_distance(mel_y: np.ndarray, mel_z: np.ndarray, cfg: ConsistencyConfig) -> np.ndarray:
    """Mean |dB difference| of two mel spectra (the clip's, `mel_y`, and its probe's), per
    band group; the floor is 80 dB below the clip's loudest bin, so level and near-silent
    bins do not count."""
    floor = max(float(mel_y.max()), 1e-20) * 10 ** (-cfg.features.top_db / 10)
    diff = np.abs(10 * np.log10(np.maximum(mel_y, floor))
                  - 10 * np.log10(np.maximum(mel_z, floor)))  # (n_mels, frames)
    groups = np.array_split(diff, cfg.n_band_groups, axis=0)
    return np.array([g.mean() for g in groups])


def consistency_features(y: np.ndarray, sr: int, config: ConsistencyConfig | None = None
                         ) -> np.ndarray:
    """How a clip's features change under each probe.

    Parameters
    ----------
    y : np.ndarray, shape (samples,)
        Mono audio at rate `sr` (resampled to the analysis rate first).
    sr : int
    config : ConsistencyConfig, optional

    Returns
    -------
    np.ndarray, shape (len(consistency_names(config)),), float64
        Per probe: artifact features of the probed clip minus the clip's own, then the
        band-group log-spectral distances. Finite; deterministic.

    Raises
    ------
    ValueError
        `y` is not one-dimensional, holds NaN or Inf, or is shorter than one STFT window.

    Examples
    --------
    >>> y = np.random.default_rng(0).standard_normal(22_050).astype(np.float32) * 0.1
    >>> consistency_features(y, 22_050).shape == (len(consistency_names()),)
    True
    """
    cfg = config or ConsistencyConfig()
    y = np.asarray(y, np.float32)
    if y.ndim != 1:
        raise ValueError(f"expected mono audio of shape (samples,), got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("audio holds NaN or Inf samples")
    rate = cfg.features.sample_rate
    if sr != rate:
        y = resample(y, sr, rate)
    if len(y) < cfg.gl_n_fft:
        raise ValueError(f"need at least {cfg.gl_n_fft} samples at {rate} Hz, got {len(y)}")
    own, own_mel = artifact_features(y, rate, cfg.features), _mel(y, rate, cfg)
    parts = []
    for name in cfg.probes:
        z = _probe(name, y, rate, cfg)
        parts += [artifact_features(z, rate, cfg.features) - own,
                  _band_distance(own_mel, _mel(z, rate, cfg), cfg)]
    return np.nan_to_num(np.concatenate(parts), nan=0.0, posinf=0.0, neginf=0.0)
