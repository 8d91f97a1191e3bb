"""Can the classifier learn real round-trip artifacts in real music? Train and test on it.

The issue's quality bar: on real recordings where the "AI" class is the same music passed
through a mel-inversion (or neural-codec-like) round trip, the `tiny` classifier must reach
test ROC-AUC >= 0.99. This script builds such a corpus from the Debian game soundtracks of
``real_audio.py`` (real, human-made recordings), trains `tiny` on it with the project's own
`helpers.train.train`, scores the test split with `helpers.evaluate.evaluate`, and writes
``results/real_detection.json``.

The corpus (under ``_work/real_detection/``, git-ignored, rebuilt by this script)
---------------------------------------------------------------------------------
* **Excerpts.** Every track is decoded whole, downmixed, resampled to 22.05 kHz (soxr HQ) and
  cut into non-overlapping 10 s excerpts; a tail shorter than 10 s is dropped, and so is an
  excerpt quieter than -50 dBFS RMS (silence would only be scaled-up noise).
* **Paired design.** Every excerpt appears in *both* classes: its ``human`` version is the
  original excerpt, its ``ai`` version is the same excerpt through the round trip. The
  classes therefore hold exactly the same music, composers and excerpt boundaries, and the
  round trip is the only systematic difference. Both versions carry the excerpt's *track* as
  ``track_id``, so the two versions (and all excerpts of one song) are on the same side of
  every split.
* **Splits by package** (one package = one composer or small team), as ``real_audio.py``
  assigns them: extremetuxracer-data trains, lincity-ng-data validates (early stopping,
  calibration, thresholds), xmoto-data tests: the test music is by an unseen composer.
* **Loudness.** Both versions go through the same `helpers.synth.normalize_loudness`
  (-20 dBFS RMS, peak guard at -0.5 dBFS) plus a level offset drawn uniformly in +-1 dB from
  the same distribution for either class (as the synthetic corpus does, so that a fixed RMS
  difference the round trip leaves outside the front end's band cannot label a clip).
  Written as 16-bit PCM WAV at 22.05 kHz for both classes.
* **Round trips** (`VARIANTS`, one training run and one manifest each, reported separately):

  - ``griffin_lim``: `helpers.synth.apply_artifacts` with the default ``ArtifactConfig()``:
    decimate 2x (to 11.025 kHz), 128-band mel spectrogram (n_fft 1024, hop 256), mel
    inversion, 16 Griffin-Lim iterations, then 2x transposed-convolution-style upsampling
    with a checkerboard kernel (gain 0.25): a cheap mel-domain generator's vocoder/decoder.
  - ``codec``: the same function with only its neural-codec-like stage on: band-limit to
    8 kHz and round the STFT log-magnitude to 3 dB steps, keeping the phase (no Griffin-Lim,
    no upsampling).

Model and training: ``tiny`` preset, ``FrontEndConfig(duration=10.0)`` (16 kHz, 128 mels up to
8 kHz), ``TrainConfig(epochs=--epochs, patience=--patience, seed=seed)``, otherwise the
defaults. Protocol: every setting is fixed before the run; each variant is trained once per
``--seeds`` seed, and each run's test split is scored once, after training. Nothing is chosen
by its test score (no retries, no best-of): ``--target`` is only compared with the mean.

Reuse: the excerpt folders (``human/``, ``ai_<variant>/``) and each variant's feature cache are
kept between runs only while their fingerprint (the settings that made them and the .deb files
the music came from) matches; otherwise they are rebuilt. Runs are always trained afresh.

Run from the repository root::

    python -m benchmarks.real_detection
    python -m benchmarks.real_detection --variants griffin_lim --epochs 20
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.provenance import discard_if_stale, prepare, stamp, write_result  # noqa: E402
from benchmarks.real_audio import DEFAULT_OUT as AUDIO_DIR  # noqa: E402
from benchmarks.real_audio import (  # noqa: E402
    DEFAULT_PACKAGES,
    fetch_real_audio,
    package_versions,
)
from helpers import jit  # noqa: E402
from helpers.artifacts import ArtifactConfig, apply_artifacts, normalize_loudness  # noqa: E402
from helpers.audio import read_audio, resample  # noqa: E402
from helpers.config import FrontEndConfig  # noqa: E402
from helpers.io import atomic_path, read_json, write_csv  # noqa: E402
from helpers.train import TrainConfig  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work" / "real_detection"
RESULTS = Path(__file__).resolve().parent / "results" / "real_detection.json"

SAMPLE_RATE = 22_050
EXCERPT_S = 10.0
MIN_RMS_DBFS = -50.0
TARGET_RMS_DBFS = -20.0
LEVEL_JITTER_DB = 1.0

#: The round trips that make the "ai" class (see the module docstring).
VARIANTS: dict[str, ArtifactConfig] = {
    "griffin_lim": ArtifactConfig(),
    "codec": ArtifactConfig(griffin_lim=False, upsample_factor=1, codec=True),
}


def _safe(name: str) -> str:
    """A file-name-safe version of a track title (some have spaces and dashes)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def _write_wav(path: Path, y: np.ndarray) -> None:
    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(tmp, y, SAMPLE_RATE, format="WAV", subtype="PCM_16")


def _level(y: np.ndarray, key: str) -> np.ndarray:
    """Loudness normalisation, identical for both classes, with a same-distribution offset."""
    jitter = np.random.default_rng(_seed("level", key)).uniform(-1.0, 1.0)
    return normalize_loudness(y, TARGET_RMS_DBFS + LEVEL_JITTER_DB * jitter)


def _build_track(track: dict, audio_dir: str, out_dir: str, variants: list[str],
                 max_excerpts: int | None = None) -> list[dict]:
    """Cut one track into excerpts and write each excerpt's human and ai versions."""
    y, sr = read_audio(Path(audio_dir) / track["path"], max_seconds=None)
    y = resample(y, sr, SAMPLE_RATE)
    n = int(EXCERPT_S * SAMPLE_RATE)
    package, title = track["source"], _safe(track["title"])
    rows = []
    for k in range(min(len(y) // n, max_excerpts or len(y))):
        excerpt = y[k * n:(k + 1) * n].astype(np.float64)
        rms_db = 20 * np.log10(np.sqrt(np.mean(excerpt**2)) + 1e-12)
        if rms_db < MIN_RMS_DBFS:
            continue
        excerpt_id = f"{package}/{title}/{k:03d}"
        common = {"split": track["split"], "track_id": track["track_id"], "title": track["title"],
                  "artist": package, "genre": package, "source": package,
                  "excerpt_id": excerpt_id, "start_s": k * EXCERPT_S}
        human = Path("human") / package / f"{title}_{k:03d}.wav"
        if not (Path(out_dir) / human).exists():
            _write_wav(Path(out_dir) / human, _level(excerpt, f"human/{excerpt_id}"))
        rows.append({"path": human.as_posix(), "label": "human", "variant": "", **common})
        for name in variants:
            ai = Path(f"ai_{name}") / package / f"{title}_{k:03d}.wav"
            if not (Path(out_dir) / ai).exists():
                rng = np.random.default_rng(_seed(name, excerpt_id))
                fake = apply_artifacts(excerpt, SAMPLE_RATE, VARIANTS[name], rng)
                _write_wav(Path(out_dir) / ai, _level(fake, f"{name}/{excerpt_id}"))
            rows.append({"path": ai.as_posix(), "label": "ai", "variant": name, **common})
    return rows


def _one_blas_thread() -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


def build_corpus(
    audio_dir: Path, out_dir: Path, variants: list[str], n_jobs: int = 2,
    packages: tuple[str, ...] = tuple(DEFAULT_PACKAGES), max_excerpts: int | None = None,
) -> pd.DataFrame:
    """Write every excerpt's versions under `out_dir` and return the full table.

    Resumable: WAVs already written are kept (each is written through a temporary file).

    Returns
    -------
    pd.DataFrame
        One row per WAV: manifest columns plus ``variant`` (``""`` for human), ``excerpt_id``
        and ``start_s``; paths relative to `out_dir`.
    """
    tracks = pd.read_csv(fetch_real_audio(audio_dir, packages))
    # The cap keeps the extra widelands composer CPU-sized; the other packages stay whole.
    args = [(t, str(audio_dir), str(out_dir), variants,
             max_excerpts if t["source"] == "widelands-data" else None)
            for t in tracks.to_dict("records")]
    if n_jobs <= 1:
        _one_blas_thread()
        parts = [_build_track(*a) for a in args]
    else:
        with jit.process_pool(n_jobs) as pool:
            parts = list(pool.map(_build_track, *zip(*args, strict=True)))
    return pd.DataFrame([row for part in parts for row in part])


def corpus_settings(variants: list[str], sources: dict[str, str]) -> dict[str, dict]:
    """The fingerprinted settings of each excerpt folder: ``human`` and ``ai_<variant>``."""
    common = {"sample_rate": SAMPLE_RATE, "excerpt_s": EXCERPT_S, "min_rms_dbfs": MIN_RMS_DBFS,
              "target_rms_dbfs": TARGET_RMS_DBFS, "level_jitter_db": LEVEL_JITTER_DB,
              "sources": sources}
    return {"human": common, **{f"ai_{name}": {**common, "round_trip": asdict(VARIANTS[name])}
                                for name in variants}}


def build_fingerprinted_corpus(audio_dir: Path, work: Path, variants: list[str], n_jobs: int,
                               packages: tuple[str, ...], max_excerpts: int | None
                               ) -> tuple[pd.DataFrame, dict[str, dict]]:
    """`build_corpus`, after removing every excerpt folder whose fingerprint does not match.

    Returns the table and, per folder, its stamp (the settings the WAVs were made with).
    """
    fetch_real_audio(audio_dir, packages)  # the .deb files decide `sources`
    settings = corpus_settings(variants, package_versions(audio_dir, packages))
    for folder, wanted in settings.items():
        discard_if_stale(work / folder, wanted)
    table = build_corpus(audio_dir, work, variants, n_jobs, packages, max_excerpts)
    return table, {folder: stamp(work / folder, wanted) for folder, wanted in settings.items()}


def _write_manifest(table: pd.DataFrame, path: Path) -> Path:
    return write_csv(path, table)


def describe(table: pd.DataFrame) -> dict:
    """Packages, tracks, excerpts and clips per split and class, for the results file."""
    human = table[table["label"] == "human"]
    out = {}
    for split, rows in human.groupby("split"):
        out[split] = {
            "packages": sorted(rows["source"].unique()),
            "tracks": int(rows["track_id"].nunique()),
            "excerpts": int(len(rows)),
            "minutes": round(len(rows) * EXCERPT_S / 60, 1),
        }
    return out


def train_and_test(manifest: Path, run_dir: Path, cache_dir: Path, cfg: TrainConfig) -> dict:
    """Train `tiny` on the manifest's train/val rows, evaluate on test; headline numbers."""
    from helpers.evaluate import evaluate
    from helpers.train import train

    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run each time (the feature cache is kept)
    frontend = FrontEndConfig(duration=EXCERPT_S)
    t0 = time.perf_counter()
    train(manifest, run_dir, preset="tiny", train_config=cfg, cache_dir=cache_dir,
          frontend=frontend, progress=False)
    wall_train = time.perf_counter() - t0
    metrics = evaluate(run_dir, manifest, split="test", cache_dir=cache_dir, figures=False,
                       progress=False)
    info = read_json(run_dir / "run.json")
    preds = pd.read_csv(run_dir / "eval_test" / "predictions.csv")
    paired = _paired_accuracy(preds, manifest)
    at_t = metrics["at_threshold"]
    return {
        "train_config": cfg.to_dict(),
        "epochs_run": int(info["epochs_run"]),
        "best_epoch": int(info["best_epoch"]),
        "stopped_early": bool(info["stopped_early"]),
        "n_parameters": int(info["n_parameters"]),
        "val_roc_auc": _round(info["val_metrics"]["at_threshold"].get("roc_auc")),
        "test": {
            "roc_auc": _round(metrics["roc_auc"]),
            "pr_auc": _round(metrics["pr_auc"]),
            "accuracy": _round(metrics["accuracy"]),
            "f1": _round(metrics["f1"]),
            "fpr_on_human": _round(metrics["fpr"]),
            "recall_on_ai": _round(metrics["recall"]),
            "threshold": _round(metrics["threshold"]),
            "confusion_tn_fp_fn_tp": at_t.get("confusion"),  # [[tn, fp], [fn, tp]]
            "at_fpr_threshold": {k: _round(metrics["at_fpr_threshold"].get(k))
                                 for k in ("fpr", "recall", "accuracy", "f1")},
            "target_fpr": metrics.get("target_fpr"),
            "n_human": metrics["n_human"],
            "n_ai": metrics["n_ai"],
            "paired_accuracy": paired,
        },
        "timings_s": {"train_call_wall": round(wall_train, 1),
                      "training_epochs": info["timings"].get("train_s"),
                      "feature_preprocess": info["timings"].get("preprocess_s")},
    }


def _paired_accuracy(preds: pd.DataFrame, manifest: Path) -> float | None:
    """Share of test excerpts whose ai version scores higher than its own human version."""
    table = pd.read_csv(manifest)
    table["path"] = [os.path.normpath(manifest.parent / p) for p in table["path"]]
    preds = preds.assign(path=[os.path.normpath(p) for p in preds["path"]])
    merged = preds.merge(table[["path", "excerpt_id"]], on="path")
    wide = merged.pivot_table(index="excerpt_id", columns="label", values="p_ai")
    if not {"ai", "human"} <= set(wide.columns):
        return None
    wide = wide.dropna()
    return _round(float((wide["ai"] > wide["human"]).mean())) if len(wide) else None


def _round(value: object, digits: int = 4) -> object:
    return round(float(value), digits) if isinstance(value, int | float | np.floating) else value


def machine_info() -> dict:
    """What `provenance` does not record: the device training ran on."""
    return {"device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)}


def run_folder(work: Path, variant: str, seed: int) -> Path:
    """The run folder of one variant and seed (`real_robustness` reads it)."""
    return work / f"run_{variant}_seed{seed}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", type=Path, default=AUDIO_DIR,
                        help="real_audio.py work folder (fetched if needed)")
    parser.add_argument("--work", type=Path, default=WORK, help="corpus, cache and runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one training per seed; all are reported, none is selected")
    parser.add_argument("--target", type=float, default=0.99,
                        help="the bar the mean test ROC-AUC is compared with (reported only)")
    parser.add_argument("--n-jobs", type=int, default=2, help="processes building the corpus")
    parser.add_argument("--with-widelands", action="store_true",
                        help="add widelands-data to the training composers")
    parser.add_argument("--max-excerpts-per-track", type=int, default=None,
                        help="cap excerpts per widelands track (keeps it CPU-sized)")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)

    print(f"building excerpts ({', '.join(args.variants)}) ...", flush=True)
    t0 = time.perf_counter()
    packages = (*DEFAULT_PACKAGES, *(["widelands-data"] if args.with_widelands else []))
    table, corpus_stamps = build_fingerprinted_corpus(
        args.audio.resolve(), work, args.variants, args.n_jobs, packages,
        args.max_excerpts_per_track)
    build_s = time.perf_counter() - t0
    _write_manifest(table, work / "all_clips.csv")
    data = describe(table)
    print(f"{len(table)} WAVs in {build_s:.0f} s: " + ", ".join(
        f"{s} {d['excerpts']} excerpts of {d['tracks']} tracks" for s, d in data.items()),
        flush=True)

    columns = ["path", "label", "split", "track_id", "title", "artist", "genre", "source",
               "excerpt_id", "start_s"]
    results = {}
    frontend = FrontEndConfig(duration=EXCERPT_S)
    for name in args.variants:
        rows = table[(table["label"] == "human") | (table["variant"] == name)]
        manifest = _write_manifest(rows[columns], work / f"manifest_{name}.csv")
        # Features are cached by path, so the cache is only valid for these exact WAVs.
        cache = work / f"cache_{name}"
        cache_used = prepare(cache, {"frontend": frontend.to_dict(), "corpus": {
            f: corpus_stamps[f]["fingerprint"] for f in ("human", f"ai_{name}")}},
            lambda cache=cache: cache.mkdir(parents=True))
        runs = []
        for seed in args.seeds:
            print(f"[{name}] training tiny, seed {seed}, {args.epochs} epochs ...", flush=True)
            runs.append({"seed": seed, **train_and_test(
                manifest, run_folder(work, name, seed), cache,
                TrainConfig(epochs=args.epochs, patience=args.patience, seed=seed))})
            print(f"[{name}] seed {seed}: test ROC-AUC {runs[-1]['test']['roc_auc']}",
                  flush=True)
        aucs = [r["test"]["roc_auc"] for r in runs]
        mean_auc = float(np.mean(aucs)) if None not in aucs else None
        results[name] = {
            "round_trip": {"function": f"{apply_artifacts.__module__}.apply_artifacts",
                           "artifact_config": asdict(VARIANTS[name])},
            "manifest": str(manifest.relative_to(Path.cwd()) if manifest.is_relative_to(
                Path.cwd()) else manifest),
            "clips_per_split_class": {
                s: {lab: int(n) for lab, n in g.groupby("label").size().items()}
                for s, g in rows.groupby("split")},
            "feature_cache": cache_used,
            "runs": runs,
            "test_roc_auc_per_seed": aucs,
            "test_roc_auc": _round(mean_auc),
            "meets_target": bool(mean_auc is not None and mean_auc >= args.target),
        }

    result = {
        "benchmark": "real_detection",
        "description": __doc__.split("\n\n")[0],
        "target_test_roc_auc": args.target,
        "protocol": "settings fixed before the run (train_config in each run); one training "
                    "per seed; the test split is scored once per run, after training; no "
                    "result is chosen by its test score (test_roc_auc = mean over seeds)",
        "data": {
            "source": "benchmarks/real_audio.py: Debian game soundtracks (real, human-made "
                      "recordings), split by package",
            "design": "paired: every excerpt appears as human (original) and as ai (same "
                      "excerpt through the round trip); track_id = the track, so an excerpt's "
                      "versions and a song's excerpts never straddle splits",
            "excerpt_seconds": EXCERPT_S,
            "sample_rate": SAMPLE_RATE,
            "format": "WAV PCM_16, mono, both classes",
            "loudness": f"normalize_loudness to {TARGET_RMS_DBFS} dBFS RMS (peak guard -0.5 "
                        f"dBFS) + uniform +-{LEVEL_JITTER_DB} dB offset, same for both classes",
            "dropped": f"tails < {EXCERPT_S} s and excerpts quieter than {MIN_RMS_DBFS} dBFS RMS",
            "splits": data,
            "excerpt_folders": corpus_stamps,
        },
        "model": {"preset": "tiny", "frontend": FrontEndConfig(duration=EXCERPT_S).to_dict()},
        "variants": results,
        "timings_s": {"build_corpus": round(build_s, 1),
                      "total": round(time.perf_counter() - t_start, 1)},
        "machine": machine_info(),
    }
    write_result(args.out, result, vars(args))
    for name, r in results.items():
        print(f"{name}: test ROC-AUC {r['test_roc_auc']} over seeds {args.seeds} "
              f"(per seed {r['test_roc_auc_per_seed']}; target {args.target}: "
              f"{'met' if r['meets_target'] else 'NOT met'})")
    print(f"wrote {args.out} in {result['timings_s']['total']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
