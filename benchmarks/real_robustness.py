"""Robustness and perturbation augmentation on real recordings (the Griffin-Lim proxy).

The demo corpus is too easy to show what augmentation does: its detector is near 1.0 under
most perturbations, so a change of one clip in 24 is noise. This runs the same study as
`benchmarks/robustness.py` (steps 1-2) on the real-music proxy task of
`benchmarks/real_detection.py` (paired design, ``griffin_lim`` family, seed 0): Debian game
soundtracks (music only) as the human class, the same excerpts after the Griffin-Lim family as
the "AI" class, and test composers the model never saw.

1. The real-detection run is evaluated on its test split under every registered perturbation.
2. The same recipe is trained on the same manifest plus `--copies` perturbed copies of every
   training clip (`helpers.perturb.perturbed_manifest`) and evaluated the same way.

Numbers are measured on real recorded music with a *proxy* AI class, not on SONICS.

    python -m benchmarks.real_robustness    # ~19 minutes on 2 CPU cores (+3 for the run)

The real-detection run is made first when it is missing (`real_detection.train_net`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks import real_detection  # noqa: E402
from benchmarks.robustness import augmentation_study, before_after_table, finish  # noqa: E402
from helpers import jit  # noqa: E402
from helpers.datasets import load_manifest  # noqa: E402
from helpers.io import (
    read_json,  # noqa: E402
    write_csv,  # noqa: E402
)
from helpers.perturb import UNAVAILABLE  # noqa: E402
from helpers.twins import select  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "_work" / "real_robustness"
FIGURE = ROOT / "figures" / "real_robustness_before_after.png"
FAMILY, SEED = "griffin_lim", 0
DATA_NOTE = ("real recordings (Debian game soundtracks, music only), AI class = the "
             "griffin_lim family of the same excerpts (a proxy), test composers unseen")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2, help="perturbed copies per train clip")
    args = parser.parse_args(argv)
    jit.prepare()
    tracks, _ = real_detection.human_tracks()
    frame = select(real_detection.twins(tracks, "paired", None), [FAMILY])
    manifest_csv = WORK / "manifest_griffin_lim.csv"
    write_csv(manifest_csv, frame)
    fit = frame[frame["split"].isin(["train", "val"])]
    run_a = real_detection.train_net(fit, f"paired/{FAMILY}", "spectttra", SEED)
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
