"""Make "AI" twins of human music: a training and test corpus from any catalog, offline.

Anyone with a folder of human music can build a detector's corpus without a single generated
song: every human track gives a human excerpt, and every artifact *family* turns an excerpt of
the same track into an "AI" one. The families are the project's proxies of a generator's last
stage (see `helpers.artifacts` for what each imitates and what proxies cannot show):

``griffin_lim``
    `helpers.artifacts.apply_artifacts` with its default chain: decimate 2x, 128-band mel
    spectrogram, mel inversion and Griffin-Lim phase (a mel-domain generator with a classic
    vocoder), then 2x transposed-convolution-style upsampling.
``autoencoder``
    `helpers.autoencoder`: a small neural waveform autoencoder whose decoder is a stack of
    transposed convolutions, trained by `make_twins` on the manifest's ``train`` split (the
    decoder reconstruction Afchar et al. 2024 found detectors latch onto).
``opus_lowrate``
    An Ogg/Opus round trip at 8 kbps: at this rate Opus codes music with SILK, a
    linear-prediction vocoder, and band-limits it; a codec/vocoder-style resynthesis standing
    in for the coarse latents of neural codecs (EnCodec, DAC).

Designs: ``paired`` makes the AI twin from the *same* excerpt as the human one (the classes
then differ only by the family's trace), ``unpaired`` from *another* excerpt of the track (as
real corpora are: the AI song is not a copy of a human one). Both versions keep the track's
``track_id``, so a track never straddles splits, and both are loudness-normalised the same way
(with one random offset per file from the same distribution), so level cannot tell them apart.

    python -m helpers twins --manifest human.csv --out twins/ --family griffin_lim autoencoder
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm.auto import tqdm

from helpers.artifacts import ArtifactConfig, apply_artifacts, normalize_loudness
from helpers.audio import AudioError, read_audio, resample
from helpers.datasets import load_manifest
from helpers.io import atomic_path, write_csv, write_json

log = logging.getLogger(__name__)

FAMILIES = ("griffin_lim", "autoencoder", "opus_lowrate")
DESIGNS = ("paired", "unpaired")
AUTOENCODER_FILE = "autoencoder.pt"


@dataclass(frozen=True)
class TwinConfig:
    """How `make_twins` cuts excerpts and makes their AI versions.

    Parameters
    ----------
    families : tuple of str
        Which of `FAMILIES` to make (one AI file per family and excerpt).
    design : str
        ``"paired"`` (AI twin of the same excerpt) or ``"unpaired"`` (of the next excerpt of
        the track; tracks shorter than two excerpts are skipped and listed).
    excerpt_seconds : float
        Length of every excerpt. Tracks shorter than this are skipped and listed.
    offset_seconds : float
        Where the human excerpt starts (intros are often quiet; shorter tracks start earlier).
    sample_rate : int
        Rate of the written WAV files (and of the autoencoder).
    target_rms_dbfs, level_jitter_db : float
        Every file, human or AI, is normalised to ``target_rms_dbfs`` plus a uniform offset in
        ``+-level_jitter_db`` (same distribution for both labels).
    opus_kbps : int
        Bitrate of ``opus_lowrate``.
    autoencoder_steps : int, optional
        Training steps of the autoencoder when `make_twins` trains one (None: its default).
    seed : int
    """

    families: tuple[str, ...] = FAMILIES
    design: str = "paired"
    excerpt_seconds: float = 30.0
    offset_seconds: float = 15.0
    sample_rate: int = 22_050
    target_rms_dbfs: float = -20.0
    level_jitter_db: float = 1.0
    opus_kbps: int = 8
    autoencoder_steps: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown or not self.families:
            raise ValueError(f"unknown families {unknown}; choose from {list(FAMILIES)}")
        if self.design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}, got {self.design!r}")
        if self.excerpt_seconds <= 0:
            raise ValueError(f"excerpt_seconds must be positive, got {self.excerpt_seconds}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:80] or "track"


def make_twin(y: np.ndarray, sr: int, family: str, seed: int = 0, autoencoder: Any = None,
              opus_kbps: int = 8) -> np.ndarray:
    """The AI version of one excerpt under one family.

    Parameters
    ----------
    y : np.ndarray, shape (samples,)
        Mono audio.
    sr : int
        Its rate (the autoencoder's own rate for ``"autoencoder"``).
    family : str
        One of `FAMILIES`.
    seed : int
        Seeds Griffin-Lim's initial phase (the other families are deterministic).
    autoencoder : helpers.autoencoder.WaveAutoencoder, optional
        Required for ``"autoencoder"``.
    opus_kbps : int

    Returns
    -------
    np.ndarray, shape (samples,), float32
        Same length as `y`, not loudness-normalised.
    """
    if family == "griffin_lim":
        return apply_artifacts(y, sr, ArtifactConfig(), np.random.default_rng(seed))
    if family == "autoencoder":
        if autoencoder is None:
            raise ValueError("the autoencoder family needs a trained autoencoder "
                             "(helpers.autoencoder.train_autoencoder or load_autoencoder)")
        from helpers.autoencoder import reconstruct

        return reconstruct(autoencoder, y, sr).astype(np.float32)
    if family == "opus_lowrate":
        from helpers.perturb import opus

        return opus(np.asarray(y, np.float32), sr, bitrate_kbps=opus_kbps).astype(np.float32)
    raise ValueError(f"unknown family {family!r}; choose from {list(FAMILIES)}")


@dataclass
class _Track:
    row: dict[str, Any]
    human: tuple[float, float]  # (start, end) seconds
    source: tuple[float, float]  # the excerpt the AI twins are made from
    skip: str = ""


def _plan(seconds: float, config: TwinConfig) -> tuple[tuple[float, float], tuple[float, float],
                                                      str]:
    """Where the human excerpt and the AI twins' source excerpt lie in a track."""
    n = config.excerpt_seconds
    needed = n * (2 if config.design == "unpaired" else 1)
    if seconds < needed:
        return (0, 0), (0, 0), (f"{seconds:.1f} s is shorter than the {needed:.0f} s the "
                                f"{config.design} design needs")
    start = min(config.offset_seconds, (seconds - needed) / 2)
    human = (start, start + n)
    source = human if config.design == "paired" else (start + n, start + 2 * n)
    return human, source, ""


def _level(y: np.ndarray, config: TwinConfig, key: str) -> np.ndarray:
    jitter = np.random.default_rng(_seed("level", config.seed, key)).uniform(-1.0, 1.0)
    return normalize_loudness(y, config.target_rms_dbfs + config.level_jitter_db * jitter)


def _write_wav(path: Path, y: np.ndarray, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(tmp, y, sr, format="WAV", subtype="PCM_16")


def _read_excerpt(path: str, span: tuple[float, float], sr: int) -> np.ndarray:
    y, file_sr = read_audio(path, max_seconds=span[1] + 1.0)
    y = resample(y, file_sr, sr)
    return y[int(span[0] * sr): int(span[0] * sr) + int(round((span[1] - span[0]) * sr))]


def _track_files(track: _Track, out: Path, config: TwinConfig) -> dict[str, Path]:
    stem = f"{_safe(str(track.row['track_id']))}_{_seed(track.row['path']) % 10**6:06d}"
    files = {"human": out / "human" / f"{stem}.wav"}
    files.update({f: out / f / config.design / f"{stem}.wav" for f in config.families})
    return files


def _make_track(track: _Track, out: str, config: TwinConfig, autoencoder_path: str | None
                ) -> dict[str, str]:
    """Write one track's human excerpt and its AI twins (files already there are kept)."""
    files = _track_files(track, Path(out), config)
    sr = config.sample_rate
    if not files["human"].exists():
        human = _read_excerpt(track.row["path"], track.human, sr)
        _write_wav(files["human"], _level(human, config, f"human/{track.row['path']}"), sr)
    todo = [f for f in config.families if not files[f].exists()]
    if todo:
        source = _read_excerpt(track.row["path"], track.source, sr)
        ae = None
        if "autoencoder" in todo:
            from helpers.autoencoder import load_autoencoder

            ae = _cached_autoencoder(autoencoder_path, load_autoencoder)
        for family in todo:
            twin = make_twin(source, sr, family, seed=_seed(config.seed, track.row["path"]),
                             autoencoder=ae, opus_kbps=config.opus_kbps)
            _write_wav(files[family], _level(twin, config, f"{family}/{track.row['path']}"), sr)
    return {k: str(v) for k, v in files.items()}


_AUTOENCODERS: dict[str, Any] = {}


def _cached_autoencoder(path: str | None, load: Any) -> Any:
    if path is None:
        raise ValueError("the autoencoder family needs a trained autoencoder file")
    if path not in _AUTOENCODERS:  # one load per worker process, not one per track
        _AUTOENCODERS[path] = load(path)
    return _AUTOENCODERS[path]


def _train_autoencoder(tracks: list[_Track], out: Path, config: TwinConfig,
                       progress: bool) -> Path:
    """Train the autoencoder family on the human excerpts of the train split (once)."""
    from helpers.autoencoder import AutoencoderConfig

    path = out / AUTOENCODER_FILE
    if path.exists():
        return path
    clips = [_read_excerpt(t.row["path"], t.human, config.sample_rate) for t in tracks
             if t.row["split"] == "train"]
    if not clips:
        raise ValueError("the autoencoder family is trained on the manifest's train rows, and "
                         "there are none; mark some tracks split=train or drop the family")
    ae_config = AutoencoderConfig(sample_rate=config.sample_rate, seed=config.seed,
                                  **({"steps": config.autoencoder_steps}
                                     if config.autoencoder_steps else {}))
    log.info("training the autoencoder family on %d train excerpts", len(clips))
    # In a spawned process: training starts torch's OpenMP thread pool, and a process that
    # has one must not fork workers that use torch (GNU OpenMP hangs in the child).
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_train_and_save, clips, ae_config, str(path), progress).result()
    return path


def _train_and_save(clips: list[np.ndarray], config: Any, path: str, progress: bool) -> None:
    from helpers.autoencoder import save_autoencoder, train_autoencoder

    save_autoencoder(train_autoencoder(clips, config, progress=progress), path)


def make_twins(
    manifest: str | os.PathLike | pd.DataFrame,
    out_dir: str | os.PathLike,
    config: TwinConfig | None = None,
    autoencoder: str | os.PathLike | None = None,
    n_jobs: int = 1,
    progress: bool = True,
) -> Path:
    """Write human excerpts and their AI twins, and a manifest of both.

    Parameters
    ----------
    manifest : str, path-like or DataFrame
        Human tracks (rows labelled ``ai`` are ignored), in the project's manifest format; the
        split of each track is kept. A plain folder of audio files is read as human music,
        each file's split from a hash of its path (`helpers.datasets.folder_manifest`).
    out_dir : str or path-like
        Gets ``human/``, ``<family>/<design>/``, ``manifest.csv`` (``family`` and
        ``design`` columns added; human rows have family ``human``), ``skipped.csv`` and
        ``twins.json`` (the settings). A second call with the same settings only makes what
        is missing, so an interrupted job resumes.
    config : TwinConfig, optional
    autoencoder : str or path-like, optional
        A saved autoencoder (`helpers.autoencoder.save_autoencoder`) for that family; without
        it one is trained on the train rows and saved as ``out_dir/autoencoder.pt``.
    n_jobs : int
        Worker processes.
    progress : bool

    Returns
    -------
    Path
        The written ``manifest.csv``.
    """
    config = config or TwinConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = load_manifest(manifest, folder_label="human")
    frame = frame[frame["label"] == "human"]
    tracks, skipped = [], []
    for row in frame.to_dict("records"):
        try:
            seconds = sf.info(row["path"]).duration
        except (RuntimeError, sf.LibsndfileError) as err:
            skipped.append({"path": row["path"], "reason": f"unreadable: {err}"})
            continue
        human, source, skip = _plan(seconds, config)
        if skip:
            skipped.append({"path": row["path"], "reason": skip})
        else:
            tracks.append(_Track(row, human, source))
    ae_path = None
    if "autoencoder" in config.families:
        ae_path = str(autoencoder) if autoencoder else str(_train_autoencoder(
            tracks, out, config, progress))
    rows = _run(tracks, out, config, ae_path, n_jobs, progress, skipped)
    write_csv(out / "skipped.csv", pd.DataFrame(skipped, columns=["path", "reason"]))
    write_json(out / "twins.json", {"config": config.to_dict(), "autoencoder": ae_path,
                                    "tracks": len(tracks), "skipped": len(skipped)})
    path = out / "manifest.csv"
    write_csv(path, pd.DataFrame(rows))
    log.info("%d tracks -> %d files in %s (%d skipped, see skipped.csv)", len(tracks),
             len(rows), out, len(skipped))
    return path


def _run(tracks: list[_Track], out: Path, config: TwinConfig, ae_path: str | None, n_jobs: int,
         progress: bool, skipped: list[dict]) -> list[dict]:
    results: dict[int, dict[str, str]] = {}
    bar = tqdm(total=len(tracks), desc="twins", unit="track", disable=not progress)

    def done(i: int, files: dict[str, str] | None, err: Exception | None) -> None:
        if err is not None:
            if not isinstance(err, AudioError):
                raise err  # a bug, not a bad file
            skipped.append({"path": tracks[i].row["path"], "reason": f"failed: {err}"})
            log.warning("%s: %s (skipped)", tracks[i].row["path"], err)
        else:
            results[i] = files
        bar.update()

    if n_jobs > 1:
        from helpers.jit import process_pool

        with process_pool(n_jobs, uses_torch="autoencoder" in config.families) as pool:
            futures = {pool.submit(_make_track, t, str(out), config, ae_path): i
                       for i, t in enumerate(tracks)}
            for fut in as_completed(futures):
                err = fut.exception()
                done(futures[fut], None if err else fut.result(), err)
    else:
        for i, t in enumerate(tracks):
            try:
                done(i, _make_track(t, str(out), config, ae_path), None)
            except AudioError as err:
                done(i, None, err)
    bar.close()
    rows = []
    keep = ["split", "track_id", "title", "artist", "genre", "source"]
    for i in sorted(results):
        t, files = tracks[i], results[i]
        base = {k: t.row.get(k, "") for k in keep}
        rows.append({"path": os.path.relpath(files["human"], out), "label": "human", **base,
                     "family": "human", "design": config.design,
                     "excerpt_start_s": t.human[0], "original": t.row["path"]})
        rows.extend({"path": os.path.relpath(files[f], out), "label": "ai", **base,
                     "family": f, "design": config.design, "excerpt_start_s": t.source[0],
                     "original": t.row["path"]} for f in config.families)
    return rows


def select(frame: pd.DataFrame, families: Sequence[str]) -> pd.DataFrame:
    """The human rows and the AI rows of the given families of a twins manifest.

    Parameters
    ----------
    frame : pd.DataFrame
        A manifest written by `make_twins` (``family`` column).
    families : sequence of str

    Returns
    -------
    pd.DataFrame
        A copy; every human excerpt stays, so the classes keep their tracks.
    """
    unknown = sorted(set(families) - set(frame["family"]))
    if unknown:
        raise ValueError(f"families {unknown} are not in this manifest "
                         f"(it has {sorted(set(frame['family']) - {'human'})})")
    return frame[(frame["family"] == "human") | frame["family"].isin(families)].copy()
