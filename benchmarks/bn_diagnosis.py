"""Why the validation curve swings: score one accuracy-check run's final parameters with
BatchNorm in three modes (a benchmark, not a test).

    .venv/bin/python benchmarks/bn_diagnosis.py /work/runs/accuracy_check/seed0

1. running statistics as trained (what validation and the exported model use);
2. batch statistics of each validation batch;
3. running statistics re-estimated on clean (un-augmented) training images ("precise BN").
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nnabla as nn  # noqa: E402

from wbc_nnabla import engine, loader, modelfile, models, predictor  # noqa: E402

B = 32


def images(paths, size):
    return np.stack([predictor.load_input(p, size) for p in paths])


def accuracy(params, x_valid, y_valid, x_recal, size, test, recalibrate=False):
    nn.clear_parameters()
    x = nn.Variable((B, 3, size, size))
    out = models.resnet18(x, test=test)
    for k, v in nn.get_parameters(grad_only=False).items():
        v.d = params[k]
    if recalibrate:
        xt = nn.Variable((B, 3, size, size))
        ot = models.resnet18(xt, test=False)  # batch-stat forward updates the running statistics
        for k, v in nn.get_parameters(grad_only=False).items():
            if k.endswith("/mean"):
                v.d = 0
            if k.endswith("/var"):
                v.d = 1
        for i in range(0, len(x_recal) - B + 1, B):
            xt.d = x_recal[i:i + B]
            ot.forward(clear_buffer=True)
    pred = []
    for i in range(0, len(x_valid), B):
        xb = x_valid[i:i + B]
        n = len(xb)
        x.d = np.concatenate([xb, np.zeros((B - n,) + xb.shape[1:], np.float32)]) if n < B else xb
        out.forward(clear_buffer=True)
        pred.append(out.d[:n].argmax(1))
    return float((np.concatenate(pred) == y_valid.reshape(-1)).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="an accuracy_check.py output folder (holds dataset/ and train/)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--recal-images", type=int, default=960)
    a = ap.parse_args()
    ck = json.loads((a.run / "train" / "checkpoint.json").read_text())["dir"]
    params = modelfile.load_parameters(a.run / "train" / ck / "params.h5")
    params = {k.split(engine.SCOPE + "/", 1)[-1]: v for k, v in params.items()}
    vp, vy = loader.read_split(a.run / "dataset" / "valid.csv")
    tp, _ = loader.read_split(a.run / "dataset" / "train.csv")
    xv, xt = images(vp, a.size), images(tp[: a.recal_images], a.size)
    r = [accuracy(params, xv, vy, xt, a.size, True), accuracy(params, xv, vy, xt, a.size, False),
         accuracy(params, xv, vy, xt, a.size, True, recalibrate=True)]
    print(f"{a.run}: running-stat BN {r[0]:.3f}  batch-stat BN {r[1]:.3f}  "
          f"recalibrated running stats {r[2]:.3f}")


if __name__ == "__main__":
    main()
