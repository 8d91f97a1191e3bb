"""Figures for the embedding space and the recommender; each returns a matplotlib Figure."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # headless (CI, servers); notebooks set their own inline backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def plot_tsne(
    xy: np.ndarray,
    labels: Sequence[str],
    styles: Sequence[str] | None = None,
    title: str = "Embedding map (t-SNE)",
) -> Figure:
    """Scatter a 2-D map coloured by label.

    Parameters
    ----------
    xy : np.ndarray, shape (n, 2)
        From `helpers.retrieval.tsne_2d`.
    labels : sequence of str, length n
        Colour (e.g. genre/style).
    styles : sequence of str, length n, optional
        Marker (e.g. "ai"/"human").
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    xy = np.asarray(xy)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) != len(labels):
        raise ValueError(f"need xy (n, 2) and n labels, got {xy.shape} and {len(labels)}")
    fig, ax = plt.subplots(figsize=(7, 6))
    sns.scatterplot(x=xy[:, 0], y=xy[:, 1], hue=list(labels),
                    style=None if styles is None else list(styles), s=28, alpha=0.85,
                    ax=ax, palette="tab10")
    ax.set(title=title, xticks=[], yticks=[], xlabel="t-SNE 1", ylabel="t-SNE 2")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


def plot_per_genre_precision(
    per_genre: Mapping[str, float] | Mapping[str, Mapping[str, float]],
    k: int | None = None,
    title: str | None = None,
) -> Figure:
    """Bar chart of precision@K per genre, optionally for several settings side by side.

    Parameters
    ----------
    per_genre : {genre: P@K} or {setting: {genre: P@K}}
        E.g. ``leave_one_out(...)["per_label"]``, or
        ``{"all neighbours": ..., "other artists only": ...}``.
    k : int, optional
        For the axis label.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    first = next(iter(per_genre.values()), None)
    nested = isinstance(first, Mapping)
    series = per_genre if nested else {"P@K": per_genre}
    frame = pd.DataFrame([{"genre": g, "setting": s, "precision": float(v)}
                          for s, d in series.items() for g, v in d.items()],
                         columns=["genre", "setting", "precision"])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * frame["genre"].nunique() + 2), 4))
    sns.barplot(data=frame, x="genre", y="precision", hue="setting" if nested else None, ax=ax)
    ax.set(ylim=(0, 1), ylabel=f"precision@{k}" if k else "precision@K", xlabel="genre",
           title=title or "Same-genre share of the recommendations")
    ax.tick_params(axis="x", rotation=30)
    if nested:
        ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig
