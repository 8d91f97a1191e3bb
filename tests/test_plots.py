"""Classifier plots return figures from plain arrays, and save_figure writes a 300 dpi PNG."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from helpers import plots
from helpers.metrics import reliability_curve


def _scores():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(40), np.zeros(60)].astype(int)
    return y, np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)


def test_every_classifier_plot_returns_a_figure():
    y, p = _scores()
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.7, 0.5, 0.4],
                            "val_loss": [0.7, 0.6, 0.65], "val_roc_auc": [0.6, 0.8, 0.75]})
    curves = {"before": reliability_curve(y, p), "after": reliability_curve(y, p ** 0.8)}
    mel = np.random.default_rng(1).normal(-40, 10, (128, 63))
    figures = [
        plots.plot_roc(y, p, {"max-F1": 0.5, "FPR 5%": 0.8}),
        plots.plot_pr(y, p),
        plots.plot_confusion(y, p, 0.5),
        plots.plot_score_hist(y, p, {"t": 0.5}),
        plots.plot_reliability(curves, {"before": 0.1, "after": 0.05}),
        plots.plot_history(history),
        plots.plot_spectrograms(mel, mel - 5, sr=16_000, hop=512),
    ]
    assert all(isinstance(f, Figure) for f in figures)
    for f in figures:
        plots.plt.close(f)


def test_save_figure_writes_png_at_300_dpi(tmp_path):
    y, p = _scores()
    path = plots.save_figure(plots.plot_confusion(y, p), tmp_path / "sub" / "cm.png")
    assert path.exists() and not list(path.parent.glob(".*tmp*"))
    dpi = Image.open(path).info.get("dpi", (0, 0))
    assert round(dpi[0]) == 300
