"""Run every benchmark that exists, then summarise all results in ``results/TABLE.md``.

Each benchmark runs in its own subprocess (``python -m benchmarks.<name> ARGS``), one after
the other, so one's memory peak, torch thread setting or crash cannot touch the next; a failed
benchmark is reported and the others still run. Scripts not (yet) in the folder are skipped.
Then `build_table` reads every results JSON and writes one Markdown table of the headline
numbers: each row names the machine it ran on, the commit and date of the run (from the file's
``provenance``; older files say it was not recorded), the baseline measured in the same run,
the ratio, and the data it was measured on. A missing results file gives a "not run" row.

    python -m benchmarks                          # everything (tens of minutes on 2 cores)
    python -m benchmarks --only index,real_detection
    python -m benchmarks --skip embedding,end_to_end
    python -m benchmarks --table-only             # just rebuild TABLE.md from the JSON files
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.io import write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

#: Benchmarks in the order they run, with the arguments that write the file the table reads.
#: ``real_audio`` (the download) is not listed: the benchmarks that need it fetch it.
BENCHMARKS: dict[str, list[str]] = {
    "openl3_parity": [],
    "preprocess": [],
    "openl3_original": [],
    "openl3_query_budget": [],
    "classifier": ["--device", "cpu"],
    "index": [],
    "hnsw": [],
    "end_to_end": [],
    "robustness": [],
    "real_detection": [],
    "real_detection_noaug": ["--augment", "0", "--out",
                             "benchmarks/results/real_detection_noaug.json"],
    "generic_artifacts": [],
    "recipe_validation": [],
    "recipe_protocol": [],
    "recipe_protocol_augment": ["--recipe", "default+augment"],
    "consistency": [],
    "input_norm_synthetic": [],
    "real_robustness": [],
    "real_retrieval": [],
}
#: Entries of `BENCHMARKS` that run another entry's script with other arguments.
SCRIPT_OF = {"recipe_protocol_augment": "recipe_protocol",
             "real_detection_noaug": "real_detection"}


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------


def run_benchmarks(names: list[str]) -> dict[str, dict[str, Any]]:
    """Run the named benchmarks (those whose script exists) one by one in subprocesses.

    Returns
    -------
    dict
        name -> ``{"status": "ok" | "failed (rc N)" | "missing", "seconds": float}``.
    """
    outcome: dict[str, dict[str, Any]] = {}
    for name in names:
        module = SCRIPT_OF.get(name, name)
        script = HERE / f"{module}.py"
        if not script.exists():
            print(f"[{name}] skipped: {script.name} does not exist", flush=True)
            outcome[name] = {"status": "missing", "seconds": 0.0}
            continue
        cmd = [sys.executable, "-m", f"benchmarks.{module}", *BENCHMARKS.get(name, [])]
        print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        seconds = round(time.perf_counter() - t0, 1)
        outcome[name] = {"status": "ok" if rc == 0 else f"failed (rc {rc})", "seconds": seconds}
        print(f"[{name}] {outcome[name]['status']} in {seconds} s", flush=True)
    return outcome


# ------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------

#: area, measurement, result, baseline, ratio, data, machine (the run column is added per file)
Row = tuple[str, str, str, str, str, str, str]
HEADER = ("area", "measurement", "result", "baseline (same run)",
          "ratio (>1: ours better)", "data", "machine", "run (commit, UTC date)")
#: Row order by area (the order of the headline questions); unknown areas go last.
AREA_ORDER = ("openl3 parity", "preprocess", "embedding", "classifier", "index", "end to end",
              "memory", "robustness", "real detection", "real retrieval")


def _get(data: Any, *keys: Any, default: Any = None) -> Any:
    """``data[k1][k2]...``, or `default` when any step is missing."""
    for key in keys:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return default
    return data


def _num(value: Any, digits: int = 3, unit: str = "") -> str:
    """A number with `digits` significant digits (and a unit), or "?" when absent."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "?"
    text = f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"
    return f"{text}{unit}"


def _ratio(num: Any, den: Any) -> str:
    if not isinstance(num, int | float) or not isinstance(den, int | float) or den == 0:
        return "?"
    return f"{num / den:.3g}x"


def _load(results_dir: Path, name: str) -> dict | None:
    path = results_dir / name
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return {"_error": f"unreadable ({err.__class__.__name__})"}
    if not isinstance(data, dict):
        return {"_error": f"unexpected layout (a JSON {type(data).__name__}, not an object)"}
    return data


def run_of(data: dict) -> str:
    """Commit (``+dirty`` with uncommitted changes) and UTC date from a file's provenance."""
    prov = data.get("provenance")
    if not isinstance(prov, dict):
        return "not recorded"
    commit = _get(prov, "git", "commit") or "no git"
    dirty = "+dirty" if _get(prov, "git", "dirty") else ""
    return f"{commit[:8]}{dirty}, {str(prov.get('date_utc', '?'))[:10]}"


def machine_of(data: dict) -> str:
    """A short machine description: from ``provenance`` when the file has it, else from
    whichever older layout it uses."""
    prov = data.get("provenance") if isinstance(data.get("provenance"), dict) else {}
    pm = prov.get("machine", {})
    m = data.get("machine") or data.get("environment") or {}
    cpus = pm.get("cpu_count", m.get("cpu_count", m.get("cpus", data.get("cpu_count"))))
    device = data.get("device") if isinstance(data.get("device"), str) else m.get("device")
    cpu = (pm.get("cpu_model") or m.get("cpu") or m.get("processor")
           or data.get("device_name"))
    torch = _get(prov, "versions", "torch") or m.get("torch", data.get("torch"))
    threads = m.get("threads", m.get("torch_threads", data.get(
        "torch_threads", _get(prov, "threads", "torch_threads"))))
    load = (m.get("load_average_at_end") or m.get("load_average_after")
            or pm.get("load_average_1_5_15_min")
            or _get(m, "load_average_1_5_15_min") or _get(data, "load_average_1_5_15_min", "end")
            or data.get("load_average_at_end") or m.get("load_average"))
    parts = []
    if device and device != "cpu":
        gpu = m.get("gpu") or (data.get("device_name") if device == "cuda" else None)
        parts.append(f"{device} ({gpu})" if gpu else str(device))
    if cpus:
        parts.append(f"{cpus} CPU" + (f" {cpu}" if cpu else ""))
    elif cpu:
        parts.append(str(cpu))
    if torch:
        parts.append(f"torch {torch}")
    if threads:
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
    if isinstance(load, list | tuple) and load and isinstance(load[0], int | float):
        parts.append(f"load {load[0]:.1f}")
    return ", ".join(parts) or "?"


def _preprocess(d: dict) -> list[Row]:
    m = machine_of(d)
    songs = d.get("songs", {})
    data = (f"{songs.get('n', '?')} real songs, {songs.get('minutes_total', '?')} min "
            "(Debian soundtracks), first 30 s")
    rows: list[Row] = []
    for fmt, e in sorted(_get(d, "per_format", default={}).items()):
        ours = _get(e, "ours", "clips_per_second")
        base = _get(e, "baseline", "clips_per_second")
        rows.append((
            "preprocess", f"front end, {fmt} -> mel (`load_clip`+`mel_db`)",
            f"{_num(ours)} clips/s ({_num(_get(e, 'ours', 'x_realtime'))}x realtime)",
            f"`librosa.load` whole file: {_num(base)} clips/s",
            f"{_num(e.get('speedup_total'))}x", data, m))
    par = d.get("parallel_cache_preprocess")
    if par:
        rows.append((
            "preprocess", f"`cache.preprocess`, {par.get('n_jobs', '?')} workers",
            f"{_num(par.get('clips_per_second'))} clips/s, "
            f"{_num(par.get('bytes_per_clip', 0) / 1e3)} kB/clip",
            "-", "-", f"{par.get('n_clips', '?')} clips of the same songs "
            f"({_num(par.get('projected_gb_for_97k_clips'))} GB for 97k clips)", m))
    rss = d.get("peak_rss_longest_song")
    if rss:
        ours = _get(rss, "ours", "peak_above_before_mb")
        base = _get(rss, "baseline", "peak_above_before_mb")
        rows.append((
            "memory", "front end peak RSS above baseline, longest song",
            _num(ours, unit=" MB"), f"`librosa.load`: {_num(base, unit=' MB')}",
            f"{_num(base - ours)} MB less" if isinstance(base, int | float)
            and isinstance(ours, int | float) else "?",
            f"one {_num(_get(d, 'stage_breakdown_longest_song_s', 'seconds'))} s real song", m))
    return rows


def _openl3_parity(d: dict) -> list[Row]:
    """The end-to-end and conv-stack differences to the Keras reference, against the limits."""
    lim = d.get("limits", {})
    data = f"{d.get('fixture', '?')}, {d.get('n_frames', '?')} frames"
    return [("openl3 parity", f"PyTorch port vs OpenL3 0.4.2 (Keras), {what}",
             _num(d.get(key)), f"limit {_num(lim.get(limit))}", "within limit"
             if isinstance(d.get(key), int | float) and isinstance(lim.get(limit), int | float)
             and d[key] <= lim[limit] else "OVER LIMIT", data, machine_of(d))
            for what, key, limit in (
                ("conv stack, relative L2 per frame (max)", "check3_conv_rel_l2_max",
                 "check3_conv_rel_l2_max"),
                ("end to end (BN fused), relative L2 per frame (max)",
                 "check4_fused_rel_l2_max", "check4_rel_l2_max"))]


def _embedding(d: dict) -> list[Row]:
    # No baseline: nothing else was measured in the same run (a TensorFlow run is to come).
    m = machine_of(d)
    rows: list[Row] = []
    for r in d.get("results", []):
        rows.append((
            "embedding", f"OpenL3 {r.get('input_repr', '?')} {r.get('dtype', '')}"
            f"{', channels-last' if _get(d, 'settings', 'channels_last', default=False) else ''}"
            f", hop {r.get('hop_s', '?')} s",
            f"{_num(r.get('x_realtime'))}x realtime ({_num(r.get('seconds_per_clip'))} s/clip)",
            "-", "-", f"{_num(r.get('clip_s'))} s 44.1 kHz clip, random weights", m))
        if r.get("peak_memory_mb") is not None and r is d["results"][0]:
            rows.append(("memory", f"OpenL3 {r.get('peak_memory_kind', 'peak')}",
                         _num(r["peak_memory_mb"], 4, " MB"), "-", "-",
                         f"{r.get('input_repr')} model, 30 s clip, batch "
                         f"{_get(d, 'settings', 'batch_size', default='?')}", m))
    return rows


def _classifier(d: dict, label: str) -> list[Row]:
    m = machine_of(d)
    shape = _get(d, "input", "shape", default="?")
    data = f"random mel {tuple(shape) if isinstance(shape, list) else shape} " \
           f"({_get(d, 'input', 'seconds', default='?')} s), random weights"
    by = {(r.get("preset"), r.get("model")): r for r in d.get("results", [])}
    rows: list[Row] = []
    for preset in dict.fromkeys(p for p, _ in by):
        st, vit = by.get((preset, "spectttra")), by.get((preset, "vit"))
        if not st:
            continue
        big = max(map(int, st.get("inference_clips_per_s", {"0": 0})), default=0)
        st_tp = _get(st, "inference_clips_per_s", str(big))
        vit_tp = _get(vit or {}, "inference_clips_per_s", str(big))
        params = f"{st.get('n_parameters', 0) / 1e6:.2g} M params"
        rows.append((
            "classifier", f"{preset} SpecTTTra ({params}) 1-clip latency{label}",
            _num(st.get("latency_1clip_ms"), unit=" ms"),
            f"ViT same size: {_num(_get(vit, 'latency_1clip_ms'), unit=' ms')}" if vit else "-",
            _ratio(_get(vit, "latency_1clip_ms"), st.get("latency_1clip_ms")) if vit else "-",
            data, m))
        rows.append((
            "classifier", f"{preset} inference throughput, batch {big}{label}",
            _num(st_tp, unit=" clips/s"),
            f"ViT: {_num(vit_tp, unit=' clips/s')}" if vit else "-",
            _ratio(st_tp, vit_tp) if vit else "-", data, m))
        rows.append((
            "classifier", f"{preset} training throughput, batch {st.get('train_batch', '?')}"
            f"{label}", _num(st.get("train_clips_per_s"), unit=" clips/s"),
            f"ViT: {_num(_get(vit, 'train_clips_per_s'), unit=' clips/s')}" if vit else "-",
            _ratio(st.get("train_clips_per_s"), _get(vit, "train_clips_per_s")) if vit else "-",
            data, m))
        mem_key = "peak_rss_mb" if "peak_rss_mb" in st else "peak_train_mb"
        if mem_key in st:
            rows.append((
                "memory", f"classifier {preset} {mem_key.replace('_mb', '')}{label}",
                _num(st[mem_key], 4, " MB"),
                f"ViT: {_num(_get(vit, mem_key), 4, ' MB')}" if vit else "-",
                _ratio(_get(vit, mem_key), st[mem_key]) if vit else "-", data, m))
    return rows


def _index(d: dict) -> list[Row]:
    m = machine_of(d)
    ef_pick = "64"
    rows: list[Row] = []
    for r in d.get("results", []):
        n, variant = r.get("n"), r.get("variant", "?")
        flat = _get(r, "faiss_flat", "single_query", "median_ms")
        sk = _get(r, "sklearn_brute", "single_query", "median_ms")
        hnsw = _get(r, "faiss_hnsw", "ef_search", ef_pick)
        data = f"{_num(n, 6)} {variant} unit vectors, dim {r.get('dim', '?')}, k=" \
               f"{d.get('k', '?')}"
        rows.append((
            "index", f"exact (FAISS flat) single query, n={_num(n, 6)} {variant}",
            _num(flat, unit=" ms"),
            f"sklearn brute: {_num(sk, unit=' ms')}" if sk is not None else "-",
            _ratio(sk, flat) if sk is not None else "-", data, m))
        for case in ("single_query", "batch_100"):
            nq = _get(r, "numpy_exact", case, "median_ms")
            fq = _get(r, "exact_by_threads", str(_get(r, "numpy_exact", "threads", default=1)),
                      case, "faiss_flat", "median_ms")
            if nq is not None and fq is not None:
                rows.append((
                    "index", f"exact (numpy, used) {case.replace('_', ' ')}, n={_num(n, 6)} "
                    f"{variant}, {_get(r, 'numpy_exact', 'threads', default='?')} thread(s)",
                    _num(nq, unit=" ms"), f"FAISS flat: {_num(fq, unit=' ms')}",
                    _ratio(fq, nq), data, m))
        if hnsw:
            rows.append((
                "index", f"HNSW (M={_get(r, 'faiss_hnsw', 'm', default='?')}, ef={ef_pick}) "
                f"single query, n={_num(n, 6)} {variant}",
                f"{_num(_get(hnsw, 'single_query', 'median_ms'), unit=' ms')}, recall@"
                f"{d.get('k', '?')} {_num(hnsw.get('recall_at_5'))}",
                f"exact: {_num(flat, unit=' ms')}",
                _ratio(flat, _get(hnsw, "single_query", "median_ms")), data, m))
    return rows


def _end_to_end(d: dict) -> list[Row]:
    m = machine_of(d)
    p = d.get("pipeline", {})
    stages = p.get("warm_stages_s", {})
    stage_text = ", ".join(f"{k} {_num(v)}" for k, v in stages.items())
    rows: list[Row] = [(
        "end to end", f"`Analyzer.analyze` warm latency ({p.get('embedder', '?')} embedder)",
        _num(p.get("warm_total_s"), unit=" s") + (f" ({stage_text})" if stage_text else ""),
        f"budget {_num(d.get('budget_s'), unit=' s')}; cold first call "
        f"{_num(_get(p, 'cold', 'first_call_s'), unit=' s')}",
        _ratio(_get(p, "cold", "first_call_s"), p.get("warm_total_s")) + " (cold/warm)",
        d.get("data", "?"), m)]
    hop = d.get("chosen_openl3_query_hop_s")
    if "chosen_openl3_query_hop_s" in d:
        rows.append(("end to end", "OpenL3 query hop that fits the budget",
                     f"{hop} s" if hop is not None else "none fits", "-", "-",
                     "mel256, random weights, same song", m))
    return rows


def _openl3_original(d: dict) -> list[Row]:
    """The port against the original openl3 (TensorFlow), alternating in one run."""
    m = machine_of(d)
    rows: list[Row] = []
    for r in d.get("results", []):
        summary = r.get("summary", {})
        orig = summary.get("original", {})
        data = (f"{_num(d.get('clip_s'))} s 44.1 kHz clip, {r.get('weights', '?')}, "
                f"{d.get('threads_each', '?')} threads each")
        for side, s in summary.items():
            if side == "original":
                continue
            label = side.replace("port_", "")
            rows.append((
                "embedding", f"OpenL3 {r.get('input_repr')} hop {r.get('hop_s')} s, port {label}: "
                "CPU-seconds per clip (wall)",
                f"{_num(s.get('cpu_s_median'))} s ({_num(s.get('wall_s_median'))} s wall), "
                f"rel-L2 to original {_num(s.get('max_rel_l2_vs_original'), 2)}",
                f"openl3 0.4.2 TF: {_num(orig.get('cpu_s_median'))} s "
                f"({_num(orig.get('wall_s_median'))} s wall)",
                f"{_ratio(orig.get('cpu_s_median'), s.get('cpu_s_median'))} CPU, "
                f"{_ratio(orig.get('wall_s_median'), s.get('wall_s_median'))} wall", data, m))
    return rows


def _query_budget(d: dict) -> list[Row]:
    m = machine_of(d)
    hop = _get(d, "decision", "query_hop_s")
    if hop is None:
        return [("embedding", "OpenL3 query hop", "no hop fits the budget", "-", "-", "-", m)]
    curve = _get(d, "quality_curve", str(hop), default={})
    times = _get(d, "query_embed_wall_s", default={})
    return [("embedding", f"OpenL3 query at hop {hop} s (chosen by the rule)",
             f"fp32 {_num(_get(times, 'fp32', str(hop), 'median_s'))} s, bf16 "
             f"{_num(_get(times, 'bf16', str(hop), 'median_s'))} s per 30 s query; cosine to "
             f"hop 0.1 {_num(_get(curve, 'cosine_to_hop_0.1', 'mean'), 5)}",
             f"hop 0.1: fp32 {_num(_get(times, 'fp32', '0.1', 'median_s'))} s", "-",
             f"real soundtracks, {len(_get(d, 'data', 'tracks', default=[]))} tracks, random "
             "weights", m)]


def _recipe(d: dict) -> list[Row]:
    m = machine_of(d)
    rows: list[Row] = []
    base = _get(d, "summary", "default", default={})
    for name, s in d.get("summary", {}).items():
        rows.append((
            "real detection", f"recipe on validation: {name}",
            f"clean {_num(_get(s, 'clean_roc_auc', 'mean'))}, worst perturbed "
            f"{_num(_get(s, 'worst_perturbed_roc_auc', 'mean'))}, FPR@0.5 "
            f"{_num(_get(s, 'fpr_at_0.5', 'mean'))}",
            f"default: {_num(_get(base, 'clean_roc_auc', 'mean'))}, "
            f"{_num(_get(base, 'worst_perturbed_roc_auc', 'mean'))}",
            "chosen" if _get(d, "decision", "choice") == name else "-",
            f"{len(d.get('validation_composers', {})) or 1} validation composer(s), never the "
            "test packages; 3 families, mean over composers and seeds", m))
    return rows


def _input_norm(d: dict) -> list[Row]:
    """Test ROC-AUC of clip vs per-band input normalisation on each synthetic corpus."""
    if "results" not in d:
        return _generic(d, "real detection")
    m, rows = machine_of(d), []
    for corpus, norms in d["results"].items():
        rows.append(("synthetic detection", f"input normalisation, corpus {corpus}: test ROC-AUC",
                     ", ".join(f"{n} {_num(c['roc_auc']['mean'])}" for n, c in norms.items()),
                     "clip (the default)", "-",
                     "synthetic demo corpora; mean over seeds", m))
    return rows


def _real_detection(d: dict) -> list[Row]:
    m = machine_of(d)
    data = ("real Debian soundtracks (music only), split by package; AI = the project's "
            "artifact families (proxies), paired design, mean over seeds")
    rows: list[Row] = []
    targets = _get(d, "protocol", "targets", default={})
    models = [(model, s) for model, s in d.get("summary", {}).items()]
    models += [(f"{model} (wider training pool: 86 tracks)", s)
               for model, s in d.get("summary_wider_pool", {}).items()]
    for model, s in models:
        clean = s.get("clean_roc_auc_per_family", {})
        worst = s.get("worst_perturbed_roc_auc_per_family", {})
        fpr = s.get("fpr_on_human_at_val_threshold_per_family", {})
        unseen = s.get("unseen_family_roc_auc", {})
        met = s.get("targets_met", {})
        for what, values, target, key in (
                ("clean ROC-AUC per family", clean, targets.get("clean_roc_auc"),
                 "clean_roc_auc"),
                ("worst of MP3 128 / pitch +-1 ROC-AUC", worst,
                 targets.get("perturbed_roc_auc"), "perturbed_roc_auc"),
                ("FPR on human at the val threshold", fpr, targets.get("fpr_on_human"),
                 "fpr_on_human"),
                ("unseen family ROC-AUC (min over directions)",
                 {"min": min(unseen.values())} if unseen else {},
                 targets.get("unseen_family_roc_auc"), "unseen_family_roc_auc")):
            rows.append(("real detection", f"{model}: {what}",
                         ", ".join(f"{k} {_num(v)}" for k, v in values.items()),
                         f"target {target}", "met" if met.get(key) else "NOT met", data, m))
    return rows


def _study_rows(d: dict, label: str) -> list[Row]:
    """A study run through the detection protocol: `_real_detection`'s rows, each model
    renamed ``<model> (<label>)``. The feature baselines do not depend on the study: their
    rows are the main table's already."""
    if "summary" not in d:
        return _generic(d, "real detection")
    def own(summary: dict) -> dict:
        return {f"{model} ({label})": s for model, s in summary.items()
                if model not in ("lr", "deviation")}

    targets = d.get("targets") or _get(d, "protocol", "targets", default={})
    shaped = {**d, "protocol": {"targets": targets}, "summary": own(d["summary"]),
              "summary_wider_pool": own(d.get("summary_wider_pool", {}))}
    return _real_detection(shaped)


def _recipe_protocol(d: dict) -> list[Row]:
    """A recipe through the detection protocol (``default+augment`` is the CLI's default)."""
    name = _get(d, "recipe", "name", default="?")
    return _study_rows(d, f"recipe {name}, "
                          f"{'the CLI default' if name == 'default+augment' else 'opt-in'}")


def _real_detection_noaug(d: dict) -> list[Row]:
    """The detection protocol with Model 1 and the ViT trained without perturbed copies."""
    return _study_rows(d, "no augmentation, as the Python train() trains")


def _consistency(d: dict) -> list[Row]:
    """Re-degradation consistency models through the detection protocol's paired design."""
    return _study_rows(d, "re-degradation consistency study")


def _generic_artifacts(d: dict) -> list[Row]:
    """Test ROC-AUC on each family when trained on generic primitives only (all unseen)."""
    if "results" not in d:
        return _generic(d, "real detection")
    m, target = machine_of(d), d.get("target_unseen_roc_auc")
    rows: list[Row] = []
    for model, families in d["results"].items():
        auc = {f: c["roc_auc"]["mean"] for f, c in families.items()}
        met = target is not None and min(auc.values()) >= target
        rows.append(("real detection", f"{model} trained on generic artifact primitives only: "
                     "ROC-AUC on each (unseen) family",
                     ", ".join(f"{f} {_num(v)}" for f, v in auc.items()), f"target {target}",
                     "met" if met else "NOT met",
                     "real Debian soundtracks, split by package; mean over seeds", m))
    return rows


def _generic(d: dict, area: str) -> list[Row]:
    """Rows for a results file whose layout this table does not know yet: its top-level
    numbers (and one level below), so that a new benchmark is visible before it is styled."""
    found = []
    for key, value in d.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            found.append((key, value))
        elif isinstance(value, dict):
            found += [(f"{key}.{k}", v) for k, v in value.items()
                      if isinstance(v, int | float) and not isinstance(v, bool)]
    text = "; ".join(f"{k} {_num(v)}" for k, v in found[:8]) or "(no top-level numbers)"
    return [(area, "headline numbers (layout not known to the table)", text, "-", "-",
             str(d.get("data", d.get("description", "?")))[:120], machine_of(d))]


def _shift(r: dict) -> str:
    """Mean P(AI) shift between a song's MP3 and WAV copies, its 95 % CI and the verdict."""
    lo, hi = r.get("mean_dp_ci", (float("nan"), float("nan")))
    verdict = "at chance" if r.get("at_chance") else "NOT at chance"
    return f"{r['mean_dp']:+.4f} [{lo:+.4f}, {hi:+.4f}], {verdict}"


def _robustness(d: dict) -> list[Row]:
    """Clean and worst-perturbation ROC-AUC, plain vs augmented; then the codec confound."""
    if "table_plain" not in d:
        return _generic(d, "robustness")
    m, data = machine_of(d), str(d.get("data", "?"))[:120]
    rows: list[Row] = []
    plain = {r["perturbation"]: r for r in d["table_plain"]}
    aug = {r["perturbation"]: r for r in d.get("table_augmented", [])}
    copies = _get(d, "runs", "augmentation", "copies_per_train_clip", default="?")
    for label, pick in (("clean", lambda t: t.get("clean", {})),
                        ("worst perturbation", lambda t: min(
                            (r for k, r in t.items() if k != "clean"),
                            key=lambda r: r.get("roc_auc", 1.0), default={}))):
        a, b = pick(plain), pick(aug)
        rows.append(("robustness", f"{label} test ROC-AUC, plain run (augmented run with "
                     f"{copies} perturbed copies/clip as baseline)",
                     f"{_num(a.get('roc_auc'))} ({a.get('perturbation', '-')})",
                     f"{_num(b.get('roc_auc'))} ({b.get('perturbation', '-')})",
                     _num(a["roc_auc"] / b["roc_auc"]) if a.get("roc_auc") and b.get("roc_auc")
                     else "-", f"{data} (n = {d.get('n_test_clips', '?')})", m))
    conf = d.get("codec_confound", {})
    by_rate = conf.get("by_source_bitrate", {})
    for key, c in sorted(by_rate.items(), key=lambda kv: kv[1].get("bitrate_kbps", 0)):
        runs = c.get("classifiers", {})
        if "confounded" not in runs or "confounded + control" not in runs:
            continue
        a, b = runs["confounded + control"], runs["confounded"]
        rows.append(("robustness", f"codec confound, human songs as WAV vs {key} MP3: mean "
                     f"P(AI) shift of the run with the control (baseline: without it), both "
                     f"trained with AI songs as {conf.get('ai_kbps', '?')} kbps MP3",
                     _shift(a), _shift(b), "-",
                     f"{data}; {c.get('n_songs', '?')} songs", m))
    return rows


def _hnsw(d: dict) -> list[Row]:
    """Per catalog: the efSearch the index tunes itself to, its held-out recall and latency
    against exact search."""
    if "results" not in d:
        return _generic(d, "index")
    m, rows = machine_of(d), []
    for r in d["results"]:
        tuned = r.get("tuned", {})
        ef = tuned.get("ef_search")
        hnsw_ms = _get(r, "ef_search", str(ef), "single_query_ms")
        rows.append((
            "index", f"HNSW, efSearch tuned on the catalog ({ef}), n={_num(r.get('n'), 6)} "
                     f"{r.get('variant', '?')}: held-out recall@5 "
                     f"{_num(tuned.get('held_out_recall_at_5'))}, single query",
            _num(hnsw_ms, unit=" ms"), f"exact {_num(r.get('flat_single_query_ms'), unit=' ms')}",
            _ratio(r.get("flat_single_query_ms"), hnsw_ms), "random/clustered unit vectors", m))
    return rows


def _real_retrieval(d: dict) -> list[Row]:
    """Test-track retrieval of each embedder against the MFCC/chroma/contrast baseline."""
    if "table" not in d:
        return _generic(d, "real retrieval")
    m, rows = machine_of(d), []
    test = [r for r in d["table"] if r.get("split") == "test"]
    base = {(r.get("catalog", "all"), r["transform"]): r for r in test
            if r["embedder"] == "baseline"}
    for r in test:
        b = base.get((r.get("catalog", "all"), r["transform"]))
        if r["embedder"] == "baseline" or b is None:
            continue
        rows.append((
            "real retrieval", f"`{r['embedder']}`, {r['transform']} queries, catalog of "
                              f"{r.get('n_catalog', '?')} tracks: track recall@5, "
                              "source precision@5",
            f"{_num(r['track_recall_at_5'])}, {_num(r['source_p_at_5'])}",
            f"{_num(b['track_recall_at_5'])}, {_num(b['source_p_at_5'])}",
            _ratio(r["track_recall_at_5"], b["track_recall_at_5"]),
            f"Debian soundtracks, {r.get('n_queries', '?')} test tracks (target 0.975, 0.60)",
            m))
    return rows


#: Results files, in table order: (file name or glob, builder, area if missing).
SECTIONS: list[tuple[str, Callable[..., list[Row]], str]] = [
    ("openl3_parity.json", _openl3_parity, "openl3 parity"),
    ("preprocess.json", _preprocess, "preprocess"),
    ("openl3_original.json", _openl3_original, "embedding"),
    ("openl3_query_budget.json", _query_budget, "embedding"),
    ("embedding_cuda.json", _embedding, "embedding"),
    ("classifier_cpu.json", _classifier, "classifier"),
    ("classifier_cpu_tiny_1thread.json", _classifier, "classifier"),
    ("classifier_cuda.json", _classifier, "classifier"),
    ("index.json", _index, "index"),
    ("hnsw.json", _hnsw, "index"),
    ("end_to_end.json", _end_to_end, "end to end"),
    ("robustness.json", _robustness, "robustness"),
    ("real_detection.json", _real_detection, "real detection"),
    ("real_detection_noaug.json", _real_detection_noaug, "real detection"),
    ("generic_artifacts.json", _generic_artifacts, "real detection"),
    ("recipe_validation.json", _recipe, "real detection"),
    ("recipe_protocol.json", _recipe_protocol, "real detection"),
    ("recipe_protocol_augment.json", _recipe_protocol, "real detection"),
    ("consistency.json", _consistency, "real detection"),
    ("input_norm_synthetic.json", _input_norm, "synthetic detection"),
    ("real_robustness.json", _robustness, "robustness"),
    ("real_retrieval.json", _real_retrieval, "real retrieval"),
]
#: Files that only some machines produce: no "not run" row when they are absent.
OPTIONAL = {"embedding_cuda.json", "classifier_cuda.json"}


def build_table(results_dir: str | os.PathLike = RESULTS) -> str:
    """One Markdown table of the headline numbers of every results JSON in `results_dir`.

    Missing files give a "not run" row; a file whose keys differ from what is expected gives
    "?" in the affected cells instead of an error, so the table always builds.

    Parameters
    ----------
    results_dir : str or path-like
        The folder holding the benchmarks' JSON files.

    Returns
    -------
    str
        Markdown: a title, a note on how to read it, and the table.
    """
    results_dir = Path(results_dir)
    rows: list[Row] = []
    known = {name for name, _, _ in SECTIONS}
    for name, builder, area in SECTIONS:
        data = _load(results_dir, name)
        if data is None:
            if name not in OPTIONAL:
                rows.append((area, f"`{name}`", "not run", "-", "-", "-", "-", "-"))
            continue
        if "_error" in data:
            rows.append((area, f"`{name}`", data["_error"], "-", "-", "-", "-", "-"))
            continue
        label = " (1 thread)" if "1thread" in name else ""
        try:
            got = builder(data, label) if builder is _classifier else builder(data)
        except Exception as err:  # noqa: BLE001 - a changed layout must not stop the table
            got = [(area, f"`{name}`", f"could not summarise ({err.__class__.__name__}: "
                    f"{err})", "-", "-", "-", machine_of(data))]
        got = got or [(area, f"`{name}`", "no results in file", "-", "-", "-", "-")]
        rows += [(*row, run_of(data)) for row in got]
    for path in sorted(results_dir.glob("*.json")):  # files no section knows yet
        if path.name not in known:
            data = _load(results_dir, path.name) or {}
            if "_error" not in data:
                rows += [(*row, run_of(data)) for row in _generic(data, path.stem)]
    order = {area: i for i, area in enumerate(AREA_ORDER)}
    rows.sort(key=lambda row: order.get(row[0], len(order)))  # stable: file order within
    lines = [
        "# Benchmark results",
        "",
        "Built by `python -m benchmarks --table-only` from the JSON files in this folder; "
        "rerun it after any benchmark. Every ratio compares two measurements taken in the "
        "same run on the same machine; a row without a baseline had none measured. "
        "Wall-clock times on a shared machine: the load average is given with the machine; "
        "read ratios, not absolute seconds, across machines. The last column is the commit "
        "and date the file records (\"+dirty\": the tree had uncommitted changes outside "
        "benchmarks/results/; \"not "
        "recorded\": the file predates provenance, so its code version is unknown).",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_table(results_dir: str | os.PathLike = RESULTS) -> Path:
    """Write `build_table`'s Markdown to ``results_dir/TABLE.md`` (atomically)."""
    results_dir = Path(results_dir)
    path = results_dir / "TABLE.md"
    return write_text(path, build_table(results_dir))


def _names(text: str | None) -> list[str]:
    names = [n.strip().removesuffix(".py") for n in (text or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated benchmarks to run, e.g. index,preprocess")
    parser.add_argument("--skip", help="comma-separated benchmarks not to run")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing; rebuild results/TABLE.md from the existing JSON")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    failed = False
    if not args.table_only:
        names = _names(args.only) or list(BENCHMARKS)
        skip = set(_names(args.skip))
        outcome = run_benchmarks([n for n in names if n not in skip])
        failed = any(o["status"].startswith("failed") for o in outcome.values())
        for name, o in outcome.items():
            print(f"{name:15s} {o['status']:15s} {o['seconds']:8.1f} s")
    path = write_table(args.results)
    print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
