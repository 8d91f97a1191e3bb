"""Is a clip like the ones a classifier run trained on? The out-of-distribution check.

A classifier's P(AI) means something only for music like its training clips. `OODCheck`
describes each clip by classic audio descriptors (`helpers.embed.FeatureEmbedder`'s timbre,
harmony, spectral-shape and rhythm statistics, without the loudness ones: the classifier
normalises every clip, so a quieter copy of a training clip is not a different kind of music)
and measures the Mahalanobis distance of a clip from the training clips' descriptors, with a
Ledoit-Wolf shrunk covariance (a few hundred clips cannot fill a 90-dimensional covariance).
The threshold is the 99th percentile of the same distance on the validation clips, which the
model never trained on, so about 1 % of new in-distribution clips exceed it.

Why descriptors and not the classifier's own embedding: on the demo run (``python -m helpers
demo``, seed 0) the pooled embedding, its token statistics and per-frame mel nearest neighbours
all placed 17 to 20 of 20 real game-soundtrack tracks *inside* the demo corpus's distribution
(a classifier trained to see artifacts discards what makes music sound different); these
descriptors flag about half of them and none of the 24 demo test clips.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf

from helpers.audio import read_audio
from helpers.embed import FEATURE_NAMES, LEGACY_FEATURE_PARAMS, FeatureEmbedder
from helpers.io import write_npy

log = logging.getLogger(__name__)

#: Descriptors of the training clips (a random sample when many), in the run folder.
OOD_FILE = "ood_reference.npy"

#: Descriptors left out: they measure level, which the classifier normalises away.
LEVEL_FEATURES = ("mfcc0_mean", "rms_mean", "rms_std")

_KEEP = np.array([i for i, name in enumerate(FEATURE_NAMES) if name not in LEVEL_FEATURES])


def clip_descriptors(y: np.ndarray, sr: int, seconds: float | None = None) -> np.ndarray:
    """The check's descriptors of one clip (its first `seconds`), shape ``(n_features,)``."""
    y = np.asarray(y, dtype=np.float32)
    if seconds is not None:
        y = y[: int(round(seconds * sr))]
    # the settings of the descriptors stored in runs (`OOD_FILE`), whatever the default
    embedder = FeatureEmbedder(max_seconds=None, **LEGACY_FEATURE_PARAMS)
    return embedder.embed_raw_audio(y, sr)[_KEEP]


def file_descriptors(paths: Sequence[str | os.PathLike], seconds: float | None
                     ) -> np.ndarray:
    """`clip_descriptors` of files ``(n_read, n_features)``; unreadable files are skipped."""
    rows = []
    for path in paths:
        try:
            y, sr = read_audio(path, max_seconds=seconds)
        except (ValueError, OSError) as err:  # AudioError is a ValueError
            log.warning("out-of-distribution reference: %s skipped (%s)", path, err)
            continue
        rows.append(clip_descriptors(y, sr, seconds))
    return np.stack(rows) if rows else np.zeros((0, len(_KEEP)), np.float32)


class OODCheck:
    """Mahalanobis distance of a clip's descriptors from the training clips'.

    Parameters
    ----------
    reference : np.ndarray, shape (n_reference, n_features)
        `clip_descriptors` of training clips; the mean, scale and shrunk covariance are fitted
        on it here (deterministically, so a loaded check equals the saved one).
    threshold : float
        Distances above it are out of distribution.
    seconds : float or None
        Length of the clip described (the run's front-end ``duration``).
    """

    def __init__(self, reference: np.ndarray, threshold: float,
                 seconds: float | None = None) -> None:
        self.reference = np.asarray(reference, dtype=np.float64)
        if len(self.reference) < 2:
            raise ValueError(f"need at least 2 reference clips, got {len(self.reference)}")
        self.threshold = float(threshold)
        self.seconds = seconds
        self._mean = self.reference.mean(axis=0)
        self._scale = self.reference.std(axis=0) + 1e-9  # descriptors differ in units
        self._cov = LedoitWolf().fit((self.reference - self._mean) / self._scale)

    @classmethod
    def fit(cls, train: np.ndarray, val: np.ndarray, seconds: float | None = None,
            quantile: float = 0.99, max_reference: int = 1024, seed: int = 0
            ) -> tuple[OODCheck, dict[str, Any]]:
        """Fit on training descriptors; set the threshold at a quantile of validation ones.

        Returns
        -------
        check : OODCheck
        info : dict
            For ``run.json``: ``method``, ``features``, ``threshold``, ``quantile``,
            ``n_reference``, ``n_val``, ``val_flagged`` (share of validation clips above the
            threshold: optimistic, it was chosen on them), ``seconds`` and ``file``.
        """
        train = np.asarray(train, dtype=np.float64)
        if len(train) > max_reference:  # its cost grows with the reference; a sample will do
            keep = np.random.default_rng(seed).choice(len(train), max_reference, replace=False)
            train = train[np.sort(keep)]
        check = cls(train, threshold=np.inf, seconds=seconds)
        val_distance = check.distance(val)
        check.threshold = float(np.quantile(val_distance, quantile))
        info = {"method": "mahalanobis-ledoit-wolf", "features": "FeatureEmbedder descriptors "
                f"without {', '.join(LEVEL_FEATURES)}", "threshold": check.threshold,
                "quantile": quantile, "n_reference": len(train), "n_val": len(val_distance),
                "val_flagged": float(np.mean(val_distance > check.threshold)),
                "seconds": seconds, "file": OOD_FILE}
        return check, info

    def distance(self, descriptors: np.ndarray) -> np.ndarray:
        """Distances ``(n,)`` of descriptors ``(n, n_features)`` (or one ``(n_features,)``)."""
        z = (np.atleast_2d(descriptors) - self._mean) / self._scale - self._cov.location_
        return np.sqrt(np.einsum("ij,jk,ik->i", z, self._cov.precision_, z))

    def audio_distance(self, y: np.ndarray, sr: int) -> float:
        """Distance of the first `seconds` of decoded mono audio."""
        return float(self.distance(clip_descriptors(y, sr, self.seconds))[0])

    def save(self, run_dir: str | os.PathLike) -> Path:
        """Write the reference descriptors into the run folder (the rest is in ``run.json``)."""
        return write_npy(Path(run_dir) / OOD_FILE, self.reference)

    @classmethod
    def load(cls, run_dir: str | os.PathLike, run_info: dict[str, Any]) -> OODCheck | None:
        """The run's check, or None for a run trained before it was recorded."""
        info = run_info.get("ood")
        if not info or not (Path(run_dir) / info["file"]).exists():
            return None
        reference = np.load(Path(run_dir) / info["file"], allow_pickle=False)
        return cls(reference, info["threshold"], info.get("seconds"))
