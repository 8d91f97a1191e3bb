"""Training, resuming, run folders, scoring files and evaluation on tiny synthetic audio."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from helpers.config import FrontEndConfig
from helpers.run import load_run, predict_proba, score_files
from helpers.train import TrainConfig, augment, carve_val_split, train

SR = 16_000
FRONTEND = FrontEndConfig(duration=2.0)  # 63 frames: tiny and fast
FAST = TrainConfig(epochs=2, batch_size=8, lr=2e-3, device="cpu", patience=0, seed=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _clip(label: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(2.0 * SR)) / SR
    if label == "ai":  # a few steady tones: a stand-in for over-clean synthetic audio
        f0 = rng.uniform(200, 800)
        y = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in (1, 2, 3))
        y = y + 0.01 * rng.standard_normal(t.size)
    else:  # broadband noise with a random envelope: a stand-in for a live recording
        y = rng.standard_normal(t.size) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
    return (0.3 * y / np.max(np.abs(y))).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pd.DataFrame:
    """24 train clips (2 excerpts per track, 6 tracks per label) and 8 test clips."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    rows = []
    for label in ("ai", "human"):
        for track in range(6):
            for part in range(2):
                path = root / f"{label}_{track}_{part}.wav"
                sf.write(path, _clip(label, rng), SR)
                rows.append({"path": str(path), "label": label, "split": "train",
                             "track_id": f"{label}{track}", "genre": f"g{track % 2}"})
        for track in range(4):
            path = root / f"{label}_test_{track}.wav"
            sf.write(path, _clip(label, rng), SR)
            rows.append({"path": str(path), "label": label, "split": "test",
                         "track_id": f"{label}_test{track}", "genre": f"g{track % 2}"})
    manifest = pd.DataFrame(rows)
    manifest.to_csv(root / "manifest.csv", index=False)
    return manifest


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def finished_run(corpus, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    return train(corpus, out, preset="tiny", train_config=FAST, cache_dir=cache_dir,
                 frontend=FRONTEND, progress=False)


def test_val_split_is_carved_by_track_and_stratified(corpus):
    carved = carve_val_split(corpus, val_fraction=0.34, seed=0)
    val = carved[carved["split"] == "val"]
    train_rows = carved[carved["split"] == "train"]
    assert set(val["label"]) == {"ai", "human"}
    assert not set(val["track_id"]) & set(train_rows["track_id"])
    assert (carved["split"] == "test").sum() == (corpus["split"] == "test").sum()
    # a manifest that has val rows is left alone
    assert carved.equals(carve_val_split(carved, 0.34, seed=1))


def test_run_folder_holds_everything_needed(finished_run, corpus):
    names = {p.name for p in finished_run.iterdir()}
    assert {"run.json", "best.pt", "last.pt", "history.csv", "splits.csv",
            "val_predictions.csv"} <= names
    info = json.loads((finished_run / "run.json").read_text())
    for key in ("model_config", "train_config", "frontend", "temperature", "threshold",
                "thresholds", "manifest_fingerprint", "n_parameters", "device", "timings"):
        assert key in info, key
    assert info["frontend"] == FRONTEND.to_dict()
    assert info["temperature"] > 0
    assert 0.0 <= info["thresholds"]["fpr"] <= 1.0 + 1e-9
    history = pd.read_csv(finished_run / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert {"train_loss", "val_loss", "val_roc_auc", "lr", "seconds"} <= set(history.columns)
    splits = pd.read_csv(finished_run / "splits.csv")
    assert (splits["split"] == "val").any()
    # excerpts of one track never straddle train and val
    by_track = splits[splits["split"] != "test"].groupby("track_id")["split"].nunique()
    assert (by_track == 1).all()


def test_resume_after_interruption_gives_identical_weights(corpus, cache_dir, finished_run,
                                                           tmp_path):
    out = tmp_path / "interrupted"
    train(corpus, out, preset="tiny", train_config=FAST, cache_dir=cache_dir, frontend=FRONTEND,
          progress=False, stop_after_epochs=1)
    assert (out / "last.pt").exists() and not (out / "run.json").exists()
    with pytest.raises(FileExistsError):
        train(corpus, out, preset="tiny", train_config=FAST, cache_dir=cache_dir,
              frontend=FRONTEND, progress=False)
    train(corpus, out, cache_dir=cache_dir, resume=True, progress=False)
    for name in ("last.pt", "best.pt"):
        a = torch.load(finished_run / name, weights_only=True)["model"]
        b = torch.load(out / name, weights_only=True)["model"]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"
    h_full = pd.read_csv(finished_run / "history.csv")
    h_res = pd.read_csv(out / "history.csv")
    pd.testing.assert_series_equal(h_full["train_loss"], h_res["train_loss"])


def test_load_run_predicts_calibrated_probabilities(finished_run, corpus):
    model, info = load_run(finished_run)
    mel = torch.randn(3, FRONTEND.n_mels, FRONTEND.n_frames) * 10 - 40
    p = predict_proba(model, info, mel)
    assert p.shape == (3,) and np.all((p >= 0) & (p <= 1))
    assert model.embed(mel).shape == (3, model.config.dim)
    test_paths = corpus.loc[corpus["split"] == "test", "path"].tolist()
    scores = score_files(finished_run, test_paths[:3] + ["/nonexistent.wav"], on_error="nan")
    assert scores.shape == (4,) and np.isnan(scores[3]) and np.isfinite(scores[:3]).all()


def test_evaluate_writes_metrics_predictions_and_figures(finished_run, corpus, tmp_path):
    from helpers.evaluate import evaluate

    metrics = evaluate(finished_run, corpus, split="test", out_dir=tmp_path / "eval",
                       progress=False)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("accuracy", "f1", "roc_auc", "pr_auc", "sensitivity", "specificity",
                "at_threshold", "at_fpr_threshold", "ece", "subgroups", "threshold"):
        assert key in saved, key
    assert set(saved["ece"]) == {"before", "after"}
    assert "genre" in saved["subgroups"] and "genre_human_fpr" in saved["subgroups"]
    assert saved["n"] == metrics["n"] == 8
    preds = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert list(preds.columns[:6]) == ["path", "track_id", "label", "logit", "p_ai", "pred"]
    figs = tmp_path / "eval" / "figures"
    for name in ("roc", "pr", "confusion", "score_hist", "reliability", "history"):
        assert (figs / f"{name}.png").exists(), name
        assert (figs / f"{name}.json").exists() or (figs / f"{name}.csv").exists(), name


def test_augment_masks_and_tilts_reproducibly():
    cfg = TrainConfig(time_mask=5, freq_mask=4, random_gain_db=6.0)
    x = torch.randn(4, 128, 63)
    a = augment(x, cfg, torch.Generator().manual_seed(0))
    b = augment(x, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    off = TrainConfig(n_time_masks=0, n_freq_masks=0, random_gain_db=0.0, time_roll=False)
    assert torch.equal(augment(x, off, torch.Generator()), x)
