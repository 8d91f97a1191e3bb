"""The six notebooks run top to bottom in DEMO mode, in order, sharing one work folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ORDER = ["01_download", "02_preprocess", "03_train", "04_evaluate", "05_embed_recommend",
         "06_end_to_end"]


@pytest.mark.slow
def test_notebooks_run_in_demo_mode(tmp_path, monkeypatch):
    # An empty OpenL3 cache: the notebooks must choose the offline `features` embedder.
    monkeypatch.setenv("HELPERS_OPENL3_DIR", str(tmp_path / "no_openl3"))
    work, figures = tmp_path / "work", tmp_path / "figures"
    params = {"DEMO": True, "WORK_DIR": str(work), "FIGURES_DIR": str(figures)}
    for name in ORDER:
        papermill.execute_notebook(
            str(NOTEBOOKS / f"{name}.ipynb"), str(tmp_path / f"{name}.out.ipynb"),
            parameters=params, cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False,
        )

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
        assert (figures / png).stat().st_size > 10_000


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
