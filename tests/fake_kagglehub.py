"""A stand-in for the ``kagglehub`` module: SONICS- and GTZAN-shaped datasets, made on request.

`FakeKaggleHub.module()` is injected as ``sys.modules["kagglehub"]``. Like kagglehub it puts
files under ``$KAGGLEHUB_CACHE/datasets/<owner>/<name>/versions/<N>/`` and returns their local
path, skips files already there, and accepts ``owner/name/versions/N`` handles. It records
every call (`requests`) and every file it actually had to make (`fetched`); `fail_paths`
fail like a network error and `interrupt_after` stops the process like a kill.

SONICS' ``fake_songs.csv`` has the real columns (see the SONICS README) and, by default,
49,000 rows: file names ``fake_<id>_<suno|udio>_<0|1>`` without extension, durations with a
few songs under 30 s, splits train/valid/test, a ``no_vocal`` flag. MP3s are written only
when asked for (0.1 s of tone), so no test writes 49k audio files. GTZAN comes whole: 1,000
tiny WAVs in ``Data/genres_original/<genre>/``, with a corrupt ``jazz.00054.wav`` as in the
real archive.
"""

from __future__ import annotations

import io
import os
import types
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

SONICS = "awsaf49/sonics-dataset"
GTZAN = "andradaolteanu/gtzan-dataset-music-genre-classification"
GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae",
          "rock")


def sonics_fake_csv(n: int, seed: int = 0) -> pd.DataFrame:
    """A ``fake_songs.csv`` with SONICS' columns and plausible values."""
    rng = np.random.default_rng(seed)
    source = rng.choice(["suno", "udio"], n, p=[0.6, 0.4])
    algorithm = np.where(source == "suno",
                         rng.choice(["chirp-v2-xxl-alpha", "chirp-v3", "chirp-v3.5"], n),
                         rng.choice(["udio-32", "udio-130"], n))
    duration = np.where(algorithm == "udio-32", rng.uniform(28, 33, n),
                        rng.uniform(20, 240, n)).round(2)
    ids = np.arange(n)
    return pd.DataFrame({
        "id": [f"fake_{i}" for i in ids],
        "filename": [f"fake_{i}_{s}_{i % 2}" for i, s in zip(ids, source)],
        "title": [f"song {i}" for i in ids],
        "duration": duration,
        "algorithm": algorithm,
        "style": rng.choice(["upbeat pop", "dark synthwave", "acoustic folk"], n),
        "source": source,
        "lyrics_features": "",
        "topic": rng.choice(["love", "space", "city"], n),
        "genre": rng.choice(["pop", "rock", "salsa", "grunge"], n),
        "mood": rng.choice(["tense", "mournful", "happy"], n),
        "label": rng.choice(["full fake", "half fake", "mostly fake"], n),
        "target": 1,
        "split": rng.choice(["train", "valid", "test"], n, p=[0.8, 0.05, 0.15]),
        "no_vocal": rng.random(n) < 0.05,
    })


def sonics_real_csv(n: int, seed: int = 1) -> pd.DataFrame:
    """A ``real_songs.csv`` with SONICS' columns (YouTube ids, no audio)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": [f"real_{i}" for i in range(n)], "filename": [f"real_{i}" for i in range(n)],
        "title": [f"real song {i}" for i in range(n)],
        "artist": [f"artist {i % 50}" for i in range(n)], "year": 2000, "lyrics": "",
        "lyrics_features": "", "duration": rng.uniform(60, 300, n).round(2),
        "youtube_id": [f"yt{i:09d}" for i in range(n)], "label": "real",
        "artist_overlap": False, "target": 0, "skip_time": 0.0, "no_vocal": False,
        "split": rng.choice(["train", "valid", "test"], n, p=[0.8, 0.05, 0.15]),
    })


class FakeKaggleHub:
    """Serves SONICS/GTZAN-shaped files into a kagglehub-like cache and records requests."""

    def __init__(self, n_fake: int = 49_000, n_real: int = 200, version: int = 2) -> None:
        self.n_fake, self.n_real, self.version = n_fake, n_real, version
        self.requests: list[tuple[str, str | None]] = []
        self.fetched: list[tuple[str, str | None]] = []
        self.fail_paths: set[str] = set()
        self._names: set[str] | None = None
        self.interrupt_after: int | None = None  # a "kill" once this many MP3s were made

    def module(self) -> types.ModuleType:
        mod = types.ModuleType("kagglehub")
        mod.dataset_download = self.dataset_download
        return mod

    def dataset_download(self, handle: str, path: str | None = None, *,
                         force_download: bool = False, output_dir: str | None = None) -> str:
        self.requests.append((handle, path))
        owner, name, *rest = handle.split("/")
        version = int(rest[1]) if rest[:1] == ["versions"] else self.version
        cache = Path(os.environ.get("KAGGLEHUB_CACHE") or Path.home() / ".cache" / "kagglehub")
        base = cache / "datasets" / owner / name / "versions" / str(version)
        if path in self.fail_paths:
            raise ConnectionError(f"503 Service Unavailable for {path}")
        if f"{owner}/{name}" == SONICS:
            if path is None:
                raise AssertionError("the whole SONICS archive was requested")
            target = base / path
            if not target.exists():
                made = sum(p is not None and p.endswith(".mp3") for _, p in self.fetched)
                if path.endswith(".mp3") and made == self.interrupt_after:
                    raise KeyboardInterrupt
                self._make_sonics(target, path)
                self.fetched.append((handle, path))
            return str(target)
        if f"{owner}/{name}" == GTZAN and path is None:
            if not (base / "Data").exists():
                self._make_gtzan(base)
                self.fetched.append((handle, None))
            return str(base)
        raise FileNotFoundError(f"404: {handle} {path}")

    def _make_sonics(self, target: Path, path: str) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if path == "fake_songs.csv":
            sonics_fake_csv(self.n_fake).to_csv(target, index=False)
        elif path == "real_songs.csv":
            sonics_real_csv(self.n_real).to_csv(target, index=False)
        elif path.startswith("fake_songs/") and path.endswith(".mp3"):
            if Path(path).stem not in self._listed(target.parent.parent / "fake_songs.csv"):
                raise FileNotFoundError(f"404: {path} is not in the dataset")
            t = np.arange(800) / 8000
            sf.write(target, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000)
        else:
            raise FileNotFoundError(f"404: {path}")

    def _listed(self, csv: Path) -> set[str]:
        if self._names is None:
            self._names = set(pd.read_csv(csv, usecols=["filename"])["filename"])
        return self._names

    @staticmethod
    def _make_gtzan(base: Path) -> None:
        t = np.arange(1100) / 22_050
        wav = io.BytesIO()
        sf.write(wav, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 22_050,
                 format="WAV")
        for genre in GENRES:
            folder = base / "Data" / "genres_original" / genre
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(100):
                (folder / f"{genre}.{i:05d}.wav").write_bytes(wav.getvalue())
        (base / "Data" / "genres_original" / "jazz" / "jazz.00054.wav").write_bytes(
            b"RIFF" + bytes(40))
