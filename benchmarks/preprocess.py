"""Front-end speed on full-length songs: our partial read vs. librosa.load of the whole file.

Measures decode + resample + dB mel of the first 30 s of real recorded songs (the Debian
soundtracks of `benchmarks/real_audio.py`, 1.4 to 3.7 minutes long), in three formats:

* ``ogg``: the original Vorbis files (44.1/48 kHz stereo);
* ``mp3``: copies written with soundfile/LAME at ~192 kbit/s CBR (SONICS ships MP3);
* ``wav``: 16-bit PCM copies.

Two pipelines, same output (a 30 s, 16 kHz clip and `mel_db` with ``FrontEndConfig()``):

* ours: ``helpers.audio.load_clip`` (decodes only the first 30 s, then soxr HQ) + ``mel_db``;
* baseline: ``librosa.load(path, sr=16000)`` of the whole file (soxr_hq, librosa's default),
  cut to 30 s, + ``mel_db``: what a straightforward script does;
* baseline_30s: ``librosa.load(path, sr=16000, duration=30)``, which also stops decoding
  after 30 s: the fair baseline for the partial read.

Both run in one process, interleaved per repeat on the same files with a warm page cache, and
the speed-up is the ratio measured in this run (wall and CPU time; CPU time is steadier when
other jobs share the machine). A third timing, ``ours_blas1``, runs ours with OpenBLAS limited
to one thread, because the mel matmul is a small GEMM that threads slow down. Peak RSS is
Linux's high-water mark, reset before each pipeline. Finally ``helpers.cache.preprocess``
(2 workers) runs on ~40 clips to give a parallel throughput and the bytes each cached clip
takes. Results go to
``benchmarks/results/preprocess.json``. Run from the repository root::

    python -m benchmarks.preprocess     # ~3-4 minutes on 2 busy cores, after the download
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import soundfile as sf
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.provenance import prepare, write_result  # noqa: E402
from benchmarks.real_audio import (  # noqa: E402
    DEFAULT_OUT,
    DEFAULT_PACKAGES,
    fetch_real_audio,
    package_versions,
)
from helpers.audio import fit_length, load_clip, mel_db, read_audio, resample  # noqa: E402
from helpers.config import FrontEndConfig  # noqa: E402
from helpers.io import atomic_path  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "preprocess.json"
FORMATS = ("ogg", "mp3", "wav")
MP3_LEVEL = (320 - 192) / (320 - 32)  # libsndfile's level for ~192 kbit/s (MPEG-1 scale)
SONICS_CLIPS = 97_000  # size of the SONICS corpus the cache has to hold


#: How each copy format is written; part of the copies' fingerprint.
COPY_SETTINGS = {
    "mp3": {"format": "MP3", "compression_level": MP3_LEVEL, "bitrate_mode": "CONSTANT"},
    "wav": {"format": "WAV", "subtype": "PCM_16"},
}


def _write_copy(source: str, target: Path, fmt: str) -> None:
    y, sr = sf.read(source, dtype="float32")
    with atomic_path(target, suffix=f".{fmt}") as tmp:
        sf.write(tmp, y, sr, **COPY_SETTINGS[fmt])


def make_copies(songs: pd.DataFrame, copies_dir: Path, sources: dict[str, str]) -> dict:
    """MP3 and WAV copies of each song; one row per (song, format) and the copies' stamps.

    A copy folder is reused only if its fingerprint (the write settings, the song list and
    the .deb files the songs came from, `sources`) matches; otherwise it is made again.
    """
    rows = [{"format": "ogg", "track_id": s.track_id, "path": s.path, "seconds": s.seconds}
            for s in songs.itertuples()]
    stamps = {}
    for fmt in ("mp3", "wav"):
        folder = copies_dir / fmt
        targets = {s.track_id: folder / (s.track_id.replace("/", "__").replace(" ", "_")
                                         + f".{fmt}") for s in songs.itertuples()}

        def build(folder: Path = folder, targets: dict = targets, fmt: str = fmt) -> None:
            folder.mkdir(parents=True)
            for song in songs.itertuples():
                _write_copy(song.path, targets[song.track_id], fmt)

        settings = {"write": COPY_SETTINGS[fmt], "songs": sorted(targets), "sources": sources}
        stamps[fmt] = prepare(folder, settings, build)
        rows += [{"format": fmt, "track_id": s.track_id, "path": str(targets[s.track_id]),
                  "seconds": s.seconds} for s in songs.itertuples()]
    return {"files": pd.DataFrame(rows), "stamps": stamps}


def ours(path: str, config: FrontEndConfig) -> np.ndarray:
    return mel_db(load_clip(path, config), config)


def baseline(path: str, config: FrontEndConfig) -> np.ndarray:
    y, _ = librosa.load(path, sr=config.sample_rate)  # whole file, mono, soxr_hq
    return mel_db(fit_length(y, config.n_samples), config)


def baseline_30s(path: str, config: FrontEndConfig) -> np.ndarray:
    # The fair baseline: librosa also stops decoding after `duration` seconds.
    y, _ = librosa.load(path, sr=config.sample_rate, duration=config.duration)
    return mel_db(fit_length(y, config.n_samples), config)


def _mel_blas1(clip: np.ndarray, config: FrontEndConfig) -> np.ndarray:
    with threadpool_limits(1, user_api="blas"):
        return mel_db(clip, config)


def ours_blas1(path: str, config: FrontEndConfig) -> np.ndarray:
    # The mel matmul is a small GEMM: OpenBLAS threads cost more than they save on a busy box.
    with threadpool_limits(1, user_api="blas"):
        return ours(path, config)


PIPELINES: dict[str, Callable[[str, FrontEndConfig], np.ndarray]] = {
    "ours": ours, "baseline": baseline, "baseline_30s": baseline_30s, "ours_blas1": ours_blas1,
}


def _timed(fn: Callable[..., object], *args: object) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU time is less sensitive to other load on the box."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0


def time_pipelines(files: pd.DataFrame, config: FrontEndConfig, repeats: int) -> pd.DataFrame:
    """Median seconds per clip of each pipeline on each file, interleaved per repeat."""
    rows = []
    for f in files.itertuples():
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in PIPELINES}
        for _ in range(repeats):
            for name, fn in PIPELINES.items():
                times[name].append(_timed(fn, f.path, config))
        row = {"format": f.format, "track_id": f.track_id, "seconds": f.seconds}
        for n, t in times.items():
            row[f"{n}_s"] = statistics.median(w for w, _ in t)
            row[f"{n}_cpu_s"] = statistics.median(c for _, c in t)
        rows.append(row)
    return pd.DataFrame(rows)


def stage_breakdown(path: str, config: FrontEndConfig, repeats: int) -> dict[str, float]:
    """Median seconds of each stage of both pipelines on one file (where the time goes)."""
    clip = load_clip(path, config)
    stages: dict[str, Callable[[], object]] = {
        "ours_open_file": lambda: sf.SoundFile(path).close(),  # MP3: header/length scan
        "ours_decode_30s": lambda: read_audio(path, config.duration),
        "ours_resample_30s": lambda: resample(*read_audio(path, config.duration),
                                              config.sample_rate),
        "baseline_decode_whole": lambda: sf.read(path, dtype="float32"),
        "baseline_librosa_load_whole": lambda: librosa.load(path, sr=config.sample_rate),
        "mel_db": lambda: mel_db(clip, config),
        "mel_db_blas_1_thread": lambda: _mel_blas1(clip, config),
    }
    out = {name: statistics.median(_timed(fn)[0] for _ in range(repeats))
           for name, fn in stages.items()}
    # "resample" above includes its decode; report the resample alone.
    out["ours_resample_30s"] -= out["ours_decode_30s"]
    return {k: round(v, 4) for k, v in out.items()}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def peak_rss(paths: list[str], config: FrontEndConfig) -> dict[str, dict[str, float]]:
    """Peak RSS (MB) of each pipeline over `paths`: Linux's high-water mark, reset per pipeline.

    Writing 5 to ``/proc/self/clear_refs`` resets ``VmHWM`` (Linux >= 4.0), so both pipelines
    are measured in this process from the same starting point. Elsewhere the process-wide
    ``ru_maxrss`` is reported instead, which cannot separate the two.
    """
    out = {}
    for name in ("ours", "baseline"):
        try:
            Path("/proc/self/clear_refs").write_text("5")
            before = _status_mb("VmRSS")
            for path in paths:
                PIPELINES[name](path, config)
            peak = _status_mb("VmHWM")
        except OSError:
            before, peak = float("nan"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out[name] = {"rss_before_mb": round(before, 1), "peak_mb": round(peak, 1),
                     "peak_above_before_mb": round(peak - before, 1)}
    return out


def parallel_throughput(files: pd.DataFrame, config: FrontEndConfig, n_jobs: int) -> dict:
    """``helpers.cache.preprocess`` on every file, into a fresh temporary cache."""
    from helpers.cache import preprocess
    from helpers.datasets import load_manifest

    manifest = load_manifest(pd.DataFrame({
        "path": files["path"], "label": "human", "split": "train",
        "track_id": files["format"] + ":" + files["track_id"],
    }))
    cache_dir = Path(tempfile.mkdtemp(prefix="preprocess_bench_"))
    try:
        stats = preprocess(manifest, cache_dir, config, n_jobs=n_jobs, chunk_size=4,
                           progress=False)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    stats.pop("failures_csv")
    stats["n_jobs"] = n_jobs
    stats["x_realtime"] = round(stats["clips_per_second"] * config.duration, 1)
    stats["projected_gb_for_97k_clips"] = round(stats["bytes_per_clip"] * SONICS_CLIPS / 1e9, 2)
    return stats


def summarise(times: pd.DataFrame, config: FrontEndConfig) -> dict:
    """Per format: seconds per clip, clips/s, x-realtime and speed-up, over all songs."""
    out = {}
    for fmt, group in times.groupby("format", sort=False):
        entry: dict[str, object] = {"n_songs": len(group)}
        for name in PIPELINES:
            per_clip = float(group[f"{name}_s"].mean())
            entry[name] = {
                "seconds_per_clip_mean": round(per_clip, 4),
                "seconds_per_clip_median": round(float(group[f"{name}_s"].median()), 4),
                "clips_per_second": round(1 / per_clip, 2),
                "x_realtime": round(config.duration / per_clip, 1),
                "cpu_seconds_per_clip_mean": round(float(group[f"{name}_cpu_s"].mean()), 4),
            }
        ratio = group["baseline_s"] / group["ours_s"]
        entry["speedup_total"] = round(float(group["baseline_s"].sum() / group["ours_s"].sum()),
                                       2)
        entry["speedup_per_song_min_median_max"] = [round(float(v), 2) for v in
                                                    (ratio.min(), ratio.median(), ratio.max())]
        entry["speedup_cpu_time"] = round(float(group["baseline_cpu_s"].sum()
                                                / group["ours_cpu_s"].sum()), 2)
        entry["speedup_vs_librosa_load_duration_30"] = round(
            float(group["baseline_30s_s"].sum() / group["ours_s"].sum()), 2)
        entry["speedup_cpu_time_vs_librosa_load_duration_30"] = round(
            float(group["baseline_30s_cpu_s"].sum() / group["ours_cpu_s"].sum()), 2)
        entry["speedup_ours_blas1_vs_baseline"] = round(
            float(group["baseline_s"].sum() / group["ours_blas1_s"].sum()), 2)
        out[fmt] = entry
    return out


def machine_info() -> dict:
    """What `provenance` does not record: the C library that decodes every format here."""
    return {"libsndfile": sf.__libsndfile_version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", type=Path, default=DEFAULT_OUT,
                        help="real_audio.py work folder (fetched if needed)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    parser.add_argument("--songs", type=int, default=8,
                        help="longest tracks used as full-length songs (each in 3 formats)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per file")
    parser.add_argument("--n-jobs", type=int, default=2, help="workers for cache.preprocess")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    config = FrontEndConfig()

    manifest = pd.read_csv(fetch_real_audio(args.audio, DEFAULT_PACKAGES))
    manifest["path"] = [str(args.audio.resolve() / p) for p in manifest["path"]]
    all_songs = manifest.sort_values("seconds", ascending=False)
    songs = all_songs.head(args.songs)
    print(f"{len(songs)} songs, {songs.seconds.min():.0f}-{songs.seconds.max():.0f} s; "
          "making MP3/WAV copies (once per song list and settings)", flush=True)
    sources = package_versions(args.audio, DEFAULT_PACKAGES)
    copies = make_copies(songs, args.audio / "copies", sources)
    files = copies["files"]

    for name in PIPELINES:  # warm-up: librosa's lazy imports, soxr plans, page cache
        for path in files.groupby("format")["path"].first():
            PIPELINES[name](path, config)
    print("timing ...", flush=True)
    times = time_pipelines(files, config, args.repeats)
    longest = files[files.track_id == songs.iloc[0].track_id]
    breakdown = {f.format: stage_breakdown(f.path, config, args.repeats)
                 for f in longest.itertuples()}
    print("peak RSS ...", flush=True)
    rss = peak_rss(longest["path"].tolist(), config)
    print("cache.preprocess ...", flush=True)
    # The copies plus the original Ogg tracks not in the timing set: ~40 clips.
    extra = all_songs.iloc[args.songs:].assign(format="ogg")
    parallel = parallel_throughput(pd.concat([files, extra[files.columns]]), config,
                                   args.n_jobs)

    results = {
        "description": __doc__.split("\n\n")[0],
        "config": config.to_dict(),
        "machine": machine_info(),
        "repeats": args.repeats,
        "timing": "median of repeats per file; mean over songs per format; warm page cache",
        "songs": {"n": len(songs), "seconds": songs["seconds"].round(1).tolist(),
                  "minutes_total": round(float(songs["seconds"].sum()) / 60, 1),
                  "source": "benchmarks/real_audio.py (Debian game soundtracks)",
                  "mp3_copies": "soundfile/LAME, ~192 kbit/s CBR, source rate and channels",
                  "wav_copies": "16-bit PCM, source rate and channels",
                  "debian_packages": sources, "copies_used": copies["stamps"]},
        "per_format": summarise(times, config),
        "per_song": times.round(4).to_dict(orient="records"),
        "stage_breakdown_longest_song_s": {"seconds": float(songs.iloc[0].seconds),
                                           **breakdown},
        "peak_rss_longest_song": rss,
        "parallel_cache_preprocess": parallel,
        "benchmark_wall_seconds": round(time.perf_counter() - t_start, 1),
        "load_average_1_5_15_min": {"start": [round(v, 2) for v in load_before],
                                    "end": [round(v, 2) for v in os.getloadavg()]},
    }
    results = write_result(args.out, results, vars(args) | {"frontend": config.to_dict()})
    for fmt, entry in results["per_format"].items():
        print(f"{fmt}: ours {entry['ours']['x_realtime']}x realtime, baseline "
              f"{entry['baseline']['x_realtime']}x, speed-up {entry['speedup_total']}x "
              f"(per song {entry['speedup_per_song_min_median_max']})")
    print(f"cache.preprocess n_jobs={args.n_jobs}: {parallel['clips_per_second']} clips/s, "
          f"{parallel['bytes_per_clip']} B/clip, "
          f"{parallel['projected_gb_for_97k_clips']} GB for 97k clips")
    print(f"wrote {args.out} in {results['benchmark_wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
