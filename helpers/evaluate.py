"""Evaluate a trained run on a split: metrics, predictions and figures.

`evaluate` writes into its output folder (default ``RUN/eval_<split>``)::

    metrics.json          metrics at the run's threshold and at its FPR threshold, ROC/PR AUC,
                          ECE before/after temperature scaling, per-subgroup metrics
    predictions.csv       path, track_id, label, logit, p_ai (calibrated), pred (+ subgroups)
    figures/<name>.png    300 dpi; each with the numbers behind it as <name>.json or .csv:
                          roc, pr, confusion, score_hist, reliability, history
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from helpers.cache import CacheDataset, preprocess
from helpers.config import FrontEndConfig
from helpers.datasets import load_manifest, manifest_fingerprint
from helpers.io import finite, write_csv, write_json
from helpers.metrics import (
    binary_metrics,
    expected_calibration_error,
    pr_points,
    reliability_curve,
    roc_points,
    sigmoid,
    subgroup_metrics,
)
from helpers.run import load_run, predict_logits, split_rows

log = logging.getLogger(__name__)

#: Manifest columns reported per subgroup when present and not empty.
SUBGROUP_COLUMNS = ("algorithm", "source", "genre")
_TOP_LEVEL = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "sensitivity",
              "specificity", "fpr")


def evaluate(
    run_dir: str | os.PathLike,
    manifest: str | os.PathLike | pd.DataFrame,
    split: str = "test",
    out_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | None = None,
    figures: bool = True,
    progress: bool = True,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Score one split of a manifest with a trained run and write metrics, predictions, figures.

    Parameters
    ----------
    run_dir : str or path-like
        A finished run folder (`helpers.train.train`).
    manifest : str, path-like or DataFrame
        Anything `helpers.datasets.load_manifest` accepts.
    split : str
        ``"test"`` (default), ``"val"``, ``"train"`` or ``"all"``. For ``"val"``/``"train"``
        the run's own ``splits.csv`` decides membership when the manifest has no ``val`` rows
        (the validation split carved at training time).
    out_dir : str or path-like, optional
        Default ``run_dir/eval_<split>``.
    cache_dir : str or path-like, optional
        Feature cache; default the run's cache when its front end matches, else
        ``run_dir/cache``. Missing clips are preprocessed into it.
    device : str, optional
        Default CPU.
    figures : bool
        Also draw the PNG figures (the numbers behind them are written either way).
    progress : bool
    batch_size : int
        Clips read from the cache and scored at a time: memory stays bounded by one batch of
        mels however large the split (10k 30 s clips would be ~5 GB at once).

    Returns
    -------
    dict
        The contents of ``metrics.json``; its top level repeats the headline metrics at the
        run's threshold (``accuracy, f1, roc_auc, pr_auc, sensitivity, specificity, ...``).

    Raises
    ------
    ValueError
        The split has no clips (or none could be read).
    """
    run_dir = Path(run_dir)
    model, info = load_run(run_dir, device=device)
    frame = load_manifest(manifest)
    rows = split_rows(frame, split, run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / f"eval_{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = _cache_for(run_dir, info, cache_dir)
    preprocess(rows, cache_dir, config=FrontEndConfig.from_dict(info["frontend"]),
               progress=progress)
    dataset = CacheDataset(cache_dir, rows)
    if len(dataset) == 0:
        raise ValueError(f"none of the {len(rows)} {split!r} clips could be read; see "
                         f"{Path(cache_dir) / 'failures.csv'}")
    logits = _stream_logits(model, dataset, batch_size)
    preds = _predictions(dataset.frame, logits, info)
    write_csv(out_dir / "predictions.csv", preds)
    m = _metrics(preds, info)
    y, p = (preds["label"] == "ai").to_numpy(int), preds["p_ai"].to_numpy()
    _write_figures(out_dir / "figures", run_dir, y, p, sigmoid(logits), m["threshold"],
                   m["fpr_threshold"], m["target_fpr"], m["ece_n_bins"], m["ece"], draw=figures)
    metrics = finite({**m, "split": split, "run": str(run_dir.resolve()),
                      "manifest_fingerprint": manifest_fingerprint(frame),
                      "dropped": dataset.dropped})
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def _cache_for(run_dir: Path, info: dict[str, Any],
               cache_dir: str | os.PathLike | None) -> Path:
    """The feature cache to use: as given, else the run's own when it still exists."""
    if cache_dir is not None:
        return Path(cache_dir)
    cache = Path(info.get("cache_dir") or run_dir / "cache")
    if not (cache / "frontend.json").exists() and not cache.parent.exists():
        cache = run_dir / "cache"
    return cache


def _stream_logits(model: torch.nn.Module, dataset: CacheDataset, batch_size: int) -> np.ndarray:
    """Logits ``(len(dataset),)``, reading and scoring `batch_size` cached mels at a time."""
    out = []
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        mels = torch.stack([dataset[i][0] for i in range(start, stop)])  # (batch, n_mels, frames)
        out.append(predict_logits(model, mels, batch_size))
    return np.concatenate(out)


def _predictions(kept: pd.DataFrame, logits: np.ndarray, info: dict[str, Any]) -> pd.DataFrame:
    """``path, track_id, label, logit, p_ai, pred`` plus the subgroup columns present."""
    p = sigmoid(logits / float(info.get("temperature", 1.0)))
    preds = kept[["path", "track_id", "label"]].assign(
        logit=logits, p_ai=p, pred=np.where(p >= float(info["threshold"]), "ai", "human"))
    for c in SUBGROUP_COLUMNS:
        if c in kept and (kept[c].astype(str) != "").any():
            preds[c] = kept[c].to_numpy()
    return preds


def _metrics(preds: pd.DataFrame, info: dict[str, Any], n_bins: int = 15) -> dict[str, Any]:
    """Metrics at both of the run's thresholds, calibration and subgroups (`evaluate`)."""
    y = (preds["label"] == "ai").to_numpy(int)
    p, p_raw = preds["p_ai"].to_numpy(), sigmoid(preds["logit"].to_numpy())
    threshold = float(info["threshold"])
    t_fpr = float(info.get("thresholds", {}).get("fpr", threshold))
    at_t = binary_metrics(y, p, threshold)
    subgroups: dict[str, Any] = {}
    table = preds.assign(y=y)
    for c in (c for c in SUBGROUP_COLUMNS if c in preds):
        sub = subgroup_metrics(table, c, threshold, label_col="y", score_col="p_ai")
        subgroups[c] = sub.to_dict(orient="records")
        if c == "genre":  # the fairness question: how often is each genre's human music flagged
            human = sub[sub["n_human"] > 0]
            subgroups["genre_human_fpr"] = dict(zip(human["group"], human["fpr"], strict=True))
    return {
        **{k: at_t[k] for k in _TOP_LEVEL},
        "n": len(y),
        "n_ai": int(y.sum()),
        "n_human": int(len(y) - y.sum()),
        "temperature": float(info.get("temperature", 1.0)),
        "threshold": threshold,
        "fpr_threshold": t_fpr,
        "target_fpr": info.get("thresholds", {}).get("target_fpr"),
        "at_threshold": at_t,
        "at_fpr_threshold": binary_metrics(y, p, t_fpr),
        "at_0.5_uncalibrated": binary_metrics(y, p_raw, 0.5),
        "ece": {"before": expected_calibration_error(y, p_raw, n_bins),
                "after": expected_calibration_error(y, p, n_bins)},
        "ece_n_bins": n_bins,
        "subgroups": subgroups,
    }


def _write_figures(
    fig_dir: Path, run_dir: Path, y: np.ndarray, p: np.ndarray, p_raw: np.ndarray,
    threshold: float, t_fpr: float, target_fpr: float | None, n_bins: int,
    ece: dict[str, float], draw: bool = True,
) -> None:
    """Each figure as PNG plus the numbers behind it (JSON or CSV)."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    fpr_name = f"FPR {target_fpr:.0%}" if target_fpr is not None else "FPR target"
    points = {"max-F1": threshold, fpr_name: t_fpr}
    both = len(np.unique(y)) == 2

    if both:
        write_json(fig_dir / "roc.json", ({**roc_points(y, p),
                                                         "operating_points": points}))
    write_json(fig_dir / "pr.json", (pr_points(y, p)) if y.any() else {})
    write_json(fig_dir / "confusion.json", {
        "threshold": threshold, "labels": ["human", "ai"],
        "matrix": binary_metrics(y, p, threshold)["confusion"]})
    edges = np.linspace(0, 1, 31)
    write_csv(fig_dir / "score_hist.csv", pd.DataFrame({
        "bin_lower": edges[:-1], "bin_upper": edges[1:],
        "human": np.histogram(p[y == 0], edges)[0], "ai": np.histogram(p[y == 1], edges)[0],
    }))
    curves = {"before (raw)": reliability_curve(y, p_raw, n_bins),
              "after (temperature)": reliability_curve(y, p, n_bins)}
    write_csv(fig_dir / "reliability.csv",
              pd.concat([c.assign(calibration=name) for name, c in curves.items()]))
    history_csv = run_dir / "history.csv"
    history = pd.read_csv(history_csv) if history_csv.exists() else None
    if history is not None:
        write_csv(fig_dir / "history.csv", history)
    if not draw:
        return

    from helpers import plots

    if both:
        plots.save_figure(plots.plot_roc(y, p, points), fig_dir / "roc.png")
    if y.any():
        plots.save_figure(plots.plot_pr(y, p), fig_dir / "pr.png")
    plots.save_figure(plots.plot_confusion(y, p, threshold), fig_dir / "confusion.png")
    plots.save_figure(plots.plot_score_hist(y, p, points), fig_dir / "score_hist.png")
    ece_named = {"before (raw)": ece["before"], "after (temperature)": ece["after"]}
    plots.save_figure(plots.plot_reliability(curves, ece_named), fig_dir / "reliability.png")
    if history is not None and len(history):
        plots.save_figure(plots.plot_history(history), fig_dir / "history.png")
