"""Benchmark provenance, fingerprinted reuse and the results table (no benchmark is run)."""

from __future__ import annotations

import importlib
import json
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from benchmarks import provenance as prov
from benchmarks.run_all import build_table, fixed_runs

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


def test_a_retry_chosen_by_its_test_score_is_not_reported(tmp_path):
    legacy = {"attempts": [{"reason": "default settings", "test": {"roc_auc": 0.81}},
                           {"reason": "test ROC-AUC 0.81 < 0.99: more epochs",
                            "test": {"roc_auc": 0.89}}],
              "test_roc_auc": 0.89}
    runs, note = fixed_runs(legacy)
    assert [r["test"]["roc_auc"] for r in runs] == [0.81]
    assert "test score" in note
    (tmp_path / "real_detection.json").write_text(json.dumps(
        {"target_test_roc_auc": 0.99, "variants": {"griffin_lim": legacy}}))
    row = next(r for r in build_table(tmp_path).splitlines() if "`griffin_lim`" in r)
    assert "| 0.81;" in row and "0.89" not in row

    seeds = {"runs": [{"seed": 0, "test": {"roc_auc": 0.9}},
                      {"seed": 1, "test": {"roc_auc": 0.7}}]}
    runs, note = fixed_runs(seeds)
    assert [r["seed"] for r in runs] == [0, 1] and note == ""


def test_real_detection_corpus_fingerprint_covers_its_sources():
    from benchmarks.real_detection import corpus_settings

    old = corpus_settings(["griffin_lim", "codec"], {"xmoto-data": "xmoto-data_1.0_all.deb"})
    new = corpus_settings(["griffin_lim", "codec"], {"xmoto-data": "xmoto-data_1.1_all.deb"})
    for folder in ("human", "ai_griffin_lim", "ai_codec"):
        assert prov.fingerprint(old[folder]) != prov.fingerprint(new[folder])
    assert prov.fingerprint(old["ai_griffin_lim"]) != prov.fingerprint(old["ai_codec"])


@pytest.mark.parametrize("name", ["classifier", "embedding", "end_to_end", "index",
                                  "openl3_parity", "preprocess", "real_audio",
                                  "real_detection", "run_all"])
def test_benchmark_scripts_import_and_answer_help(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert "usage" in capsys.readouterr().out
