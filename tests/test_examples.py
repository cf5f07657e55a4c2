"""Every example runs (tiny settings), so they never rot; the notebook is executed headless."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = {
    "01_build_datasets.py": ["--size", "40", "--infer-size", "40", "--total-a", "60", "--total-b", "60"],
    "02_train_model_a.py": ["--epochs", "1", "--size", "40", "--max-iterations", "2"],
    "03_finetune_model_b.py": ["--epochs", "1", "--size", "40", "--max-iterations", "2"],
    "04_predict_and_score.py": ["--pending-threshold", "0.3"],
    "05_compare.py": [],
    "06_gradcam.py": ["--n", "2"],
    "07_other_lab.py": ["--iterations", "3"],
}


def _run(args, cwd):
    r = subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"{args[0]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout


@pytest.mark.slow
def test_examples_run_in_order(tmp_path):
    assert sorted(TINY) == sorted(p.name for p in EXAMPLES.glob("*.py"))
    outputs = {name: _run([str(EXAMPLES / name), "--work", "w"] + flags, tmp_path) for name, flags in TINY.items()}
    w = tmp_path / "w"
    assert "per class [8, 8, 8, 8, 8, 8]" in outputs["01_build_datasets.py"]
    for f in ("model_A/model.nnp", "model_B/model.nnp", "predictions_A.csv", "predictions_B.csv",
              "score_B/confusion6.csv", "compare/comparison.json"):
        assert (w / f).is_file(), f
    assert "rank-sum p" in outputs["05_compare.py"]
    assert len(list((w / "gradcam").glob("*.png"))) == 2
    assert "adapt: 20 BatchNorm layers" in outputs["07_other_lab.py"]
    assert (w / "model_B_tuned.nnp").is_file() and "domain check:" in outputs["07_other_lab.py"]
    assert "judgement pending: " in outputs["07_other_lab.py"]


@pytest.mark.slow
def test_notebook_executes(tmp_path, tiny_demo_run):
    """The notebook runs headless; it resumes the session's tiny demo run (same settings)."""
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor

    out, _ = tiny_demo_run
    nb = nbformat.read(EXAMPLES / "demo.ipynb", as_version=4)
    os.environ["WBC_TINY"] = "1"
    os.environ["WBC_NOTEBOOK_OUT"] = str(out)
    try:
        ExecutePreprocessor(timeout=900, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    finally:
        os.environ.pop("WBC_TINY")
        os.environ.pop("WBC_NOTEBOOK_OUT")
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # learning curves A/B, box plots, disagreements, risk-coverage...
    assert (out / "report.html").is_file()
