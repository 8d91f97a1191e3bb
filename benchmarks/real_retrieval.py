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

Embedders: ``baseline`` (MFCC-20 + chroma + spectral contrast, mean/std, standardised on the
catalog, cosine; written here in ~20 lines), ``features`` (the shipped embedder, unchanged),
``features2`` (`helpers.embed.FeatureEmbedder2`, its defaults: the blocks chosen greedily on
the val queries by `greedy_blocks`), and ablations of the changes that lead
from one to the other, each added one at a time. ``classifier`` is reported only when a
trained run is given (``--run``). Catalog standardisation (and any whitening) is fitted on the
catalog vectors only, never on queries.

Selection: tracks are split in two halves, stratified by package (``val``/``test``, by a hash
of the track name). Every setting was chosen on the ``val`` queries only (both transforms);
the ``test`` queries are reported, never used to choose. The catalog searched holds all kept
tracks in both cases (a query competes with every track).

CPU: decoded excerpts and frame descriptors are cached in ``_work/real_retrieval`` (keyed by
track, excerpt and transform); a cold run decodes ~50 tracks and runs ~50 Griffin-Lim round
trips (a few minutes on one core). Run from the repository root::

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.provenance import write_result  # noqa: E402
from benchmarks.real_audio import DEFAULT_OUT as AUDIO_DIR  # noqa: E402
from benchmarks.real_audio import (  # noqa: E402
    DEFAULT_PACKAGES,
    WIDELANDS,
    fetch_real_audio,
    package_versions,
)
from helpers.artifacts import apply_artifacts  # noqa: E402
from helpers.audio import resample  # noqa: E402
from helpers.embed import (  # noqa: E402
    FEATURE2_BLOCKS,
    FeatureEmbedder,
    FeatureEmbedder2,
    Standardizer,
    l2_normalise,
)
from helpers.io import write_npy  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work" / "real_retrieval"
RESULTS = Path(__file__).resolve().parent / "results" / "real_retrieval.json"
PACKAGES = (*DEFAULT_PACKAGES, WIDELANDS)
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
    write_npy(path, np.asarray(y, np.float32))
    return y


def select_tracks(manifest: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Music only: soundtrack folders, tracks long enough for two excerpts, both audible.

    Returns the kept tracks (with their ``half``) and the dropped music tracks with reasons.
    """
    kept, dropped = [], []
    for _, t in manifest.iterrows():
        if not MUSIC_DIRS.search(t.path):
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


def embedder_space(embedder, catalog: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, ...]:
    """The shipped embedder's own fit/transform on raw catalog and query vectors."""
    embedder.fit(catalog)
    return embedder.transform(catalog), embedder.transform(queries)


def variants() -> dict[str, dict]:
    """FeatureEmbedder2 settings, one change at a time; ``features2`` is its default."""
    return {
        "features2[v1 descriptors only]": {"blocks": ("v1",), "block_weighting": False},
        "features2[+percentiles]": {"blocks": ("v1", "pct"), "block_weighting": False},
        "features2[+mfcc deltas]": {"blocks": ("v1", "dmfcc"), "block_weighting": False},
        "features2[+mel bands]": {"blocks": ("v1", "mel"), "block_weighting": False},
        "features2[+tempogram]": {"blocks": ("v1", "tempogram"), "block_weighting": False},
        "features2[v1, block weighting]": {"blocks": ("v1",), "block_weighting": True},
        "features2[all, block weighting]": {"blocks": tuple(FEATURE2_BLOCKS)},
        "features2[all, no block weighting]": {"blocks": tuple(FEATURE2_BLOCKS),
                                               "block_weighting": False},
        "features2": {},  # the defaults: the greedy choice on val (greedy_blocks)
    }


# ------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------


def retrieval_metrics(cat: np.ndarray, qry: np.ndarray, tracks: pd.DataFrame,
                      rows: np.ndarray) -> dict[str, float]:
    """Track recall@5, source P@5 (own track counted) and P@5 with the own track removed."""
    sources = tracks.source.to_numpy()
    sims = qry[rows] @ cat.T  # (n_queries, n_catalog); query i's own track is catalog rows[i]
    recall, p5, p5_other = [], [], []
    for i, own in enumerate(rows):
        order = np.argsort(-sims[i], kind="stable")
        top = order[:K]
        recall.append(own in top)
        p5.append(np.mean(sources[top] == sources[own]))
        others = order[order != own][:K]
        p5_other.append(np.mean(sources[others] == sources[own]))
    return {"track_recall_at_5": round(float(np.mean(recall)), 4),
            "source_p_at_5": round(float(np.mean(p5)), 4),
            "source_p_at_5_others": round(float(np.mean(p5_other)), 4),
            "n_queries": len(rows)}


# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------


def raw_vectors(tracks: pd.DataFrame, fn, name: str) -> dict[str, np.ndarray]:
    """Raw vectors of the catalog and of each query transform, cached per embedder name."""
    out = {}
    for key, half, transform in [("catalog", 0, "clean"),
                                 *[(t, 1, t) for t in TRANSFORMS]]:
        path = WORK / "vectors" / f"{name}_{key}.npy"
        if path.exists() and len(np.load(path)) == len(tracks):
            out[key] = np.load(path)
            continue
        out[key] = np.stack([fn(cached_audio(t, half, transform)) for t in tracks.itertuples()])
        write_npy(path, out[key].astype(np.float32))
    return out


def evaluate_all(tracks: pd.DataFrame, run_dir: Path | None) -> dict:
    spaces = {"baseline": (baseline_raw, standardised_cosine, "baseline")}
    shipped = FeatureEmbedder()
    spaces["features"] = (lambda y: shipped.embed_raw_audio(y, SR),
                          lambda c, q: embedder_space(shipped, c, q), "features")
    full = FeatureEmbedder2(blocks=tuple(FEATURE2_BLOCKS))  # every block; variants select
    for label, kwargs in variants().items():
        emb = FeatureEmbedder2(**kwargs)
        spaces[label] = (lambda y: full.embed_raw_audio(y, SR),
                         lambda c, q, e=emb: embedder_space(e, full.select(c, e),
                                                            full.select(q, e)),
                         "features2_full")
    if run_dir is not None:
        from helpers.embed import ClassifierEmbedder  # torch model: only when asked

        clf = ClassifierEmbedder(run_dir)
        spaces["classifier"] = (lambda y: clf.embed_raw_audio(y, SR),
                                lambda c, q: (l2_normalise(c), l2_normalise(q)), "classifier")
    halves = {h: np.flatnonzero(tracks.half.to_numpy() == h) for h in ("val", "test")}
    halves["all"] = np.arange(len(tracks))
    table = []
    for label, (fn, space, cache_name) in spaces.items():
        t0 = time.perf_counter()
        raw = raw_vectors(tracks, fn, cache_name)
        for transform in TRANSFORMS:
            cat, qry = space(raw["catalog"], raw[transform])
            for half, rows in halves.items():
                table.append({"embedder": label, "transform": transform, "split": half,
                              **retrieval_metrics(cat, qry, tracks, rows)})
        print(f"{label}: {time.perf_counter() - t0:.1f} s", flush=True)
    return {"table": table}


def val_score(cat: np.ndarray, queries: dict[str, np.ndarray], tracks: pd.DataFrame) -> float:
    """The selection criterion: mean of track R@5 and source P@5 over both transforms, val."""
    rows = np.flatnonzero(tracks.half.to_numpy() == "val")
    metrics = [retrieval_metrics(cat, q, tracks, rows) for q in queries.values()]
    return float(np.mean([[m["track_recall_at_5"], m["source_p_at_5"]] for m in metrics]))


def greedy_blocks(tracks: pd.DataFrame) -> dict:
    """Forward selection of `FEATURE2_BLOCKS` (then weighting) on the val queries only."""
    full = FeatureEmbedder2(blocks=tuple(FEATURE2_BLOCKS))
    raw = {k: np.load(WORK / "vectors" / f"features2_full_{k}.npy")
           for k in ("catalog", *TRANSFORMS)}

    def score(blocks: tuple[str, ...], weighting: bool) -> float:
        emb = FeatureEmbedder2(blocks=blocks, block_weighting=weighting)
        emb.fit(full.select(raw["catalog"], emb))
        return val_score(emb.transform(full.select(raw["catalog"], emb)),
                         {t: emb.transform(full.select(raw[t], emb)) for t in TRANSFORMS},
                         tracks)

    chosen, best, steps = ("v1",), score(("v1",), True), []
    while True:
        trials = {b: score((*chosen, b), True) for b in FEATURE2_BLOCKS if b not in chosen}
        steps.append({"blocks": list(chosen), "val_score": round(best, 4),
                      "candidates": {b: round(v, 4) for b, v in trials.items()}})
        if not trials or max(trials.values()) <= best:
            break
        add = max(trials, key=trials.get)
        chosen, best = (*chosen, add), trials[add]
    unweighted = score(chosen, False)
    return {"blocks": list(chosen), "block_weighting": best >= unweighted,
            "val_score": round(max(best, unweighted), 4),
            "val_score_unweighted": round(unweighted, 4), "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None,
                        help="a trained classifier run folder, to report the classifier embedder")
    args = parser.parse_args(argv)
    manifest = pd.read_csv(fetch_real_audio(AUDIO_DIR, PACKAGES))
    t0 = time.perf_counter()
    tracks, dropped = select_tracks(manifest)
    result = evaluate_all(tracks, args.run)
    result["greedy_selection_on_val"] = greedy_blocks(tracks)
    print(result["greedy_selection_on_val"])
    table = pd.DataFrame(result["table"])
    print(table[table.split != "all"].to_string(index=False))
    result.update({
        "protocol": __doc__.split("\n\n", 1)[1].split("CPU:")[0].strip(),
        "selection": "settings chosen on the val queries (both transforms); test reported",
        "tracks": {"kept": len(tracks), "per_source": tracks.source.value_counts().to_dict(),
                   "per_split": tracks.half.value_counts().to_dict(),
                   "val": sorted(tracks.track_id[tracks.half == "val"]),
                   "dropped": dropped},
        "classifier": ("reported" if args.run else
                       "skipped: no trained run given (--run); none exists in this checkout"),
        "sources": package_versions(AUDIO_DIR, PACKAGES),
        "seconds": round(time.perf_counter() - t0, 1),
    })
    write_result(RESULTS, result, config={"excerpt_s": EXCERPT_S, "sr": SR, "k": K,
                                          "transforms": list(TRANSFORMS),
                                          "run": str(args.run) if args.run else None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
