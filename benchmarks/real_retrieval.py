"""Does the recommender find the right track and composer in real music? Measure it offline.

Protocol (the detection benchmark's, for retrieval): the Debian game soundtracks of
``real_audio.py`` (real, human-made recordings; one package = one composer or small team =
one "artist"), music only. For every kept track:

* **Catalog**: the centre 30 s of the track's first half, as recorded.
* **Queries**: the centre 30 s of its second half (a *different* excerpt, never overlapping
  the catalog one), (a) ``clean`` (as recorded), (b) ``griffin_lim`` through
  `helpers.artifacts.apply_artifacts` with the default ``ArtifactConfig()`` (decimate 2x,
  128-band mel, 16 Griffin-Lim iterations, checkerboard 2x upsampling), seeded per track.

Metrics, per query, averaged over queries (one query per track and transform):

* ``track_recall_at_5``: the query's own track is among the 5 nearest catalog excerpts.
* ``source_p_at_5``: share of the 5 nearest from the query's package (own track counted, as
  the issue counts it).
* ``source_p_at_5_others``: the same with the query's own track removed from the catalog
  first, so it measures "more by this composer" without the easy exact match.

Two catalogs: ``all`` holds every kept track of the detection benchmark's six packages
(`benchmarks.real_detection.PACKAGE_SPLITS`); ``issue4`` only those of the four packages the
issue measured on (xmoto, extremetuxracer, lincity-ng, widelands), the scale of its numbers.
Each catalog fits its own standardisation and whitening, on its catalog vectors only, never
on queries.

Embedders: ``baseline`` (MFCC-20 + chroma + spectral contrast, mean/std, standardised on the
catalog, cosine; written here in ~20 lines), ``features (legacy)`` (what ``features`` was
before: 93 descriptors at 22.05 kHz, `helpers.embed.LEGACY_FEATURE_PARAMS`), ``features``
(the shipped default), the steps between them one at a time, and ``classifier`` when a
trained run is given (``--run``).

Selection, on the ``all`` catalog's ``val`` queries only (tracks split in two halves,
stratified by package, by a hash of the track name); the criterion is the mean over both
transforms of (track MRR + source P@5) / 2 (recall@5 alone saturates on val):

1. analysis rate, on the 93 descriptors with within-track whitening over 3 segments:
   22.05, 16 or 11.025 kHz x shrinkage (none, 0.01 ... 10); the best rate wins, and within
   0.005 of it the higher rate (it keeps more of the music);
2. at that rate: descriptor blocks (7 sets) x segments (3, 6) x shrinkage (none, 0.3, 1, 3);
3. on top of that choice, alternatives that would need more than a vector per track or a
   new search: a discriminant projection (the whitened catalog's top 32/64/96 between-track
   directions, LDA with tracks as classes), hubness-corrected scores (CSLS: twice the cosine
   minus each catalog vector's mean cosine to its 5/10/20 nearest catalog neighbours), and
   segment re-ranking (track cosine plus the mean over query segments of their best cosine
   to the catalog track's segments), and a *reference scatter* learnt from other composers'
   music (`REFERENCE_PACKAGES`, six soundtracks never in the catalog): how one song's
   descriptors move between the excerpts of its two halves (``sections``), and also under
   an artifact family that is not the queries' (``sections+opus``), added to the catalog's
   own segment scatter before whitening (weights x shrinkage). One is adopted only if it
   beats the stage-2 choice by more than `ADOPT_MARGIN` on val. The same scatter with the
   queries' own Griffin-Lim transform is scored beside them and never adopted: it would
   learn the test transform.

The ``test`` queries are reported, never used to choose.

Where the misses are (``by_track_length``): recall@5 of the baseline and of ``features`` per
track-length bin (`LENGTH_BINS_MIN`; the two excerpts of a track lie half its length apart),
and each test miss with the cosine to its own excerpt.

CPU: decoded excerpts and raw vectors are cached in ``_work/real_retrieval`` (keyed by
track, excerpt and transform); a cold run decodes ~110 tracks, runs ~110 Griffin-Lim round
trips and describes every excerpt at three rates (about 25 minutes on one core). Run from
the repository root::

    python -m benchmarks.real_retrieval
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import zlib
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.provenance import write_result  # noqa: E402
from benchmarks.real_audio import DEFAULT_OUT as AUDIO_DIR  # noqa: E402
from benchmarks.real_audio import (  # noqa: E402
    DEFAULT_PACKAGES,
    WIDELANDS,
    fetch_real_audio,
    package_versions,
)
from benchmarks.real_detection import PACKAGE_SPLITS  # noqa: E402
from helpers.artifacts import apply_artifacts  # noqa: E402
from helpers.audio import resample  # noqa: E402
from helpers.embed import (  # noqa: E402
    FEATURE2_BLOCKS,
    LEGACY_FEATURE_PARAMS,
    FeatureEmbedder,
    Standardizer,
    l2_normalise,
    shrunk_inverse_sqrt,
    within_track_scatter,
)
from helpers.io import write_npy  # noqa: E402
from helpers.twins import make_twin  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work" / "real_retrieval"
RESULTS = Path(__file__).resolve().parent / "results" / "real_retrieval.json"
PACKAGES = tuple(PACKAGE_SPLITS)  # the detection benchmark's six
ISSUE_PACKAGES = (*DEFAULT_PACKAGES, WIDELANDS)  # the four the issue measured on
SR = 22_050
EXCERPT_S = 30.0
MIN_TRACK_S = 2 * EXCERPT_S  # two non-overlapping excerpts, one per half of the track
MIN_RMS_DBFS = -50.0
TRANSFORMS = ("clean", "griffin_lim")
#: The soundtrack folders; the packages also hold sound effects.
MUSIC_DIRS = re.compile(r"/(music|Musics)/")
K = 5


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def _excerpt(path: Path, seconds: float, half: int) -> np.ndarray:
    """Centre `EXCERPT_S` of the first (`half` 0) or second (1) half, mono at `SR`."""
    info = sf.info(path)
    half_len = info.frames // 2
    width = int(EXCERPT_S * info.samplerate)
    start = half * half_len + max(0, (half_len - width) // 2)
    y, sr = sf.read(path, start=start, frames=width, dtype="float32", always_2d=True)
    return resample(y.mean(axis=1), sr, SR)


def cached_audio(track: pd.Series, half: int, transform: str) -> np.ndarray:
    """One excerpt (after `transform`), decoded once and cached as .npy."""
    path = WORK / "audio" / f"{track.track_id.replace('/', '__')}_{half}_{transform}.npy"
    if path.exists():
        return np.load(path)
    y = _excerpt(AUDIO_DIR / track.path, track.seconds, half)
    if transform == "griffin_lim":
        y = apply_artifacts(y, SR, rng=np.random.default_rng(_seed(track.track_id)))
    elif transform == "opus_lowrate":
        y = make_twin(y, SR, "opus_lowrate")
    write_npy(path, np.asarray(y, np.float32))
    return y


def select_tracks(manifest: pd.DataFrame, music_dirs: re.Pattern = MUSIC_DIRS
                  ) -> tuple[pd.DataFrame, list[dict]]:
    """Music only: soundtrack folders, tracks long enough for two excerpts, both audible.

    Returns the kept tracks (with their ``half``) and the dropped music tracks with reasons.
    """
    kept, dropped = [], []
    for _, t in manifest.iterrows():
        if not music_dirs.search(t.path):
            continue  # sound effects (widelands' data/sound, data/world): not music
        if t.seconds < MIN_TRACK_S:
            dropped.append({"track": t.track_id, "seconds": t.seconds,
                            "why": f"shorter than {MIN_TRACK_S:.0f} s (a jingle or loop)"})
            continue
        rms = [20 * np.log10(np.sqrt(np.mean(cached_audio(t, h, "clean") ** 2)) + 1e-12)
               for h in (0, 1)]
        if min(rms) < MIN_RMS_DBFS:
            dropped.append({"track": t.track_id, "seconds": t.seconds,
                            "why": f"an excerpt below {MIN_RMS_DBFS} dBFS RMS"})
            continue
        kept.append(t)
    table = pd.DataFrame(kept).reset_index(drop=True)
    # Stratified by package: alternate val/test in a fixed hashed order within each package.
    table["order"] = [_seed("split", t) for t in table.track_id]
    table = table.sort_values(["source", "order"]).reset_index(drop=True)
    table["half"] = table.groupby("source").cumcount().map(lambda i: ("val", "test")[i % 2])
    return table.drop(columns="order"), dropped


# ------------------------------------------------------------------------------------------
# Embedders
# ------------------------------------------------------------------------------------------


def baseline_raw(y: np.ndarray) -> np.ndarray:
    """The issue's baseline: MFCC-20 + chroma + spectral contrast, mean and std over frames."""
    mag = np.abs(librosa.stft(y, n_fft=2048, hop_length=512))
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(librosa.feature.melspectrogram(
        S=mag**2, sr=SR)), n_mfcc=20)
    chroma = librosa.feature.chroma_stft(S=mag**2, sr=SR, tuning=0.0)
    contrast = librosa.feature.spectral_contrast(S=mag, sr=SR)
    frames = np.vstack([mfcc, chroma, contrast])
    return np.concatenate([frames.mean(1), frames.std(1)])


def standardised_cosine(catalog: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, ...]:
    """Standardise on the catalog, L2-normalise both sides (the baseline's vector space)."""
    scaler = Standardizer().fit(catalog)
    return l2_normalise(scaler.transform(catalog)), l2_normalise(scaler.transform(queries))


#: Analysis settings per rate (about 23 ms hops): 22.05 kHz is the legacy one.
RATES = {22050: {"n_fft": 2048, "hop_length": 512}, 16000: {"n_fft": 1024, "hop_length": 384},
         11025: {"n_fft": 1024, "hop_length": 256}}
STAGE1_SHRINKAGE = (None, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
STAGE2_BLOCKS = (("v1",), ("v1", "pct"), ("v1", "dmfcc"), ("v1", "tempogram"), ("v1", "mel"),
                 ("v1", "dmfcc", "tempogram"), tuple(FEATURE2_BLOCKS))
STAGE2_SEGMENTS = (3, 6)
STAGE2_SHRINKAGE = (None, 0.3, 1.0, 3.0)
RATE_TIE = 0.005  # within this of the best val score, the higher rate wins
STAGE3_LDA_DIMS = (32, 64, 96)
STAGE3_CSLS_K = (5, 10, 20)
ADOPT_MARGIN = 0.01  # what a stage-3 alternative must gain on val to be worth its machinery
#: Other composers' music for the reference scatter of stage 3: six soundtracks, none in the
#: catalog (drascula-music keeps its tracks in an ``audio`` folder).
REFERENCE_PACKAGES = ("hedgewars-data", "freedroidrpg-data", "flare-game", "supertux-data",
                      "hyperrogue-music", "drascula-music")
REFERENCE_MUSIC_DIRS = re.compile(r"/(music|Musics|Music)/|/drascula/audio/")
#: Which differences make the reference scatter: the second half's excerpt (as recorded, or
#: through an artifact family) minus the first half's, per reference track.
REFERENCE_PAIRS = {"sections": ("clean",), "sections+opus": ("clean", "opus_lowrate")}
#: The same with the queries' own transform: it would teach the test transform, so it is
#: reported beside the others and never adopted.
REFERENCE_INELIGIBLE = {"sections+griffin_lim": ("clean", "griffin_lim")}
STAGE3_REFERENCE_WEIGHTS = (0.1, 0.3, 1.0)
STAGE3_REFERENCE_SHRINKAGE = (0.3, 1.0, 3.0)


def describer(sr: int, segments: int, blocks: tuple[str, ...] = tuple(FEATURE2_BLOCKS)
              ) -> FeatureEmbedder:
    """The embedder whose raw vectors the grid slices (its blocks, excerpt + segments)."""
    return FeatureEmbedder(sr=sr, **RATES[sr], blocks=blocks, whitening=1.0, segments=segments)


def slice_raw(raw: np.ndarray, source: FeatureEmbedder, target: FeatureEmbedder) -> np.ndarray:
    """`source`'s raw vectors cut down to `target`'s (its blocks; segments if it whitens)."""
    edges = np.cumsum([0, *(FEATURE2_BLOCKS[b] for b in source.blocks)])
    cols = np.concatenate([np.arange(edges[i], edges[i + 1])
                           for i, b in enumerate(source.blocks) if b in target.blocks])
    parts = 1 + (source.segments if target.whitening is not None else 0)
    if target.whitening is not None and target.segments != source.segments:
        raise ValueError("segments differ")
    return np.concatenate([raw[:, p * source.dim + cols] for p in range(parts)], axis=1)


def feature_space(target: FeatureEmbedder, source: FeatureEmbedder):
    """A space function: fit `target` on the sliced catalog, transform both sides."""
    def space(catalog: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, ...]:
        target.fit(slice_raw(catalog, source, target))
        return (target.transform(slice_raw(catalog, source, target)),
                target.transform(slice_raw(queries, source, target)))
    return space


def _whitened(emb: FeatureEmbedder, raw: np.ndarray, part: int = 0) -> np.ndarray:
    """Part `part` of raw vectors (0: the excerpt, 1..: its segments), whitened, unscaled."""
    z = emb.standardizer.transform(raw[:, part * emb.dim:(part + 1) * emb.dim])
    return z.astype(np.float64) @ emb.whitener


def lda_space(target: FeatureEmbedder, dims: int):
    """Whitened vectors on the catalog's top `dims` between-track directions (LDA: the
    within-track scatter is already the identity after whitening)."""
    def space(catalog: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, ...]:
        target.fit(catalog)
        c, q = _whitened(target, catalog), _whitened(target, queries)
        mean = c.mean(axis=0)
        values, vectors = np.linalg.eigh(np.cov((c - mean).T))
        top = vectors[:, np.argsort(values)[::-1][:dims]]
        return l2_normalise((c - mean) @ top), l2_normalise((q - mean) @ top)
    return space


def csls_space(target: FeatureEmbedder, k: int):
    """Hubness-corrected scores as a dot product: ``[q, 1] . [2c, -r_c]`` is
    ``2 cos(q, c) - r_c``, with ``r_c`` the mean cosine of c to its k nearest catalog vectors."""
    def space(catalog: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, ...]:
        target.fit(catalog)
        c, q = target.transform(catalog), target.transform(queries)
        sims = c @ c.T
        np.fill_diagonal(sims, -np.inf)
        r = np.sort(sims, axis=1)[:, -k:].mean(axis=1)
        return (np.column_stack([2 * c, -r]), np.column_stack([q, np.ones(len(q))]))
    return space


def segment_scores(target: FeatureEmbedder, catalog: np.ndarray, queries: np.ndarray
                   ) -> np.ndarray:
    """Track cosine + mean over the query's segments of the best cosine to each catalog
    track's segments: ``(n_queries, n_catalog)``."""
    target.fit(catalog)
    c, q = target.transform(catalog), target.transform(queries)
    parts = range(1, target.segments + 1)
    cs = np.stack([l2_normalise(_whitened(target, catalog, p)) for p in parts], axis=1)
    qs = np.stack([l2_normalise(_whitened(target, queries, p)) for p in parts], axis=1)
    best = np.einsum("aid,bjd->abij", qs, cs).max(axis=3).mean(axis=2)
    return q @ c.T + best


def reference_space(target: FeatureEmbedder, scatter: np.ndarray, weight: float,
                    shrinkage: float):
    """Within-track whitening by the catalog's own segment scatter plus `weight` times a
    reference scatter from other composers' music (`scatter`: raw units, the excerpt's
    descriptors), each scaled to unit trace, shrunk by `shrinkage` times the mean variance.

    With `weight` 0 this is `FeatureEmbedder`'s whitening (up to a scale that the L2
    normalisation removes).
    """
    def space(catalog: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, ...]:
        target.fit(catalog)
        d, std = target.dim, target.standardizer.std
        parts = catalog[:, d:].reshape(len(catalog), target.segments, d)
        z = target.standardizer.transform(parts.reshape(-1, d)).astype(np.float64)
        own = within_track_scatter(z.reshape(parts.shape))
        other = scatter / np.outer(std, std)
        total = own / np.trace(own) + weight * other / np.trace(other)
        whitener = shrunk_inverse_sqrt(total, shrinkage)
        return tuple(l2_normalise(target.standardizer.transform(x[:, :d]).astype(np.float64)
                                  @ whitener) for x in (catalog, queries))
    return space


def reference_scatter(vectors: dict[str, np.ndarray], transforms: tuple[str, ...]
                      ) -> np.ndarray:
    """Within-track scatter ``D.T D / (2 n)`` of the differences between each reference
    track's second-half excerpt (after each of `transforms`) and its first-half one."""
    diffs = np.concatenate([vectors[t] - vectors["first"] for t in transforms])
    return diffs.T @ diffs / (2 * len(diffs))


def reference_vectors(source: FeatureEmbedder, target: FeatureEmbedder) -> dict:
    """`target`'s excerpt descriptors of the reference tracks: ``first`` (first half, as
    recorded) and the second half as recorded and after each transform of the pairs."""
    manifest = pd.read_csv(fetch_real_audio(AUDIO_DIR, REFERENCE_PACKAGES))
    tracks, _ = select_tracks(manifest, REFERENCE_MUSIC_DIRS)
    name = f"reference_sr{source.sr}_seg{source.segments}_{'+'.join(source.blocks)}"
    out = {"tracks": len(tracks), "per_source": tracks.source.value_counts().to_dict()}
    transforms = sorted({t for p in (*REFERENCE_PAIRS.values(),
                                     *REFERENCE_INELIGIBLE.values()) for t in p})
    raw = raw_vectors(tracks, lambda y: source.embed_raw_audio(y, SR), name,
                      [("first", 0, "clean"), *[(t, 1, t) for t in transforms]])
    out.update({key: slice_raw(v, source, target)[:, :target.dim].astype(np.float64)
                for key, v in raw.items()})
    return out


def val_score_of_scores(scores_fn, raw: dict[str, np.ndarray], tracks: pd.DataFrame
                        ) -> float:
    """`val_score` for a method that scores pairs directly (no vector per track)."""
    rows = np.flatnonzero(tracks.half.to_numpy() == "val")
    out = []
    for transform in TRANSFORMS:
        sims = scores_fn(raw["catalog"], raw[transform])
        # One-hot "vectors" whose dot products are the scores, for `retrieval_metrics`.
        m = retrieval_metrics(np.eye(len(tracks)), sims, tracks, rows)
        out.append((m["track_mrr"] + m["source_p_at_5"]) / 2)
    return round(float(np.mean(out)), 4)


# ------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------


def retrieval_metrics(cat: np.ndarray, qry: np.ndarray, tracks: pd.DataFrame,
                      rows: np.ndarray) -> dict[str, float]:
    """Track recall@5 and MRR, source P@5 (own track counted) and P@5 without it."""
    sources = tracks.source.to_numpy()
    sims = qry[rows] @ cat.T  # (n_queries, n_catalog); query i's own track is catalog rows[i]
    recall, rr, p5, p5_other = [], [], [], []
    for i, own in enumerate(rows):
        order = np.argsort(-sims[i], kind="stable")
        top = order[:K]
        recall.append(own in top)
        rr.append(1.0 / (1 + int(np.flatnonzero(order == own)[0])))
        p5.append(np.mean(sources[top] == sources[own]))
        others = order[order != own][:K]
        p5_other.append(np.mean(sources[others] == sources[own]))
    return {"track_recall_at_5": round(float(np.mean(recall)), 4),
            "track_recall_at_5_ci95": bootstrap_ci(recall),
            "track_mrr": round(float(np.mean(rr)), 4),
            "source_p_at_5": round(float(np.mean(p5)), 4),
            "source_p_at_5_ci95": bootstrap_ci(p5),
            "source_p_at_5_others": round(float(np.mean(p5_other)), 4),
            "n_queries": len(rows)}


def bootstrap_ci(per_query: list, resamples: int = 2000) -> list[float]:
    """95 % percentile-bootstrap interval of a mean over queries (which tracks were drawn
    is the noise here: retrieval itself is deterministic)."""
    values = np.asarray(per_query, dtype=float)
    draws = np.random.default_rng(0).integers(0, len(values), (resamples, len(values)))
    low, high = np.percentile(values[draws].mean(axis=1), [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def val_score(space, raw: dict[str, np.ndarray], tracks: pd.DataFrame) -> float:
    """The selection criterion on the val queries: mean over transforms of (MRR + P@5) / 2."""
    rows = np.flatnonzero(tracks.half.to_numpy() == "val")
    scores = []
    for transform in TRANSFORMS:
        m = retrieval_metrics(*space(raw["catalog"], raw[transform]), tracks, rows)
        scores.append((m["track_mrr"] + m["source_p_at_5"]) / 2)
    return round(float(np.mean(scores)), 4)


# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------


def raw_vectors(tracks: pd.DataFrame, fn, name: str,
                excerpts: list[tuple[str, int, str]] | None = None) -> dict[str, np.ndarray]:
    """Raw vectors of `excerpts` (key, half, transform; default: the catalog and each query
    transform), cached per embedder name and key."""
    out = {}
    for key, half, transform in excerpts or [("catalog", 0, "clean"),
                                             *[(t, 1, t) for t in TRANSFORMS]]:
        path = WORK / "vectors" / f"{name}_{key}.npy"
        if path.exists():
            cached = np.load(path)
            if len(cached) == len(tracks):
                out[key] = cached
                continue
        out[key] = np.stack([fn(cached_audio(t, half, transform))
                             for t in tqdm(list(tracks.itertuples()), desc=f"{name} {key}")])
        write_npy(path, out[key].astype(np.float32))
    return out


def described(tracks: pd.DataFrame, source: FeatureEmbedder) -> dict[str, np.ndarray]:
    name = f"features_sr{source.sr}_seg{source.segments}_{'+'.join(source.blocks)}"
    return raw_vectors(tracks, lambda y: source.embed_raw_audio(y, SR), name)


def select_on_val(tracks: pd.DataFrame) -> dict:
    """The two-stage grid of the module docstring, scored on the val queries only."""
    stage1 = {}
    for sr in RATES:
        source = describer(sr, 3, ("v1",))
        raw = described(tracks, source)
        for lam in STAGE1_SHRINKAGE:
            target = FeatureEmbedder(sr=sr, **RATES[sr], blocks=("v1",), whitening=lam,
                                     segments=3)
            stage1[f"{sr}/{lam}"] = val_score(feature_space(target, source), raw, tracks)
    best_per_rate = {sr: max(v for k, v in stage1.items() if k.startswith(f"{sr}/"))
                     for sr in RATES}
    top = max(best_per_rate.values())
    rate = max(sr for sr, v in best_per_rate.items() if v >= top - RATE_TIE)
    stage2 = {}
    for segments in STAGE2_SEGMENTS:
        source = describer(rate, segments)
        raw = described(tracks, source)
        for blocks in STAGE2_BLOCKS:
            for lam in STAGE2_SHRINKAGE:
                if lam is None and segments != STAGE2_SEGMENTS[0]:
                    continue  # no whitening: segments play no part
                target = FeatureEmbedder(sr=rate, **RATES[rate], blocks=blocks, whitening=lam,
                                         segments=segments)
                key = f"{'+'.join(blocks)}/seg{segments}/{lam}"
                stage2[key] = val_score(feature_space(target, source), raw, tracks)
    chosen = max(stage2, key=stage2.get)
    blocks, segments, lam = chosen.split("/")
    choice = {"sr": rate, **RATES[rate], "blocks": blocks.split("+"),
              "segments": int(segments[3:]), "whitening": None if lam == "None" else float(lam)}
    stage3 = stage3_alternatives(tracks, choice)
    reference = stage3_reference(tracks, choice)
    stage3.update(reference.get("eligible", {}))
    adopted = [k for k, v in stage3.items() if v > stage2[chosen] + ADOPT_MARGIN]
    shipped = FeatureEmbedder()
    ships = {k: getattr(shipped, k) for k in choice}
    ships["blocks"] = list(ships["blocks"])
    return {"criterion": "mean over transforms of (track MRR + source P@5) / 2, val queries",
            "stage1_rate_x_shrinkage": stage1, "stage1_best_per_rate": best_per_rate,
            "rate": rate, "stage2_blocks_x_segments_x_shrinkage": stage2,
            "chosen": choice, "val_score": stage2[chosen],
            "stage3_alternatives": stage3, "stage3_margin": ADOPT_MARGIN,
            "stage3_adopted": adopted,
            "stage3_reference": {k: v for k, v in reference.items() if k != "eligible"},
            "shipped_default_is_the_choice": ships == choice and not adopted}


def stage3_alternatives(tracks: pd.DataFrame, choice: dict) -> dict[str, float]:
    """Val scores of the module docstring's stage-3 alternatives on top of `choice`."""
    if choice["whitening"] is None:
        return {}  # each alternative works on the whitened space
    settings = {k: v for k, v in choice.items() if k != "blocks"}
    source = describer(choice["sr"], choice["segments"])
    raw = described(tracks, source)
    raw = {k: slice_raw(v, source, FeatureEmbedder(**settings, blocks=choice["blocks"]))
           for k, v in raw.items()}

    def target() -> FeatureEmbedder:
        return FeatureEmbedder(**settings, blocks=choice["blocks"])

    out = {f"lda{d}": val_score(lda_space(target(), d), raw, tracks) for d in STAGE3_LDA_DIMS}
    out.update({f"csls{k}": val_score(csls_space(target(), k), raw, tracks)
                for k in STAGE3_CSLS_K})
    out["segment_rerank"] = val_score_of_scores(
        lambda c, q: segment_scores(target(), c, q), raw, tracks)
    return out


def stage3_reference(tracks: pd.DataFrame, choice: dict) -> dict:
    """Val scores of the reference scatter (`REFERENCE_PAIRS`, weights x shrinkage) on top
    of `choice`; the ineligible pairs' scores apart, for comparison only."""
    if choice["whitening"] is None:
        return {}
    settings = {k: v for k, v in choice.items() if k != "blocks"}
    source = describer(choice["sr"], choice["segments"])
    target = FeatureEmbedder(**settings, blocks=choice["blocks"])
    raw = {k: slice_raw(v, source, target) for k, v in described(tracks, source).items()}
    vectors = reference_vectors(source, target)

    def grid(pairs: dict) -> dict[str, float]:
        return {f"reference[{name}]/w{w}/s{lam}": val_score(reference_space(
                    FeatureEmbedder(**settings, blocks=choice["blocks"]),
                    reference_scatter(vectors, transforms), w, lam), raw, tracks)
                for name, transforms in pairs.items()
                for w in STAGE3_REFERENCE_WEIGHTS for lam in STAGE3_REFERENCE_SHRINKAGE}

    return {"tracks": vectors["tracks"], "per_source": vectors["per_source"],
            "packages": package_versions(AUDIO_DIR, REFERENCE_PACKAGES),
            "eligible": grid(REFERENCE_PAIRS), "ineligible": grid(REFERENCE_INELIGIBLE)}


def spaces(tracks: pd.DataFrame, run_dir: Path | None) -> dict[str, tuple]:
    """Each reported embedder: (raw vectors, space function)."""
    out = {"baseline": (raw_vectors(tracks, baseline_raw, "baseline"), standardised_cosine)}
    legacy = describer(22050, 3, ("v1",))
    raw = described(tracks, legacy)
    settings = {k: v for k, v in LEGACY_FEATURE_PARAMS.items() if k != "blocks"}
    out["features (legacy)"] = (raw, feature_space(FeatureEmbedder(**settings,
                                                                   blocks=("v1",)), legacy))
    step = describer(16000, 3, ("v1",))
    raw16 = described(tracks, step)
    out["features (legacy) at 16 kHz"] = (raw16, feature_space(
        FeatureEmbedder(blocks=("v1",), whitening=None), step))
    out["features (legacy) at 16 kHz, whitened"] = (raw16, feature_space(
        FeatureEmbedder(blocks=("v1",), whitening=1.0, segments=3), step))
    shipped = FeatureEmbedder()
    source = describer(shipped.sr, shipped.segments)
    out["features"] = (described(tracks, source), feature_space(shipped, source))
    if run_dir is not None:
        from helpers.embed import ClassifierEmbedder  # torch model: only when asked

        clf = ClassifierEmbedder(run_dir)
        out["classifier"] = (raw_vectors(tracks, lambda y: clf.embed_raw_audio(y, SR),
                                         f"classifier_{_seed(run_dir)}"),
                             lambda c, q: (l2_normalise(c), l2_normalise(q)))
    return out


#: Track-length bins (minutes) for `by_length`, fixed before it was first run: the two
#: excerpts' centres lie half a track apart, so a longer track means more distant excerpts.
LENGTH_BINS_MIN = (1, 3, 5, 12)


def by_length(tracks: pd.DataFrame, spaces_: dict[str, tuple]) -> dict:
    """Where the misses are: recall@5 per track-length bin, and every test miss, on the
    ``all`` catalog for the baseline and the shipped ``features``.

    A query misses when its own track is not among the 5 nearest; each miss records the
    track's length, the rank of its own excerpt and the cosine to it and to the top match.
    """
    minutes = tracks.seconds.to_numpy() / 60
    bins = np.digitize(minutes, LENGTH_BINS_MIN[1:-1])
    labels = [f"{lo}-{hi} min" for lo, hi in zip(LENGTH_BINS_MIN[:-1], LENGTH_BINS_MIN[1:],
                                                  strict=False)]
    out: dict = {"bins_min": list(LENGTH_BINS_MIN), "embedders": {}}
    for label in ("baseline", "features"):
        raw, space = spaces_[label]
        per = {}
        for transform in TRANSFORMS:
            cat, qry = space(raw["catalog"], raw[transform])
            sims = qry @ cat.T
            rank = np.array([int(np.flatnonzero(np.argsort(-sims[i], kind="stable") == i)[0])
                             for i in range(len(tracks))])
            hit = rank < K
            cells = {}
            for split in ("val", "test"):
                rows = tracks.half.to_numpy() == split
                cells[split] = {labels[b]: {"n": int((rows & (bins == b)).sum()),
                                            "track_recall_at_5": round(float(
                                                hit[rows & (bins == b)].mean()), 4)
                                            if (rows & (bins == b)).any() else None}
                                for b in range(len(labels))}
            test = np.flatnonzero((tracks.half.to_numpy() == "test") & ~hit)
            cells["test_misses"] = [
                {"track": tracks.track_id[i], "minutes": round(float(minutes[i]), 1),
                 "rank": int(rank[i]) + 1, "cosine_own": round(float(sims[i, i]), 3),
                 "cosine_top": round(float(sims[i].max()), 3)} for i in test]
            per[transform] = cells
        out["embedders"][label] = per
    return out


def evaluate_all(tracks: pd.DataFrame, spaces_: dict[str, tuple]) -> list[dict]:
    """Every embedder (of `spaces`) x catalog x transform x query half."""
    catalogs = {"all": np.arange(len(tracks)),
                "issue4": np.flatnonzero(tracks.source.isin(ISSUE_PACKAGES).to_numpy())}
    table = []
    for label, (raw, space) in spaces_.items():
        for catalog, keep in catalogs.items():
            sub = tracks.iloc[keep].reset_index(drop=True)
            halves = {h: np.flatnonzero(sub.half.to_numpy() == h) for h in ("val", "test")}
            for transform in TRANSFORMS:
                cat, qry = space(raw["catalog"][keep], raw[transform][keep])
                for half, rows in halves.items():
                    table.append({"embedder": label, "catalog": catalog, "n_catalog": len(sub),
                                  "transform": transform, "split": half,
                                  **retrieval_metrics(cat, qry, sub, rows)})
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None,
                        help="a trained classifier run folder, to report the classifier embedder")
    args = parser.parse_args(argv)
    manifest = pd.read_csv(fetch_real_audio(AUDIO_DIR, PACKAGES))
    t0 = time.perf_counter()
    tracks, dropped = select_tracks(manifest)
    selection = select_on_val(tracks)
    print({k: v for k, v in selection.items() if not k.startswith("stage")}, flush=True)
    spaces_ = spaces(tracks, args.run)
    table = evaluate_all(tracks, spaces_)
    misses = by_length(tracks, spaces_)
    frame = pd.DataFrame(table)
    print(frame[frame.split == "test"].to_string(index=False))
    result = {
        "selection_on_val": selection,
        "table": table,
        "by_track_length": misses,
        "protocol": __doc__.split("\n\n", 1)[1].split("CPU:")[0].strip(),
        "tracks": {"kept": len(tracks), "per_source": tracks.source.value_counts().to_dict(),
                   "per_split": tracks.half.value_counts().to_dict(),
                   "val": sorted(tracks.track_id[tracks.half == "val"]),
                   "dropped": dropped},
        "classifier": (f"reported: run {args.run}" if args.run else
                       "skipped: no trained run given (--run)"),
        "sources": package_versions(AUDIO_DIR, PACKAGES),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_result(RESULTS, result, config={"excerpt_s": EXCERPT_S, "sr": SR, "k": K,
                                          "transforms": list(TRANSFORMS),
                                          "run": str(args.run) if args.run else None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
