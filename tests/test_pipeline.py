"""Classify, then recommend: the README's demo command and the Analyzer built on its outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from helpers.audio import AudioError
from helpers.pipeline import Analyzer, analyze, format_results


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

    import soundfile as sf

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
