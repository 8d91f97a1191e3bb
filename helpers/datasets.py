"""Manifests: one table format for every data source.

A manifest is a CSV with at least ``path,label,split`` (``label`` is ``ai`` or ``human``,
``split`` is ``train``/``val``/``test``) and optional ``track_id,title,artist,genre,source``
(plus any extra columns, e.g. SONICS' ``algorithm``). Relative paths are relative to the CSV's
folder. SONICS, GTZAN, the demo corpus and a user's own folder all become this one table, so
everything downstream (feature cache, training, index) reads a single format.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.audio import AUDIO_EXTENSIONS
from helpers.io import write_csv

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "label", "split")
OPTIONAL_COLUMNS = ("track_id", "title", "artist", "genre", "source")
MANIFEST_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
LABELS = ("ai", "human")
SPLITS = ("train", "val", "test")
# Spellings other datasets use for the same labels and splits.
_LABEL_ALIASES = {"fake": "ai", "real": "human", "synthetic": "ai", "1": "ai", "0": "human"}
_SPLIT_ALIASES = {"valid": "val", "validation": "val", "dev": "val"}

SONICS_HANDLE = "awsaf49/sonics-dataset"
GTZAN_HANDLE = "andradaolteanu/gtzan-dataset-music-genre-classification"


class ManifestError(ValueError):
    """A manifest that cannot be used; the message says which file, what is wrong, and the fix."""


def load_manifest(
    source: str | os.PathLike | pd.DataFrame, check_files: bool = False,
    strict_artists: bool = False, folder_label: str | None = None,
) -> pd.DataFrame:
    """Load and validate a manifest from a CSV, a folder, or a DataFrame.

    Parameters
    ----------
    source : str, path-like or DataFrame
        A manifest CSV; a folder holding ``manifest.csv``; or a folder with ``ai/`` and
        ``human/`` subfolders of audio (splits are then assigned deterministically, see
        `folder_manifest`).
    check_files : bool
        Also require every path to exist (otherwise missing files surface, logged and skipped,
        when the audio is read).
    strict_artists : bool
        Refuse an ``artist`` that has rows in more than one split; by default it is a warning
        (see Notes).
    folder_label : str, optional
        ``"ai"`` or ``"human"``: a plain folder of audio (no ``manifest.csv``, no ``ai/`` or
        ``human/``) is then read as files of that label (``helpers twins`` reads a folder of
        the user's own music as human). Without it such a folder is an error.

    Returns
    -------
    pd.DataFrame
        Columns ``path`` (absolute), ``label``, ``split``, ``track_id``, ``title``, ``artist``,
        ``genre``, ``source`` and any extra columns of the input, in input order.

    Raises
    ------
    ManifestError
        Missing columns, unknown labels or splits, duplicate paths, an empty manifest, a
        ``track_id`` in more than one split, (with `strict_artists`) an artist in more than
        one split, or (with `check_files`) paths that do not exist.

    Notes
    -----
    A ``track_id`` may repeat across different paths: excerpts of one song share it, and
    training keeps them on one side of the train/val split. The same path twice is an error,
    and so is a ``track_id`` given in two splits: a test score on excerpts of songs the model
    trained on measures memory, not detection. Rows without a ``track_id`` get their file
    name's stem, which is not checked (``01.wav`` of two albums is not one song).

    An artist in two splits lets a model score by recognising the artist's sound. The demo
    corpus and SONICS (whose AI "artist" is the generator) have such artists, so by default
    this is a warning; `strict_artists` makes it an error.

    Files whose names are not valid UTF-8 (e.g. Latin-1 bytes on Linux) are left out with a
    warning naming each one, because the cache, run and index tables are UTF-8 CSV files;
    rename them to UTF-8 to include them.
    """
    checks = {"check_files": check_files, "strict_artists": strict_artists}
    if isinstance(source, pd.DataFrame):
        return validate_manifest(source, base_dir=Path.cwd(), name="<DataFrame>", **checks)
    source = Path(source).expanduser()
    if source.is_dir():
        if (source / "manifest.csv").is_file():
            source = source / "manifest.csv"
        elif (source / "ai").is_dir() or (source / "human").is_dir():
            return validate_manifest(folder_manifest(source), base_dir=source, name=str(source),
                                     **checks)
        elif folder_label is not None:
            return validate_manifest(folder_manifest(source, folder_label), base_dir=source,
                                     name=str(source), **checks)
        else:
            raise ManifestError(
                f"{source}: a folder needs either manifest.csv or ai/ and human/ subfolders "
                "of audio files"
            )
    if not source.is_file():
        raise ManifestError(f"{source}: manifest not found")
    try:
        frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise ManifestError(f"{source}: not a readable CSV ({err})") from err
    return validate_manifest(frame, base_dir=source.parent, name=str(source), **checks)


def validate_manifest(
    frame: pd.DataFrame,
    base_dir: str | os.PathLike = ".",
    name: str = "manifest",
    check_files: bool = False,
    strict_artists: bool = False,
) -> pd.DataFrame:
    """Check a manifest table and return it normalised (see `load_manifest`)."""
    frame = frame.copy()
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"{name}: missing column(s) {missing}; found {list(frame.columns)}. A manifest "
            "needs path,label,split (label ai|human, split train|val|test)"
        )
    if frame.empty:
        raise ManifestError(f"{name}: the manifest has no rows")
    frame = frame.astype({c: str for c in REQUIRED_COLUMNS})
    frame["label"] = _normalise(frame["label"], _LABEL_ALIASES)
    frame["split"] = _normalise(frame["split"], _SPLIT_ALIASES)
    _check_values(frame, "label", LABELS, name)
    _check_values(frame, "split", SPLITS, name)
    frame = _resolve_paths(frame, Path(base_dir), name)
    for column in OPTIONAL_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
        frame[column] = frame[column].fillna("").astype(str)
    _check_split_leaks(frame, name, strict_artists)
    empty_ids = frame["track_id"] == ""
    frame.loc[empty_ids, "track_id"] = [Path(p).stem for p in frame.loc[empty_ids, "path"]]
    if check_files:
        absent = [p for p in frame["path"] if not os.path.exists(p)]
        if absent:
            raise ManifestError(
                f"{name}: {len(absent)} path(s) do not exist, e.g. {absent[0]}; fix the paths "
                "(relative paths are relative to the manifest's folder)"
            )
    return frame.reset_index(drop=True)


def _resolve_paths(frame: pd.DataFrame, base: Path, name: str) -> pd.DataFrame:
    """Absolute, normalised paths; rows with non-UTF-8 names left out; empty or twice refused."""
    frame["path"] = [
        os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p))
        for p in frame["path"].str.strip()
    ]
    if (frame["path"] == os.path.normpath(base)).any():
        raise ManifestError(f"{name}: some rows have an empty path")
    undecodable = frame["path"].map(_not_utf8)
    if undecodable.any():
        for path in frame.loc[undecodable, "path"]:
            log.warning("%s: file name is not valid UTF-8, left out (rename it to UTF-8, e.g. "
                        "with convmv)", path.encode("utf-8", "backslashreplace").decode())
        frame = frame[~undecodable]
        if frame.empty:
            raise ManifestError(f"{name}: no rows left after leaving out file names that are "
                                "not valid UTF-8; rename the files")
    dupes = frame["path"][frame["path"].duplicated()]
    if len(dupes):
        raise ManifestError(
            f"{name}: {len(dupes)} duplicate path(s), e.g. {dupes.iloc[0]}; each file once"
        )
    return frame


def _split_crossings(frame: pd.DataFrame, column: str) -> str:
    """Values of `column` (non-empty) with rows in more than one split, described; "" if none.

    Rows are numbered as lines of the CSV (the header is line 1).
    """
    given = frame[frame[column] != ""]
    n_splits = given.groupby(column)["split"].nunique()
    crossing = n_splits.index[n_splits > 1]
    if crossing.empty:
        return ""
    examples = []
    for value in crossing[:3]:
        rows = given[given[column] == value]
        where = "; ".join(f"{split}: row(s) {', '.join(str(i + 2) for i in group.index[:3])}"
                          for split, group in rows.groupby("split"))
        examples.append(f"{value!r} ({where})")
    return f"{len(crossing)} {column}(s) in more than one split, e.g. {', '.join(examples)}"


#: Artist-crossing warnings already given in this process.
_WARNED: set[str] = set()


def _check_split_leaks(frame: pd.DataFrame, name: str, strict_artists: bool) -> None:
    """Refuse a track in two splits; an artist in two splits too when asked, else warn."""
    leak = _split_crossings(frame, "track_id")
    if leak:
        raise ManifestError(
            f"{name}: {leak}. Rows of one track must share a split, or the test measures "
            "memory of the training songs; give each track one split (e.g. "
            "helpers.datasets.assign_splits(frame['track_id']))"
        )
    leak = _split_crossings(frame, "artist")
    if leak and strict_artists:
        raise ManifestError(
            f"{name}: {leak}. Give each artist one split (e.g. "
            "helpers.datasets.assign_splits(frame['artist'])), or pass strict_artists=False "
            "to accept it"
        )
    if leak and leak not in _WARNED:
        _WARNED.add(leak)  # once per process, not again at every stage that loads it
        log.warning("%s: %s; a model may learn to recognise those artists, so the test score "
                    "can be optimistic (strict_artists=True refuses such a manifest)", name, leak)


def _not_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _normalise(values: pd.Series, aliases: dict[str, str]) -> pd.Series:
    cleaned = values.str.strip().str.lower()
    return cleaned.map(lambda v: aliases.get(v, v))


def _check_values(frame: pd.DataFrame, column: str, allowed: Iterable[str], name: str) -> None:
    bad = frame.loc[~frame[column].isin(allowed), column]
    if len(bad):
        raise ManifestError(
            f"{name}: unknown {column} value(s) {sorted(set(bad))[:5]} in {len(bad)} row(s), "
            f"first at row {bad.index[0] + 2}; allowed: {', '.join(allowed)}"
        )


def split_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Clips per split and label, for a quick look at a manifest."""
    return frame.groupby(["split", "label"]).size().unstack(fill_value=0)


def manifest_fingerprint(frame: pd.DataFrame) -> str:
    """SHA-1 of the sorted (path, label, split) rows: identifies the data a run saw."""
    rows = sorted(zip(frame["path"], frame["label"], frame["split"], strict=True))
    digest = hashlib.sha1()
    for row in rows:
        digest.update("\t".join(row).encode() + b"\n")
    return digest.hexdigest()


def assign_splits(
    keys: Iterable[str], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), salt: str = ""
) -> list[str]:
    """Deterministic train/val/test split from a hash of each key.

    Hashing (rather than shuffling) keeps a file's split fixed when files are added or removed,
    and lets one song's excerpts share a split when they share a key (e.g. a track id).
    """
    edges = np.cumsum(fractions) / np.sum(fractions)
    out = []
    for key in keys:
        key_bytes = f"{salt}{key}".encode("utf-8", "surrogateescape")  # non-UTF-8 names too
        h = int(hashlib.sha1(key_bytes).hexdigest()[:8], 16) / 0xFFFFFFFF
        out.append(SPLITS[int(np.searchsorted(edges, h, side="right").clip(max=2))])
    return out


def list_audio(folder: str | os.PathLike) -> list[Path]:
    """Audio files under `folder`, recursively, sorted; hidden files skipped."""
    folder = Path(folder)
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


def folder_manifest(folder: str | os.PathLike, label: str | None = None) -> pd.DataFrame:
    """Manifest for a folder with ``ai/`` and ``human/`` subfolders of audio, or (with
    `label`) for a plain folder whose audio files all have that label.

    A file's split comes from a ``train``/``val``/``test`` folder on its path when there is
    one (``ai/train/x.wav``), otherwise from a hash of its path (70/15/15). A folder between
    the label (or the plain folder) and the file (``human/jazz/x.wav``) becomes its genre.
    """
    folder = Path(folder)
    if label is not None and label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    roots = {label: folder} if label else {lab: folder / lab for lab in LABELS}
    rows = []
    for lab, root in roots.items():
        for path in list_audio(root):
            rel = path.relative_to(root)
            parts = [p.lower() for p in rel.parts[:-1]]
            split = next((_SPLIT_ALIASES.get(p, p) for p in parts
                          if _SPLIT_ALIASES.get(p, p) in SPLITS), "")
            genre = next((p for p in rel.parts[:-1]
                          if _SPLIT_ALIASES.get(p.lower(), p.lower()) not in SPLITS), "")
            rows.append({"path": str(path.relative_to(folder)), "label": lab, "split": split,
                         "track_id": f"{lab}/{rel.with_suffix('').as_posix()}",
                         "genre": genre, "source": folder.name})
    if not rows:
        where = "in it" if label else "under ai/ or human/"
        raise ManifestError(f"{folder}: no audio files {where} "
                            f"(looked for {', '.join(AUDIO_EXTENSIONS)})")
    frame = pd.DataFrame(rows)
    unsplit = frame["split"] == ""
    frame.loc[unsplit, "split"] = assign_splits(frame.loc[unsplit, "track_id"])
    return frame


def write_manifest(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a manifest atomically, storing paths relative to its folder where possible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = frame.copy()
    base = path.parent.resolve()

    def rel(p: str) -> str:
        try:
            return Path(p).resolve().relative_to(base).as_posix()
        except ValueError:
            return p

    out["path"] = [rel(p) for p in out["path"]]
    write_csv(path, out)
    return path


def combine(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate manifests (e.g. SONICS AI songs + GTZAN human songs) and re-validate."""
    return validate_manifest(pd.concat(list(frames), ignore_index=True), name="combined")


def balance(frame: pd.DataFrame, per_class: int | None = None, seed: int = 0,
            stratify: str | None = "source") -> pd.DataFrame:
    """At most `per_class` training clips per class, every split with equal classes.

    ``train`` keeps ``min(per_class, clips of the smaller class)`` clips of each class. ``val``
    and ``test`` keep, per class, the training count times the larger of the two classes' own
    split-to-train ratios (so a source with a small validation split does not starve it),
    capped by what the smaller class has there: every split ends with as many clips of each
    class as the data allows. When a class cannot fill its quota a warning names it.

    Parameters
    ----------
    frame : pd.DataFrame
        A validated manifest.
    per_class : int, optional
        The training quota per class; ``None`` returns `frame` unchanged (all clips, classes
        as unequal as the sources are).
    seed : int
        Seed of the draw; the same seed and table give the same subset, so an interrupted
        download resumes the same files.
    stratify : str, optional
        Column whose groups (e.g. ``source``: Suno vs Udio, GTZAN vs YouTube) keep their
        shares within a class; ``None`` draws uniformly.

    Returns
    -------
    pd.DataFrame
        The chosen rows, in their original order.
    """
    if per_class is None:
        return frame
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    counts = frame.groupby(["split", "label"]).size().unstack(fill_value=0)
    counts = counts.reindex(index=list(SPLITS), fill_value=0)
    targets = _split_targets(counts, per_class)
    rng = np.random.default_rng(seed)
    keep = []
    for (split, _label), group in frame.groupby(["split", "label"], sort=True):
        keep.extend(_stratified_sample(group, targets[split], stratify, rng))
    return frame.loc[sorted(keep)].reset_index(drop=True)


def _split_targets(counts: pd.DataFrame, per_class: int) -> dict[str, int]:
    """Clips per class in each split (see `balance`); warns when a class limits a split."""
    train = counts.loc["train"]
    n_train = int(min(per_class, train.min()))
    targets = {"train": n_train}
    if train.min() < per_class:
        _warn_short("train", counts.loc["train"], per_class)
    for split in ("val", "test"):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = (counts.loc[split] / train.replace(0, np.nan)).fillna(0.0)
        wanted = int(round(n_train * float(ratios.max()))) if len(ratios) else 0
        available = int(counts.loc[split].min())
        if available < wanted:
            _warn_short(split, counts.loc[split], wanted)
        targets[split] = min(wanted, available)
    return targets


def _warn_short(split: str, available: pd.Series, wanted: int) -> None:
    smaller = available.idxmin()
    others = ", ".join(str(label) for label in available.index if label != smaller)
    log.warning(
        "%s: class '%s' has only %d clip(s), fewer than the %d wanted; %s cut to %d as well "
        "so the classes stay equal", split, smaller, int(available.min()), wanted,
        others or "no other class", int(available.min()),
    )


def _stratified_sample(group: pd.DataFrame, n: int, stratify: str | None,
                       rng: np.random.Generator) -> list:
    """Index labels of `n` rows of `group`, each `stratify` group in proportion to its size."""
    if n >= len(group):
        return list(group.index)
    if stratify is None or stratify not in group.columns:
        return list(rng.choice(group.index.to_numpy(), size=n, replace=False))
    sizes = group.groupby(stratify, sort=True).size()
    exact = sizes / sizes.sum() * n
    quota = np.floor(exact).astype(int)
    # Largest remainders get the clips that flooring left over.
    leftover = n - int(quota.sum())
    order = (exact - quota).sort_values(ascending=False, kind="stable").index[:leftover]
    quota[order] += 1
    chosen = []
    for value, k in quota.items():
        rows = group.index[group[stratify] == value].to_numpy()
        chosen.extend(rng.choice(rows, size=int(k), replace=False))
    return chosen
