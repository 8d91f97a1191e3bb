"""The built-in demo corpus: synthetic "human" and "AI" music, written offline from a seed.

The corpus stands in for SONICS (Rahman et al. 2024, "SONICS: Synthetic Or Not - Identifying
Counterfeit Songs") so that the whole pipeline, the AI-vs-human classifier on mel spectrograms
and the style-similarity recommender, runs end to end without a download. It is laid out exactly
like a real corpus::

    out_dir/
        corpus.json                      # the SynthConfig that made it (checked on re-runs)
        manifest.csv                     # path,label,split,track_id,title,artist,genre,source
        audio/<label>/<style>/<track_id>.wav

How a clip is made
------------------
1. **Music** (`render_clip`): a style (tempo range, modes, chord progressions, instruments,
   drum patterns), a random key and tempo, a two-bar melody motif repeated with variations,
   bass and chords following the progression, and an "artist" whose timbre tweaks (brightness,
   detune, vibrato, room size, preferred tempo, register) are the same on every clip of that
   artist. Performance is humanised (timing jitter, velocity), a small room is added
   (convolution with exponentially decaying noise) and a little noise floor.
2. **Label**: an "AI" clip is the same kind of music, drawn from the same generator with the
   same style distribution and equal counts per style and label, passed through
   `helpers.artifacts.apply_artifacts` (``SynthConfig.artifacts`` picks its families). That
   chain is the *only* systematic difference between the labels, so a detector has to learn
   generation artifacts, not style, reverb or loudness; `helpers.artifacts` says what each
   family imitates.
3. **Loudness**: every clip, either label, is normalised to the same RMS (with a peak guard
   and a small level spread drawn identically for both labels, see
   `SynthConfig.level_jitter_db`) and written at the same rate, format and bit depth, so
   loudness and container do not leak the label.

Everything is derived from ``(config.seed, clip index)``, so a clip is bit-identical whatever
the order, the number of worker processes or whether the build was interrupted and resumed.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import zlib
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
from scipy import signal
from tqdm import tqdm

from helpers import jit
from helpers.artifacts import ArtifactConfig, apply_artifacts, normalize_loudness
from helpers.datasets import MANIFEST_COLUMNS
from helpers.io import atomic_path, read_json, write_csv, write_json

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # scikit-learn brings threadpoolctl; without it, BLAS runs as it is
    threadpool_limits = None

# Bump when a code change alters the audio for an unchanged config, so an old corpus folder is
# not silently mixed with clips from the new generator.
GENERATOR_VERSION = 1

LABELS = ("human", "ai")
_FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", None)}
_NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

# Semitone offsets of the seven-note modes the styles draw from.
_MODES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
}


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """What corpus `make_corpus` builds.

    Parameters
    ----------
    n_per_style_per_label : int
        Clips per (style, label) pair; the default 12 gives 6 x 2 x 12 = 144 clips.
    duration : float
        Seconds per clip. Short, so the demo runs on two CPU cores; the front end pads or crops
        to its own duration anyway.
    sample_rate : int
        Rate of every written file, in Hz.
    seed : int
        Root of every random draw; two corpora with the same config are bit-identical.
    format : str
        ``"wav"`` or ``"flac"`` (16-bit PCM) or ``"mp3"``; the same for both labels.
    artifacts : ArtifactConfig
        The chain applied to the "ai" clips (`helpers.artifacts`).
    splits : tuple of float
        Train / val / test fractions, assigned within every (style, label) group.
    styles : tuple of str
        Which of `STYLES` to generate.
    n_artists : int
        Artists per style and label; each has consistent timbre tweaks.
    target_rms_dbfs : float
        RMS every clip is normalised to (a peak guard at -0.5 dBFS applies on top, which only
        bites for clips with a crest factor above ``-0.5 - target_rms_dbfs`` dB).
    level_jitter_db : float
        Each clip's level is then offset by a uniform draw in +-this many dB, from the same
        distribution for both labels (a mastering spread). Why: with exactly equal full-band
        RMS, the small share of energy the artifacts move above 8 kHz lowers the RMS a 16 kHz
        front end sees by ~0.05 dB on every "ai" clip, and that alone separated the labels
        perfectly (ROC-AUC 1.0). ``0`` gives exactly equal RMS.
    """

    n_per_style_per_label: int = 12
    duration: float = 10.0
    sample_rate: int = 22_050
    seed: int = 0
    format: str = "wav"
    artifacts: ArtifactConfig = field(default_factory=ArtifactConfig)
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2)
    styles: tuple[str, ...] = ()
    n_artists: int = 3
    target_rms_dbfs: float = -20.0
    level_jitter_db: float = 1.0

    def __post_init__(self) -> None:
        # JSON turns tuples into lists and nested dataclasses into dicts; accept both.
        if isinstance(self.artifacts, dict):
            object.__setattr__(self, "artifacts", ArtifactConfig(**self.artifacts))
        object.__setattr__(self, "splits", tuple(float(s) for s in self.splits))
        object.__setattr__(self, "styles", tuple(self.styles) or STYLES)
        unknown = sorted(set(self.styles) - set(STYLES))
        if unknown:
            raise ValueError(f"unknown styles {unknown}; choose from {list(STYLES)}")
        if self.format not in _FORMATS:
            raise ValueError(f"format must be one of {sorted(_FORMATS)}, got {self.format!r}")
        if len(self.splits) != 3 or min(self.splits) < 0 or not math.isclose(sum(self.splits), 1):
            raise ValueError(
                f"splits must be 3 non-negative fractions summing to 1, got {self.splits}"
            )
        if self.n_per_style_per_label < 1 or self.n_artists < 1:
            raise ValueError("n_per_style_per_label and n_artists must be >= 1")
        if self.duration <= 0:
            raise ValueError(f"duration must be positive, got {self.duration}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["splits"] = list(self.splits)
        d["styles"] = list(self.styles)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown synth settings {sorted(unknown)}")
        return cls(**data)


# --------------------------------------------------------------------------------------------
# Styles
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Style:
    """One musical style: what a listener (and an embedder) should recognise."""

    tempo: tuple[float, float]  # bpm range
    modes: tuple[str, ...]
    progressions: tuple[tuple[int, ...], ...]  # scale degrees, 0-based, one chord per slot
    chords_per_bar: int
    beats_per_bar: int
    lead: str  # instrument names, see _render_note
    chords: str
    bass: str
    chord_rhythm: str  # "pad", "stabs", "strum" or "arp"
    lead_step: int  # melody grid in 16th notes
    lead_density: float  # probability of a new note on each grid point
    lead_octave: int  # MIDI octave of the melody's tonic
    bass_steps: tuple[int, ...]  # 16th-note positions of bass notes within a bar
    brightness: float  # 0 dark .. 1 bright: harmonic roll-off of the tonal instruments
    drums: dict[str, tuple[int, ...]] | None  # voice -> 16th-note steps within a bar
    swing: float  # delay of off-beat 16ths, as a fraction of a 16th
    reverb: float  # wet level of the room
    gains: tuple[float, float, float, float]  # lead, chords, bass, drums


_STYLE_TABLE: dict[str, _Style] = {
    # Slow, drumless, sustained pads in bright modes; long room.
    "ambient": _Style(
        tempo=(60, 76),
        modes=("lydian", "major"),
        progressions=((0, 4, 5, 3), (0, 3, 0, 4)),
        chords_per_bar=1,
        beats_per_bar=4,
        lead="bell",
        chords="pad",
        bass="sine",
        chord_rhythm="pad",
        lead_step=4,
        lead_density=0.45,
        lead_octave=6,
        bass_steps=(0,),
        brightness=0.3,
        drums=None,
        swing=0.0,
        reverb=0.35,
        gains=(0.35, 0.5, 0.4, 0.0),
    ),
    # Swung, dark electric piano over ii-V-I 7th chords with a lazy beat.
    "lofi": _Style(
        tempo=(70, 90),
        modes=("dorian", "minor"),
        progressions=((1, 4, 0, 0), (0, 5, 3, 4)),
        chords_per_bar=1,
        beats_per_bar=4,
        lead="epiano",
        chords="epiano",
        bass="sine",
        chord_rhythm="stabs",
        lead_step=2,
        lead_density=0.5,
        lead_octave=5,
        bass_steps=(0, 7, 10),
        brightness=0.2,
        drums={"kick": (0, 7, 10), "snare": (4, 12), "hat": (0, 2, 4, 6, 8, 10, 12, 14)},
        swing=0.35,
        reverb=0.15,
        gains=(0.4, 0.35, 0.5, 0.5),
    ),
    # Four-on-the-floor, off-beat open hats, FM bass, bright saw stabs.
    "house": _Style(
        tempo=(118, 128),
        modes=("minor", "dorian"),
        progressions=((0, 5, 2, 6), (0, 3, 5, 4)),
        chords_per_bar=1,
        beats_per_bar=4,
        lead="saw",
        chords="saw",
        bass="fmbass",
        chord_rhythm="stabs",
        lead_step=2,
        lead_density=0.35,
        lead_octave=5,
        bass_steps=(2, 6, 10, 14),
        brightness=0.7,
        drums={"kick": (0, 4, 8, 12), "clap": (4, 12), "openhat": (2, 6, 10, 14)},
        swing=0.0,
        reverb=0.1,
        gains=(0.3, 0.3, 0.5, 0.6),
    ),
    # Plucked, lightly distorted guitars on power chords and a backbeat.
    "rock": _Style(
        tempo=(100, 140),
        modes=("mixolydian", "major"),
        progressions=((0, 6, 3, 0), (0, 3, 4, 3)),
        chords_per_bar=2,
        beats_per_bar=4,
        lead="guitar",
        chords="guitar",
        bass="pluck",
        chord_rhythm="strum",
        lead_step=2,
        lead_density=0.7,
        lead_octave=5,
        bass_steps=(0, 2, 4, 6, 8, 10, 12, 14),
        brightness=0.6,
        drums={"kick": (0, 8, 10), "snare": (4, 12), "hat": (0, 2, 4, 6, 8, 10, 12, 14)},
        swing=0.0,
        reverb=0.12,
        gains=(0.4, 0.4, 0.45, 0.6),
    ),
    # Fast square-wave arpeggios, triangle bass, 16th hats.
    "chiptune": _Style(
        tempo=(140, 170),
        modes=("major", "minor"),
        progressions=((0, 5, 3, 4), (0, 4, 5, 3)),
        chords_per_bar=1,
        beats_per_bar=4,
        lead="square",
        chords="square",
        bass="triangle",
        chord_rhythm="arp",
        lead_step=1,
        lead_density=0.8,
        lead_octave=5,
        bass_steps=(0, 4, 8, 12),
        brightness=0.9,
        drums={"kick": (0, 8), "snare": (4, 12), "hat": tuple(range(16))},
        swing=0.0,
        reverb=0.03,
        gains=(0.3, 0.2, 0.45, 0.4),
    ),
    # Waltz time, strummed acoustic guitar, a breathy flute, no drums.
    "folk": _Style(
        tempo=(84, 112),
        modes=("major", "mixolydian"),
        progressions=((0, 3, 0, 4), (0, 4, 5, 3)),
        chords_per_bar=1,
        beats_per_bar=3,
        lead="flute",
        chords="guitar",
        bass="pluck",
        chord_rhythm="strum",
        lead_step=2,
        lead_density=0.6,
        lead_octave=5,
        bass_steps=(0, 8),
        brightness=0.45,
        drums=None,
        swing=0.0,
        reverb=0.2,
        gains=(0.4, 0.5, 0.4, 0.0),
    ),
}

#: The style names, i.e. the values of the manifest's ``genre`` column.
STYLES: tuple[str, ...] = tuple(_STYLE_TABLE)


@dataclass(frozen=True)
class _Artist:
    """Per-artist tweaks, identical on every clip of that artist."""

    brightness: float  # added to the style's brightness
    detune_cents: float
    vibrato: float  # depth in semitones
    tempo_pos: float  # preferred position within the style's tempo range, 0..1
    octave: int  # shift of the melody
    room: float  # reverb wet multiplier
    tone_hz: float  # corner of the master low-pass


def _artist(name: str, seed: int) -> _Artist:
    # crc32, not hash(): Python's string hash changes between processes.
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return _Artist(
        brightness=float(rng.uniform(-0.15, 0.15)),
        detune_cents=float(rng.uniform(0.0, 12.0)),
        vibrato=float(rng.uniform(0.0, 0.25)),
        tempo_pos=float(rng.uniform(0.1, 0.9)),
        octave=int(rng.choice([-1, 0, 0, 1])),
        room=float(rng.uniform(0.6, 1.5)),
        tone_hz=float(rng.uniform(4_500.0, 10_000.0)),
    )


# --------------------------------------------------------------------------------------------
# Instruments: each renders one note as a float64 array
# --------------------------------------------------------------------------------------------


def _midi_hz(m: float) -> float:
    return 440.0 * 2.0 ** ((m - 69.0) / 12.0)


def _envelope(
    n: int, sr: int, attack: float, decay: float, sustain: float, release: float
) -> np.ndarray:
    """ADSR over `n` samples; the release starts `release` s before the end."""
    t = np.arange(n) / sr
    a = np.clip(t / max(attack, 1e-4), 0.0, 1.0)
    d = sustain + (1.0 - sustain) * np.exp(-np.maximum(t - attack, 0.0) / max(decay, 1e-4))
    r = np.clip((n / sr - t) / max(release, 1e-4), 0.0, 1.0)
    return a * d * r


@lru_cache(maxsize=512)
def _wavetable(k_max: int, rolloff: float, odd_only: bool, alt: bool) -> np.ndarray:
    """One cycle of harmonics 1..k_max at amplitude k**-rolloff (cached: notes share tables)."""
    k = np.arange(1, k_max + 1, 2 if odd_only else 1, dtype=np.float64)
    amps = k**-rolloff
    if alt:  # triangle-like: alternate the signs of the odd harmonics
        amps = amps * np.where((k // 2) % 2 == 0, 1.0, -1.0)
    phase = np.arange(2048) / 2048
    table = (amps[:, None] * np.sin(2 * np.pi * k[:, None] * phase)).sum(axis=0)
    table.flags.writeable = False  # shared between calls
    return table


def _osc(
    table: np.ndarray, freq: float, n: int, sr: int, vibrato: float = 0.0, phase0: float = 0.0
) -> np.ndarray:
    # A wavetable read costs one pass however many harmonics the table holds, which is what
    # keeps rendering a 10 s clip well under a second.
    t = np.arange(n) / sr
    f = freq * 2.0 ** (vibrato * np.sin(2 * np.pi * 5.0 * t) / 12.0) if vibrato else freq
    phase = (phase0 + np.cumsum(np.broadcast_to(f, (n,))) / sr) % 1.0
    return table[(phase * len(table)).astype(np.int64)]


def _additive(
    freq: float,
    n: int,
    sr: int,
    rolloff: float,
    odd_only: bool = False,
    alt: bool = False,
    vibrato: float = 0.0,
    phase0: float = 0.0,
) -> np.ndarray:
    """Band-limited additive tone: harmonic k at amplitude k**-rolloff, none above Nyquist."""
    k_max = max(1, min(40, int(0.45 * sr / freq)))
    table = _wavetable(k_max, round(float(rolloff), 6), odd_only, alt)
    return _osc(table, freq, n, sr, vibrato, phase0)


def _karplus_strong(
    freq: float, n: int, sr: int, brightness: float, rng: np.random.Generator, decay: float = 0.996
) -> np.ndarray:
    """Plucked string: a noise burst circulating in a delay line with a two-tap average.

    The loop is ``y[i] = x[i] + g/2 (y[i-N] + y[i-N-1])`` (Karplus and Strong 1983); the
    averaging adds half a sample of delay, hence ``N = round(sr / f - 0.5)``.
    """
    period = max(2, int(round(sr / freq - 0.5)))
    burst = rng.uniform(-1.0, 1.0, period)
    # A darker pluck starts from low-passed noise (a softer plectrum).
    alpha = 0.2 + 0.75 * float(np.clip(brightness, 0.0, 1.0))
    burst = signal.lfilter([alpha], [1.0, alpha - 1.0], burst)
    x = np.zeros(n)
    x[: min(n, period)] = burst[:n]
    if period < 128:
        # Short loops: a sparse IIR filter costs n * period, cheap here, and runs in C.
        a = np.zeros(period + 2)
        a[0] = 1.0
        a[period] = a[period + 1] = -decay / 2.0
        return signal.lfilter([1.0], a, x)
    # Long loops: z holds period + 1 samples of silent history, then y (z[period + 1 + i] is
    # y[i]). A period-long block depends only on earlier blocks, so the recursion runs one
    # block at a time in numpy, n / period steps instead of n.
    z = np.zeros(period + 1 + n)
    for s in range(0, n, period):
        e = min(s + period, n)
        z[period + 1 + s : period + 1 + e] = x[s:e] + 0.5 * decay * (z[1 + s : 1 + e] + z[s:e])
    return z[period + 1 :]


def _render_note(
    inst: str,
    freq: float,
    dur: float,
    sr: int,
    bright: float,
    art: _Artist,
    rng: np.random.Generator,
) -> np.ndarray:
    """One note of instrument `inst`, including its release tail."""
    bright = float(np.clip(bright, 0.0, 1.0))
    rolloff = 2.6 - 1.8 * bright  # bright -> slow harmonic roll-off
    if inst == "pad":
        n = int((dur + 0.8) * sr)
        # Three detuned voices give the slow beating of an analogue pad.
        y = (
            sum(
                _additive(
                    freq * 2 ** (c * art.detune_cents / 1200),
                    n,
                    sr,
                    rolloff + 0.4,
                    phase0=rng.uniform(),
                )
                for c in (-1.0, 0.0, 1.0)
            )
            / 3.0
        )
        return y * _envelope(n, sr, 0.5, 1.0, 0.8, 0.8)
    if inst == "saw":
        n = int((dur + 0.15) * sr)
        y = 0.5 * (
            _additive(freq, n, sr, 1.0 + (1 - bright))
            + _additive(freq * 2 ** (art.detune_cents / 1200), n, sr, 1.0 + (1 - bright))
        )
        return y * _envelope(n, sr, 0.005, 0.15, 0.5, 0.1)
    if inst in ("square", "triangle"):
        n = int((dur + 0.03) * sr)
        y = _additive(
            freq, n, sr, 1.0 if inst == "square" else 2.0, odd_only=True, alt=inst == "triangle"
        )
        return y * _envelope(n, sr, 0.002, 0.1, 0.7, 0.02)
    if inst == "sine":
        n = int((dur + 0.1) * sr)
        return _additive(freq, n, sr, 4.0) * _envelope(n, sr, 0.01, 0.3, 0.8, 0.08)
    if inst == "flute":
        n = int((dur + 0.12) * sr)
        y = _additive(freq, n, sr, 3.0 - bright, vibrato=art.vibrato + 0.1)
        breath = signal.lfilter([0.05], [1.0, -0.9], rng.standard_normal(n)) * 0.3
        return (y + breath) * _envelope(n, sr, 0.06, 0.3, 0.85, 0.1)
    if inst in ("bell", "epiano", "fmbass"):
        # Two-operator FM (Chowning 1973): the modulation index decays with the note, so the
        # attack is bright and the tail pure, like a struck tine or bell.
        ratio, index, tail = {
            "bell": (3.5, 3.0, 1.8),
            "epiano": (1.0, 2.0, 0.8),
            "fmbass": (1.0, 2.5, 0.25),
        }[inst]
        n = int((dur + tail) * sr)
        t = np.arange(n) / sr
        idx = index * (0.4 + bright) * np.exp(-t / (0.15 + 0.2 * bright))
        y = np.sin(2 * np.pi * freq * t + idx * np.sin(2 * np.pi * freq * ratio * t))
        return y * _envelope(n, sr, 0.003, tail * 0.6, 0.0 if inst == "bell" else 0.3, 0.05)
    if inst in ("pluck", "guitar"):
        n = int((dur + 0.4) * sr)
        y = _karplus_strong(freq, n, sr, bright, rng)
        if inst == "guitar":  # a touch of overdrive
            y = np.tanh(2.5 * y) / np.tanh(2.5)
        return y * _envelope(n, sr, 0.001, 10.0, 1.0, 0.05)
    raise ValueError(f"unknown instrument {inst!r}")


def _drum_kit(sr: int, rng: np.random.Generator, bright: float) -> dict[str, np.ndarray]:
    """One-shot drum samples for a clip (each clip's kit differs a little, like a real kit)."""

    def t(sec: float) -> np.ndarray:
        return np.arange(int(sec * sr)) / sr

    tk = t(0.35)
    f0, f1 = rng.uniform(110, 170), rng.uniform(40, 55)
    sweep = f1 + (f0 - f1) * np.exp(-tk / 0.04)
    kick = np.sin(2 * np.pi * np.cumsum(sweep) / sr) * np.exp(-tk / rng.uniform(0.12, 0.2))
    ts = t(0.25)
    noise = rng.standard_normal(len(ts))
    sos = signal.butter(2, [900, min(7000, 0.45 * sr)], btype="band", fs=sr, output="sos")
    snare = 0.7 * signal.sosfilt(sos, noise) * np.exp(-ts / 0.07) + 0.4 * np.sin(
        2 * np.pi * rng.uniform(170, 220) * ts
    ) * np.exp(-ts / 0.05)
    hp = signal.butter(4, min(5000 + 3000 * bright, 0.45 * sr), btype="high", fs=sr, output="sos")
    th = t(0.3)
    hiss = signal.sosfilt(hp, rng.standard_normal(len(th)))
    # A clap is a few quick noise bursts, as from several hands slightly out of step.
    tc = t(0.2)
    bursts = sum(np.exp(-np.maximum(tc - d, 0) / 0.008) * (tc >= d) for d in (0, 0.01, 0.022))
    clap = signal.sosfilt(sos, rng.standard_normal(len(tc))) * (bursts + np.exp(-tc / 0.06))
    return {
        "kick": kick,
        "snare": snare,
        "hat": 0.5 * hiss * np.exp(-th / 0.03),
        "openhat": 0.4 * hiss * np.exp(-th / 0.12),
        "clap": 0.6 * clap,
    }


# --------------------------------------------------------------------------------------------
# Composition and rendering
# --------------------------------------------------------------------------------------------


def _chord(degree: int, mode: tuple[int, ...], sevenths: bool) -> list[int]:
    """Semitones above the tonic of the triad (or 7th chord) stacked in thirds on `degree`."""
    steps = (0, 2, 4, 6) if sevenths else (0, 2, 4)
    return [mode[(degree + s) % 7] + 12 * ((degree + s) // 7) for s in steps]


def _place(buf: np.ndarray, note: np.ndarray, start: int, gain: float) -> None:
    if start >= len(buf):
        return
    start = max(start, 0)
    end = min(len(buf), start + len(note))
    buf[start:end] += gain * note[: end - start]


@dataclass(frozen=True)
class _Piece:
    """What is composed before the first note is played: key, tempo grid and harmony."""

    style: str
    st: _Style
    art: _Artist
    sr: int
    tonic: int  # pitch class of the key, 0 = C
    mode: tuple[int, ...]
    bright: float  # the style's brightness plus the artist's
    sixteenth: float  # seconds per 16th note
    steps_per_bar: int  # 16ths per bar
    n_bars: int
    slot_steps: int  # 16ths per chord
    chords: list[list[int]]  # one chord per slot, semitones above the tonic
    n_out: int  # samples in the clip
    n_buf: int  # samples rendered, with room for release tails past the end


def _compose(style: str, config: SynthConfig, art: _Artist, rng: np.random.Generator) -> _Piece:
    """Draw the key, mode, tempo (near the artist's preferred part of the range), progression."""
    st = _STYLE_TABLE[style]
    sr = config.sample_rate
    tonic = int(rng.integers(12))
    mode = _MODES[st.modes[int(rng.integers(len(st.modes)))]]
    lo, hi = st.tempo
    tempo = float(np.clip(lo + (hi - lo) * (art.tempo_pos + rng.normal(0, 0.15)), lo, hi))
    prog = st.progressions[int(rng.integers(len(st.progressions)))]
    sixteenth = 60.0 / tempo / 4.0
    steps_per_bar = 4 * st.beats_per_bar
    n_bars = int(math.ceil(config.duration / (steps_per_bar * sixteenth))) + 1
    slots = n_bars * st.chords_per_bar
    n_out = int(round(config.duration * sr))
    return _Piece(
        style=style,
        st=st,
        art=art,
        sr=sr,
        tonic=tonic,
        mode=mode,
        bright=st.brightness + art.brightness,
        sixteenth=sixteenth,
        steps_per_bar=steps_per_bar,
        n_bars=n_bars,
        slot_steps=steps_per_bar // st.chords_per_bar,
        chords=[_chord(prog[i % len(prog)], mode, sevenths=style == "lofi") for i in range(slots)],
        n_out=n_out,
        n_buf=n_out + 2 * sr,
    )


class _Player:
    """Plays notes of a piece with human timing and dynamics.

    Every part draws from the clip's single random stream, in a fixed order, so the clip is
    reproducible from its seed; the parts must therefore be played in the same order.
    """

    def __init__(self, piece: _Piece, rng: np.random.Generator) -> None:
        self.piece = piece
        self.rng = rng

    def onset(self, step: int, jitter: float = 0.012) -> int:
        """Sample index of a 16th-note step, swung and humanised."""
        # Swing delays the off-beat 8th by `swing` 16ths and odd 16ths by half that.
        late = 1.0 if step % 4 == 2 else 0.5 if step % 2 else 0.0
        sec = (step + self.piece.st.swing * late) * self.piece.sixteenth
        return int(round((sec + self.rng.normal(0.0, jitter)) * self.piece.sr))

    def velocity(self) -> float:
        return float(np.exp(self.rng.normal(0.0, 0.12)))

    def note(self, inst: str, midi: float, dur: float, bright: float) -> np.ndarray:
        """One note of `inst` at MIDI pitch `midi`, `dur` seconds long (plus its tail)."""
        p = self.piece
        return _render_note(inst, _midi_hz(midi), dur, p.sr, bright, p.art, self.rng)


def _chord_hits(
    p: _Piece, s0: int, chord: list[int], rng: np.random.Generator
) -> list[tuple[int, float, list[int]]]:
    """(step, length in 16ths, notes) of each hit of the chord slot starting at step `s0`."""
    rhythm, n = p.st.chord_rhythm, p.slot_steps
    if rhythm == "pad":
        return [(s0, n, chord)]
    if rhythm == "stabs":
        pos = sorted(rng.choice(np.arange(1, n, 2), size=max(2, n // 5), replace=False))
        return [(s0 + int(q), 1.5, chord) for q in pos]
    if rhythm == "strum":
        return [(s0 + b, 4 if p.style == "folk" else 2, chord) for b in range(0, n, 4)]
    order = chord + chord[-2:0:-1]  # arpeggio: one chord tone per 16th, up and down
    return [(s0 + k, 1, [order[k % len(order)]]) for k in range(n)]


def _play_chords(p: _Piece, player: _Player, buf: np.ndarray) -> None:
    chord_base = 12 * 4 + p.tonic  # around middle C
    for i, ch in enumerate(p.chords):
        for step, length, notes in _chord_hits(p, i * p.slot_steps, ch, player.rng):
            v = player.velocity()
            for j, semis in enumerate(notes):
                # Strums roll across the strings; other hits land together (then humanised).
                strum = j * 0.012 if p.st.chord_rhythm == "strum" else 0.0
                note = player.note(p.st.chords, chord_base + semis, length * p.sixteenth, p.bright)
                _place(buf, note, player.onset(step) + int(strum * p.sr), v / len(notes))


def _play_bass(p: _Piece, player: _Player, buf: np.ndarray) -> None:
    """Chord roots, sometimes the fifth, two octaves down."""
    steps = p.st.bass_steps
    for bar in range(p.n_bars):
        for k, q in enumerate(steps):
            step = bar * p.steps_per_bar + q
            ch = p.chords[step // p.slot_steps]
            semis = ch[0] + (7 if player.rng.random() < 0.2 else 0)
            nxt = steps[k + 1] if k + 1 < len(steps) else p.steps_per_bar
            dur = 0.9 * (nxt - q) * p.sixteenth
            note = player.note(p.st.bass, 12 * 2 + p.tonic + semis, dur, p.bright * 0.6)
            _place(buf, note, player.onset(step), player.velocity())


def _motif(p: _Piece, rng: np.random.Generator) -> list[tuple[int, int]]:
    """A two-bar melody as (16th step, scale degree) pairs: a walk over the scale."""
    motif = []
    degree = int(rng.choice([0, 2, 4]))
    for step in range(0, 2 * p.steps_per_bar, p.st.lead_step):
        if rng.random() < p.st.lead_density or step == 0:
            degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3]), -3, 9))
            motif.append((step, degree))
    return motif


def _play_melody(p: _Piece, player: _Player, buf: np.ndarray) -> None:
    """The motif, repeated with mutations, strong beats snapped to chord tones."""
    rng, span = player.rng, 2 * p.steps_per_bar
    motif = _motif(p, rng)
    lead_base = int(np.clip(12 * (p.st.lead_octave + p.art.octave) + p.tonic, 48, 84))
    for rep in range(int(math.ceil(p.n_bars / 2))):
        for k, (step, deg) in enumerate(motif):
            abs_step = rep * span + step
            if rep and rng.random() < 0.3:  # vary the repeat
                deg = int(np.clip(deg + rng.choice([-1, 1, 2]), -3, 9))
            slot = abs_step // p.slot_steps
            if slot >= len(p.chords):
                break
            if abs_step % 4 == 0:  # snap strong beats to the nearest chord tone
                tones = [(c % 12) for c in p.chords[slot]]
                while p.mode[deg % 7] not in tones:
                    deg += 1
            nxt = motif[k + 1][0] if k + 1 < len(motif) else span
            semis = p.mode[deg % 7] + 12 * (deg // 7)
            dur = 0.9 * (nxt - step) * p.sixteenth
            note = player.note(p.st.lead, lead_base + semis, dur, p.bright)
            _place(buf, note, player.onset(abs_step), player.velocity())


def _play_drums(p: _Piece, player: _Player, buf: np.ndarray) -> None:
    kit = _drum_kit(p.sr, player.rng, p.bright)
    for bar in range(p.n_bars):
        for voice, steps in p.st.drums.items():
            for q in steps:
                if voice.endswith("hat") and player.rng.random() < 0.1:
                    continue  # a drummer skips the odd hat
                start = player.onset(bar * p.steps_per_bar + q, 0.006)
                _place(buf, kit[voice], start, player.velocity() * (0.7 if q % 4 else 1.0))


def _mix(p: _Piece, stems: dict[str, np.ndarray]) -> np.ndarray:
    """Sum the stems at the style's gains (each stem at unit RMS first), then the artist's tone."""
    mix = sum(
        g * stems[k] / (np.sqrt(np.mean(stems[k] ** 2)) + 1e-9) * 0.1
        for g, k in zip(p.st.gains, ("lead", "chords", "bass", "drums"))
        if g > 0
    )
    # The artist's tone: a gentle master low-pass.
    sos = signal.butter(1, min(p.art.tone_hz, 0.45 * p.sr), fs=p.sr, output="sos")
    return signal.sosfilt(sos, mix)


def _record(p: _Piece, mix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Play the mix in a small room, crop to the clip, add a noise floor and short fades."""
    sr = p.sr
    # Room: convolution with exponentially decaying noise (RT60 from style and artist).
    rt60 = 0.3 + 1.5 * p.st.reverb * p.art.room
    t_ir = np.arange(int(rt60 * sr)) / sr
    ir = rng.standard_normal(len(t_ir)) * np.exp(-6.9 * t_ir / rt60)
    ir = signal.sosfilt(signal.butter(1, 6000, fs=sr, output="sos"), ir)  # air absorbs highs
    wet = signal.fftconvolve(mix, ir)[: p.n_buf]
    wet *= np.sqrt(np.mean(mix**2) / (np.mean(wet**2) + 1e-12))
    level = min(0.9, p.st.reverb * p.art.room)
    y = (1 - 0.5 * level) * mix + level * wet

    n_out = p.n_out
    y = y[:n_out]
    # Light noise floor, about 60 dB below the music, as from a real recording chain.
    y = y + rng.standard_normal(n_out) * 1e-3 * np.sqrt(np.mean(y**2))
    fade = min(n_out // 4, int(0.02 * sr))
    y[:fade] *= np.linspace(0.0, 1.0, fade)
    y[n_out - fade :] *= np.linspace(1.0, 0.0, fade)
    return y.astype(np.float32)


def render_clip(
    style: str, seed: int, config: SynthConfig | None = None, artist: str | None = None
) -> np.ndarray:
    """Render one "human" clip: composed, performed and recorded in a small room.

    Parameters
    ----------
    style : str
        One of `STYLES`.
    seed : int
        Seeds every random choice of the clip (key, tempo, mode, progression, melody, kit,
        humanisation, room, noise).
    config : SynthConfig, optional
        Supplies `duration`, `sample_rate` and the artists' seed; defaults to ``SynthConfig()``.
    artist : str, optional
        Artist name; its timbre tweaks are derived from the name and ``config.seed``, so all
        clips of one artist share them. Defaults to ``"synth-<style>-0"``.

    Returns
    -------
    np.ndarray, shape (round(duration * sample_rate),), float32
        Mono audio, not yet loudness-normalised (see `helpers.artifacts.normalize_loudness`).

    Examples
    --------
    >>> y = render_clip("house", seed=1, config=SynthConfig(duration=2.0))
    >>> y.shape, y.dtype
    ((44100,), dtype('float32'))
    """
    config = config or SynthConfig()
    if style not in _STYLE_TABLE:
        raise ValueError(f"unknown style {style!r}; choose from {list(STYLES)}")
    art = _artist(artist or f"synth-{style}-0", config.seed)
    rng = np.random.default_rng(seed)
    piece = _compose(style, config, art, rng)
    player = _Player(piece, rng)
    stems = {k: np.zeros(piece.n_buf) for k in ("lead", "chords", "bass", "drums")}
    # The order matters: every part draws from `rng` (see _Player).
    _play_chords(piece, player, stems["chords"])
    _play_bass(piece, player, stems["bass"])
    _play_melody(piece, player, stems["lead"])
    if piece.st.drums:
        _play_drums(piece, player, stems["drums"])
    return _record(piece, _mix(piece, stems), rng)


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------


def _clip_seed(seed: int, index: int, stream: int) -> int:
    # SeedSequence mixes (seed, index, stream) so neighbouring clips get unrelated streams.
    return int(np.random.SeedSequence([seed, index, stream]).generate_state(1)[0])


def plan_corpus(config: SynthConfig | None = None) -> pd.DataFrame:
    """The manifest a config will produce, without rendering any audio.

    Clip ``index`` runs over (style, label, j); splits are assigned within every
    (style, label) group by a seeded shuffle, so each split has the same style and label mix.

    Parameters
    ----------
    config : SynthConfig, optional

    Returns
    -------
    pd.DataFrame
        The `MANIFEST_COLUMNS` plus ``index`` and ``seed`` (the clip's render seed).
    """
    config = config or SynthConfig()
    n = config.n_per_style_per_label
    n_val = int(round(n * config.splits[1]))
    n_test = int(round(n * config.splits[2]))
    n_train = n - n_val - n_test
    ext = config.format
    rows = []
    index = 0
    for s_idx, style in enumerate(config.styles):
        for l_idx, label in enumerate(LABELS):
            order = np.random.default_rng([config.seed, s_idx, l_idx, 7]).permutation(n)
            split_of = np.empty(n, dtype=object)
            split_of[order[:n_train]] = "train"
            split_of[order[n_train : n_train + n_val]] = "val"
            split_of[order[n_train + n_val :]] = "test"
            for j in range(n):
                k = j % config.n_artists
                prefix = "synth" if label == "human" else "ai"
                track_id = f"{label}-{style}-{j:04d}"
                rows.append(
                    {
                        "path": f"audio/{label}/{style}/{track_id}.{ext}",
                        "label": label,
                        "split": split_of[j],
                        "track_id": track_id,
                        "title": f"{style.capitalize()} study no. {j + 1}",
                        "artist": f"{prefix}-{style}-{k}",
                        "genre": style,
                        "source": "synth",
                        "index": index,
                        "seed": _clip_seed(config.seed, index, 0),
                    }
                )
                index += 1
    return pd.DataFrame(rows)


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread (applies at once; also usable as a context manager).

    The matrix products here are small, so BLAS threads gain little and, next to worker
    processes or other jobs, only fight over the cores: measured, the tiny test corpus builds
    2.9x faster in wall time on a busy 2-core machine with one BLAS thread.
    """
    if threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(1)


def _build_clip(out_dir: str, row: dict[str, Any], config: SynthConfig) -> str:
    """Render, post-process and atomically write one clip (runs in a worker process)."""
    y = render_clip(row["genre"], row["seed"], config, artist=row["artist"])
    if row["label"] == "ai":
        rng = np.random.default_rng(_clip_seed(config.seed, row["index"], 1))
        y = apply_artifacts(y, config.sample_rate, config.artifacts, rng)
    jitter = np.random.default_rng(_clip_seed(config.seed, row["index"], 2)).uniform(-1, 1)
    y = normalize_loudness(y, config.target_rms_dbfs + config.level_jitter_db * jitter)
    path = Path(out_dir) / row["path"]
    fmt, subtype = _FORMATS[config.format]
    with atomic_path(path) as tmp:
        sf.write(tmp, y, config.sample_rate, format=fmt, subtype=subtype)
    return row["path"]


def make_corpus(
    out_dir: str | os.PathLike,
    config: SynthConfig | None = None,
    progress: bool = True,
    n_jobs: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Build (or finish building) the demo corpus in `out_dir`.

    Clips already on disk are kept, so an interrupted build resumes where it stopped. Each file
    is written to a temporary name and renamed, so a kill never leaves half a file behind.

    Parameters
    ----------
    out_dir : str or path-like
        Corpus folder; created if missing.
    config : SynthConfig, optional
        Defaults to ``SynthConfig()`` (144 ten-second clips, 6 styles).
    progress : bool
        Show a tqdm progress bar.
    n_jobs : int, optional
        Worker processes; ``None`` uses every CPU, ``1`` renders in this process. The output
        does not depend on it.
    overwrite : bool
        If `out_dir` holds a corpus made with a different config, delete its audio and
        manifest and rebuild instead of raising.

    Returns
    -------
    pathlib.Path
        The manifest, ``out_dir / "manifest.csv"``; its ``path`` column is relative to it.

    Raises
    ------
    ValueError
        `out_dir` holds a corpus made with another config (or generator version) and
        `overwrite` is False.

    Examples
    --------
    >>> cfg = SynthConfig(n_per_style_per_label=2)
    >>> manifest = make_corpus("data/synth", cfg)  # doctest: +SKIP
    """
    config = config or SynthConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "corpus.json"
    meta = {"generator_version": GENERATOR_VERSION, "config": config.to_dict()}
    if meta_path.exists():
        old = read_json(meta_path)
        if old != meta:
            if not overwrite:
                raise ValueError(_mismatch_message(out, old, meta))
            shutil.rmtree(out / "audio", ignore_errors=True)
            (out / "manifest.csv").unlink(missing_ok=True)
    # Record the config before any clip, so a killed build is still checked on resume.
    write_json(meta_path, meta)

    plan = plan_corpus(config)
    todo = [r for r in plan.to_dict("records") if not (out / r["path"]).exists()]
    n_jobs = (os.cpu_count() or 1) if n_jobs is None else max(1, n_jobs)
    with tqdm(total=len(todo), desc="synth corpus", unit="clip", disable=not progress) as bar:
        if n_jobs == 1 or len(todo) <= 1:
            with _one_blas_thread():
                for r in todo:
                    _build_clip(str(out), r, config)
                    bar.update()
        else:
            workers = min(n_jobs, len(todo))
            with jit.process_pool(workers) as pool:
                futures = [pool.submit(_build_clip, str(out), r, config) for r in todo]
                for fut in as_completed(futures):
                    fut.result()  # re-raise a worker's error here
                    bar.update()

    manifest = out / "manifest.csv"
    write_csv(manifest, plan.loc[:, list(MANIFEST_COLUMNS)])
    return manifest


def _mismatch_message(out: Path, old: dict[str, Any], new: dict[str, Any]) -> str:
    old_cfg, new_cfg = old.get("config", {}), new["config"]
    diff = sorted(k for k in set(old_cfg) | set(new_cfg) if old_cfg.get(k) != new_cfg.get(k))
    if old.get("generator_version") != new["generator_version"]:
        diff.append("generator_version")
    details = ", ".join(
        f"{k}: {old_cfg.get(k, old.get(k))!r} -> {new_cfg.get(k, new.get(k))!r}" for k in diff
    )
    return (
        f"{out} holds a synth corpus made with a different config ({details}); "
        "use another folder or pass overwrite=True to rebuild it"
    )
