"""Training throughput (not a test): images/s and the share of step time outside nnabla's
forward/backward/update (data loading and conversion, augmentation-tile monitor, progress bar).

Runs :func:`wbc_nnabla.training.train` for 2 short epochs (epoch 1 reads and decodes
JPEGs through the background data iterator; epoch 2 hits the in-memory cache) at
480x480 batch 4 (the paper's training size) and 64x64 batch 32, on the demo cells
(~360 px JPEGs, resized on load). F.image_augmentation runs inside the graph and is
counted as compute. Also times the precise-BN recalibration (a forward pass of the
batch-statistics graph over clean training images, done before every evaluation by
default) and checks the 320x320 inference graph shape. ``--recipe robust --randconv P`` (the
config key ``randconv``; or ``--fourier P``, with the demo cells as ``style_cells``) times a
variant's augmentation (``--only-64``: the 64 px case alone, as the cross-site benchmark trains).

    nice -n 5 .venv/bin/python benchmarks/bench_training.py [--iterations 3]
    nice -n 5 .venv/bin/python benchmarks/bench_training.py --only-64 --recipe robust [--randconv 0.5 | --fourier 0.5]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from wbc_nnabla import classes, engine, fileio, loader, models, training  # noqa: E402
from wbc_nnabla.recipe import TrainConfig, recipe_augmentation  # noqa: E402


def dataset(root: Path, per_class: int) -> Path:
    """NNC CSVs of ``per_class`` demo cells per class; the demo's 20 per class are repeated when more
    are asked, so that an epoch really has the iterations asked for."""
    df = fileio.read_cells(fileio.demo_data())
    rows = [g.index[k % len(g)] for _, g in df.groupby("label") for k in range(per_class)]
    fileio.write_nnc_csv(root / "train.csv", df.path[rows], [classes.index6(v) for v in df.label[rows]])
    fileio.write_nnc_csv(root / "valid.csv", df.path[rows[:4]], [classes.index6(v) for v in df.label[rows[:4]]])
    return root


def bench(size: int, batch: int, iterations: int, tmp: Path, augmentation=None, style_cells=None) -> dict:
    ds = dataset(tmp / f"ds{size}", max(2, -(-batch * iterations // 6)))
    t0 = time.time()
    extra = {} if augmentation is None else {"augmentation": augmentation}
    s = training.train(ds, tmp / f"out{size}", TrainConfig(epochs=2, batch_size=batch, size=size, pretrained="none",
                                                         progress=False, max_iterations=iterations,
                                                         train_eval_limit=4, style_cells=style_cells, **extra))
    h = s["history"]
    return dict(size=size, batch_size=batch, iterations_per_epoch=iterations,
                cold_images_per_s=h[0]["images_per_s"], cold_outside_share=h[0]["outside_share"],
                warm_images_per_s=h[1]["images_per_s"], warm_outside_share=h[1]["outside_share"],
                precise_bn_images_per_s=recalibration_rate(ds, size, batch),
                wall_s=time.time() - t0)


def recalibration_rate(ds: Path, size: int, batch: int) -> float:
    """Images/s of :func:`engine.recalibrate_bn` over the (cached) training images."""
    models.clear_scope(engine.SCOPE)
    g = engine.build_graph("resnet18", 6, batch, size)      # clean batch-statistics graph
    paths, y = loader.read_split(ds / "train.csv")
    images = loader.ImageLoader(paths, y, size)
    engine.recalibrate_bn(g, images, batch, np.arange(batch))  # warm the image cache and the graph
    t = time.perf_counter()
    n = engine.recalibrate_bn(g, images, batch, np.arange(len(images))) * batch
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=3, help="iterations per epoch at 480 px")
    ap.add_argument("--iterations-64", type=int, default=6, help="iterations per epoch at 64 px")
    ap.add_argument("--recipe", choices=("paper", "robust"), default="paper", help="the augmentation recipe")
    ap.add_argument("--randconv", type=float, default=None, help="train --set randconv=P on top of the recipe")
    ap.add_argument("--fourier", type=float, default=None,
                    help="train --set fourier=P --set style_cells=DEMO on top of the recipe (the demo cells as style cells)")
    ap.add_argument("--only-64", action="store_true", help="time the 64 px case only")
    a = ap.parse_args()
    overrides = {k: v for k, v in (("randconv", a.randconv), ("fourier", a.fourier)) if v is not None}
    styles = fileio.demo_data() if a.fourier else None
    aug = recipe_augmentation(a.recipe, **overrides)
    import nnabla as nn
    x = nn.Variable((1, 3, 320, 320))
    y = models.resnet18(x, test=True)
    x.d = np.random.rand(*x.shape)
    t = time.time()
    y.forward()
    print(f"inference graph 320x320: output {y.shape}, one forward {time.time() - t:.2f} s")
    nn.clear_parameters()
    with tempfile.TemporaryDirectory() as d:
        cases = ((480, 4, a.iterations), (64, 32, a.iterations_64))
        for size, batch, it in cases[1:] if a.only_64 else cases:
            r = bench(size, batch, it, Path(d), aug, styles)
            r.update(recipe=a.recipe, randconv=aug.randconv, fourier=aug.fourier)
            print(json.dumps(r, indent=1), flush=True)


if __name__ == "__main__":
    main()
