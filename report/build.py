"""Build the report from results files: ``python report/build.py [--demo-dir demo_out]``.

Every table in ``report/report.md`` is generated here from JSON that repository code wrote:

* ``report/results/demo_*.json``: snapshots of a ``python -m helpers demo`` run (taken from
  ``--demo-dir`` when given, so a fresh run refreshes them);
* ``benchmarks/results/*.json``: the benchmark scripts' outputs.

``report/template.md`` holds the prose with ``{{name}}`` placeholders; each placeholder is
replaced by the table (or the inline number) `TABLES[name]` makes from those files, or by a
line saying which results file is missing, so no measured number is typed into the prose. Each
benchmark table names its file and the commit and date the file records. Without
``--demo-dir`` nothing but those files is read. With it, the demo run's results are copied in
first and the figures are regenerated into ``figures/`` from it. Re-running on SONICS results
(from Colab) refreshes the numbers the same way.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file from a checkout: `benchmarks` is not installed

from benchmarks.run_all import run_of  # noqa: E402
from helpers.io import write_bytes, write_text  # noqa: E402

RESULTS = ROOT / "report" / "results"
BENCH = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "figures"


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _missing(name: str) -> str:
    return f"*Not measured yet: `{name}` is missing; run the script that writes it.*"


def _source(name: str, m: dict) -> str:
    """Which file a table comes from, and the commit and date that file records."""
    return f"*Source: `benchmarks/results/{name}` (run {run_of(m)}).*\n\n"


def _copy(src: Path, dst: Path) -> None:
    write_bytes(dst, src.read_bytes())


def snapshot_demo(demo_dir: Path) -> None:
    """Copy a demo run's results into report/results and its figures into figures/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    FIGURES.mkdir(exist_ok=True)
    _copy(demo_dir / "metrics.json", RESULTS / "demo_metrics.json")
    _copy(demo_dir / "run" / "eval_test" / "metrics.json", RESULTS / "demo_classifier_test.json")
    _copy(demo_dir / "recommendations.json", RESULTS / "demo_recommendations.json")
    for png in (demo_dir / "run" / "eval_test" / "figures").glob("*.png"):
        _copy(png, FIGURES / f"demo_{png.name}")
    _embedding_figures(demo_dir)


def _embedding_figures(demo_dir: Path) -> None:
    from helpers.index import CatalogIndex
    from helpers.plots import save_figure
    from helpers.plots_embed import plot_per_genre_precision, plot_tsne
    from helpers.retrieval import tsne_2d

    index = CatalogIndex.load(demo_dir / "index")
    fig = plot_tsne(tsne_2d(index.vectors, seed=0), index.catalog["genre"].tolist(),
                    title=f"Demo human catalog, {index.embedder_config['name']} embedder (t-SNE)")
    save_figure(fig, FIGURES / "demo_tsne.png")
    retrieval = json.loads((demo_dir / "metrics.json").read_text())["retrieval"]["style_loo"]
    fig = plot_per_genre_precision({k: v["per_label"] for k, v in retrieval.items()}, k=5)
    save_figure(fig, FIGURES / "demo_per_style_precision.png")


def t_demo_classifier() -> str:
    m = _load(RESULTS / "demo_classifier_test.json")
    if m is None:
        return _missing("report/results/demo_classifier_test.json")
    keys = ("accuracy", "f1", "sensitivity", "specificity")
    rows = [["at the max-F1 threshold (val)", m["threshold"],
             *[m["at_threshold"].get(k) for k in keys]],
            [f"at {m['target_fpr']:.0%} FPR on human (val)", m["fpr_threshold"],
             *[m["at_fpr_threshold"].get(k) for k in keys]]]
    head = (f"Test split of the synthetic demo corpus: n = {m['n']} ({m['n_ai']} AI, "
            f"{m['n_human']} human); ROC-AUC {_fmt(m['roc_auc'])}, PR-AUC {_fmt(m['pr_auc'])}; "
            f"ECE {_fmt(m['ece']['before'])} before and {_fmt(m['ece']['after'])} after "
            f"temperature scaling (T = {_fmt(m['temperature'])}).\n\n")
    return head + _table(["operating point", "threshold P(AI)", "accuracy", "F1",
                          "sensitivity", "specificity"], rows)


def t_demo_retrieval() -> str:
    m = _load(RESULTS / "demo_metrics.json")
    if m is None:
        return _missing("report/results/demo_metrics.json")
    r = m["retrieval"]
    rows = [[f"leave-one-out, {name.replace('_', ' ')}", v["n_queries"], v["precision_at_k"],
             v["map_at_k"]] for name, v in r["style_loo"].items()]
    ai = r["ai_query_style_precision"]
    rows.append(["AI test clips as queries", ai["n_queries"], ai["precision_at_k"], None])
    return (f"Embedder: `{r['embedder']}`; K = 5; relevant = same style. Synthetic demo "
            "corpus.\n\n" + _table(["queries", "n", "precision@5", "mAP@5"], rows))


def t_demo_recommendations() -> str:
    recs = _load(RESULTS / "demo_recommendations.json")
    if recs is None:
        return _missing("report/results/demo_recommendations.json")
    rows = []
    for r in recs:
        top = r["recommendations"][0] if r.get("recommendations") else {}
        styles = [x["genre"] for x in r.get("recommendations", [])]
        rows.append([Path(r["input"]).name, r["true_label"], r.get("p_ai"), r.get("verdict"),
                     f"{styles.count(r['true_style'])}/{len(styles)}" if styles else "–",
                     top.get("similarity")])
    return _table(["clip", "true label", "P(AI)", "decision", "top-5 in the clip's style",
                   "top-1 cosine"], rows)


def t_openl3_parity() -> str:
    m = _load(BENCH / "openl3_parity.json")
    if m is None:
        return _missing("benchmarks/results/openl3_parity.json")
    lim = m["limits"]
    rows = [
        ["1. resampled audio, max abs", m["check1_audio_48k_max_abs"],
         lim["check1_audio_48k_max_abs"]],
        ["2. log-mel front end, max abs dB (expected > -60 dB)",
         m["check2_logmel_max_abs_db_above_-60"], lim["check2_logmel_max_abs_db_above_-60"]],
        ["2. log-mel front end, mean abs dB", m["check2_logmel_mean_abs_db"],
         lim["check2_logmel_mean_abs_db"]],
        ["3. conv stack, max abs", m["check3_conv_max_abs"], lim["check3_conv_max_abs"]],
        ["3. conv stack, relative L2 per frame (max)", m["check3_conv_rel_l2_max"],
         lim["check3_conv_rel_l2_max"]],
        ["4. end to end (BN fused), relative L2 per frame (max)", m["check4_fused_rel_l2_max"],
         lim["check4_rel_l2_max"]],
        ["4. end to end (BN fused), mean abs", m["check4_fused_mean_abs"],
         lim["check4_mean_abs"]],
    ]
    rows = [[name, f"{got:.2e}", f"{limit:g}"] for name, got, limit in rows]
    return _source("openl3_parity.json", m) + _table(["check", "measured", "limit"], rows)


def _recipe_of(m: dict) -> str:
    """How Model 1 and the ViT were trained in a detection results file."""
    copies = m["protocol"].get("augment", {}).get("copies_per_training_clip", 0)
    if not copies:
        return ("Model 1 and the ViT trained without perturbed copies (`--augment 0`; the "
                "Python `train()`'s default)")
    return (f"Model 1 and the ViT trained as `python -m helpers train --preset tiny` trains: "
            f"{copies} perturbed cop{'y' if copies == 1 else 'ies'} of each training clip "
            f"(`{m['protocol']['augment']['cli']}`); the feature baselines on the clips alone")


def t_real_detection(name: str = "real_detection.json") -> str:
    m = _load(BENCH / name)
    if m is None:
        return _missing(f"benchmarks/results/{name}")
    data = m["data"]
    splits = {}
    for r in data["splits"]:
        splits.setdefault(r["split"], []).append(f"{r['source']} ({r['tracks']} tracks)")
    head = ("Data: " + "; ".join(f"{k} = {', '.join(v)}" for k, v in splits.items())
            + f". One 30 s excerpt per track; {len(data['dropped'])} short music files "
            "dropped (listed in the results file). Seeds: "
            f"{', '.join(map(str, m['protocol']['seeds']))} for Model 1; the ViT baseline "
            f"{m['provenance']['config'].get('vit_seeds', 1)} seed(s); the LR baseline is "
            "deterministic. " + _recipe_of(m) + ". Cells: mean [95 % interval] over "
            "seeds.\n\n")
    return (_source(name, m) + head
            + "**In-family, paired design** (train and test on one family; FPR on human test "
              "music at the validation threshold for max F1):\n\n"
            + _in_family_table(m["results"]["paired"], m)
            + "\n\n**Across families, paired design** (test ROC-AUC; the diagonal repeats the "
              "in-family cells, `all_but_X` is leave-one-family-out):\n\n"
            + _cross_family_table(m["results"]["paired"])
            + ("\n\n**In-family, unpaired design** (the AI twin is another excerpt):\n\n"
               + _in_family_table(m["results"]["unpaired"], m)
               if "unpaired" in m["results"] else "")
            + _curve_table(m.get("learning_curve"))
            + _wider_tables(m))


def _wider_tables(m: dict) -> str:
    wider = m["results"].get("paired_wider_pool")
    if not wider:
        return ""
    curve = m.get("learning_curve") or {}
    extra = ", ".join(f"`{p}`" for p in curve.get("extra_packages", {}))
    return ("\n\n**Wider training pool** (added after the learning curve was read, beside "
            "the main tables, never instead of them): the same paired protocol with the "
            f"train packages plus {extra} as training music; validation and test unchanged. "
            "In-family:\n\n" + _in_family_table(wider, m)
            + "\n\nAcross families (test ROC-AUC):\n\n" + _cross_family_table(wider))


def t_generic_artifacts() -> str:
    m = _load(BENCH / "generic_artifacts.json")
    if m is None:
        return _missing("benchmarks/results/generic_artifacts.json")
    rows = []
    for model, families in m["results"].items():
        for family, cells in families.items():
            rows.append([family, _MODEL_NAMES[model], _fmt_interval(cells["roc_auc"]),
                         _fmt_interval(cells["pr_auc"]),
                         _fmt_interval(cells["fpr_at_val_max_f1"])])
    lsd = ", ".join(f"{k} {v:.1f} dB" for k, v in m["log_spectral_distance_db"].items())
    return (_source("generic_artifacts.json", m)
            + f"Seeds {', '.join(map(str, m['seeds']))} for Model 1 (the LR is deterministic); "
            f"{m['training']['train_files']} training and {m['training']['val_files']} "
            f"validation files. Median log-spectral distance of each primitive to its source "
            f"excerpt: {lsd}. Test (every family unseen; target "
            f"{m['target_unseen_roc_auc']}):\n\n"
            + _table(["family (unseen)", "model", "ROC-AUC", "PR-AUC",
                      "FPR at val max-F1 threshold"], rows))


_VARIANT_NAMES = {"default": "default front end (n_fft 2048, hop 512), no augmentation",
                  "default+augment": "+ waveform augmentation (`--augment 1`)",
                  "fine": "finer front end (n_fft 1024, hop 256)",
                  "fine+augment": "finer + augmentation",
                  "default+bandnorm": "per-band input normalisation (added later)",
                  "fine+augment+bandnorm": "finer + augmentation + per-band normalisation "
                                           "(added last)"}


def t_recipe_validation() -> str:
    m = _load(BENCH / "recipe_validation.json")
    if m is None:
        return _missing("benchmarks/results/recipe_validation.json")
    composers = m.get("validation_composers", {})
    choice = m["decision"]["choice"]
    rows = []
    for name, s in m["summary"].items():
        per = [f"{m['per_composer'][c][name]['worst_perturbed_roc_auc']['mean']:.3f}"
               for c in composers]
        rows.append([_VARIANT_NAMES.get(name, name) + (" **(chosen)**" if name == choice else ""),
                     _fmt_interval(s["clean_roc_auc"]),
                     _fmt_interval(s["worst_perturbed_roc_auc"]),
                     _fmt_interval(s["fpr_at_0.5"]), " / ".join(per)])
    out = (_source("recipe_validation.json", m)
           + "Validation composers (human tracks): "
           + ", ".join(f"{c} ({n})" for c, n in composers.items())
           + f". Seeds {', '.join(map(str, m['seeds']))}; means over families and composers, "
           "95 % interval over seeds. Rule: " + m["decision"]["rule"] + f". The rule chooses "
           f"**{choice}**; on the first composer alone it would choose "
           f"{m['decision_wesnoth_only']['choice']}.\n\n"
           + _table(["variant", "clean ROC-AUC", "worst of MP3 128 / pitch ±1",
                     "FPR on human at 0.5", "worst perturbed per composer ("
                     + " / ".join(composers) + ")"], rows))
    read = m.get("test_read")
    if not read:
        return out
    rows = []
    for family, models in read["per_family"].items():
        for name, cells in models.items():
            label = _MODEL_NAMES["lr"] if name == "lr" else _VARIANT_NAMES.get(name, name)
            rows.append([family, label, _fmt_interval(cells["clean_roc_auc"]),
                         _fmt_interval(cells["worst_perturbed_roc_auc"]),
                         _fmt_interval(cells["fpr_at_val_max_f1"])])
    return (out + "\n\n**The test packages, read once after the choice** (the same runs, "
            "trained on the train packages alone; thresholds from each run's own validation "
            "carve; the LR baseline as in the detection protocol):\n\n"
            + _table(["family", "model", "clean ROC-AUC", "worst of MP3 128 / pitch ±1",
                      "FPR on human at val max-F1 threshold"], rows))


def t_recipe_protocol(name: str = "recipe_protocol.json") -> str:
    m = _load(BENCH / name)
    base = _load(BENCH / "real_detection_noaug.json")
    if m is None or base is None:
        return _missing(f"benchmarks/results/{name}")
    chosen, default = m["results"]["paired"], base["results"]["paired"]
    perturbations = base["protocol"]["perturbations"]
    families = base["data"]["families"]
    rows = []
    for family in families:
        for label, results, model in (("Model 1, no augmentation", default,
                                       "spectttra"),
                                      (f"Model 1, {m['recipe']['name']}", chosen, "spectttra"),
                                      (_MODEL_NAMES["lr"], chosen, "lr"),
                                      (f"{_MODEL_NAMES['combined']}, {m['recipe']['name']}",
                                       chosen, "combined"),
                                      (f"{_MODEL_NAMES['fused']}, {m['recipe']['name']}",
                                       chosen, "fused")):
            entry = results.get(f"{family}/{model}")
            if entry is None:
                continue
            worst = min(perturbations, key=lambda p: entry["cells"][f"{family}/{p}"]["roc_auc"]
                        ["mean"])
            rows.append([family, label, _cell(entry, f"{family}/clean"),
                         f"{_cell(entry, f'{family}/{worst}')} ({worst})",
                         _cell(entry, f"{family}/clean", "fpr_at_val_max_f1"),
                         _cell(entry, f"{family}/clean", "fpr_at_val_fpr_5pct")])
    cross = []
    for name, entry in chosen.items():
        set_name, model = name.rsplit("/", 1)
        if model != "spectttra":
            continue
        extra = [e for e in (chosen.get(f"{set_name}/combined"),
                             chosen.get(f"{set_name}/fused")) if e]
        cross.append([set_name] + [
            f"{default[name]['cells'][f'{f}/clean']['roc_auc']['mean']:.3f} → "
            f"{entry['cells'][f'{f}/clean']['roc_auc']['mean']:.3f}"
            + (" (" + " / ".join(f"{e['cells'][f'{f}/clean']['roc_auc']['mean']:.3f}"
                                 for e in extra) + ")" if extra else "")
            + ("" if f in entry["train_families"] else " (unseen)") for f in families])
    return (_source(name, m)
            + f"Recipe `{m['recipe']['cli']}`, seeds {', '.join(map(str, m['seeds']))}; "
            "the runs without augmentation are `real_detection_noaug.json`'s. "
            "In-family (thresholds set on the validation composer):\n\n"
            + _table(["family", "model", "ROC-AUC clean", "ROC-AUC worst perturbation",
                      "FPR at val max-F1 threshold", "FPR at val 5 % threshold"], rows)
            + "\n\nModel 1's clean test ROC-AUC, without augmentation → this recipe (in "
            "brackets: the combined detector with this recipe, then the fused one where it "
            "was run), for every training set:\n\n"
            + _table(["trained on", *families], cross))


def t_consistency() -> str:
    m = _load(BENCH / "consistency.json")
    if m is None:
        return _missing("benchmarks/results/consistency.json")
    results = m["results"]
    families = sorted({k.split("/")[0] for e in results.values() for k in e["cells"]})
    rows = []
    for family in families:
        for model in m["models"]:
            entry = results.get(f"{family}/{model}")
            if entry is None:
                continue
            perturbed = [k for k in entry["cells"] if k.startswith(f"{family}/")
                         and not k.endswith("/clean")]
            worst = min(perturbed, key=lambda k: entry["cells"][k]["roc_auc"]["mean"])
            rows.append([family, _MODEL_NAMES[model], _cell(entry, f"{family}/clean"),
                         f"{_cell(entry, worst)} ({worst.split('/')[1]})",
                         _cell(entry, f"{family}/clean", "fpr_at_val_max_f1")])
    verdict = "; ".join(f"{_MODEL_NAMES[k]}: min unseen {v['min_unseen_roc_auc']:.3f}, max FPR "
                        f"{v['max_fpr_on_human']:.3f}, "
                        f"{'take further' if v['take_further'] else 'not taken further'}"
                        for k, v in m["verdict"].items())
    return (_source("consistency.json", m)
            + "Deterministic models (one fit each). In-family, thresholds on the validation "
            "composer:\n\n"
            + _table(["family", "model", "ROC-AUC clean", "ROC-AUC worst perturbation",
                      "FPR at val max-F1 threshold"], rows)
            + "\n\nEvery training set, clean test ROC-AUC:\n\n"
            + _cross_family_table(results)
            + f"\n\nThe reading fixed before the numbers (unseen >= "
            f"{m['reading']['unseen_roc_auc_at_least']} in every direction and FPR <= "
            f"{m['reading']['fpr_on_human_at_most']} on every family): {verdict}.")


def t_input_norm_synthetic() -> str:
    m = _load(BENCH / "input_norm_synthetic.json")
    if m is None:
        return _missing("benchmarks/results/input_norm_synthetic.json")
    names = {"demo": "demo chain (Griffin-Lim round trip + 2x checkerboard upsampling)",
             "griffin_lim_only": "Griffin-Lim round trip alone",
             "upsampling_only": "2x checkerboard upsampling alone"}
    rows = [[names.get(corpus, corpus), norm, _fmt_interval(cells["roc_auc"]),
             _fmt_interval(cells["fpr_at_val_threshold"])]
            for corpus, norms in m["results"].items() for norm, cells in norms.items()]
    n_test = next(iter(next(iter(m["results"].values())).values()))["n_test"]
    return (_source("input_norm_synthetic.json", m)
            + f"Synthetic demo corpora, `tiny` with `train()`'s defaults (no waveform "
            f"augmentation), seeds "
            f"{', '.join(map(str, m['seeds']))}; {n_test} test clips per corpus.\n\n"
            + _table(["\"AI\" chain of the corpus", "input normalisation", "test ROC-AUC",
                      "FPR on human at the run's threshold"], rows))


def t_real_retrieval() -> str:
    m = _load(BENCH / "real_retrieval.json")
    if m is None:
        return _missing("benchmarks/results/real_retrieval.json")
    sel = m["selection_on_val"]
    chosen = sel["chosen"]
    head = (f"Chosen on the val queries (criterion: {sel['criterion']}): analysis at "
            f"{chosen['sr']} Hz, blocks {', '.join(chosen['blocks'])}, whitening "
            f"{chosen['whitening']} over {chosen['segments']} segments (val score "
            f"{sel['val_score']:.3f}); the shipped default is this choice: "
            f"{'yes' if sel['shipped_default_is_the_choice'] else '**no**'}. Test queries, "
            "read once; recall and precision with 95 % bootstrap intervals over queries.\n\n")
    alternatives = sel.get("stage3_alternatives")
    if alternatives:
        adopted = sel.get("stage3_adopted") or []
        head += ("Tried on top of that choice, val only (adopted only with a gain over "
                 f"{sel['stage3_margin']}): "
                 + ", ".join(f"{k} {v:.3f}" for k, v in alternatives.items())
                 + " (`lda`: top between-track directions; `csls`: hubness-corrected scores; "
                 "`segment_rerank`: plus segment matching; `reference[...]/w/s`: plus the "
                 "scatter of other composers' music, weight w, shrinkage s). "
                 + (f"Adopted: {', '.join(adopted)}." if adopted else "None adopted."))
        reference = sel.get("stage3_reference") or {}
        if reference.get("ineligible"):
            head += (f" The reference scatter came from {reference['tracks']} tracks of "
                     f"{len(reference['per_source'])} other soundtracks. With the queries' own "
                     "Griffin-Lim transform in it (it would learn the test transform, so it is "
                     "never adopted): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in reference["ineligible"].items())
                     + ".")
        head += "\n\n"
    rows = []
    for r in m["table"]:
        if r["split"] != "test":
            continue
        ci_r, ci_p = r.get("track_recall_at_5_ci95"), r.get("source_p_at_5_ci95")
        rows.append([f"`{r['embedder']}`", f"{r['n_catalog']}", r["transform"],
                     f"{r['track_recall_at_5']:.2f}" + (f" [{ci_r[0]:.2f}, {ci_r[1]:.2f}]"
                                                        if ci_r else ""),
                     f"{r['track_mrr']:.2f}",
                     f"{r['source_p_at_5']:.2f}" + (f" [{ci_p[0]:.2f}, {ci_p[1]:.2f}]"
                                                    if ci_p else ""),
                     f"{r['source_p_at_5_others']:.2f}", str(r["n_queries"])])
    return (_source("real_retrieval.json", m) + head
            + _table(["embedder", "catalog tracks", "queries", "track recall@5", "track MRR",
                      "source P@5", "source P@5, own track removed", "test queries"], rows)
            + _retrieval_by_length(m.get("by_track_length")))


def _retrieval_by_length(block: dict | None) -> str:
    """Recall@5 per track-length bin (106-track catalog) and the features' test misses."""
    if not block:
        return ""
    rows = []
    for embedder, per in block["embedders"].items():
        for transform, cells in per.items():
            for split in ("val", "test"):
                rows.append([f"`{embedder}`", transform, split, *(
                    f"{c['track_recall_at_5']:.2f} ({c['n']})"
                    if c["track_recall_at_5"] is not None else "-"
                    for c in cells[split].values())])
    bins = list(block["embedders"]["features"]["clean"]["test"])
    misses = block["embedders"]["features"]["clean"]["test_misses"]
    listed = "; ".join(f"{x['track']} ({x['minutes']} min, rank {x['rank']}, cosine "
                       f"{x['cosine_own']:.2f} to its own excerpt, {x['cosine_top']:.2f} to "
                       "the top match)" for x in misses)
    return ("\n\n**Where the misses are** (106-track catalog; recall@5 by track length, "
            "queries in brackets; a track's two excerpts lie half its length apart):\n\n"
            + _table(["embedder", "queries", "split", *bins], rows)
            + f"\n\nThe {len(misses)} clean test misses of `features`: {listed}.")


def _curve_table(curve: dict | None) -> str:
    if not curve:
        return ""
    sizes = sorted(curve["training_tracks"], key=int)  # the results file sorts keys as text
    rows = [[n, _fmt_interval(curve["training_tracks"][n]["spectttra"]),
             _fmt_interval(curve["training_tracks"][n]["lr"])] for n in sizes]
    extra = curve.get("extra_packages")
    wider = (f"; past {curve.get('main_train_tracks', 34)} tracks the training pool adds "
             f"the soundtracks of {', '.join(f'`{p}`' for p in extra)} (more composers, all "
             "train; validation and test unchanged)" if extra else "")
    return (f"\n\n**Learning curve** ({curve['family']}, paired, clean test ROC-AUC; each "
            f"seed draws its own training tracks{wider}):\n\n"
            + _table(["training tracks", _MODEL_NAMES["spectttra"], _MODEL_NAMES["lr"]], rows))


def _fmt_interval(v: dict) -> str:
    """Mean and t-interval; every metric here lies in [0, 1], so the interval is clipped."""
    ci = v.get("ci95")
    return f"{v['mean']:.3f}" + (f" [{max(ci[0], 0):.3f}, {min(ci[1], 1):.3f}]" if ci else "")


def _cell(entry: dict, key: str, metric: str = "roc_auc") -> str:
    return _fmt_interval(entry["cells"][key][metric])


def _in_family_table(results: dict, m: dict) -> str:
    perturbations = m["protocol"]["perturbations"]
    rows = []
    for family in m["data"]["families"]:
        for model in ("spectttra", "vit", "lr", "deviation"):
            entry = results.get(f"{family}/{model}")
            if entry is None:
                continue
            worst = min(perturbations, key=lambda p: entry["cells"][f"{family}/{p}"]["roc_auc"]
                        ["mean"])
            rows.append([family, _MODEL_NAMES[model], _cell(entry, f"{family}/clean"),
                         _cell(entry, f"{family}/clean", "pr_auc"),
                         f"{_cell(entry, f'{family}/{worst}')} ({worst})",
                         _cell(entry, f"{family}/clean", "fpr_at_val_max_f1"),
                         _cell(entry, f"{family}/clean", "fpr_at_val_fpr_5pct")])
    return _table(["family", "model", "ROC-AUC clean", "PR-AUC clean",
                   "ROC-AUC worst perturbation", "FPR at val max-F1 threshold",
                   "FPR at val 5 % threshold"], rows)


def _cross_family_table(results: dict) -> str:
    families = sorted({k.split("/")[0] for e in results.values() for k in e["cells"]})
    rows = []
    for name, entry in results.items():
        set_name, model = name.rsplit("/", 1)
        rows.append([set_name, _MODEL_NAMES[model]]
                     + [_cell(entry, f"{f}/clean") + ("" if f in entry["train_families"]
                                                       else " (unseen)") for f in families])
    return _table(["trained on", "model", *families], rows)


_MODEL_NAMES = {"spectttra": "Model 1 (tiny SpecTTTra)", "vit": "ViT-patch baseline",
                "lr": "artifact features + LR",
                "deviation": "artifact features, distance from human (no AI seen)",
                "combined": "Model 1 or distance from human (the larger standardised score)",
                "fused": "Model 1 + artifact LR (the mean standardised score)",
                "consistency_dev": "re-degradation consistency, distance from human (no AI seen)",
                "consistency_lr": "re-degradation consistency + LR",
                "artifact+consistency_lr": "artifact and consistency features + LR",
                "consistency_dev_wider": "re-degradation consistency, distance from human "
                                         "(five composers)",
                "deviation_wider": "artifact features, distance from human (five composers)"}


def _perturbation_table(m: dict) -> str:
    """Per perturbation, the plain and the augmented run; then the before/after figure."""
    plain = {r["perturbation"]: r for r in m["table_plain"]}
    aug = {r["perturbation"]: r for r in m["table_augmented"]}
    rows = [[name, plain[name]["roc_auc"], plain[name]["fpr_on_human"],
             aug.get(name, {}).get("roc_auc"), aug.get(name, {}).get("fpr_on_human")]
            for name in plain]
    copies = m["runs"]["augmentation"]["copies_per_train_clip"]
    return (_table(["perturbation", "ROC-AUC", "FPR on human",
                    f"ROC-AUC, augmented run ({copies} copies/clip)", "FPR, augmented run"],
                   rows)
            + f"\n\n![Robustness before/after](../{m['figure']})")


def t_real_robustness() -> str:
    m = _load(BENCH / "real_robustness.json")
    if m is None:
        return _missing("benchmarks/results/real_robustness.json")
    return (_source("real_robustness.json", m)
            + f"Test split of {m['data']} (n = {m['n_test_clips']}); thresholds from "
            "validation.\n\n" + _perturbation_table(m))


def t_robustness() -> str:
    m = _load(BENCH / "robustness.json")
    if m is None:
        return _missing("benchmarks/results/robustness.json")
    conf = m["codec_confound"]
    # The results file sorts its keys; show runs in the story's order, bitrates ascending.
    order = sorted(conf["detection_test_split"],
                   key=lambda k: (not k.startswith("demo"), len(k)))  # demo, plain, control
    detect = [[name, conf["detection_test_split"][name]["ai_mp3_human_wav"]["roc_auc"],
               conf["detection_test_split"][name]["all_wav"]["roc_auc"]] for name in order]
    shifts, probes = [], []
    for c in sorted(conf["by_source_bitrate"].values(), key=lambda c: c["bitrate_kbps"]):
        for name in order:
            r = c["classifiers"][name]
            lo, hi = r["mean_dp_ci"]
            shifts.append([c["bitrate_kbps"], name, f"{r['mean_dp']:+.4f} [{lo:+.4f}, {hi:+.4f}]",
                           "yes" if r["at_chance"] else "**no**", _fmt(r["decision_flips"]),
                           _fmt(r["auc_mp3_vs_wav"]), _fmt(r["p_value"], 4)])
        probes.append([c["bitrate_kbps"], _fmt(c["probe"]["plain"]["auc"]),
                       _fmt(c["probe"]["plain"]["p_value"]),
                       _fmt(c["probe"]["codec_control"]["auc"]),
                       _fmt(c["probe"]["codec_control"]["p_value"])])
    first = next(iter(conf["by_source_bitrate"].values()))
    kbps = conf["control_frontend"]["codec_bitrate_kbps"]
    return (_source("robustness.json", m)
            + f"Test split of the {m['data']} (n = {m['n_test_clips']}); thresholds from "
            "validation.\n\n"
            + _perturbation_table(m) + "\n\n"
            f"**Codec confound.** Two runs are trained on {conf['confounded_corpus']} (the "
            f"SONICS-vs-GTZAN situation), without and with `codec=\"mp3\"` at {kbps} kbps. "
            "Test ROC-AUC, with the test AI songs stored as MP3 like in training, and all "
            "stored as WAV:\n\n"
            + _table(["run", "ROC-AUC, AI as MP3", "ROC-AUC, all WAV"], detect)
            + f"\n\nThen {first['n_songs']} {conf['songs']}, each stored as WAV and as MP3: "
            "the mean paired shift P(AI | MP3) - P(AI | WAV) with its 95 % confidence "
            f"interval (\"at chance\": the interval lies within ±{first['margin']}), the "
            "share of songs whose decision changes with the format, the ROC-AUC of P(AI) for "
            "MP3 vs WAV across songs, and the p-value of a paired sign-flip test (which "
            "flags even tiny consistent shifts).\n\n"
            + _table(["MP3 copies at kbps", "run", "mean shift of P(AI) [95 % CI]",
                      "at chance", "decision flips", "AUC MP3 vs WAV", "sign-flip p"], shifts)
            + "\n\nA stricter bound: a ridge probe on per-band log-mel statistics of the "
            "paired copies (cross-validated by song; p-value from label swaps within songs), "
            "without and with the control. Paired copies make it far more sensitive than a "
            "detector trained on different songs per class.\n\n"
            + _table(["MP3 copies at kbps", "probe AUC, plain", "p", "probe AUC, control",
                      "p"], probes))


def t_end_to_end() -> str:
    m = _load(BENCH / "end_to_end.json")
    if m is None:
        return _missing("benchmarks/results/end_to_end.json")
    p = m["pipeline"]
    rows = [[stage, p["cold"]["stages_s"].get(stage), p["warm_stages_s"].get(stage)]
            for stage in ("decode", "front_end", "classifier", "embedding", "search")]
    rows.append(["total", p["cold"]["first_call_s"], p["warm_total_s"]])
    hops = [[r["hop_s"], r["frames"], r["seconds"],
             r["seconds"] + m["warm_without_embedding_s"], r["cosine_to_hop_0.1"]]
            for r in m["openl3_hops"]["rows"]]
    chosen = m["chosen_openl3_query_hop_s"]
    verdict = (f"The smallest hop within the {m['budget_s']:.0f} s budget is {chosen} s."
               if chosen else f"No hop fits the {m['budget_s']:.0f} s budget on this CPU: "
               "OpenL3 queries need a GPU, or the `features` embedder.")
    return (_source("end_to_end.json", m)
            + f"`Analyzer.analyze` on one 30 s song ({m['data']}), {p['embedder']} embedder, "
            f"models loaded in {p['cold']['load_models_s']:.2f} s; seconds per stage "
            "(cold = first call, warm = median of repeats):\n\n"
            + _table(["stage", "cold", "warm"], rows)
            + f"\n\nOpenL3 ({m['openl3_hops']['model']}) as the query embedder, per hop; "
            "the total adds the other warm stages:\n\n"
            + _table(["hop (s)", "frames", "embedding (s)", "total (s)",
                      "cosine to hop 0.1 s"], hops) + "\n\n" + verdict)


def t_benchmarks() -> str:
    table = BENCH / "TABLE.md"
    return table.read_text() if table.exists() else _missing("benchmarks/results/TABLE.md")


def v_cache_kb_per_clip() -> str:
    m = _load(BENCH / "preprocess.json")
    per_clip = (m or {}).get("parallel_cache_preprocess", {}).get("bytes_per_clip")
    return (f"{per_clip / 1e3:.0f} kB per {m['config']['duration']:.0f} s clip, "
            "`benchmarks/results/preprocess.json`" if per_clip
            else _missing("benchmarks/results/preprocess.json"))


def v_base_parameters() -> str:
    m = _load(BENCH / "classifier_cpu.json")
    row = next((r for r in (m or {}).get("results", [])
                if r.get("preset") == "base" and r.get("model") == "spectttra"), None)
    return (f"{row['n_parameters'] / 1e6:.1f} M parameters at {m['input']['seconds']:.0f} s, "
            "`benchmarks/results/classifier_cpu.json`" if row
            else _missing("benchmarks/results/classifier_cpu.json"))


TABLES: dict[str, Callable[[], str]] = {
    "demo_classifier": t_demo_classifier,
    "demo_retrieval": t_demo_retrieval,
    "demo_recommendations": t_demo_recommendations,
    "openl3_parity": t_openl3_parity,
    "real_detection": t_real_detection,
    "real_detection_noaug": lambda: t_real_detection("real_detection_noaug.json"),
    "real_retrieval": t_real_retrieval,
    "generic_artifacts": t_generic_artifacts,
    "recipe_validation": t_recipe_validation,
    "input_norm_synthetic": t_input_norm_synthetic,
    "recipe_protocol": t_recipe_protocol,
    "recipe_protocol_augment": lambda: t_recipe_protocol("recipe_protocol_augment.json"),
    "consistency": t_consistency,
    "robustness": t_robustness,
    "real_robustness": t_real_robustness,
    "end_to_end": t_end_to_end,
    "benchmarks": t_benchmarks,
    "cache_kb_per_clip": v_cache_kb_per_clip,
    "base_parameters": v_base_parameters,
}


def render(template: str) -> str:
    """Replace every ``{{name}}`` with its generated table."""
    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in TABLES:
            raise KeyError(f"report/template.md uses unknown table {{{{{name}}}}}")
        return TABLES[name]()

    return re.sub(r"\{\{(\w+)\}\}", fill, template)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", default=None,
                        help="a finished `python -m helpers demo` folder to snapshot first")
    args = parser.parse_args(argv)
    if args.demo_dir:
        snapshot_demo(Path(args.demo_dir))
    text = render((ROOT / "report" / "template.md").read_text())
    header = ("<!-- Generated by report/build.py from report/template.md and the results "
              "files; edit those, not this file. -->\n\n")
    write_text(ROOT / "report" / "report.md", header + text)
    print(f"wrote {ROOT / 'report' / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
