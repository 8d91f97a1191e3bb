"""Robustness and perturbation augmentation on real recordings (the Griffin-Lim proxy).

The demo corpus is too easy to show what augmentation does: its detector is near 1.0 under
most perturbations, so a change of one clip in 24 is noise. This runs the same study as
`benchmarks/robustness.py` (steps 1-2) on the real-music proxy task of
`benchmarks/real_detection.py --with-widelands`: Debian game soundtracks as the human class,
the same excerpts after a Griffin-Lim mel-inversion round trip as the "AI" class, and a test
composer the model never saw.

1. The real-detection run is evaluated on its test split under every registered perturbation.
2. The same recipe is trained on the same manifest plus `--copies` perturbed copies of every
   training clip (`helpers.perturb.perturbed_manifest`) and evaluated the same way.

Numbers are measured on real recorded music with a *proxy* AI class, not on SONICS.

    python -m benchmarks.real_robustness    # ~19 minutes on 2 CPU cores (+3 for the run)

The real-detection run is made first when it is missing (`DETECTION_ARGS`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks import real_detection  # noqa: E402
from benchmarks.robustness import augmentation_study, before_after_table, finish  # noqa: E402
from helpers.datasets import load_manifest  # noqa: E402
from helpers.io import read_json  # noqa: E402
from helpers.perturb import UNAVAILABLE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DETECTION = ROOT / "benchmarks" / "_work" / "real_detection_wl"
WORK = ROOT / "benchmarks" / "_work" / "real_robustness"
FIGURE = ROOT / "figures" / "real_robustness_before_after.png"
#: How `benchmarks/results/real_detection_widelands.json` was made (its run is reused here).
DETECTION_ARGS = "--with-widelands --max-excerpts-per-track 3 --epochs 20 --variants griffin_lim"
DATA_NOTE = ("real recordings (Debian game soundtracks), AI class = Griffin-Lim round trip "
             "of the same excerpts (a proxy), test composer unseen")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detection", default=str(DETECTION),
                        help="work folder of `python -m benchmarks.real_detection "
                             "--with-widelands` (its manifest and run are reused)")
    parser.add_argument("--copies", type=int, default=2, help="perturbed copies per train clip")
    args = parser.parse_args(argv)
    detection = Path(args.detection)
    run_a = real_detection.run_folder(detection, "griffin_lim", 0)
    manifest_csv = detection / "manifest_griffin_lim.csv"
    if not (run_a / "run.json").exists() or not manifest_csv.exists():
        print(f"no finished real-detection run in {detection}: making it ({DETECTION_ARGS})")
        real_detection.main([*DETECTION_ARGS.split(), "--work", str(detection),
                             "--out", str(RESULTS / "real_detection_widelands.json")])
    t0 = time.perf_counter()
    manifest = load_manifest(manifest_csv)
    before, after, run_b, _, timings, reuse = augmentation_study(run_a, manifest, WORK,
                                                                 copies=args.copies)
    before_after_table(before, after, "Robustness on real recordings (Griffin-Lim proxy)",
                       args.copies, FIGURE, RESULTS / "real_robustness.csv")
    result = {
        "data": DATA_NOTE,
        "manifest": str(manifest_csv.relative_to(ROOT)),
        "split": "test",
        "n_test_clips": int(before.loc[0, "n"]),
        "runs": {"plain": str(run_a.relative_to(ROOT)), "augmented": str(run_b.relative_to(ROOT)),
                 "augmentation": {"copies_per_train_clip": args.copies,
                                  "perturbations": "all registered, drawn per clip",
                                  "train_clips": read_json(run_b / "run.json")["n_clips"]}},
        "plain_run": {k: read_json(run_a / "run.json").get(k)
                      for k in ("preset", "train_config", "manifest_fingerprint")},
        "reused_artifacts": reuse,
        "unavailable_perturbations": UNAVAILABLE,
        "table_plain": before.to_dict(orient="records"),
        "table_augmented": after.to_dict(orient="records"),
        "figure": str(FIGURE.relative_to(ROOT)),
    }
    return finish(RESULTS / "real_robustness.json", result, timings, t0, vars(args))


if __name__ == "__main__":
    main()
