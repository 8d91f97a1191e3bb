"""The demo corpus: deterministic, balanced, resumable (its "AI" chain: test_artifacts.py)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from helpers.artifacts import ArtifactConfig
from helpers.datasets import MANIFEST_COLUMNS
from helpers.synth import STYLES, SynthConfig, make_corpus, plan_corpus, render_clip

SR = 22_050
TINY = SynthConfig(n_per_style_per_label=1, duration=2.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny corpus (6 styles x 2 labels x 1 clip of 2 s), built in parallel."""
    out = tmp_path_factory.mktemp("synth")
    manifest = make_corpus(out, TINY, progress=False, n_jobs=2)
    return out, manifest


def _db(x: float) -> float:
    return 20 * np.log10(max(x, 1e-12))


def test_render_clip_gives_finite_mono_float32_for_every_style():
    for style in STYLES:
        y = render_clip(style, seed=3, config=TINY)
        assert y.dtype == np.float32 and y.shape == (2 * SR,)
        assert np.isfinite(y).all() and np.sqrt(np.mean(y**2)) > 1e-3


def test_render_clip_same_seed_identical_different_seed_differs():
    a = render_clip("rock", seed=5, config=TINY)
    assert np.array_equal(a, render_clip("rock", seed=5, config=TINY))
    assert not np.allclose(a, render_clip("rock", seed=6, config=TINY))


def test_manifest_columns_balance_and_layout(corpus):
    out, manifest = corpus
    df = pd.read_csv(manifest)
    assert tuple(df.columns) == MANIFEST_COLUMNS
    assert len(df) == len(STYLES) * 2
    # Style must not predict the label: every (style, label) cell holds the same count.
    counts = df.groupby(["genre", "label"]).size()
    assert set(counts) == {1} and set(df["genre"]) == set(STYLES)
    assert set(df["label"]) == {"ai", "human"} and set(df["source"]) == {"synth"}
    for row in df.itertuples():
        assert row.path == f"audio/{row.label}/{row.genre}/{row.track_id}.wav"
        assert (out / row.path).is_file()
        prefix = "synth" if row.label == "human" else "ai"
        assert row.artist.startswith(f"{prefix}-{row.genre}-")
    assert json.loads((out / "corpus.json").read_text())["config"]["duration"] == 2.0


def test_splits_are_stratified_by_style_and_label():
    df = plan_corpus(SynthConfig(n_per_style_per_label=10))
    per_group = df.groupby(["genre", "label"])["split"].value_counts().unstack()
    assert (per_group["train"] == 6).all()
    assert (per_group["val"] == 2).all() and (per_group["test"] == 2).all()
    # Deterministic, and a different seed reshuffles which clips land where.
    assert df.equals(plan_corpus(SynthConfig(n_per_style_per_label=10)))
    other = plan_corpus(SynthConfig(n_per_style_per_label=10, seed=1))
    assert not df["split"].equals(other["split"])


def test_same_seed_gives_bit_identical_files_whatever_n_jobs(corpus, tmp_path):
    out, manifest = corpus
    again = make_corpus(tmp_path, TINY, progress=False, n_jobs=1)
    assert again.read_bytes() == manifest.read_bytes()
    for rel in pd.read_csv(manifest)["path"]:
        assert (tmp_path / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_different_seed_gives_different_audio(corpus, tmp_path):
    out, _ = corpus
    cfg = dataclasses.replace(TINY, seed=1, styles=("house",))
    make_corpus(tmp_path, cfg, progress=False, n_jobs=1)
    rel = "audio/human/house/human-house-0000.wav"
    a, _ = sf.read(out / rel)
    b, _ = sf.read(tmp_path / rel)
    assert not np.allclose(a, b)


def test_every_clip_loudness_normalised_same_rate_and_format(corpus):
    out, manifest = corpus
    df = pd.read_csv(manifest)
    for rel in df["path"]:
        info = sf.info(out / rel)
        assert (info.samplerate, info.format, info.subtype) == (SR, "WAV", "PCM_16")
        y, _ = sf.read(out / rel)
        assert _db(np.abs(y).max()) <= -0.49
        level = _db(np.sqrt(np.mean(y**2))) - TINY.target_rms_dbfs
        assert abs(level) < TINY.level_jitter_db + 0.1, rel


def test_exact_loudness_when_level_jitter_is_off(tmp_path):
    cfg = dataclasses.replace(TINY, styles=("rock",), level_jitter_db=0.0)
    df = pd.read_csv(make_corpus(tmp_path, cfg, progress=False, n_jobs=1))
    for rel in df["path"]:
        y, _ = sf.read(tmp_path / rel)
        assert abs(_db(np.sqrt(np.mean(y**2))) - cfg.target_rms_dbfs) < 0.05, rel


def test_the_artifact_chain_changes_only_the_ai_clips(tmp_path):
    base = dataclasses.replace(TINY, styles=("chiptune",), duration=1.0)
    for name, chain in (("dry", ArtifactConfig.none()), ("wet", ArtifactConfig())):
        cfg = dataclasses.replace(base, artifacts=chain)
        make_corpus(tmp_path / name, cfg, progress=False, n_jobs=1)
    for label, same in (("human", True), ("ai", False)):
        rel = f"audio/{label}/chiptune/{label}-chiptune-0000.wav"
        dry, wet = (tmp_path / name / rel for name in ("dry", "wet"))
        assert (dry.read_bytes() == wet.read_bytes()) is same, rel


def test_resume_regenerates_only_the_missing_clip(corpus, tmp_path):
    cfg = dataclasses.replace(TINY, styles=("lofi", "chiptune"))
    make_corpus(tmp_path, cfg, progress=False, n_jobs=1)
    paths = sorted((tmp_path / "audio").rglob("*.wav"))
    victim = paths[1]
    original = victim.read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in paths if p != victim}
    victim.unlink()
    make_corpus(tmp_path, cfg, progress=False, n_jobs=1)
    assert victim.read_bytes() == original
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert not list(tmp_path.rglob("*.tmp"))


def test_config_mismatch_raises_unless_overwrite(tmp_path):
    cfg = dataclasses.replace(TINY, styles=("ambient",))
    make_corpus(tmp_path, cfg, progress=False, n_jobs=1)
    other = dataclasses.replace(cfg, seed=7)
    with pytest.raises(ValueError, match="different config.*seed: 0 -> 7"):
        make_corpus(tmp_path, other, progress=False, n_jobs=1)
    before = (tmp_path / "audio/ai/ambient/ai-ambient-0000.wav").read_bytes()
    make_corpus(tmp_path, other, progress=False, n_jobs=1, overwrite=True)
    assert (tmp_path / "audio/ai/ambient/ai-ambient-0000.wav").read_bytes() != before
    assert json.loads((tmp_path / "corpus.json").read_text())["config"]["seed"] == 7


def test_config_round_trips_through_json_and_rejects_bad_values():
    cfg = SynthConfig(format="flac", artifacts=ArtifactConfig(codec=True, kernel="nearest"))
    assert SynthConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="format"):
        SynthConfig(format="aiff")
    with pytest.raises(ValueError, match="unknown styles"):
        SynthConfig(styles=("polka",))
    with pytest.raises(ValueError, match="kernel"):  # a nested dict from JSON is validated too
        SynthConfig.from_dict({"artifacts": {"kernel": "bicubic"}})


def test_flac_and_mp3_corpora_are_readable(tmp_path):
    for fmt in ("flac", "mp3"):
        cfg = dataclasses.replace(TINY, styles=("chiptune",), format=fmt, duration=1.0)
        df = pd.read_csv(make_corpus(tmp_path / fmt, cfg, progress=False, n_jobs=1))
        for rel in df["path"]:
            assert rel.endswith(f".{fmt}")
            y, sr = sf.read(tmp_path / fmt / rel)
            assert sr == SR and len(y) > 0.9 * SR
