"""Embedders: classic features on synthetic tones, OpenL3 with random weights, the fallback."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from helpers import embed as embed_module
from helpers.audio import load_clip, mel_db
from helpers.config import FrontEndConfig
from helpers.embed import (
    FEATURE2_BLOCKS,
    FEATURE_NAMES,
    LEGACY_FEATURE_PARAMS,
    ClassifierEmbedder,
    Embedder,
    FeatureEmbedder,
    FeatureEmbedder2,
    OpenL3Embedder,
    Standardizer,
    default_embedder,
    embedder_from_config,
    l2_normalise,
    make_embedder,
    same_space,
    within_track_whitener,
)
from helpers.index import build_index, recommend
from helpers.openl3 import get_audio_embedding, weights_path
from helpers.run import load_run
from helpers.train import TrainConfig, train

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "openl3_reference"
SR = 22050


def tone(kind: str, freq: float = 440.0, seconds: float = 2.0, sr: int = SR,
         seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    if kind == "sine":
        y = np.sin(2 * np.pi * freq * t)
    elif kind == "square":
        y = np.sign(np.sin(2 * np.pi * freq * t))
    elif kind == "noise":
        y = rng.normal(size=len(t))
    else:
        raise ValueError(kind)
    envelope = 0.5 + 0.5 * (np.sin(2 * np.pi * 2 * t) > 0)  # some rhythm for the onset features
    return (0.2 * y * envelope).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    specs = {
        "sine_330": ("sine", 330), "sine_440": ("sine", 440), "sine_550": ("sine", 550),
        "noise_a": ("noise", 0), "noise_b": ("noise", 1), "noise_c": ("noise", 2),
    }
    paths = {}
    for name, (kind, arg) in specs.items():
        y = tone(kind, freq=arg or 440.0, seed=arg)
        paths[name] = folder / f"{name}.wav"
        sf.write(paths[name], y, SR)
    return paths


@pytest.fixture(scope="module")
def fitted(clips):
    embedder = FeatureEmbedder(max_seconds=2.0)
    raw, ok, errors = embedder.embed_files(clips.values(), progress=False, raw=True)
    assert ok.all() and not errors and raw.shape == (6, embedder.raw_dim)
    return embedder.fit(raw)


def test_feature_vectors_are_deterministic_and_unit_norm(fitted, clips):
    a = fitted.embed_file(clips["sine_440"])
    b = fitted.embed_file(clips["sine_440"])
    assert a.dtype == np.float32 and a.shape == (fitted.dim,) == (sum(FEATURE2_BLOCKS.values()),)
    np.testing.assert_array_equal(a, b)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)


def test_different_timbres_map_apart(fitted, clips):
    vectors, ok, _ = fitted.embed_files(clips.values(), progress=False)
    names = list(clips)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    for i, name in enumerate(names):
        nearest = names[int(np.argmax(sims[i]))]
        assert nearest.split("_")[0] == name.split("_")[0], (name, nearest)


def test_feature_embedder_needs_fitting_and_state_round_trips(fitted, clips):
    with pytest.raises(ValueError, match="not fitted"):
        FeatureEmbedder(max_seconds=2.0).embed_file(clips["sine_440"])
    rebuilt = embedder_from_config(fitted.config())
    assert rebuilt.config() == fitted.config()
    np.testing.assert_array_equal(rebuilt.embed_file(clips["noise_a"]),
                                  fitted.embed_file(clips["noise_a"]))


def test_awkward_audio_gives_finite_vectors_or_is_skipped(fitted, tmp_path):
    t = np.arange(int(1.0 * 44100)) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) * 0.1
    sf.write(tmp_path / "stereo_44k.wav", stereo, 44100)
    sf.write(tmp_path / "silent.wav", np.zeros(SR, np.float32), SR)
    sf.write(tmp_path / "short.wav", tone("sine", seconds=0.02), SR)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "garbage.wav").write_bytes(b"not audio at all" * 10)
    names = ["stereo_44k.wav", "silent.wav", "short.wav", "empty.wav", "garbage.wav"]
    vectors, ok, errors = fitted.embed_files([tmp_path / n for n in names], progress=False)
    assert ok.tolist() == [True, True, True, False, False]
    assert np.isfinite(vectors).all() and vectors.shape == (3, fitted.dim)
    assert [Path(p).name for p, _ in errors] == ["empty.wav", "garbage.wav"]


def test_openl3_with_random_weights_gives_unit_norm_512_vectors(tmp_path):
    weights = REFERENCE / "mel128_music_random.h5"
    if not weights.is_file():
        pytest.skip(f"reference fixture missing: {weights}")
    sf.write(tmp_path / "a.wav", tone("sine", seconds=1.0, sr=16000), 16000)
    embedder = OpenL3Embedder(input_repr="mel128", weights=weights, max_seconds=1.0,
                              device="cpu")
    vector = embedder.embed_file(tmp_path / "a.wav")
    assert vector.shape == (512,) and vector.dtype == np.float32
    assert np.isfinite(vector).all()
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    params = embedder.config()["params"]
    assert params["weights"]["file"] == "mel128_music_random.h5"
    assert params["hop_size"] == 0.5 and params["pooling"] == "mean"


def test_openl3_defaults_compute_the_hear_settings(tmp_path):
    # What the default embedder *computes*, not what it says: a mel256/music/512 network, and
    # the mean of its frames at a 0.5 s hop. The mel128 fixture file has the same weight
    # shapes as mel256 (only the front end differs), so it stands in for the cached weights.
    weights = REFERENCE / "mel128_music_random.h5"
    if not weights.is_file():
        pytest.fail(f"reference fixture missing: {weights}")
    shutil.copy(weights, weights_path("mel256", "music", tmp_path))
    embedder = OpenL3Embedder(cache_dir=tmp_path, device="cpu")
    y = tone("noise", seconds=1.0, sr=16000)
    raw = embedder.embed_raw_audio(y, 16000)
    model = embedder.model
    assert (model.input_repr, model.content_type, model.embedding_size) == ("mel256", "music",
                                                                          512)
    assert model.input_shape == (256, 199) and embedder.dim == raw.shape[0] == 512
    # The default precision is "auto": whatever it resolved to here (bf16 only where native
    # and within 1e-2 of float32 on the check clip).
    precision = embedder.precision_choice["dtype"]
    hear, _ = get_audio_embedding(y, 16000, model, hop_size=0.5, center=True,
                                  dtype=precision)  # (3, 512)
    np.testing.assert_allclose(raw, hear.mean(axis=0), rtol=0, atol=1e-5)
    dense, _ = get_audio_embedding(y, 16000, model, hop_size=0.1, center=True)
    assert np.abs(dense.mean(axis=0) - raw).max() > 1e-3  # the hop matters for this clip
    assert embedder.params()["hop_size"] == 0.5 and embedder.params()["pooling"] == "mean"


def test_openl3_queries_use_the_query_hop_in_the_catalog_space(monkeypatch):
    weights = REFERENCE / "mel128_music_random.h5"
    if not weights.is_file():
        pytest.fail(f"reference fixture missing: {weights}")
    catalog = OpenL3Embedder(input_repr="mel128", weights=weights, hop_size=0.5,
                             query_hop_size=1.0, precision="fp32", device="cpu")
    hops = []
    real = embed_module.get_audio_embedding
    monkeypatch.setattr(embed_module, "get_audio_embedding",
                        lambda *a, **k: hops.append(k["hop_size"]) or real(*a, **k))
    y = tone("noise", seconds=2.0, sr=16000)
    catalog.embed_raw_audio(y, 16000)
    queries = catalog.for_queries()
    queries.embed_raw_audio(y, 16000)
    catalog.embed_raw_audio(y, 16000)  # the catalog embedder keeps its own hop
    assert hops == [0.5, 1.0, 0.5]
    params = catalog.config()["params"]
    assert params["query_hop_size"] == 1.0 and params["precision"] == "fp32"
    # How a vector is computed (precision, query hop) does not change the space it is in...
    assert same_space(catalog.config(), queries.config())
    other = OpenL3Embedder(input_repr="mel128", weights=weights, hop_size=0.5,
                           precision="bf16", device="cpu")
    assert same_space(catalog.config(), other.config())
    rebuilt = embedder_from_config(catalog.config(), weights=weights)
    assert rebuilt.query_hop_size == 1.0 and rebuilt.precision == "fp32"
    # ...but the catalog hop does.
    dense = OpenL3Embedder(input_repr="mel128", weights=weights, hop_size=0.1, device="cpu")
    assert not same_space(catalog.config(), dense.config())
    with pytest.raises(ValueError, match="precision"):
        OpenL3Embedder(precision="int8")


# --- the classifier's pooled vector -----------------------------------------------------------

CLASSIFIER_FRONT = FrontEndConfig(duration=2.0)  # 63 frames: a run trains in seconds


@pytest.fixture(scope="module")
def classifier_runs(tmp_path_factory, one_torch_thread):
    """Two tiny runs (different seeds) trained on 2 s clips, and the clips."""
    root = tmp_path_factory.mktemp("classifier")
    rows = []
    for label, kind in (("ai", "sine"), ("human", "noise")):
        for track in range(4):
            for part in range(2):
                path = root / f"{label}_{track}_{part}.wav"
                sf.write(path, tone(kind, freq=300 + 60 * track, seed=10 * track + part), SR)
                rows.append({"path": str(path), "label": label, "split": "train",
                             "track_id": f"{label}{track}"})
    manifest = pd.DataFrame(rows)
    runs = [train(manifest, root / f"run_{seed}", preset="tiny", cache_dir=root / "cache",
                  train_config=TrainConfig(epochs=1, batch_size=8, device="cpu", patience=0,
                                           seed=seed),
                  frontend=CLASSIFIER_FRONT, progress=False)
            for seed in (0, 1)]
    return runs, manifest


def test_classifier_embedder_is_the_runs_pooled_vector(classifier_runs):
    (run, _), manifest = classifier_runs
    embedder = ClassifierEmbedder(run, device="cpu")
    paths = list(manifest["path"].iloc[[0, 1, 8]])  # two AI excerpts, one human clip
    vectors, ok, errors = embedder.embed_files(paths, progress=False)
    assert ok.all() and not errors
    assert vectors.shape == (3, embedder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # the run's own embed() on its own front end, computed here independently
    model, info = load_run(run)
    front = FrontEndConfig.from_dict(info["frontend"])
    with torch.no_grad():
        mel = torch.from_numpy(mel_db(load_clip(paths[2], front), front))[None]
        expected = model.embed(mel)[0].numpy()
    np.testing.assert_allclose(vectors[2], expected / np.linalg.norm(expected), atol=1e-5)
    # the same clip gives the same vector, also from a second embedder of the run
    again = ClassifierEmbedder(run, device="cpu").embed_file(paths[2])
    np.testing.assert_allclose(again, vectors[2], atol=1e-6)
    assert np.abs(vectors[0] - vectors[2]).max() > 1e-3  # different clips differ


def test_an_index_refuses_another_runs_classifier_embedder(classifier_runs, tmp_path):
    (run_a, run_b), manifest = classifier_runs
    index = build_index(manifest, tmp_path / "index", ClassifierEmbedder(run_a, device="cpu"),
                        label="human", progress=False)
    assert len(index) == 8
    assert isinstance(index.check_embedder(ClassifierEmbedder(run_a)), ClassifierEmbedder)
    with pytest.raises(ValueError, match="does not match the index.*params.checkpoint"):
        index.check_embedder(ClassifierEmbedder(run_b))
    with pytest.raises(ValueError, match="does not match"):
        index.embedder(run_dir=run_b)
    hits = recommend([manifest["path"].iloc[8]], index, index.embedder(run_dir=run_a), k=2)
    assert manifest["path"].iloc[8] not in set(hits["path"]) and len(hits) == 2


def test_default_embedder_falls_back_to_features_offline(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="helpers.embed"):
        embedder = default_embedder(cache_dir=tmp_path)
    assert isinstance(embedder, FeatureEmbedder)
    assert "features" in caplog.text and "no OpenL3 weights" in caplog.text


def test_default_embedder_picks_openl3_when_weights_are_cached(tmp_path):
    weights_path("mel256", "music", tmp_path).write_bytes(b"x")  # presence is what counts
    assert isinstance(default_embedder(cache_dir=tmp_path), OpenL3Embedder)


def test_make_embedder_by_name():
    assert isinstance(make_embedder("features", sr=16000), FeatureEmbedder)
    with pytest.raises(ValueError, match="unknown embedder"):
        make_embedder("word2vec")


# -- within-track whitening, and the legacy features space ------------------------------------


def test_within_track_whitening_finds_other_excerpts_of_a_track_where_standardising_fails():
    # 60 tracks in 12 dims; dims 0-5 wander inside a track (sd 3), dims 6-11 tell tracks
    # apart (sd 1 between, 0.1 inside). Catalog and query are different excerpts.
    rng = np.random.default_rng(0)
    n, d, segments = 60, 12, 6
    centres = rng.normal(size=(n, d))
    inside = np.r_[np.full(6, 3.0), np.full(6, 0.1)]

    def excerpts(k: int) -> np.ndarray:
        return centres[:, None] + rng.normal(size=(n, k, d)) * inside

    parts, queries = excerpts(segments), excerpts(1)[:, 0]
    catalog = parts.mean(1)
    scaler = Standardizer().fit(catalog)
    z = scaler.transform(parts.reshape(-1, d)).reshape(parts.shape).astype(np.float64)
    whitener = within_track_whitener(z, shrinkage=0.1)
    assert np.allclose(whitener, whitener.T)

    def recall_at_1(w: np.ndarray) -> float:
        cat = l2_normalise(scaler.transform(catalog) @ w)
        qry = l2_normalise(scaler.transform(queries) @ w)
        return float(np.mean(np.argmax(qry @ cat.T, axis=1) == np.arange(n)))

    assert recall_at_1(whitener) >= 0.9 > 0.5 >= recall_at_1(np.eye(d))
    assert np.array_equal(within_track_whitener(np.zeros((4, 3, d)), 1.0), np.eye(d))


def test_features_raw_vector_carries_each_segment_and_the_whitener_round_trips(clips, tmp_path):
    # first half a tone, second half noise: the two segments' timbre must differ, and each
    # must match its half described alone (up to the frames that straddle the cut)
    tone_half, _ = sf.read(clips["sine_440"], dtype="float32")
    noise_half, _ = sf.read(clips["noise_a"], dtype="float32")
    y = np.concatenate([tone_half, noise_half])
    embedder = FeatureEmbedder(max_seconds=None, blocks=("v1",), segments=2)
    raw = embedder.embed_raw_audio(y, SR)
    assert raw.shape == (embedder.raw_dim,) == (3 * 93,)
    mfcc_means = raw.reshape(3, 93)[:, :20]
    alone = FeatureEmbedder(max_seconds=None, blocks=("v1",), whitening=None)
    for part, half in ((1, tone_half), (2, noise_half)):
        np.testing.assert_allclose(mfcc_means[part], alone.embed_raw_audio(half, SR)[:20],
                                   rtol=0.05, atol=2.0)
    assert np.abs(mfcc_means[1] - mfcc_means[2]).max() > 20
    with pytest.raises(ValueError, match="columns"):
        embedder.fit(np.zeros((4, 93)))
    with pytest.raises(ValueError, match="whitener"):
        alone.set_state(FeatureEmbedder(blocks=("v1",), segments=2)
                        .fit(np.stack([raw, raw * 1.1, raw * 0.9])).get_state())


def test_an_index_config_from_before_whitening_rebuilds_the_legacy_space(clips):
    legacy = FeatureEmbedder(max_seconds=2.0, **LEGACY_FEATURE_PARAMS)
    raw, _, _ = legacy.embed_files(clips.values(), progress=False, raw=True)
    config = legacy.fit(raw).config()
    # exactly the keys an index written before whitening and blocks holds
    assert set(config["params"]) == {"sr", "max_seconds", "n_fft", "hop_length", "features"}
    rebuilt = embedder_from_config(config)
    assert rebuilt.whitening is None and rebuilt.blocks == ("v1",) and rebuilt.sr == 22050
    np.testing.assert_array_equal(rebuilt.transform(raw), legacy.transform(raw))


# -- features2: more descriptors and pooling, an opt-in embedder ----------------------------------


def test_features2_starts_with_the_features_vector_and_selects_blocks(clips):
    y, sr = sf.read(clips["sine_440"], dtype="float32")
    full = FeatureEmbedder2(blocks=tuple(FEATURE2_BLOCKS), max_seconds=2.0)
    raw = full.embed_raw_audio(y, sr)
    assert raw.shape == (sum(FEATURE2_BLOCKS.values()),) and np.isfinite(raw).all()
    legacy = FeatureEmbedder(max_seconds=2.0, **LEGACY_FEATURE_PARAMS)
    np.testing.assert_allclose(raw[:len(FEATURE_NAMES)], legacy.embed_raw_audio(y, sr))
    only = FeatureEmbedder2(blocks=("tempogram", "dmfcc"), max_seconds=2.0)
    np.testing.assert_allclose(full.select(raw[None], only)[0], only.embed_raw_audio(y, sr),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="subset"):
        FeatureEmbedder2(blocks=("v1", "lyrics"))


@pytest.mark.parametrize("weighting", [True, False])
def test_features2_block_weighting_gives_each_block_an_equal_share(weighting):
    raw = np.random.default_rng(0).normal(size=(400, sum(FEATURE2_BLOCKS.values())))
    embedder = FeatureEmbedder2(blocks=tuple(FEATURE2_BLOCKS), block_weighting=weighting)
    vectors = embedder.fit(raw).transform(raw)
    sizes = np.array(list(FEATURE2_BLOCKS.values()))
    shares = [(block**2).sum(1).mean()
              for block in np.split(vectors, np.cumsum(sizes)[:-1], axis=1)]
    expected = np.full(len(sizes), 1 / len(sizes)) if weighting else sizes / sizes.sum()
    np.testing.assert_allclose(shares, expected, rtol=0.1)


def test_features2_separates_timbres_and_rebuilds_from_its_index_config(clips):
    embedder = FeatureEmbedder2(max_seconds=2.0)
    raw, ok, _ = embedder.embed_files(clips.values(), progress=False, raw=True)
    vectors = embedder.fit(raw).transform(raw)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    names = list(clips)
    # every clip's nearest neighbour is of its own kind (sine or noise)
    assert all(names[j].split("_")[0] == n.split("_")[0]
               for n, j in zip(names, sims.argmax(1), strict=True))
    rebuilt = embedder_from_config(embedder.config())
    assert isinstance(rebuilt, FeatureEmbedder2) and rebuilt.blocks == embedder.blocks
    np.testing.assert_allclose(rebuilt.transform(raw), vectors, atol=1e-6)
    legacy = FeatureEmbedder(max_seconds=2.0, **LEGACY_FEATURE_PARAMS)
    assert embedder.config() != legacy.fit(raw[:, :93]).config()


# -- one audio policy for the catalog and for queries ------------------------------------------


class Probe(Embedder):
    """Records the length of every signal it embeds; the vector follows the signal's content."""

    name = "probe"
    dim = 4

    def __init__(self, max_seconds: float | None = 30.0, position: str = "start") -> None:
        self.max_seconds, self.position = max_seconds, position
        self.seen: list[float] = []

    def params(self):
        return {"max_seconds": self.max_seconds}

    def embed_raw_audio(self, y, sr):
        self.seen.append(len(y) / sr)
        quarters = np.array_split(np.asarray(y, np.float64), 4)
        return np.array([1.0 + q.mean() for q in quarters], np.float32)


def ramp(seconds: float, sr: int) -> np.ndarray:
    """A signal whose every stretch differs from every other (its value is its time)."""
    return (np.arange(int(seconds * sr)) / (sr * 100.0)).astype(np.float32)


def test_a_catalog_file_queried_as_audio_gets_its_catalog_vector(fitted, tmp_path):
    # 2 s of sine, then 3 s of noise: the catalog (policy: first 2 s) never hears the noise
    y = np.concatenate([tone("sine", 440, seconds=2.0), tone("noise", seconds=3.0, seed=7)])
    path = tmp_path / "song.wav"
    sf.write(path, y, SR, subtype="FLOAT")
    catalog_vector = fitted.embed_file(path)
    np.testing.assert_allclose(fitted.embed_audio(y, SR), catalog_vector, atol=1e-6)
    whole_song = fitted.transform(fitted.embed_raw_audio(y, SR)[None])[0]
    assert float(whole_song @ catalog_vector) < 0.99  # what the query got before the policy


def test_centre_policy_embeds_the_middle_of_the_song(tmp_path):
    sr = 1000
    y = ramp(100.0, sr)
    path = tmp_path / "long.wav"
    sf.write(path, y, sr, subtype="FLOAT")
    probe = Probe(max_seconds=30.0, position="centre")
    expected = probe.transform(probe.embed_raw_audio(y[35 * sr:65 * sr], sr)[None])[0]
    np.testing.assert_allclose(probe.embed_file(path), expected, atol=1e-6)
    np.testing.assert_allclose(probe.embed_audio(y, sr), expected, atol=1e-6)
    assert probe.config()["policy"]["description"] == "centre 30 s"
    with pytest.raises(ValueError, match="position"):
        FeatureEmbedder(position="middle")


def test_windows_mode_averages_policy_sized_windows_never_the_whole_song():
    sr = 1000
    y = ramp(70.0, sr)
    probe = Probe(max_seconds=30.0)
    vector, info = probe.embed_windows(y, sr)
    assert set(probe.seen) == {30.0}  # every vector describes 30 s, as the catalog's do
    assert info["starts"] == [0.0, 15.0, 30.0, 40.0] and info["n_windows"] == 4
    raw = np.stack([probe.embed_raw_audio(y[s * sr:(s + 30) * sr], sr) for s in (0, 15, 30, 40)])
    windows = probe.transform(raw)
    expected = windows.mean(0) / np.linalg.norm(windows.mean(0))
    np.testing.assert_allclose(vector, expected, atol=1e-6)
    # a song no longer than the policy is one window: the same vector as embed_audio
    short = ramp(30.0, sr)
    np.testing.assert_allclose(probe.embed_windows(short, sr)[0], probe.embed_audio(short, sr),
                               atol=1e-6)


def test_windows_mode_leaves_out_silent_windows():
    sr = 1000
    y = np.concatenate([ramp(30.0, sr) + 0.1, np.zeros(60 * sr, np.float32)])
    probe = Probe(max_seconds=30.0)
    vector, info = probe.embed_windows(y, sr)
    assert info["n_silent"] == 3 and info["starts"] == [0.0, 15.0]  # of 0, 15, 30, 45, 60 s


def test_embedder_from_config_keeps_the_policy():
    config = FeatureEmbedder(position="centre").config()
    assert embedder_from_config(config).policy.position == "centre"


def test_openl3_without_weights_is_one_clear_error_not_one_per_file(audio_folder, tmp_path,
                                                                    monkeypatch, capsys,
                                                                    caplog):
    from helpers.cli import main

    monkeypatch.setenv("HELPERS_OPENL3_DIR", str(tmp_path / "no_weights"))
    with caplog.at_level(logging.WARNING):
        rc = main(["index", "--manifest", str(audio_folder), "--out", str(tmp_path / "index"),
                   "--embedder", "openl3"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("python -m helpers weights openl3 --input-repr mel256") == 1
    assert "skipping" not in caplog.text and "skipping" not in err
