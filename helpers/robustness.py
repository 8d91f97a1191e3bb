"""Does a trained detector still work on the files users actually have? Two checks of a run.

* `evaluate_robustness`: ROC-AUC and the false-positive rate on human music of a trained run,
  per perturbation of `helpers.perturb.PERTURBATIONS` (Afchar et al. 2024 found published
  detectors collapse under pitch shift and re-encoding);
* `codec_confound_check`: do trained classifiers, and the features themselves, tell the same
  human songs stored as WAV and as MP3 apart, with and without the front end's confound
  control (``FrontEndConfig(codec="mp3")``)?

What is the check and what is the study. The check is everything `codec_confound_check`
reports, the feature probe included: README and notebook 04 send users to it, its report
names the probe, and the probe is the one answer it gives before any run exists (is the
codec visible in *my* songs' features under *my* front end, with and without the control?).
So the probe, its permutation test and the paired sign-flip test stay here. The study, which
trains runs on a corpus made confounded on purpose, sweeps bitrates and controls and compares
a run trained on perturbed copies with one that is not, lives in `benchmarks/robustness.py`
and `benchmarks/real_robustness.py` and only calls these checks. The perturbations, and the
perturbed training copies (`perturbed_manifest`), are `helpers.perturb`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
import soundfile as sf
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from helpers.audio import AudioError, load_clip, mel_db, prepare_clip, read_audio, write_mp3
from helpers.config import FrontEndConfig
from helpers.datasets import load_manifest
from helpers.io import atomic_path, read_json, write_csv, write_json
from helpers.metrics import binary_metrics
from helpers.perturb import (
    EXTRA_SECONDS,
    UNAVAILABLE,
    apply_perturbation,
    perturbation_rng,
    resolve_perturbations,
)
from helpers.run import load_run, predict_proba, score_files, split_rows

log = logging.getLogger(__name__)

_PROBE_ALPHA = 10.0  # ridge penalty of the codec probe (standardised features)


# ------------------------------------------------------------------------------------------
# Robustness to perturbations
# ------------------------------------------------------------------------------------------


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
        Names from `helpers.perturb.PERTURBATIONS`; default all of them. ``"clean"`` is
        always included first.
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
    run_dir = Path(run_dir)
    names = resolve_perturbations(perturbations)
    model, info = load_run(run_dir, device=device)
    frontend = FrontEndConfig.from_dict(info["frontend"])
    threshold = float(info["threshold"])
    rows = split_rows(load_manifest(manifest), split, run_dir)
    p, readable = _score_perturbed(model, info, frontend, rows, names, seed, batch_size,
                                   progress)
    if not readable.any():
        raise ValueError(f"none of the {len(rows)} {split!r} files could be read")
    y_true = (rows["label"] == "ai").to_numpy(int)
    result = pd.DataFrame([_table_row(name, p[k], y_true, readable, threshold)
                           for k, name in enumerate(names)])
    result.insert(2, "auc_drop", result.loc[0, "roc_auc"] - result["roc_auc"])
    if out_dir is not None:
        context = {"run": str(run_dir.resolve()), "split": split, "seed": seed,
                   "threshold": threshold, "frontend": frontend.to_dict(),
                   "unavailable": UNAVAILABLE, "n_files": len(rows)}
        _write_robustness(Path(out_dir), result, rows, names, p, context)
    return result


def _score_perturbed(
    model: Any, info: dict[str, Any], frontend: FrontEndConfig, rows: pd.DataFrame,
    names: list[str], seed: int, batch_size: int, progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """P(AI) of every file under every perturbation, reading each file once.

    Returns ``p``, shape ``(len(names), len(rows))`` (NaN where the file or the perturbed clip
    could not be read), and ``readable``, shape ``(len(rows),)``.
    """
    # enough audio for the intro trim and the faster stretch (which reads 10 % more)
    seconds = frontend.duration * 1.1 + EXTRA_SECONDS + 1.0
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
            where, mels = _perturbed_mels(audio, name, rows["path"], frontend, seed)
            if mels:
                p[k, where] = predict_proba(model, info, np.stack(mels))
        bar.update(len(chunk))
    bar.close()
    return p, readable


def _perturbed_mels(
    audio: Mapping[int, tuple[np.ndarray, int]], name: str, paths: pd.Series,
    frontend: FrontEndConfig, seed: int,
) -> tuple[list[int], list[np.ndarray]]:
    """Perturb each decoded file by `name` and take the run's front end: (rows, mels)."""
    where, mels = [], []
    for i, (y, sr) in audio.items():
        try:
            z = apply_perturbation(name, y, sr, perturbation_rng(seed, i, name))
            clip = prepare_clip(z, sr, frontend, name=paths[i])
            mels.append(mel_db(clip, frontend))  # (n_mels, frames)
            where.append(i)
        except AudioError as err:  # e.g. the perturbation left too little audio
            log.warning("%s: %s", name, err)
    return where, mels


def _table_row(name: str, p: np.ndarray, y_true: np.ndarray, readable: np.ndarray,
               threshold: float) -> dict[str, Any]:
    """One row of the robustness table from P(AI) per file (NaN: not scored)."""
    ok = ~np.isnan(p)
    m = binary_metrics(y_true[ok], p[ok], threshold) if ok.any() else {}
    human, ai = ok & (y_true == 0), ok & (y_true == 1)
    return {
        "perturbation": name,
        "roc_auc": m.get("roc_auc", np.nan),
        "fpr_on_human": m.get("fpr", np.nan),
        "tpr_on_ai": m.get("sensitivity", np.nan),
        "accuracy": m.get("accuracy", np.nan),
        "mean_p_human": float(np.mean(p[human])) if human.any() else np.nan,
        "mean_p_ai": float(np.mean(p[ai])) if ai.any() else np.nan,
        "n": int(ok.sum()),
        "n_ai": int(ai.sum()),
        "n_human": int(human.sum()),
        "n_failed": int((readable & ~ok).sum()),
    }


def _write_robustness(out: Path, table: pd.DataFrame, rows: pd.DataFrame, names: list[str],
                      p: np.ndarray, context: dict[str, Any]) -> None:
    """``robustness.csv``, ``robustness_predictions.csv`` and ``robustness.json`` in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "robustness.csv", table)
    preds = pd.DataFrame({"path": np.repeat(rows["path"].to_numpy(), len(names)),
                          "label": np.repeat(rows["label"].to_numpy(), len(names)),
                          "perturbation": np.tile(names, len(rows)),
                          "p_ai": p.T.ravel()})
    write_csv(out / "robustness_predictions.csv", preds)
    write_json(out / "robustness.json", {**context, "table": table.to_dict(orient="records")})


# ------------------------------------------------------------------------------------------
# Codec confound
# ------------------------------------------------------------------------------------------


def _probe_features(paths: Sequence[str], frontend: FrontEndConfig) -> np.ndarray:
    """Mean and std over time of each log-mel band: (n_clips, 2 * n_mels)."""
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
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be at least 1, got {n_permutations}")
    frontend = replace(frontend or FrontEndConfig(), codec=None)
    out = Path(out_dir)
    wavs, mp3s = _write_copies(_human_paths(songs), out, frontend.duration, bitrate_kbps,
                               progress)
    n = len(wavs)
    if n < 4:
        raise ValueError(f"the confound check needs at least 4 readable songs, got {n}")
    files = wavs + mp3s
    k = min(n_splits, n)
    probe: dict[str, Any] = {
        "what": "ridge on per-band log-mel mean+std, folds grouped by song, p-value from "
                "within-song label swaps",
        "n_splits": k, "n_permutations": n_permutations,
        "control_bitrate_kbps": frontend.codec_bitrate_kbps}
    for key, fe in (("plain", frontend), ("codec_control", replace(frontend, codec="mp3"))):
        test = _probe_test(_probe_features(files, fe), n, seed, k, n_permutations)
        probe[key] = {**test, "at_chance": test["p_value"] >= alpha}
    if isinstance(runs, str | os.PathLike):
        runs = {Path(runs).name: runs}
    classifiers = {name: _classifier_shift(run_dir, files, n, seed, alpha, margin)
                   for name, run_dir in (runs or {}).items()}
    result = {"n_songs": n, "bitrate_kbps": bitrate_kbps, "alpha": alpha, "margin": margin,
              "frontend": frontend.to_dict(), "probe": probe, "classifiers": classifiers}
    write_json(out / "codec_confound.json", result)
    return result


def _human_paths(songs: Any) -> list[str]:
    """The human rows of a manifest, or the given paths as strings."""
    if isinstance(songs, pd.DataFrame | str | os.PathLike):
        frame = load_manifest(songs)
        return frame.loc[frame["label"] == "human", "path"].tolist()
    return [os.fspath(p) for p in songs]


def _write_copies(paths: Sequence[str], out: Path, seconds: float, bitrate_kbps: int,
                  progress: bool) -> tuple[list[str], list[str]]:
    """A 16-bit WAV and a constant-bitrate MP3 copy of each song's first `seconds`.

    Returns the WAV and the MP3 paths, paired by position; unreadable songs are skipped.
    """
    (out / "wav").mkdir(parents=True, exist_ok=True)
    (out / "mp3").mkdir(parents=True, exist_ok=True)
    wavs, mp3s = [], []
    for i, path in enumerate(tqdm(paths, desc="wav/mp3 copies", unit="song",
                                  disable=not progress)):
        try:
            y, sr = read_audio(path, max_seconds=seconds)
        except AudioError as err:
            log.warning("skipped: %s", err)
            continue
        stem = f"{i:05d}-{Path(path).stem}"
        wav, mp3_path = out / "wav" / f"{stem}.wav", out / "mp3" / f"{stem}.mp3"
        with atomic_path(wav, suffix=".wav") as tmp:
            sf.write(tmp, y, sr, subtype="PCM_16")
        with atomic_path(mp3_path, suffix=".mp3") as tmp:
            write_mp3(tmp, y, sr, bitrate_kbps)
        wavs.append(str(wav))
        mp3s.append(str(mp3_path))
    return wavs, mp3s


def _classifier_shift(run_dir: str | os.PathLike, files: list[str], n: int, seed: int,
                      alpha: float, margin: float) -> dict[str, Any]:
    """How one run's P(AI) moves between a song's WAV copy (``files[i]``) and MP3 copy
    (``files[n + i]``): the equivalence verdict, the sign-flip test and decision flips."""
    info = read_json(Path(run_dir) / "run.json")
    p = score_files(run_dir, files)
    dp = p[n:] - p[:n]
    half_width = scipy.stats.t.ppf(1 - alpha / 2, n - 1) * dp.std(ddof=1) / np.sqrt(n)
    ci = (float(dp.mean() - half_width), float(dp.mean() + half_width))
    p_value = paired_sign_flip_p(dp, seed=seed)
    flagged = p >= info["threshold"]
    return {
        "run": str(Path(run_dir).resolve()),
        "codec_control": info["frontend"]["codec"],
        "auc_mp3_vs_wav": float(roc_auc_score(np.r_[np.zeros(n, int), np.ones(n, int)], p)),
        "mean_p_ai_wav": float(p[:n].mean()), "mean_p_ai_mp3": float(p[n:].mean()),
        "mean_dp": float(dp.mean()), "mean_dp_ci": ci,
        "mean_abs_dp": float(np.abs(dp).mean()),
        "share_mp3_scored_higher": float(np.mean(dp > 0) + 0.5 * np.mean(dp == 0)),
        "decision_flips": float(np.mean(flagged[n:] != flagged[:n])),
        "fpr_wav": float(flagged[:n].mean()), "fpr_mp3": float(flagged[n:].mean()),
        "p_value": p_value, "shift_detected": p_value < alpha,
        "at_chance": -margin < ci[0] and ci[1] < margin,
    }
