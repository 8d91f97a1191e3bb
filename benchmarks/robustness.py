"""Robustness study on the synthetic demo corpus: perturbations, augmentation, codec confound.

1. The demo run (``demo_out/``, made by ``python -m helpers demo`` or here) is evaluated on the
   test split under every registered perturbation (`helpers.robustness.PERTURBATIONS`).
2. A second run is trained with the same seed, preset and front end on the same manifest plus
   perturbed copies of the training clips (`perturbed_manifest`), and evaluated the same way.
3. The codec confound check: can a probe tell the demo corpus' human songs stored as WAV and
   as MP3 apart, with and without ``FrontEndConfig(codec="mp3")``, at several bitrates?
   The trained demo run's own P(AI) on the two copies is reported too.

Every number is measured on the synthetic demo corpus (`helpers.synth`), not on real music.

    python -m benchmarks.robustness          # ~6-7 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from helpers.config import FrontEndConfig, read_json, write_json_atomic  # noqa: E402
from helpers.datasets import load_manifest  # noqa: E402
from helpers.robustness import (  # noqa: E402
    UNAVAILABLE,
    codec_confound_check,
    evaluate_robustness,
    perturbed_manifest,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "_work" / "robustness"
FIGURE = ROOT / "figures" / "robustness_before_after.png"
DATA_NOTE = "synthetic demo corpus (helpers.synth), not real music"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default=str(ROOT / "demo_out"), help="demo output folder")
    parser.add_argument("--copies", type=int, default=3, help="perturbed copies per train clip")
    parser.add_argument("--confound-songs", type=int, default=24)
    parser.add_argument("--confound-bitrates", type=int, nargs="+", default=[32, 64, 128])
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    demo = Path(args.demo)
    if not (demo / "run" / "run.json").exists():
        from helpers.pipeline import run_demo

        run_demo(demo, seed=0, progress=False)
    run_a = demo / "run"
    info = read_json(run_a / "run.json")
    frontend = FrontEndConfig.from_dict(info["frontend"])
    manifest = load_manifest(demo / "corpus")
    timings = {}

    print("[1/4] robustness of the demo run (no perturbation augmentation)")
    t = time.perf_counter()
    before = evaluate_robustness(run_a, manifest, out_dir=WORK / "eval_plain", progress=False)
    timings["evaluate_plain_s"] = round(time.perf_counter() - t, 1)
    print(before.round(3).to_string(index=False))

    print(f"[2/4] perturbed copies of the train split ({args.copies} per clip), then training")
    from helpers.train import TrainConfig, train

    t = time.perf_counter()
    cfg = TrainConfig.from_dict(info["train_config"])
    aug_manifest = perturbed_manifest(manifest, WORK / "augmented_corpus", copies=args.copies,
                                      seed=cfg.seed, val_fraction=cfg.val_fraction,
                                      progress=False)
    timings["perturbed_copies_s"] = round(time.perf_counter() - t, 1)
    run_b = WORK / "run_augmented"
    t = time.perf_counter()
    if not (run_b / "run.json").exists():
        train(aug_manifest, run_b, preset=info.get("preset", "tiny"), train_config=cfg,
              cache_dir=WORK / "cache", resume=(run_b / "last.pt").exists(), progress=False,
              frontend=frontend)
    timings["train_augmented_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    after = evaluate_robustness(run_b, manifest, out_dir=WORK / "eval_augmented",
                                progress=False)
    timings["evaluate_augmented_s"] = round(time.perf_counter() - t, 1)
    print(after.round(3).to_string(index=False))

    print("[3/4] codec confound check (WAV vs MP3 copies of the same human songs)")
    t = time.perf_counter()
    human = manifest[manifest["label"] == "human"].sort_values("path").head(args.confound_songs)
    confound = {}
    for kbps in args.confound_bitrates:
        r = codec_confound_check(human, WORK / f"confound_{kbps}", frontend=frontend,
                                 bitrate_kbps=kbps, run_dir=run_a, progress=False)
        confound[f"{kbps}kbps"] = {k: v for k, v in r.items() if k != "frontend"}
        print(f"  {kbps:>3} kbps: probe AUC plain {r['probe_auc_plain']:.3f}, with "
              f"codec='mp3' control {r['probe_auc_codec_control']:.3f}; demo run's P(AI) "
              f"separates them with AUC {r['classifier_auc_wav_vs_mp3']:.3f}")
    timings["confound_s"] = round(time.perf_counter() - t, 1)

    print(f"[4/4] figure -> {FIGURE}")
    from helpers import plots

    table = before.merge(after, on="perturbation", suffixes=("_plain", "_augmented"))
    fig = plots.plot_robustness(
        table["perturbation"].tolist(),
        {"no augmentation": (table["roc_auc_plain"], table["fpr_on_human_plain"]),
         f"+ perturbation augmentation ({args.copies} copies/clip)":
             (table["roc_auc_augmented"], table["fpr_on_human_augmented"])},
        title=f"Robustness on the {DATA_NOTE}: test split, {int(before.loc[0, 'n'])} clips")
    plots.save_figure(fig, FIGURE)
    table.to_csv(RESULTS / ".robustness.csv.tmp", index=False)
    os.replace(RESULTS / ".robustness.csv.tmp", RESULTS / "robustness.csv")

    result = {
        "data": DATA_NOTE,
        "demo": str(demo),
        "split": "test",
        "n_test_clips": int(before.loc[0, "n"]),
        "frontend": frontend.to_dict(),
        "runs": {"plain": str(run_a), "augmented": str(run_b),
                 "augmentation": {"copies_per_train_clip": args.copies,
                                  "perturbations": "all registered, drawn per clip",
                                  "train_clips": read_json(run_b / "run.json")["n_clips"]}},
        "threshold": {"plain": info["threshold"],
                      "augmented": read_json(run_b / "run.json")["threshold"]},
        "unavailable_perturbations": UNAVAILABLE,
        "table_plain": before.to_dict(orient="records"),
        "table_augmented": after.to_dict(orient="records"),
        "codec_confound": confound,
        "figure": str(FIGURE.relative_to(ROOT)),
        "timings": {**timings, "total_s": round(time.perf_counter() - t0, 1)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "load_avg": os.getloadavg()},
    }
    from helpers.train import _finite

    write_json_atomic(RESULTS / "robustness.json", _finite(result))
    print(f"done in {result['timings']['total_s']} s -> {RESULTS / 'robustness.json'}")
    return result


if __name__ == "__main__":
    main()
