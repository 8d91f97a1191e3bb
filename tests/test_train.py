"""Training, early stopping, resuming, calibration and evaluation on tiny synthetic audio."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from helpers.cache import CacheDataset
from helpers.config import FrontEndConfig
from helpers.evaluate import evaluate
from helpers.metrics import (
    binary_nll,
    expected_calibration_error,
    fit_temperature,
    platt_targets,
    sigmoid,
)
from helpers.model import ViTPatchBaseline
from helpers.ood import OODCheck, file_descriptors
from helpers.run import load_run, read_splits
from helpers.train import (
    TrainConfig,
    augment,
    calibrate,
    carve_val_split,
    make_train_loader,
    prepare_batch,
    random_crop,
    train,
)

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
    # what validation chose is flagged as optimistic, with the reason
    assert {"val_roc_auc", "temperature", "threshold", "best_epoch"} <= set(
        info["optimistic"]["values"])
    assert "same validation clips" in info["optimistic"]["why"]
    history = pd.read_csv(finished_run / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert {"train_loss", "val_loss", "val_roc_auc", "lr", "seconds"} <= set(history.columns)
    splits = pd.read_csv(finished_run / "splits.csv")
    assert (splits["split"] == "val").any()
    assert (splits.set_index("path")["manifest_split"]
            == corpus.set_index("path").loc[splits["path"], "split"]).all()
    # excerpts of one track never straddle train and val
    by_track = splits[splits["split"] != "test"].groupby("track_id")["split"].nunique()
    assert (by_track == 1).all()


def test_run_records_what_it_trained_on_and_its_clips_descriptors(finished_run):
    info = json.loads((finished_run / "run.json").read_text())
    splits = read_splits(finished_run)
    fit = splits[splits["split"].isin(["train", "val"])]
    assert info["training_data"] == {"kind": "custom", "manifest": None, "corpus_root": None,
                                     "n_clips": len(fit), "sources": {}}
    # the reference describes the training clips (not validation or test ones), and the
    # threshold is the 99th percentile of the validation clips' distances to it
    train_rows, val_rows = (fit[fit["split"] == s]["path"] for s in ("train", "val"))
    check = OODCheck.load(finished_run, info)
    np.testing.assert_allclose(check.reference, file_descriptors(train_rows, 2.0), rtol=1e-5)
    val_distance = check.distance(file_descriptors(val_rows, 2.0))
    assert check.threshold == pytest.approx(np.quantile(val_distance, 0.99), rel=1e-6)
    assert (info["ood"]["n_val"], info["ood"]["seconds"]) == (len(val_rows), 2.0)


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


def test_calibrate_from_stored_val_logits_reproduces_the_run(finished_run):
    # what benchmarks recompute for cached runs must equal what training stored
    info = json.loads((finished_run / "run.json").read_text())
    val = pd.read_csv(finished_run / "val_predictions.csv")
    cal = calibrate(val["logit"].to_numpy(), (val["label"] == "ai").to_numpy(float),
                    info["train_config"]["target_fpr"])
    assert cal.temperature == pytest.approx(info["temperature"], rel=1e-6)
    assert cal.threshold == pytest.approx(info["threshold"], rel=1e-6)
    assert cal.fpr_threshold == pytest.approx(info["thresholds"]["fpr"], rel=1e-6)


def test_stored_temperature_minimises_validation_nll(finished_run):
    info = json.loads((finished_run / "run.json").read_text())
    val = pd.read_csv(finished_run / "val_predictions.csv")
    logits, y = val["logit"].to_numpy(), (val["label"] == "ai").to_numpy(float)
    t = info["temperature"]
    assert abs(np.log(t)) > 0.1  # this run's logits do need rescaling: the check below bites
    assert t == pytest.approx(fit_temperature(logits, y), rel=1e-3)
    targets = platt_targets(y)  # what the temperature is fitted against
    assert binary_nll(logits, targets, t) < binary_nll(logits, targets, 1.0)
    assert binary_nll(logits, targets, t) <= min(binary_nll(logits, targets, t * f)
                                                 for f in (0.9, 1.1))
    np.testing.assert_allclose(val["p_ai"], sigmoid(logits / t), rtol=1e-5)


def test_evaluate_metrics_match_scikit_learn_on_its_predictions(finished_run, corpus, tmp_path):
    metrics = evaluate(finished_run, corpus, split="test", out_dir=tmp_path / "eval",
                       progress=False)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    info = json.loads((finished_run / "run.json").read_text())
    preds = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert list(preds.columns[:6]) == ["path", "track_id", "label", "logit", "p_ai", "pred"]
    test = corpus[corpus["split"] == "test"]
    assert sorted(preds["path"]) == sorted(test["path"]) and saved["n"] == metrics["n"] == 8
    y = (preds["label"] == "ai").to_numpy(int)
    p = preds["p_ai"].to_numpy()
    np.testing.assert_allclose(p, sigmoid(preds["logit"] / info["temperature"]), rtol=1e-6)
    t = info["threshold"]
    assert saved["threshold"] == t and saved["fpr_threshold"] == info["thresholds"]["fpr"]
    pred = (p >= t).astype(int)
    assert (preds["pred"] == np.where(pred == 1, "ai", "human")).all()
    expected = {
        "roc_auc": roc_auc_score(y, p), "pr_auc": average_precision_score(y, p),
        "accuracy": accuracy_score(y, pred), "f1": f1_score(y, pred, zero_division=0),
        "precision": precision_score(y, pred, zero_division=0),
        "sensitivity": recall_score(y, pred), "specificity": recall_score(1 - y, 1 - pred),
    }
    for key, value in expected.items():
        assert saved[key] == pytest.approx(value, abs=1e-12), key
    assert saved["at_threshold"]["confusion"] == confusion_matrix(y, pred).tolist()
    pred_fpr = (p >= saved["fpr_threshold"]).astype(int)
    assert saved["at_fpr_threshold"]["f1"] == pytest.approx(
        f1_score(y, pred_fpr, zero_division=0), abs=1e-12)
    raw = sigmoid(preds["logit"].to_numpy())
    assert saved["at_0.5_uncalibrated"]["accuracy"] == pytest.approx(
        accuracy_score(y, raw >= 0.5), abs=1e-12)
    assert saved["ece"]["after"] == pytest.approx(expected_calibration_error(y, p, 15))
    human_fpr = {g: float(np.mean(pred[(y == 0) & (preds["genre"] == g).to_numpy()]))
                 for g in sorted(preds["genre"].unique())}
    assert saved["subgroups"]["genre_human_fpr"] == pytest.approx(human_fpr)
    figs = tmp_path / "eval" / "figures"
    for name in ("roc", "pr", "confusion", "score_hist", "reliability", "history"):
        assert (figs / f"{name}.png").exists(), name
        assert (figs / f"{name}.json").exists() or (figs / f"{name}.csv").exists(), name


def test_evaluate_streams_in_batches_with_the_same_predictions(finished_run, corpus, tmp_path,
                                                               monkeypatch):
    from helpers import evaluate as evaluate_module

    read, scored, most_in_ram = [0], [0], [0]
    getitem = CacheDataset.__getitem__

    def counting_getitem(self, i):
        read[0] += 1
        most_in_ram[0] = max(most_in_ram[0], read[0] - scored[0])
        return getitem(self, i)

    def load_counting_run(*args, **kwargs):
        model, info = load_run(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inputs: scored.__setitem__(
            0, scored[0] + len(inputs[0])))
        return model, info

    monkeypatch.setattr(CacheDataset, "__getitem__", counting_getitem)
    monkeypatch.setattr(evaluate_module, "load_run", load_counting_run)
    evaluate(finished_run, corpus, out_dir=tmp_path / "small", progress=False, figures=False,
             batch_size=3)
    assert read[0] == scored[0] == 8
    assert most_in_ram[0] <= 3  # never more than one batch of mels read ahead of the model
    evaluate(finished_run, corpus, out_dir=tmp_path / "big", progress=False, figures=False,
             batch_size=100)
    small = pd.read_csv(tmp_path / "small" / "predictions.csv")
    big = pd.read_csv(tmp_path / "big" / "predictions.csv")
    pd.testing.assert_frame_equal(small, big, rtol=1e-6)


def test_augment_masks_and_tilts_reproducibly():
    cfg = TrainConfig(time_mask=5, freq_mask=4, random_gain_db=6.0)
    x = torch.randn(4, 128, 63)
    a = augment(x, cfg, torch.Generator().manual_seed(0))
    b = augment(x, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    off = TrainConfig(n_time_masks=0, n_freq_masks=0, random_gain_db=0.0, time_roll=False)
    assert torch.equal(augment(x, off, torch.Generator()), x)


# --- early stopping and what validation decides ----------------------------------------------


def test_roc_auc_ties_are_broken_by_validation_loss(finished_run):
    history = pd.read_csv(finished_run / "history.csv")
    info = json.loads((finished_run / "run.json").read_text())
    # This corpus saturates ROC-AUC at once while the loss keeps falling: the case at issue.
    assert (history["val_roc_auc"] == 1.0).all() and history["val_loss"].is_monotonic_decreasing
    assert info["best_epoch"] == 2 and info["val_loss"] == history["val_loss"].iloc[1]
    assert torch.load(finished_run / "best.pt", weights_only=True)["epoch"] == 2


def test_patience_counts_tie_broken_improvements(corpus, cache_dir, tmp_path):
    out = train(corpus, tmp_path / "p1", train_config=replace(FAST, epochs=3, patience=1),
                cache_dir=cache_dir, frontend=FRONTEND, progress=False)
    history = pd.read_csv(out / "history.csv")
    assert (history["val_roc_auc"] == 1.0).all() and history["val_loss"].is_monotonic_decreasing
    info = json.loads((out / "run.json").read_text())
    # a lower loss at an equal ROC-AUC is an improvement, so patience 1 does not stop the run
    assert info["epochs_run"] == 3 and not info["stopped_early"] and info["best_epoch"] == 3


def test_early_stopping_stops_after_patience_epochs_without_improvement(corpus, cache_dir,
                                                                        tmp_path):
    frozen = replace(FAST, epochs=10, patience=2, lr=0.0)  # nothing changes: no epoch is better
    out = train(corpus, tmp_path / "frozen", train_config=frozen, cache_dir=cache_dir,
                frontend=FRONTEND, progress=False)
    info = json.loads((out / "run.json").read_text())
    assert info["stopped_early"] and info["epochs_run"] == 3 and info["best_epoch"] == 1
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == [1, 2, 3]


def test_test_rows_never_touch_temperature_or_thresholds(finished_run, corpus, cache_dir,
                                                         tmp_path):
    changed = corpus.copy()
    test = changed["split"] == "test"
    changed.loc[test, "label"] = changed.loc[test, "label"].map({"ai": "human", "human": "ai"})
    extra = changed[test].assign(path=lambda f: f["path"].str.replace(".wav", "_copy.wav"))
    for src, dst in zip(changed.loc[test, "path"], extra["path"], strict=True):
        sf.write(dst, sf.read(src)[0][::-1].copy(), SR)  # new test clips: reversed audio
    changed = pd.concat([changed, extra], ignore_index=True)
    out = train(changed, tmp_path / "other_test", preset="tiny", train_config=FAST,
                cache_dir=cache_dir, frontend=FRONTEND, progress=False)
    a = json.loads((finished_run / "run.json").read_text())
    b = json.loads((out / "run.json").read_text())
    assert a["manifest_fingerprint"] != b["manifest_fingerprint"]
    for key in ("temperature", "threshold", "thresholds", "val_metrics", "best_epoch"):
        assert a[key] == b[key], key


# --- resume refuses what would silently change the run ----------------------------------------


@pytest.fixture
def interrupted(corpus, cache_dir, tmp_path):
    out = tmp_path / "interrupted"
    train(corpus, out, preset="tiny", train_config=FAST, cache_dir=cache_dir, frontend=FRONTEND,
          progress=False, stop_after_epochs=1)
    return out


def test_resume_refuses_a_changed_manifest(corpus, cache_dir, interrupted):
    def resume(manifest):
        train(manifest, interrupted, train_config=FAST, cache_dir=cache_dir, resume=True,
              progress=False)

    added = pd.concat([corpus, corpus.iloc[[0]].assign(path="/elsewhere/new.wav")])
    with pytest.raises(ValueError, match=r"1 row\(s\) added, 0 removed, 0 with another"):
        resume(added)
    with pytest.raises(ValueError, match=r"0 row\(s\) added, 2 removed, 0 with another"):
        resume(corpus.iloc[2:])
    relabelled = corpus.copy()
    relabelled.loc[[0, 1, 2], "label"] = "human"  # ai rows
    relabelled.loc[relabelled["split"] == "test", "split"] = "train"
    with pytest.raises(ValueError, match=r"0 row\(s\) added, 0 removed, 11 with another"):
        resume(relabelled)
    splits = pd.read_csv(interrupted / "splits.csv")
    assert len(splits) == len(corpus)  # nothing refused was written
    assert not (interrupted / "run.json").exists()


def test_resume_refuses_changed_settings_and_allows_where_it_runs(corpus, cache_dir, interrupted):
    changed = replace(FAST, lr=1e-3, epochs=5)
    with pytest.raises(ValueError, match=r"train_config.epochs 2 -> 5; train_config.lr 0.002 "
                                         r"-> 0.001"):
        train(corpus, interrupted, train_config=changed, cache_dir=cache_dir, resume=True,
              progress=False)
    with pytest.raises(ValueError, match=r"frontend.duration 2.0 -> 3.0"):
        train(corpus, interrupted, cache_dir=cache_dir, resume=True, progress=False,
              frontend=FrontEndConfig(duration=3.0))
    train(corpus, interrupted, train_config=replace(FAST, cpu_threads=1), cache_dir=cache_dir,
          resume=True, progress=False)
    info = json.loads((interrupted / "run.json").read_text())
    assert info["epochs_run"] == 2 and info["train_config"]["cpu_threads"] == 1


# --- what one optimizer step sees ----------------------------------------------------------------


NO_AUGMENT = TrainConfig(n_time_masks=0, n_freq_masks=0, random_gain_db=0.0, time_roll=False)


def test_label_smoothing_pulls_targets_towards_one_half():
    x, y = torch.randn(4, 8, 5), torch.tensor([1.0, 0.0, 1.0, 0.0])
    cfg = replace(NO_AUGMENT, label_smoothing=0.2)
    out, target = prepare_batch(x, y, cfg, torch.Generator(), np.random.default_rng(0))
    assert torch.equal(out, x)
    torch.testing.assert_close(target, torch.tensor([0.9, 0.1, 0.9, 0.1]))
    _, plain = prepare_batch(x, y, NO_AUGMENT, torch.Generator(), np.random.default_rng(0))
    assert torch.equal(plain, y)


def test_mixup_mixes_clips_and_targets_with_one_weight():
    batch = 6
    x = torch.eye(batch).reshape(batch, batch, 1)  # clip i is the i-th basis vector
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    cfg = replace(NO_AUGMENT, mixup_alpha=0.4, label_smoothing=0.1)
    mixed, target = prepare_batch(x, y, cfg, torch.Generator().manual_seed(1),
                                  np.random.default_rng(1))
    weights = mixed[..., 0]  # row i: lam on clip i, 1 - lam on its partner
    diagonal = weights.diagonal()
    lam = diagonal[diagonal < 1][0].item()  # a clip paired with itself keeps weight 1
    assert 0 < lam < 1
    partners = torch.argmax(weights - lam * torch.eye(batch), dim=1)
    assert sorted(partners.tolist()) == list(range(batch))  # a permutation of the batch
    smooth = y * 0.9 + 0.05
    expected = lam * torch.eye(batch) + (1 - lam) * torch.eye(batch)[partners]
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(target, lam * smooth + (1 - lam) * smooth[partners])
    again = prepare_batch(x, y, cfg, torch.Generator().manual_seed(1), np.random.default_rng(1))
    assert torch.equal(again[0], mixed) and torch.equal(again[1], target)
    off = prepare_batch(x, y, replace(cfg, mixup_alpha=0.0), torch.Generator(),
                        np.random.default_rng(1))
    assert torch.equal(off[0], x)


@pytest.mark.parametrize("balance", ["sampler", "pos_weight"])
def test_sampler_balances_classes_and_shuffle_keeps_each_clip_once(balance):
    labels = np.array([1.0] * 3 + [0.0] * 15, np.float32)  # 1 AI clip in 6
    dataset = torch.utils.data.TensorDataset(torch.arange(len(labels)))
    cfg = TrainConfig(batch_size=4, class_balance=balance)
    loader = make_train_loader(dataset, labels, cfg, torch.Generator().manual_seed(0))
    drawn = [torch.cat([b[0] for b in loader]).numpy() for _ in range(60)]
    assert all(len(d) == 16 for d in drawn)  # 18 clips, batches of 4, last partial dropped
    share_ai = labels[np.concatenate(drawn)].mean()
    if balance == "sampler":
        assert 0.45 < share_ai < 0.55
    else:
        assert all(len(set(d)) == 16 for d in drawn)  # without replacement
        assert 0.12 < share_ai < 0.22


def test_vit_baseline_trains_into_a_loadable_run(corpus, cache_dir, tmp_path):
    out = train(corpus, tmp_path / "vit", train_config=replace(FAST, epochs=3, lr=3e-3),
                cache_dir=cache_dir, frontend=FRONTEND, progress=False, model_kind="vit")
    model, info = load_run(out)
    assert isinstance(model, ViTPatchBaseline) and info["model_kind"] == "vit"
    assert info["n_tokens"] == model.config.n_patch_tokens
    history = pd.read_csv(out / "history.csv")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


def test_random_crop_draws_contiguous_windows_from_every_position():
    x = torch.arange(40.0).view(1, 1, 40).expand(256, 3, 40)  # frame index as the value
    crops = random_crop(x, 10, torch.Generator().manual_seed(0))
    assert crops.shape == (256, 3, 10)
    starts = crops[:, 0, 0]
    assert torch.equal(crops, starts.view(-1, 1, 1) + torch.arange(10.0).view(1, 1, 10)
                       .expand(256, 3, 10))  # contiguous, same window for every mel bin
    assert set(starts.tolist()) == set(range(31))  # every start, first and last too
    again = random_crop(x, 10, torch.Generator().manual_seed(0))
    assert torch.equal(crops, again)
    assert random_crop(x, 40, torch.Generator()) is x  # no longer than the window: unchanged


def test_crop_settings_size_the_model_and_the_epoch():
    frontend = FrontEndConfig(duration=30.0)
    cfg = TrainConfig(crop_seconds=10.0, crops_per_clip=3)
    assert cfg.window_frames(frontend) == FrontEndConfig(duration=10.0).n_frames == 313
    assert cfg.draws_per_clip(frontend) == 3
    whole = TrainConfig(crop_seconds=0.0, crops_per_clip=3)
    assert whole.window_frames(frontend) == 938 and whole.draws_per_clip(frontend) == 1
    assert TrainConfig(crop_seconds=30.0).window_frames(frontend) == 938
    # A run saved before crops existed trained on whole clips and loads as such.
    legacy = {k: v for k, v in TrainConfig().to_dict().items()
              if k not in ("crop_seconds", "crops_per_clip")}
    assert TrainConfig.from_dict(legacy).window_frames(frontend) == 938
    labels = np.array([0.0, 1.0] * 5, np.float32)
    loader = make_train_loader(torch.utils.data.TensorDataset(torch.arange(10)), labels,
                               TrainConfig(batch_size=5), torch.Generator().manual_seed(0),
                               draws_per_clip=3)
    drawn = torch.cat([b[0] for b in loader]).numpy()
    assert sorted(drawn.tolist()) == sorted(list(range(10)) * 3)  # each clip 3 times


def test_cropped_training_builds_a_window_model_that_reads_whole_clips(corpus, cache_dir,
                                                                      tmp_path):
    cfg = replace(FAST, crop_seconds=1.0, crops_per_clip=2)
    out = train(corpus, tmp_path / "crop", train_config=cfg, cache_dir=cache_dir,
                frontend=FRONTEND, progress=False)
    model, info = load_run(out)
    assert model.config.n_frames == cfg.window_frames(FRONTEND) < FRONTEND.n_frames
    history = pd.read_csv(out / "history.csv")
    seen = (history["clips_per_second"] * history["seconds"]).to_numpy()
    expected = info["n_clips"]["train"] * 2 // cfg.batch_size * cfg.batch_size  # 2 draws/clip
    np.testing.assert_allclose(seen, expected, rtol=0.02)
    result = evaluate(out, corpus, split="test", out_dir=tmp_path / "eval", progress=False)
    assert result["n"] == (corpus["split"] == "test").sum()
    assert 0.0 <= result["roc_auc"] <= 1.0
