"""Every example runs (tiny settings), so they never rot (the notebook: test_pipeline.py, beside the demo run it resumes)."""
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = {
    "01_build_datasets.py": ["--size", "32", "--infer-size", "32", "--total-a", "60", "--total-b", "60"],
    "02_train_model_a.py": ["--epochs", "1", "--size", "32", "--batch-size", "8", "--max-iterations", "2"],
    "03_finetune_model_b.py": ["--epochs", "1", "--size", "32", "--batch-size", "8", "--max-iterations", "2"],
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
