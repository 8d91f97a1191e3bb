"""The PyTorch OpenL3 port against the original Keras pipeline (shared/openl3_reference).

The fixture is required: CI must fail, not skip, when it is missing. Checks 1-4 follow the
fixture's README; the rest cover weight files, downloads and awkward audio.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import openl3

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "openl3_reference"
H5 = REFERENCE_DIR / "mel128_music_random.h5"
WAV = REFERENCE_DIR / "tone_chirp_44k.wav"
NPZ = REFERENCE_DIR / "expected_mel128_tone_chirp.npz"


def rel_l2_per_frame(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return np.linalg.norm(got - expected, axis=1) / np.linalg.norm(expected, axis=1)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    missing = [p.name for p in (H5, WAV, NPZ) if not p.is_file()]
    if missing:
        pytest.fail(f"OpenL3 reference fixture missing in {REFERENCE_DIR}: {missing}")
    with np.load(NPZ) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def model(reference) -> openl3.OpenL3Model:
    # Unfused, so check 3 runs exactly the layers the Keras file describes.
    return openl3.load_audio_embedding_model(
        "mel128", "music", 512, weights=H5, device="cpu", fuse_bn=False
    )


@pytest.fixture(scope="module")
def wav() -> tuple[np.ndarray, int]:
    audio, sr = sf.read(WAV)  # float64 (samples, 2), like openl3's process_audio_file
    return audio, sr


@pytest.fixture(scope="module")
def fused_model(reference) -> openl3.OpenL3Model:
    # What users get by default: BN folded into the convs.
    return openl3.load_audio_embedding_model("mel128", "music", 512, weights=H5, device="cpu")


@pytest.fixture(scope="module")
def end_to_end(fused_model, wav) -> tuple[np.ndarray, np.ndarray]:
    audio, sr = wav
    return openl3.get_audio_embedding(audio, sr, fused_model, hop_size=0.1, center=True,
                                      batch_size=32)


def test_check1_resampled_audio_matches(reference, wav):
    audio_48k = openl3.preprocess_audio(*wav)
    assert audio_48k.shape == reference["audio_48k"].shape == (168000,)
    assert np.abs(audio_48k - reference["audio_48k"]).max() <= 1e-6


def test_framing_matches_reference(reference):
    frames = openl3.frame_audio(reference["audio_48k"], hop_size=0.1, center=True)
    assert len(frames) == int(reference["n_frames"]) == 31
    index = reference["frames_subset_index"]
    np.testing.assert_array_equal(frames[index][:, None, :], reference["frames_subset"])


def test_check2_frontend_logmel(reference, model, wav):
    frames = openl3.frame_audio(openl3.preprocess_audio(*wav), hop_size=0.1, center=True)
    with torch.inference_mode():
        logmel = model.frontend(torch.from_numpy(frames.astype(np.float32))[:, None])
    expected = reference["frontend_logmel"][..., 0]  # (31, 128, 199)
    got = logmel[:, 0].numpy()
    assert got.shape == expected.shape
    diff = np.abs(got - expected)
    # Below -60 dB only float32 rounding noise of empty bands differs (see the README).
    assert diff[expected > -60].max() <= 0.05
    assert diff.mean() <= 0.01


def test_check3_conv_stack_on_reference_logmel(reference, model):
    # Every 3rd frame plus the last: a layer bug shows in every frame, and this keeps the
    # file within its CPU budget (end to end, check 4, still runs all 31).
    index = [*range(0, 31, 3), 30]
    logmel = torch.from_numpy(np.ascontiguousarray(reference["frontend_logmel"][index, ..., 0]))
    with torch.inference_mode():
        got = model.embed_logmel(logmel[:, None]).numpy()
    expected = reference["embedding"][index]
    assert got.shape == expected.shape == (12, 512)
    assert np.abs(got - expected).max() <= 1e-3
    assert rel_l2_per_frame(got, expected).max() <= 1e-5


def test_fused_batchnorm_matches_reference(reference, model, fused_model):
    fused = fused_model
    assert fused.fused and not model.fused
    index = [0, 15, 30]
    logmel = torch.from_numpy(np.ascontiguousarray(reference["frontend_logmel"][index, ..., 0]))
    with torch.inference_mode():
        got = fused.embed_logmel(logmel[:, None]).numpy()
    expected = reference["embedding"][index]
    assert np.abs(got - expected).max() <= 1e-3
    assert rel_l2_per_frame(got, expected).max() <= 1e-5


def test_check4_end_to_end(reference, end_to_end):
    embeddings, timestamps = end_to_end
    expected = reference["embedding"]
    assert embeddings.dtype == np.float32 and embeddings.shape == expected.shape
    assert rel_l2_per_frame(embeddings, expected).max() <= 2e-2
    assert np.abs(embeddings - expected).mean() <= 5e-2
    assert timestamps.dtype == np.float64
    np.testing.assert_array_equal(timestamps, reference["timestamps"])


def test_list_input_returns_lists(model, wav):
    audio, sr = wav
    short = audio[: sr // 2]  # 0.5 s: with the half-window in front, exactly one window
    embs, stamps = openl3.get_audio_embedding([short, short[:, 0]], [sr, sr], model,
                                              hop_size=0.5)
    assert isinstance(embs, list) and len(embs) == len(stamps) == 2
    assert embs[0].shape == embs[1].shape == (1, 512)


def _write_weights(path: Path, shapes: dict[str, list[tuple[int, ...]]]) -> None:
    # Minimal Keras-layout file: layer groups, nested weight datasets, weight_names attrs.
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in ["input_1", *shapes]]
        f.create_group("input_1").attrs["weight_names"] = []
        for name, layer_shapes in shapes.items():
            group = f.create_group(name)
            kinds = ["kernel:0", "bias:0"] if len(layer_shapes) == 2 else [
                "gamma:0", "beta:0", "moving_mean:0", "moving_variance:0"]
            names = [f"{name}/{k}" for k in kinds]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for n, shape in zip(names, layer_shapes, strict=True):
                group.create_dataset(n, data=np.ones(shape, np.float32))


def _reference_shapes() -> dict[str, list[tuple[int, ...]]]:
    with h5py.File(H5, "r") as f:
        return {name: [a.shape for a in arrays]
                for name, arrays in openl3.read_keras_weights(f)}


def test_wrong_weight_shapes_raise_clear_error(reference, tmp_path):
    shapes = _reference_shapes()
    shapes["conv2d_1"] = [(3, 3, 64, 32), (32,)]
    bad = tmp_path / "bad_mel128.h5"
    _write_weights(bad, shapes)
    with pytest.raises(ValueError, match=r"conv2d_1.*\(3, 3, 64, 32\).*expects"):
        openl3.load_keras_weights(openl3.OpenL3Model("mel128"), bad)
    shapes = _reference_shapes()
    del shapes["audio_embedding_layer"]
    _write_weights(bad, shapes)
    with pytest.raises(ValueError, match="15 layers with weights"):
        openl3.load_keras_weights(openl3.OpenL3Model("mel128"), bad)


def test_renamed_layers_load_by_order(reference, tmp_path):
    # Old release files name layers differently (suffixes from _1); only the order matters.
    renamed = {f"layer_{i}": s for i, s in enumerate(_reference_shapes().values())}
    path = tmp_path / "renamed.h5"
    _write_weights(path, renamed)
    model = openl3.OpenL3Model("mel128")
    openl3.load_keras_weights(model, path)
    assert torch.all(model.audio_embedding_layer.weight == 1)


def test_weights_file_for_other_repr_is_refused(reference):
    with pytest.raises(ValueError, match="mel128 weights"):
        openl3.load_audio_embedding_model("mel256", weights=H5, device="cpu")


def test_gz_weights_file_loads(reference, tmp_path):
    gz = tmp_path / "openl3_audio_mel128_music-v0_4_0.h5.gz"
    gz.write_bytes(gzip.compress(H5.read_bytes(), compresslevel=1))
    model = openl3.load_audio_embedding_model("mel128", weights=gz, device="cpu",
                                              fuse_bn=False)
    with h5py.File(H5, "r") as f:
        kernel = np.asarray(f["audio_embedding_layer/audio_embedding_layer/kernel:0"])
    np.testing.assert_array_equal(model.audio_embedding_layer.weight.detach().numpy(),
                                  kernel.transpose(3, 2, 0, 1))


def test_missing_weights_offline_names_expected_path(tmp_path, monkeypatch):
    def offline(url, timeout=60.0):
        raise OSError("network unreachable")

    monkeypatch.setattr(openl3, "_fetch_url", offline)
    assert not openl3.weights_available("mel256", "music", cache_dir=tmp_path)
    expected = tmp_path / "openl3_audio_mel256_music-v0_4_0.h5"
    with pytest.raises(FileNotFoundError) as err:
        openl3.load_audio_embedding_model("mel256", "music", cache_dir=tmp_path)
    assert str(expected) in str(err.value) and "weights=" in str(err.value)
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        openl3.load_audio_embedding_model("mel256", "music", weights=tmp_path / "does_not_exist")


def test_corrupt_cached_weights_say_which_file(tmp_path):
    path = openl3.weights_path("mel128", "music", cache_dir=tmp_path)
    path.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(RuntimeError, match=str(path)):
        openl3.load_audio_embedding_model("mel128", "music", cache_dir=tmp_path, device="cpu")


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(openl3.WEIGHTS_ENV, str(tmp_path))
    assert openl3.weights_path("mel128", "env").parent == tmp_path


def test_download_verifies_git_blob_sha1_and_gunzips(tmp_path, monkeypatch):
    gz = gzip.compress(H5.read_bytes())
    fetched = []

    def fake_fetch(url, timeout=20.0):
        fetched.append(url)
        return gz

    monkeypatch.setattr(openl3, "_fetch_url", fake_fetch)
    monkeypatch.setitem(openl3.KNOWN_GZ_BLOB_SHA1, ("mel128", "music"), openl3.git_blob_sha1(gz))
    path = openl3.download_weights("mel128", "music", cache_dir=tmp_path)
    assert fetched == [
        "https://github.com/marl/openl3/raw/models/openl3_audio_mel128_music-v0_4_0.h5.gz"]
    assert path == tmp_path / "openl3_audio_mel128_music-v0_4_0.h5"
    assert path.read_bytes() == H5.read_bytes()
    assert openl3.weights_available("mel128", "music", cache_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left

    # A download with another SHA-1 (here: the real mel256 checksum) is refused, nothing left.
    with pytest.raises(RuntimeError, match="SHA-1"):
        openl3.download_weights("mel256", "music", cache_dir=tmp_path)
    assert not openl3.weights_available("mel256", "music", cache_dir=tmp_path)


def test_official_checksums_cover_all_six_audio_models():
    assert set(openl3.KNOWN_GZ_BLOB_SHA1) == {(r, c) for r in openl3.INPUT_REPRS
                                              for c in openl3.CONTENT_TYPES}
    assert len(set(openl3.KNOWN_GZ_BLOB_SHA1.values())) == 6


def test_fetch_without_network_fails_at_once_and_says_how_to_install_by_hand(tmp_path,
                                                                            monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="--from FILE"):
        openl3.fetch_weights("mel256", "music", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_fetch_from_a_local_url_installs_the_verified_file(tmp_path, monkeypatch):
    served = tmp_path / "server" / "openl3_audio_mel128_music-v0_4_0.h5.gz"
    served.parent.mkdir()
    served.write_bytes(gzip.compress(H5.read_bytes()))
    monkeypatch.setattr(openl3, "WEIGHTS_URL", served.parent.as_uri() + "/{name}.gz")
    monkeypatch.setitem(openl3.KNOWN_GZ_BLOB_SHA1, ("mel128", "music"),
                        openl3.git_blob_sha1(served.read_bytes()))
    got = openl3.fetch_weights("mel128", "music", cache_dir=tmp_path / "cache")
    assert got.official and got.path.read_bytes() == H5.read_bytes()


# -- installing a file the user has --------------------------------------------------------------


def test_install_accepts_a_file_in_the_official_layout(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="helpers.openl3"):
        got = openl3.install_weights(H5, "mel128", "music", cache_dir=tmp_path)
    assert got.path == openl3.weights_path("mel128", "music", tmp_path)
    assert got.path.read_bytes() == H5.read_bytes()
    assert not got.official and "not proven official" in caplog.text
    model = openl3.load_audio_embedding_model("mel128", "music", cache_dir=tmp_path,
                                              device="cpu", fuse_bn=False, download=False)
    with h5py.File(H5, "r") as f:
        kernel = np.asarray(f["audio_embedding_layer/audio_embedding_layer/kernel:0"])
    np.testing.assert_array_equal(model.audio_embedding_layer.weight.detach().numpy(),
                                  kernel.transpose(3, 2, 0, 1))


def test_install_proves_an_official_gzip_by_its_sha1(tmp_path, monkeypatch):
    gz = tmp_path / "openl3_audio_mel128_music-v0_4_0.h5.gz"
    gz.write_bytes(gzip.compress(H5.read_bytes()))
    monkeypatch.setitem(openl3.KNOWN_GZ_BLOB_SHA1, ("mel128", "music"),
                        openl3.git_blob_sha1(gz.read_bytes()))
    got = openl3.install_weights(gz, "mel128", "music", cache_dir=tmp_path / "cache")
    assert got.official and "SHA-1" in got.verified
    # the same gzip offered as the env model: its SHA-1 names the model it really is
    monkeypatch.setitem(openl3.KNOWN_GZ_BLOB_SHA1, ("mel128", "env"), "0" * 40)
    other = tmp_path / "weights.h5.gz"
    other.write_bytes(gz.read_bytes())
    with pytest.raises(RuntimeError, match="official mel128/music file"):
        openl3.install_weights(other, "mel128", "env", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("damage", ["truncated", "not_hdf5", "wrong_layout", "bad_gzip"])
def test_install_refuses_a_damaged_file_and_installs_nothing(tmp_path, damage):
    path = tmp_path / "weights.h5"
    if damage == "truncated":
        path.write_bytes(H5.read_bytes()[: H5.stat().st_size // 2])
    elif damage == "not_hdf5":
        path.write_bytes(b"<html>rate limited</html>")
    elif damage == "wrong_layout":
        shapes = _reference_shapes()
        shapes["conv2d_1"] = [(3, 3, 64, 32), (32,)]
        _write_weights(path, shapes)
    else:
        path = tmp_path / "weights.h5.gz"
        path.write_bytes(gzip.compress(H5.read_bytes())[:1000])
    with pytest.raises(RuntimeError):
        openl3.install_weights(path, "mel128", "music", cache_dir=tmp_path / "cache")
    assert not openl3.weights_available("mel128", "music", tmp_path / "cache")


def test_install_refuses_a_file_named_for_another_model(tmp_path):
    with pytest.raises(ValueError, match="mel128"):
        openl3.install_weights(H5, "mel256", "music", cache_dir=tmp_path)


def test_weights_command_installs_or_says_why_not(tmp_path, capsys):
    from helpers.cli import main

    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not weights")
    args = ["weights", "openl3", "--input-repr", "mel128", "--cache-dir", str(tmp_path / "c")]
    assert main([*args, "--from", str(bad)]) == 2
    assert "not an HDF5 file" in capsys.readouterr().err
    assert main([*args, "--from", str(H5)]) == 0
    assert "installed" in capsys.readouterr().out
    assert openl3.weights_available("mel128", "music", tmp_path / "c")


def test_git_blob_sha1_matches_git():
    # `printf 'hello\n' | git hash-object --stdin`
    assert openl3.git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


@pytest.fixture(scope="module")
def random_model() -> openl3.OpenL3Model:
    torch.manual_seed(0)
    return openl3.OpenL3Model("mel128", 512).fuse_batchnorm()


def _noise(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    audio = 0.1 * rng.standard_normal((int(seconds * sr), channels))
    return audio[:, 0] if channels == 1 else audio


def test_stereo_is_averaged_to_mono(random_model):
    stereo = _noise(0.6, 22050, channels=2)
    e_stereo, _ = openl3.get_audio_embedding(stereo, 22050, random_model, hop_size=0.5)
    e_mono, _ = openl3.get_audio_embedding(stereo.mean(axis=1), 22050, random_model,
                                           hop_size=0.5)
    np.testing.assert_allclose(e_stereo, e_mono, rtol=0, atol=1e-5)


def test_audio_shorter_than_one_second_gives_a_frame(random_model):
    emb, ts = openl3.get_audio_embedding(_noise(0.2, 16000), 16000, random_model)
    assert emb.shape == (1, 512) and np.isfinite(emb).all()
    np.testing.assert_array_equal(ts, [0.0])
    with pytest.raises(ValueError, match="empty"):
        openl3.get_audio_embedding(np.zeros(0), 16000, random_model)


def test_batch_size_does_not_change_embeddings(random_model):
    audio = _noise(1.0, 48000, seed=1)
    e1, _ = openl3.get_audio_embedding(audio, 48000, random_model, hop_size=0.5, batch_size=1)
    e32, _ = openl3.get_audio_embedding(audio, 48000, random_model, hop_size=0.5,
                                        batch_size=32)
    assert e1.shape == (2, 512)
    assert np.abs(e1 - e32).max() <= 1e-4


@pytest.mark.parametrize("input_repr, shape", [("mel256", (256, 199)), ("linear", (257, 197))])
def test_other_representations_shapes(input_repr, shape):
    model = openl3.OpenL3Model(input_repr, 512)
    assert model.input_shape == shape
    with torch.inference_mode():
        logmel = model.frontend(torch.zeros(1, 1, 48000))
        assert logmel.shape == (1, 1, *shape)
        assert model.embed_logmel(torch.randn(1, 1, *shape)).shape == (1, 512)


# --- the 6144-d grid: Keras flattens (row, column, channel) ----------------------------------


def _keras_flatten_of_pooled_grid(feature_map: np.ndarray, pool: tuple[int, int]) -> np.ndarray:
    """Keras' MaxPooling2D(pool, padding="same") then Flatten, on a channels-last map.

    `feature_map` is (height=mel, width=time, channels); here the pools divide the map
    exactly, so "same" adds no padding. Returns (rows * cols * channels,).
    """
    h, w, c = feature_map.shape
    rows, cols = h // pool[0], w // pool[1]
    grid = feature_map[: rows * pool[0], : cols * pool[1]].reshape(rows, pool[0], cols, pool[1], c)
    return grid.max(axis=(1, 3)).reshape(-1)  # index row * cols * C + col * C + channel


def test_6144_embedding_is_the_keras_flatten_of_the_pooled_grid(random_model):
    big = openl3.OpenL3Model("mel128", 6144).fuse_batchnorm()
    big.load_state_dict(random_model.state_dict())
    captured = {}

    def keep_map(module, args, out):  # returns None: the output is left as it is
        captured["map"] = out[0].permute(1, 2, 0).numpy()

    big.audio_embedding_layer.register_forward_hook(keep_map)
    logmel = torch.randn(1, 1, 128, 199, generator=torch.Generator().manual_seed(4)) * 20 - 40
    with torch.inference_mode():
        got = big.embed_logmel(logmel)[0].numpy()
    fmap = captured["map"]  # (16 mel, 24 time, 512 channels), channels last like Keras
    assert fmap.shape == (16, 24, 512)
    expected = _keras_flatten_of_pooled_grid(fmap, openl3.POOL_SIZES["mel128"][6144])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # The check can tell the orders apart: the 4 x 3 grid cells differ, so PyTorch's
    # channels-first flatten, or a grid flattened column first, gives another vector.
    grid = expected.reshape(4, 3, 512)
    for wrong in (grid.transpose(2, 0, 1).reshape(-1), grid.transpose(1, 0, 2).reshape(-1)):
        assert np.abs(wrong - got).max() > 1e-2


# --- mel256, the default: front end and weights against independent references ---------------


def _kapre_logmel_reference(frames: np.ndarray, n_mels: int) -> np.ndarray:
    """float64 numpy log-mel of 1 s frames (n, 48000), from the formulas of the fixture's README.

    Periodic Hann, n_fft 2048, hop 242, frames [242 t, 242 t + 2048) with the end zero-padded
    to 199 frames, magnitude, Slaney mel (librosa), 10 log10 of the magnitude, minus the
    per-example maximum, floored at -80 dB. Returns (n, n_mels, 199).
    """
    import librosa
    import scipy.signal

    n_fft, hop, n_frames = 2048, 242, 199
    x = np.pad(frames.astype(np.float64), ((0, 0), (0, (n_frames - 1) * hop + n_fft - 48000)))
    window = scipy.signal.get_window("hann", n_fft, fftbins=True)  # periodic
    starts = hop * np.arange(n_frames)
    segments = x[:, starts[:, None] + np.arange(n_fft)] * window  # (n, 199, 2048)
    magnitude = np.abs(np.fft.rfft(segments, axis=-1))  # (n, 199, 1025)
    mel = librosa.filters.mel(sr=48000, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=24000.0,
                              htk=False, norm="slaney").astype(np.float64)
    db = 10 * np.log10(np.maximum(np.einsum("mf,ntf->nmt", mel, magnitude), 1e-10))
    return np.maximum(db - db.max(axis=(1, 2), keepdims=True), -80.0)


def _logmel_close(got: np.ndarray, expected: np.ndarray) -> None:
    # The fixture README's check 2 (below -60 dB only float32 noise of empty bands differs).
    diff = np.abs(got - expected)
    assert diff[expected > -60].max() <= 0.05
    assert diff.mean() <= 0.01


def test_mel256_frontend_matches_the_kapre_formulas(reference):
    frames = openl3.frame_audio(reference["audio_48k"], hop_size=0.1)[[0, 15, 30]]
    # The reference itself reproduces the Keras front end on the fixture (mel128) ...
    _logmel_close(_kapre_logmel_reference(frames, 128),
                  reference["frontend_logmel"][[0, 15, 30], ..., 0])
    # ... and the port's mel256 front end matches it with 256 bands.
    with torch.inference_mode():
        got = openl3.OpenL3Model("mel256").frontend(torch.from_numpy(frames.astype(np.float32)))
    assert got.shape == (3, 1, 256, 199)
    _logmel_close(got[:, 0].numpy(), _kapre_logmel_reference(frames, 256))


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def _keras_weights_in_order(path: Path) -> list[list[np.ndarray]]:
    """Weight arrays of the layers that have some, in the order of `layer_names` (float64)."""
    with h5py.File(path, "r") as f:
        layers = []
        for name in map(_text, f.attrs["layer_names"]):
            weight_names = list(map(_text, f[name].attrs["weight_names"]))
            if weight_names:
                layers.append([np.asarray(f[name][w], np.float64) for w in weight_names])
    return layers


def _numpy_openl3_conv_stack(logmel: np.ndarray, layers: list[list[np.ndarray]]) -> np.ndarray:
    """The Keras network after the front end, up to the final pool, channels last in numpy.

    `logmel` is (mel, time); `layers` as `_keras_weights_in_order`. Kernels are used in their
    Keras layout (3, 3, in, out): no axis permutation, so a port that permutes wrongly differs.
    Returns the `audio_embedding_layer` map (mel / 8, time / 8, 512).
    """

    def bn(x, gamma, beta, mean, var):
        return gamma * (x - mean) / np.sqrt(var + 1e-3) + beta

    def conv(x, kernel, bias):
        h, w, _ = x.shape
        padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
        out = np.zeros((h, w, kernel.shape[-1])) + bias
        for dy in range(3):
            for dx in range(3):
                shifted = np.ascontiguousarray(padded[dy:dy + h, dx:dx + w]).reshape(h * w, -1)
                out += (shifted @ kernel[dy, dx]).reshape(h, w, -1)  # one GEMM per tap
        return out

    def pool(x):  # 2 x 2, stride 2, "valid"
        h, w, c = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2, x.shape[2]
        return x[:h, :w].reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3))

    x = bn(logmel[:, :, None], *layers[0])
    for i, block in enumerate(range(4)):
        convs = 1 if block == 3 else 2
        for j in range(convs):
            kernel, bias = layers[1 + 2 * (2 * i + j)]
            x = np.maximum(bn(conv(x, kernel, bias), *layers[2 + 2 * (2 * i + j)]), 0)
        if block < 3:
            x = pool(x)
    return conv(x, *layers[15])  # audio_embedding_layer: no BN, no ReLU


def _random_official_layout(path: Path, seed: int) -> Path:
    """A weights file with the fixture's HDF5 layout (h5_layout.txt), new random values."""
    rng = np.random.default_rng(seed)
    path.write_bytes(H5.read_bytes())
    with h5py.File(path, "r+") as f:
        def fill(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            shape, kind = obj.shape, name.rsplit("/", 1)[-1]
            if kind == "kernel:0":
                value = rng.normal(0, np.sqrt(2 / np.prod(shape[:3])), shape)
            elif kind == "moving_mean:0":
                value = np.full(shape, -45.0) if shape == (1,) else rng.normal(0, 0.1, shape)
            elif kind == "moving_variance:0":
                value = np.full(shape, 300.0) if shape == (1,) else rng.uniform(0.5, 2, shape)
            elif kind == "gamma:0":
                value = rng.uniform(0.5, 1.5, shape)
            else:  # bias, beta
                value = rng.normal(0, 0.1, shape)
            obj[...] = value.astype(np.float32)
        f.visititems(fill)
    return path


@pytest.fixture(scope="module")
def numpy_stack_checked(reference):
    """The numpy conv stack, first shown to reproduce the Keras fixture (mel128, frame 0)."""
    fmap = _numpy_openl3_conv_stack(reference["frontend_logmel"][0, ..., 0].astype(np.float64),
                                    _keras_weights_in_order(H5))
    got = _keras_flatten_of_pooled_grid(fmap, (16, 24))
    expected = reference["embedding"][0]
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) <= 1e-5
    return _numpy_openl3_conv_stack


def test_mel256_weights_load_and_run_like_keras(numpy_stack_checked, reference, tmp_path):
    weights = _random_official_layout(tmp_path / "openl3_audio_mel256_music-v0_4_0.h5", seed=7)
    frame = openl3.frame_audio(reference["audio_48k"], hop_size=0.1)[15:16]
    models = {size: openl3.load_audio_embedding_model("mel256", "music", size, weights=weights,
                                                      device="cpu", fuse_bn=False)
              for size in (512, 6144)}
    with torch.inference_mode():
        logmel = models[512].frontend(torch.from_numpy(frame.astype(np.float32)))
        got = {size: model.embed_logmel(logmel)[0].numpy() for size, model in models.items()}
    fmap = numpy_stack_checked(logmel[0, 0].numpy().astype(np.float64),
                               _keras_weights_in_order(weights))  # (32, 24, 512)
    assert np.abs(fmap).max() > 1e-2  # a live network, not one ReLU'd to zero
    for size in (512, 6144):
        expected = _keras_flatten_of_pooled_grid(fmap, openl3.POOL_SIZES["mel256"][size])
        assert got[size].shape == expected.shape == (size,)
        assert np.linalg.norm(got[size] - expected) / np.linalg.norm(expected) <= 1e-4


# --------------------------------------------------------------------------------------------
# CPU speed paths: packed conv stack, windows in parallel, automatic precision
# --------------------------------------------------------------------------------------------


def test_packed_conv_stack_reproduces_the_reference(reference, fused_model):
    stack = openl3.packed_conv_stack(fused_model)
    assert stack is not None  # torch 2.13 CPU has the oneDNN operators
    logmel = torch.from_numpy(reference["frontend_logmel"][..., 0])[:, None]
    with torch.inference_mode():
        got = stack(logmel).numpy()
        eager = fused_model.embed_logmel(logmel).numpy()
    assert rel_l2_per_frame(got, reference["embedding"]).max() <= 1e-5
    np.testing.assert_allclose(got, eager, rtol=0, atol=1e-4)


def test_packed_conv_stack_follows_weight_changes_and_needs_a_fused_model():
    torch.manual_seed(3)
    unfused = openl3.OpenL3Model("mel128", 512)
    assert openl3.packed_conv_stack(unfused) is None  # BN layers still there
    model = unfused.fuse_batchnorm()
    frames = openl3.frame_audio(_noise(1.5, 48000, seed=2), hop_size=0.5)
    before = openl3.embed_frames(model, frames)
    with torch.no_grad():
        model.conv2_1.weight.mul_(-1.0)  # in place: a stale packed copy would miss it
    after = openl3.embed_frames(model, frames)
    with torch.inference_mode():
        eager = model(torch.from_numpy(np.ascontiguousarray(frames, np.float32))[:, None])
    assert np.abs(after - before).max() > 1e-2
    np.testing.assert_allclose(after, eager.numpy(), rtol=0, atol=1e-4)


def test_windows_shared_among_threads_keep_their_order(random_model):
    frames = openl3.frame_audio(_noise(2.0, 48000, seed=4), hop_size=0.25)  # 7 windows
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        parallel = openl3.embed_frames(random_model, frames, batch_size=2)
        assert torch.get_num_threads() == 3  # restored
        torch.set_num_threads(1)
        serial = np.concatenate([openl3.embed_frames(random_model, frames[i:i + 1])
                                 for i in range(len(frames))])
    finally:
        torch.set_num_threads(threads)
    assert parallel.shape == (7, 512)
    np.testing.assert_allclose(parallel, serial, rtol=0, atol=1e-4)


def test_bf16_stays_within_the_precision_tolerance_on_the_fixture(fused_model, wav):
    audio, sr = wav
    fp32, _ = openl3.get_audio_embedding(audio, sr, fused_model, hop_size=0.1)
    bf16, _ = openl3.get_audio_embedding(audio, sr, fused_model, hop_size=0.1, dtype="bf16")
    drift = rel_l2_per_frame(bf16, fp32).max()
    assert 1e-5 < drift <= openl3.PRECISION_TOLERANCE  # really bf16, and close enough


def _fresh_model(seed: int = 5) -> openl3.OpenL3Model:
    torch.manual_seed(seed)
    return openl3.OpenL3Model("mel128", 512).fuse_batchnorm()


def test_auto_precision_takes_native_bf16_only_within_tolerance(monkeypatch, caplog):
    monkeypatch.setattr(openl3, "low_precision_dtype", lambda device: "bf16")
    monkeypatch.setattr(openl3, "precision_drift", lambda model, dtype: 0.004)
    good = openl3.resolve_precision(_fresh_model())
    assert good.dtype == "bf16" and good.drift == 0.004
    monkeypatch.setattr(openl3, "precision_drift", lambda model, dtype: 0.05)
    with caplog.at_level(logging.WARNING):
        bad = openl3.resolve_precision(_fresh_model())
    assert bad.dtype == "fp32" and bad.drift == 0.05 and "0.05" in caplog.text
    monkeypatch.setattr(openl3, "low_precision_dtype", lambda device: None)
    assert openl3.resolve_precision(_fresh_model()).dtype == "fp32"
    assert openl3.resolve_precision(_fresh_model(), "bf16").dtype == "bf16"
    with pytest.raises(ValueError, match="precision"):
        openl3.resolve_precision(_fresh_model(), "int8")


def test_auto_precision_is_measured_once_per_model(monkeypatch):
    calls = []
    monkeypatch.setattr(openl3, "low_precision_dtype", lambda device: "bf16")
    monkeypatch.setattr(openl3, "precision_drift",
                        lambda model, dtype: calls.append(dtype) or 0.001)
    model = _fresh_model()
    frames = openl3.frame_audio(_noise(1.0, 48000), hop_size=0.5)
    openl3.embed_frames(model, frames, dtype="auto")
    openl3.embed_frames(model, frames, dtype="auto")
    assert calls == ["bf16"]


def test_real_drift_check_runs_on_this_machine():
    choice = openl3.resolve_precision(_fresh_model(7))
    native = openl3.low_precision_dtype("cpu")
    if native is None:
        assert choice.dtype == "fp32" and choice.drift is None
    else:  # measured with the model's own (random) weights on the check clip
        assert choice.drift is not None and 0 < choice.drift
        assert (choice.dtype == native) == (choice.drift <= openl3.PRECISION_TOLERANCE)
