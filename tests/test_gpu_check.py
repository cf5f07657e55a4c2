"""benchmarks/gpu_check.py: its CPU path runs here (tiny sizes, a subprocess, seconds), so the script the
GPU machine runs cannot rot; its GPU run is documented as not yet run (no GPU in this project)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nnabla")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_gpu_check_cpu_path_passes_and_its_check_can_fail(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--context", "cpu", "--size", "32", "--infer-size", "32",
                           "--epochs", "1", "--per-class", "2", "--valid-per-class", "1", "--batch-size", "4",
                           "--pretrained", "none", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    line = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0 and line.startswith("gpu_check PASS | cpu"), proc.stdout + proc.stderr
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["status"] == "PASS" and res["training"]["images_per_s"] > 0 and res["inference"]["cells"] == 6
    assert res["parity"]["nnabla_cpu"]["max_abs_prob_diff"] == 0.0            # the same engine and context
    onnx = next(v for k, v in res["parity"].items() if k != "nnabla_cpu")     # another engine: not exact
    assert 0 < onnx["max_abs_prob_diff"] <= 1e-3 and onnx["same_class"] == 1.0
    verdict = _script().verdict(res, 1e-9)
    assert verdict.startswith("FAIL: cpu forward differs from") and "> 1e-09" in verdict


def test_gpu_check_without_the_cuda_extension_fails_with_the_install_line(tmp_path, capsys):
    if importlib.util.find_spec("nnabla_ext") and importlib.util.find_spec("nnabla_ext.cuda"):
        pytest.skip("nnabla-ext-cuda is installed here")
    assert _script().main(["--out", str(tmp_path / "c")]) == 1
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("gpu_check FAIL: TrainingError") and "pip install -e '.[cuda120]'" in line
