"""OpenL3 audio embeddings in PyTorch, loading the official Keras weight files.

A port of the OpenL3 0.4.x audio network (kapre 0.3 front end) so that embeddings can be
computed with torch, on CPU or GPU, without TensorFlow. The public surface mirrors openl3:

>>> model = load_audio_embedding_model("mel256", "music", 512)   # doctest: +SKIP
>>> emb, ts = get_audio_embedding(audio, sr, model, hop_size=0.1)  # doctest: +SKIP

The pipeline (see ``shared/openl3_reference/README.md``) is: downmix (mean, float64), resample
to 48 kHz with resampy's *0.2.2* ``kaiser_best`` filter, frame into 1 s windows, then the
network: STFT magnitude -> (mel) filterbank -> dB relative to the per-example maximum ->
BatchNorm -> 4 conv blocks -> max pool over the whole map.

Weights are never fetched on import or in a constructor: `load_audio_embedding_model` finds
them in the cache folder or downloads them explicitly (`weights_available` checks without
downloading, so callers can pick another embedder when offline).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import os
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from helpers.io import write_bytes

logger = logging.getLogger(__name__)

TARGET_SR = 48_000
INPUT_REPRS = ("linear", "mel128", "mel256")
CONTENT_TYPES = ("music", "env")
EMBEDDING_SIZES = (512, 6144)

WEIGHTS_URL = "https://github.com/marl/openl3/raw/models/{name}.gz"
WEIGHTS_ENV = "HELPERS_OPENL3_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/helpers/openl3")

# Git blob SHA-1 of the v0_4_0 .h5.gz files on the openl3 `models` branch (`git ls-tree -r
# models` in github.com/marl/openl3), so a truncated or tampered download is caught before it
# reaches h5py. openl3 publishes no checksum of the gunzipped .h5 files.
KNOWN_GZ_BLOB_SHA1 = {
    ("linear", "env"): "7837407f033f3564c7e8d53fc4a4241fe160478b",
    ("linear", "music"): "4e2e61beb17865481c8b8791c72eac8307e2753a",
    ("mel128", "env"): "8c3dfee140f7776373841e5938a3e76c54f28942",
    ("mel128", "music"): "73ff29de441865318c4b3a3f98c40763c4773e7c",
    ("mel256", "env"): "34dbd7a91cdd2de6a3d6d036ac0a24d27d78e3cc",
    ("mel256", "music"): "15e483646fa3d4091a463f0affbb706e6bbbb098",
}

# Final max pool of openl3's `AUDIO_POOLING_SIZES`: (mel, time) pool over the 4th block's map.
# 512 pools the whole map; 6144 keeps a 4 x 3 grid of 512 channels.
POOL_SIZES = {
    "linear": {512: (32, 24), 6144: (8, 8)},
    "mel128": {512: (16, 24), 6144: (4, 8)},
    "mel256": {512: (32, 24), 6144: (8, 8)},
}

# resampy 0.2.2's `kaiser_best` (the version openl3 0.4 pins). resampy >= 0.3 ships a different
# `kaiser_best` (50 zeros, beta 12.98), which moves the 48 kHz signal by up to 6e-3 and the
# low-level mel bands by tens of dB; rebuilding the old filter matches the reference to 1e-7.
_KAISER_BEST_022 = {"num_zeros": 64, "precision": 9, "beta": 14.769656459379492,
                    "rolloff": 0.9475937167399596}


@dataclass(frozen=True)
class KapreFrontEndConfig:
    """The kapre 0.3 spectrogram layer of one openl3 input representation.

    Parameters
    ----------
    n_fft : int
        FFT size and (periodic Hann) window length, in samples at 48 kHz.
    hop_length : int
        STFT hop in samples (242, so one second gives about 199 frames).
    n_mels : int or None
        Mel bands (Slaney scale and area normalisation, 0 to 24 kHz); ``None`` keeps the
        linear-frequency magnitude (``n_fft // 2 + 1`` bins).
    pad_end : bool
        Zero-pad the end so there are ``ceil(48000 / hop)`` frames (the mel models);
        the linear model uses only complete frames.
    """

    n_fft: int
    hop_length: int
    n_mels: int | None
    pad_end: bool

    @property
    def n_bins(self) -> int:
        """Height of the spectrogram image (mel bands or FFT bins)."""
        return self.n_mels if self.n_mels is not None else self.n_fft // 2 + 1

    @property
    def n_frames(self) -> int:
        """Width of the spectrogram image for one 1 s window."""
        if self.pad_end:
            return math.ceil(TARGET_SR / self.hop_length)
        return 1 + (TARGET_SR - self.n_fft) // self.hop_length


FRONTEND_PRESETS = {
    # Shapes as openl3 builds them: (128, 199), (256, 199), (257, 197).
    "mel128": KapreFrontEndConfig(n_fft=2048, hop_length=242, n_mels=128, pad_end=True),
    "mel256": KapreFrontEndConfig(n_fft=2048, hop_length=242, n_mels=256, pad_end=True),
    "linear": KapreFrontEndConfig(n_fft=512, hop_length=242, n_mels=None, pad_end=False),
}


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


class KapreFrontEnd(nn.Module):
    """1 s waveform frames -> dB spectrogram image, as openl3 0.4's kapre layer computes it.

    Input ``(batch, 1, 48000)`` or ``(batch, 48000)`` float32; output
    ``(batch, 1, n_bins, n_frames)``, e.g. ``(batch, 1, 128, 199)`` for mel128.
    """

    def __init__(self, config: KapreFrontEndConfig) -> None:
        super().__init__()
        self.config = config
        # kapre uses tf.signal.hann_window, which is periodic (the symmetric one is 0.3 dB off).
        self.register_buffer(
            "window", torch.hann_window(config.n_fft, periodic=True), persistent=False
        )
        if config.n_mels is not None:
            import librosa  # imported here: librosa is slow to import and only needed now

            mel = librosa.filters.mel(sr=TARGET_SR, n_fft=config.n_fft, n_mels=config.n_mels,
                                      fmin=0.0, fmax=TARGET_SR / 2, htk=False, norm="slaney")
            self.register_buffer("mel_basis", torch.from_numpy(mel).float(), persistent=False)
        else:
            self.mel_basis: torch.Tensor | None = None

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        x = frames.reshape(frames.shape[0], -1).float()  # (batch, 48000)
        if cfg.pad_end:
            # tf.signal.stft(pad_end=True): zeros so the last frame starts before the end.
            needed = (cfg.n_frames - 1) * cfg.hop_length + cfg.n_fft
            x = nn.functional.pad(x, (0, max(needed - x.shape[-1], 0)))  # (batch, 49964)
        # No centring: frame t covers samples [hop * t, hop * t + n_fft).
        spec = torch.stft(x, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.n_fft,
                          window=self.window, center=False, return_complex=True)
        mag = spec.abs()  # (batch, 1025, 199): power 1, a magnitude, not a power
        if self.mel_basis is not None:
            mag = torch.matmul(self.mel_basis, mag)  # (batch, n_mels, 199)
        # openl3's kapre_v0_1_4_magnitude_to_decibel: 10*log10 of the *magnitude*, amin 1e-10,
        # relative to the max of each example, floored at -80 dB.
        db = 10.0 * torch.log10(torch.clamp(mag, min=1e-10))
        db = db - db.amax(dim=(1, 2), keepdim=True)
        db = torch.clamp(db, min=-80.0)
        return db.unsqueeze(1)  # (batch, 1, n_bins, n_frames)


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    # Keras Conv2D(3x3, padding="same") with stride 1 pads one on each side.
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=True)


def _bn(channels: int) -> nn.BatchNorm2d:
    # Keras' BatchNormalization epsilon is 1e-3, not torch's 1e-5 (1e-2 relative error).
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class OpenL3Model(nn.Module):
    """The OpenL3 audio embedding network: kapre front end plus the conv stack.

    Layers are registered in Keras order (input BN, then conv/BN pairs, then
    ``audio_embedding_layer``), which is the order `load_keras_weights` assigns weights in.
    Build it with random weights directly, or with trained ones via
    `load_audio_embedding_model`.

    Parameters
    ----------
    input_repr : {"mel128", "mel256", "linear"}
        Spectrogram the network was trained on: 128 or 256 mel bands, or 257 linear bins.
    embedding_size : {512, 6144}
        512 max-pools the last feature map entirely; 6144 keeps a 4 x 3 (frequency x time)
        grid of the 512 channels, flattened in Keras' channels-last order.
    content_type : {"music", "env"}
        Training data of the weights (AudioSet music or environmental videos). Only recorded
        here; the architecture is the same.
    """

    def __init__(self, input_repr: str = "mel256", embedding_size: int = 512,
                 content_type: str = "music") -> None:
        super().__init__()
        _check_choice("input_repr", input_repr, INPUT_REPRS)
        _check_choice("embedding_size", embedding_size, EMBEDDING_SIZES)
        _check_choice("content_type", content_type, CONTENT_TYPES)
        self.input_repr = input_repr
        self.embedding_size = embedding_size
        self.content_type = content_type
        self.fused = False
        self.spec = KapreFrontEnd(FRONTEND_PRESETS[input_repr])

        # Registration order == Keras weight order; do not reorder these lines.
        self.bn_in = _bn(1)
        self.conv1_1, self.bn1_1 = _conv(1, 64), _bn(64)
        self.conv1_2, self.bn1_2 = _conv(64, 64), _bn(64)
        self.conv2_1, self.bn2_1 = _conv(64, 128), _bn(128)
        self.conv2_2, self.bn2_2 = _conv(128, 128), _bn(128)
        self.conv3_1, self.bn3_1 = _conv(128, 256), _bn(256)
        self.conv3_2, self.bn3_2 = _conv(256, 256), _bn(256)
        self.conv4_1, self.bn4_1 = _conv(256, 512), _bn(512)
        self.audio_embedding_layer = _conv(512, 512)

        self.pool = nn.MaxPool2d(2, stride=2)  # Keras "valid": odd sizes round down
        # Keras "same" pooling pads the end; ceil_mode does the same for partial windows.
        self.final_pool = nn.MaxPool2d(POOL_SIZES[input_repr][embedding_size], ceil_mode=True)
        self.eval()

    @property
    def input_shape(self) -> tuple[int, int]:
        """(n_bins, n_frames) of the spectrogram image the conv stack expects."""
        cfg = self.spec.config
        return cfg.n_bins, cfg.n_frames

    def keras_layers(self) -> list[nn.Module]:
        """The 16 weighted layers, in the order of the Keras model."""
        return [m for m in self.children() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]

    def frontend(self, frames: torch.Tensor) -> torch.Tensor:
        """Waveform frames ``(batch, 1, 48000)`` -> dB image ``(batch, 1, n_bins, n_frames)``."""
        return self.spec(frames)

    def embed_logmel(self, logmel: torch.Tensor) -> torch.Tensor:
        """Conv stack: dB image ``(batch, 1, n_bins, n_frames)`` -> ``(batch, embedding_size)``.

        Layer by layer, with shapes: `run_conv_stack` (which `PackedConvStack` shares).
        """
        bns = [self.bn1_1, self.bn1_2, self.bn2_1, self.bn2_2, self.bn3_1, self.bn3_2,
               self.bn4_1]
        return run_conv_stack(self, logmel, lambda i, conv, x, relu: (
            torch.relu(bns[i](conv(x))) if relu else conv(x)))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Waveform frames ``(batch, 1, 48000)`` -> embeddings ``(batch, embedding_size)``."""
        return self.embed_logmel(self.frontend(frames))

    @torch.no_grad()
    def fuse_batchnorm(self) -> OpenL3Model:
        """Fold each BN that follows a conv into that conv's weights, in place, for inference.

        Saves one pass over every feature map (a few percent of the CPU time). The input BN
        stays: it comes *before* a zero-padded conv, so folding it would change the border
        pixels.
        After fusing, the model can no longer load Keras weights (the BN layers are gone).

        Returns
        -------
        OpenL3Model
            ``self``, for chaining.
        """
        if self.fused:
            return self
        for i in (1, 2, 3, 4):
            for j in (1, 2):
                if i == 4 and j == 2:
                    continue
                conv, bn = getattr(self, f"conv{i}_{j}"), getattr(self, f"bn{i}_{j}")
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
                setattr(self, f"bn{i}_{j}", nn.Identity())
        self.fused = True
        return self


def _check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Keras HDF5 weights
# --------------------------------------------------------------------------------------------


def _decode(names: object) -> list[str]:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in np.atleast_1d(names)]


def read_keras_weights(h5: h5py.File | h5py.Group) -> list[tuple[str, list[np.ndarray]]]:
    """List the weighted layers of a Keras HDF5 weights file, in model order.

    Parameters
    ----------
    h5 : h5py.File or h5py.Group
        An open file written by Keras ``save_weights`` (or ``save``: the ``model_weights``
        group is used then).

    Returns
    -------
    list of (str, list of np.ndarray)
        ``(layer name, weights in weight_names order)`` for every layer with weights.
    """
    if "layer_names" not in h5.attrs and "model_weights" in h5:
        h5 = h5["model_weights"]
    if "layer_names" not in h5.attrs:
        raise ValueError(f"{h5.file.filename}: no 'layer_names' attribute; not a Keras "
                         "HDF5 weights file")
    layers = []
    for layer_name in _decode(h5.attrs["layer_names"]):
        group = h5[layer_name]
        weight_names = _decode(group.attrs.get("weight_names", []))
        if not weight_names:
            continue
        # weight_names are paths relative to the layer group, possibly nested
        # ("conv2d/conv2d/kernel:0" in new files, "conv2d_1/kernel:0" in old ones).
        arrays = [np.asarray(group[w] if w in group else h5[w]) for w in weight_names]
        layers.append((layer_name, arrays))
    return layers


def load_keras_weights(module: OpenL3Model, h5_path: str | os.PathLike | io.IOBase) -> None:
    """Copy the weights of an openl3 Keras HDF5 file into `module`, matching layers by order.

    As Keras does, the k-th layer of the file that has weights goes to the k-th weighted
    layer of the model, whatever the names (the openl3 release files and files written by
    newer Keras name layers differently).

    Parameters
    ----------
    module : OpenL3Model
        An unfused model (see `OpenL3Model.fuse_batchnorm`).
    h5_path : path or binary file object
        A ``.h5`` file, or a file object holding one (e.g. a gunzipped ``.h5.gz``).

    Raises
    ------
    ValueError
        If the number of weighted layers, the number of weights in a layer or a weight's
        shape does not match the model. Nothing is copied in that case.
    """
    if getattr(module, "fused", False):
        raise ValueError("load Keras weights before fuse_batchnorm(): the BN layers are gone")
    name = getattr(h5_path, "name", h5_path)
    targets = module.keras_layers()
    with h5py.File(h5_path, "r") as f:
        layers = read_keras_weights(f)
    if len(layers) != len(targets):
        raise ValueError(
            f"{name}: {len(layers)} layers with weights, but the openl3 audio model has "
            f"{len(targets)}: {[n for n, _ in layers]}. Is this an openl3 audio weights file?"
        )
    tensors: list[tuple[torch.Tensor, np.ndarray]] = []
    for (layer_name, arrays), target in zip(layers, targets, strict=True):
        if isinstance(target, nn.Conv2d):
            out_c, in_c, kh, kw = target.weight.shape
            expected = [(kh, kw, in_c, out_c), (out_c,)]
            # Keras kernel axes are (mel, time, in, out); torch wants (out, in, mel, time).
            params = [target.weight, target.bias]
            convert = [lambda a: a.transpose(3, 2, 0, 1), lambda a: a]
        else:
            c = target.num_features
            expected = [(c,)] * 4
            # Keras BN order: gamma, beta, moving_mean, moving_variance.
            params = [target.weight, target.bias, target.running_mean, target.running_var]
            convert = [lambda a: a] * 4
        got = [tuple(a.shape) for a in arrays]
        if got != expected:
            raise ValueError(
                f"{name}: layer {layer_name!r} has weight shapes {got}, the model's "
                f"{type(target).__name__} expects {expected} (Keras layout). Wrong file for "
                f"this model (input_repr={getattr(module, 'input_repr', '?')})?"
            )
        tensors += [(p, conv(a)) for p, a, conv in zip(params, arrays, convert, strict=True)]
    with torch.no_grad():
        for param, array in tensors:
            param.copy_(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))


# --------------------------------------------------------------------------------------------
# Weight files: cache, download, verification
# --------------------------------------------------------------------------------------------


def weights_filename(input_repr: str, content_type: str) -> str:
    """File name of the official weights, e.g. ``openl3_audio_mel256_music-v0_4_0.h5``."""
    _check_choice("input_repr", input_repr, INPUT_REPRS)
    _check_choice("content_type", content_type, CONTENT_TYPES)
    return f"openl3_audio_{input_repr}_{content_type}-v0_4_0.h5"


def weights_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder for weight files: `cache_dir`, else ``$HELPERS_OPENL3_DIR``, else
    ``~/.cache/helpers/openl3``."""
    if cache_dir is None:
        cache_dir = os.environ.get(WEIGHTS_ENV) or DEFAULT_CACHE_DIR
    return Path(cache_dir).expanduser()


def weights_path(input_repr: str, content_type: str,
                 cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `load_audio_embedding_model` looks for (and downloads) the weights."""
    return weights_cache_dir(cache_dir) / weights_filename(input_repr, content_type)


class WeightsMissingError(FileNotFoundError):
    """The official weights are not installed; the message says how to install them."""


def weights_command(input_repr: str = "mel256", content_type: str = "music") -> str:
    """The command line that installs the official weights of one model."""
    return (f"python -m helpers weights openl3 --input-repr {input_repr} "
            f"--content-type {content_type}")


def weights_available(input_repr: str = "mel256", content_type: str = "music",
                      cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether the weight file is already in the cache folder (never downloads).

    Parameters
    ----------
    input_repr, content_type : str
        As for `load_audio_embedding_model`.
    cache_dir : path, optional
        Folder to look in (see `weights_cache_dir`).

    Returns
    -------
    bool
        True if ``weights_path(...)`` is a non-empty file.
    """
    path = weights_path(input_repr, content_type, cache_dir)
    return path.is_file() and path.stat().st_size > 0


def git_blob_sha1(data: bytes) -> str:
    """SHA-1 that git (and GitHub) gives a file with content `data`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _fetch_url(url: str, timeout: float = 20.0) -> bytes:
    # A separate function so tests can replace the network.
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed https URL)
        return response.read()


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class InstalledWeights:
    """Where `install_weights` / `fetch_weights` put a weights file, and how it was checked.

    Attributes
    ----------
    path : Path
        The ``.h5`` file in the cache folder.
    verified : str
        What was checked, e.g. "official: git blob SHA-1 of the .h5.gz matches" or
        "HDF5 and layer layout only".
    official : bool
        Whether the content is proven to be the official file (by its gzip's SHA-1).
    """

    path: Path
    verified: str
    official: bool


def verify_weights(data: bytes, input_repr: str, content_type: str, name: str = "weights",
                   embedding_size: int = 512) -> tuple[bytes, str, bool]:
    """Check the bytes of an openl3 weights file (``.h5.gz`` or ``.h5``) before installing it.

    A gzip must be the official file of (`input_repr`, `content_type`): its git blob SHA-1 is
    compared with `KNOWN_GZ_BLOB_SHA1`. The (gunzipped) content must be HDF5 and hold the
    openl3 audio network's layers with the Keras shapes (`load_keras_weights`). openl3 does
    not publish SHA-1s of its ``.h5`` files, so a plain ``.h5`` is checked by layout only.

    Returns
    -------
    h5 : bytes
        The HDF5 content.
    verified : str
        What was checked.
    official : bool
        Whether the SHA-1 proves it official.

    Raises
    ------
    RuntimeError
        Not gzip/HDF5, a gzip with another SHA-1, or a layout that is not openl3's.
    """
    official = False
    if data[:2] == b"\x1f\x8b":
        got, expected = git_blob_sha1(data), KNOWN_GZ_BLOB_SHA1[(input_repr, content_type)]
        if got != expected:
            other = [f"{r}/{c}" for (r, c), sha in KNOWN_GZ_BLOB_SHA1.items() if sha == got]
            raise RuntimeError(
                f"{name}: git blob SHA-1 {got}, expected {expected} (the official "
                f"{input_repr}/{content_type} .h5.gz); "
                + (f"this is the official {other[0]} file" if other
                   else "the file is truncated, damaged or not the official one"))
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise RuntimeError(f"{name}: not a valid gzip file ({err})") from err
        official = True
    if not data.startswith(_HDF5_SIGNATURE):
        raise RuntimeError(f"{name}: not an HDF5 file (nor a gzip of one); expected the openl3 "
                           f"{input_repr}/{content_type} weights (.h5 or .h5.gz)")
    try:
        load_keras_weights(OpenL3Model(input_repr, embedding_size, content_type),
                           io.BytesIO(data))
    except (ValueError, OSError, KeyError) as err:
        raise RuntimeError(f"{name}: not openl3 audio weights ({err})") from err
    how = ("official: git blob SHA-1 of the .h5.gz matches, HDF5 layer layout checked"
           if official else "HDF5 layer layout checked; content not proven official (openl3 "
           "publishes SHA-1s of its .h5.gz files only)")
    return data, how, official


def install_weights(source: str | os.PathLike, input_repr: str = "mel256",
                    content_type: str = "music", cache_dir: str | os.PathLike | None = None,
                    embedding_size: int = 512) -> InstalledWeights:
    """Verify a weights file the user has (``.h5.gz`` or ``.h5``) and install it in the cache.

    Parameters
    ----------
    source : path
        E.g. ``openl3_audio_mel256_music-v0_4_0.h5.gz`` downloaded by hand.
    input_repr, content_type : str
        The model it is for; the file goes to ``weights_path(input_repr, content_type)``.
    cache_dir : path, optional
        See `weights_cache_dir`.
    embedding_size : {512, 6144}
        Checked against the layout (both sizes use the same file).

    Returns
    -------
    InstalledWeights

    Raises
    ------
    FileNotFoundError
        `source` does not exist.
    ValueError
        The file name says it is for another input representation or content type.
    RuntimeError
        See `verify_weights`; nothing is installed then.
    """
    source = Path(source).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such weights file")
    _check_name(source.name, input_repr, content_type)
    h5, how, official = verify_weights(source.read_bytes(), input_repr, content_type,
                                       name=str(source), embedding_size=embedding_size)
    if not official:
        logger.warning("%s: %s", source, how)
    dest = write_bytes(weights_path(input_repr, content_type, cache_dir), h5)
    return InstalledWeights(dest, how, official)


def _check_name(name: str, input_repr: str, content_type: str) -> None:
    """Refuse a file whose openl3-style name says it is for another model."""
    for value, allowed in ((input_repr, INPUT_REPRS), (content_type, CONTENT_TYPES)):
        others = [v for v in allowed if v != value and f"_{v}" in f"_{name}"]
        if others and f"_{value}" not in f"_{name}":
            raise ValueError(f"{name} looks like {others[0]} weights, not {value}")


def fetch_weights(input_repr: str, content_type: str,
                  cache_dir: str | os.PathLike | None = None) -> InstalledWeights:
    """Download, verify and install the official weights (see `verify_weights`).

    Written atomically (`helpers.io`): an interrupted download never leaves a partial file
    where the loader would find it.

    Raises
    ------
    FileNotFoundError
        The download failed (offline, HTTP error, timeout): the message says how to install
        a file downloaded elsewhere.
    RuntimeError
        A corrupt download (checksum, gzip, HDF5 or layout); nothing is installed.
    """
    dest = weights_path(input_repr, content_type, cache_dir)
    url = WEIGHTS_URL.format(name=dest.name)
    hint = (f"Download {url} on a machine with network access, then run `"
            f"{weights_command(input_repr, content_type)} --from FILE` (or pass "
            "weights='/path/to/file.h5[.gz]' to load_audio_embedding_model).")
    logger.info("downloading openl3 weights %s -> %s", url, dest)
    try:
        data = _fetch_url(url)
    except OSError as err:  # URLError, HTTPError, timeouts are all OSError
        raise FileNotFoundError(f"openl3 weights not found at {dest} and the download failed "
                                f"({err}). {hint}") from err
    try:
        h5, how, official = verify_weights(data, input_repr, content_type,
                                           name=f"download of {url}")
    except RuntimeError as err:
        raise RuntimeError(f"{err}. {hint}") from err
    return InstalledWeights(write_bytes(dest, h5), how, official)


def download_weights(input_repr: str, content_type: str,
                     cache_dir: str | os.PathLike | None = None) -> Path:
    """`fetch_weights`, returning the path of the ``.h5`` file."""
    return fetch_weights(input_repr, content_type, cache_dir).path


def _open_weights(path: Path) -> Path | io.BytesIO:
    """A path h5py can open: .h5 as is, .h5.gz unpacked in memory."""
    if not path.is_file():
        raise FileNotFoundError(f"openl3 weights file {path} does not exist")
    if path.suffix == ".gz":
        try:
            return io.BytesIO(gzip.decompress(path.read_bytes()))
        except (OSError, EOFError) as err:
            raise RuntimeError(f"{path} is not a valid gzip file ({err})") from err
    return path


def load_audio_embedding_model(
    input_repr: str = "mel256",
    content_type: str = "music",
    embedding_size: int = 512,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    fuse_bn: bool = True,
    download: bool = True,
) -> OpenL3Model:
    """Build the OpenL3 audio network and load its official (or given) weights.

    Parameters
    ----------
    input_repr : {"mel256", "mel128", "linear"}
        Input representation (the weights differ per representation).
    content_type : {"music", "env"}
        Training content of the weights.
    embedding_size : {512, 6144}
        Output dimension.
    weights : path, optional
        A ``.h5`` or ``.h5.gz`` Keras weights file. ``None`` uses
        ``weights_path(input_repr, content_type, cache_dir)``, downloading it first if it is
        missing and `download` is true.
    device : str or torch.device, optional
        Where to run; ``None`` picks CUDA when available, else CPU.
    cache_dir : path, optional
        Weights folder (default ``$HELPERS_OPENL3_DIR`` or ``~/.cache/helpers/openl3``).
    fuse_bn : bool
        Fold BatchNorm into the convs for faster inference (same results to ~1e-6).
    download : bool
        Allow downloading missing weights.

    Returns
    -------
    OpenL3Model
        In eval mode, on `device`.

    Raises
    ------
    FileNotFoundError
        Weights missing and not downloadable; the message names the expected path.
    RuntimeError
        Corrupt weights file or download.
    ValueError
        Invalid option, or a weights file that does not fit the architecture (or whose name
        says it is for another input representation).
    """
    model = OpenL3Model(input_repr, embedding_size, content_type)
    if weights is None:
        path = weights_path(input_repr, content_type, cache_dir)
        if not weights_available(input_repr, content_type, cache_dir):
            if not download:
                raise WeightsMissingError(
                    f"openl3 {input_repr}/{content_type} weights are not installed (looked for "
                    f"{path}). Run `{weights_command(input_repr, content_type)}` to download "
                    "and verify them (add --from FILE for a file downloaded by hand), or "
                    "pass weights=.")
            path = download_weights(input_repr, content_type, cache_dir)
    else:
        path = Path(weights).expanduser()
        # The conv stack is identical for all representations, so shapes cannot catch a
        # mel128 file loaded as mel256; the openl3 file names can.
        others = [r for r in INPUT_REPRS if r != input_repr and f"_{r}" in f"_{path.name}"]
        if others and input_repr not in path.name:
            raise ValueError(f"{path.name} looks like {others[0]} weights, but "
                             f"input_repr={input_repr!r}")
    source = _open_weights(path)
    try:
        load_keras_weights(model, source)
    except OSError as err:  # h5py raises OSError for truncated or non-HDF5 files
        raise RuntimeError(f"cannot read openl3 weights {path} ({err}); delete it and "
                           "download again, or pass weights=") from err
    if fuse_bn:
        model.fuse_batchnorm()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    if torch.device(device).type == "cpu":
        # oneDNN's convolutions run faster on channels-last tensors: 97 s instead of 120 s per
        # 30 s clip (mel256, hop 0.1, 32-window batches) on a 2-core AMD EPYC, measured with
        # benchmarks/embedding.py before commit 40c9d3a.
        model = model.to(memory_format=torch.channels_last)
    return model


# --------------------------------------------------------------------------------------------
# Audio -> embeddings
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _kaiser_best_022() -> tuple[np.ndarray, int, float]:
    # imported here: resampy pulls in numba (seconds), needed only for non-48 kHz audio
    import resampy
    import scipy.signal

    p = _KAISER_BEST_022
    return resampy.filters.sinc_window(
        num_zeros=p["num_zeros"], precision=p["precision"], rolloff=p["rolloff"],
        window=lambda n: scipy.signal.windows.kaiser(n, p["beta"]),
    )


def preprocess_audio(audio: np.ndarray, sr: int) -> np.ndarray:
    """Mono 48 kHz float64 signal, as openl3 prepares it.

    Parameters
    ----------
    audio : np.ndarray
        ``(samples,)`` or ``(samples, channels)`` (openl3's and soundfile's layout).
    sr : int
        Sample rate of `audio` in Hz.

    Returns
    -------
    np.ndarray
        ``(int(samples * 48000 / sr),)`` float64.
    """
    audio = np.asarray(audio)
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must be (samples,) or (samples, channels), got {audio.shape}")
    if audio.size == 0:
        raise ValueError("audio is empty")
    if not np.all(np.isfinite(audio)):
        raise ValueError("audio contains NaN or infinite values")
    x = audio.astype(np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if sr != TARGET_SR:
        import resampy  # imported here: resampy pulls in numba, slow to import

        x = resampy.resample(x, sr, TARGET_SR, filter=_kaiser_best_022)
    return x


def frame_audio(audio_48k: np.ndarray, hop_size: float = 0.1, center: bool = True) -> np.ndarray:
    """Cut a 48 kHz signal into openl3's 1 s windows.

    With `center`, 24000 zeros go in front (so frame i is centred at ``i * hop_size``); the
    end is zero-padded until the last window is complete.

    Parameters
    ----------
    audio_48k : np.ndarray
        ``(samples,)`` mono signal at 48 kHz.
    hop_size : float
        Seconds between window starts.
    center : bool
        Centre windows on their timestamps.

    Returns
    -------
    np.ndarray
        ``(n_frames, 48000)`` read-only strided view (no copy), same dtype as the input.
    """
    if hop_size <= 0:
        raise ValueError(f"hop_size must be positive, got {hop_size}")
    frame_len = TARGET_SR
    hop_len = int(hop_size * TARGET_SR)
    x = np.asarray(audio_48k)
    if center:
        x = np.pad(x, (frame_len // 2, 0))
    if len(x) <= frame_len:
        x = np.pad(x, (0, frame_len - len(x)))
    else:
        n_hops = math.ceil((len(x) - frame_len) / hop_len)
        x = np.pad(x, (0, frame_len + n_hops * hop_len - len(x)))
    n_frames = 1 + (len(x) - frame_len) // hop_len
    return np.lib.stride_tricks.as_strided(
        x, shape=(n_frames, frame_len), strides=(x.strides[0] * hop_len, x.strides[0]),
        writeable=False,
    )


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
           "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

#: Largest per-frame relative L2 distance to float32 that a reduced precision may have.
PRECISION_TOLERANCE = 1e-2

#: Windows per forward pass when none is given. On a CPU two windows at a time are fastest:
#: the activations of a 32-window batch (0.4 GB for mel256's first conv) were mapped and
#: unmapped by the allocator on every batch, and the page faults cost 25-30 % more CPU time
#: (profiled on a 2-core Xeon: 17.7-21 CPU-s per 30 s clip at hop 0.5 against 13.3-14.7).
#: With the windows shared among threads (`embed_frames`), each thread allocates from its own
#: glibc arena, whose heaps hold at most 64 MB: two windows' maps (2 x 26 MB) fit and are
#: reused, four windows' do not and fault again (measured: 856k minor faults per 30 s clip at
#: 4, about 1k at 2).
CPU_BATCH_SIZE = 2
GPU_BATCH_SIZE = 32


def default_batch_size(device: str | torch.device) -> int:
    """`CPU_BATCH_SIZE` on a CPU, `GPU_BATCH_SIZE` elsewhere."""
    return CPU_BATCH_SIZE if torch.device(device).type == "cpu" else GPU_BATCH_SIZE


def low_precision_dtype(device: str | torch.device) -> str | None:
    """The reduced precision this device runs natively, or None.

    CPUs with AMX-BF16 or AVX512-BF16 get ``"bf16"`` (oneDNN runs bf16 convolutions on those
    units); other CPUs get None, because without them bf16 is emulated and slower than
    float32. CUDA GPUs get ``"bf16"`` where supported (Ampere and newer), else ``"fp16"``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        try:
            native = cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported()
        except AttributeError:  # an older torch without the probes: assume not
            native = False
        return "bf16" if native else None
    return None


def _check_signal(seconds: float = 3.5, sr: int = TARGET_SR) -> np.ndarray:
    """The reference fixture's kind of test clip, made here: a log chirp (100 Hz to 8 kHz)
    and a 440 Hz tone at 0.4 each, white noise at 0.014 RMS, 10 ms fades."""
    t = np.arange(int(seconds * sr)) / sr
    ratio = 8000 / 100
    chirp = np.sin(2 * np.pi * 100 * seconds / np.log(ratio) * (ratio ** (t / seconds) - 1))
    noise = np.random.default_rng(0).standard_normal(t.size)
    y = 0.4 * chirp + 0.4 * np.sin(2 * np.pi * 440 * t) + 0.014 * noise
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)
    return y * fade


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision `resolve_precision` picked for one model, and why.

    Attributes
    ----------
    dtype : str
        ``"fp32"``, ``"bf16"`` or ``"fp16"``: what the conv stack runs in.
    drift : float or None
        Largest per-frame relative L2 distance of the reduced precision's embeddings to
        float32 on the check clip (None when no reduced precision was tried).
    reason : str
    """

    dtype: str
    drift: float | None
    reason: str

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "drift_vs_fp32": self.drift, "reason": self.reason,
                "tolerance": PRECISION_TOLERANCE}


def precision_drift(model: OpenL3Model, dtype: str, audio: np.ndarray | None = None,
                    sr: int = TARGET_SR) -> float:
    """Largest per-frame relative L2 distance between `dtype` and float32 embeddings."""
    audio = _check_signal() if audio is None else audio
    ref, _ = get_audio_embedding(audio, sr, model, hop_size=0.25, dtype="fp32")
    low, _ = get_audio_embedding(audio, sr, model, hop_size=0.25, dtype=dtype)
    norms = np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
    return float((np.linalg.norm(low - ref, axis=1) / norms).max())


def resolve_precision(model: OpenL3Model, precision: str = "auto") -> PrecisionChoice:
    """The precision to embed with: ``"auto"`` tries the device's reduced precision.

    ``"auto"`` takes `low_precision_dtype` when the device has one *and* its embeddings stay
    within `PRECISION_TOLERANCE` (relative L2 per frame) of float32 on a fixed check clip,
    with this model's weights; otherwise float32. An explicit ``"fp32"``, ``"bf16"`` or
    ``"fp16"`` is taken as is. The choice is made once per model and remembered.
    """
    if precision != "auto":
        if precision not in _DTYPES:
            raise ValueError(f"precision must be 'auto' or one of {sorted(_DTYPES)}, "
                             f"got {precision!r}")
        return PrecisionChoice(_NAMES[_DTYPES[precision]], None, "requested")
    cached = getattr(model, "_precision_choice", None)
    if cached is not None:
        return cached
    device = next(model.parameters()).device
    candidate = low_precision_dtype(device)
    if candidate is None:
        choice = PrecisionChoice("fp32", None, f"{device.type}: no native reduced precision")
    else:
        drift = precision_drift(model, candidate)
        if drift <= PRECISION_TOLERANCE:
            choice = PrecisionChoice(candidate, drift, f"{candidate} is native on this "
                                     f"{device.type} and within tolerance")
        else:
            logger.warning("openl3: %s drifts %.3g from float32 on the check clip (limit %g); "
                           "embedding in float32", candidate, drift, PRECISION_TOLERANCE)
            choice = PrecisionChoice("fp32", drift, f"{candidate} drift above tolerance")
    model._precision_choice = choice
    return choice


def _autocast(device: torch.device, dtype: str | torch.dtype | None):
    if dtype is None:
        return nullcontext()
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class PackedConvStack:
    """The fused model's conv stack for float32 CPU inference, as oneDNN sees it best.

    Each conv and the ReLU after it run as one oneDNN primitive (the ReLU is applied while
    the output is still in cache instead of in a second pass over a 13 MB map), and the
    weights are reordered into oneDNN's blocked layout once instead of on every call. Same
    arithmetic as the eager stack (bit-identical on the reference fixture's checks). It
    relies on two private torch operators (``mkldnn::_convolution_pointwise``, the one
    torch's own compiler emits, and ``mkldnn_reorder_conv2d_weight``), so `build` checks
    that they exist and agree with the eager stack, and returns None otherwise.
    """

    def __init__(self, model: OpenL3Model, packed: list[torch.Tensor]) -> None:
        self.model = model
        self.weights = packed
        self.biases = [c.bias.detach() for c in _stack_convs(model)]
        self.version = _param_version(model)

    @classmethod
    def build(cls, model: OpenL3Model) -> PackedConvStack | None:
        """Pack `model`'s convs, or None where the operators are missing or disagree."""
        mkldnn_ops = getattr(torch.ops, "mkldnn", None)
        if (not model.fused or not torch.backends.mkldnn.is_available()
                or not hasattr(mkldnn_ops, "_convolution_pointwise")
                or not hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")):
            return None
        try:
            with torch.inference_mode():
                probe = torch.linspace(-80.0, 0.0, math.prod(model.input_shape)).reshape(
                    1, 1, *model.input_shape).contiguous(memory_format=torch.channels_last)
                shapes: list[list[int]] = []
                run_conv_stack(model, probe, lambda i, conv, x, relu: (
                    shapes.append(list(x.shape)), _eager(conv, x, relu))[1])
                packed = [torch._C._nn.mkldnn_reorder_conv2d_weight(
                    conv.weight.detach().contiguous().to_mkldnn(), [1, 1], [1, 1], [1, 1], 1,
                    shape) for conv, shape in zip(_stack_convs(model), shapes, strict=True)]
                stack = cls(model, packed)
                expected, got = model.embed_logmel(probe), stack(probe)
                scale = expected.abs().max().clamp_min(1e-12)
                if not bool(((got - expected).abs().max() / scale) < 1e-4):
                    logger.debug("openl3: packed conv stack disagrees; using the eager one")
                    return None
            return stack
        except (RuntimeError, NotImplementedError) as err:  # a torch without these kernels
            logger.debug("openl3: no packed conv stack (%s)", err)
            return None

    def __call__(self, logmel: torch.Tensor) -> torch.Tensor:
        """Same contract as `OpenL3Model.embed_logmel`."""
        pointwise = torch.ops.mkldnn._convolution_pointwise

        def conv_fn(i, conv, x, relu):
            return pointwise(x, self.weights[i], self.biases[i], [1, 1], [1, 1], [1, 1], 1,
                             "relu" if relu else "none", [], "")

        return run_conv_stack(self.model, logmel.contiguous(memory_format=torch.channels_last),
                              conv_fn)


def run_conv_stack(model: OpenL3Model, x: torch.Tensor, conv_fn) -> torch.Tensor:
    """The conv stack's layer order, with each conv (+ BN + ReLU) done by `conv_fn`.

    ``conv_fn(i, conv, x, relu)`` runs the i-th conv and, if `relu`, what follows it (every
    conv but the last, the embedding layer). Shapes for mel128 (mel256 and linear have 256 /
    257 rows, and linear 197 columns, halved by each pool the same way)::

        input BN             (batch, 1, 128, 199)
        conv 1_1, 1_2, pool  (batch, 64, 128, 199) -> (batch, 64, 64, 99)
        conv 2_1, 2_2, pool  (batch, 128, 64, 99) -> (batch, 128, 32, 49)
        conv 3_1, 3_2, pool  (batch, 256, 32, 49) -> (batch, 256, 16, 24)
        conv 4_1, embedding  (batch, 512, 16, 24), no BN or ReLU after the embedding layer
        final pool           (batch, 512, 1, 1) for 512, (batch, 512, 4, 3) for 6144

    Keras flattens channels last: (row, column, channel) -> index row*W*C + col*C + c.
    """
    convs = _stack_convs(model)
    x = model.bn_in(x)
    for i, conv in enumerate(convs):
        x = conv_fn(i, conv, x, i < len(convs) - 1)
        if i in (1, 3, 5):
            x = model.pool(x)
    x = model.final_pool(x).permute(0, 2, 3, 1)  # (batch, 1, 1, 512) or (batch, 4, 3, 512)
    return x.reshape(x.shape[0], -1)  # (batch, embedding_size)


def _stack_convs(model: OpenL3Model) -> list[nn.Conv2d]:
    return [model.conv1_1, model.conv1_2, model.conv2_1, model.conv2_2, model.conv3_1,
            model.conv3_2, model.conv4_1, model.audio_embedding_layer]


def _eager(conv: nn.Conv2d, x: torch.Tensor, relu: bool) -> torch.Tensor:
    y = conv(x)
    return torch.relu(y) if relu else y


def _param_version(model: OpenL3Model) -> tuple:
    """Changes whenever a weight is replaced or modified in place."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def packed_conv_stack(model: OpenL3Model) -> PackedConvStack | None:
    """The model's `PackedConvStack`, built on first use and rebuilt if its weights change."""
    stack = getattr(model, "_packed_stack", None)
    if stack is not None and stack.version == _param_version(model):
        return stack
    if getattr(model, "_packed_failed", None) == _param_version(model):
        return None
    stack = PackedConvStack.build(model)
    model._packed_stack = stack
    model._packed_failed = None if stack is not None else _param_version(model)
    return stack


@lru_cache(maxsize=1)
def _keep_activations_in_heap() -> bool:
    """Stop glibc from giving the conv maps back to the OS after every forward pass.

    glibc serves blocks above its mmap threshold (at most 32 MB, adapted at run time) with
    fresh mappings and trims the heap top above twice that, so every batch page-faults its
    activation memory in again: 0.8-4 s of kernel time per 30 s clip. A 64 MB threshold
    and a 512 MB trim threshold keep one window's maps resident across calls (they are
    reused, not grown). Process-wide and once; a no-op off glibc, and
    ``HELPERS_MALLOC_TUNING=0`` turns it off.
    """
    if os.environ.get("HELPERS_MALLOC_TUNING", "1") == "0":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 64 << 20)
                    and libc.mallopt(m_trim_threshold, 512 << 20))
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False


def embed_frames(model: OpenL3Model, frames: np.ndarray, batch_size: int | None = None,
                 dtype: str | torch.dtype | None = None) -> np.ndarray:
    """Run the network on ``(n_frames, 48000)`` windows, `batch_size` at a time.

    The front end always runs in float32 (float16 cannot hold the 80 dB range); `dtype`
    (``"bf16"``, ``"fp16"``, or ``"auto"``: see `resolve_precision`) autocasts the conv
    stack only. `batch_size` None is `default_batch_size` for the model's device.

    On a CPU with several torch threads, the windows are shared out among that many Python
    threads that each run one torch thread: one window's convs split over two cores spend
    about 15 % more CPU time in synchronisation than two windows side by side (profiled on
    a 2-core Xeon: 3.96 against 3.35 CPU-s for 21 windows). torch's thread count is
    process-wide, so it is set to 1 for the duration of the call and restored afterwards.

    Returns
    -------
    np.ndarray
        ``(n_frames, embedding_size)`` float32.
    """
    device = next(model.parameters()).device
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(dtype, str) and dtype == "auto":
        dtype = resolve_precision(model).dtype
    conv_stack = model.embed_logmel
    workers = 1
    if device.type == "cpu":
        _keep_activations_in_heap()
        if dtype is None or _DTYPES.get(dtype, dtype) == torch.float32:
            conv_stack = packed_conv_stack(model) or conv_stack
        workers = min(torch.get_num_threads(), math.ceil(len(frames) / batch_size))
    if workers <= 1:
        return _embed_windows(model, conv_stack, frames, batch_size, dtype)
    # Contiguous shares in window order, so the concatenation is in order too.
    bounds = np.linspace(0, len(frames), workers + 1).round().astype(int)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="openl3") as pool:
            parts = list(pool.map(
                lambda a, b: _embed_windows(model, conv_stack, frames[a:b], batch_size, dtype),
                bounds[:-1], bounds[1:]))
    finally:
        torch.set_num_threads(threads)
    return np.concatenate(parts, axis=0)


@torch.inference_mode()  # per thread: inference and autocast modes are thread-local
def _embed_windows(model: OpenL3Model, conv_stack, frames: np.ndarray, batch_size: int,
                   dtype: str | torch.dtype | None) -> np.ndarray:
    device = next(model.parameters()).device
    channels_last = model.conv1_2.weight.is_contiguous(memory_format=torch.channels_last)
    out = []
    for start in range(0, len(frames), batch_size):
        chunk = np.ascontiguousarray(frames[start:start + batch_size], dtype=np.float32)
        x = torch.from_numpy(chunk).to(device, non_blocking=True)  # (batch, 48000)
        logmel = model.frontend(x.unsqueeze(1))  # (batch, 1, n_bins, n_frames)
        if channels_last:
            logmel = logmel.contiguous(memory_format=torch.channels_last)
        with _autocast(device, dtype):
            emb = conv_stack(logmel)  # (batch, embedding_size)
        out.append(emb.float().cpu().numpy())
    return np.concatenate(out, axis=0)


def get_audio_embedding(
    audio: np.ndarray | Sequence[np.ndarray],
    sr: int | Sequence[int],
    model: OpenL3Model,
    hop_size: float = 0.1,
    center: bool = True,
    batch_size: int | None = None,
    dtype: str | torch.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray] | tuple[list[np.ndarray], list[np.ndarray]]:
    """Compute OpenL3 embeddings of a signal (or a list of signals), like openl3's function.

    Parameters
    ----------
    audio : np.ndarray or list of np.ndarray
        ``(samples,)`` or ``(samples, channels)``; channels are averaged.
    sr : int or list of int
        Sample rate(s); one per signal when `audio` is a list (or one for all).
    model : OpenL3Model
        From `load_audio_embedding_model` (or built directly); runs on its device.
    hop_size : float
        Seconds between embeddings.
    center : bool
        Centre the 1 s windows on the timestamps (openl3's default).
    batch_size : int, optional
        Windows per forward pass; results do not depend on it beyond float rounding.
        ``None``: `default_batch_size` (2 on a CPU, 32 on a GPU).
    dtype : {None, "fp32", "bf16", "fp16", "auto"} or torch.dtype
        Autocast precision of the conv stack; ``None`` is float32, like openl3. ``"auto"``
        takes the device's native reduced precision when it passes the drift check
        (`resolve_precision`): about 2-3x faster on CPUs with AMX or AVX512-BF16.

    Returns
    -------
    embeddings : np.ndarray or list of np.ndarray
        ``(n_frames, embedding_size)`` float32.
    timestamps : np.ndarray or list of np.ndarray
        ``(n_frames,)`` float64, ``i * hop_size`` seconds (window centres if `center`).
    """
    if isinstance(audio, list | tuple):
        srs = list(sr) if isinstance(sr, list | tuple) else [sr] * len(audio)
        if len(srs) != len(audio):
            raise ValueError(f"got {len(audio)} signals but {len(srs)} sample rates")
        results = [get_audio_embedding(a, s, model, hop_size, center, batch_size, dtype)
                   for a, s in zip(audio, srs, strict=True)]
        return [e for e, _ in results], [t for _, t in results]
    frames = frame_audio(preprocess_audio(audio, int(sr)), hop_size, center)
    embeddings = embed_frames(model, frames, batch_size=batch_size, dtype=dtype)
    timestamps = np.arange(len(embeddings), dtype=np.float64) * hop_size
    return embeddings, timestamps
