"""Classifier figures: each function takes arrays and returns a matplotlib `Figure`.

The caller decides where a figure goes (`save_figure` writes a 300 dpi PNG atomically). One
style and one palette everywhere: AI clips are always `AI_COLOR`, human clips `HUMAN_COLOR`.
Embedding plots (t-SNE, per-genre bars) live in their own module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # headless (CI, servers); notebooks set their own inline backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import auc, precision_recall_curve, roc_curve  # noqa: E402

from helpers.io import atomic_path  # noqa: E402

AI_COLOR = "#D1495B"  # warm red: the class we flag
HUMAN_COLOR = "#2E86AB"  # calm blue: the class we protect
NEUTRAL_COLOR = "#6C757D"
PALETTE = {"ai": AI_COLOR, "human": HUMAN_COLOR}
DPI = 300


def set_style() -> None:
    """Seaborn whitegrid with larger-than-default text (readable at slide size)."""
    sns.set_theme(style="whitegrid", context="notebook", font_scale=1.15)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Write a figure as PNG (300 dpi) via a temporary file, then close it.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")  # layout="constrained" already fits the labels
    plt.close(fig)
    return path


def _fig(figsize: tuple[float, float] = (5.5, 5.0)) -> tuple[Figure, Any]:
    set_style()
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def plot_roc(
    y_true: Any, p: Any, operating_points: dict[str, float] | None = None, title: str = "ROC"
) -> Figure:
    """ROC curve with its AUC, optionally marking thresholds (name → threshold).

    Parameters
    ----------
    y_true : array-like, shape (n,)
        1 AI, 0 human.
    p : array-like, shape (n,)
        P(AI) or any score.
    operating_points : dict, optional
        e.g. ``{"max-F1": 0.42, "FPR 5%": 0.81}``; each is drawn as a dot on the curve.
    """
    y, s = np.asarray(y_true).astype(int), np.asarray(p, dtype=float)
    fpr, tpr, _ = roc_curve(y, s)
    fig, ax = _fig()
    ax.plot(fpr, tpr, color=AI_COLOR, lw=2.2, label=f"AUC = {auc(fpr, tpr):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color=NEUTRAL_COLOR, lw=1, label="chance")
    for i, (name, t) in enumerate((operating_points or {}).items()):
        pred = s >= t
        x = pred[y == 0].mean() if (y == 0).any() else np.nan
        yy = pred[y == 1].mean() if (y == 1).any() else np.nan
        ax.scatter([x], [yy], s=60, zorder=3, color=f"C{i + 2}",
                   label=f"{name} (t={t:.2f}): FPR {x:.1%}, TPR {yy:.1%}")
    ax.set(xlabel="False-positive rate (human flagged as AI)",
           ylabel="True-positive rate (AI caught)", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
           title=title)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_pr(y_true: Any, p: Any, title: str = "Precision-recall (AI = positive)") -> Figure:
    """Precision-recall curve for the AI class with its average precision and base rate."""
    y, s = np.asarray(y_true).astype(int), np.asarray(p, dtype=float)
    precision, recall, _ = precision_recall_curve(y, s)
    ap = float(np.sum(np.diff(recall[::-1]) * precision[::-1][1:]))
    fig, ax = _fig()
    ax.step(recall, precision, where="post", color=AI_COLOR, lw=2.2, label=f"AP = {ap:.3f}")
    ax.axhline(y.mean(), ls="--", color=NEUTRAL_COLOR, lw=1, label=f"base rate {y.mean():.2f}")
    ax.set(xlabel="Recall (AI caught)", ylabel="Precision (flags that are AI)",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.03), title=title)
    ax.legend(loc="lower left", fontsize="small")
    return fig


def plot_confusion(
    y_true: Any, p: Any, threshold: float = 0.5, normalize: bool = True,
    title: str | None = None,
) -> Figure:
    """Confusion matrix at a threshold: counts, and row shares when `normalize`."""
    y, s = np.asarray(y_true).astype(int), np.asarray(p, dtype=float)
    pred = (s >= threshold).astype(int)
    # Rows/columns ordered human, AI (negative first, as sklearn).
    cm = np.array([[np.sum((y == t) & (pred == q)) for q in (0, 1)] for t in (0, 1)])
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    labels = np.array([
        [f"{cm[i, j]}\n({share[i, j]:.1%})" if normalize else f"{cm[i, j]}" for j in (0, 1)]
        for i in (0, 1)
    ])
    fig, ax = _fig((5.0, 4.4))
    sns.heatmap(share if normalize else cm, annot=labels, fmt="", cmap="Blues", cbar=False,
                vmin=0, vmax=1 if normalize else None, ax=ax,
                xticklabels=["human", "AI"], yticklabels=["human", "AI"],
                annot_kws={"fontsize": 13})
    ax.set(xlabel="Predicted", ylabel="True",
           title=title or f"Confusion matrix (threshold {threshold:.2f})")
    return fig


def plot_score_hist(
    y_true: Any, p: Any, thresholds: dict[str, float] | None = None, bins: int = 30,
    title: str = "Scores by true class",
) -> Figure:
    """Histograms of P(AI) for human and AI clips, with threshold lines."""
    y, s = np.asarray(y_true).astype(int), np.asarray(p, dtype=float)
    edges = np.linspace(0, 1, bins + 1) if s.min() >= 0 and s.max() <= 1 else bins
    fig, ax = _fig((6.5, 4.4))
    for value, name in ((0, "human"), (1, "ai")):
        part = s[y == value]
        if part.size:
            ax.hist(part, bins=edges, alpha=0.6, color=PALETTE[name],
                    label=f"{'AI' if value else 'human'} (n={part.size})")
    for i, (name, t) in enumerate((thresholds or {}).items()):
        ax.axvline(t, color=f"C{i + 2}", ls="--", lw=1.5, label=f"{name} = {t:.2f}")
    ax.set(xlabel="P(AI)", ylabel="Clips", title=title)
    ax.legend(fontsize="small")
    return fig


def plot_reliability(
    curves: dict[str, pd.DataFrame], ece: dict[str, float] | None = None,
    title: str = "Reliability diagram",
) -> Figure:
    """Reliability diagram: observed AI frequency against mean predicted P(AI) per bin.

    Parameters
    ----------
    curves : dict of name → DataFrame
        Outputs of `helpers.metrics.reliability_curve`, e.g. ``{"before": ..., "after": ...}``
        for uncalibrated and temperature-scaled probabilities.
    ece : dict of name → float, optional
        Expected calibration errors, shown in the legend.
    """
    fig, ax = _fig()
    ax.plot([0, 1], [0, 1], ls="--", color=NEUTRAL_COLOR, lw=1, label="perfect")
    styles = [(NEUTRAL_COLOR, "s"), (AI_COLOR, "o"), (HUMAN_COLOR, "^")]
    for i, (name, curve) in enumerate(curves.items()):
        color, marker = styles[i % len(styles)]
        ok = curve["count"] > 0
        label = name if not ece or name not in ece else f"{name} (ECE {ece[name]:.3f})"
        ax.plot(curve.loc[ok, "mean_predicted"], curve.loc[ok, "frac_positive"],
                marker=marker, color=color, lw=1.8, label=label)
    ax.set(xlabel="Mean predicted P(AI)", ylabel="Observed share of AI clips",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title=title)
    ax.legend(loc="upper left", fontsize="small")
    return fig


def plot_history(history: pd.DataFrame, title: str = "Training") -> Figure:
    """Loss (train/val) and validation ROC-AUC per epoch from a run's ``history.csv``."""
    set_style()
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10.5, 4.2), layout="constrained")
    ax_loss.plot(history["epoch"], history["train_loss"], marker="o", color=NEUTRAL_COLOR,
                 label="train")
    if "val_loss" in history:
        ax_loss.plot(history["epoch"], history["val_loss"], marker="o", color=AI_COLOR,
                     label="validation")
    ax_loss.set(xlabel="Epoch", ylabel="BCE loss", title="Loss")
    ax_loss.legend()
    if "val_roc_auc" in history:
        ax_auc.plot(history["epoch"], history["val_roc_auc"], marker="o", color=AI_COLOR)
        best = history["val_roc_auc"].idxmax() if history["val_roc_auc"].notna().any() else None
        if best is not None:
            ax_auc.scatter([history.loc[best, "epoch"]], [history.loc[best, "val_roc_auc"]],
                           s=120, facecolors="none", edgecolors="k", label="best (kept)")
            ax_auc.legend(loc="lower right")
    ax_auc.set(xlabel="Epoch", ylabel="ROC-AUC", title="Validation ROC-AUC")
    fig.suptitle(title)
    return fig


def plot_spectrograms(
    ai_mel: np.ndarray, human_mel: np.ndarray, sr: int = 16_000, hop: int = 512,
    titles: tuple[str, str] = ("AI-generated", "Human"),
) -> Figure:
    """Two dB mel spectrograms side by side on one colour scale.

    Parameters
    ----------
    ai_mel, human_mel : np.ndarray, shape (n_mels, frames)
        dB mel spectrograms (e.g. `helpers.audio.mel_db`).
    sr, hop : int
        Sample rate and hop length, for the time axis in seconds.
    """
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained", sharey=True)
    vmin = float(min(ai_mel.min(), human_mel.min()))
    vmax = float(max(ai_mel.max(), human_mel.max()))
    image = None
    for ax, mel, name, color in zip(axes, (ai_mel, human_mel), titles, (AI_COLOR, HUMAN_COLOR)):
        seconds = mel.shape[1] * hop / sr
        image = ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=vmin,
                          vmax=vmax, extent=(0, seconds, 0, mel.shape[0]))
        ax.set_title(name, color=color, fontweight="bold")
        ax.set_xlabel("Time (s)")
        ax.grid(False)
    axes[0].set_ylabel("Mel bin")
    fig.colorbar(image, ax=axes, label="dB", shrink=0.9)
    return fig


def plot_robustness(
    perturbations: list[str], runs: dict[str, tuple[Any, Any]], title: str = ""
) -> Figure:
    """Grouped bars of ROC-AUC and false-positive rate on human music per perturbation.

    Parameters
    ----------
    perturbations : list of str, length p
        Bar-group labels (``"clean"`` first, as `helpers.robustness.evaluate_robustness` gives).
    runs : dict
        Run name → ``(roc_auc, fpr_on_human)``, each array-like of shape (p,); e.g.
        ``{"no augmentation": (...), "perturbation augmentation": (...)}``.
    title : str
        Figure title (say which data it was measured on).
    """
    set_style()
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 0.55 * len(perturbations) + 2), 7.5),
                             layout="constrained", sharex=True)
    x = np.arange(len(perturbations))
    width = 0.8 / max(len(runs), 1)
    colors = [NEUTRAL_COLOR, HUMAN_COLOR, AI_COLOR, "#F0A202"]
    for i, (name, (roc_auc, fpr)) in enumerate(runs.items()):
        offset = (i - (len(runs) - 1) / 2) * width
        for ax, values in zip(axes, (roc_auc, fpr)):
            ax.bar(x + offset, np.asarray(values, float), width, label=name,
                   color=colors[i % len(colors)])
    axes[0].axhline(0.5, ls="--", color=NEUTRAL_COLOR, lw=1)
    axes[0].set(ylabel="ROC-AUC", ylim=(0, 1.02))
    axes[1].set(ylabel="FPR on human music\n(at the run's threshold)", ylim=(0, 1.02))
    axes[0].legend(loc="lower left", fontsize=9)
    axes[1].set_xticks(x, perturbations, rotation=45, ha="right")
    if title:
        fig.suptitle(title)
    return fig
