"""Classifier metrics, thresholds and calibration: pure functions on arrays.

Label convention everywhere: ``1`` = AI-generated (the positive class), ``0`` = human. So
*sensitivity* is the share of AI clips caught and *specificity* the share of human clips left
alone; the false-positive rate ``1 - specificity`` is the costly error (a human artist flagged).
The sklearn implementations are the reference; this module adds the task's conventions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

_EPS = 1e-12


def _as_arrays(y_true: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(p, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but the scores have {s.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0 (human) and 1 (AI) only")
    return y, s


def _safe_ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def binary_metrics(y_true: Any, p: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Decision metrics at a threshold plus threshold-free ranking metrics.

    Parameters
    ----------
    y_true : array-like, shape (n,)
        1 for AI, 0 for human.
    p : array-like, shape (n,)
        Scores, usually the probability of AI; predicted AI when ``p >= threshold``.
    threshold : float

    Returns
    -------
    dict
        ``accuracy, precision, recall, f1, sensitivity`` (= recall on AI), ``specificity``
        (= recall on human), ``fpr``, ``fnr``, ``roc_auc``, ``pr_auc`` (average precision),
        ``confusion`` ``[[tn, fp], [fn, tp]]``, ``n``, ``n_ai``, ``n_human``, ``threshold``.
        Undefined values (e.g. ROC-AUC with one class present) are NaN.
    """
    y, s = _as_arrays(y_true, p)
    pred = (s >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    precision = _safe_ratio(tp, tp + fp)
    recall = _safe_ratio(tp, tp + fn)
    specificity = _safe_ratio(tn, tn + fp)
    both = len(np.unique(y)) == 2
    f1 = _safe_ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "threshold": float(threshold),
        "accuracy": _safe_ratio(tp + tn, len(y)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "sensitivity": recall,
        "specificity": specificity,
        "fpr": _safe_ratio(fp, tn + fp),
        "fnr": _safe_ratio(fn, tp + fn),
        "roc_auc": float(roc_auc_score(y, s)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, s)) if y.any() else float("nan"),
        "confusion": [[int(tn), int(fp)], [int(fn), int(tp)]],
        "n": int(len(y)),
        "n_ai": int(y.sum()),
        "n_human": int(len(y) - y.sum()),
    }


def choose_threshold_max_f1(y_true: Any, p: Any) -> float:
    """Threshold that maximises F1 on the AI class.

    Returns the midpoint between the best score and the next lower one, so that a slightly
    shifted score on new data falls on the same side. Returns 0.5 when there is no AI clip.
    """
    y, s = _as_arrays(y_true, p)
    if not y.any():
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = 2 * precision * recall / np.maximum(precision + recall, _EPS)
    best = int(np.argmax(f1[:-1]))  # the last point (recall 0) has no threshold
    t = float(thresholds[best])
    lower = s[s < t]
    return float((t + lower.max()) / 2) if lower.size else t


def threshold_for_fpr(y_true: Any, p: Any, target_fpr: float = 0.05) -> float:
    """Lowest threshold whose false-positive rate on human clips is at most `target_fpr`.

    Predicting AI when ``p >= threshold`` flags at most ``floor(target_fpr * n_human)`` of the
    human clips used here. With few human clips the achievable FPR is coarse (steps of
    ``1 / n_human``), so the realised FPR may be well under the target.

    Parameters
    ----------
    y_true, p : array-like, shape (n,)
    target_fpr : float
        In [0, 1].

    Returns
    -------
    float
        The threshold; ``nextafter(max human score, inf)`` when ``target_fpr`` is 0.
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target_fpr must be in [0, 1], got {target_fpr}")
    y, s = _as_arrays(y_true, p)
    human = np.sort(s[y == 0])[::-1]  # descending
    if human.size == 0:
        return 0.5
    allowed = int(np.floor(target_fpr * human.size + 1e-9))  # human clips we may flag
    if allowed >= human.size:
        return float(human[-1])
    # Flag exactly the `allowed` highest human scores: threshold just above the next one.
    return float(np.nextafter(human[allowed], np.inf))


def expected_calibration_error(y_true: Any, p: Any, n_bins: int = 15) -> float:
    """Expected calibration error of P(AI) with equal-width bins.

    ``ECE = sum_b (n_b / n) * |mean(y in b) - mean(p in b)|``.
    """
    curve = reliability_curve(y_true, p, n_bins=n_bins)
    n = curve["count"].sum()
    if n == 0:
        return float("nan")
    gap = np.abs(curve["frac_positive"] - curve["mean_predicted"])
    return float(np.nansum(curve["count"] * gap) / n)


def reliability_curve(y_true: Any, p: Any, n_bins: int = 15) -> pd.DataFrame:
    """Per-bin mean predicted probability vs observed frequency of AI.

    Returns
    -------
    pd.DataFrame
        One row per bin: ``bin_lower, bin_upper, count, mean_predicted, frac_positive``
        (NaN for empty bins).
    """
    y, s = _as_arrays(y_true, p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(s, edges[1:-1], right=False), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=s, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / np.maximum(count, 1), np.nan)
        frac = np.where(count > 0, sum_y / np.maximum(count, 1), np.nan)
    return pd.DataFrame({
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "count": count,
        "mean_predicted": mean_p,
        "frac_positive": frac,
    })


def sigmoid(x: Any) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x, dtype=float)
    return np.exp(-np.logaddexp(0.0, -x))


def binary_nll(logits: Any, y: Any, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits / temperature)`` against targets `y` in
    [0, 1] (hard labels or `platt_targets`)."""
    z = np.asarray(logits, dtype=float).ravel() / temperature
    y = np.asarray(y, dtype=float).ravel()
    # -[y log s(z) + (1-y) log(1-s(z))] = logaddexp(0, z) - y z
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def platt_targets(y: Any) -> np.ndarray:
    """Platt's (1999) smoothed calibration targets: ``(N+ + 1) / (N+ + 2)`` for AI clips and
    ``1 / (N- + 2)`` for human ones, instead of 1 and 0.

    On a validation set the model separates perfectly (small sets often are), hard targets
    make the NLL fall without end as the temperature goes to 0, and every probability
    saturates at 0 or 1; these targets keep a finite temperature, and they tend to 1 and 0 as
    the set grows.
    """
    yy = np.asarray(y, dtype=float).ravel()
    n_pos, n_neg = float(yy.sum()), float(len(yy) - yy.sum())
    return np.where(yy > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))


def fit_temperature(logits: Any, y: Any) -> float:
    """Temperature scaling: the ``T > 0`` minimising the NLL of ``sigmoid(logits / T)``
    against `platt_targets` (so a separable validation set gives a finite ``T``).

    One scalar, so the ranking (ROC-AUC) is unchanged; only the confidence is rescaled.
    Searched over ``log T`` in ``[-4, 4]`` (T from 0.018 to 55).

    Parameters
    ----------
    logits : array-like, shape (n,)
        Validation logits (never the test set).
    y : array-like, shape (n,)
        1 for AI, 0 for human.

    Returns
    -------
    float
        The temperature; 1.0 when `y` holds a single class (nothing to calibrate against).
    """
    z = np.asarray(logits, dtype=float).ravel()
    yy = np.asarray(y, dtype=float).ravel()
    if z.size == 0 or len(np.unique(yy)) < 2:
        return 1.0
    targets = platt_targets(yy)
    res = minimize_scalar(
        lambda log_t: binary_nll(z, targets, float(np.exp(log_t))),
        bounds=(-4.0, 4.0),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(res.x))


def subgroup_metrics(
    df: pd.DataFrame,
    group_col: str,
    threshold: float,
    label_col: str = "y",
    score_col: str = "p_ai",
    min_count: int = 1,
) -> pd.DataFrame:
    """`binary_metrics` for each value of a column (e.g. genre, source, generator).

    Parameters
    ----------
    df : pd.DataFrame
        One row per clip with `group_col`, `label_col` (1 AI / 0 human) and `score_col`.
    group_col : str
    threshold : float
        Decision threshold (predict AI when score >= threshold).
    label_col, score_col : str
    min_count : int
        Groups with fewer rows are left out.

    Returns
    -------
    pd.DataFrame
        One row per group: ``group, n, n_ai, n_human, accuracy, f1, sensitivity,
        specificity, fpr, roc_auc``; ``fpr`` is the false-positive rate on the group's human
        clips (NaN without human clips), which is the per-genre fairness number that matters.
    """
    rows = []
    for value, part in df.groupby(group_col, sort=True, dropna=False):
        if len(part) < min_count:
            continue
        m = binary_metrics(part[label_col].to_numpy(), part[score_col].to_numpy(), threshold)
        rows.append({
            "group": str(value),
            **{k: m[k] for k in ("n", "n_ai", "n_human", "accuracy", "f1", "sensitivity",
                                 "specificity", "fpr", "roc_auc")},
        })
    return pd.DataFrame(rows)


def roc_points(y_true: Any, p: Any) -> dict[str, list[float]]:
    """ROC curve as plain lists (``fpr, tpr, threshold``) for JSON/CSV next to figures."""
    y, s = _as_arrays(y_true, p)
    fpr, tpr, thr = roc_curve(y, s)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": thr.tolist()}


def pr_points(y_true: Any, p: Any) -> dict[str, list[float]]:
    """Precision-recall curve as plain lists (``precision, recall, threshold``)."""
    y, s = _as_arrays(y_true, p)
    precision, recall, thr = precision_recall_curve(y, s)
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "threshold": np.append(thr, np.nan).tolist(),
    }
