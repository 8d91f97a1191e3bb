"""Benchmark provenance, fingerprinted reuse and the results table (no benchmark is run)."""

from __future__ import annotations

import importlib
import json
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import provenance as prov
from benchmarks.run_all import build_table

ROOT = Path(__file__).resolve().parents[1]


class Builder:
    """A build step that writes `content` into a folder and counts its calls."""

    def __init__(self, folder: Path, content: str = "v1", fail: bool = False) -> None:
        self.folder, self.content, self.fail, self.calls = folder, content, fail, 0

    def __call__(self) -> None:
        self.calls += 1
        self.folder.mkdir(parents=True)
        (self.folder / "data.txt").write_text(self.content)
        if self.fail:
            raise RuntimeError("killed half-way")


def test_fingerprint_depends_on_values_not_key_order():
    a = prov.fingerprint({"sr": 22050, "variants": {"gl": {"iters": 16}}})
    assert a == prov.fingerprint({"variants": {"gl": {"iters": 16}}, "sr": 22050})
    assert a != prov.fingerprint({"sr": 22050, "variants": {"gl": {"iters": 32}}})


def test_artifact_is_reused_only_while_its_settings_match(tmp_path):
    folder = tmp_path / "corpus"
    first = Builder(folder, "made with A")
    record = prov.prepare(folder, {"setting": "A"}, first)
    assert first.calls == 1 and record["reused"] is False

    again = Builder(folder, "should not be written")
    record = prov.prepare(folder, {"setting": "A"}, again)
    assert again.calls == 0 and record["reused"] is True
    assert (folder / "data.txt").read_text() == "made with A"

    other = Builder(folder, "made with B")
    record = prov.prepare(folder, {"setting": "B"}, other)
    assert other.calls == 1 and record["reused"] is False
    assert (folder / "data.txt").read_text() == "made with B"
    assert record["settings"] == {"setting": "B"}  # what was used, for the results file


def test_artifact_that_merely_exists_is_not_reused(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "data.txt").write_text("left by an older, unrecorded configuration")
    build = Builder(folder, "fresh")
    prov.prepare(folder, {"epochs": 30}, build)
    assert build.calls == 1
    assert (folder / "data.txt").read_text() == "fresh"


def test_interrupted_rebuild_is_never_taken_for_the_old_artifact(tmp_path):
    folder = tmp_path / "cache"
    prov.prepare(folder, {"setting": "A"}, Builder(folder, "A"))
    with pytest.raises(RuntimeError):
        prov.prepare(folder, {"setting": "B"}, Builder(folder, "half of B", fail=True))
    retry = Builder(folder, "A again")
    prov.prepare(folder, {"setting": "A"}, retry)
    assert retry.calls == 1
    assert (folder / "data.txt").read_text() == "A again"


def test_a_folder_the_user_named_is_refused_not_deleted(tmp_path):
    folder = tmp_path / "demo_out"
    prov.prepare(folder, {"seed": 1}, Builder(folder, "seed 1"))
    build = Builder(folder)
    with pytest.raises(prov.StaleArtifactError, match="other settings"):
        prov.prepare(folder, {"seed": 0}, build, rebuild=False)
    assert build.calls == 0
    assert (folder / "data.txt").read_text() == "seed 1"


def test_write_result_records_where_the_numbers_came_from(tmp_path):
    out = tmp_path / "result.json"
    prov.write_result(out, {"seconds": 1.5}, {"repeats": 3, "out": out})
    data = json.loads(out.read_text())
    assert data["seconds"] == 1.5
    p = data["provenance"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    assert p["git"]["commit"] == (head or None)
    assert isinstance(p["git"]["dirty"], bool) or not head
    assert datetime.strptime(p["date_utc"], "%Y-%m-%dT%H:%M:%SZ")
    assert {"python", "numpy", "torch"} <= set(p["versions"])
    assert p["machine"]["cpu_count"] >= 1 and p["machine"]["cpu_model"]
    assert set(p["machine"]["cpu_flags"]) <= set(prov.CPU_FLAGS)
    assert len(p["machine"]["load_average_1_5_15_min"]) == 3
    assert "threadpools" in p["threads"]
    assert p["config"] == {"repeats": 3, "out": str(out)}


def test_only_code_changes_make_a_run_dirty():
    assert not prov.dirty_code([])
    assert not prov.dirty_code(["benchmarks/results/recipe_validation.json",
                                "benchmarks/results/TABLE.md"])
    assert prov.dirty_code(["benchmarks/results/x.json", "helpers/train.py"])
    assert prov.dirty_code(["benchmarks/results_helper.py"])  # a prefix of a folder, not it


def test_table_says_which_run_each_number_comes_from(tmp_path):
    parity = {"fixture": "f", "n_frames": 31, "check3_conv_rel_l2_max": 1e-6,
              "check4_fused_rel_l2_max": 3e-3,
              "limits": {"check3_conv_rel_l2_max": 1e-5, "check4_rel_l2_max": 2e-2}}
    prov.write_result(tmp_path / "openl3_parity.json", parity, {})
    (tmp_path / "index.json").write_text(json.dumps({"results": []}))  # no provenance
    table = build_table(tmp_path)
    commit = json.loads((tmp_path / "openl3_parity.json").read_text())["provenance"]["git"][
        "commit"]
    parity_rows = [r for r in table.splitlines() if r.startswith("| openl3 parity")]
    assert len(parity_rows) == 2 and all("within limit" in r for r in parity_rows)
    if commit:
        assert all(commit[:8] in r for r in parity_rows)
    index_row = next(r for r in table.splitlines() if "`index.json`" in r)
    assert index_row.rstrip(" |").endswith("not recorded")


def _fake_detection_results(clean: float, unseen: float) -> dict:
    from benchmarks import real_detection as rd

    def cell(auc: float) -> dict:
        return {"roc_auc": rd._interval([auc, auc]), "pr_auc": rd._interval([auc, auc]),
                "fpr_at_val_max_f1": rd._interval([0.02, 0.04]),
                "fpr_at_val_fpr_5pct": rd._interval([0.01, 0.01])}

    paired = {}
    for name, families in rd.training_sets().items():
        for model in rd.MODELS:
            cells = {}
            for f in rd.FAMILIES:
                cells[f"{f}/clean"] = cell(clean if f in families else unseen)
                if f in families:
                    cells.update({f"{f}/{p}": cell(clean - 0.01) for p in rd.PERTURBATIONS})
            paired[f"{name}/{model}"] = {"train_families": families, "model": model,
                                         "cells": cells}
    return {"paired": paired}


def test_real_detection_protocol_leaves_each_family_out_and_checks_every_target(tmp_path):
    from benchmarks import real_detection as rd

    sets = rd.training_sets()
    for f in rd.FAMILIES:
        assert sets[f] == [f] and f not in sets[f"all_but_{f}"]
        assert len(sets[f"all_but_{f}"]) == len(rd.FAMILIES) - 1
    interval = rd._interval([0.8, 0.9, 1.0])
    assert interval["mean"] == pytest.approx(0.9)
    assert interval["ci95"][0] < 0.8 and interval["ci95"][1] > 1.0  # t with 2 dof is wide
    good = rd.summary(_fake_detection_results(clean=0.995, unseen=0.8))
    assert all(good["spectttra"]["targets_met"].values())
    bad = rd.summary(_fake_detection_results(clean=0.995, unseen=0.7))
    met = bad["spectttra"]["targets_met"]
    assert met["clean_roc_auc"] and not met["unseen_family_roc_auc"]
    n = len(rd.FAMILIES)
    assert len(bad["spectttra"]["unseen_family_roc_auc"]) == n * (n - 1) + n  # one-vs-LOFO
    prov.write_result(tmp_path / "real_detection.json",
                      {"protocol": {"targets": rd.TARGETS}, "summary": bad}, {})
    rows = [r for r in build_table(tmp_path).splitlines() if "unseen family" in r]
    assert rows and all("NOT met" in r for r in rows)


def test_detection_networks_train_on_the_clis_copies_and_validate_on_clean_clips(
        tmp_path, monkeypatch):
    import soundfile as sf

    from benchmarks import real_detection as rd
    from helpers.datasets import manifest_fingerprint

    monkeypatch.setattr(rd, "WORK", tmp_path / "work")
    monkeypatch.setattr(rd, "AUGMENTED_DIRS", {})
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(["train", "train", "train", "val", "val"]):
        for label, family in (("human", "human"), ("ai", "griffin_lim")):
            path = tmp_path / f"{family}_{i}.wav"
            sf.write(path, 0.1 * rng.standard_normal(16000 * 2), 16000)
            rows.append({"path": str(path), "label": label, "family": family,
                         "split": split, "track_id": f"t{i}"})
    fit = pd.DataFrame(rows)
    assert rd.augmented(fit, 0, "paired", copies=0) is fit  # --augment 0: the rows as given
    copied = rd.augmented(fit, 0, "paired", copies=1)
    copies = copied[copied["perturbation"].fillna("") != ""]
    assert len(copied) == len(fit) + 6 and len(copies) == 6  # one per train clip
    assert set(copies["split"]) == {"train"}  # validation stays clean
    assert set(copies["parent_track_id"]) == {"t0", "t1", "t2"}
    assert all(Path(p).is_absolute() and Path(p).exists() for p in copies["path"])
    assert str(tmp_path / "work" / "augmented" / "paired" / "seed0") in copies["path"].iloc[0]
    # Made once per design and seed: a second call reuses them (the runs' fingerprints hold).
    again = rd.augmented(fit, 0, "paired", copies=1)
    assert manifest_fingerprint(again) == manifest_fingerprint(copied)
    other_seed = rd.augmented(fit, 1, "paired", copies=1)
    assert manifest_fingerprint(other_seed) != manifest_fingerprint(copied)
    assert rd.runs_dir(0) != rd.runs_dir(1)  # runs with and without copies never mix


def test_a_held_out_family_never_reaches_training_or_validation():
    from helpers.twins import select

    frame = pd.DataFrame({"path": list("abcdefgh"), "label": ["human", "ai", "ai", "ai"] * 2,
                          "family": ["human", "griffin_lim", "autoencoder", "opus_lowrate"] * 2,
                          "split": ["train"] * 4 + ["val"] * 4})
    fit = select(frame, ["griffin_lim", "opus_lowrate"])
    assert "autoencoder" not in set(fit["family"]) and (fit["label"] == "human").sum() == 2
    with pytest.raises(ValueError, match="not in this manifest"):
        select(frame, ["suno"])


@pytest.mark.parametrize("name", ["classifier", "embedding", "end_to_end", "index",
                                  "openl3_parity", "preprocess", "real_audio",
                                  "real_detection", "run_all", "openl3_original",
                                  "openl3_query_budget", "recipe_validation",
                                  "generic_artifacts", "real_retrieval",
                                  "input_norm_synthetic", "recipe_protocol",
                                  "consistency"])
def test_benchmark_scripts_import_and_answer_help(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_openl3_original_says_why_it_is_skipped_and_writes_nothing(tmp_path, capsys):
    from benchmarks import openl3_original

    out = tmp_path / "o.json"
    assert openl3_original.main(["--venv", str(tmp_path / "no_venv"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("skipped:") and "--setup" in printed
    assert not out.exists()


def test_query_hop_rule_needs_both_the_time_budget_and_the_agreement():
    from benchmarks import openl3_query_budget as qb

    hops = [str(h) for h in qb.HOPS]
    cosine = dict(zip(hops, [1.0, 0.999, 0.995, 0.992, 0.985, 0.98, 0.97], strict=True))
    fp32 = dict(zip(hops, [20.0, 10.0, 4.0, 2.4, 1.7, 1.3, 0.9], strict=True))
    bf16 = dict(zip(hops, [7.0, 3.5, 1.5, 0.8, 0.6, 0.5, 0.4], strict=True))
    curve = {h: {"cosine_to_hop_0.1": {"mean": c}} for h, c in cosine.items()}
    times = {"fp32": {h: {"median_s": t} for h, t in fp32.items()},
             "bf16": {h: {"median_s": t} for h, t in bf16.items()}}
    decision = qb.choose(curve, times)
    assert decision["query_hop_s"] == 1.0  # 0.5 is too slow in fp32, 1.5 agrees too little
    assert decision["smallest_hop_in_budget_with_bf16"] == 0.5
    times["fp32"]["1.0"]["median_s"] = 2.6
    assert qb.choose(curve, times)["query_hop_s"] is None  # nothing fits both


def test_recipe_rule_adopts_only_a_gain_beyond_the_interval():
    from benchmarks import recipe_validation as rv

    def row(clean, worst, half):
        return {"clean_roc_auc": {"mean": clean, "ci95": [clean - half, clean + half]},
                "worst_perturbed_roc_auc": {"mean": worst, "ci95": [worst - half, worst + half]}}

    summary = {"default": row(0.90, 0.80, 0.01), "default+augment": row(0.895, 0.85, 0.02),
               "fine": row(0.93, 0.805, 0.02), "fine+augment": row(0.85, 0.90, 0.02)}
    decision = rv.decide(summary)
    assert decision["verdicts"]["default+augment"]["adopt"]  # +0.05 robust, -0.005 clean
    assert not decision["verdicts"]["fine"]["adopt"]  # +0.005 is inside its interval
    assert not decision["verdicts"]["fine+augment"]["adopt"]  # loses 0.05 clean
    assert decision["choice"] == "default+augment"
    summary["default+augment"] = row(0.895, 0.81, 0.02)
    assert rv.decide(summary)["choice"] == "default"


def test_recipe_validation_scores_each_composer_alone_and_weights_them_equally(monkeypatch):
    from benchmarks import real_detection as rd
    from benchmarks import recipe_validation as rv

    composers = rv.VAL_COMPOSERS
    assert composers[0] == "wesnoth-1.16-music" and set(rd.CURVE_PACKAGES) <= set(composers)
    rows = []
    for c_i, composer in enumerate(composers):
        n = 2 + 3 * c_i  # composers of different sizes: pooling would weight the big ones
        for t in range(n):
            for label in ("human", "ai"):
                rows.append({"path": f"{composer}/{t}/{label}", "label": label,
                             "family": "human" if label == "human" else "griffin_lim",
                             "track_id": f"{composer}/{t}", "source": composer})
    val = pd.DataFrame(rows)
    perturbed = pd.concat([val.assign(perturbation=p) for p in rd.PERTURBATIONS])

    calls = iter(["clean", *rd.PERTURBATIONS])  # evaluate_run scores clean rows first

    def scoring(run_dir, frontend, paths):
        # The first composer is perfectly separated, the others inverted, except the last
        # one under pitch+1.
        perturbation = next(calls)
        out = []
        for path in paths:
            composer, _, label = path.rsplit("/", 2)
            good = composer == composers[0] or (perturbation == "pitch+1"
                                                and composer == composers[-1])
            out.append((1.0 if label == "ai" else -1.0) * (1 if good else -1))
        return np.array(out)

    monkeypatch.setattr(rv, "_score", scoring)
    per = rv.evaluate_run(Path("run"), "default", val, perturbed, "griffin_lim")
    assert per[composers[0]]["clean_roc_auc"] == 1.0
    assert per[composers[1]]["clean_roc_auc"] == 0.0
    assert per[composers[0]]["fpr_at_0.5"] == 0.0 and per[composers[1]]["fpr_at_0.5"] == 1.0
    # The worst perturbation is taken per composer: pitch+1 does not rescue the last one.
    assert per[composers[-1]]["pitch+1_roc_auc"] == 1.0
    assert per[composers[-1]]["worst_perturbed_roc_auc"] == 0.0
    mean = rv.composer_mean(per)
    assert mean["clean_roc_auc"] == pytest.approx(1 / len(composers))  # not row-weighted
    assert rv.composer_mean(per, composers[:1])["clean_roc_auc"] == 1.0


def _fitted_catalog(n_tracks: int = 12, segments: int = 3, seed: int = 0):
    """Raw `FeatureEmbedder` vectors of a catalog and of noisy re-takes of it."""
    import numpy as np

    from helpers.embed import FeatureEmbedder

    emb = FeatureEmbedder(blocks=("v1",), segments=segments)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_tracks, 1, emb.dim)) * 3
    catalog = (centres + rng.normal(size=(n_tracks, 1 + segments, emb.dim))).reshape(
        n_tracks, -1)
    queries = (centres + rng.normal(size=(n_tracks, 1 + segments, emb.dim))).reshape(
        n_tracks, -1)
    return emb, catalog.astype(np.float32), queries.astype(np.float32)


def test_csls_space_scores_twice_the_cosine_minus_the_catalog_hubness():
    import numpy as np

    from benchmarks import real_retrieval as rr

    emb, catalog, queries = _fitted_catalog()
    cat, qry = rr.csls_space(emb, 3)(catalog, queries)
    c, q = emb.transform(catalog), emb.transform(queries)
    sims = c @ c.T
    np.fill_diagonal(sims, -np.inf)
    hub = np.sort(sims, axis=1)[:, -3:].mean(axis=1)
    np.testing.assert_allclose(qry @ cat.T, 2 * q @ c.T - hub[None, :], atol=1e-5)


def test_lda_space_and_segment_scores_find_each_tracks_own_excerpt():
    import numpy as np

    from benchmarks import real_retrieval as rr

    emb, catalog, queries = _fitted_catalog()
    cat, qry = rr.lda_space(emb, 4)(catalog, queries)
    assert cat.shape == (len(catalog), 4)
    assert np.allclose(np.linalg.norm(qry, axis=1), 1.0, atol=1e-6)
    scores = rr.segment_scores(emb, catalog, catalog)  # each catalog track as its own query
    assert (scores.argmax(axis=1) == np.arange(len(catalog))).all()
    np.testing.assert_allclose(np.diag(scores), 2.0, atol=1e-5)  # cosine 1 + best segment 1
    assert (rr.segment_scores(emb, catalog, queries).argmax(axis=1)
            == np.arange(len(catalog))).mean() > 0.9


def test_combined_detector_flags_what_either_model_finds_unhuman():
    from benchmarks import real_detection as rd
    from benchmarks import recipe_protocol as rp

    # Model 1 knows family "a", the deviation model family "b"; their human scales differ.
    rng = np.random.default_rng(0)
    paths = [f"h{i}" for i in range(200)] + ["a0", "a1", "b0", "b1"]
    net_logit = dict(zip(paths, np.r_[rng.normal(0, 1, 200), 6, 7, 0, 0], strict=True))
    dev_logit = dict(zip(paths, np.r_[rng.normal(5, 2, 200), 5, 5, 12, 13], strict=True))

    def scorer(logits):
        return rd._Scorer(lambda ps: 1 / (1 + np.exp(-np.array([logits[p] for p in ps]))), {})

    val = pd.DataFrame({"path": paths, "label": ["human"] * 200 + ["ai"] * 4})
    both = rp.combined(scorer(net_logit), scorer(dev_logit), val)
    s = dict(zip(paths, both.score_fn(paths), strict=True))
    assert min(s["a0"], s["a1"], s["b0"], s["b1"]) > max(s[f"h{i}"] for i in range(200))
    # Each model's scale is its own human spread: the deviation model's 12 is ~3.5 sigma.
    humans = np.array([dev_logit[f"h{i}"] for i in range(200)])
    z_b0 = (12 - humans.mean()) / humans.std()
    assert s["b0"] == pytest.approx(1 / (1 + np.exp(-z_b0)), rel=1e-4)
    assert both.thresholds["val_max_f1"] < min(s["a0"], s["b0"])
    # Fused: the mean of the two standardised scores, so one model's alarm is halved.
    fused = rp.combined(scorer(net_logit), scorer(dev_logit), val, how="mean")
    f = dict(zip(paths, fused.score_fn(paths), strict=True))
    nets = np.array([net_logit[f"h{i}"] for i in range(200)])
    z_net_b0 = (0 - nets.mean()) / nets.std()
    assert f["b0"] == pytest.approx(1 / (1 + np.exp(-(z_b0 + z_net_b0) / 2)), rel=1e-4)
    assert f["b0"] < s["b0"]


def _fake_debian(tmp_path: Path, monkeypatch) -> None:
    """``apt-get download`` and ``dpkg -x`` stand-ins on PATH: each package unpacks to one
    2 s Ogg track in a music folder (``dpkg -x`` takes a second, so fetches overlap, and
    fails if another unpack of the same tree is under way)."""
    import soundfile as sf

    track = tmp_path / "track.ogg"
    sf.write(track, np.zeros(44_100 * 2, np.float32), 44_100, format="OGG")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(
        '#!/bin/sh\nfor p; do last="$p"; done\necho fake > "${last}_1.0_all.deb"\n')
    (bin_dir / "dpkg").write_text(
        # two unpacks of one tree at once fail, as they would corrupt it
        '#!/bin/sh\npkg=$(basename "$2" | cut -d_ -f1)\nmkdir "$3.busy" || exit 3\nsleep 1\n'
        'music="$3/usr/share/games/$pkg/music"\n'
        f'mkdir -p "$music"\ncp {track} "$music/t.ogg"\n'
        'rmdir "$3.busy"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")


def test_each_package_set_keeps_its_own_real_audio_manifest(tmp_path, monkeypatch):
    from benchmarks.real_audio import fetch_real_audio

    _fake_debian(tmp_path, monkeypatch)
    first = fetch_real_audio(tmp_path / "audio", ["pkg-a", "pkg-b"])
    second = fetch_real_audio(tmp_path / "audio", ["pkg-c"])
    assert first != second
    assert sorted(pd.read_csv(first).source) == ["pkg-a", "pkg-b"]  # not overwritten by c
    assert list(pd.read_csv(second).source) == ["pkg-c"]


def test_concurrent_fetches_of_one_package_share_a_sound_unpack(tmp_path, monkeypatch):
    _fake_debian(tmp_path, monkeypatch)
    code = ("import sys; from benchmarks.real_audio import fetch_real_audio as f; "
            "import pandas as pd; m = pd.read_csv(f(sys.argv[1], sys.argv[2:])); "
            "print(sorted(m.source))")
    jobs = [subprocess.Popen(["python", "-c", code, str(tmp_path / "audio"), *packages],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
            for packages in (["pkg-a", "pkg-b"], ["pkg-b"], ["pkg-a", "pkg-b"])]
    outs = [job.communicate(timeout=120) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0], [err for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["['pkg-a', 'pkg-b']", "['pkg-b']",
                                                "['pkg-a', 'pkg-b']"]
    tracks = sorted((tmp_path / "audio" / "unpacked").rglob("*.ogg"))
    assert [t.relative_to(tmp_path / "audio" / "unpacked").parts[0] for t in tracks] == [
        "pkg-a", "pkg-b"]


def test_retrieval_misses_are_listed_with_their_track_length():
    from benchmarks.real_retrieval import by_length
    from helpers.embed import l2_normalise

    n = 8
    tracks = pd.DataFrame({"track_id": [f"p/t{i}" for i in range(n)],
                           "seconds": [90, 100, 200, 250, 400, 420, 500, 600],
                           "half": ["val", "test"] * 4, "source": ["p"] * n})
    queries = np.eye(n)
    queries[7] = -np.eye(n)[7] + 0.1  # the 10-minute test track: its own excerpt ranks last
    raw = {"catalog": np.eye(n), "clean": queries, "griffin_lim": np.eye(n)}
    space = (raw, lambda c, q: (l2_normalise(c), l2_normalise(q)))
    result = by_length(tracks, {"baseline": space, "features": space})
    clean = result["embedders"]["features"]["clean"]
    assert [m["track"] for m in clean["test_misses"]] == ["p/t7"]
    assert clean["test_misses"][0]["rank"] == n and clean["test_misses"][0]["minutes"] == 10.0
    assert clean["test"]["5-12 min"] == {"n": 2, "track_recall_at_5": 0.5}
    assert clean["test"]["1-3 min"] == {"n": 1, "track_recall_at_5": 1.0}
    assert result["embedders"]["features"]["griffin_lim"]["test_misses"] == []


def test_reference_scatter_adds_other_music_to_the_catalogs_whitening():
    from benchmarks.real_retrieval import reference_scatter, reference_space
    from helpers.embed import FeatureEmbedder

    rng = np.random.default_rng(0)
    embedder = FeatureEmbedder(blocks=("tempogram",), segments=3)  # 16 dims
    catalog = rng.normal(size=(40, embedder.raw_dim))
    queries = rng.normal(size=(10, embedder.raw_dim))
    first = rng.normal(size=(30, 16))
    second = first.copy()
    second[:, 0] += rng.normal(scale=5.0, size=30)  # reference songs wander along dim 0 only
    scatter = reference_scatter({"first": first, "clean": second}, ("clean",))
    assert np.allclose(scatter, (second - first).T @ (second - first) / 60)
    # weight 0: exactly the embedder's own whitening
    c0, q0 = reference_space(FeatureEmbedder(blocks=("tempogram",), segments=3), scatter,
                             0.0, 1.0)(catalog, queries)
    fitted = FeatureEmbedder(blocks=("tempogram",), segments=3).fit(catalog)
    assert np.allclose(c0, fitted.transform(catalog), atol=1e-5)
    assert np.allclose(q0, fitted.transform(queries), atol=1e-5)
    # a heavy reference weight whitens dim 0 away: the queries' dim 0 stops counting
    moved = queries.copy()
    moved[:, 0] += 50.0 * fitted.standardizer.std[0]
    space = reference_space(FeatureEmbedder(blocks=("tempogram",), segments=3), scatter,
                            100.0, 0.01)
    _, q_ref = space(catalog, queries)
    _, q_ref_moved = space(catalog, moved)
    own = reference_space(FeatureEmbedder(blocks=("tempogram",), segments=3), scatter, 0.0,
                          0.01)
    (_, q_own), (_, q_own_moved) = own(catalog, queries), own(catalog, moved)
    assert np.mean(np.sum(q_ref * q_ref_moved, axis=1)) > 0.9
    assert np.mean(np.sum(q_own * q_own_moved, axis=1)) < 0.5
