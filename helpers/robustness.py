"""Robustness of a trained detector to what happens to real files, and the codec confound.

Three jobs, one question (does the detector still work on the files users actually have?):

* `PERTURBATIONS`: named waveform perturbations ``f(y, sr, rng) -> y`` (codec re-encoding,
  pitch shift, time stretch, gain, noise, low-pass, trimming the intro);
* `evaluate_robustness`: ROC-AUC and the false-positive rate on human music of a trained run,
  per perturbation (Afchar et al. 2024 found published detectors collapse under pitch shift
  and re-encoding);
* `perturbed_manifest`: perturbed audio copies of the training split plus a manifest to train
  on (augmentation);
* `codec_confound_check`: do trained classifiers, and the features themselves, tell the same
  human songs stored as WAV and as MP3 apart, with and without the front end's confound
  control (``FrontEndConfig(codec="mp3")``)?

Why augmentation writes audio instead of being a `TrainConfig` switch: training reads cached
mel spectrograms, and a pitch shift or an MP3 round trip acts on the waveform, so it cannot be
applied to a cached mel. Writing perturbed copies once keeps the cache, resuming and
`train` exactly as they are; each copy is a new manifest row whose ``track_id`` is derived
from its song (``<track_id>#<perturbation>``), and the validation split is fixed *before*
the copies are made, so copies of a validation song never land in training.

Codecs run at the rates real files have: MP3 and AAC at 44.1 kHz, Opus at 48 kHz (the audio
is resampled there and back), so 192 kbps MP3 is a real MPEG-1 bitrate even for 22 kHz input.
MP3 and Opus use libsndfile (through soundfile); AAC uses FFmpeg's native encoder through
PyAV, when PyAV is installed (``pip install av``); otherwise the AAC entries are left out and
`UNAVAILABLE` says why.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import pandas as pd
import scipy.stats
import soundfile as sf
from scipy.signal import butter, sosfiltfilt

from helpers.audio import (
    AudioError,
    codec_round_trip,
    fit_length,
    mel_db,
    prepare_clip,
    read_audio,
    resample,
    write_mp3,
)
from helpers.config import FrontEndConfig
from helpers.io import atomic_path, read_json, write_csv, write_json

log = logging.getLogger(__name__)

#: ``f(y, sr, rng) -> y``: mono float32 in, mono float32 out at the same rate.
Perturbation = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

_CODEC_RATE = 44_100  # the rate of nearly every MP3/AAC file users have
_OPUS_RATE = 48_000  # Opus encodes at 48 kHz (or 8/12/16/24 kHz); never at 44.1 kHz
_AAC_PRIMING = 1024  # samples of encoder delay FFmpeg's AAC encoder puts in front
_PROBE_ALPHA = 10.0  # ridge penalty of the codec probe (standardised features)


# ------------------------------------------------------------------------------------------
# Perturbations
# ------------------------------------------------------------------------------------------


def mp3(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
        bitrate_kbps: int = 128) -> np.ndarray:
    """MP3 re-encoding at a constant bitrate (at 44.1 kHz); same length and rate as `y`."""
    coded = codec_round_trip(resample(y, sr, _CODEC_RATE), _CODEC_RATE, bitrate_kbps)
    return fit_length(resample(coded, _CODEC_RATE, sr), len(y))


def opus(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
         bitrate_kbps: int = 64) -> np.ndarray:
    """Ogg/Opus re-encoding at about `bitrate_kbps` (at 48 kHz); same length and rate.

    libsndfile maps its compression level linearly onto Opus bitrates from 256 kbps (level 0)
    down to 6 kbps (level 1), per channel; Opus always varies the bitrate around the target.
    """
    level = float(np.clip((256 - bitrate_kbps) / 250, 0.0, 1.0))
    buf = io.BytesIO()
    sf.write(buf, resample(y, sr, _OPUS_RATE), _OPUS_RATE, format="OGG", subtype="OPUS",
             compression_level=level)
    buf.seek(0)
    decoded, _ = sf.read(buf, dtype="float32")  # libsndfile drops Opus' pre-skip itself
    return fit_length(resample(decoded, _OPUS_RATE, sr), len(y))


def aac(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
        bitrate_kbps: int = 128) -> np.ndarray:
    """AAC-LC re-encoding (FFmpeg's native encoder via PyAV, at 44.1 kHz); same length and rate.

    Raises
    ------
    ImportError
        PyAV is not installed (``pip install av``).
    """
    import av  # optional: FFmpeg's encoders; libsndfile has no AAC

    x = resample(y, sr, _CODEC_RATE)
    buf = io.BytesIO()
    with av.open(buf, "w", format="adts") as out:
        stream = out.add_stream("aac", rate=_CODEC_RATE)
        stream.bit_rate = bitrate_kbps * 1000
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
        frame.sample_rate = _CODEC_RATE
        for packet in (*stream.encode(frame), *stream.encode(None)):
            out.mux(packet)
    buf.seek(0)
    with av.open(buf, "r", format="adts") as inp:
        # frames are planar float (fltp), shape (channels, samples); mono here
        decoded = np.concatenate([f.to_ndarray().reshape(-1, f.samples).mean(axis=0)
                                  for f in inp.decode(audio=0)]).astype(np.float32)
    decoded = decoded[_AAC_PRIMING:]
    return fit_length(resample(decoded, _CODEC_RATE, sr), len(y))


def pitch_shift(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
                semitones: float = 1.0) -> np.ndarray:
    """Pitch shift by `semitones` at constant tempo (librosa: phase vocoder + soxr resampling)."""
    return librosa.effects.pitch_shift(np.asarray(y, np.float32), sr=sr,
                                       n_steps=semitones).astype(np.float32)


def time_stretch(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
                 rate: float = 1.1) -> np.ndarray:
    """Tempo change by `rate` at constant pitch; the result has ``len(y) / rate`` samples."""
    return librosa.effects.time_stretch(np.asarray(y, np.float32), rate=rate).astype(np.float32)


def gain(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
         db: float = 6.0) -> np.ndarray:
    """Level change by `db`, clipped to [-1, 1] as a PCM file or a limiter-less export would."""
    return np.clip(np.asarray(y, np.float32) * np.float32(10 ** (db / 20)), -1.0, 1.0)


def add_noise(y: np.ndarray, sr: int, rng: np.random.Generator,
              snr_db: float = 30.0) -> np.ndarray:
    """White Gaussian noise at `snr_db` below the clip's mean power."""
    y = np.asarray(y, np.float32)
    power = float(np.mean(y.astype(np.float64) ** 2))
    noise = rng.standard_normal(len(y)) * np.sqrt(power / 10 ** (snr_db / 10))
    return (y + noise).astype(np.float32)


def lowpass(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
            cutoff_hz: float = 8_000.0, order: int = 8) -> np.ndarray:
    """Zero-phase Butterworth low-pass (a bandwidth-limited upload); no-op at or below 2x cutoff.

    Note that the default front end (16 kHz, ``fmax`` 8 kHz) never sees above 8 kHz, so for it
    this perturbation is close to a no-op by design; it matters for wider front ends.
    """
    y = np.asarray(y, np.float32)
    if cutoff_hz >= sr / 2:
        return y.copy()
    sos = butter(order, cutoff_hz, btype="low", fs=sr, output="sos")
    return sosfiltfilt(sos, y).astype(np.float32)


def trim_start(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
               seconds: float = 5.0) -> np.ndarray:
    """Drop the first `seconds` (a radio edit, a preview that starts later)."""
    return np.asarray(y, np.float32)[int(round(seconds * sr)):].copy()


def _aac_available() -> str | None:
    try:
        import av  # noqa: F401
    except ImportError:
        return "PyAV not installed (pip install av); libsndfile has no AAC encoder"
    return None


def _registry() -> tuple[dict[str, Perturbation], dict[str, str]]:
    reg: dict[str, Perturbation] = {}
    for kbps in (64, 128, 192):
        reg[f"mp3_{kbps}"] = partial(mp3, bitrate_kbps=kbps)
    missing: dict[str, str] = {}
    aac_problem = _aac_available()
    for kbps in (64, 128):
        if aac_problem is None:
            reg[f"aac_{kbps}"] = partial(aac, bitrate_kbps=kbps)
        else:
            missing[f"aac_{kbps}"] = aac_problem
    if "OPUS" in sf.available_subtypes("OGG"):
        reg["opus_64"] = partial(opus, bitrate_kbps=64)
    else:
        missing["opus_64"] = "this libsndfile has no Ogg/Opus support (needs libsndfile >= 1.0.29)"
    for st in (-2, -1, 1, 2):
        reg[f"pitch{st:+d}"] = partial(pitch_shift, semitones=float(st))
    for rate in (0.9, 1.1):
        reg[f"stretch{rate:.1f}"] = partial(time_stretch, rate=rate)
    for db in (-6, 6):
        reg[f"gain{db:+d}dB"] = partial(gain, db=float(db))
    for snr in (30, 20):
        reg[f"noise{snr}dB"] = partial(add_noise, snr_db=float(snr))
    reg["lowpass8k"] = partial(lowpass, cutoff_hz=8_000.0)
    reg["trim5s"] = partial(trim_start, seconds=5.0)
    return reg, missing


#: name → perturbation ``f(y, sr, rng) -> y``; ``"clean"`` is implicit in `evaluate_robustness`.
#: mp3_64/128/192, aac_64/128 (with PyAV), opus_64, pitch-2/-1/+1/+2, stretch0.9/1.1,
#: gain-6dB/+6dB, noise30dB/20dB, lowpass8k, trim5s.
#: `stretch0.9` is slower (10 % longer), `stretch1.1` faster.
PERTURBATIONS, UNAVAILABLE = _registry()

#: Extra seconds a perturbation may consume beyond the front end's clip: the intro trim plus
#: the faster stretch reads 10 % more.
_EXTRA_SECONDS = 5.0


def apply_perturbation(
    name: str, y: np.ndarray, sr: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Apply the registered perturbation `name` (``"clean"`` returns `y` unchanged).

    Raises
    ------
    KeyError
        Unknown name; the message lists the registered ones and why any are unavailable.
    """
    if name == "clean":
        return np.asarray(y, np.float32)
    if name not in PERTURBATIONS:
        why = f" ({UNAVAILABLE[name]})" if name in UNAVAILABLE else ""
        raise KeyError(f"unknown perturbation {name!r}{why}; registered: {list(PERTURBATIONS)}")
    return PERTURBATIONS[name](y, sr, rng if rng is not None else np.random.default_rng(0))


def _names(perturbations: Sequence[str] | None) -> list[str]:
    names = list(PERTURBATIONS) if perturbations is None else list(perturbations)
    for n in names:
        if n != "clean" and n not in PERTURBATIONS:
            apply_perturbation(n, np.zeros(1, np.float32), 8000)  # raises the helpful KeyError
    return ["clean", *[n for n in names if n != "clean"]]


def _short_hash(text: str) -> str:
    # Stable across processes (unlike hash()), so reruns find the copies already written.
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _rng(seed: int, item: int, name: str) -> np.random.Generator:
    # One stream per (file, perturbation): results do not depend on order or on the subset run.
    return np.random.default_rng([seed, item, sum(ord(c) * 31**i for i, c in enumerate(name))])


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------


def _split_rows(run_dir: Path, manifest: Any, split: str) -> pd.DataFrame:
    from helpers.datasets import load_manifest

    frame = load_manifest(manifest)
    if split in ("val", "train") and not (frame["split"] == "val").any():
        splits_csv = run_dir / "splits.csv"  # the validation split carved at training time
        if splits_csv.exists():
            saved = pd.read_csv(splits_csv, dtype=str, keep_default_na=False)
            frame = frame.drop(columns="split").merge(saved[["path", "split"]], on="path")
    rows = frame if split == "all" else frame[frame["split"] == split]
    if rows.empty:
        raise ValueError(f"the manifest has no {split!r} rows (splits present: "
                         f"{sorted(frame['split'].unique())})")
    return rows.reset_index(drop=True)


def evaluate_robustness(
    run_dir: str | os.PathLike,
    manifest: str | os.PathLike | pd.DataFrame,
    split: str = "test",
    perturbations: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    device: str | None = None,
) -> pd.DataFrame:
    """ROC-AUC and false-positive rate on human music of a trained run, per perturbation.

    Each file is decoded once (enough seconds for the intro trim and the faster stretch), every
    perturbation is applied in memory at the file's own rate, then the run's own front end
    (`prepare_clip` + `mel_db`) and calibrated `predict_proba` score it, in batches.

    Parameters
    ----------
    run_dir : str or path-like
        A finished run folder (`helpers.train.train`).
    manifest : str, path-like or DataFrame
        Anything `helpers.datasets.load_manifest` accepts.
    split : str
        ``"test"`` (default), ``"val"``, ``"train"`` or ``"all"``.
    perturbations : sequence of str, optional
        Names from `PERTURBATIONS`; default all of them. ``"clean"`` is always included first.
    seed : int
        Root of the random draws (the noise); one stream per (file, perturbation).
    progress : bool
    out_dir : str or path-like, optional
        Where to write ``robustness.csv`` (the table), ``robustness.json`` (table + context)
        and ``robustness_predictions.csv`` (P(AI) per clip and perturbation), atomically.
    batch_size : int
        Files perturbed and scored together.
    device : str, optional
        Torch device; default CPU.

    Returns
    -------
    pd.DataFrame
        One row per perturbation (``clean`` first): ``perturbation, roc_auc, fpr_on_human``
        (share of human clips at or above the run's threshold), ``tpr_on_ai``, ``accuracy``,
        ``mean_p_human``, ``mean_p_ai``, ``auc_drop`` (clean minus this), ``n``, ``n_ai``,
        ``n_human``, ``n_failed`` (clips the perturbation left unreadable, e.g. too short).

    Raises
    ------
    ValueError
        The split is empty.
    KeyError
        An unknown perturbation name.
    """
    from tqdm.auto import tqdm

    from helpers.metrics import binary_metrics
    from helpers.run import load_run, predict_proba

    run_dir = Path(run_dir)
    names = _names(perturbations)
    model, info = load_run(run_dir, device=device)
    frontend = FrontEndConfig.from_dict(info["frontend"])
    threshold = float(info["threshold"])
    rows = _split_rows(run_dir, manifest, split)
    seconds = frontend.duration * 1.1 + _EXTRA_SECONDS + 1.0
    p = np.full((len(names), len(rows)), np.nan)
    readable = np.zeros(len(rows), bool)

    bar = tqdm(total=len(rows), desc="robustness", unit="file", disable=not progress)
    for start in range(0, len(rows), batch_size):
        chunk = range(start, min(start + batch_size, len(rows)))
        audio: dict[int, tuple[np.ndarray, int]] = {}
        for i in chunk:
            try:
                audio[i] = read_audio(rows.at[i, "path"], max_seconds=seconds)
                readable[i] = True
            except AudioError as err:
                log.warning("skipped: %s", err)
        for k, name in enumerate(names):
            mels, where = [], []
            for i, (y, sr) in audio.items():
                try:
                    z = apply_perturbation(name, y, sr, _rng(seed, i, name))
                    mels.append(mel_db(prepare_clip(z, sr, frontend, name=rows.at[i, "path"]),
                                       frontend))  # (n_mels, frames)
                    where.append(i)
                except AudioError as err:
                    log.warning("%s: %s", name, err)
            if mels:
                p[k, where] = predict_proba(model, info, np.stack(mels))
        bar.update(len(chunk))
    bar.close()
    if not readable.any():
        raise ValueError(f"none of the {len(rows)} {split!r} files could be read")

    y_true = (rows["label"] == "ai").to_numpy(int)
    table = []
    for k, name in enumerate(names):
        ok = ~np.isnan(p[k])
        m = binary_metrics(y_true[ok], p[k, ok], threshold) if ok.any() else {}
        table.append({
            "perturbation": name,
            "roc_auc": m.get("roc_auc", np.nan),
            "fpr_on_human": m.get("fpr", np.nan),
            "tpr_on_ai": m.get("sensitivity", np.nan),
            "accuracy": m.get("accuracy", np.nan),
            "mean_p_human": float(np.mean(p[k, ok & (y_true == 0)])) if (ok & (y_true == 0)).any()
            else np.nan,
            "mean_p_ai": float(np.mean(p[k, ok & (y_true == 1)])) if (ok & (y_true == 1)).any()
            else np.nan,
            "n": int(ok.sum()),
            "n_ai": int((ok & (y_true == 1)).sum()),
            "n_human": int((ok & (y_true == 0)).sum()),
            "n_failed": int((readable & ~ok).sum()),
        })
    result = pd.DataFrame(table)
    result.insert(2, "auc_drop", result.loc[0, "roc_auc"] - result["roc_auc"])

    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "robustness.csv", result)
        preds = pd.DataFrame({"path": np.repeat(rows["path"].to_numpy(), len(names)),
                              "label": np.repeat(rows["label"].to_numpy(), len(names)),
                              "perturbation": np.tile(names, len(rows)),
                              "p_ai": p.T.ravel()})
        write_csv(out / "robustness_predictions.csv", preds)
        write_json(out / "robustness.json", ({
            "run": str(run_dir.resolve()), "split": split, "seed": seed,
            "threshold": threshold, "frontend": frontend.to_dict(),
            "unavailable": UNAVAILABLE, "n_files": len(rows),
            "table": result.to_dict(orient="records"),
        }))
    return result


# ------------------------------------------------------------------------------------------
# Augmentation: perturbed copies of the training split
# ------------------------------------------------------------------------------------------


def perturbed_manifest(
    manifest: str | os.PathLike | pd.DataFrame,
    out_dir: str | os.PathLike,
    perturbations: Sequence[str] | None = None,
    copies: int = 2,
    seed: int = 0,
    val_fraction: float = 0.15,
    progress: bool = True,
) -> Path:
    """Write perturbed audio copies of the training split and a manifest to train on.

    Every ``train`` row gets `copies` perturbed WAV copies (16-bit PCM at the file's rate, so
    the copies differ from their source only by the perturbation, never by container), each
    with a perturbation drawn without replacement from `perturbations`. Validation and test
    rows are kept as they are: model selection and calibration stay on unperturbed audio.
    When the manifest has no ``val`` rows, the validation split is carved first (by track, as
    `helpers.train.carve_val_split` does at training time), so copies of a validation song
    never reach training.

    Parameters
    ----------
    manifest : str, path-like or DataFrame
    out_dir : str or path-like
        Receives ``audio/<perturbation>/<name>.wav`` and ``manifest.csv``. Copies already
        there are reused (the run is resumable).
    perturbations : sequence of str, optional
        Names from `PERTURBATIONS`; default all of them.
    copies : int
        Perturbed copies per training clip.
    seed : int
    val_fraction : float
        Used only when the validation split must be carved; pass the `TrainConfig`'s value.
    progress : bool

    Returns
    -------
    Path
        ``out_dir/manifest.csv``: the original rows (paths absolute) plus the copies, with
        extra columns ``perturbation`` (``""`` for originals) and ``parent_track_id``.
        Train on it with `helpers.train.train` as on any manifest.
    """
    from tqdm.auto import tqdm

    from helpers.datasets import load_manifest, write_manifest
    from helpers.train import carve_val_split

    names = [n for n in _names(perturbations) if n != "clean"]
    if not 1 <= copies <= len(names):
        raise ValueError(f"copies must be in [1, {len(names)}], got {copies}")
    out = Path(out_dir)
    frame = carve_val_split(load_manifest(manifest), val_fraction, seed)
    frame["perturbation"] = ""
    frame["parent_track_id"] = frame["track_id"]
    train_rows = frame[frame["split"] == "train"]
    rng = np.random.default_rng(seed)
    added = []
    for idx, row in tqdm(train_rows.iterrows(), total=len(train_rows), desc="perturb",
                         unit="file", disable=not progress):
        chosen = rng.choice(len(names), size=copies, replace=False)
        todo = []
        for c in chosen:
            name = names[c]
            stem = Path(row["path"]).stem
            target = out / "audio" / name / f"{stem}-{_short_hash(row['path'])}.wav"
            todo.append((name, target))
        y = sr = None
        for name, target in todo:
            if not target.exists():
                if y is None:
                    try:
                        y, sr = read_audio(row["path"], max_seconds=None)
                    except AudioError as err:
                        log.warning("skipped: %s", err)
                        break
                z = apply_perturbation(name, y, sr, _rng(seed, int(idx), name))
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(target, suffix=".wav") as tmp:
                    sf.write(tmp, np.clip(z, -1.0, 1.0), sr, subtype="PCM_16")
            added.append({**row.to_dict(), "path": str(target.resolve()),
                          "track_id": f"{row['track_id']}#{name}", "perturbation": name})
    result = pd.concat([frame, pd.DataFrame(added)], ignore_index=True)
    return write_manifest(result, out / "manifest.csv")


# ------------------------------------------------------------------------------------------
# Codec confound
# ------------------------------------------------------------------------------------------


def _probe_features(paths: Sequence[str], frontend: FrontEndConfig) -> np.ndarray:
    """Mean and std over time of each log-mel band: (n_clips, 2 * n_mels)."""
    from helpers.audio import load_clip

    feats = []
    for path in paths:
        m = mel_db(load_clip(path, frontend), frontend)  # (n_mels, frames)
        feats.append(np.concatenate([m.mean(axis=1), m.std(axis=1)]))
    return np.stack(feats)


def _probe_auc(x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> tuple[float, list[float]]:
    """Cross-validated ROC-AUC of a ridge probe; `folds` gives each row's held-out fold.

    Ridge regression on standardised features has a closed form, so the permutation test
    below can refit it hundreds of times in seconds (a logistic probe took ~1 s per fit).
    """
    from sklearn.linear_model import RidgeClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = np.zeros(len(y))
    fold_aucs = []
    for fold in np.unique(folds):
        held = folds == fold
        probe = make_pipeline(StandardScaler(), RidgeClassifier(alpha=_PROBE_ALPHA))
        probe.fit(x[~held], y[~held])
        scores[held] = probe.decision_function(x[held])
        fold_aucs.append(float(roc_auc_score(y[held], scores[held])))
    return float(roc_auc_score(y, scores)), fold_aucs


def _probe_test(x: np.ndarray, n: int, seed: int, n_splits: int,
                n_permutations: int) -> dict[str, Any]:
    """Probe AUC for "copy 1 vs copy 2" of `n` songs, and its permutation p-value.

    Rows ``i`` and ``n + i`` are two copies of song ``i``; both always sit in the same fold.
    The null swaps the two labels within randomly chosen songs, which keeps the pairing and
    the folds and destroys only the codec, so the p-value needs no assumption about how the
    pooled, cross-validated AUC is distributed.
    """
    rng = np.random.default_rng(seed)
    folds = np.tile(rng.permutation(n) % n_splits, 2)
    y = np.r_[np.zeros(n, int), np.ones(n, int)]
    auc, fold_aucs = _probe_auc(x, y, folds)
    null = np.empty(n_permutations)
    for b in range(n_permutations):
        swap = rng.integers(0, 2, n)
        null[b] = _probe_auc(x, np.r_[swap, 1 - swap], folds)[0]
    return {"auc": auc, "fold_aucs": fold_aucs,
            "p_value": float((1 + np.sum(null >= auc)) / (n_permutations + 1)),
            "null_auc_95th_percentile": float(np.quantile(null, 0.95))}


def paired_sign_flip_p(diff: np.ndarray, n_permutations: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value that the mean of paired differences is zero (sign-flip test).

    Parameters
    ----------
    diff : np.ndarray, shape (n,)
        One difference per pair, e.g. P(AI) of a song's MP3 copy minus that of its WAV copy.
    n_permutations : int
    seed : int

    Returns
    -------
    float
        ``(1 + #{|mean of sign-flipped diff| >= |mean diff|}) / (1 + n_permutations)``.
    """
    diff = np.asarray(diff, dtype=np.float64)
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_permutations, len(diff)))
    null = np.abs(signs @ diff) / len(diff)
    observed = abs(diff.mean())
    # a tolerance so that exact ties (e.g. all differences zero) count as "as extreme"
    return float((1 + np.sum(null >= observed - 1e-12)) / (n_permutations + 1))


def codec_confound_check(
    songs: str | os.PathLike | pd.DataFrame | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    frontend: FrontEndConfig | None = None,
    seed: int = 0,
    bitrate_kbps: int = 128,
    n_splits: int = 5,
    runs: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
    n_permutations: int = 200,
    alpha: float = 0.05,
    margin: float = 0.02,
    progress: bool = True,
) -> dict[str, Any]:
    """Can a classifier tell the same human songs stored as WAV and as MP3 apart?

    If a training corpus takes its AI songs from one source as MP3 and its human songs from
    another as WAV, a detector can score well by detecting the codec, and will then call
    every human MP3 "more AI". This writes a WAV copy (16-bit PCM) and an MP3 copy (constant
    `bitrate_kbps`, libsndfile/LAME) of each song's first ``frontend.duration`` seconds and
    asks two questions.

    1. **The trained classifiers** (`runs`): does P(AI) differ between a song's two copies?
       With 10,000 paired sign flips even a shift of 0.001 in P(AI) can be significant, so
       the verdict ``at_chance`` is an equivalence test instead: the (1 - `alpha`) confidence
       interval of the mean difference P(AI | MP3) - P(AI | WAV) lies within ±`margin`.
       Also reported: the sign-flip p-value (``shift_detected``), the ROC-AUC of P(AI) for
       "MP3 vs WAV" across songs (0.5 is chance), the share of songs whose MP3 copy scores
       higher, and how many songs change decision at the run's threshold. A run trained
       with the confound control (``FrontEndConfig(codec="mp3")``) applies it when scoring,
       as it does in use.
    2. **The features** (a stricter bound): a ridge probe on the mean and standard deviation
       over time of every log-mel band, cross-validated with folds grouped by song, on the
       plain front end and on the same front end with the control. Paired copies make this
       far more sensitive than any detector trained on different songs per class, so a probe
       above chance does not mean a classifier uses the codec; it says the information is
       there. A permutation p-value (labels swapped within songs) says how far from chance.

    Parameters
    ----------
    songs : manifest (path or DataFrame) or sequence of paths
        Human songs; from a manifest, its ``human`` rows are used.
    out_dir : str or path-like
        Receives ``wav/`` and ``mp3/`` copies and ``codec_confound.json``.
    frontend : FrontEndConfig, optional
        Front end of the probe; its `codec` is ignored and its `codec_bitrate_kbps` is the
        control's bitrate. Default ``FrontEndConfig()``.
    seed : int
        Fold assignment and permutations.
    bitrate_kbps : int
        Bitrate of the MP3 copies.
    n_splits : int
        Probe folds (at most the number of songs).
    runs : path or mapping of name to path, optional
        Trained run folders to test (question 1).
    n_permutations : int
        Permutations of the probe's null distribution (the classifier test uses 10,000).
    alpha : float
        Significance level of the tests and 1 - the confidence of the interval.
    margin : float
        Largest mean shift of P(AI) between copies that still counts as chance.
    progress : bool

    Returns
    -------
    dict
        ``n_songs``, ``bitrate_kbps``; ``probe`` with ``plain`` and ``codec_control`` (each
        ``auc``, ``fold_aucs``, ``p_value``, ``null_auc_95th_percentile``, ``at_chance``);
        ``classifiers`` with one entry per run (``auc_mp3_vs_wav``, ``mean_p_ai_wav``,
        ``mean_p_ai_mp3``, ``mean_dp``, ``mean_dp_ci``, ``mean_abs_dp``,
        ``share_mp3_scored_higher``, ``decision_flips``, ``fpr_wav``, ``fpr_mp3``,
        ``p_value``, ``shift_detected``, ``at_chance``).

    Raises
    ------
    ValueError
        Fewer than 4 readable songs, or `n_permutations` below 1.
    """
    from tqdm.auto import tqdm

    from helpers.datasets import load_manifest

    if n_permutations < 1:
        raise ValueError(f"n_permutations must be at least 1, got {n_permutations}")
    if isinstance(songs, pd.DataFrame | str | os.PathLike):
        frame = load_manifest(songs)
        paths = frame.loc[frame["label"] == "human", "path"].tolist()
    else:
        paths = [os.fspath(p) for p in songs]
    frontend = replace(frontend or FrontEndConfig(), codec=None)
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    (out / "mp3").mkdir(parents=True, exist_ok=True)
    wavs, mp3s = [], []
    for i, path in enumerate(tqdm(paths, desc="wav/mp3 copies", unit="song",
                                  disable=not progress)):
        try:
            y, sr = read_audio(path, max_seconds=frontend.duration)
        except AudioError as err:
            log.warning("skipped: %s", err)
            continue
        stem = f"{i:05d}-{Path(path).stem}"
        wav, mp3_path = out / "wav" / f"{stem}.wav", out / "mp3" / f"{stem}.mp3"
        sf.write(wav, y, sr, subtype="PCM_16")
        write_mp3(mp3_path, y, sr, bitrate_kbps)
        wavs.append(str(wav))
        mp3s.append(str(mp3_path))
    n = len(wavs)
    if n < 4:
        raise ValueError(f"the confound check needs at least 4 readable songs, got {n}")
    files = wavs + mp3s
    k = min(n_splits, n)
    result: dict[str, Any] = {
        "n_songs": n, "bitrate_kbps": bitrate_kbps, "alpha": alpha, "margin": margin,
        "frontend": frontend.to_dict(),
        "probe": {"what": "ridge on per-band log-mel mean+std, folds grouped by song, "
                          "p-value from within-song label swaps",
                  "n_splits": k, "n_permutations": n_permutations,
                  "control_bitrate_kbps": frontend.codec_bitrate_kbps},
        "classifiers": {},
    }
    for key, fe in (("plain", frontend), ("codec_control", replace(frontend, codec="mp3"))):
        test = _probe_test(_probe_features(files, fe), n, seed, k, n_permutations)
        result["probe"][key] = {**test, "at_chance": test["p_value"] >= alpha}
    if runs is not None:
        from sklearn.metrics import roc_auc_score

        from helpers.run import score_files

        if isinstance(runs, str | os.PathLike):
            runs = {Path(runs).name: runs}
        y_codec = np.r_[np.zeros(n, int), np.ones(n, int)]
        for name, run_dir in runs.items():
            info = read_json(Path(run_dir) / "run.json")
            p = score_files(run_dir, files)
            dp = p[n:] - p[:n]
            half_width = scipy.stats.t.ppf(1 - alpha / 2, n - 1) * dp.std(ddof=1) / np.sqrt(n)
            ci = (float(dp.mean() - half_width), float(dp.mean() + half_width))
            p_value = paired_sign_flip_p(dp, seed=seed)
            flagged = p >= info["threshold"]
            result["classifiers"][name] = {
                "run": str(Path(run_dir).resolve()),
                "codec_control": info["frontend"]["codec"],
                "auc_mp3_vs_wav": float(roc_auc_score(y_codec, p)),
                "mean_p_ai_wav": float(p[:n].mean()), "mean_p_ai_mp3": float(p[n:].mean()),
                "mean_dp": float(dp.mean()), "mean_dp_ci": ci,
                "mean_abs_dp": float(np.abs(dp).mean()),
                "share_mp3_scored_higher": float(np.mean(dp > 0) + 0.5 * np.mean(dp == 0)),
                "decision_flips": float(np.mean(flagged[n:] != flagged[:n])),
                "fpr_wav": float(flagged[:n].mean()), "fpr_mp3": float(flagged[n:].mean()),
                "p_value": p_value, "shift_detected": p_value < alpha,
                "at_chance": -margin < ci[0] and ci[1] < margin,
            }
    write_json(out / "codec_confound.json", result)
    return result
