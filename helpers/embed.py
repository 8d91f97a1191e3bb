"""Track embedders: audio file -> one L2-normalised vector, behind one small interface.

Every embedder follows scikit-learn's conventions: its configuration is set in ``__init__``,
work happens in methods, and nothing is global. `Embedder.config` returns everything that
defines the vector space (name, parameters, dimension and any fitted state); an index stores
it, and refuses queries from an embedder whose config differs (`helpers.index`).

Three embedders:

* ``openl3`` (`OpenL3Embedder`): OpenL3 mel256/music/512 frame embeddings every 0.5 s,
  averaged over the clip and L2-normalised: the usual pretrained music baseline, at the
  smaller of its two published sizes (the original package, and HEAR's OpenL3 wrappers,
  default to 6144-d). Needs the official weights (`helpers.openl3.weights_available`).
* ``features`` (`FeatureEmbedder`): classic librosa descriptors (timbre, harmony, spectral
  shape, loudness, rhythm, their spread and movement), standardised per dimension and
  whitened by how they vary inside a track, both *fitted on the catalog*, then
  L2-normalised. Works offline, no weights.
* ``classifier`` (`ClassifierEmbedder`): the pooled vector of a trained Model 1 run.

One `AudioPolicy` decides which seconds of a song its vector describes (the first 30 s by
default, or the centre 30 s), for the catalog and for queries alike: `Embedder.embed_file`
and `Embedder.embed_audio` both apply it, so a catalog file queried as audio gets its own
catalog vector back. `Embedder.embed_windows` (the CLI's ``recommend --windows``) embeds each
window of the whole song under the same policy and averages the window vectors. The policy is
part of `Embedder.config`, hence of an index's ``meta.json``.

Vectors are computed in two steps so that embedders with fitted state stay consistent:
``embed_raw_*`` gives the un-normalised descriptor, `Embedder.transform` maps raw vectors
to the final space (standardise if fitted, then L2-normalise). An index builder stores raw
vectors while it works, calls `Embedder.fit` once on the whole catalog, and keeps the fitted
state in the index metadata so that queries are transformed with the catalog's statistics.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import torch
from tqdm import tqdm

from helpers.audio import fit_length, load_clip, mel_db, read_audio, resample
from helpers.config import FrontEndConfig
from helpers.io import json_default
from helpers.openl3 import (
    get_audio_embedding,
    load_audio_embedding_model,
    resolve_precision,
    weights_available,
    weights_command,
    weights_path,
)
from helpers.run import load_run

log = logging.getLogger(__name__)

EMBEDDERS = ("openl3", "features", "classifier")

# Errors that mean "this file cannot be embedded" (AudioError is a ValueError); anything else
# is a bug and should stop the run.
_FILE_ERRORS = (ValueError, OSError, RuntimeError, EOFError)


POSITIONS = ("start", "centre")
_SILENT_PEAK = 1e-4  # a window this quiet is a pause between tracks, not music


@dataclass(frozen=True)
class AudioPolicy:
    """Which audio of a song its vector describes: one policy for the catalog and queries.

    Parameters
    ----------
    seconds : float or None
        Length of the excerpt; ``None`` is the whole file. Shorter files are used whole.
    position : {"start", "centre"}
        Where the excerpt lies: from the first sample, or centred on the song (which skips
        intros, at the cost of decoding the whole file).
    window_hop : float
        Windows mode: hop between windows, as a fraction of `seconds`.

    Notes
    -----
    Windows mode (`Embedder.embed_windows`) cuts the whole song into windows of `seconds`
    (the last one ends at the song's end), embeds each one as a catalog excerpt is embedded,
    leaves out silent windows (unless all are), and returns the mean of the unit window
    vectors, re-normalised: the same kind of vector as the catalog's, never a whole-song one.
    """

    seconds: float | None = 30.0
    position: str = "start"
    window_hop: float = 0.5

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"seconds must be > 0 or None, got {self.seconds!r}")
        if not 0 < self.window_hop <= 1:
            raise ValueError(f"window_hop must be in (0, 1], got {self.window_hop!r}")

    @property
    def read_seconds(self) -> float | None:
        """Seconds to decode from the start of a file to apply the policy (None: all)."""
        return self.seconds if self.position == "start" else None

    def describe(self) -> str:
        """E.g. ``"first 30 s"``, ``"centre 30 s"``, ``"whole file"``."""
        if self.seconds is None:
            return "whole file"
        return f"{'first' if self.position == 'start' else 'centre'} {self.seconds:g} s"

    def excerpt(self, y: np.ndarray, sr: int) -> np.ndarray:
        """The policy's excerpt of a mono signal ``(samples,)`` (a view, not a copy)."""
        if self.seconds is None:
            return y
        n = int(round(self.seconds * sr))
        if len(y) <= n:
            return y
        start = 0 if self.position == "start" else (len(y) - n) // 2
        return y[start:start + n]

    def window_starts(self, n_samples: int, sr: int) -> list[int]:
        """First samples of windows mode's windows over a signal of `n_samples`."""
        if self.seconds is None:
            return [0]
        width = int(round(self.seconds * sr))
        hop = max(1, int(round(self.window_hop * width)))
        starts = list(range(0, max(n_samples - width, 0) + 1, hop))
        if n_samples > width and starts[-1] + width < n_samples:
            starts.append(n_samples - width)
        return starts

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "windows": "mean of unit window vectors, re-normalised",
                "description": self.describe()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AudioPolicy:
        return cls(**{k: data[k] for k in ("seconds", "position", "window_hop") if k in data})


def legacy_policy(config: dict[str, Any]) -> dict[str, Any]:
    """The policy an embedder config stored before policies existed was built with.

    The catalog was always the first ``max_seconds`` of each file (30 s, or a classifier
    run's clip length); the record says so.
    """
    params = config.get("params") or {}
    seconds = params.get("max_seconds", (params.get("frontend") or {}).get("duration", 30.0))
    return {**AudioPolicy(seconds=seconds).to_dict(), "frame_pooling": "unrecorded",
            "legacy": True}


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Scale each row (or a single vector) to unit L2 norm; all-zero rows stay zero.

    Parameters
    ----------
    x : np.ndarray, shape (n, dim) or (dim,)

    Returns
    -------
    np.ndarray, same shape, float32
    """
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, eps)).astype(np.float32, copy=False)


def canonical_config(data: Any) -> Any:
    """`data` after a JSON round trip, so configs compare equal before and after being stored.

    Tuples become lists, numpy values plain numbers and dict keys strings; an index compares
    the config it stored with an embedder's `Embedder.config` in this form.
    """
    return json.loads(json.dumps(data, sort_keys=True, default=json_default))


def file_fingerprint(path: str | os.PathLike) -> dict[str, str]:
    """Name and SHA-256 of a file (weights identity that survives moving the file)."""
    path = Path(path).expanduser()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"file": path.name, "sha256": digest.hexdigest()}


class Embedder:
    """Base class: audio -> one L2-normalised float32 vector of size `dim`.

    Subclasses set `name` and implement `embed_raw_audio` and `params`; embedders with fitted
    state (`needs_fit`) also override `fit`, `transform`, `get_state` and `set_state`.

    Attributes
    ----------
    name : str
        Registry name (``make_embedder(name)``).
    dim : int
        Output dimension.
    max_seconds : float or None
        Excerpt length (`AudioPolicy.seconds`).
    position : {"start", "centre"}
        Where the excerpt lies (`AudioPolicy.position`).
    needs_fit : bool
        Whether `fit` must see the catalog before `transform` gives final vectors.
    """

    name: str = "base"
    dim: int = 0
    max_seconds: float | None = 30.0
    position: str = "start"
    needs_fit: bool = False
    frame_pooling: str = "unspecified"  # how frame-level analysis becomes one vector

    # -- to implement ------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Constructor parameters that change the vectors (not device or batch size)."""
        raise NotImplementedError

    def embed_raw_audio(self, y: np.ndarray, sr: int) -> np.ndarray:
        """Raw descriptor of a mono signal, shape (dim,), before `transform`."""
        raise NotImplementedError

    @property
    def raw_dim(self) -> int:
        """Width of a raw vector (`embed_raw_audio`); `dim` unless the embedder says more."""
        return self.dim

    # -- fitted state (no-ops for embedders without state) ----------------------------------
    @property
    def is_fitted(self) -> bool:
        return not self.needs_fit or self.get_state() is not None

    def fit(self, raw: np.ndarray) -> Embedder:
        """Fit any state on the raw catalog vectors ``(n, dim)``; returns self."""
        return self

    def get_state(self) -> dict[str, Any] | None:
        """Fitted state as plain JSON values, or None."""
        return None

    def set_state(self, state: dict[str, Any] | None) -> Embedder:
        """Restore state from `get_state`; returns self."""
        if state is not None:
            raise ValueError(f"embedder {self.name!r} has no fitted state, got {sorted(state)}")
        return self

    def with_state(self, state: dict[str, Any] | None) -> Embedder:
        """A shallow copy carrying `state` (the original is left unchanged)."""
        return copy.copy(self).set_state(state)

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Raw vectors ``(n, dim)`` -> final vectors ``(n, dim)``, float32, unit norm."""
        return l2_normalise(raw)

    # -- the common surface -----------------------------------------------------------------
    @property
    def policy(self) -> AudioPolicy:
        """The audio this embedder describes, for catalog files and queries alike."""
        return AudioPolicy(seconds=self.max_seconds, position=self.position)

    def config(self) -> dict[str, Any]:
        """Everything that defines the vector space: name, dim, params, fitted state, policy.

        Two embedders give comparable vectors exactly when their configs are equal.
        """
        policy = {**self.policy.to_dict(), "frame_pooling": self.frame_pooling}
        return canonical_config({"name": self.name, "dim": int(self.dim), "params": self.params(),
                                 "state": self.get_state(), "policy": policy})

    def prepare(self) -> Embedder:
        """Load what embedding needs (model weights) now, so a missing model fails once.

        Called before the first file of a batch; a no-op for embedders without a model.
        """
        return self

    def for_queries(self) -> Embedder:
        """The embedder to embed queries with: the same vector space, maybe a cheaper setting.

        Only `OpenL3Embedder` has one (its query hop); the others return themselves.
        """
        return self

    def embed_raw_file(self, path: str | os.PathLike) -> np.ndarray:
        """Raw descriptor of a file's `policy` excerpt, shape (dim,), float32.

        Raises
        ------
        helpers.audio.AudioError
            The file cannot be read (the message names it).
        """
        policy = self.policy
        y, sr = read_audio(path, max_seconds=policy.read_seconds)
        return np.asarray(self.embed_raw_audio(policy.excerpt(y, sr), sr), dtype=np.float32)

    def embed_audio(self, y: np.ndarray, sr: int) -> np.ndarray:
        """Embed the `policy` excerpt of a mono signal ``(samples,)`` at `sr` Hz.

        Returns
        -------
        np.ndarray, shape (dim,), float32, unit norm
            For a catalog file's audio, its catalog vector.
        """
        self._require_fitted()
        y = self.policy.excerpt(np.asarray(y, np.float32), sr)
        return self.transform(self.embed_raw_audio(y, sr)[None])[0]

    def embed_windows(self, y: np.ndarray, sr: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Embed a whole song as the mean of its windows' vectors (see `AudioPolicy`).

        Parameters
        ----------
        y : np.ndarray, shape (samples,)
            The whole song, mono.
        sr : int

        Returns
        -------
        vector : np.ndarray, shape (dim,), float32, unit norm
        info : dict
            ``n_windows``, ``n_silent`` (left out), ``starts`` (s), ``policy`` (`describe`).
        """
        self._require_fitted()
        policy = self.policy
        y = np.asarray(y, np.float32)
        width = len(y) if policy.seconds is None else int(round(policy.seconds * sr))
        starts = policy.window_starts(len(y), sr)
        loud = [s for s in starts if np.abs(y[s:s + width]).max(initial=0.0) > _SILENT_PEAK]
        used = loud or starts  # all silent: embed the silence rather than nothing
        raw = np.stack([self.embed_raw_audio(y[s:s + width], sr) for s in used])
        vector = l2_normalise(self.transform(raw).mean(axis=0))  # (dim,)
        info = {"n_windows": len(starts), "n_silent": len(starts) - len(loud),
                "starts": [s / sr for s in used], "policy": policy.describe(),
                "combine": "mean of window vectors, re-normalised"}
        return vector, info

    def embed_file(self, path: str | os.PathLike) -> np.ndarray:
        """Embed a file's `policy` excerpt -> ``(dim,)`` float32, unit norm."""
        self._require_fitted()
        return self.transform(self.embed_raw_file(path)[None])[0]

    def embed_files(
        self, paths: Iterable[str | os.PathLike], progress: bool = True, raw: bool = False
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
        """Embed many files, logging and skipping the ones that cannot be read.

        Parameters
        ----------
        paths : iterable of path
        progress : bool
            Show a tqdm progress bar.
        raw : bool
            Return raw descriptors (before `transform`), e.g. to `fit` on them.

        Returns
        -------
        vectors : np.ndarray, shape (n_ok, dim), float32
            One row per readable file, in input order.
        ok : np.ndarray, shape (n_paths,), bool
            Which input paths gave a row of `vectors`.
        errors : list of (path, message)
        """
        if not raw:
            self._require_fitted()
        paths = [os.fspath(p) for p in paths]
        if paths:
            self.prepare()
        rows, ok, errors = [], np.zeros(len(paths), dtype=bool), []
        for i, path in enumerate(tqdm(paths, desc=f"embed ({self.name})", disable=not progress,
                                      unit="file")):
            try:
                rows.append(self.embed_raw_file(path))
                ok[i] = True
            except _FILE_ERRORS as err:
                log.warning("skipping %s: %s", path, err)
                errors.append((path, str(err)))
        vectors = np.stack(rows) if rows else np.zeros((0, self.raw_dim), dtype=np.float32)
        return (vectors if raw else self.transform(vectors)), ok, errors

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError(
                f"embedder {self.name!r} is not fitted: its standardisation is fitted on a "
                "catalog. Use the index's embedder (CatalogIndex.embedder()) or call fit() first"
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


# ------------------------------------------------------------------------------------------
# OpenL3
# ------------------------------------------------------------------------------------------


#: Seconds between a query's OpenL3 windows, chosen by `benchmarks/openl3_query_budget.py`.
DEFAULT_QUERY_HOP = 1.5


class OpenL3Embedder(Embedder):
    """OpenL3 track embedding: mean of frame embeddings, L2-normalised.

    The defaults (mel256, music, 512, hop 0.5 s, mean over frames) are a common pretrained
    baseline for music similarity; 512 is the smaller of OpenL3's two published sizes.

    Parameters
    ----------
    input_repr : {"mel256", "mel128", "linear"}
        Input representation of the network.
    content_type : {"music", "env"}
        Training content of the weights; "music" for music similarity.
    embedding_size : {512, 6144}
        Frame embedding size (= track vector size).
    hop_size : float
        Seconds between the 1 s analysis windows that are averaged, for catalog files.
    query_hop_size : float, optional
        The same for queries (`for_queries`); ``None``: `hop_size`. The default, 1.5 s, is
        the smallest hop at which one 30 s query fits the `analyze` budget in float32 on a
        2-core CPU (1.8 s; 0.6 s in bf16) with a track vector within cosine 0.9996 of hop
        0.1's (`benchmarks/results/openl3_query_budget.json`, real soundtracks, random
        weights). Both hops are stored in the index, so every query of one index agrees.
    precision : {"auto", "fp32", "bf16", "fp16"}
        Precision of the conv stack (`helpers.openl3.resolve_precision`): ``"auto"`` takes
        bfloat16 on CPUs with AMX/AVX512-BF16 and on recent GPUs when it stays within 1e-2
        relative L2 of float32 on a check clip, else float32. Vectors of the two precisions
        agree to that tolerance, so an index built on one machine serves queries on another.
    weights : path, optional
        A Keras ``.h5`` weights file; ``None`` uses the cached official weights (loaded with
        ``download=False``: nothing is fetched by this class).
    max_seconds : float or None
        Excerpt length in seconds (`AudioPolicy`); ``None``: the whole file.
    position : {"start", "centre"}
        Where the excerpt lies in the song (`AudioPolicy`).
    device : str, optional
        Torch device; ``None`` picks CUDA when available.
    cache_dir : path, optional
        Weights folder for ``weights=None`` (see `helpers.openl3.weights_cache_dir`).
    batch_size : int, optional
        Windows per forward pass (speed only); ``None``: 2 on a CPU, 32 on a GPU.
    """

    name = "openl3"
    frame_pooling = "mean of 1 s frame embeddings"

    def __init__(
        self,
        input_repr: str = "mel256",
        content_type: str = "music",
        embedding_size: int = 512,
        hop_size: float = 0.5,
        weights: str | os.PathLike | None = None,
        max_seconds: float | None = 30.0,
        device: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int | None = None,
        position: str = "start",
        query_hop_size: float | None = DEFAULT_QUERY_HOP,
        precision: str = "auto",
    ) -> None:
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto|fp32|bf16|fp16, got {precision!r}")
        self.input_repr = input_repr
        self.content_type = content_type
        self.embedding_size = int(embedding_size)
        self.hop_size = float(hop_size)
        self.query_hop_size = self.hop_size if query_hop_size is None else float(query_hop_size)
        self.precision = precision
        self._active_hop = self.hop_size  # the catalog's, until for_queries()
        self.weights = weights
        self.max_seconds = max_seconds
        self.position = AudioPolicy(max_seconds, position).position  # validated
        self.device = device
        self.cache_dir = cache_dir
        self.batch_size = None if batch_size is None else int(batch_size)
        self.dim = self.embedding_size
        self._model = None
        self._weights_id: dict[str, str] | None = None

    def params(self) -> dict[str, Any]:
        if self.weights is not None and self._weights_id is None:
            self._weights_id = file_fingerprint(self.weights)
        return {
            "input_repr": self.input_repr,
            "content_type": self.content_type,
            "embedding_size": self.embedding_size,
            "hop_size": self.hop_size,
            "query_hop_size": self.query_hop_size,
            "precision": self.precision,
            # official weights are identified by name; others by content, not by path
            "weights": "official" if self.weights is None else self._weights_id,
            "max_seconds": self.max_seconds,
            "pooling": "mean",
        }

    def prepare(self) -> OpenL3Embedder:
        """Load the network now.

        Raises
        ------
        helpers.openl3.WeightsMissingError
            The weights are not installed; the message gives the command that installs them.
        """
        _ = self.model
        return self

    @property
    def model(self):
        """The network, loaded on first use (weights are never downloaded here)."""
        if self._model is None:
            self._model = load_audio_embedding_model(
                self.input_repr, self.content_type, self.embedding_size, weights=self.weights,
                device=self.device, cache_dir=self.cache_dir, download=False)
        return self._model

    def for_queries(self) -> OpenL3Embedder:
        """This embedder with the query hop (same config, same vector space)."""
        clone = copy.copy(self)
        clone._active_hop = self.query_hop_size
        return clone

    @property
    def precision_choice(self) -> dict[str, Any]:
        """What `precision` resolved to on this machine, and the measured drift."""
        return resolve_precision(self.model, self.precision).to_dict()

    def embed_raw_audio(self, y: np.ndarray, sr: int) -> np.ndarray:
        dtype = resolve_precision(self.model, self.precision).dtype
        frames, _ = get_audio_embedding(y, sr, self.model, hop_size=self._active_hop,
                                        center=True, batch_size=self.batch_size,
                                        dtype=dtype)  # (n_frames, dim)
        return frames.mean(axis=0).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Classic descriptors
# ------------------------------------------------------------------------------------------

#: Names of the FeatureEmbedder dimensions, in order.
FEATURE_NAMES: tuple[str, ...] = (
    *(f"mfcc{i}_{s}" for s in ("mean", "std") for i in range(20)),
    *(f"chroma{i}_{s}" for s in ("mean", "std") for i in range(12)),
    *(f"contrast{i}_{s}" for s in ("mean", "std") for i in range(7)),
    *(f"{f}_{s}" for f in ("centroid", "bandwidth", "rolloff", "zcr", "rms")
      for s in ("mean", "std")),
    "tempo_log2", "onset_mean", "onset_std", "onset_max", "onset_rate",
)


class Standardizer:
    """Per-dimension standardisation ``(x - mean) / std`` fitted on a catalog.

    Dimensions that are constant on the catalog (std ~ 0) keep a scale of 1, so they add
    nothing rather than blowing up.
    """

    def __init__(self, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> None:
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)

    def fit(self, x: np.ndarray) -> Standardizer:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"need at least 2 vectors (n, dim) to fit, got shape {x.shape}")
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.std = np.where(std > 1e-8 * (1 + np.abs(self.mean)), std, 1.0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[float]]) -> Standardizer:
        return cls(np.asarray(data["mean"]), np.asarray(data["std"]))


#: Descriptor blocks of `FeatureEmbedder`, in raw-vector order, with their sizes. ``v1`` is
#: the 93 classic descriptors (`FEATURE_NAMES`); the others add what mean/std pooling of those
#: descriptors misses (see `FeatureEmbedder`).
FEATURE2_BLOCKS: dict[str, int] = {"v1": len(FEATURE_NAMES), "pct": 3 * 39, "dmfcc": 40,
                                   "mel": 2 * 32, "tempogram": 16}

#: `FeatureEmbedder`'s settings before version 2 of its defaults (22.05 kHz analysis, the 93
#: ``v1`` descriptors, no whitening). `helpers.ood` keeps them, so the descriptors stored in
#: older runs stay comparable; an index whose config has no ``whitening`` was built with them.
LEGACY_FEATURE_PARAMS: dict[str, Any] = {"sr": 22050, "n_fft": 2048, "hop_length": 512,
                                         "blocks": ("v1",), "whitening": None}


class FeatureEmbedder(Embedder):
    """Classic MIR descriptors, standardised and whitened on the catalog, L2-normalised.

    Raw descriptors, per block of `FEATURE2_BLOCKS` (all of them by default):

    * ``v1`` (93, names in `FEATURE_NAMES`): mean and standard deviation over frames of 20
      MFCCs (timbre), 12 chroma bins (harmony), 7 spectral-contrast bands, spectral centroid,
      bandwidth, roll-off, zero-crossing rate and RMS; log2 tempo and onset-strength
      mean/std/max/rate (rhythm);
    * ``pct``: 10th/50th/90th percentiles over frames of MFCC-20, chroma and contrast (a
      track's typical and extreme timbre, which the mean mixes up with its spread);
    * ``dmfcc``: mean absolute value and std of the MFCC deltas (how fast timbre moves);
    * ``mel``: mean and std of 32 log-mel band energies (the spectral envelope);
    * ``tempogram``: the autocorrelation tempogram averaged over frames, pooled in 16
      log-spaced lag bands (the rhythm pattern, beyond a single tempo).

    `fit` learns a per-dimension mean/std on the catalog (the scales differ by orders of
    magnitude: Hz vs. unitless).

    **Within-track whitening** (`whitening`, on by default): the raw vector also carries the
    same descriptors of `segments` equal parts of the excerpt. `fit` estimates from them how
    descriptors vary *inside* a track (the within-class covariance of speaker verification's
    WCCN, with tracks as classes) and `transform` whitens by it, shrunk towards the identity
    by `whitening` times its mean variance. Directions in which one song wanders about (a
    louder chorus, a break) then count less than the ones in which songs differ, so another
    excerpt of a catalog song, or an AI rendition of it, lands nearer to it. It needs no
    labels, only the catalog's own audio, and costs one extra pooling per segment.

    The defaults (analysis at 11.025 kHz, which ignores the top two octaves that codecs and
    generators cut or invent; every block; whitening 1.0 over 6 segments of 5 s) were chosen
    on validation tracks of real soundtracks by ``benchmarks/real_retrieval.py``, for queries
    as recorded and after a Griffin-Lim round trip. `LEGACY_FEATURE_PARAMS` gives the earlier
    space; indexes built with it still load.

    Parameters
    ----------
    sr : int
        Analysis sample rate (files are resampled to it).
    max_seconds : float or None
        Excerpt length in seconds (`AudioPolicy`); ``None``: the whole file.
    n_fft, hop_length : int
        STFT size and hop, in samples at `sr`.
    position : {"start", "centre"}
        Where the excerpt lies in the song (`AudioPolicy`).
    blocks : sequence of str
        Which `FEATURE2_BLOCKS` to use.
    whitening : float or None
        Shrinkage of the within-track whitening (larger: closer to plain standardisation);
        ``None`` turns it off (the raw vector is then the excerpt's descriptors alone).
    segments : int
        Parts of each excerpt the within-track covariance is estimated from (>= 2).
    """

    name = "features"
    needs_fit = True
    frame_pooling = "mean/std/percentiles of frame descriptors, mean tempogram"

    def __init__(self, sr: int = 11025, max_seconds: float | None = 30.0, n_fft: int = 1024,
                 hop_length: int = 256, position: str = "start",
                 blocks: Sequence[str] = tuple(FEATURE2_BLOCKS),
                 whitening: float | None = 1.0, segments: int = 6) -> None:
        self.sr = int(sr)
        self.max_seconds = max_seconds
        self.position = AudioPolicy(max_seconds, position).position  # validated
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        unknown = sorted(set(blocks) - set(FEATURE2_BLOCKS))
        if unknown or not blocks:
            raise ValueError(f"blocks must be a non-empty subset of {list(FEATURE2_BLOCKS)}, "
                             f"got {list(blocks)}")
        if whitening is not None and not float(whitening) > 0:
            raise ValueError(f"whitening must be a positive shrinkage or None, got {whitening}")
        if int(segments) < 2:
            raise ValueError(f"segments must be at least 2, got {segments}")
        self.blocks = tuple(b for b in FEATURE2_BLOCKS if b in blocks)
        self.whitening = None if whitening is None else float(whitening)
        self.segments = int(segments)
        self.dim = sum(FEATURE2_BLOCKS[b] for b in self.blocks)
        self.standardizer: Standardizer | None = None
        self.whitener: np.ndarray | None = None  # (dim, dim), symmetric

    @property
    def raw_dim(self) -> int:
        """Width of a raw vector: the excerpt's descriptors, then each segment's."""
        return self.dim * (1 + self.segments) if self.whitening is not None else self.dim

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"sr": self.sr, "max_seconds": self.max_seconds,
                                  "n_fft": self.n_fft, "hop_length": self.hop_length,
                                  "features": "v1"}
        # Keys absent in the legacy space, so configs of indexes from before them still match.
        if self.blocks != ("v1",):
            params.update(features="v2", blocks=list(self.blocks))
        if self.whitening is not None:
            params.update(whitening=self.whitening, segments=self.segments)
        return params

    def fit(self, raw: np.ndarray) -> FeatureEmbedder:
        """Fit standardisation (and whitening) on raw catalog vectors ``(n, raw_dim)``."""
        raw = self._check_raw(raw)
        self.standardizer = Standardizer().fit(raw[:, :self.dim])
        self.whitener = None
        if self.whitening is not None:
            parts = raw[:, self.dim:].reshape(len(raw), self.segments, self.dim)
            z = self.standardizer.transform(parts.reshape(-1, self.dim)).astype(np.float64)
            self.whitener = within_track_whitener(z.reshape(parts.shape), self.whitening)
        return self

    def get_state(self) -> dict[str, Any] | None:
        if self.standardizer is None:
            return None
        state: dict[str, Any] = {"standardizer": self.standardizer.to_dict()}
        if self.whitener is not None:
            state["whitener"] = self.whitener.tolist()
        return state

    def set_state(self, state: dict[str, Any] | None) -> FeatureEmbedder:
        whitener = None if state is None else state.get("whitener")
        if state is not None and (whitener is None) != (self.whitening is None):
            raise ValueError(f"fitted state {'has' if whitener is not None else 'lacks'} a "
                             f"whitener but whitening={self.whitening}")
        self.standardizer = (None if state is None
                             else Standardizer.from_dict(state["standardizer"]))
        self.whitener = None if whitener is None else np.asarray(whitener, np.float64)
        return self

    def transform(self, raw: np.ndarray) -> np.ndarray:
        self._require_fitted()
        z = self.standardizer.transform(self._check_raw(raw)[:, :self.dim])
        if self.whitener is not None:
            z = (z.astype(np.float64) @ self.whitener).astype(np.float32)
        return l2_normalise(z)

    def _check_raw(self, raw: np.ndarray) -> np.ndarray:
        raw = np.atleast_2d(np.asarray(raw))
        if raw.ndim != 2 or raw.shape[1] != self.raw_dim:
            raise ValueError(f"raw vectors of this {self.name!r} embedder have {self.raw_dim} "
                             f"columns, got shape {raw.shape}")
        return raw

    def embed_raw_audio(self, y: np.ndarray, sr: int) -> np.ndarray:
        y = resample(np.asarray(y, dtype=np.float32), int(sr), self.sr)
        if len(y) < self.n_fft:  # librosa warns and misbehaves on clips shorter than a window
            y = np.pad(y, (0, self.n_fft - len(y)))
        frames = self._frame_descriptors(y)
        n = frames["onset"].shape[-1]
        seconds = len(y) / self.sr
        parts = [self._pool(frames, 0, n, seconds)]
        if self.whitening is not None:
            starts = np.linspace(0, n, self.segments + 1).astype(int)[:-1]
            ends = np.maximum(np.linspace(0, n, self.segments + 1).astype(int)[1:], starts + 1)
            parts += [self._pool(frames, a, b, seconds * (b - a) / n)
                      for a, b in zip(starts, ends, strict=True)]
        vector = np.concatenate(parts)
        # silent input gives NaN chroma (0/0); a constant is as good as any for silence
        return np.nan_to_num(vector, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    def _frame_descriptors(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """Frame-level analyses the blocks pool, each ``(..., T)`` on one frame grid."""
        sr, hop, blocks = self.sr, self.hop_length, self.blocks
        mag = np.abs(librosa.stft(y, n_fft=self.n_fft, hop_length=hop))  # (bins, frames)
        power = mag**2
        mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr))
        out = {"onset": librosa.onset.onset_strength(S=mel_db, sr=sr)}  # (frames,)
        mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=20)  # (20, frames)
        if "v1" in blocks or "pct" in blocks:
            chroma = librosa.feature.chroma_stft(S=power, sr=sr, tuning=0.0)  # (12, frames)
            # 6 octave bands from fmin; below 25.6 kHz the default 200 Hz would pass Nyquist
            contrast = librosa.feature.spectral_contrast(S=mag, sr=sr, fmin=min(200.0, sr / 72))
            out["timbre"] = np.vstack([mfcc, chroma, contrast])  # (39, frames)
        if "v1" in blocks:
            out["scalars"] = np.vstack([
                librosa.feature.spectral_centroid(S=mag, sr=sr),
                librosa.feature.spectral_bandwidth(S=mag, sr=sr),
                librosa.feature.spectral_rolloff(S=mag, sr=sr),
                librosa.feature.zero_crossing_rate(y, frame_length=self.n_fft, hop_length=hop),
                librosa.feature.rms(S=mag, frame_length=self.n_fft),
            ])  # (5, frames)
        if "dmfcc" in blocks:
            out["delta"] = librosa.feature.delta(mfcc, mode="nearest")  # (20, frames)
        if "mel" in blocks:
            out["mel"] = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr,
                                                                             n_mels=32))
        if "tempogram" in blocks:
            out["tempogram"] = librosa.feature.tempogram(
                onset_envelope=out["onset"], sr=sr, hop_length=hop, win_length=384)  # (384, T)
        return out

    def _pool(self, frames: dict[str, np.ndarray], a: int, b: int, seconds: float
              ) -> np.ndarray:
        """The blocks' descriptors of frames ``a:b`` (`seconds` long), in block order."""
        parts = {}
        if "v1" in self.blocks:
            sr, hop = self.sr, self.hop_length
            onset = frames["onset"][a:b]
            tempo = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=onset, sr=sr,
                                                              hop_length=hop))[0])
            n_onsets = len(librosa.onset.onset_detect(onset_envelope=onset, sr=sr,
                                                      hop_length=hop))
            timbre, scalars = frames["timbre"][:, a:b], frames["scalars"][:, a:b]
            parts["v1"] = np.concatenate([
                *(np.concatenate([timbre[r].mean(1), timbre[r].std(1)])
                  for r in (slice(0, 20), slice(20, 32), slice(32, 39))),
                np.column_stack([scalars.mean(1), scalars.std(1)]).ravel(),
                [np.log2(max(tempo, 1.0)), onset.mean(), onset.std(), onset.max(),
                 n_onsets / seconds]])
        if "pct" in self.blocks:
            parts["pct"] = np.percentile(frames["timbre"][:, a:b], [10, 50, 90], axis=1).ravel()
        if "dmfcc" in self.blocks:
            delta = frames["delta"][:, a:b]
            parts["dmfcc"] = np.concatenate([np.abs(delta).mean(1), delta.std(1)])
        if "mel" in self.blocks:
            bands = frames["mel"][:, a:b]
            parts["mel"] = np.concatenate([bands.mean(1), bands.std(1)])
        if "tempogram" in self.blocks:
            tgram = frames["tempogram"][:, a:b].mean(1)  # (384,) by lag
            # log-spaced lag bands from 1 frame up: tempo is perceived on a log scale
            edges = np.unique(np.geomspace(1, len(tgram), 17).astype(int))
            bands = [tgram[lo:hi].mean() for lo, hi in zip(edges[:-1], edges[1:], strict=False)]
            parts["tempogram"] = np.pad(bands, (0, 16 - len(bands)))
        return np.concatenate([parts[b] for b in self.blocks])


def within_track_scatter(segments: np.ndarray) -> np.ndarray:
    """``S_w``: the pooled covariance of each track's segments ``(n, S, d)`` around that
    track's mean (the within-class covariance, tracks as classes), ``(d, d)``."""
    n, s, _ = segments.shape
    dev = segments - segments.mean(axis=1, keepdims=True)
    return np.einsum("nsi,nsj->ij", dev, dev) / max(n * (s - 1), 1)


def shrunk_inverse_sqrt(scatter: np.ndarray, shrinkage: float) -> np.ndarray:
    """``(S + shrinkage * mean_var * I) ** -1/2``, ``mean_var`` the average diagonal of
    `scatter`; the identity where `scatter` is zero (segments that never vary: silence, a
    test tone)."""
    d = len(scatter)
    mean_var = np.trace(scatter) / d
    if not mean_var > 1e-12:
        return np.eye(d)
    values, vectors = np.linalg.eigh(scatter + shrinkage * mean_var * np.eye(d))
    return (vectors * values ** -0.5) @ vectors.T


def within_track_whitener(segments: np.ndarray, shrinkage: float) -> np.ndarray:
    """`shrunk_inverse_sqrt` of the `within_track_scatter` of segment vectors ``(n, S, d)``."""
    return shrunk_inverse_sqrt(within_track_scatter(segments), shrinkage)


class FeatureEmbedder2(FeatureEmbedder):
    """The earlier opt-in ``features2`` space, kept so that its indexes load.

    `FeatureEmbedder` with `LEGACY_FEATURE_PARAMS`' analysis settings, no whitening, and
    optional *block weighting*: each block scaled by ``1/sqrt(its size)`` after
    standardisation, so after L2 normalisation every block weighs the same in the cosine.
    Its blocks (``v1`` + ``pct``) were chosen by forward selection on validation tracks; on
    test tracks they did not beat the ``features`` of the time. `FeatureEmbedder`'s
    within-track whitening does better (``benchmarks/real_retrieval.py``).

    Parameters
    ----------
    blocks : sequence of str
        Which `FEATURE2_BLOCKS` to use.
    block_weighting : bool
        Give each block equal weight instead of each dimension.
    **kwargs
        `FeatureEmbedder` analysis parameters (sr, max_seconds, n_fft, hop_length, position).
    """

    name = "features2"

    def __init__(self, blocks: Sequence[str] = ("v1", "pct"),
                 block_weighting: bool = False, **kwargs: Any) -> None:
        settings = {k: v for k, v in LEGACY_FEATURE_PARAMS.items() if k != "blocks"}
        super().__init__(**{**settings, **kwargs, "blocks": blocks})
        if self.whitening is not None:
            raise ValueError("features2 has no whitening; use the features embedder")
        self.block_weighting = bool(block_weighting)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "features": "v2", "blocks": list(self.blocks),
                "block_weighting": self.block_weighting}

    def select(self, raw: np.ndarray, other: FeatureEmbedder2) -> np.ndarray:
        """The columns of `other`'s blocks in raw vectors ``(n, self.dim)`` of this embedder."""
        edges = np.cumsum([0, *(FEATURE2_BLOCKS[b] for b in self.blocks)])
        spans = {b: range(edges[i], edges[i + 1]) for i, b in enumerate(self.blocks)}
        return np.asarray(raw)[:, [c for b in other.blocks for c in spans[b]]]

    def transform(self, raw: np.ndarray) -> np.ndarray:
        if not self.block_weighting:
            return super().transform(raw)
        self._require_fitted()
        z = self.standardizer.transform(self._check_raw(raw))
        weights = np.concatenate([np.full(FEATURE2_BLOCKS[b], FEATURE2_BLOCKS[b] ** -0.5)
                                  for b in self.blocks])
        return l2_normalise(z * weights.astype(np.float32))


# ------------------------------------------------------------------------------------------
# Model 1's pooled vector
# ------------------------------------------------------------------------------------------


class ClassifierEmbedder(Embedder):
    """The pooled representation of a trained AI-vs-human classifier run (Model 1).

    Parameters
    ----------
    run_dir : path
        A run folder written by `helpers.train` (loaded with `helpers.run.load_run`).
    device : str, optional
        Torch device; ``None`` uses CPU.
    """

    name = "classifier"
    frame_pooling = "the run's pooled token vector"

    def __init__(self, run_dir: str | os.PathLike, device: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.device = device
        self.model, self.run_info = load_run(self.run_dir)
        frontend = self.run_info.get("frontend", self.run_info.get("front_end"))
        if frontend is None:
            raise ValueError(f"{self.run_dir}: run info has no 'frontend' settings")
        self.frontend = FrontEndConfig.from_dict(frontend)
        self.max_seconds = self.frontend.duration
        self.model = self.model.to(device or "cpu").eval()
        with torch.no_grad():
            probe = torch.zeros(1, self.frontend.n_mels, self.frontend.n_frames,
                                device=device or "cpu")
            self.dim = int(self.model.embed(probe).shape[-1])

    def params(self) -> dict[str, Any]:
        checkpoint = sorted(self.run_dir.glob("*.pt"))
        return {
            "run": self.run_dir.resolve().name,
            "checkpoint": file_fingerprint(checkpoint[-1]) if checkpoint else None,
            "frontend": self.frontend.to_dict(),
        }

    def embed_raw_audio(self, y: np.ndarray, sr: int) -> np.ndarray:
        f = self.frontend
        clip = fit_length(resample(y, int(sr), f.sample_rate), f.n_samples, f.pad_mode)
        mel = torch.from_numpy(mel_db(clip, f))[None].to(self.device or "cpu")
        with torch.no_grad():
            return self.model.embed(mel)[0].float().cpu().numpy()  # (dim,)

    def embed_raw_file(self, path: str | os.PathLike) -> np.ndarray:
        # the run's own front end (codec round trip, padding, silence checks included)
        mel = torch.from_numpy(mel_db(load_clip(path, self.frontend), self.frontend))
        with torch.no_grad():
            out = self.model.embed(mel[None].to(self.device or "cpu"))  # (1, dim)
        return out[0].float().cpu().numpy().astype(np.float32)


# ------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Embedder]] = {
    "openl3": OpenL3Embedder,
    "features": FeatureEmbedder,
    "features2": FeatureEmbedder2,
    "classifier": ClassifierEmbedder,
}


def make_embedder(name: str, **kwargs: Any) -> Embedder:
    """Build an embedder by name.

    Parameters
    ----------
    name : {"openl3", "features", "features2", "classifier"}
    **kwargs
        Constructor arguments of the class (e.g. ``run_dir=`` for "classifier").

    Returns
    -------
    Embedder

    Raises
    ------
    ValueError
        Unknown name.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown embedder {name!r}; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


def embedder_from_config(config: dict[str, Any], **overrides: Any) -> Embedder:
    """Rebuild the embedder an index was built with, fitted state included.

    Parameters
    ----------
    config : dict
        An `Embedder.config` (as stored in an index's ``meta.json``).
    **overrides
        Runtime arguments the config does not record: ``device``, ``weights=`` (path of a
        non-official OpenL3 weights file), ``cache_dir``, ``run_dir``.

    Returns
    -------
    Embedder
        Its config equals `config` (checked).

    Raises
    ------
    ValueError
        The rebuilt embedder does not reproduce `config` (e.g. different weights).
    """
    name, params = config["name"], dict(config.get("params") or {})
    position = (config.get("policy") or {}).get("position", "start")
    if name in ("openl3", "features", "features2"):
        params["position"] = position
    if name == "openl3":
        ident = params.pop("weights", "official")
        params.pop("pooling", None)
        if ident != "official" and "weights" not in overrides:
            raise ValueError(f"this index was built with OpenL3 weights {ident}; pass weights= "
                             "with the path of that file")
        kwargs = {**params, **overrides}
    elif name in ("features", "features2"):
        params.pop("features", None)
        if name == "features":  # keys a config from before them lacks: the legacy space
            params.setdefault("blocks", LEGACY_FEATURE_PARAMS["blocks"])
            params.setdefault("whitening", None)
        kwargs = {**params, **overrides}
    elif name == "classifier":
        if "run_dir" not in overrides:
            raise ValueError(f"this index was built with classifier run {params.get('run')!r}; "
                             "pass run_dir= with that run's folder")
        kwargs = dict(overrides)
    else:
        raise ValueError(f"unknown embedder {name!r} in index config")
    embedder = make_embedder(name, **kwargs).set_state(config.get("state"))
    if not same_space(embedder.config(), config):
        raise ValueError(f"rebuilt {name!r} embedder does not match the index: "
                         f"{describe_config_difference(config, embedder.config())}")
    return embedder


#: Parameters that change how a vector is computed, not the space it lies in: a bf16 vector
#: is within 1e-2 of its float32 twin (`helpers.openl3.PRECISION_TOLERANCE`), and the query
#: hop only thins the frames averaged into a query. Indexes record them; matching ignores them.
HOW_NOT_WHERE = ("precision", "query_hop_size")


def vector_space(config: dict[str, Any]) -> dict[str, Any]:
    """The part of an embedder config that must match for vectors to be comparable.

    Name, dim, params, fitted state and the policy's settings; not the policy's words
    (description, frame pooling), which a record from before policies cannot give. A config
    without a policy gets `legacy_policy`.
    """
    config = canonical_config(config)
    policy = config.get("policy") or legacy_policy(config)
    config["policy"] = {k: policy.get(k) for k in ("seconds", "position", "window_hop")}
    for key in HOW_NOT_WHERE:
        (config.get("params") or {}).pop(key, None)
    return config


def same_space(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two embedder configs give comparable vectors (see `Embedder.config`)."""
    return vector_space(a) == vector_space(b)


def describe_config_difference(expected: dict[str, Any], got: dict[str, Any]) -> str:
    """Human-readable list of the keys in which two embedder configs differ."""
    expected, got = canonical_config(expected), canonical_config(got)
    diffs = []
    for key in ("name", "dim"):
        if expected.get(key) != got.get(key):
            diffs.append(f"{key}: index {expected.get(key)!r}, query {got.get(key)!r}")
    pe, pg = expected.get("params") or {}, got.get("params") or {}
    for key in sorted(set(pe) | set(pg)):
        if pe.get(key) != pg.get(key):
            diffs.append(f"params.{key}: index {pe.get(key)!r}, query {pg.get(key)!r}")
    ep, gp = vector_space(expected)["policy"], vector_space(got)["policy"]
    if ep != gp:
        diffs.append(f"audio policy: index {ep}, query {gp}")
    if expected.get("state") != got.get("state"):
        if got.get("state") is None:
            diffs.append("state: the query embedder is not fitted (the index's is)")
        else:
            diffs.append("state: fitted on a different catalog")
    return "; ".join(diffs) or "no difference"


def default_embedder(cache_dir: str | os.PathLike | None = None,
                     openl3_options: dict[str, Any] | None = None, **kwargs: Any) -> Embedder:
    """OpenL3 (mel256, music, 512-d) when its weights are cached, else classic features.

    Parameters
    ----------
    cache_dir : path, optional
        OpenL3 weights folder to look in (default: `helpers.openl3.weights_cache_dir`).
    openl3_options : dict, optional
        Extra `OpenL3Embedder` arguments (``query_hop_size``, ``precision``), used only when
        OpenL3 is chosen.
    **kwargs
        Passed to the chosen embedder (e.g. ``max_seconds``).

    Returns
    -------
    Embedder
        The choice and its reason are logged at INFO level.
    """
    if weights_available("mel256", "music", cache_dir):
        log.info("embedder: openl3 (mel256/music/512 weights found in cache)")
        return OpenL3Embedder(cache_dir=cache_dir, **kwargs, **(openl3_options or {}))
    log.info("embedder: features (no OpenL3 weights at %s; `%s` installs them)",
             weights_path("mel256", "music", cache_dir), weights_command("mel256", "music"))
    return FeatureEmbedder(**kwargs)
