"""Perturbations users' files go through, and perturbed copies of a training split.

* `PERTURBATIONS`: named waveform perturbations ``f(y, sr, rng) -> y`` (codec re-encoding,
  pitch shift, time stretch, gain, noise, low-pass, trimming the intro), applied by name with
  `apply_perturbation`; `helpers.robustness.evaluate_robustness` scores a run under them;
* `perturbed_manifest`: perturbed audio copies of the training split plus a manifest to train
  on (augmentation).

Why augmentation writes audio instead of being a `TrainConfig` switch: training reads cached
mel spectrograms, and a pitch shift or an MP3 round trip acts on the waveform, so it cannot be
applied to a cached mel. Writing perturbed copies once keeps the cache, resuming and
`train` exactly as they are; each copy is a new manifest row whose ``track_id`` is derived
from its song (``<track_id>#<perturbation>``), and the validation split is fixed *before*
the copies are made, so copies of a validation song never land in training.

Codecs run at the rates real files have: MP3 and AAC at 44.1 kHz, Opus at 48 kHz (the audio
is resampled there and back), so 192 kbps MP3 is a real MPEG-1 bitrate even for 22 kHz input.
MP3 and Opus use libsndfile (through soundfile); AAC uses FFmpeg's native encoder through
PyAV, when PyAV is installed (``pip install av``); otherwise the AAC entries are left out and
`UNAVAILABLE` says why.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import soundfile as sf
from scipy.signal import butter, sosfiltfilt
from tqdm.auto import tqdm

from helpers.audio import AudioError, codec_round_trip, fit_length, read_audio, resample
from helpers.datasets import load_manifest, write_manifest
from helpers.io import atomic_path
from helpers.train import carve_val_split

try:
    import av  # optional (pip install av): FFmpeg's AAC encoder; libsndfile has none
except ImportError:
    av = None

log = logging.getLogger(__name__)

#: ``f(y, sr, rng) -> y``: mono float32 in, mono float32 out at the same rate.
Perturbation = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

# why the AAC perturbations are missing without PyAV (goes into UNAVAILABLE)
_AAC_MISSING = "PyAV not installed (pip install av); libsndfile has no AAC encoder"

_CODEC_RATE = 44_100  # the rate of nearly every MP3/AAC file users have
_OPUS_RATE = 48_000  # Opus encodes at 48 kHz (or 8/12/16/24 kHz); never at 44.1 kHz
_AAC_PRIMING = 1024  # samples of encoder delay FFmpeg's AAC encoder puts in front


# ------------------------------------------------------------------------------------------
# Perturbations
# ------------------------------------------------------------------------------------------


def mp3(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
        bitrate_kbps: int = 128) -> np.ndarray:
    """MP3 re-encoding at a constant bitrate (at 44.1 kHz); same length and rate as `y`."""
    coded = codec_round_trip(resample(y, sr, _CODEC_RATE), _CODEC_RATE, bitrate_kbps)
    return fit_length(resample(coded, _CODEC_RATE, sr), len(y))


def opus(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
         bitrate_kbps: int = 64) -> np.ndarray:
    """Ogg/Opus re-encoding at about `bitrate_kbps` (at 48 kHz); same length and rate.

    libsndfile maps its compression level linearly onto Opus bitrates from 256 kbps (level 0)
    down to 6 kbps (level 1), per channel; Opus always varies the bitrate around the target.
    """
    level = float(np.clip((256 - bitrate_kbps) / 250, 0.0, 1.0))
    buf = io.BytesIO()
    sf.write(buf, resample(y, sr, _OPUS_RATE), _OPUS_RATE, format="OGG", subtype="OPUS",
             compression_level=level)
    buf.seek(0)
    decoded, _ = sf.read(buf, dtype="float32")  # libsndfile drops Opus' pre-skip itself
    return fit_length(resample(decoded, _OPUS_RATE, sr), len(y))


def aac(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
        bitrate_kbps: int = 128) -> np.ndarray:
    """AAC-LC re-encoding (FFmpeg's native encoder via PyAV, at 44.1 kHz); same length and rate.

    Raises
    ------
    ImportError
        PyAV is not installed (``pip install av``).
    """
    if av is None:
        raise ImportError(_AAC_MISSING)
    x = resample(y, sr, _CODEC_RATE)
    buf = io.BytesIO()
    with av.open(buf, "w", format="adts") as out:
        stream = out.add_stream("aac", rate=_CODEC_RATE)
        stream.bit_rate = bitrate_kbps * 1000
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
        frame.sample_rate = _CODEC_RATE
        for packet in (*stream.encode(frame), *stream.encode(None)):
            out.mux(packet)
    buf.seek(0)
    with av.open(buf, "r", format="adts") as inp:
        # frames are planar float (fltp), shape (channels, samples); mono here
        decoded = np.concatenate([f.to_ndarray().reshape(-1, f.samples).mean(axis=0)
                                  for f in inp.decode(audio=0)]).astype(np.float32)
    decoded = decoded[_AAC_PRIMING:]
    return fit_length(resample(decoded, _CODEC_RATE, sr), len(y))


def pitch_shift(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
                semitones: float = 1.0) -> np.ndarray:
    """Pitch shift by `semitones` at constant tempo (librosa: phase vocoder + soxr resampling)."""
    return librosa.effects.pitch_shift(np.asarray(y, np.float32), sr=sr,
                                       n_steps=semitones).astype(np.float32)


def time_stretch(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
                 rate: float = 1.1) -> np.ndarray:
    """Tempo change by `rate` at constant pitch; the result has ``len(y) / rate`` samples."""
    return librosa.effects.time_stretch(np.asarray(y, np.float32), rate=rate).astype(np.float32)


def gain(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
         db: float = 6.0) -> np.ndarray:
    """Level change by `db`, clipped to [-1, 1] as a PCM file or a limiter-less export would."""
    return np.clip(np.asarray(y, np.float32) * np.float32(10 ** (db / 20)), -1.0, 1.0)


def add_noise(y: np.ndarray, sr: int, rng: np.random.Generator,
              snr_db: float = 30.0) -> np.ndarray:
    """White Gaussian noise at `snr_db` below the clip's mean power."""
    y = np.asarray(y, np.float32)
    power = float(np.mean(y.astype(np.float64) ** 2))
    noise = rng.standard_normal(len(y)) * np.sqrt(power / 10 ** (snr_db / 10))
    return (y + noise).astype(np.float32)


def lowpass(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
            cutoff_hz: float = 8_000.0, order: int = 8) -> np.ndarray:
    """Zero-phase Butterworth low-pass (a bandwidth-limited upload); no-op at or below 2x cutoff.

    Note that the default front end (16 kHz, ``fmax`` 8 kHz) never sees above 8 kHz, so for it
    this perturbation is close to a no-op by design; it matters for wider front ends.
    """
    y = np.asarray(y, np.float32)
    if cutoff_hz >= sr / 2:
        return y.copy()
    sos = butter(order, cutoff_hz, btype="low", fs=sr, output="sos")
    return sosfiltfilt(sos, y).astype(np.float32)


def trim_start(y: np.ndarray, sr: int, rng: np.random.Generator | None = None,
               seconds: float = 5.0) -> np.ndarray:
    """Drop the first `seconds` (a radio edit, a preview that starts later)."""
    return np.asarray(y, np.float32)[int(round(seconds * sr)):].copy()


def _registry() -> tuple[dict[str, Perturbation], dict[str, str]]:
    reg: dict[str, Perturbation] = {}
    for kbps in (64, 128, 192):
        reg[f"mp3_{kbps}"] = partial(mp3, bitrate_kbps=kbps)
    missing: dict[str, str] = {}
    for kbps in (64, 128):
        if av is not None:
            reg[f"aac_{kbps}"] = partial(aac, bitrate_kbps=kbps)
        else:
            missing[f"aac_{kbps}"] = _AAC_MISSING
    if "OPUS" in sf.available_subtypes("OGG"):
        reg["opus_64"] = partial(opus, bitrate_kbps=64)
    else:
        missing["opus_64"] = "this libsndfile has no Ogg/Opus support (needs libsndfile >= 1.0.29)"
    for st in (-2, -1, 1, 2):
        reg[f"pitch{st:+d}"] = partial(pitch_shift, semitones=float(st))
    for rate in (0.9, 1.1):
        reg[f"stretch{rate:.1f}"] = partial(time_stretch, rate=rate)
    for db in (-6, 6):
        reg[f"gain{db:+d}dB"] = partial(gain, db=float(db))
    for snr in (30, 20):
        reg[f"noise{snr}dB"] = partial(add_noise, snr_db=float(snr))
    reg["lowpass8k"] = partial(lowpass, cutoff_hz=8_000.0)
    reg["trim5s"] = partial(trim_start, seconds=5.0)
    return reg, missing


#: name → perturbation ``f(y, sr, rng) -> y``; ``"clean"`` (no change) is implicit in
#: `apply_perturbation` and `helpers.robustness.evaluate_robustness`.
#: mp3_64/128/192, aac_64/128 (with PyAV), opus_64, pitch-2/-1/+1/+2, stretch0.9/1.1,
#: gain-6dB/+6dB, noise30dB/20dB, lowpass8k, trim5s.
#: `stretch0.9` is slower (10 % longer), `stretch1.1` faster.
PERTURBATIONS, UNAVAILABLE = _registry()

#: Training augmentation (``helpers train --augment N``): waveform changes a detector must
#: survive, the set `benchmarks.recipe_validation` measured on four held-out composers.
TRAIN_AUGMENT = ("pitch-2", "pitch-1", "pitch+1", "pitch+2", "mp3_128", "opus_64",
                 "noise30dB", "noise20dB")
#: Extra seconds of audio a perturbation may consume beyond the front end's clip (the intro
#: trim); the faster stretch also reads 10 % more, which callers add as a factor.
EXTRA_SECONDS = 5.0


def apply_perturbation(
    name: str, y: np.ndarray, sr: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Apply the registered perturbation `name` (``"clean"`` returns `y` unchanged).

    Raises
    ------
    KeyError
        Unknown name; the message lists the registered ones and why any are unavailable.
    """
    if name == "clean":
        return np.asarray(y, np.float32)
    if name not in PERTURBATIONS:
        why = f" ({UNAVAILABLE[name]})" if name in UNAVAILABLE else ""
        raise KeyError(f"unknown perturbation {name!r}{why}; registered: {list(PERTURBATIONS)}")
    return PERTURBATIONS[name](y, sr, rng if rng is not None else np.random.default_rng(0))


def resolve_perturbations(perturbations: Sequence[str] | None) -> list[str]:
    """``["clean", *names]``: the given names (default every registered one), clean first.

    Raises
    ------
    KeyError
        An unknown name (the message of `apply_perturbation`).
    """
    names = list(PERTURBATIONS) if perturbations is None else list(perturbations)
    for n in names:
        if n != "clean" and n not in PERTURBATIONS:
            apply_perturbation(n, np.zeros(1, np.float32), 8000)  # raises the helpful KeyError
    return ["clean", *[n for n in names if n != "clean"]]


def perturbation_rng(seed: int, item: int, name: str) -> np.random.Generator:
    """The random stream of one (file, perturbation) pair under root `seed`.

    One stream per pair, so results depend neither on the order files are processed in nor on
    which subset of perturbations is run.
    """
    return np.random.default_rng([seed, item, sum(ord(c) * 31**i for i, c in enumerate(name))])


def _short_hash(text: str) -> str:
    # Stable across processes (unlike hash()), so reruns find the copies already written.
    return hashlib.sha1(text.encode()).hexdigest()[:8]


# ------------------------------------------------------------------------------------------
# Augmentation: perturbed copies of the training split
# ------------------------------------------------------------------------------------------


#: Bytes per second of a 16-bit mono copy at the highest rate the copies keep (48 kHz): the
#: disk check's upper bound.
_BYTES_PER_SECOND = 2 * 48_000


def _check_disk(out: Path, n_files: int, seconds: float) -> None:
    """Refuse before writing when `n_files` copies of `seconds` cannot fit under `out`."""
    need = n_files * seconds * _BYTES_PER_SECOND
    probe = out
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise OSError(f"{out}: {n_files} augmented copies need up to {need / 1e9:.1f} GB, "
                      f"{free / 1e9:.1f} GB free there; free space, train with fewer copies "
                      "(--augment 0 turns augmentation off), or put the run on another disk")


def perturbed_manifest(
    manifest: str | os.PathLike | pd.DataFrame,
    out_dir: str | os.PathLike,
    perturbations: Sequence[str] | None = None,
    copies: int = 2,
    seed: int = 0,
    val_fraction: float = 0.15,
    progress: bool = True,
    max_seconds: float | None = None,
) -> Path:
    """Write perturbed audio copies of the training split and a manifest to train on.

    Every ``train`` row gets `copies` perturbed WAV copies (16-bit PCM at the file's rate, so
    the copies differ from their source only by the perturbation, never by container), each
    with a perturbation drawn without replacement from `perturbations`. Validation and test
    rows are kept as they are: model selection and calibration stay on unperturbed audio.
    When the manifest has no ``val`` rows, the validation split is carved first (by track, as
    `helpers.train.carve_val_split` does at training time), so copies of a validation song
    never reach training.

    Parameters
    ----------
    manifest : str, path-like or DataFrame
    out_dir : str or path-like
        Receives ``audio/<perturbation>/<name>.wav`` and ``manifest.csv``. Copies already
        there are reused (the run is resumable).
    perturbations : sequence of str, optional
        Names from `PERTURBATIONS`; default all of them.
    copies : int
        Perturbed copies per training clip.
    seed : int
    val_fraction : float
        Used only when the validation split must be carved; pass the `TrainConfig`'s value.
    progress : bool
    max_seconds : float, optional
        Copy only the first `max_seconds` of each file (training reads only the front end's
        clip from the start; pass its duration plus what a perturbation may consume, see
        `EXTRA_SECONDS`). Then the disk the copies need is checked first. ``None``: whole
        files.

    Returns
    -------
    Path
        ``out_dir/manifest.csv``: the original rows (paths absolute) plus the copies, with
        extra columns ``perturbation`` (``""`` for originals) and ``parent_track_id``.
        Train on it with `helpers.train.train` as on any manifest.
    """
    names = [n for n in resolve_perturbations(perturbations) if n != "clean"]
    if not 1 <= copies <= len(names):
        raise ValueError(f"copies must be in [1, {len(names)}], got {copies}")
    out = Path(out_dir)
    frame = carve_val_split(load_manifest(manifest), val_fraction, seed)
    frame["perturbation"] = ""
    frame["parent_track_id"] = frame["track_id"]
    train_rows = frame[frame["split"] == "train"]
    if max_seconds is not None:
        _check_disk(out, len(train_rows) * copies, max_seconds)
    rng = np.random.default_rng(seed)
    added = []
    for idx, row in tqdm(train_rows.iterrows(), total=len(train_rows), desc="perturb",
                         unit="file", disable=not progress):
        chosen = rng.choice(len(names), size=copies, replace=False)
        todo = []
        for c in chosen:
            name = names[c]
            stem = Path(row["path"]).stem
            target = out / "audio" / name / f"{stem}-{_short_hash(row['path'])}.wav"
            todo.append((name, target))
        y = sr = None
        for name, target in todo:
            if not target.exists():
                if y is None:
                    try:
                        y, sr = read_audio(row["path"], max_seconds=max_seconds)
                    except AudioError as err:
                        log.warning("skipped: %s", err)
                        break
                z = apply_perturbation(name, y, sr, perturbation_rng(seed, int(idx), name))
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(target, suffix=".wav") as tmp:
                    sf.write(tmp, np.clip(z, -1.0, 1.0), sr, subtype="PCM_16")
            added.append({**row.to_dict(), "path": str(target.resolve()),
                          "track_id": f"{row['track_id']}#{name}", "perturbation": name})
    result = pd.concat([frame, pd.DataFrame(added)], ignore_index=True)
    return write_manifest(result, out / "manifest.csv")
