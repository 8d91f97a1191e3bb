"""A second "AI" family: the reconstruction of a small neural waveform autoencoder.

`helpers.artifacts` imitates a generator's last stages with fixed signal processing (a
Griffin-Lim vocoder, a fixed transposed-convolution kernel, a quantised codec latent). This
module goes one step closer to a real generator: a *learned* encoder/decoder pair, trained by
the benchmark itself on human music, whose decoder upsamples with strided transposed
convolutions. An "AI" clip of this family is the autoencoder's reconstruction of a human
excerpt: the content survives, the waveform is re-synthesised by the decoder.

What it models
--------------
Afchar, Meseguer-Brocal and Hennequin (2024, "Detecting music deepfakes is easy but actually
hard") auto-encode real music through the decoders of neural codecs and show that a simple
classifier separates the reconstructions from the originals almost perfectly, because every
transposed-convolution layer (kernel ``2 * stride`` here, as in EnCodec/DAC-style decoders)
leaves spectral images and periodic peaks at multiples of its input rate (the uneven kernel
overlap of Odena et al. 2016, "Deconvolution and checkerboard artifacts"), and the bottleneck
discards detail. They also show the detector is brittle: it learns the decoder, not "AI
music". This family reproduces that setting on CPU: the decoder is learned (not a fixed
kernel), its traces are whatever a short training leaves, and the latent (`latent_dim`
channels at ``sample_rate / prod(strides)``) is a real information bottleneck.

It is a proxy, like the other families: a small model trained for minutes sounds like a
lossy codec, not like Suno or Udio, whose decoders differ and change between versions.

Typical use
-----------
>>> model = train_autoencoder(human_train_clips)               # doctest: +SKIP
>>> save_autoencoder(model, "cache/autoencoder.pt")            # doctest: +SKIP
>>> ai = reconstruct(load_autoencoder("cache/autoencoder.pt"), y, 22_050)  # doctest: +SKIP

Level: training clips and `reconstruct` inputs are scaled to `TARGET_RMS` as a whole and the
reconstruction is scaled back, so the model works at one level whatever the file's gain
(a convolutional net with biases and ELUs is not scale-equivariant).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from helpers.io import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "TARGET_RMS",
    "AutoencoderConfig",
    "WaveAutoencoder",
    "load_autoencoder",
    "reconstruct",
    "reconstruction_loss",
    "save_autoencoder",
    "train_autoencoder",
]

#: RMS every training clip and every `reconstruct` input is scaled to (about -20 dBFS).
TARGET_RMS = 0.1

#: Marks the files `save_autoencoder` writes, so a foreign checkpoint is refused clearly.
FILE_FORMAT = "helpers.autoencoder/1"


@dataclass(frozen=True)
class AutoencoderConfig:
    """Shape of the autoencoder and how `train_autoencoder` fits it.

    Parameters
    ----------
    sample_rate : int
        Rate, in Hz, of the audio the model is trained on and accepts.
    channels : int
        Width of the full-rate layers; each encoder stage doubles it (capped at
        ``8 * channels``) and each decoder stage halves it back, so the cost per second of
        audio stays roughly even across scales.
    strides : tuple of int
        Downsampling of each encoder stage (each >= 2); the decoder upsamples by the same
        factors in reverse with ``ConvTranspose1d(kernel=2 * stride)``, the decoder layer whose
        traces Afchar et al. (2024) found. ``(4, 4, 4)``: latent frames every 64 samples
        (345 frames/s at 22.05 kHz).
    latent_dim : int
        Channels of the bottleneck. With the default strides, 16 channels keep a quarter as
        many numbers as the waveform has samples: a lossy code, not the identity.
    input_kernel, latent_kernel, output_kernel : int
        Kernel sizes (odd) of the first encoder conv, of the convs either side of the
        bottleneck, and of the last decoder conv.
    steps : int
        Optimiser steps. The default trains in about two minutes on two CPU cores, whatever
        the amount of music (each step draws a fresh batch of random segments).
    batch_size : int
        Segments per step.
    segment_s : float
        Length of a training segment in seconds (rounded down to a multiple of the total
        stride). Clips shorter than this are not used for training.
    lr : float
        AdamW learning rate, decayed linearly to 10% over the last half of training.
    stft_sizes : tuple of int
        FFT sizes of the multi-resolution STFT log-magnitude loss (hop = size / 4).
    wave_weight : float
        Weight of the waveform L1 term relative to the (averaged) STFT term. The STFT term
        makes reconstructions sound like music; the waveform term keeps them aligned with the
        input, so the reconstruction stays recognisably the same excerpt.
    gain_jitter_db : float
        Each training segment is scaled by a random gain uniform in +-this many dB, so the
        model also sees the quiet and loud passages of a clip normalised as a whole.
    seed : int
        Seeds the weight initialisation and the segment draws.
    """

    sample_rate: int = 22_050
    channels: int = 32
    strides: tuple[int, ...] = (4, 4, 4)
    latent_dim: int = 16
    input_kernel: int = 7
    latent_kernel: int = 3
    output_kernel: int = 7
    steps: int = 300
    batch_size: int = 8
    segment_s: float = 1.0
    lr: float = 2e-3
    stft_sizes: tuple[int, ...] = (512, 1024, 2048)
    wave_weight: float = 1.0
    gain_jitter_db: float = 6.0
    seed: int = 0

    def __post_init__(self) -> None:
        # from_dict hands lists (JSON has no tuples); keep the frozen config hashable.
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        object.__setattr__(self, "stft_sizes", tuple(int(s) for s in self.stft_sizes))
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {self.sample_rate}")
        if not self.strides or min(self.strides) < 2:
            raise ValueError(f"strides must be a non-empty tuple of ints >= 2, got "
                             f"{self.strides}")
        for name in ("input_kernel", "latent_kernel", "output_kernel"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{name} must be odd and >= 1 (keeps length), got {k}")
        for name in ("channels", "latent_dim", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.segment_s * self.sample_rate < max(self.hop, max(self.stft_sizes, default=0)):
            raise ValueError(
                f"segment_s={self.segment_s} s is shorter than the total stride ({self.hop} "
                f"samples) or the largest STFT size ({max(self.stft_sizes, default=0)})")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    @property
    def hop(self) -> int:
        """Total stride: waveform samples per latent frame."""
        return math.prod(self.strides)

    @property
    def segment_samples(self) -> int:
        """Training segment length in samples, a multiple of `hop`."""
        return int(self.segment_s * self.sample_rate) // self.hop * self.hop

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists); `from_dict` inverts it."""
        d = asdict(self)
        d["strides"] = list(self.strides)
        d["stft_sizes"] = list(self.stft_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AutoencoderConfig:
        """Rebuild a config from `to_dict` output; unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown AutoencoderConfig fields: {unknown}")
        return cls(**d)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def _stage_widths(config: AutoencoderConfig) -> list[int]:
    """Channels at each scale, full rate first: doubling per stage, capped at 8x."""
    return [config.channels * min(2**i, 8) for i in range(len(config.strides) + 1)]


class WaveAutoencoder(nn.Module):
    """Strided-conv encoder, transposed-conv decoder, mono waveform in and out.

    Encoder: ``Conv1d(1, C, input_kernel)``, then per stride ``s`` a ``Conv1d(kernel=2s,
    stride=s)``, each followed by an ELU, then a conv to `latent_dim` channels (no
    nonlinearity: the latent is unbounded). Decoder: a conv from the latent, then per stride
    (reversed) a ``ConvTranspose1d(kernel=2s, stride=s)`` + ELU, then a linear
    ``Conv1d(C, 1, output_kernel)``. The output is linear rather than tanh so that loud
    passages are not soft-clipped; the caller normalises loudness anyway.

    Parameters
    ----------
    config : AutoencoderConfig
        Shapes; kept as ``self.config``.

    Attributes
    ----------
    config : AutoencoderConfig
    history : list of float
        Training loss per step, filled by `train_autoencoder` (and restored by
        `load_autoencoder`); empty for an untrained model.
    """

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or AutoencoderConfig()
        self.history: list[float] = []
        widths = _stage_widths(cfg)
        enc: list[nn.Module] = [
            nn.Conv1d(1, widths[0], cfg.input_kernel, padding=cfg.input_kernel // 2), nn.ELU()]
        for s, c_in, c_out in zip(cfg.strides, widths[:-1], widths[1:]):
            # padding ceil(s/2) maps a length n*s to exactly n frames, for odd s too.
            enc += [nn.Conv1d(c_in, c_out, 2 * s, stride=s, padding=(s + 1) // 2), nn.ELU()]
        enc.append(nn.Conv1d(widths[-1], cfg.latent_dim, cfg.latent_kernel,
                             padding=cfg.latent_kernel // 2))
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [
            nn.Conv1d(cfg.latent_dim, widths[-1], cfg.latent_kernel,
                      padding=cfg.latent_kernel // 2), nn.ELU()]
        for s, c_in, c_out in zip(reversed(cfg.strides), widths[:0:-1], widths[-2::-1]):
            p = (s + 1) // 2
            # output_padding 2p - s (1 for odd s) maps n frames back to exactly n*s samples.
            dec += [nn.ConvTranspose1d(c_in, c_out, 2 * s, stride=s, padding=p,
                                       output_padding=2 * p - s), nn.ELU()]
        dec.append(nn.Conv1d(widths[0], 1, cfg.output_kernel, padding=cfg.output_kernel // 2))
        self.decoder = nn.Sequential(*dec)

    @property
    def receptive_field(self) -> int:
        """Input samples one output sample can depend on (an upper bound), end to end."""
        cfg = self.config
        rf, jump = cfg.input_kernel - 1, 1
        for s in cfg.strides:
            rf += (2 * s - 1) * jump
            jump *= s
        rf += 2 * (cfg.latent_kernel - 1) * jump
        for s in reversed(cfg.strides):
            rf += jump  # a transposed conv of kernel 2s mixes two neighbouring input frames
            jump //= s
        return rf + cfg.output_kernel

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 1, samples), samples a multiple of ``config.hop`` -> (batch, latent_dim,
        samples / hop)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(batch, latent_dim, frames) -> (batch, 1, frames * hop)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct a batch of waveforms.

        Parameters
        ----------
        x : torch.Tensor, shape (batch, 1, samples)
            Any length: it is zero-padded on the right to a multiple of ``config.hop`` and
            the output cropped back.

        Returns
        -------
        torch.Tensor, shape (batch, 1, samples)
        """
        if x.ndim != 3 or x.shape[1] != 1:
            raise ValueError(f"expected a (batch, 1, samples) tensor, got shape "
                             f"{tuple(x.shape)}")
        n = x.shape[-1]
        pad = -n % self.config.hop
        z = self.encode(nn.functional.pad(x, (0, pad)))  # (batch, latent_dim, frames)
        return self.decode(z)[..., :n]                   # (batch, 1, samples)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def reconstruction_loss(
    y_hat: torch.Tensor, y: torch.Tensor, config: AutoencoderConfig | None = None
) -> torch.Tensor:
    """Waveform L1 plus multi-resolution STFT log-magnitude L1, the training objective.

    Parameters
    ----------
    y_hat, y : torch.Tensor, shape (batch, 1, samples)
        Reconstruction and target.
    config : AutoencoderConfig, optional
        Supplies `stft_sizes` and `wave_weight`; default ``AutoencoderConfig()``.

    Returns
    -------
    torch.Tensor, scalar
        ``wave_weight * mean|y_hat - y|`` (scaled by ``1 / TARGET_RMS`` so both terms are of
        order one at the training level) plus the mean over FFT sizes of
        ``mean|log(|Y_hat| + eps) - log(|Y| + eps)|``.
    """
    cfg = config or AutoencoderConfig()
    loss = cfg.wave_weight * (y_hat - y).abs().mean() / TARGET_RMS
    a, b = y_hat.reshape(-1, y_hat.shape[-1]), y.reshape(-1, y.shape[-1])  # (batch, samples)
    spectral = []
    for n_fft in cfg.stft_sizes:
        window = torch.hann_window(n_fft, device=y.device)

        def logmag(w: torch.Tensor, n_fft: int = n_fft, window: torch.Tensor = window):
            spec = torch.stft(w, n_fft, hop_length=n_fft // 4, window=window,
                              return_complex=True)  # (batch, n_fft // 2 + 1, frames)
            # eps ~ -100 dB below the training level: silence does not dominate the loss.
            return torch.log(spec.abs() + 1e-5)

        spectral.append((logmag(a) - logmag(b)).abs().mean())
    if spectral:
        loss = loss + torch.stack(spectral).mean()
    return loss


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _prepare_clips(clips: Sequence[np.ndarray], seg: int) -> list[np.ndarray]:
    """Clips as float32 at `TARGET_RMS`, those of at least `seg` samples only."""
    if len(clips) == 0:
        raise ValueError("train_autoencoder needs at least one clip, got none")
    kept = []
    for i, clip in enumerate(clips):
        y = np.asarray(clip, dtype=np.float32)
        if y.ndim != 1:
            raise ValueError(f"clip {i}: expected mono audio of shape (samples,), got shape "
                             f"{y.shape}")
        if len(y) < seg:
            continue
        rms = float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))
        kept.append(y * np.float32(TARGET_RMS / rms) if rms > 1e-8 else y)
    if not kept:
        longest = max(len(np.asarray(c).reshape(-1)) for c in clips)
        raise ValueError(f"every clip is shorter than one training segment ({seg} samples); "
                         f"the longest has {longest}: pass longer clips or lower segment_s")
    if len(kept) < len(clips):
        log.info("train_autoencoder: %d of %d clips are shorter than %d samples and are not "
                 "used", len(clips) - len(kept), len(clips), seg)
    return kept


def _draw_batch(clips: list[np.ndarray], weights: np.ndarray, seg: int, batch_size: int,
                jitter_db: float, rng: np.random.Generator) -> torch.Tensor:
    """`batch_size` random segments, (batch, 1, seg) float32; long clips drawn more often."""
    idx = rng.choice(len(clips), size=batch_size, p=weights)
    gains = 10 ** (rng.uniform(-jitter_db, jitter_db, size=batch_size) / 20)
    batch = np.empty((batch_size, 1, seg), dtype=np.float32)
    for row, (i, g) in enumerate(zip(idx, gains)):
        start = int(rng.integers(len(clips[i]) - seg + 1))
        batch[row, 0] = clips[i][start : start + seg] * np.float32(g)
    return torch.from_numpy(batch)


def train_autoencoder(
    clips: Sequence[np.ndarray],
    config: AutoencoderConfig | None = None,
    progress: bool = False,
) -> WaveAutoencoder:
    """Fit a `WaveAutoencoder` to random segments of human music, on CPU.

    Each step draws ``config.batch_size`` segments of ``config.segment_s`` seconds (clips
    chosen in proportion to their length, random offsets and gains), and takes one AdamW step
    on `reconstruction_loss`. Training runs on ``min(2, available cores)`` torch threads; the
    caller's thread count and global torch RNG are restored afterwards.

    Parameters
    ----------
    clips : sequence of np.ndarray, each shape (samples,)
        Mono audio at ``config.sample_rate``, any level (each is scaled to `TARGET_RMS`).
        Clips shorter than one segment are skipped.
    config : AutoencoderConfig, optional
        Default ``AutoencoderConfig()``.
    progress : bool
        Show a tqdm bar with the running loss.

    Returns
    -------
    WaveAutoencoder
        In eval mode; ``model.history`` holds the loss of every step. Deterministic: the same
        clips, config and seed give identical weights (on the same machine and torch build).

    Raises
    ------
    ValueError
        No clips, a clip that is not 1-D, or no clip as long as one training segment.
    """
    cfg = config or AutoencoderConfig()
    seg = cfg.segment_samples
    data = _prepare_clips(clips, seg)
    lengths = np.array([len(c) - seg + 1 for c in data], dtype=np.float64)
    weights = lengths / lengths.sum()
    rng = np.random.default_rng(cfg.seed)

    threads = torch.get_num_threads()
    # fork_rng: seed the initialisation without moving the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        try:
            # Two threads: more only adds OpenMP contention on the shared CPUs this runs on,
            # and a fixed count keeps the float reductions (hence the weights) reproducible.
            torch.set_num_threads(min(2, _available_cpus()))
            torch.manual_seed(cfg.seed)
            model = WaveAutoencoder(cfg)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
            # Constant rate for the first half, then linear decay to 10%: settles the weights.
            half = cfg.steps // 2
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: 1.0 if step < half
                else 1.0 - 0.9 * (step - half) / max(1, cfg.steps - half))
            history: list[float] = []
            bar = tqdm(range(cfg.steps), desc="autoencoder", disable=not progress)
            for _ in bar:
                x = _draw_batch(data, weights, seg, cfg.batch_size, cfg.gain_jitter_db, rng)
                loss = reconstruction_loss(model(x), x, cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                # Clipping keeps an early spike (a loud transient batch) from wrecking the run.
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                history.append(loss.item())
                if progress:
                    bar.set_postfix(loss=f"{history[-1]:.3f}")
        finally:
            torch.set_num_threads(threads)
    model.history = history
    return model.eval()


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def reconstruct(
    model: WaveAutoencoder, y: np.ndarray, sr: int, chunk_s: float = 10.0
) -> np.ndarray:
    """The autoencoder's reconstruction of a clip: an "AI" clip of this family.

    The clip is scaled to `TARGET_RMS`, passed through the model in chunks of about
    `chunk_s` seconds, and scaled back. Each chunk starts on the latent frame grid and is
    run with `WaveAutoencoder.receptive_field` samples of real context either side, which is
    then dropped, so the chunks join without seams: the output equals a single pass over the
    whole clip, up to float rounding, while memory stays bounded for long files.

    Parameters
    ----------
    model : WaveAutoencoder
        A trained model (`train_autoencoder` or `load_autoencoder`).
    y : np.ndarray, shape (samples,)
        Mono audio.
    sr : int
        Its sample rate in Hz; must equal ``model.config.sample_rate`` (resample first).
    chunk_s : float
        Seconds per chunk (rounded to whole latent frames, at least one).

    Returns
    -------
    np.ndarray, shape (samples,), float32
        Same length as `y`; deterministic. A silent or empty clip comes back as is.

    Raises
    ------
    ValueError
        `sr` differs from the model's rate, or `y` is not 1-D.
    """
    cfg = model.config
    if sr != cfg.sample_rate:
        raise ValueError(f"the autoencoder was trained at {cfg.sample_rate} Hz but the audio is "
                         f"at {sr} Hz: resample it to {cfg.sample_rate} Hz first")
    x = np.asarray(y, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono audio of shape (samples,), got shape {x.shape}")
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0
    if rms < 1e-8:
        return x.copy()
    gain = TARGET_RMS / rms
    hop = cfg.hop
    chunk = max(hop, int(chunk_s * sr) // hop * hop)
    ctx = -(-model.receptive_field // hop) * hop  # context, whole frames, so grids align
    scaled = torch.from_numpy(x * np.float32(gain))
    out = np.empty(len(x), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(x), chunk):
                lo, hi = max(0, start - ctx), min(len(x), start + chunk + ctx)
                piece = model(scaled[lo:hi].reshape(1, 1, -1))[0, 0]  # (hi - lo,)
                stop = min(len(x), start + chunk)
                out[start:stop] = piece[start - lo : stop - lo].numpy()
    finally:
        model.train(was_training)
    return out / np.float32(gain)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def save_autoencoder(model: WaveAutoencoder, path: str | os.PathLike) -> Path:
    """Write the model (config, weights, training history) to one file, atomically.

    Parameters
    ----------
    model : WaveAutoencoder
    path : str or path-like
        Target file (conventionally ``.pt``); its folder is created when missing.

    Returns
    -------
    Path
    """
    payload = {
        "format": FILE_FORMAT,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "history": [float(v) for v in model.history],
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_autoencoder(path: str | os.PathLike) -> WaveAutoencoder:
    """Read a model written by `save_autoencoder` (``weights_only``: no code is unpickled).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    WaveAutoencoder
        In eval mode, on CPU.

    Raises
    ------
    FileNotFoundError
        No file at `path`.
    ValueError
        The file is damaged, or is not an autoencoder written by `save_autoencoder`; the
        message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no autoencoder file here; train one with "
                                "train_autoencoder and save_autoencoder")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a torn or foreign file: say which and what to do
        raise ValueError(f"{path}: unreadable autoencoder file ({err}); delete it and "
                         "retrain") from err
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
        raise ValueError(f"{path}: not an autoencoder file written by save_autoencoder "
                         f"(expected format {FILE_FORMAT!r})")
    try:
        model = WaveAutoencoder(AutoencoderConfig.from_dict(payload["config"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: autoencoder file does not match its config ({err}); delete "
                         "it and retrain") from err
    model.history = [float(v) for v in payload.get("history", [])]
    return model.eval()
