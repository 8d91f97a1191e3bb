"""The OpenL3 port against the original openl3 (TensorFlow), alternating, in one run.

The baseline is the real thing, not a quoted figure: openl3 0.4.2 from its public source tree
with TensorFlow 2.15 (CPU) and kapre 0.3.6, in a virtual environment of its own
(`setup_original`), run by a worker process (`benchmarks/_openl3_original_worker.py`).
Both sides embed the same 30 s clip with the same weights: for mel128 the shared reference
fixture (``../shared/openl3_reference``), for mel256 a random-weight file the original
writes in its own HDF5 layout and the port then reads. Runs alternate (original, port,
port, original, ...) so a change in machine load hits both alike, and each side's
CPU-seconds are its own process's (all threads), with wall time, user/system split, minor
page faults and the load average beside them. Agreement: per-frame relative L2 of the port's
embeddings (fp32, and the automatic precision) against the original's.

Setup, once (a few minutes; needs the package index and the openl3 source tree)::

    python -m benchmarks.openl3_original --setup [--openl3-src PATH_TO_CHECKOUT]

then::

    python -m benchmarks.openl3_original            # writes results/openl3_original.json

Where the environment cannot be built or is missing, the run prints one line saying why and
writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.embedding import make_clip  # noqa: E402
from benchmarks.provenance import write_result  # noqa: E402
from helpers import openl3  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(__file__).resolve().parent / "_work" / "openl3_original"
RESULTS = Path(__file__).resolve().parent / "results" / "openl3_original.json"
FIXTURE = ROOT.parent / "shared" / "openl3_reference" / "mel128_music_random.h5"
WORKER = Path(__file__).resolve().parent / "_openl3_original_worker.py"
#: The original's environment, as its fixture was made (see the fixture's README).
ORIGINAL_REQUIREMENTS = ("tensorflow-cpu==2.15.1", "kapre==0.3.6", "resampy==0.2.2",
                         "numpy<2", "librosa==0.10.2.post1", "soundfile", "h5py",
                         "scikit-learn")
OPENL3_REPO = "https://github.com/marl/openl3"
OPENL3_TAG = "v0.4.2"
INPUT_SR = 44_100
ORIGINAL_BATCH = 32  # openl3.get_audio_embedding's default
SETTINGS = (("mel128", 0.1), ("mel256", 0.1), ("mel256", 0.5))


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def setup_original(venv: Path, src: Path, openl3_src: Path | None) -> None:
    """Build the original's venv and copy the openl3 package from its source tree.

    Only the ``openl3/`` package directory is copied: its ``setup.py`` downloads the weights
    at install time, which the benchmark neither needs nor can do offline.
    """
    if not _python(venv).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(_python(venv)), "-m", "pip", "install", "-q",
                        *ORIGINAL_REQUIREMENTS], check=True)
    if (src / "openl3").is_dir():
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkout = openl3_src
        if checkout is None:
            checkout = Path(tmp) / "openl3"
            subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", OPENL3_TAG,
                            OPENL3_REPO, str(checkout)], check=True)
        if (checkout / "openl3").is_dir():
            package = checkout / "openl3"
        else:  # a bare git directory (a mirror): export the package from HEAD
            subprocess.run(f"git --git-dir={checkout} archive HEAD openl3 | tar -x -C {tmp}",
                           shell=True, check=True)
            package = Path(tmp) / "openl3"
        staging = src.with_name(src.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(package, staging / "openl3")
        staging.rename(src)


def missing(venv: Path, src: Path) -> str | None:
    """Why the original cannot run here, or None."""
    if not _python(venv).exists():
        return f"no original-openl3 environment at {venv} (run with --setup)"
    if not (src / "openl3" / "core.py").exists():
        return f"no openl3 source tree at {src} (run with --setup)"
    probe = subprocess.run([str(_python(venv)), "-c", "import tensorflow, kapre, resampy"],
                           capture_output=True, text=True, env=_worker_env(src, 1))
    if probe.returncode:
        return f"the environment at {venv} cannot import tensorflow/kapre/resampy"
    return None


def _worker_env(src: Path, threads: int) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(src), "TF_CPP_MIN_LOG_LEVEL": "2",
           "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONHOME", None)
    return env


class Original:
    """The worker process: one request, one answer."""

    def __init__(self, venv: Path, src: Path, threads: int) -> None:
        self.proc = subprocess.Popen([str(_python(venv)), str(WORKER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=_worker_env(src, threads))

    def ask(self, **request: Any) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the original-openl3 worker exited")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"original openl3: {reply.get('error')}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def _usage() -> dict[str, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": time.process_time(), "user_s": r.ru_utime, "sys_s": r.ru_stime,
            "minflt": r.ru_minflt}


def run_port(model: openl3.OpenL3Model, audio: np.ndarray, hop: float, batch_size: int | None,
             dtype: str | None) -> tuple[dict, np.ndarray]:
    before, start = _usage(), time.perf_counter()
    emb, _ = openl3.get_audio_embedding(audio, INPUT_SR, model, hop_size=hop,
                                        batch_size=batch_size, dtype=dtype)
    wall = time.perf_counter() - start
    after = _usage()
    row = {"wall_s": wall, "frames": int(len(emb)),
           **{k: after[k] - before[k] for k in before},
           "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return row, emb


def rel_l2(got: np.ndarray, ref: np.ndarray) -> float:
    """Largest per-frame relative L2 difference."""
    return float((np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)).max())


def _median(rows: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in rows]))


def measure(original: Original, input_repr: str, hop: float, audio_path: Path,
            audio: np.ndarray, repeats: int, batch_size: int | None, low_precision: str | None,
            tmp: Path) -> dict[str, Any]:
    """Alternate original and port `repeats` times on one setting."""
    weights = FIXTURE if input_repr == "mel128" and FIXTURE.exists() else None
    loaded = original.ask(op="load", input_repr=input_repr,
                          weights=str(weights) if weights else None,
                          save_to=str(tmp / f"{input_repr}_random.h5"),
                          threads=torch.get_num_threads())
    model = openl3.load_audio_embedding_model(input_repr, "music", 512,
                                              weights=loaded["weights"], device="cpu")
    # Warm-up on both sides (TF graph tracing, numba's resampy JIT, oneDNN primitives).
    short = tmp / "warm.npy"
    np.save(short, audio[: 2 * INPUT_SR])
    original.ask(op="embed", audio=str(short), sr=INPUT_SR, hop=hop, batch_size=ORIGINAL_BATCH,
                 out=str(tmp / "warm_out.npy"))
    openl3.get_audio_embedding(audio[: 2 * INPUT_SR], INPUT_SR, model, hop_size=hop,
                               batch_size=batch_size)
    if low_precision:
        openl3.get_audio_embedding(audio[: 2 * INPUT_SR], INPUT_SR, model, hop_size=hop,
                                   batch_size=batch_size, dtype=low_precision)
    runs: dict[str, list[dict]] = {"original": [], "port_fp32": []}
    if low_precision:
        runs[f"port_{low_precision}"] = []
    embs: dict[str, np.ndarray] = {}
    for r in range(repeats):
        # ABBA order: original first on even repeats, last on odd ones.
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for side in order:
            load = os.getloadavg()[0]
            if side == "original":
                out = tmp / "orig_out.npy"
                row = original.ask(op="embed", audio=str(audio_path), sr=INPUT_SR, hop=hop,
                                   batch_size=ORIGINAL_BATCH, out=str(out))
                row.pop("ok")
                embs[side] = np.load(out)
            else:
                dtype = None if side == "port_fp32" else low_precision
                row, embs[side] = run_port(model, audio, hop, batch_size, dtype)
            row["load_1min_before"] = load
            runs[side].append({k: round(v, 4) if isinstance(v, float) else v
                               for k, v in row.items()})
            print(f"{input_repr} hop {hop} repeat {r} {side}: wall {row['wall_s']:.2f} s, "
                  f"CPU {row['cpu_s']:.2f} s (sys {row['sys_s']:.2f})", flush=True)
    base = _median(runs["original"], "cpu_s")
    base_wall = _median(runs["original"], "wall_s")
    summary = {side: {"cpu_s_median": _median(rows, "cpu_s"),
                      "wall_s_median": _median(rows, "wall_s"),
                      "sys_s_median": _median(rows, "sys_s"),
                      "cpu_vs_original": round(_median(rows, "cpu_s") / base, 3),
                      "wall_speedup_vs_original": round(base_wall / _median(rows, "wall_s"), 3),
                      "max_rel_l2_vs_original": rel_l2(embs[side], embs["original"])}
               for side, rows in runs.items()}
    if low_precision:
        summary[f"port_{low_precision}"]["max_rel_l2_vs_port_fp32"] = rel_l2(
            embs[f"port_{low_precision}"], embs["port_fp32"])
    return {"input_repr": input_repr, "hop_s": hop, "frames": runs["original"][0]["frames"],
            "weights": "shared/openl3_reference fixture" if weights else
            "random (written by the original, read by the port)",
            "original_versions": {k: loaded[k] for k in ("tensorflow", "openl3", "onednn")},
            "summary": summary, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true",
                        help="build the original's venv and source tree, then exit")
    parser.add_argument("--openl3-src", type=Path, default=None,
                        help="a checkout (or git directory) of github.com/marl/openl3 at "
                             f"{OPENL3_TAG}; default: clone it")
    parser.add_argument("--venv", type=Path, default=WORK / "venv")
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side and setting")
    parser.add_argument("--threads", type=int, default=2, help="threads of each side")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="the port's windows per pass (default: its own, "
                        "helpers.openl3.default_batch_size); the original always uses "
                        f"openl3's default, {ORIGINAL_BATCH}")
    parser.add_argument("--settings", nargs="+", default=[f"{r}:{h}" for r, h in SETTINGS],
                        help="input_repr:hop pairs (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    src = WORK / "src"
    if args.setup:
        WORK.mkdir(parents=True, exist_ok=True)
        setup_original(args.venv, src, args.openl3_src)
        print(f"original openl3 ready: {args.venv}, {src}")
        return 0
    why = missing(args.venv, src)
    if why:
        print(f"skipped: {why}")
        return 0
    torch.set_num_threads(args.threads)
    low = openl3.low_precision_dtype("cpu")
    audio = make_clip(args.seconds)
    results = []
    original = Original(args.venv, src, args.threads)
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            audio_path = tmp / "clip.npy"
            np.save(audio_path, audio)
            for setting in args.settings:
                input_repr, hop = setting.split(":")
                results.append(measure(original, input_repr, float(hop), audio_path, audio,
                                       args.repeats, args.batch_size, low, tmp))
    finally:
        original.close()
    report = {
        "benchmark": "openl3 0.4.2 (TensorFlow) vs helpers.openl3 (torch), alternating runs "
                     "in one session, same clip and weights, 44.1 kHz input (resampling "
                     "included)",
        "clip_s": args.seconds, "threads_each": args.threads,
        "batch_size": {"original": ORIGINAL_BATCH,
                       "port": args.batch_size or openl3.default_batch_size("cpu")},
        "port_low_precision": low or "none (no bf16 support detected)",
        "results": results,
    }
    write_result(args.out, report, vars(args))
    for row in results:
        print(row["input_repr"], row["hop_s"],
              {side: {k: v for k, v in s.items() if k != "sys_s_median"}
               for side, s in row["summary"].items()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
