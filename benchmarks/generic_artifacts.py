"""Does a detector trained on generic artifact primitives catch families it never saw?

The question (issue 11's hardest target): trained on some of the project's "AI" families,
Model 1 scores 0.31-0.78 ROC-AUC on the family left out (`real_detection`). Real users meet
generators nobody trained on. One idea worth measuring: train on no family at all, but on
*primitives* that many neural generators share, each applied alone to human music, and test
on all three families (`helpers.twins.FAMILIES`), every one of them unseen.

Primitives (`PRIMITIVES`, each a documented function below, deterministic per track):

* ``phase_jitter``: STFT phase perturbed at random (what imperfect phase reconstruction
  leaves: vocoders, Griffin-Lim);
* ``envelope_smoothing``: the magnitude spectrum smoothed across frequency, phase kept (what a
  generator that predicts a coarse spectrogram loses: the fine harmonic detail);
* ``linear_upsampling``: down to a third of the rate, back up by linear interpolation (the
  imaging of cheap upsampling layers);
* ``mulaw_8bit``: 8-bit mu-law quantisation (the waveform resolution of sample-level models).

**Caveat, said before any number:** the primitives are kinds of trace the three families also
leave (Griffin-Lim's phase and mel smoothing, the autoencoder's upsampling, Opus' coarse
spectral envelope), so this measures transfer from primitives to composite pipelines, not to
an unrelated generator. No primitive is one of the families, and no family's audio is used
for training, validation, calibration or any choice.

Protocol: `real_detection`'s tracks, split by package and paired excerpts. Training uses the
train packages' human excerpts and their primitive versions. Validation (epoch, calibration,
threshold) uses the validation composer's human excerpts and their primitive versions. Test
uses each family's test twins beside the human test excerpts, clean. Models: Model 1 (``tiny``,
the CLI defaults, ``--seeds``) and the artifact-feature LR baseline trained on the same
files. Everything was fixed before the first test number was read, and there is one
configuration: nothing here is tuned.

Run from the repository root (about 15 minutes on 2 CPU cores once `real_detection`'s twins
exist; finished pieces are reused)::

    python -m benchmarks.generic_artifacts
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks import real_detection as rd  # noqa: E402
from benchmarks.provenance import prepare, write_result  # noqa: E402
from helpers import jit  # noqa: E402
from helpers.artifacts import normalize_loudness  # noqa: E402
from helpers.cache import preprocess  # noqa: E402
from helpers.io import atomic_path  # noqa: E402
from helpers.twins import FAMILIES, select  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "generic_artifacts.json"
OUT = rd.WORK / "generic_artifacts"
N_FFT, HOP = 1024, 256
#: Bump when a primitive changes, so cached audio is rebuilt.
VERSION = 1


def _stft(y: np.ndarray) -> np.ndarray:
    return librosa.stft(y, n_fft=N_FFT, hop_length=HOP)


def _istft(spec: np.ndarray, length: int) -> np.ndarray:
    return librosa.istft(spec, hop_length=HOP, n_fft=N_FFT, length=length).astype(np.float32)


def phase_jitter(y: np.ndarray, sr: int, rng: np.random.Generator,
                 max_rad: float = np.pi / 3) -> np.ndarray:
    """Each STFT bin's phase moved by a uniform random angle in ``[-max_rad, max_rad]``."""
    spec = _stft(y)
    spec = spec * np.exp(1j * rng.uniform(-max_rad, max_rad, spec.shape))
    return _istft(spec, len(y))


def envelope_smoothing(y: np.ndarray, sr: int, rng: np.random.Generator,
                       bins: int = 9) -> np.ndarray:
    """The log-magnitude averaged over `bins` neighbouring frequency bins, phase kept."""
    spec = _stft(y)
    log_mag = np.log(np.abs(spec) + 1e-7)
    kernel = np.ones(bins) / bins
    smooth = np.apply_along_axis(lambda col: np.convolve(col, kernel, mode="same"), 0, log_mag)
    return _istft(np.exp(smooth) * np.exp(1j * np.angle(spec)), len(y))


def linear_upsampling(y: np.ndarray, sr: int, rng: np.random.Generator,
                      factor: int = 3) -> np.ndarray:
    """Band-limited down to ``sr / factor``, then back up by linear interpolation."""
    low = librosa.resample(y, orig_sr=sr, target_sr=sr // factor, res_type="soxr_hq")
    t_low = np.arange(len(low)) * factor
    return np.interp(np.arange(len(y)), t_low, low).astype(np.float32)


def mulaw_8bit(y: np.ndarray, sr: int, rng: np.random.Generator, mu: int = 255) -> np.ndarray:
    """Peak-normalised, mu-law encoded to 8 bits and decoded, then back to the input level."""
    peak = float(np.max(np.abs(y))) or 1.0
    x = np.clip(y / peak, -1.0, 1.0)
    code = np.round((np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu) + 1) / 2 * mu)
    z = 2 * code / mu - 1
    return (peak * np.sign(z) * np.expm1(np.abs(z) * np.log1p(mu)) / mu).astype(np.float32)


PRIMITIVES = {"phase_jitter": phase_jitter, "envelope_smoothing": envelope_smoothing,
              "linear_upsampling": linear_upsampling, "mulaw_8bit": mulaw_8bit}


def _make_one(job: tuple[str, str, str]) -> None:
    source, primitive, target = job
    y, sr = sf.read(source, dtype="float32")
    rng = np.random.default_rng(zlib.crc32(f"{primitive}/{Path(source).name}".encode()))
    z = PRIMITIVES[primitive](y, sr, rng)
    # The human excerpt's own RMS: level never tells the classes apart.
    rms_dbfs = 20 * np.log10(np.sqrt(np.mean(y.astype(np.float64) ** 2)) + 1e-12)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(target), suffix=".wav") as tmp:
        sf.write(tmp, normalize_loudness(z, rms_dbfs), sr, format="WAV", subtype="PCM_16")


def primitive_twins(paired: pd.DataFrame, jobs: int) -> pd.DataFrame:
    """Each primitive applied to every train and val human excerpt of the paired design."""
    human = paired[(paired["family"] == "human") & paired["split"].isin(["train", "val"])]
    rows, todo = [], []
    for primitive in PRIMITIVES:
        for row in human.to_dict("records"):
            target = OUT / primitive / Path(row["path"]).name
            rows.append({**row, "path": str(target), "label": "ai", "family": primitive})
            todo.append((row["path"], primitive, str(target)))

    def build() -> None:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_make_one, todo, chunksize=8))

    settings = {"version": VERSION, "sources": sorted(human["path"]), "n_fft": N_FFT,
                "hop": HOP, "primitives": list(PRIMITIVES)}
    prepare(OUT, settings, build)
    return pd.DataFrame(rows)


def audible_difference(paired: pd.DataFrame, aux: pd.DataFrame) -> dict[str, float]:
    """Median log-spectral distance (dB) of each primitive's output to its source excerpt."""
    human = {r["track_id"]: r["path"] for r in paired[paired["family"] == "human"]
             .to_dict("records")}
    out = {}
    for primitive, rows in aux.groupby("family"):
        dists = []
        for row in rows.head(8).to_dict("records"):
            a, _ = sf.read(human[row["track_id"]], dtype="float32")
            b, _ = sf.read(row["path"], dtype="float32")
            la, lb = (10 * np.log10(np.abs(_stft(x)) ** 2 + 1e-10) for x in (a, b))
            dists.append(float(np.sqrt(np.mean((la - lb) ** 2))))
        out[primitive] = round(float(np.median(dists)), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    jit.prepare()
    tracks, _ = rd.human_tracks()
    paired = rd.twins(tracks, "paired", None)
    aux = primitive_twins(paired, args.jobs)
    fit = pd.concat([paired[(paired["family"] == "human")
                            & paired["split"].isin(["train", "val"])], aux], ignore_index=True)
    test = paired[paired["split"] == "test"]
    preprocess(pd.concat([fit, test], ignore_index=True), rd._cache(), config=rd._frontend(),
               progress=True)
    name = f"paired/generic_v{VERSION}"
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(rd._train_job, [(fit, name, "spectttra", s) for s in args.seeds]))
    per_model: dict[str, dict[str, list[dict]]] = {"spectttra": {}, "lr": {}}
    scorers = {"lr": [rd.train_lr(fit)],
               "spectttra": [rd._net_scorer(rd.train_net(fit, name, "spectttra", s))
                             for s in args.seeds]}
    for model, runs in scorers.items():
        for family in FAMILIES:
            per_model[model][family] = [s.evaluate(select(test, [family])) for s in runs]
    results = {model: {family: {metric: rd._interval([c[metric] for c in cells])
                                for metric in ("roc_auc", "pr_auc", "fpr_at_val_max_f1")}
                       for family, cells in fams.items()}
               for model, fams in per_model.items()}
    for model, fams in results.items():
        print(model, {f: round(v["roc_auc"]["mean"], 3) for f, v in fams.items()}, flush=True)
    payload = {
        "benchmark": "generic_artifacts",
        "description": __doc__.split("\n\n")[0],
        "protocol": __doc__.split("\n\n", 1)[1].split("Run from")[0].strip(),
        "primitives": list(PRIMITIVES),
        "log_spectral_distance_db": audible_difference(paired, aux),
        "training": {"train_files": int((fit["split"] == "train").sum()),
                     "val_files": int((fit["split"] == "val").sum()),
                     "train_config": "TrainConfig(seed=s): the CLI defaults", "preset": "tiny"},
        "seeds": args.seeds,
        "results": results,
        "target_unseen_roc_auc": rd.TARGETS["unseen_family_roc_auc"],
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_result(args.out, payload, config=vars(args))
    print(json.dumps({m: {f: round(v["roc_auc"]["mean"], 3) for f, v in fams.items()}
                      for m, fams in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
