"""Metrics, thresholds and calibration agree with sklearn and honour their contracts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from helpers.metrics import (
    binary_metrics,
    binary_nll,
    choose_threshold_max_f1,
    expected_calibration_error,
    fit_temperature,
    platt_targets,
    reliability_curve,
    sigmoid,
    subgroup_metrics,
    threshold_for_fpr,
)


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(120), np.zeros(200)].astype(int)
    p = np.clip(np.where(y == 1, rng.normal(0.7, 0.2, y.size), rng.normal(0.3, 0.2, y.size)),
                0, 1)
    return y, p


def test_binary_metrics_match_sklearn(scored):
    y, p = scored
    m = binary_metrics(y, p, threshold=0.5)
    pred = (p >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["recall"] == pytest.approx(recall_score(y, pred))
    assert m["sensitivity"] == m["recall"]
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    (tn, fp), (fn, tp) = m["confusion"]
    assert tn + fp == m["n_human"] == 200 and fn + tp == m["n_ai"] == 120
    assert m["fpr"] == pytest.approx(fp / 200)


def test_known_small_case():
    m = binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], threshold=0.5)
    assert m["confusion"] == [[1, 1], [1, 1]]
    assert m["accuracy"] == 0.5 and m["roc_auc"] == 0.75
    single = binary_metrics([0, 0], [0.2, 0.7])
    assert np.isnan(single["roc_auc"]) and single["fpr"] == 0.5


def test_max_f1_threshold_beats_the_default(scored):
    y, p = scored
    t = choose_threshold_max_f1(y, p)
    best = binary_metrics(y, p, t)["f1"]
    for other in np.linspace(0.05, 0.95, 19):
        assert best >= binary_metrics(y, p, other)["f1"] - 1e-12


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2])
def test_threshold_for_fpr_honours_the_target(scored, target):
    y, p = scored
    t = threshold_for_fpr(y, p, target)
    fpr = np.mean(p[y == 0] >= t)
    assert fpr <= target + 1e-12
    # and it is the lowest such threshold: any lower score would flag one more human clip
    lower = np.sort(p[y == 0][p[y == 0] < t])
    if lower.size:
        assert np.mean(p[y == 0] >= lower[-1]) > target


def test_temperature_scaling_lowers_nll_on_overconfident_logits():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < sigmoid(true_logits)).astype(int)
    overconfident = 4.0 * true_logits
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(4.0, rel=0.15)
    assert binary_nll(overconfident, y, t) < binary_nll(overconfident, y) - 0.1
    assert fit_temperature(overconfident, np.ones(4000)) == 1.0  # one class: nothing to fit


def test_a_separable_validation_set_gets_a_finite_temperature():
    # 8 human and 8 AI clips, perfectly separated: hard targets drive T to its lower bound
    # (every probability 0 or 1); Platt's targets stop where sigmoid(z / T) ~ 9/10 and 1/10
    logits = np.r_[np.linspace(-9, -4, 8), np.linspace(4, 9, 8)]
    y = np.r_[np.zeros(8), np.ones(8)]
    hard = min(np.exp(np.linspace(-4, 4, 801)), key=lambda t: binary_nll(logits, y, t))
    assert hard == pytest.approx(np.exp(-4))
    np.testing.assert_allclose(platt_targets(y), np.r_[np.full(8, 0.1), np.full(8, 0.9)])
    t = fit_temperature(logits, y)
    p = sigmoid(logits / t)
    assert 1.5 < t < 10 and 0.8 < p[y == 1].mean() < 0.99 and 0.01 < p[y == 0].mean() < 0.2


def test_ece_is_near_zero_for_calibrated_probabilities():
    rng = np.random.default_rng(2)
    p = rng.random(50_000)
    y = (rng.random(p.size) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, np.clip(p * 0.5 + 0.5, 0, 1)) > 0.2
    curve = reliability_curve(y, p, n_bins=10)
    assert len(curve) == 10 and curve["count"].sum() == p.size


def test_subgroup_metrics_report_false_positive_rate_per_group():
    df = pd.DataFrame({
        "genre": ["rock"] * 4 + ["jazz"] * 4,
        "y": [0, 0, 1, 1, 0, 0, 0, 1],
        "p_ai": [0.9, 0.1, 0.8, 0.7, 0.2, 0.3, 0.1, 0.9],
    })
    out = subgroup_metrics(df, "genre", threshold=0.5).set_index("group")
    assert out.loc["rock", "fpr"] == 0.5 and out.loc["jazz", "fpr"] == 0.0
    assert out.loc["jazz", "n_human"] == 3 and out.loc["rock", "n"] == 4
