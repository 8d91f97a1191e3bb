"""Throughput of the PyTorch OpenL3 port (helpers.openl3) on a synthetic clip.

Builds the real mel256 / mel128 architectures with random weights (no weight file needed; the
cost does not depend on the values), embeds a `--seconds` long 44.1 kHz clip at each hop, and
writes a JSON with seconds per clip, x-realtime, peak memory, and the drift of fp16 / bf16
autocast against fp32. It is the GPU script (batch sizes, precisions); on a CPU the comparison
that matters is against the original openl3, run alternately in one session by
`benchmarks/openl3_original.py`.

    python benchmarks/embedding.py --device cuda --out benchmarks/results/embedding_cuda.json
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.provenance import write_result  # noqa: E402
from helpers import openl3  # noqa: E402

INPUT_SR = 44_100


def make_clip(seconds: float, sr: int = INPUT_SR, seed: int = 0) -> np.ndarray:
    """A music-like test signal: two tones, a chirp and noise, mono float64."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    chirp = np.sin(2 * np.pi * 100 * seconds / np.log(80) * (80 ** (t / seconds) - 1))
    tones = np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 660 * t)
    return 0.2 * tones + 0.2 * chirp + 0.01 * rng.standard_normal(t.size)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux and is the process peak so far (it never goes down).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_embedding(model, audio, hop, batch_size, dtype, repeats, device):
    """Median seconds of `get_audio_embedding` (resampling included) and the embeddings."""
    times, cpu_times = [], []
    emb = None
    for _ in range(repeats):
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        emb, _ = openl3.get_audio_embedding(audio, INPUT_SR, model, hop_size=hop,
                                            batch_size=batch_size, dtype=dtype)
        sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return statistics.median(times), times, cpu_times, emb


def environment(device: torch.device) -> dict:
    """What `provenance` does not record: oneDNN and the GPU (CPU and versions are there)."""
    info = {
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/embedding.json"))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length")
    parser.add_argument("--hop", type=float, nargs="+", default=[0.1, 0.5],
                        help="hop sizes in seconds")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting")
    parser.add_argument("--reprs", nargs="+", default=["mel256", "mel128"],
                        choices=list(openl3.INPUT_REPRS))
    parser.add_argument("--batch-size", type=int, default=None,
                        help="windows per pass (default: 2 on CPU, 32 on GPU)")
    parser.add_argument("--dtypes", nargs="+", default=None,
                        help="default: fp32 on CPU; fp32 fp16 bf16 on CUDA")
    parser.add_argument("--no-fuse", action="store_true", help="keep BatchNorm unfused")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtypes = args.dtypes or (["fp32"] if device.type == "cpu" else ["fp32", "fp16", "bf16"])
    load_at_start = os.getloadavg()
    audio = make_clip(args.seconds)
    results = []
    for input_repr in args.reprs:
        torch.manual_seed(0)
        model = openl3.OpenL3Model(input_repr, 512)
        if not args.no_fuse:
            model.fuse_batchnorm()
        model = model.to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        # Warm-up: resampy's numba JIT, oneDNN / cuDNN kernel selection for this batch size.
        openl3.get_audio_embedding(audio[: int(1.5 * INPUT_SR)], INPUT_SR, model,
                                   batch_size=args.batch_size)
        for hop in args.hop:
            reference_emb = None
            for dtype in dtypes:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                median_s, times, cpu_times, emb = time_embedding(
                    model, audio, hop, args.batch_size, dtype, args.repeats, device)
                row = {
                    "input_repr": input_repr, "hop_s": hop, "dtype": dtype,
                    "frames": int(len(emb)), "clip_s": args.seconds,
                    "seconds_per_clip": round(median_s, 3),
                    "times_s": [round(t, 3) for t in times],
                    # CPU seconds of this process (all threads): less sensitive than wall
                    # time to other jobs sharing the machine.
                    "cpu_times_s": [round(t, 3) for t in cpu_times],
                    "x_realtime": round(args.seconds / median_s, 2),
                    "frames_per_s": round(len(emb) / median_s, 2),
                    "peak_memory_mb": round(peak_memory_mb(device), 1),
                    "peak_memory_kind": ("torch.cuda.max_memory_allocated"
                                         if device.type == "cuda" else "process max RSS"),
                }
                if device.type == "cpu":
                    # What the wall time would be with the torch threads to ourselves.
                    row["idle_machine_estimate_s"] = round(
                        statistics.median(cpu_times) / torch.get_num_threads(), 3)
                if dtype == "fp32":
                    reference_emb = emb
                elif reference_emb is not None:
                    diff = emb - reference_emb
                    rel = np.linalg.norm(diff, axis=1) / np.linalg.norm(reference_emb, axis=1)
                    row.update(max_abs_drift_vs_fp32=float(np.abs(diff).max()),
                               max_rel_l2_drift_vs_fp32=float(rel.max()))
                print(row, flush=True)
                results.append(row)
    report = {
        "benchmark": "helpers.openl3 get_audio_embedding, random weights, 44.1 kHz mono input "
                     "(resampling to 48 kHz included)",
        "device": args.device,
        "settings": {"batch_size": args.batch_size, "fused_bn": not args.no_fuse,
                     "channels_last": args.channels_last, "repeats": args.repeats,
                     "input_sr": INPUT_SR},
        "environment": environment(device),
        "results": results,
    }
    # Other jobs on the machine slow wall-clock numbers down; the load average records that.
    report["environment"]["load_average_at_start"] = load_at_start
    report["environment"]["load_average_at_end"] = os.getloadavg()
    report = write_result(args.out, report, vars(args))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
