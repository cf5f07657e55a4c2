"""The paper's 480/320 question, measured with this pipeline (a benchmark, not a test).

The paper trains at 480x480 and infers at 320x320, both resized from the same 750x750 crop,
so at inference a cell is 2/3 as large in pixels as in training. This script trains ResNet-18
from scratch at SIZE on a seeded subset of ../shared/data/pbc6 (background kept) twice —
with the default Magnification range (0.9-1.1) and with one reaching 2/3 (0.6-1.1) — and
scores each on held-out cells at SIZE, at round(2/3 SIZE) and at the other --scales.

    nice -n 5 .venv/bin/python benchmarks/scale_check.py --out /work/runs/scale_check

Prints a table and writes OUT/scale_check.json. Each run resumes from its checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wbc_nnabla import classes, fileio, outputs, predictor, recipe, training  # noqa: E402


def subset(pbc6: Path, per_train: int, per_valid: int, per_test: int, seed: int):
    """Disjoint stratified train / valid / test cell tables."""
    df = fileio.read_cells(pbc6)
    rng = np.random.default_rng(seed)
    parts = {"train": [], "valid": [], "test": []}
    for _, g in df.groupby("label"):
        idx = rng.permutation(len(g))
        a, b = per_train, per_train + per_valid
        parts["train"].append(g.iloc[idx[:a]])
        parts["valid"].append(g.iloc[idx[a:b]])
        parts["test"].append(g.iloc[idx[b:b + per_test]])
    import pandas as pd
    return {k: pd.concat(v, ignore_index=True) for k, v in parts.items()}


def accuracy(pred) -> tuple:
    six = float((pred["label"] == pred["pred6"]).mean())
    five = float((pred["label"].map(classes.to_class5) == pred["pred5"]).mean())
    return six, five


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pbc6", type=Path, default=ROOT.parent / "shared" / "data" / "pbc6")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=48, help="training input side in pixels")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--per-class-train", type=int, default=100)
    ap.add_argument("--per-class-valid", type=int, default=20)
    ap.add_argument("--per-class-test", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scales", default="0.667,0.833,1,1.333",
                    help="inference sizes as fractions of --size (2/3 is the paper's 320/480)")
    args = ap.parse_args()

    parts = subset(args.pbc6, args.per_class_train, args.per_class_valid, args.per_class_test, args.seed)
    ds = args.out / "dataset"
    for name in ("train", "valid"):
        t = parts[name]
        fileio.write_nnc_csv(ds / f"{name}.csv", list(t["path"]), [classes.index6(v) for v in t["label"]])
    sizes = sorted({max(32, int(round(args.size * float(f)))) for f in args.scales.split(",")})
    runs = {"magnification 0.9-1.1 (default)": recipe.Augmentation(),
            "magnification 0.6-1.1 (reaches 2/3)": recipe.Augmentation(min_scale=0.6)}
    rows = []
    for i, (name, aug) in enumerate(runs.items()):
        run = args.out / f"run{i}"
        t0 = time.perf_counter()
        done = (run / "config.json").is_file() and \
            len(json.loads((run / "config.json").read_text()).get("history", [])) >= args.epochs
        if not done:
            training.train(ds, run, recipe.TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                                                       size=args.size, seed=args.seed, pretrained="none",
                                                       augmentation=aug, progress=False),
                           resume=(run / "checkpoint.json").is_file())
        for s in sizes:
            pred = predictor.predict(run / "model.nnp", parts["test"], size=s, backend="nnabla", progress=False)
            six, five = accuracy(pred)
            rows.append(dict(augmentation=name, train_size=args.size, infer_size=s, accuracy6=round(six, 3),
                             accuracy5=round(five, 3), n_test=len(pred)))
            print(rows[-1], flush=True)
        rows[-1]["train_seconds"] = round(time.perf_counter() - t0, 1)
    outputs.write_json(args.out / "scale_check.json", dict(args={k: str(v) for k, v in vars(args).items()},
                                                      rows=rows, environment=outputs.environment()))
    print("\n| augmentation | infer at | 6-class | 5-class |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['augmentation']} | {r['infer_size']} px (train {r['train_size']}) | "
              f"{r['accuracy6']:.3f} | {r['accuracy5']:.3f} |")


if __name__ == "__main__":
    main()
