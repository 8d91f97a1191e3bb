"""Robustness study on the synthetic demo corpus: perturbations, augmentation, codec confound.

1. The demo run (``demo_out/``, made by ``python -m helpers demo`` or here) is evaluated on the
   test split under every registered perturbation (`helpers.perturb.PERTURBATIONS`).
2. A second run is trained with the same seed, preset and front end on the same manifest plus
   perturbed copies of the training clips (`perturbed_manifest`), and evaluated the same way.
3. The codec confound: a third run is trained with the confound control
   (``FrontEndConfig(codec="mp3")``), and `codec_confound_check` asks, at several bitrates of
   the MP3 copies, whether the plain and the controlled run give a song's WAV and MP3 copies
   different P(AI) (paired sign-flip test), and whether a probe on the features can tell them
   apart (a stricter bound).

Every number is measured on the synthetic demo corpus (`helpers.synth`), not on real music.

    python -m benchmarks.robustness          # ~11-12 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.provenance import prepare, read_stamp, write_result  # noqa: E402
from helpers import plots  # noqa: E402
from helpers.audio import read_audio, write_mp3  # noqa: E402
from helpers.config import FrontEndConfig  # noqa: E402
from helpers.datasets import load_manifest, manifest_fingerprint, write_manifest  # noqa: E402
from helpers.evaluate import evaluate  # noqa: E402
from helpers.io import atomic_path, read_json, write_csv  # noqa: E402
from helpers.perturb import UNAVAILABLE, perturbed_manifest  # noqa: E402
from helpers.pipeline import run_demo  # noqa: E402
from helpers.robustness import codec_confound_check, evaluate_robustness  # noqa: E402
from helpers.train import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "_work" / "robustness"
FIGURE = ROOT / "figures" / "robustness_before_after.png"
DATA_NOTE = "synthetic demo corpus (helpers.synth), not real music"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default=str(ROOT / "demo_out"), help="demo output folder")
    parser.add_argument("--copies", type=int, default=3, help="perturbed copies per train clip")
    parser.add_argument("--confound-songs", type=int, default=0,
                        help="human songs in the codec check (default 0: all of them)")
    parser.add_argument("--permutations", type=int, default=200,
                        help="permutations of the probe's null distribution")
    parser.add_argument("--confound-bitrates", type=int, nargs="+", default=[32, 64, 128],
                        help="bitrates of the MP3 copies")
    parser.add_argument("--ai-kbps", type=int, default=32,
                        help="bitrate of the AI songs' MP3 files in the confounded corpus")
    parser.add_argument("--control-kbps", type=int,
                        default=FrontEndConfig().codec_bitrate_kbps,
                        help="bitrate of the confound control's round trip (default: the "
                             "front end's default)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    demo = Path(args.demo)
    if not (demo / "run" / "run.json").exists():
        run_demo(demo, seed=0, progress=False)
    run_a = demo / "run"
    # An existing demo run is used as it is: what it was trained with is read from its own
    # run.json and recorded below (`plain_run`), never assumed.
    info = read_json(run_a / "run.json")
    frontend = FrontEndConfig.from_dict(info["frontend"])
    manifest = load_manifest(demo / "corpus")
    timings = {}

    print("[1/4] robustness of the demo run, [2/4] and of a run trained with perturbed copies")
    before, after, run_b, cfg, study_timings, study_reuse = augmentation_study(
        run_a, manifest, WORK, copies=args.copies)
    timings.update(study_timings)

    print(f"[3/4] codec confound: runs trained on the corpus with its AI songs stored as "
          f"{args.ai_kbps} kbps MP3 (human songs stay WAV), without and with the control")
    t = time.perf_counter()
    reuse = dict(study_reuse)
    confounded = confounded_manifest(manifest, WORK / "confounded_corpus", args.ai_kbps)
    reuse["confounded_corpus"] = read_stamp(WORK / "confounded_corpus")
    control_fe = replace(frontend, codec="mp3", codec_bitrate_kbps=args.control_kbps)
    runs = {"demo run (both classes WAV)": run_a}
    for name, fe in (("confounded", frontend), ("confounded + control", control_fe)):
        run = WORK / ("run_confounded" if fe.codec is None else "run_confounded_control")
        reuse[run.name] = trained_run(run, confounded, info, cfg, fe, WORK / f"cache_{run.name}")
        runs[name] = run
    timings["train_confounded_s"] = round(time.perf_counter() - t, 1)
    detection = {}
    for i, (name, run) in enumerate(runs.items()):
        detection[name] = {}
        for test_set, frame in (("ai_mp3_human_wav", confounded), ("all_wav", manifest)):
            m = evaluate(run, frame, split="test", out_dir=WORK / f"eval_detect_{i}_{test_set}",
                         figures=False, progress=False)
            detection[name][test_set] = {k: m[k] for k in ("roc_auc", "specificity", "n")}
        print(f"  {name}: test ROC-AUC {detection[name]['ai_mp3_human_wav']['roc_auc']:.3f} "
              f"(AI as MP3), {detection[name]['all_wav']['roc_auc']:.3f} (all WAV)")
    t = time.perf_counter()
    human = manifest[manifest["label"] == "human"].sort_values("path")
    if args.confound_songs:
        human = human.head(args.confound_songs)
    confound = {}
    for kbps in args.confound_bitrates:
        r = codec_confound_check(human, WORK / f"confound_{kbps}", frontend=control_fe,
                                 bitrate_kbps=kbps, runs=runs,
                                 n_permutations=args.permutations, seed=0, progress=False)
        confound[f"{kbps}kbps"] = {k: v for k, v in r.items() if k != "frontend"}
        print(f"  {kbps:>3} kbps copies: probe AUC plain {r['probe']['plain']['auc']:.3f}, "
              f"with control {r['probe']['codec_control']['auc']:.3f}")
        for name, c in r["classifiers"].items():
            lo, hi = c["mean_dp_ci"]
            print(f"      {name}: mean dP(AI) {c['mean_dp']:+.4f} [{lo:+.4f}, {hi:+.4f}] "
                  f"({'at chance' if c['at_chance'] else 'NOT at chance'}), decision flips "
                  f"{c['decision_flips']:.3f}, MP3-vs-WAV AUC {c['auc_mp3_vs_wav']:.3f}, "
                  f"sign-flip p {c['p_value']:.4f}")
    timings["confound_s"] = round(time.perf_counter() - t, 1)

    print(f"[4/4] figure -> {FIGURE}")
    before_after_table(before, after, f"Robustness on the {DATA_NOTE}", args.copies, FIGURE,
                       RESULTS / "robustness.csv")

    result = {
        "data": DATA_NOTE,
        "demo": str(demo),
        "split": "test",
        "n_test_clips": int(before.loc[0, "n"]),
        "frontend": frontend.to_dict(),
        "plain_run": {k: info.get(k) for k in ("preset", "train_config", "model_config",
                                               "manifest_fingerprint", "created_utc")},
        "reused_artifacts": reuse,
        "runs": {"plain": str(run_a), "augmented": str(run_b),
                 "augmentation": {"copies_per_train_clip": args.copies,
                                  "perturbations": "all registered, drawn per clip",
                                  "train_clips": read_json(run_b / "run.json")["n_clips"]}},
        "threshold": {"plain": info["threshold"],
                      "augmented": read_json(run_b / "run.json")["threshold"]},
        "unavailable_perturbations": UNAVAILABLE,
        "table_plain": before.to_dict(orient="records"),
        "table_augmented": after.to_dict(orient="records"),
        "codec_confound": {
            "songs": "human songs of the demo corpus, train and test splits",
            "confounded_corpus": f"the demo corpus with its AI songs stored as {args.ai_kbps} "
                                 "kbps MP3 and its human songs as WAV",
            "ai_kbps": args.ai_kbps,
            "control_frontend": control_fe.to_dict(),
            "runs": {name: str(run) for name, run in runs.items()},
            "detection_test_split": detection,
            "by_source_bitrate": confound},
        "figure": str(FIGURE.relative_to(ROOT)),
    }
    return finish(RESULTS / "robustness.json", result, timings, t0, vars(args))


def finish(path: Path, result: dict, timings: dict, t0: float, config: dict) -> dict:
    """Add the timings and the provenance to `result`, write it atomically and return it."""
    result = {**result, "timings": {**timings, "total_s": round(time.perf_counter() - t0, 1)}}
    written = write_result(path, result, config)
    print(f"done in {result['timings']['total_s']} s -> {path}")
    return written


def trained_run(run: Path, manifest, info: dict, cfg: TrainConfig, frontend: FrontEndConfig,
                cache: Path) -> dict:
    """Train `run` on `manifest` with the plain run's recipe, or reuse it when an earlier
    one was trained with exactly these settings (`benchmarks.provenance.prepare`)."""
    settings = {"manifest": manifest_fingerprint(load_manifest(manifest)),
                "preset": info.get("preset", "tiny"), "train_config": cfg.to_dict(),
                "frontend": frontend.to_dict()}
    return prepare(run, settings, lambda: train(
        manifest, run, preset=settings["preset"], train_config=cfg, cache_dir=cache,
        progress=False, frontend=frontend))


def confounded_manifest(manifest, out: Path, kbps: int) -> Path:
    """The manifest with every AI row's audio re-stored as constant-bitrate MP3 (human rows
    untouched): the SONICS-vs-GTZAN situation, where the file format gives the label away.
    A folder made earlier from the same manifest at the same bitrate is reused."""
    settings = {"manifest": manifest_fingerprint(manifest), "ai_kbps": kbps}
    prepare(out, settings, lambda: _write_confounded(manifest, out, kbps))
    return out / "manifest.csv"


def _write_confounded(manifest, out: Path, kbps: int) -> Path:
    frame = manifest.copy()
    (out / "audio").mkdir(parents=True, exist_ok=True)
    for i in np.flatnonzero(frame["label"].to_numpy() == "ai"):
        target = out / "audio" / f"{frame.at[i, 'track_id']}.mp3"
        if not target.exists():
            y, sr = read_audio(frame.at[i, "path"])
            with atomic_path(target, suffix=".mp3") as tmp:
                write_mp3(tmp, y, sr, kbps)
        frame.at[i, "path"] = str(target)
    return write_manifest(frame, out / "manifest.csv")


def augmentation_study(run_a: Path, manifest, work: Path, copies: int,
                       perturbations: list[str] | None = None):
    """Evaluate `run_a` under every perturbation, train the same recipe on the manifest plus
    `copies` perturbed copies per training clip, and evaluate that run the same way.

    Returns (table before, table after, augmented run folder, TrainConfig, timings, the
    stamps of the reused or rebuilt artifacts).
    """
    timings, reuse = {}, {}
    info = read_json(run_a / "run.json")
    frontend = FrontEndConfig.from_dict(info["frontend"])
    t = time.perf_counter()
    before = evaluate_robustness(run_a, manifest, perturbations=perturbations,
                                 out_dir=work / "eval_plain", progress=False)
    timings["evaluate_plain_s"] = round(time.perf_counter() - t, 1)
    print(before.round(3).to_string(index=False))
    t = time.perf_counter()
    cfg = TrainConfig.from_dict(info["train_config"])
    corpus = work / "augmented_corpus"
    reuse["augmented_corpus"] = prepare(
        corpus, {"manifest": manifest_fingerprint(manifest), "copies": copies,
                 "perturbations": perturbations, "seed": cfg.seed,
                 "val_fraction": cfg.val_fraction},
        lambda: perturbed_manifest(manifest, corpus, copies=copies,
                                   perturbations=perturbations, seed=cfg.seed,
                                   val_fraction=cfg.val_fraction, progress=False))
    aug_manifest = load_manifest(corpus / "manifest.csv")
    timings["perturbed_copies_s"] = round(time.perf_counter() - t, 1)
    run_b = work / "run_augmented"
    t = time.perf_counter()
    reuse["run_augmented"] = trained_run(run_b, aug_manifest, info, cfg, frontend,
                                         work / "cache")
    timings["train_augmented_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    after = evaluate_robustness(run_b, manifest, perturbations=perturbations,
                                out_dir=work / "eval_augmented", progress=False)
    timings["evaluate_augmented_s"] = round(time.perf_counter() - t, 1)
    print(after.round(3).to_string(index=False))
    return before, after, run_b, cfg, timings, reuse


def before_after_table(before, after, title: str, copies: int, figure: Path, csv: Path):
    """Merge the two tables, draw the before/after figure and write the CSV atomically."""
    table = before.merge(after, on="perturbation", suffixes=("_plain", "_augmented"))
    fig = plots.plot_robustness(
        table["perturbation"].tolist(),
        {"no augmentation": (table["roc_auc_plain"], table["fpr_on_human_plain"]),
         f"+ perturbation augmentation ({copies} copies/clip)":
             (table["roc_auc_augmented"], table["fpr_on_human_augmented"])},
        title=f"{title}: test split, {int(before.loc[0, 'n'])} clips")
    plots.save_figure(fig, figure)
    write_csv(csv, table)
    return table


if __name__ == "__main__":
    main()
