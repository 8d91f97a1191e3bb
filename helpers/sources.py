"""Real datasets: fetch SONICS and GTZAN with kagglehub and turn them into manifests.

* SONICS (Rahman et al., ICLR 2025; CC BY-NC 4.0): ~49k AI songs from Suno and Udio as
  ``fake_songs/<filename>.mp3``, described by ``fake_songs.csv`` (``filename`` without the
  extension, ``duration``, ``split`` train/valid/test, ``algorithm``, ``source`` suno/udio,
  ...). Its human songs are not in the archive: ``real_songs.csv`` lists YouTube ids, which
  `fetch_youtube_audio` can fetch (optional). The archive is tens of GB, so `download` fetches
  the CSV first, chooses the subset, and then fetches only those MP3s, one file each
  (``kagglehub.dataset_download(handle, path=...)``).
* GTZAN (Tzanetakis & Cook 2002): 1,000 human 30 s WAV clips in 10 genres under
  ``Data/genres_original/<genre>/<genre>.000NN.wav``, fetched whole (about 1.2 GB: one
  request, and the balanced subset needs most of it anyway). Its split is the artist-disjoint
  *fault-filtered* partition (``helpers/data/gtzan_fault_filtered.csv``), which leaves out
  70 repeated or mislabelled clips. ``jazz.00054.wav`` is corrupt; like any unreadable file
  it is logged and skipped when features are computed.

Everything here is tested against a stand-in kagglehub serving generated trees with the same
layout (``tests/fake_kagglehub.py``).
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import re
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
    balance,
    combine,
    list_audio,
    validate_manifest,
    write_manifest,
)
from helpers.io import write_csv, write_json

log = logging.getLogger(__name__)

DATASETS = ("sonics", "gtzan", "sonics+gtzan")
SONICS_FAKE_CSV = "fake_songs.csv"
SONICS_REAL_CSV = "real_songs.csv"
SONICS_FAKE_DIR = "fake_songs"
#: SONICS' own training filter (its data_split.py keeps duration >= 30 s): shorter songs are
#: zero-padded by the front end while GTZAN clips are full, and the silence becomes a cue.
SONICS_MIN_DURATION = 30.0
#: MP3's highest bitrate, so duration x this is an upper bound on a file's size.
MP3_MAX_BYTES_PER_SECOND = 320_000 / 8
#: Per-file guess when the CSV gives neither sizes nor durations (3.5 min at 320 kbps).
UNKNOWN_FILE_BYTES = 8_400_000
#: GTZAN comes whole: its ~1.2 GB archive and the extracted copy exist together for a moment.
GTZAN_PEAK_BYTES = 2_600_000_000
#: Left free on the target disk after a download (the feature cache and runs need room too).
DISK_HEADROOM_BYTES = 1 << 30
_SIZE_COLUMNS = ("size", "filesize", "file_size", "size_bytes", "bytes")

CREDENTIALS_HELP = (
    "Kaggle credentials not found. Create an API token at https://www.kaggle.com/settings "
    "(API > Generate New Token), then either (1) on Colab, add it as the secret "
    "KAGGLE_API_TOKEN (key icon in the left bar) and let this notebook read it; (2) set the "
    "environment variable KAGGLE_API_TOKEN; or (3) save it in ~/.kaggle/access_token. The "
    "legacy pair KAGGLE_USERNAME/KAGGLE_KEY (environment or Colab secrets) and "
    "~/.kaggle/kaggle.json still work."
)


class DiskSpaceError(RuntimeError):
    """The download would not fit; the message gives the numbers and what to change."""


def kaggle_credentials_source() -> str | None:
    """Find Kaggle credentials and export them for kagglehub; returns where they came from.

    Order, as kagglehub reads them: the ``KAGGLE_API_TOKEN`` environment variable, the token
    file ``~/.kaggle/access_token``, the legacy ``KAGGLE_USERNAME``/``KAGGLE_KEY`` pair, Colab
    secrets (``KAGGLE_API_TOKEN``, or the legacy pair; exported to the environment here so
    every later kagglehub call sees them), and the legacy ``kaggle.json`` (in
    ``KAGGLE_CONFIG_DIR`` when set). Returns ``None`` when there are none (public datasets
    may still download without them).
    """
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    kaggle_dir = Path.home() / ".kaggle"
    if any((kaggle_dir / name).is_file() for name in ("access_token", "access_token.txt")):
        return "access_token"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "environment"
    found = _colab_secrets()
    if found:
        return found
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR") or kaggle_dir)
    if (config_dir / "kaggle.json").is_file():
        return "kaggle.json"
    return None


def _colab_secrets() -> str | None:
    try:
        from google.colab import userdata  # type: ignore[import-not-found]  # Colab only
    except ImportError:
        return None

    def secret(name: str) -> str | None:
        try:
            return userdata.get(name)
        except Exception:  # noqa: BLE001 - not defined, or not shared with this notebook
            return None

    token = secret("KAGGLE_API_TOKEN")
    if token:
        os.environ["KAGGLE_API_TOKEN"] = token
        return "colab-secret KAGGLE_API_TOKEN"
    username, key = secret("KAGGLE_USERNAME"), secret("KAGGLE_KEY")
    if username and key:
        os.environ["KAGGLE_USERNAME"], os.environ["KAGGLE_KEY"] = username, key
        return "colab-secrets KAGGLE_USERNAME/KAGGLE_KEY"
    return None


def kaggle_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """kagglehub's cache folder; with `cache_dir`, point ``KAGGLEHUB_CACHE`` there first.

    kagglehub reads ``KAGGLEHUB_CACHE`` at every download, so setting it here (e.g. to a
    Google Drive folder on Colab) moves everything fetched afterwards.
    """
    if cache_dir is not None:
        os.environ["KAGGLEHUB_CACHE"] = str(Path(cache_dir).expanduser())
    return Path(os.environ.get("KAGGLEHUB_CACHE") or Path.home() / ".cache" / "kagglehub")


def _kagglehub():
    # Imported on use: the CLI's --help must not pay for it, and tests inject a stand-in.
    try:
        import kagglehub
    except ImportError as err:
        raise RuntimeError("kagglehub is not installed: pip install kagglehub") from err
    return kagglehub


def kaggle_download(handle: str, path: str | None = None) -> Path:
    """Download (or reuse kagglehub's cached copy of) a Kaggle dataset or one file of it.

    Parameters
    ----------
    handle : str
        ``owner/name``, or ``owner/name/versions/N`` to pin a version (then a cached file is
        returned without asking Kaggle anything).
    path : str, optional
        One file inside the dataset (e.g. ``fake_songs.csv``); the whole dataset otherwise.

    Returns
    -------
    Path
        The local folder (whole dataset) or file.

    Raises
    ------
    RuntimeError
        kagglehub is missing or the download failed; the message says how to fix credentials.
    """
    kagglehub = _kagglehub()
    found = kaggle_credentials_source()
    log.info("Kaggle credentials: %s", found or "none (trying anonymous download)")
    what = f"{handle}/{path}" if path else handle
    try:
        return Path(kagglehub.dataset_download(handle, path=path) if path
                    else kagglehub.dataset_download(handle))
    except Exception as err:  # noqa: BLE001 - kagglehub raises many types; all mean "no data"
        hint = CREDENTIALS_HELP if found is None else "check the network and the dataset handle"
        raise RuntimeError(f"downloading {what} failed: {err}. {hint}") from err


def pinned_handle(handle: str, downloaded: Path) -> str:
    """`handle` pinned to the version kagglehub stored `downloaded` under, when it says.

    kagglehub keeps files under ``.../versions/<N>/``; asking for later files of that same
    version keeps them consistent with the CSV already read, and skips the version lookup
    (one request per file) when they are cached.
    """
    match = re.search(r"[/\\]versions[/\\](\d+)(?:[/\\]|$)", str(downloaded))
    return f"{handle}/versions/{match.group(1)}" if match else handle


def free_bytes(where: str | os.PathLike) -> int:
    """Free bytes on the disk holding `where` (its nearest existing folder)."""
    path = Path(where).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_disk(needed: int, where: str | os.PathLike, what: str) -> None:
    """Refuse (`DiskSpaceError`) when `needed` bytes plus headroom do not fit at `where`."""
    free = free_bytes(where)
    if needed + DISK_HEADROOM_BYTES > free:
        raise DiskSpaceError(
            f"{what} needs about {_gb(needed)}, but {where} has {_gb(free)} free and "
            f"{_gb(DISK_HEADROOM_BYTES)} is kept free for features and runs. Use a smaller "
            "--limit, free some space, or put the cache on a bigger disk with --cache-dir "
            "(on Colab: a Google Drive folder)."
        )


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _strip_audio_ext(name: str) -> str:
    # Not Path.stem: SONICS names such as "fake_1_chirp-v3.5_0" contain dots.
    path = Path(name)
    return path.stem if path.suffix.lower() in AUDIO_EXTENSIONS else path.name


def _find_file(root: Path, name: str) -> Path:
    if (root / name).is_file():
        return root / name
    hits = sorted(root.rglob(name))
    if not hits:
        raise ManifestError(f"{root}: no {name} found; is this the right dataset folder?")
    return hits[0]


def _truthy(values: pd.Series) -> pd.Series:
    return values.astype(str).str.strip().str.lower().isin(("true", "1", "yes"))


def sonics_table(root: str | os.PathLike, min_duration: float = SONICS_MIN_DURATION,
                 drop_instrumental: bool = False) -> pd.DataFrame:
    """SONICS' ``fake_songs.csv`` with its official filters applied (no audio needed).

    Parameters
    ----------
    root : str or path-like
        The folder holding ``fake_songs.csv``.
    min_duration : float
        Keep songs of at least this many seconds (SONICS' own split code: 30). Songs without
        a duration are dropped too, as SONICS' code does; 0 keeps everything.
    drop_instrumental : bool
        Drop songs flagged ``no_vocal`` (as SONICS' split code does). Off by default: GTZAN,
        the default human class, is partly instrumental (classical, jazz), so dropping only
        the AI instrumentals would make "has vocals" a cue for the AI label.

    Returns
    -------
    pd.DataFrame
        The kept rows (all columns as strings); ``attrs["filtered"]`` counts what each
        filter removed.
    """
    root = Path(root)
    csv = _find_file(root, SONICS_FAKE_CSV)
    fake = pd.read_csv(csv, dtype=str, keep_default_na=False)
    for column in ("filename", "split"):
        if column not in fake.columns:
            raise ManifestError(f"{csv}: no '{column}' column; found {list(fake.columns)}")
    removed = {}
    if min_duration > 0:
        if "duration" in fake.columns:
            seconds = pd.to_numeric(fake["duration"], errors="coerce")
            keep = seconds >= min_duration  # NaN compares False: unknown lengths go too
            removed[f"shorter than {min_duration:g} s"] = int((~keep).sum())
            fake = fake[keep]
        else:
            log.warning("%s: no duration column; songs shorter than %g s cannot be left out",
                        csv, min_duration)
    if drop_instrumental:
        if "no_vocal" in fake.columns:
            instrumental = _truthy(fake["no_vocal"])
            removed["instrumental (no_vocal)"] = int(instrumental.sum())
            fake = fake[~instrumental]
        else:
            log.warning("%s: no no_vocal column; instrumental songs cannot be left out", csv)
    fake = fake.reset_index(drop=True)
    fake.attrs["filtered"] = removed
    return fake


def sonics_manifest(root: str | os.PathLike, human_audio_dir: str | os.PathLike | None = None,
                    min_duration: float = SONICS_MIN_DURATION, drop_instrumental: bool = False,
                    only_present: bool = True) -> pd.DataFrame:
    """Manifest of SONICS' AI songs, plus its human songs where they were fetched.

    Parameters
    ----------
    root : str or path-like
        The dataset folder (what kagglehub returns), holding ``fake_songs.csv``.
    human_audio_dir : str or path-like, optional
        Folder of fetched human songs named ``<youtube_id>.<ext>`` (see
        `fetch_youtube_audio`); songs not there are left out.
    min_duration, drop_instrumental
        SONICS' filters, see `sonics_table`.
    only_present : bool
        Keep only songs whose MP3 is under `root` (found anywhere below it). ``False`` lists
        every song at the path kagglehub will put it, ``root/fake_songs/<filename>.mp3``, to
        choose a subset before downloading it.

    Returns
    -------
    pd.DataFrame
        A validated manifest; extra columns ``algorithm`` (e.g. ``chirp-v3.5``), ``duration``
        and ``no_vocal``. ``split`` is SONICS' own; ``source`` is ``sonics-suno`` /
        ``sonics-udio`` (``sonics-youtube`` for fetched human songs).
    """
    root = Path(root)
    fake = sonics_table(root, min_duration, drop_instrumental)
    present = {_strip_audio_ext(p.name): p for p in list_audio(root)} if only_present else {}
    rows, missing = [], 0
    for rec in fake.to_dict("records"):
        stem = _strip_audio_ext(rec["filename"])
        path = present.get(stem) if only_present else root / SONICS_FAKE_DIR / f"{stem}.mp3"
        if path is None:
            missing += 1
            continue
        rows.append(_sonics_row(rec, path, "ai", f"sonics-{rec.get('source') or 'ai'}"))
    if missing:
        log.warning("%d fake_songs.csv rows have no audio file under %s", missing, root)
    if human_audio_dir is not None:
        real = pd.read_csv(_find_file(root, SONICS_REAL_CSV), dtype=str, keep_default_na=False)
        fetched = {_strip_audio_ext(p.name): p for p in list_audio(human_audio_dir)}
        id_column = "youtube_id" if "youtube_id" in real.columns else "filename"
        for rec in real.to_dict("records"):
            path = fetched.get(_strip_audio_ext(rec[id_column]))
            if path is not None:
                rows.append(_sonics_row(rec, path, "human", "sonics-youtube"))
    if not rows:
        raise ManifestError(f"{root}: no SONICS audio found (expected fake_songs/*.mp3)")
    return validate_manifest(pd.DataFrame(rows), name=str(root))


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
        "no_vocal": rec.get("no_vocal", ""),
    }


def gtzan_fault_filtered() -> pd.DataFrame:
    """GTZAN's artist-disjoint fault-filtered partition: ``track_id``, ``split`` (930 rows).

    Source and licence: ``helpers/data/README.md``.
    """
    data = importlib.resources.files("helpers") / "data" / "gtzan_fault_filtered.csv"
    with data.open("r", encoding="utf-8") as handle:
        return pd.read_csv(handle, dtype=str)


def gtzan_left_out() -> list[str]:
    """The 70 GTZAN clips the fault-filtered partition leaves out (repeats, mislabellings)."""
    genres = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop",
              "reggae", "rock")
    kept = set(gtzan_fault_filtered()["track_id"])
    return [f"{g}.{i:05d}" for g in genres for i in range(100) if f"{g}.{i:05d}" not in kept]


def gtzan_manifest(root: str | os.PathLike, split: str = "fault-filtered",
                   fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> pd.DataFrame:
    """Manifest of GTZAN's human clips with their genres.

    Parameters
    ----------
    root : str or path-like
        The dataset folder (what kagglehub returns) holding ``Data/genres_original`` (or
        ``genres_original`` / ``genres`` directly).
    split : {"fault-filtered", "hash"}
        ``fault-filtered`` (default): the published artist-disjoint partition (443 / 197 /
        290 clips), leaving out the 70 clips it excludes as repeats or mislabellings
        (`gtzan_left_out`), so no artist and no repeated recording spans two splits.
        ``hash``: all 1,000 clips, split by a hash of the file name in `fractions`; artists
        then cross splits.
    fractions : tuple of float
        Train/val/test shares for ``split="hash"``.

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
    if split == "hash":
        frame["split"] = assign_splits(frame["track_id"], fractions, salt="gtzan")
    elif split == "fault-filtered":
        splits = gtzan_fault_filtered().set_index("track_id")["split"]
        frame["split"] = frame["track_id"].map(splits)
        left_out = frame["split"].isna()
        if left_out.any():
            log.info("GTZAN: %d clip(s) left out as repeats or mislabellings (fault-filtered "
                     "partition), e.g. %s", int(left_out.sum()),
                     ", ".join(frame.loc[left_out, "track_id"].head(3)))
        frame = frame[~left_out]
    else:
        raise ValueError(f"split must be 'fault-filtered' or 'hash', got {split!r}")
    return validate_manifest(frame, name=str(root))


def fetch_gtzan() -> Path:
    """Fetch GTZAN whole through kagglehub, after checking the disk; returns its folder.

    Whole rather than file by file: about 1.2 GB in one request, against up to 1,000
    requests, and the balanced subset uses most clips whenever ``--limit`` reaches a few
    hundred.
    """
    owner, name = GTZAN_HANDLE.split("/")
    # kagglehub's cache layout: <cache>/datasets/<owner>/<name>/versions/<N>/
    versions = kaggle_cache_dir() / "datasets" / owner / name / "versions"
    if not (versions.is_dir() and any(versions.iterdir())):
        check_disk(GTZAN_PEAK_BYTES, kaggle_cache_dir(),
                   "GTZAN (the whole ~1.2 GB archive plus its extracted copy)")
    return kaggle_download(GTZAN_HANDLE)


def estimate_bytes(frame: pd.DataFrame) -> tuple[int, str]:
    """Bytes the audio of `frame` takes, and how that number was obtained.

    A size column of the metadata when there is one; else ``duration`` x 320 kbps (the MP3
    maximum, so an upper bound); else a fixed guess per file.
    """
    size_column = next((c for c in _SIZE_COLUMNS if c in frame.columns), None)
    if size_column is not None:
        sizes = pd.to_numeric(frame[size_column], errors="coerce")
        if sizes.notna().all():
            return int(sizes.sum()), f"from the metadata's '{size_column}' column"
    if "duration" in frame.columns:
        seconds = pd.to_numeric(frame["duration"], errors="coerce")
        if seconds.notna().all():
            return (int(seconds.sum() * MP3_MAX_BYTES_PER_SECOND),
                    "estimate: duration x 320 kbps, the MP3 maximum, so an upper bound")
    return (len(frame) * UNKNOWN_FILE_BYTES,
            f"guess: {UNKNOWN_FILE_BYTES / 1e6:.1f} MB per file, no sizes or durations listed")


def fetch_sonics_audio(frame: pd.DataFrame, handle: str, progress: bool = True) -> pd.DataFrame:
    """Download the SONICS MP3s `frame` lists, one file each; returns `frame` with real paths.

    Prints what will be fetched and the disk it needs first, and refuses (`DiskSpaceError`)
    when that does not fit next to the files. Files kagglehub already has are not fetched
    again (with a pinned `handle`, not even asked about), so a re-run resumes. Rows whose
    download fails are left out with a warning; running again retries them.
    """
    is_sonics = (frame["label"] == "ai") & frame["source"].str.startswith("sonics-")
    todo = frame[is_sonics]
    if todo.empty:
        return frame
    missing = todo[[not Path(p).is_file() for p in todo["path"]]]
    need, how = estimate_bytes(missing)
    where = Path(todo["path"].iloc[0]).parent.parent
    if progress:
        print(f"SONICS audio: {len(todo)} files chosen, {len(todo) - len(missing)} already "
              f"downloaded, {len(missing)} to fetch, about {_gb(need)} ({how}); "
              f"{_gb(free_bytes(where))} free at {where}")
    check_disk(need, where, f"SONICS audio ({len(missing)} files, {how})")
    kagglehub = _kagglehub()
    failed: dict[int, str] = {}
    paths = frame["path"].copy()
    for n, (index, path) in enumerate(tqdm(list(todo["path"].items()), desc="SONICS mp3",
                                           disable=not progress, unit="file")):
        rel = f"{SONICS_FAKE_DIR}/{Path(path).name}"
        try:
            paths[index] = str(kagglehub.dataset_download(handle, path=rel))
        except Exception as err:  # noqa: BLE001 - network, quota, missing file: all retryable
            failed[index] = f"{rel}: {err}"
            if len(failed) == n + 1 >= 3:  # nothing has worked: credentials or network
                raise RuntimeError(f"downloading SONICS files fails ({failed[index]}); "
                                   f"{CREDENTIALS_HELP}") from err
    if failed:
        log.warning("%d SONICS file(s) failed to download and are left out (first: %s); run "
                    "the same command again to retry them", len(failed),
                    next(iter(failed.values())))
    out = frame.assign(path=paths).drop(index=list(failed))
    return out.reset_index(drop=True)


# What yt-dlp's error messages mean for a retry. "Blocked" comes first: YouTube words some
# rate limits as "Video unavailable ... try again later".
_YT_NO_JS = ("javascript runtime", "js runtime", "n challenge", "nsig extraction",
             "signature extraction failed")
_YT_BLOCKED = ("not a bot", "try again later", "http error 429", "too many requests",
               "sign in to confirm", "rate-limit", "rate limit", "http error 403", "forbidden",
               "timed out", "timeout", "connection", "unable to download webpage",
               "temporary failure", "name resolution", "network is unreachable")
_YT_GONE = ("video unavailable", "private video", "has been removed", "no longer available",
            "account associated with this video has been terminated", "does not exist",
            "copyright", "members-only", "available to this channel's members")
YOUTUBE_STATUS_COLUMNS = ("youtube_id", "status", "detail", "attempts")


def classify_youtube_error(message: str) -> str:
    """What a yt-dlp failure means: ``no-js``, ``blocked``, ``gone`` or ``failed``.

    ``gone`` (unavailable, private, removed) is permanent. ``blocked`` (bot check, HTTP 429
    or 403, sign-in required, network) and ``failed`` (anything else) are retried on the
    next run. ``no-js``: yt-dlp lacks the JavaScript runtime it needs for YouTube.
    """
    text = message.lower()
    for status, needles in (("no-js", _YT_NO_JS), ("blocked", _YT_BLOCKED),
                            ("gone", _YT_GONE)):
        if any(needle in text for needle in needles):
            return status
    return "failed"


class _YtLog:
    """yt-dlp logger that keeps warnings: the missing-JavaScript-runtime notice is one."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        self.warnings.append(msg)

    def error(self, msg: str) -> None:
        self.warnings.append(msg)


NO_JS_HELP = (
    "yt-dlp needs a JavaScript runtime to read YouTube (deno by default): install it "
    "(curl -fsSL https://deno.land/install.sh | sh, then add ~/.deno/bin to PATH) and "
    "update yt-dlp (pip install -U 'yt-dlp[default]'), or skip SONICS' human songs."
)
BLOCKED_HELP = (
    "YouTube is refusing this machine (bot check, HTTP 429 or sign-in required); datacenter "
    "addresses such as Colab's are often refused. The ids stay queued for the next run; try "
    "later, pass a cookies file exported from a logged-in browser (cookies=...), or run from "
    "a home connection."
)


def _youtube_status(out_dir: Path) -> pd.DataFrame:
    """The status table of earlier runs; ``ok`` rows whose file is gone count as not done."""
    status_csv = out_dir / "status.csv"
    if not status_csv.exists():
        return pd.DataFrame(columns=YOUTUBE_STATUS_COLUMNS)
    table = pd.read_csv(status_csv, dtype=str, keep_default_na=False)
    table = table.reindex(columns=YOUTUBE_STATUS_COLUMNS, fill_value="0")
    fetched = {_strip_audio_ext(p.name) for p in list_audio(out_dir)}
    lost = (table["status"] == "ok") & ~table["youtube_id"].isin(fetched)
    table.loc[lost, "status"] = "failed"
    table.loc[lost, "detail"] = "file missing since the last run"
    return table.drop_duplicates("youtube_id", keep="last")


def _try_youtube(ydl, log_sink: _YtLog, youtube_id: str, retries: int,
                 backoff_s: float) -> tuple[str, str, int]:
    """Fetch one id with retries for blocked/failed; returns (status, detail, attempts)."""
    for attempt in range(retries + 1):
        log_sink.warnings.clear()
        try:
            ydl.download([f"https://www.youtube.com/watch?v={youtube_id}"])
            return "ok", "", attempt + 1
        except Exception as err:  # noqa: BLE001 - yt-dlp raises DownloadError and others
            detail = " | ".join([str(err), *log_sink.warnings])[:300]
            status = classify_youtube_error(detail)
        if status in ("gone", "no-js") or attempt == retries:
            return status, detail, attempt + 1
        time.sleep(backoff_s * 2 ** attempt)
    raise AssertionError("unreachable")


def fetch_youtube_audio(
    real_songs_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    limit: int | None = None,
    seconds: float = 30.0,
    sleep_s: float = 2.0,
    retries: int = 2,
    backoff_s: float = 10.0,
    max_blocked: int = 3,
    cookies: str | os.PathLike | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Fetch SONICS' human songs from YouTube with yt-dlp (optional; resumable).

    ``out_dir/status.csv`` records each id as ``ok``, ``gone`` (unavailable, private,
    removed: never tried again), ``blocked`` (bot check, HTTP 429, sign-in, network) or
    ``failed``; blocked and failed ids are tried again on the next run, so one refused run
    marks nothing dead. Within a run, blocked and failed ids are retried `retries` times with
    exponential backoff; after `max_blocked` blocked ids in a row the run stops (YouTube is
    refusing this machine) with a message. Only the first `seconds` are kept, as MP3.

    Parameters
    ----------
    real_songs_csv : str or path-like
        SONICS' ``real_songs.csv`` (column ``youtube_id``).
    out_dir : str or path-like
        Where ``<youtube_id>.mp3`` files and ``status.csv`` go.
    limit : int, optional
        Stop once this many songs are fetched in total (this run and earlier ones).
    seconds : float
        Seconds kept from the start of each song.
    sleep_s : float
        Pause between ids (rate limit).
    retries, backoff_s : int, float
        Extra tries for a blocked or failed id, waiting ``backoff_s * 2**k`` before try k+1.
    max_blocked : int
        Blocked ids in a row that end the run.
    cookies : str or path-like, optional
        A Netscape cookies file of a logged-in browser, for YouTube's sign-in checks.
    progress : bool

    Returns
    -------
    pd.DataFrame
        The status table (``youtube_id``, ``status``, ``detail``, ``attempts``).

    Raises
    ------
    RuntimeError
        yt-dlp or ffmpeg is missing, or yt-dlp lacks the JavaScript runtime YouTube needs.
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
    if shutil.which("deno") is None:
        log.warning("no deno on PATH: recent yt-dlp versions need it for YouTube. %s",
                    NO_JS_HELP)
    records = {r["youtube_id"]: r for r in _youtube_status(out_dir).to_dict("records")}
    todo = [y for y in dict.fromkeys(real["youtube_id"])
            if y and records.get(y, {}).get("status") not in ("ok", "gone")]
    sink = _YtLog()
    options = {
        "format": "bestaudio/best",
        "outtmpl": str(out_dir / "%(id)s.%(ext)s"),
        "quiet": True,
        "noprogress": True,
        "logger": sink,
        "download_ranges": yt_dlp.utils.download_range_func(None, [(0, seconds)]),
        "postprocessors": [{"key": "FFmpegExtractAudio", "preferredcodec": "mp3"}],
    }
    if cookies is not None:
        options["cookiefile"] = str(cookies)
    try:
        with yt_dlp.YoutubeDL(options) as ydl:
            _youtube_loop(ydl, sink, todo, records, out_dir, limit, sleep_s, retries,
                          backoff_s, max_blocked, progress)
    finally:
        table = pd.DataFrame(list(records.values()), columns=YOUTUBE_STATUS_COLUMNS)
        write_csv(out_dir / "status.csv", table)
    return table


def _youtube_loop(ydl, sink: _YtLog, todo: list[str], records: dict, out_dir: Path,
                  limit: int | None, sleep_s: float, retries: int, backoff_s: float,
                  max_blocked: int, progress: bool) -> None:
    """The fetch loop of `fetch_youtube_audio`; updates `records` in place."""
    n_ok = sum(r["status"] == "ok" for r in records.values())
    streak = 0
    for n, youtube_id in enumerate(tqdm(todo, desc="yt-dlp", disable=not progress)):
        if limit is not None and n_ok >= limit:
            break
        status, detail, attempts = _try_youtube(ydl, sink, youtube_id, retries, backoff_s)
        before = int(records.get(youtube_id, {}).get("attempts") or 0)
        records[youtube_id] = {"youtube_id": youtube_id,
                               "status": "blocked" if status == "no-js" else status,
                               "detail": detail, "attempts": str(before + attempts)}
        n_ok += status == "ok"
        if status == "no-js":
            raise RuntimeError(f"{NO_JS_HELP} (yt-dlp said: {detail})")
        streak = streak + 1 if status == "blocked" else 0
        if streak >= max_blocked:
            log.warning("%s %d id(s) not tried yet; last error: %s", BLOCKED_HELP,
                        len(todo) - n - 1, detail)
            return
        if n % 20 == 19:  # a kill loses at most 20 statuses, and those are simply retried
            write_csv(out_dir / "status.csv",
                      pd.DataFrame(list(records.values()), columns=YOUTUBE_STATUS_COLUMNS))
        time.sleep(sleep_s)


def download(dataset: str, out_dir: str | os.PathLike, limit: int | None = None,
             fetch_human: bool = False, seed: int = 0, *,
             cache_dir: str | os.PathLike | None = None,
             min_duration: float = SONICS_MIN_DURATION, drop_instrumental: bool = False,
             gtzan_split: str = "fault-filtered", youtube_cookies: str | None = None,
             progress: bool = True) -> Path:
    """Fetch a dataset, only the chosen files, and write its manifest (`download` command).

    SONICS: its CSVs come first; the subset is chosen from them (SONICS' filters, then
    `helpers.datasets.balance`), the disk it needs is printed and checked, and only those
    MP3s are fetched. GTZAN: fetched whole after a disk check.

    Parameters
    ----------
    dataset : {"sonics", "gtzan", "sonics+gtzan"}
        ``sonics+gtzan`` pairs SONICS' AI songs with GTZAN as the human class (the default,
        since SONICS' human songs are only YouTube ids).
    out_dir : str or path-like
        Where ``manifest.csv``, ``download.json`` (and fetched YouTube audio) go; the Kaggle
        files stay in kagglehub's cache.
    limit : int, optional
        At most this many training clips per class, val/test in proportion, classes equal
        (see `balance`); ``None`` takes every song (all of SONICS is tens of GB).
    fetch_human : bool
        Also fetch SONICS' human songs with yt-dlp (slow; many ids are gone).
    seed : int
        Seed of the subset; the same seed picks the same files, so a re-run resumes.
    cache_dir : str or path-like, optional
        kagglehub's cache (sets ``KAGGLEHUB_CACHE``), e.g. a Google Drive folder on Colab.
    min_duration, drop_instrumental
        SONICS' filters, see `sonics_table`.
    gtzan_split : {"fault-filtered", "hash"}
        See `gtzan_manifest`.
    youtube_cookies : str, optional
        Cookies file for `fetch_youtube_audio`.
    progress : bool
        Print the plan and show progress bars.

    Returns
    -------
    Path
        The manifest written.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; use {', '.join(DATASETS)}")
    out_dir = Path(out_dir)
    cache = kaggle_cache_dir(cache_dir)
    if progress:
        print(f"kagglehub cache: {cache} ({_gb(free_bytes(cache))} free)")
    parts, sonics_handle, info = [], SONICS_HANDLE, {}
    if "gtzan" in dataset:
        parts.append(gtzan_manifest(fetch_gtzan(), split=gtzan_split))
    if "sonics" in dataset:
        fake_csv = kaggle_download(SONICS_HANDLE, SONICS_FAKE_CSV)
        sonics_handle = pinned_handle(SONICS_HANDLE, fake_csv)
        human_dir = None
        if fetch_human:
            real_csv = kaggle_download(sonics_handle, SONICS_REAL_CSV)
            human_dir = out_dir / "sonics_human"
            fetch_youtube_audio(real_csv, human_dir, limit=None if limit is None else 2 * limit,
                                cookies=youtube_cookies, progress=progress)
        table = sonics_table(fake_csv.parent, min_duration, drop_instrumental)
        info["sonics_filtered_out"] = table.attrs["filtered"]
        if progress:
            print(f"SONICS: {len(table)} AI songs after its filters "
                  f"({', '.join(f'{n} {why}' for why, n in table.attrs['filtered'].items())})")
        parts.append(sonics_manifest(fake_csv.parent, human_dir, min_duration,
                                     drop_instrumental, only_present=False))
    frame = balance(combine(parts), per_class=limit, seed=seed)
    frame = fetch_sonics_audio(frame, sonics_handle, progress=progress)
    path = write_manifest(frame, out_dir / "manifest.csv")
    counts = frame.groupby(["split", "label"]).size()
    write_json(out_dir / "download.json", {
        "dataset": dataset, "limit": limit, "seed": seed, "fetch_human": fetch_human,
        "sonics_handle": sonics_handle, "min_duration": min_duration,
        "drop_instrumental": drop_instrumental, "gtzan_split": gtzan_split, "n": len(frame),
        "counts": {f"{s}/{lab}": int(n) for (s, lab), n in counts.items()}, **info})
    return path
