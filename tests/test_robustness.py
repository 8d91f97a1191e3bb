"""Robustness of a trained run to perturbations, and the codec confound check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import music

from helpers import robustness
from helpers.config import FrontEndConfig
from helpers.io import read_json
from helpers.perturb import apply_perturbation
from helpers.robustness import codec_confound_check, evaluate_robustness, paired_sign_flip_p
from helpers.run import score_files
from helpers.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------
# Evaluation on a tiny trained run
# ------------------------------------------------------------------------------------------

FRONTEND = FrontEndConfig(duration=2.0, sample_rate=16_000)
FAST = TrainConfig(epochs=2, batch_size=8, lr=2e-3, device="cpu", patience=0, seed=3)


def _labelled_clip(label: str, rng: np.random.Generator, sr: int) -> np.ndarray:
    t = np.arange(int(2.0 * sr)) / sr
    if label == "ai":
        f0 = rng.uniform(200, 800)
        y = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in (1, 2, 3))
        y = y + 0.01 * rng.standard_normal(t.size)
    else:
        y = rng.standard_normal(t.size) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
    return (0.3 * y / np.max(np.abs(y))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    rng = np.random.default_rng(0)
    rows = []
    for label in ("ai", "human"):
        for track in range(8):
            path = root / "audio" / f"{label}_{track}.wav"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, _labelled_clip(label, rng, 16_000), 16_000)
            rows.append({"path": str(path), "label": label, "track_id": f"{label}{track}",
                         "split": "test" if track >= 6 else "train"})
    manifest = pd.DataFrame(rows)
    run = train(manifest, root / "run", preset="tiny", train_config=FAST, frontend=FRONTEND,
                progress=False)
    return run, manifest


def test_evaluate_robustness_scores_the_perturbed_audio(tiny_run, tmp_path):
    run, manifest = tiny_run
    deterministic = ["mp3_64", "pitch+2", "stretch0.9"]
    names = [*deterministic, "gain-6dB", "noise20dB", "lowpass8k"]
    table = evaluate_robustness(run, manifest, perturbations=names, progress=False,
                                out_dir=tmp_path / "eval")
    assert table["perturbation"].tolist() == ["clean", *names]
    assert np.isfinite(table["roc_auc"]).all() and np.isfinite(table["fpr_on_human"]).all()
    assert (table["n"] == 4).all() and (table["n_human"] == 2).all()
    assert (tmp_path / "eval" / "robustness.json").exists()
    assert pd.read_csv(tmp_path / "eval" / "robustness.csv").shape[0] == len(table)
    preds = pd.read_csv(tmp_path / "eval" / "robustness_predictions.csv")
    p_ai = preds.pivot(index="path", columns="perturbation", values="p_ai")
    test_paths = sorted(manifest.loc[manifest["split"] == "test", "path"])
    assert sorted(p_ai.index) == test_paths
    clean = p_ai.loc[test_paths, "clean"].to_numpy()
    assert clean == pytest.approx(score_files(run, test_paths), abs=1e-7)

    # Each row must score the perturbed audio: perturb the files yourself, store them
    # losslessly and score them as files; the perturbation has to move P(AI), or this
    # comparison could not tell a perturbed row from a clean one.
    for name in deterministic:
        copies = []
        for path in test_paths:
            y, sr = sf.read(path, dtype="float32")
            copy = tmp_path / name / f"{len(copies)}.wav"
            copy.parent.mkdir(exist_ok=True)
            sf.write(copy, apply_perturbation(name, y, sr), sr, subtype="FLOAT")
            copies.append(copy)
        expected = score_files(run, copies)
        assert np.max(np.abs(expected - clean)) > 1e-4, f"{name} does not move P(AI) here"
        assert p_ai.loc[test_paths, name].to_numpy() == pytest.approx(expected, abs=1e-7), name
    # noise is random (one stream per file): it must move P(AI) beyond float rounding
    assert np.max(np.abs(p_ai.loc[test_paths, "noise20dB"].to_numpy() - clean)) > 1e-6
    # the files are 16 kHz: an 8 kHz low-pass is at Nyquist, a no-op by design
    assert p_ai.loc[test_paths, "lowpass8k"].to_numpy() == pytest.approx(clean, abs=1e-7)


def test_trimming_a_clip_to_nothing_is_counted_not_fatal(tiny_run):
    run, manifest = tiny_run  # 2 s clips: trimming 5 s leaves no audio
    table = evaluate_robustness(run, manifest, perturbations=["trim5s"], progress=False)
    row = table.set_index("perturbation").loc["trim5s"]
    assert row["n"] == 0 and row["n_failed"] == 4 and math.isnan(row["roc_auc"])


def _songs(folder, n: int, sr: int = 16_000) -> list:
    paths = []
    for i in range(n):
        path = folder / f"song{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, music(2.0, sr, seed=i), sr)
        paths.append(path)
    return paths


def test_codec_confound_check_sees_low_bitrate_mp3_and_scores_runs(tiny_run, tmp_path):
    run, _ = tiny_run
    result = codec_confound_check(_songs(tmp_path / "songs", 16), tmp_path / "check",
                                  frontend=FRONTEND, bitrate_kbps=32, n_splits=4,
                                  runs={"tiny": run}, n_permutations=50, progress=False)
    assert result["n_songs"] == 16
    assert len(list((tmp_path / "check" / "wav").glob("*.wav"))) == 16
    assert len(list((tmp_path / "check" / "mp3").glob("*.mp3"))) == 16
    # 32 kbps MP3 band-limits below 8 kHz: the probe must see it, or it could see nothing.
    plain = result["probe"]["plain"]
    assert plain["auc"] > 0.8 and plain["p_value"] < 0.05 and not plain["at_chance"]
    assert len(plain["fold_aucs"]) == 4
    assert plain["auc"] > plain["null_auc_95th_percentile"]
    control = result["probe"]["codec_control"]
    assert 0.0 <= control["auc"] <= 1.0 and 0.0 < control["p_value"] <= 1.0
    clf = result["classifiers"]["tiny"]
    assert clf["codec_control"] is None  # recorded from the run's own front end
    assert 0.0 <= clf["auc_mp3_vs_wav"] <= 1.0
    assert 0.0 <= clf["decision_flips"] <= 1.0 and 0.0 <= clf["share_mp3_scored_higher"] <= 1.0
    saved = json.loads((tmp_path / "check" / "codec_confound.json").read_text())
    assert saved["classifiers"]["tiny"]["p_value"] == clf["p_value"]


def _fake_scorer(threshold: float, mp3_shift: float, jitter: float):
    """Score files as a classifier would that sees the song (file stem) and the format: a
    song's WAV copy scores ``jitter`` above or below (alternating by song) its MP3 copy
    minus `mp3_shift`, and every song sits 0.14 to 0.2 below the run's threshold."""

    def score(run_dir, paths):
        p = []
        for path in map(Path, paths):
            song = int(path.stem.split("-")[0])
            base = threshold - 0.2 + 0.01 * (song % 7)
            p.append(base + (mp3_shift if path.suffix == ".mp3" else jitter * (-1) ** song))
        return np.array(p)

    return score


def test_codec_confound_check_tells_codec_detectors_from_codec_blind_runs(
        tiny_run, tmp_path, monkeypatch):
    run, _ = tiny_run
    threshold = read_json(run / "run.json")["threshold"]
    songs = _songs(tmp_path / "songs", 12)
    verdicts = {}
    for name, shift, jitter in (("blind", 0.0, 0.002), ("erratic", 0.0, 0.1),
                                ("codec", 0.3, 0.002)):
        monkeypatch.setattr(robustness, "score_files", _fake_scorer(threshold, shift, jitter))
        result = codec_confound_check(songs, tmp_path / name, frontend=FRONTEND, n_splits=3,
                                      runs={name: run}, n_permutations=5, progress=False)
        verdicts[name] = result["classifiers"][name]
    blind, erratic, codec = verdicts["blind"], verdicts["erratic"], verdicts["codec"]
    # codec-blind: the copies differ by +-0.002, well inside the +-0.02 margin
    assert blind["at_chance"] and not blind["shift_detected"]
    assert blind["mean_dp"] == pytest.approx(0.0, abs=1e-3)
    assert blind["decision_flips"] == 0.0 and blind["fpr_wav"] == blind["fpr_mp3"] == 0.0
    # unbiased but +-0.1 per song: no shift detected, yet too uncertain to call it chance
    assert not erratic["shift_detected"] and not erratic["at_chance"]
    lo, hi = erratic["mean_dp_ci"]
    assert lo < -0.02 and hi > 0.02
    # every MP3 copy 0.3 higher, across the threshold: flagged on every count
    assert not codec["at_chance"] and codec["shift_detected"]
    assert codec["mean_dp"] == pytest.approx(0.3, abs=0.01)
    assert codec["mean_dp_ci"][0] > 0.2
    assert codec["auc_mp3_vs_wav"] == 1.0 and codec["share_mp3_scored_higher"] == 1.0
    assert codec["decision_flips"] == 1.0
    assert codec["fpr_wav"] == 0.0 and codec["fpr_mp3"] == 1.0


def test_paired_sign_flip_p_tells_a_shift_from_noise():
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(40)
    assert paired_sign_flip_p(np.zeros(40)) == 1.0
    assert paired_sign_flip_p(noise - noise.mean()) > 0.9  # mean exactly zero
    assert paired_sign_flip_p(noise + 1.0) < 0.001
    assert paired_sign_flip_p(-(noise + 1.0)) < 0.001  # two-sided
    ps = [paired_sign_flip_p(rng.standard_normal(20), 2000, seed=s) for s in range(200)]
    assert 0.02 < np.mean(np.array(ps) < 0.05) < 0.10  # about alpha under the null
