"""Classify, then recommend: the README's demo command and the Analyzer built on its outputs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import tone

from helpers import pipeline
from helpers.audio import AudioError
from helpers.config import FrontEndConfig
from helpers.embed import FeatureEmbedder
from helpers.index import build_index
from helpers.io import write_json
from helpers.ood import OODCheck
from helpers.pipeline import (
    VERDICT_AI,
    VERDICT_DEMO,
    VERDICT_HUMAN,
    VERDICT_NO_RUN,
    VERDICT_OOD,
    Analyzer,
    analyze,
    analyze_many,
    format_results,
)
from helpers.train import TrainConfig, train

SR = 16_000


def _tiny_run(root, demo_like: bool = False):
    """A run trained for one epoch on 2 s clips and a features index: fast, not the demo.

    `demo_like` lays the clips out as a demo corpus (a ``corpus.json`` beside them), so the
    run records that it was trained on the synthetic demo corpus.
    """
    if demo_like:
        write_json(root / "corpus.json", {"generator_version": 0, "config": {}})
    rows = []
    for label, base in (("ai", 300.0), ("human", 700.0)):
        for track in range(4):
            for part in range(2):
                path = root / f"{label}_{track}_{part}.wav"
                sf.write(path, tone(2.0, SR, base + 40 * track, seed=10 * track + part), SR)
                rows.append({"path": str(path), "label": label, "split": "train",
                             "track_id": f"{label}{track}", "genre": f"g{track % 2}"})
    manifest = pd.DataFrame(rows)
    run = train(manifest, root / "run", preset="tiny", cache_dir=root / "cache",
                train_config=TrainConfig(epochs=1, batch_size=8, device="cpu", patience=0),
                frontend=FrontEndConfig(duration=2.0), progress=False)
    build_index(manifest, root / "index", FeatureEmbedder(max_seconds=2.0), progress=False)
    return run, root / "index"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_torch_thread):
    """A run on a user's own (custom) clips and a features index."""
    return _tiny_run(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory, one_torch_thread):
    """A run trained on a (tiny) demo corpus, its index, and the corpus folder."""
    root = tmp_path_factory.mktemp("tiny_demo")
    return (*_tiny_run(root, demo_like=True), root)


def test_windows_skip_a_silent_stretch_and_say_so(tiny, write_audio, caplog):
    analyzer = Analyzer(*tiny, k=2)
    song = tone(10.0, SR, 440.0)
    song[3 * SR: int(7.5 * SR)] = 0.0  # a 4.5 s pause: windows starting at 3, 4, 5 s are silent
    path = write_audio("pause.wav", song, SR)
    with caplog.at_level(logging.INFO, logger="helpers.pipeline"):
        result = analyzer.analyze(path, windows=True)
    w = result["windows"]  # 2 s windows, hop 1 s: starts 0..8 s
    assert (w["n_windows"], w["n_skipped"]) == (9, 3)
    assert w["starts"] == [0.0, 1.0, 2.0, 6.0, 7.0, 8.0] and len(w["p_ai"]) == 6
    assert w["max"] == pytest.approx(max(w["p_ai"])) and len(w["ood_distance"]) == 6
    assert caplog.text.count("skipped 3 of 9 windows") == 1
    assert "3 of 9 windows skipped" in format_results([result])
    # a song with no usable window is still an error, naming the input
    with pytest.raises(AudioError, match="no usable window.*silent"):
        analyzer.analyze((np.zeros(5 * SR, np.float32), SR), windows=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`python -m helpers demo`, exactly as the README runs it (offline, features embedder)."""
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    env = {**__import__("os").environ, "HELPERS_OPENL3_DIR": str(out.parent / "no_openl3")}
    proc = subprocess.run([sys.executable, "-m", "helpers", "demo", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


@pytest.mark.slow
def test_demo_prints_p_ai_and_recommendations_and_writes_results(demo):
    out, stdout = demo
    assert "P(AI) =" in stdout and "similar human tracks" in stdout
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["data"].startswith("synthetic demo corpus")
    assert summary["classifier_test"]["roc_auc"] >= 0.9
    assert summary["retrieval"]["style_loo"]["all_neighbours"]["precision_at_k"] >= 0.8
    results = json.loads((out / "recommendations.json").read_text())
    assert {r["true_label"] for r in results} == {"ai", "human"}
    for r in results:
        assert len(r["recommendations"]) == (0 if r["is_ai"] is False else 5)
    assert (out / "run" / "eval_test" / "figures" / "roc.png").stat().st_size > 10_000


@pytest.mark.slow
def test_demo_rerun_reuses_finished_stages(demo):
    out, _ = demo
    weights = (out / "run" / "best.pt").stat().st_mtime_ns
    proc = subprocess.run([sys.executable, "-m", "helpers", "demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=True)
    assert "finished run found, reused" in proc.stdout
    assert (out / "run" / "best.pt").stat().st_mtime_ns == weights


@pytest.mark.slow
def test_analyzer_paths_audio_windows_and_bad_files(demo, tmp_path):
    out, _ = demo
    manifest = pd.read_csv(out / "corpus" / "manifest.csv")
    test = manifest[manifest["split"] == "test"]
    ai_path = str(out / "corpus" / test[test["label"] == "ai"]["path"].iloc[0])
    analyzer = Analyzer(out / "run", out / "index", k=3, always_recommend=True)

    by_path = analyzer.analyze(ai_path)
    assert 0.0 <= by_path["p_ai"] <= 1.0 and len(by_path["recommendations"]) == 3
    sims = [r["similarity"] for r in by_path["recommendations"]]
    assert sims == sorted(sims, reverse=True)

    y, sr = sf.read(ai_path, dtype="float32")
    by_audio = analyzer.analyze((y, sr))
    assert by_audio["p_ai"] == pytest.approx(by_path["p_ai"], abs=1e-5)

    long_song = tmp_path / "long.wav"
    sf.write(long_song, np.tile(y, 3), sr)  # 30 s: windows of 10 s, hop 5 s
    windows = analyzer.analyze(long_song, windows=True)["windows"]
    assert windows["starts"] == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert windows["max"] == pytest.approx(max(windows["p_ai"]))

    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    results = analyzer.analyze_many([bad, ai_path])
    assert "error" in results[0] and str(bad) in results[0]["error"]
    assert results[1]["p_ai"] == pytest.approx(by_path["p_ai"])
    assert "error:" in format_results(results)
    with pytest.raises(AudioError):
        analyze(bad, out / "run", out / "index")


@pytest.mark.slow
def test_threshold_decides_whether_to_recommend(demo):
    out, _ = demo
    manifest = pd.read_csv(out / "corpus" / "manifest.csv")
    path = str(out / "corpus" / manifest["path"].iloc[0])
    never = analyze(path, out / "run", out / "index", threshold=1.01)
    always = analyze(path, out / "run", out / "index", threshold=0.0)
    assert not never["is_ai"] and never["recommendations"] == []
    assert always["is_ai"] and len(always["recommendations"]) == 5
    assert "no recommendations" in format_results([never])


def test_a_song_is_judged_by_its_median_window_not_its_most_ai_like_one(tiny, monkeypatch):
    analyzer = Analyzer(*tiny, k=2, threshold=0.5)
    analyzer.ood = None  # this test is about P(AI) alone
    window_p = np.array([0.1, 0.2, 0.95, 0.3, 0.2, 0.1, 0.2, 0.1, 0.2])  # one AI-like window
    monkeypatch.setattr(pipeline, "predict_proba", lambda model, info, mels: window_p[:len(mels)])
    result = analyzer.analyze((tone(10.0, SR, 440.0), SR), windows=True)
    w = result["windows"]
    assert len(w["p_ai"]) == 9 and w["aggregate"] == "median"
    assert result["p_ai"] == w["p_song"] == pytest.approx(0.2)
    assert (w["max"], w["most_ai_segment"]) == (pytest.approx(0.95), [2.0, 4.0])
    assert result["is_ai"] is False and result["verdict"] == VERDICT_HUMAN
    assert "P(AI) is the median of 9 windows (max 0.950" in format_results([result])


def test_recommend_without_a_run_is_a_similarity_search(tiny, write_audio):
    _, index = tiny
    query = write_audio("query.wav", tone(2.0, SR, 700.0, seed=5), SR)  # new noise, not a copy
    result = Analyzer(index=index, k=3).analyze(query)
    assert (result["p_ai"], result["is_ai"], result["verdict"]) == (None, None, VERDICT_NO_RUN)
    recs = result["recommendations"]
    assert [r["rank"] for r in recs] == [1, 2, 3]
    assert [r["similarity"] for r in recs] == sorted((r["similarity"] for r in recs),
                                                     reverse=True)
    assert recs[0]["track_id"] == "human0"  # the 700 Hz track
    assert analyze(query, index=index, k=3) == result
    catalog_song = str(index.parent / "human_0_0.wav")  # in the catalog: never its own match
    own = analyze_many([catalog_song, query], index=index, k=2)
    assert catalog_song not in [r["path"] for r in own[0]["recommendations"]]
    assert len(own[0]["recommendations"]) == len(own[1]["recommendations"]) == 2
    text = format_results([result])
    assert VERDICT_NO_RUN in text and "similar human tracks" in text and "P(AI)" not in text
    with pytest.raises(ValueError, match="needs a classifier run"):
        Analyzer(index=index).analyze(query, windows=True)
    with pytest.raises(ValueError, match="threshold needs a classifier run"):
        Analyzer(index=index, threshold=0.5)
    with pytest.raises(ValueError, match="index folder is needed"):
        Analyzer(tiny[0])


def test_a_demo_run_judges_no_file_outside_its_corpus_and_says_so_once(tiny_demo, write_audio,
                                                                       caplog):
    run, index, corpus = tiny_demo
    analyzer = Analyzer(run, index, k=2)
    assert analyzer.trained_on["kind"] == "synthetic-demo"
    outside = [write_audio("real.wav", tone(2.0, SR, 330.0, seed=1), SR),
               (tone(2.0, SR, 360.0, seed=2), SR)]
    with caplog.at_level(logging.WARNING, logger="helpers.pipeline"):
        results = analyzer.analyze_many(outside)
        inside = analyzer.analyze(corpus / "ai_1_0.wav")
    assert caplog.text.count("trained only on the synthetic demo corpus") == 1
    for r in results:
        assert (r["is_ai"], r["verdict"], r["trained_on"]) == (None, VERDICT_DEMO,
                                                               "synthetic-demo")
        assert 0.0 <= r["p_ai"] <= 1.0 and len(r["recommendations"]) == 2
    text = format_results(results)
    assert text.count(VERDICT_DEMO) == 2 and "meaningless" in text
    assert VERDICT_AI not in text and VERDICT_HUMAN not in text
    assert isinstance(inside["is_ai"], bool) and inside["verdict"] in (VERDICT_AI, VERDICT_HUMAN)


def test_recommend_command_warns_once_for_a_demo_run_on_outside_files(tiny_demo, tmp_path):
    run, index, _ = tiny_demo
    songs = []
    for i in range(2):
        songs.append(str(tmp_path / f"song{i}.wav"))
        sf.write(songs[-1], tone(3.0, SR, 500.0 + 50 * i, seed=i), SR)
    proc = subprocess.run([sys.executable, "-m", "helpers", "recommend", *songs, "--run",
                           str(run), "--index", str(index), "-k", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("trained only on the synthetic demo corpus") == 1
    assert proc.stdout.count(VERDICT_DEMO) == 2 and "looks AI-generated" not in proc.stdout


def test_a_song_out_of_the_runs_distribution_is_not_judged(tiny, write_audio):
    run, index = tiny
    analyzer = Analyzer(run, index, k=2)
    assert analyzer.trained_on["kind"] == "custom" and analyzer.ood is not None
    song = write_audio("song.wav", tone(2.0, SR, 400.0, seed=3), SR)
    reference, seconds = analyzer.ood.reference, analyzer.ood.seconds
    assert seconds == 2.0  # the run's clip length
    analyzer.ood = OODCheck(reference, threshold=np.inf, seconds=seconds)
    judged = analyzer.analyze(song)
    assert judged["ood"]["out_of_distribution"] is False and isinstance(judged["is_ai"], bool)
    analyzer.ood = OODCheck(reference, threshold=judged["ood"]["distance"] - 1e-6,
                            seconds=seconds)
    unlike = analyzer.analyze(song)
    assert unlike["ood"]["distance"] == pytest.approx(judged["ood"]["distance"])
    assert (unlike["is_ai"], unlike["verdict"]) == (None, VERDICT_OOD)
    assert unlike["p_ai"] == pytest.approx(judged["p_ai"])
    assert len(unlike["recommendations"]) == 2  # the search does not need a verdict
    assert "from the training clips, limit" in format_results([unlike])


@pytest.mark.slow
def test_the_demo_run_knows_its_corpus_and_flags_noise_out_of_distribution(demo):
    out, _ = demo
    info = json.loads((out / "run" / "run.json").read_text())
    assert info["training_data"]["kind"] == "synthetic-demo"
    assert info["training_data"]["corpus_root"] == str((out / "corpus").resolve())
    analyzer = Analyzer(out / "run", out / "index", k=1)
    manifest = pd.read_csv(out / "corpus" / "manifest.csv")
    test = manifest[manifest["split"] == "test"]
    results = [analyzer.analyze(str(out / "corpus" / p)) for p in test["path"]]
    assert sum(r["ood"]["out_of_distribution"] for r in results) <= 2  # of 24 held-out clips
    assert all(r["verdict"] in (VERDICT_AI, VERDICT_HUMAN) for r in results)
    rng = np.random.default_rng(0)
    for y in (0.1 * rng.standard_normal(10 * SR), tone(10.0, SR, 440.0)):
        r = analyzer.analyze((y.astype(np.float32), SR))
        assert r["ood"]["out_of_distribution"] and r["verdict"] == VERDICT_DEMO
