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

from helpers.audio import AudioError
from helpers.config import FrontEndConfig
from helpers.embed import FeatureEmbedder
from helpers.index import build_index
from helpers.pipeline import Analyzer, analyze, format_results
from helpers.train import TrainConfig, train

SR = 16_000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_torch_thread):
    """A run trained for one epoch on 2 s clips and a features index: fast, not the demo."""
    root = tmp_path_factory.mktemp("tiny")
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
    assert result["p_ai"] == w["max"] == pytest.approx(max(w["p_ai"]))
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
        assert len(r["recommendations"]) == (5 if r["is_ai"] else 0)
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
