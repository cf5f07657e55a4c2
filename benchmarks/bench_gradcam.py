"""Grad-CAM speed on CPU: images/s of GradCAM.explain vs a forward pass alone.

Usage: python benchmarks/bench_gradcam.py [--size 320] [--batch-size 8] [--images 16] [--repeat 2]

Uses a randomly initialised ResNet-18 (6 classes; speed does not depend on the
weights) saved with modelfile.save_nnp, and the embedded demo cells.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    import nnabla as nn

    from wbc_nnabla import classes, fileio, gradcam, modelfile, models
    from wbc_nnabla.predictor import preprocess

    nn.seed(0)
    with nn.parameter_scope("", OrderedDict()):
        models.resnet(nn.Variable((1, 3, 32, 32)), "resnet18", 6, test=True)
        params = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    paths = sorted(fileio.read_cells(fileio.demo_data())["path"])[: args.images]
    rgbs = [fileio.read_rgb(p) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "bench.nnp"
        modelfile.save_nnp(model, params, modelfile.model_meta("resnet18", classes.CLASSES6, args.size))
        g = gradcam.GradCAM(model, batch_size=args.batch_size)
        g.explain(rgbs[: args.batch_size])                       # build graphs, warm up
        t_cam = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            g.explain(rgbs)
            t_cam.append(time.perf_counter() - t0)
        x, logits, _ = g._graph(args.batch_size)
        t_fwd = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for s in range(0, len(rgbs), args.batch_size):
                x.d = np.stack([preprocess(r, args.size) for r in rgbs[s:s + args.batch_size]])
                logits.forward(clear_no_need_grad=True)
            t_fwd.append(time.perf_counter() - t0)
    n = len(rgbs)
    print(f"size {args.size}, batch {args.batch_size}, {n} images, best of {args.repeat}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"  Grad-CAM (forward + head backward + maps): {n / min(t_cam):.2f} img/s")
    print(f"  forward only (same graph, test mode):       {n / min(t_fwd):.2f} img/s")


if __name__ == "__main__":
    main()
