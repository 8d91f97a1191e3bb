"""Speed and memory of the classifier (SpecTTTra) against a square-patch ViT of the same size.

For each preset (tiny, base) and each tokeniser (spectro-temporal vs 16x16 patches, same
dim/depth/heads/MLP), on one 30 s clip's mel ``(1, 128, 938)``: parameter count, token count,
inference latency for one clip, inference throughput for batches, training-step throughput
(forward + backward + AdamW) and peak memory. Every configuration runs in its own subprocess, so
peak RSS on a CPU belongs to that configuration alone. Random weights: the cost does not
depend on their values.

    python benchmarks/classifier.py --device cpu
    python benchmarks/classifier.py --device cuda --repeats 20
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.provenance import write_result  # noqa: E402
from helpers.config import FrontEndConfig  # noqa: E402
from helpers.model import build_model, model_config_for  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    # ru_maxrss is KiB on Linux: the process peak so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median_seconds(fn, repeats: int, device: torch.device, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure_one(preset: str, kind: str, device_name: str, repeats: int, batches: list[int],
                train_batch: int, n_frames: int) -> dict:
    """All numbers for one (preset, tokeniser) pair, in this process."""
    device = torch.device(device_name)
    torch.manual_seed(0)
    rss_before = _rss_mb()
    config = model_config_for(preset, 128, n_frames)
    model = build_model(config, kind).to(device).eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out = {
        "preset": preset, "model": kind,
        "n_parameters": model.count_parameters(),
        "n_tokens": config.n_tokens if kind == "spectttra" else config.n_patch_tokens,
        "config": config.to_dict(),
    }
    x1 = torch.randn(1, 128, n_frames, device=device) * 12 - 45  # (1, n_mels, frames) dB

    with torch.no_grad():
        out["latency_1clip_ms"] = 1000 * _median_seconds(lambda: model(x1), repeats, device)
        out["inference_clips_per_s"] = {}
        for b in batches:
            xb = x1.expand(b, -1, -1).contiguous()  # (b, n_mels, frames)
            s = _median_seconds(lambda xb=xb: model(xb), max(1, repeats // 2), device)
            out["inference_clips_per_s"][str(b)] = b / s
    if device.type == "cuda":
        out["peak_inference_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    xt = torch.randn(train_batch, 128, n_frames, device=device) * 12 - 45
    yt = (torch.arange(train_batch, device=device) % 2).float()

    def step() -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xt), yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    s = _median_seconds(step, max(1, repeats // 2), device)
    out["train_batch"] = train_batch
    out["train_clips_per_s"] = train_batch / s
    out["train_step_ms"] = 1000 * s
    if device.type == "cuda":
        out["peak_train_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        out["peak_rss_mb"] = _rss_mb()
        out["rss_before_model_mb"] = rss_before
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--presets", nargs="+", default=["tiny", "base"])
    p.add_argument("--repeats", type=int, default=10, help="timed repeats for tiny")
    p.add_argument("--base-repeats", type=int, default=3, help="timed repeats for base")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    p.add_argument("--train-batch", type=int, default=None,
                   help="clips per training step (default 16 tiny / 8 base on CPU, 32 on GPU)")
    p.add_argument("--seconds", type=float, default=30.0, help="clip length the model sees")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="JSON path (default results/classifier_<dev>)")
    p.add_argument("--one", nargs=2, metavar=("PRESET", "KIND"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_frames = FrontEndConfig(duration=args.seconds).n_frames
    cpu = args.device == "cpu"

    def train_batch(preset: str) -> int:
        return args.train_batch or ((16 if preset == "tiny" else 8) if cpu else 32)

    def repeats(preset: str) -> int:
        return args.repeats if preset == "tiny" else args.base_repeats

    if args.one:  # child process: one configuration, JSON on stdout
        preset, kind = args.one
        result = measure_one(preset, kind, args.device, repeats(preset), args.batches,
                             train_batch(preset), n_frames)
        print(json.dumps(result))
        return 0

    t0 = time.perf_counter()
    rows = []
    for preset in args.presets:
        for kind in ("spectttra", "vit"):
            cmd = [sys.executable, __file__, "--one", preset, kind, "--device", args.device,
                   "--repeats", str(args.repeats), "--base-repeats", str(args.base_repeats),
                   "--seconds", str(args.seconds), "--batches", *map(str, args.batches)]
            if args.train_batch:
                cmd += ["--train-batch", str(args.train_batch)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{preset:5s} {kind:9s} params {row['n_parameters'] / 1e6:6.2f} M  tokens "
                  f"{row['n_tokens']:4d}  1-clip {row['latency_1clip_ms']:8.1f} ms  train "
                  f"{row['train_clips_per_s']:7.1f} clips/s", flush=True)

    ratios = {}
    for preset in args.presets:
        st = next(r for r in rows if r["preset"] == preset and r["model"] == "spectttra")
        vit = next(r for r in rows if r["preset"] == preset and r["model"] == "vit")
        ratios[preset] = {
            "vit_over_spectttra_tokens": vit["n_tokens"] / st["n_tokens"],
            "vit_over_spectttra_latency_1clip": vit["latency_1clip_ms"] / st["latency_1clip_ms"],
            "spectttra_over_vit_inference_throughput": {
                b: st["inference_clips_per_s"][b] / vit["inference_clips_per_s"][b]
                for b in st["inference_clips_per_s"]},
            "spectttra_over_vit_train_throughput":
                st["train_clips_per_s"] / vit["train_clips_per_s"],
            "memory_key": "peak_rss_mb" if cpu else "peak_train_mb",
            "vit_over_spectttra_peak_memory":
                vit["peak_rss_mb" if cpu else "peak_train_mb"]
                / st["peak_rss_mb" if cpu else "peak_train_mb"],
        }
    result = {
        "benchmark": "classifier",
        "device": args.device,
        "device_name": (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
                        else None),  # the CPU model is in provenance.machine
        "torch_threads": args.threads or torch.get_num_threads(),
        "input": {"shape": [1, 128, n_frames], "seconds": args.seconds},
        "repeats": {"tiny": args.repeats, "base": args.base_repeats},
        "statistic": "median over repeats after one warm-up call",
        "results": rows,
        "ratios": ratios,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "note": "peak_rss_mb is the peak resident memory of a subprocess that holds one model "
                "(python + torch + the model + activations); rss_before_model_mb is its "
                "baseline after imports.",
    }
    out = Path(args.out) if args.out else RESULTS / f"classifier_{args.device.split(':')[0]}.json"
    config = {k: v for k, v in vars(args).items() if k != "one"} | {"n_frames": n_frames}
    write_result(out, result, config)
    print(f"wrote {out} in {result['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
