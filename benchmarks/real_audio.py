"""Fetch real recorded music offline from Debian's archive and write a manifest for it.

SONICS and GTZAN cannot be downloaded on every machine, but Debian ships game soundtracks:
produced, human-made recordings under free licences (see ``/work/shared/REAL_AUDIO.md``). This
script downloads the ``.deb`` packages with ``apt-get download`` (no install), unpacks them with
``dpkg -x``, and writes a manifest in the project's format next to the audio::

    <out>/debs/<package>_<version>_all.deb     downloaded packages (kept, so re-runs skip them)
    <out>/unpacked/<package>/...               the unpacked package tree; each folder of
                                               tracks gets a copy of the package's licence
                                               (usr/share/doc/<package>/copyright); reused
                                               only if unpacked from the same .deb
    <out>/manifest.csv                         path,label,split,track_id,title,artist,genre,
                                               source (+ seconds: track length), for the
                                               default packages; any other set of packages
                                               gets its own manifest-<hash>.csv (`manifest_path`)

Every track is labelled ``human``. A package is one composer or small team, so ``artist``,
``genre`` and ``source`` are all the package name, and the split is assigned per package (never
one package on both sides), so a model scored on ``test`` is scored on an unseen "artist":

* ``train``: extremetuxracer-data, widelands-data (only with --with-widelands)
* ``val``:   lincity-ng-data
* ``test``:  xmoto-data

(``main`` prints the tracks and minutes per package; the benchmarks record what they used.)

Other packages get a split from a hash of their name. The audio is not committed (the default
``--out`` is git-ignored); this script rebuilds it. Run::

    python -m benchmarks.real_audio
    python -m benchmarks.real_audio --with-widelands

Other benchmarks call `fetch_real_audio` directly.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.provenance import prepare  # noqa: E402
from helpers.datasets import MANIFEST_COLUMNS  # noqa: E402
from helpers.io import file_lock, write_bytes, write_csv  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "_work" / "real_audio"
DEFAULT_PACKAGES = ("xmoto-data", "extremetuxracer-data", "lincity-ng-data")
WIDELANDS = "widelands-data"
#: Audio the soundtrack packages ship (warzone2100-music is Ogg/Opus).
AUDIO_SUFFIXES = (".ogg", ".opus")

#: Split of each known package (see the module docstring for why it is per package).
PACKAGE_SPLITS = {
    "extremetuxracer-data": "train",
    WIDELANDS: "train",
    "lincity-ng-data": "val",
    "xmoto-data": "test",
}


class FetchError(RuntimeError):
    """A package that could not be downloaded or unpacked; the message says what to try."""


def _run(cmd: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise FetchError(f"{cmd[0]} not found: this script needs a Debian/Ubuntu system") from err
    except subprocess.CalledProcessError as err:
        raise FetchError(f"{' '.join(cmd)} failed ({err.returncode}): {err.stderr.strip()}") \
            from err


def _download(package: str, debs: Path) -> Path:
    """The package's .deb in `debs`, downloading it (after one ``apt-get update``) if absent."""
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    # Root downloads unsandboxed; naming the user keeps apt from warning about it.
    download = ["apt-get", "download", "-o", "APT::Sandbox::User=root", package]
    try:
        _run(download, cwd=debs)
    except FetchError:
        _run(["apt-get", "update"])  # the package lists may be missing or stale
        _run(download, cwd=debs)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        raise FetchError(f"apt-get download {package} left no .deb in {debs}")
    return found[-1]


def _unpack(deb: Path, target: Path) -> dict:
    """``dpkg -x`` into `target`, unless a finished unpack of this very .deb is there."""
    def build() -> None:
        target.mkdir(parents=True)
        _run(["dpkg", "-x", str(deb), str(target)])

    # The .deb's name carries its version; its size guards against a re-download in place.
    return prepare(target, {"deb": deb.name, "bytes": deb.stat().st_size}, build)


def package_versions(out_dir: str | Path, packages: Sequence[str]) -> dict[str, str]:
    """The .deb file (name_version_arch) each package was unpacked from, for results files."""
    debs = Path(out_dir) / "debs"
    return {p: (sorted(debs.glob(f"{p}_*.deb")) or [Path("missing")])[-1].name
            for p in packages}


def manifest_path(out_dir: str | Path, packages: Sequence[str]) -> Path:
    """Where `fetch_real_audio` lists `packages`: one file per package set.

    Benchmarks running side by side fetch different sets into the same work folder; with one
    shared ``manifest.csv`` a process could read the list another had just written.
    """
    if tuple(packages) == DEFAULT_PACKAGES:
        return Path(out_dir) / "manifest.csv"
    key = zlib.crc32(",".join(packages).encode())
    return Path(out_dir) / f"manifest-{key:08x}.csv"


def _split_of(package: str) -> str:
    if package in PACKAGE_SPLITS:
        return PACKAGE_SPLITS[package]
    from helpers.datasets import assign_splits

    return assign_splits([package])[0]


def fetch_real_audio(
    out_dir: str | Path = DEFAULT_OUT, packages: Sequence[str] = DEFAULT_PACKAGES
) -> Path:
    """Download, unpack and list the Ogg/Opus tracks of Debian game-soundtrack packages.

    Idempotent: downloaded ``.deb`` files and finished unpacks are reused.

    Parameters
    ----------
    out_dir : str or Path
        Work folder (created if needed); the manifest's paths are relative to it.
    packages : sequence of str
        Debian package names, e.g. `DEFAULT_PACKAGES` (+ ``"widelands-data"``).

    Returns
    -------
    Path
        The manifest of exactly `packages` (`manifest_path`: ``<out_dir>/manifest.csv`` for
        `DEFAULT_PACKAGES`), columns `MANIFEST_COLUMNS` plus ``seconds`` (track duration),
        one row per track, every label ``human``.

    Raises
    ------
    FetchError
        ``apt-get``/``dpkg`` are missing or failed, or a package holds no Ogg tracks.
    """
    out_dir = Path(out_dir).resolve()
    debs = out_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    rows = []
    for package in packages:
        tree = out_dir / "unpacked" / package
        # Another benchmark may be fetching the same package into this folder right now.
        with file_lock(debs / f"{package}.lock", what="another fetch of this package"):
            deb = _download(package, debs)
            _unpack(deb, tree)
        tracks = sorted(p for p in (tree / "usr").rglob("*") if p.suffix in AUDIO_SUFFIXES)
        if not tracks:
            raise FetchError(f"{package}: no Ogg/Opus files in {deb.name}; is it a music "
                             "package?")
        copyright_src = tree / "usr" / "share" / "doc" / package / "copyright"
        if copyright_src.exists():  # the licence travels with the audio it covers
            licence = copyright_src.read_bytes()
            for folder in {t.parent for t in tracks}:
                write_bytes(folder / "copyright", licence)  # atomic: another fetch may read
        for track in tracks:
            rows.append({
                "path": track.relative_to(out_dir).as_posix(),
                "label": "human",
                "split": _split_of(package),
                "track_id": f"{package}/{track.stem}",
                "title": track.stem,
                "artist": package,
                "genre": package,
                "source": package,
                "seconds": round(sf.info(track).duration, 3),
            })
    manifest = manifest_path(out_dir, packages)
    write_csv(manifest, pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, "seconds"]))
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"work folder (default {DEFAULT_OUT}, git-ignored)")
    parser.add_argument("--with-widelands", action="store_true",
                        help="also fetch widelands-data (381 MB, 31 long tracks)")
    args = parser.parse_args(argv)
    packages = [*DEFAULT_PACKAGES, *([WIDELANDS] if args.with_widelands else [])]
    try:
        manifest = fetch_real_audio(args.out, packages)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    table = pd.read_csv(manifest)
    summary = table.groupby(["source", "split"])["seconds"].agg(["count", "sum"])
    summary["minutes"] = (summary.pop("sum") / 60).round(1)
    print(summary.to_string())
    print(f"{len(table)} tracks, {table['seconds'].sum() / 60:.1f} minutes -> {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
