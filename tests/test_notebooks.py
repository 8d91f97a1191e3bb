"""The six notebooks: run top to bottom in DEMO mode, write only to their work folder, and
install themselves on Colab from the one repository address."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ORDER = ["01_download", "02_preprocess", "03_train", "04_evaluate", "05_embed_recommend",
         "06_end_to_end"]
# Folders of the repository that a notebook run must leave as they are.
TRACKED = ["figures", "notebooks", "report", "benchmarks/results"]


def _cells(name: str) -> list[dict]:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _parameters(name: str) -> str:
    return next(_source(c) for c in _cells(name)
                if "parameters" in c.get("metadata", {}).get("tags", []))


def _bootstrap(name: str) -> str:
    """The cell that installs the repository on Colab (the one after the parameters)."""
    cells = _cells(name)
    i = next(i for i, c in enumerate(cells)
             if "parameters" in c.get("metadata", {}).get("tags", []))
    return _source(cells[i + 1])


def _snapshot(folders: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for folder in folders:
        for p in (ROOT / folder).rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts:
                out[str(p.relative_to(ROOT))] = (p.stat().st_size, p.stat().st_mtime_ns)
    return out


@pytest.mark.slow
def test_notebooks_run_in_demo_mode(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    # An empty OpenL3 cache: the notebooks must choose the offline `features` embedder.
    monkeypatch.setenv("HELPERS_OPENL3_DIR", str(tmp_path / "no_openl3"))
    before = _snapshot(TRACKED)
    had_work = (ROOT / "work").exists()
    work = tmp_path / "work"
    for name in ORDER:  # FIGURES_DIR left at its default: under the work folder
        papermill.execute_notebook(
            str(NOTEBOOKS / f"{name}.ipynb"), str(tmp_path / f"{name}.out.ipynb"),
            parameters={"DEMO": True, "WORK_DIR": str(work)}, cwd=str(NOTEBOOKS),
            kernel_name="python3", progress_bar=False,
        )

    assert _snapshot(TRACKED) == before, "a notebook wrote into a tracked folder"
    assert (ROOT / "work").exists() == had_work
    metrics = json.loads((work / "runs" / "demo_tiny" / "eval_test" / "metrics.json").read_text())
    assert metrics["roc_auc"] > 0.9
    results = json.loads((work / "recommendations.json").read_text())
    flagged = [r for r in results if r.get("is_ai")]
    assert flagged, "at least one held-out AI clip should be flagged"
    assert all(len(r["recommendations"]) == 5 for r in flagged)
    retrieval = json.loads(next((work / "indexes").glob("demo_*/retrieval.json")).read_text())
    assert retrieval["all_neighbours"]["precision_at_k"] > 0.5
    for png in ("02_spectrograms.png", "03_training_curves.png", "04_robustness.png",
                "05_tsne.png"):
        assert (work / "figures" / png).stat().st_size > 10_000

    # What a reader sees: notebook 03 prints the parameter count, notebook 04 shows its figures.
    def outputs(name: str) -> list[dict]:
        book = json.loads((tmp_path / f"{name}.out.ipynb").read_text())
        return [o for c in book["cells"] if c["cell_type"] == "code" for o in c["outputs"]]

    printed = "".join("".join(o.get("text", "")) for o in outputs("03_train"))
    n_params = printed.split("'n_parameters': ")[1].split(",")[0]
    assert int(n_params) > 1000, printed
    shown = [o for o in outputs("04_evaluate") if "image/png" in o.get("data", {})]
    assert len(shown) >= 5, "notebook 04 should display the evaluation figures"


def test_notebooks_are_committed_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        book = json.loads(path.read_text())
        for cell in book["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{path.name}: strip outputs (nbstripout)"
                assert cell.get("execution_count") is None, f"{path.name}: strip outputs"
        tagged = [c for c in book["cells"]
                  if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs one cell tagged 'parameters' (papermill)"
        assert "DEMO = True" in "".join(tagged[0]["source"])


def test_every_notebook_installs_itself_the_same_way():
    first = _bootstrap(ORDER[0])
    assert "HELPERS_REPO_URL" in first
    for name in ORDER[1:]:
        assert _bootstrap(name) == first, f"{name}: its set-up cell differs from {ORDER[0]}'s"


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs a git checkout")
def test_notebook_outputs_go_to_a_git_ignored_folder():
    for name in ORDER:
        params: dict = {}
        exec(_parameters(name), params)  # noqa: S102 - plain assignments
        assert params["FIGURES_DIR"] is None, f"{name}: figures belong under WORK_DIR"
        work = (NOTEBOOKS / params["WORK_DIR"]).resolve()
        probe = work / "runs" / "x.json"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=ROOT)
        assert ignored.returncode == 0, f"{name}: WORK_DIR {work} is not git-ignored"


@pytest.fixture
def colab_without_helpers(monkeypatch, tmp_path):
    """A fake Colab where `helpers` is not installed; records the commands the cell runs."""
    calls: list[list[str]] = []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "helpers" else real(name, *a))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("HELPERS_REPO_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return types.SimpleNamespace(calls=calls, env=monkeypatch)


def test_colab_without_a_repository_address_says_how_to_set_it(colab_without_helpers):
    with pytest.raises(SystemExit, match="HELPERS_REPO_URL") as err:
        exec(_bootstrap("01_download"), {"REPO_URL": ""})  # noqa: S102
    assert "REPO_URL" in str(err.value)
    assert colab_without_helpers.calls == [], "nothing may run without an address"


def test_colab_installs_from_the_address_in_the_environment(colab_without_helpers):
    url = "https://example.org/me/ai-music.git"
    colab_without_helpers.env.setenv("HELPERS_REPO_URL", url)
    exec(_bootstrap("03_train"), {"REPO_URL": ""})  # noqa: S102
    clone, install = colab_without_helpers.calls
    assert clone == ["git", "clone", "-q", url, "repo"]
    assert install[-2:] == ["-e", "repo"] and "torch" not in " ".join(install)
    assert sys.path[0].endswith("repo")


def test_colab_parameter_wins_over_the_environment(colab_without_helpers):
    colab_without_helpers.env.setenv("HELPERS_REPO_URL", "https://example.org/env.git")
    exec(_bootstrap("04_evaluate"), {"REPO_URL": "https://example.org/param.git"})  # noqa: S102
    assert colab_without_helpers.calls[0][3] == "https://example.org/param.git"


def test_off_colab_without_helpers_says_pip_install(colab_without_helpers):
    colab_without_helpers.env.delitem(sys.modules, "google.colab")
    with pytest.raises(SystemExit, match="pip install -e"):
        exec(_bootstrap("05_embed_recommend"), {"REPO_URL": ""})  # noqa: S102
    assert colab_without_helpers.calls == []
