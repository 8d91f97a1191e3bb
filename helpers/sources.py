"""Real datasets: download SONICS and GTZAN with kagglehub and turn them into manifests.

* SONICS (Rahman et al., ICLR 2025): AI songs from Suno and Udio as MP3 in ``fake_songs/``,
  described by ``fake_songs.csv`` (with ``split``, ``algorithm``, ``source``). Its human songs
  are not in the archive: ``real_songs.csv`` lists YouTube ids, which `fetch_youtube_audio`
  can fetch (optional, resumable, rate-limited; many ids are gone).
* GTZAN (Tzanetakis & Cook 2002): 1,000 human 30 s WAV clips in 10 genres at 22,050 Hz under
  ``Data/genres_original/<genre>/<genre>.000NN.wav``. One file (``jazz.00054.wav``) is
  corrupt; like any unreadable file it is logged and skipped when features are computed.

Everything here is tested on fake folder trees with the same layout (``tests/test_sources.py``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from helpers.audio import AUDIO_EXTENSIONS
from helpers.datasets import (
    GTZAN_HANDLE,
    SONICS_HANDLE,
    ManifestError,
    assign_splits,
    list_audio,
    validate_manifest,
)
from helpers.io import write_csv

log = logging.getLogger(__name__)

CREDENTIALS_HELP = (
    "Kaggle credentials not found. Either (1) on Colab, add the secrets KAGGLE_USERNAME and "
    "KAGGLE_KEY (key icon in the left bar) and allow this notebook to read them; (2) set the "
    "environment variables KAGGLE_USERNAME and KAGGLE_KEY; or (3) put kaggle.json from "
    "https://www.kaggle.com/settings (API > Create New Token) in ~/.kaggle/kaggle.json."
)


def kaggle_credentials_source() -> str | None:
    """Find Kaggle credentials and export them for kagglehub; returns where they came from.

    Order: environment variables, Colab secrets, ``~/.kaggle/kaggle.json``. Returns ``None``
    when there are none (public datasets may still download without them).
    """
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "environment"
    try:
        from google.colab import userdata  # type: ignore[import-not-found]

        username, key = userdata.get("KAGGLE_USERNAME"), userdata.get("KAGGLE_KEY")
        if username and key:
            os.environ["KAGGLE_USERNAME"], os.environ["KAGGLE_KEY"] = username, key
            return "colab-secrets"
    except Exception:  # noqa: BLE001 - not on Colab, or the secret is not shared
        pass
    if (Path.home() / ".kaggle" / "kaggle.json").is_file():
        return "kaggle.json"
    return None


def kaggle_download(handle: str) -> Path:
    """Download (or reuse kagglehub's cached copy of) a Kaggle dataset; returns its folder.

    Raises
    ------
    RuntimeError
        kagglehub is missing or the download failed; the message says how to fix credentials.
    """
    try:
        import kagglehub
    except ImportError as err:
        raise RuntimeError("kagglehub is not installed: pip install kagglehub") from err
    found = kaggle_credentials_source()
    log.info("Kaggle credentials: %s", found or "none (trying anonymous download)")
    try:
        return Path(kagglehub.dataset_download(handle))
    except Exception as err:  # noqa: BLE001 - kagglehub raises many types; all mean "no data"
        hint = CREDENTIALS_HELP if found is None else "check the network and the dataset handle"
        raise RuntimeError(f"downloading {handle} failed: {err}. {hint}") from err


def _strip_audio_ext(name: str) -> str:
    # Not Path.stem: SONICS names such as "fake_1_chirp-v3.5_0" contain dots.
    path = Path(name)
    return path.stem if path.suffix.lower() in AUDIO_EXTENSIONS else path.name


def _find_file(root: Path, name: str) -> Path:
    hits = sorted(root.rglob(name))
    if not hits:
        raise ManifestError(f"{root}: no {name} found; is this the right dataset folder?")
    return hits[0]


def sonics_manifest(root: str | os.PathLike, human_audio_dir: str | os.PathLike | None = None,
                    min_duration: float = 0.0) -> pd.DataFrame:
    """Manifest of SONICS' AI songs, plus its human songs where they were fetched.

    Parameters
    ----------
    root : str or path-like
        The dataset folder (what kagglehub returns), holding ``fake_songs.csv`` and the MP3s.
    human_audio_dir : str or path-like, optional
        Folder of fetched human songs named ``<youtube_id>.<ext>`` (see
        `fetch_youtube_audio`); songs not there are left out.
    min_duration : float
        Drop songs shorter than this many seconds (the SONICS code uses 30 s for training).

    Returns
    -------
    pd.DataFrame
        A validated manifest; extra columns ``algorithm`` (e.g. ``chirp-v3.5``, ``udio-120s``)
        and ``duration``. The ``split`` column comes from SONICS' own split.
    """
    root = Path(root)
    fake = pd.read_csv(_find_file(root, "fake_songs.csv"), dtype=str, keep_default_na=False)
    for column in ("filename", "split"):
        if column not in fake.columns:
            raise ManifestError(f"{root}/fake_songs.csv: no '{column}' column; found "
                                f"{list(fake.columns)}")
    audio = {_strip_audio_ext(p.name): p for p in list_audio(root)}
    rows = []
    missing = 0
    for rec in fake.to_dict("records"):
        stem = _strip_audio_ext(rec["filename"])
        if stem not in audio:
            missing += 1
            continue
        rows.append(_sonics_row(rec, audio[stem], "ai", f"sonics-{rec.get('source', 'ai')}"))
    if missing:
        log.warning("%d fake_songs.csv rows have no audio file under %s", missing, root)
    if human_audio_dir is not None:
        real_csv = _find_file(root, "real_songs.csv")
        real = pd.read_csv(real_csv, dtype=str, keep_default_na=False)
        fetched = {_strip_audio_ext(p.name): p for p in list_audio(human_audio_dir)}
        id_column = "youtube_id" if "youtube_id" in real.columns else "filename"
        for rec in real.to_dict("records"):
            path = fetched.get(_strip_audio_ext(rec[id_column]))
            if path is not None:
                rows.append(_sonics_row(rec, path, "human", "sonics-youtube"))
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise ManifestError(f"{root}: no SONICS audio found (expected fake_songs/*.mp3)")
    if min_duration and "duration" in frame:
        seconds = pd.to_numeric(frame["duration"], errors="coerce").fillna(float("inf"))
        frame = frame[seconds >= min_duration]
    return validate_manifest(frame, name=str(root))


def _sonics_row(rec: dict, path: Path, label: str, source: str) -> dict:
    return {
        "path": str(path),
        "label": label,
        "split": rec.get("split", "") or "train",
        "track_id": rec.get("id") or path.stem,
        "title": rec.get("title", ""),
        "artist": rec.get("artist", "") or ("" if label == "human" else rec.get("source", "")),
        "genre": rec.get("genre", ""),
        "source": source,
        "algorithm": rec.get("algorithm", "human" if label == "human" else ""),
        "duration": rec.get("duration", ""),
    }


def gtzan_manifest(root: str | os.PathLike,
                   fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> pd.DataFrame:
    """Manifest of GTZAN's human clips with their genres.

    Parameters
    ----------
    root : str or path-like
        The dataset folder (what kagglehub returns) holding ``Data/genres_original`` (or
        ``genres_original`` / ``genres`` directly).
    fractions : tuple of float
        Train/val/test shares. GTZAN has no official split; a hash of the file name assigns it,
        so it never changes between runs.

    Returns
    -------
    pd.DataFrame
        A validated manifest, label ``human``, ``genre`` from the folder name.
    """
    root = Path(root)
    candidates = [root / "Data" / "genres_original", root / "genres_original", root / "genres",
                  root]
    genres_dir = next((c for c in candidates if c.is_dir() and any(
        (c / g).is_dir() for g in ("blues", "jazz", "rock"))), None)
    if genres_dir is None:
        raise ManifestError(f"{root}: no GTZAN genre folders (Data/genres_original/<genre>/)")
    rows = []
    for genre_dir in sorted(p for p in genres_dir.iterdir() if p.is_dir()):
        for path in list_audio(genre_dir):
            rows.append({"path": str(path), "label": "human", "track_id": path.stem,
                         "title": path.stem, "genre": genre_dir.name, "source": "gtzan"})
    frame = pd.DataFrame(rows)
    frame["split"] = assign_splits(frame["track_id"], fractions, salt="gtzan")
    return validate_manifest(frame, name=str(root))


def fetch_youtube_audio(
    real_songs_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    limit: int | None = None,
    seconds: float = 30.0,
    sleep_s: float = 2.0,
    progress: bool = True,
) -> pd.DataFrame:
    """Fetch SONICS' human songs from YouTube with yt-dlp (optional; resumable).

    Each id is tried at most once: ``out_dir/status.csv`` records ``ok`` or the failure reason,
    so a re-run continues where the last one stopped and never retries dead ids. Only the
    first `seconds` are kept (saved as MP3), which is all the classifier reads.

    Parameters
    ----------
    real_songs_csv : str or path-like
        SONICS' ``real_songs.csv`` (column ``youtube_id``).
    out_dir : str or path-like
        Where ``<youtube_id>.mp3`` files and ``status.csv`` go.
    limit : int, optional
        Stop after this many ids have been tried in total (a Colab-sized subset).
    seconds : float
        Seconds kept from the start of each song.
    sleep_s : float
        Pause between requests (rate limit).
    progress : bool

    Returns
    -------
    pd.DataFrame
        The status table (``youtube_id``, ``status``, ``detail``).

    Raises
    ------
    RuntimeError
        yt-dlp or ffmpeg is missing (nothing else in the pipeline needs them).
    """
    try:
        import yt_dlp  # type: ignore[import-not-found]
    except ImportError as err:
        raise RuntimeError("fetching SONICS human songs needs yt-dlp: pip install yt-dlp") from err
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("yt-dlp needs ffmpeg to cut and convert audio: apt-get install ffmpeg")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    real = pd.read_csv(real_songs_csv, dtype=str, keep_default_na=False)
    if "youtube_id" not in real.columns:
        raise ManifestError(f"{real_songs_csv}: no youtube_id column; found {list(real.columns)}")
    status_csv = out_dir / "status.csv"
    status = (pd.read_csv(status_csv, dtype=str, keep_default_na=False) if status_csv.exists()
              else pd.DataFrame(columns=["youtube_id", "status", "detail"]))
    tried = set(status["youtube_id"])
    todo = [y for y in real["youtube_id"] if y and y not in tried]
    if limit is not None:
        todo = todo[: max(0, limit - len(tried))]
    options = {
        "format": "bestaudio/best",
        "outtmpl": str(out_dir / "%(id)s.%(ext)s"),
        "quiet": True,
        "noprogress": True,
        "download_ranges": yt_dlp.utils.download_range_func(None, [(0, seconds)]),
        "postprocessors": [{"key": "FFmpegExtractAudio", "preferredcodec": "mp3"}],
    }
    records = status.to_dict("records")
    with yt_dlp.YoutubeDL(options) as ydl:
        for youtube_id in tqdm(todo, desc="yt-dlp", disable=not progress):
            try:
                ydl.download([f"https://www.youtube.com/watch?v={youtube_id}"])
                records.append({"youtube_id": youtube_id, "status": "ok", "detail": ""})
            except Exception as err:  # noqa: BLE001 - gone/private/blocked: record, move on
                records.append({"youtube_id": youtube_id, "status": "failed",
                                "detail": str(err)[:300]})
            write_csv(status_csv, pd.DataFrame(records))
            time.sleep(sleep_s)
    table = pd.DataFrame(records, columns=["youtube_id", "status", "detail"])
    write_csv(status_csv, table)
    return table


def download(dataset: str, out_dir: str | os.PathLike, limit: int | None = None,
             fetch_human: bool = False, seed: int = 0) -> Path:
    """Download a dataset and write its manifest; the `download` command and script use this.

    Parameters
    ----------
    dataset : {"sonics", "gtzan", "sonics+gtzan"}
        ``sonics+gtzan`` pairs SONICS' AI songs with GTZAN as the human class (the design's
        default, since SONICS' human songs are only YouTube ids).
    out_dir : str or path-like
        Where ``manifest.csv`` (and fetched YouTube audio) go; the archives stay in
        kagglehub's cache.
    limit : int, optional
        At most this many training clips per class (val/test cut in proportion).
    fetch_human : bool
        Also fetch SONICS' human songs with yt-dlp (slow; many ids are gone).
    seed : int
        Seed of the subsample.

    Returns
    -------
    Path
        The manifest written.
    """
    from helpers.datasets import balance, combine, write_manifest

    out_dir = Path(out_dir)
    parts = []
    if dataset in ("sonics", "sonics+gtzan"):
        root = kaggle_download(SONICS_HANDLE)
        human_dir = None
        if fetch_human:
            human_dir = out_dir / "sonics_human"
            fetch_youtube_audio(_find_file(root, "real_songs.csv"), human_dir,
                                limit=None if limit is None else 2 * limit)
        parts.append(sonics_manifest(root, human_dir))
    if dataset in ("gtzan", "sonics+gtzan"):
        parts.append(gtzan_manifest(kaggle_download(GTZAN_HANDLE)))
    if not parts:
        raise ValueError(f"unknown dataset {dataset!r}; use sonics, gtzan or sonics+gtzan")
    frame = balance(combine(parts), per_class=limit, seed=seed)
    path = write_manifest(frame, out_dir / "manifest.csv")
    (out_dir / "download.json").write_text(json.dumps(
        {"dataset": dataset, "limit": limit, "fetch_human": fetch_human, "n": len(frame)}))
    return path
