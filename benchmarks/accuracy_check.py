"""Accuracy of the whole training recipe (not a test): from scratch, 64x64, 10 epochs, AdaBound.

Seeded stratified 80/20 split of /work/shared/data/pbc6 (background kept), one
training run per seed; reports 6- and 5-class validation accuracy of the final
epoch and of the best-Validation-Error epoch (model.nnp), and wall time.

    nice -n 5 .venv/bin/python benchmarks/accuracy_check.py --seed 0 --out /work/runs/accuracy_check_pbn/seed0
    nice -n 5 .venv/bin/python benchmarks/accuracy_check.py --seed 0 --bn-recalibration 0 --out DIR  # NNC's BN
    .venv/bin/python benchmarks/accuracy_check.py --summarize /work/runs/accuracy_check_pbn

Reference (from the brief): PyTorch ResNet-18 + adabound, same augmentations,
0.84 (6-class) / 0.95 (5-class) at this budget.
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

from wbc_nnabla import classes, io, models, training  # noqa: E402


def split(pbc6: Path, ds: Path, seed: int, valid_fraction: float = 0.2) -> None:
    """Stratified seeded split of pbc6 into an NNC dataset folder (absolute image paths)."""
    df = io.read_cells(pbc6)
    rng = np.random.RandomState(seed)
    tr, va = [], []
    for lab, g in df.groupby("label"):
        idx = rng.permutation(len(g))
        k = int(round(len(g) * valid_fraction))
        va += [g.iloc[i] for i in idx[:k]]
        tr += [g.iloc[i] for i in idx[k:]]
    for name, rows in (("train.csv", tr), ("valid.csv", va)):
        rows = [rows[i] for i in rng.permutation(len(rows))]
        io.write_nnc_csv(ds / name, [r.path for r in rows], [classes.index6(r.label) for r in rows])


def accuracies(params: dict, loader, batch_size: int, size: int) -> dict:
    """6- and 5-class accuracy of parameters on a loader."""
    models._drop_scope(training.SCOPE)
    g = training.Graphs("resnet18", 6, batch_size, size, None)
    training._load_into(training.parameters(), params, "accuracy_check")
    _, mis, p = training.evaluate(g, loader, batch_size)
    pred6 = p.argmax(1)
    y = np.asarray(loader.labels)
    five = np.array([classes.CLASSES5.index(classes.to_class5(c)) for c in classes.CLASSES6])
    return dict(acc6=float((pred6 == y).mean()), acc5=float((five[pred6] == five[y]).mean()))


def run(seed: int, out: Path, pbc6: Path, epochs: int, size: int, batch: int, train_eval_limit: int,
        bn_recalibration: int = training.BN_RECALIBRATION_IMAGES) -> dict:
    ds = out / "dataset"
    if not (ds / "valid.csv").exists():
        split(pbc6, ds, seed)
    t0 = time.time()
    resume = (out / "train" / "checkpoint.json").exists()
    summary = training.train(ds, out / "train", epochs=epochs, batch_size=batch, size=size, seed=seed,
                             pretrained="none", resume=resume, train_eval_limit=train_eval_limit,
                             progress=False, bn_recalibration=bn_recalibration)
    wall = time.time() - t0
    paths, y = training.read_split(ds / "valid.csv")
    loader = training.ImageLoader(paths, y, size)
    ck_dir, _ = training.load_checkpoint(out / "train")
    res = dict(seed=seed, epochs=epochs, size=size, batch_size=batch, wall_s_this_process=wall,
               wall_s_total=sum(r["seconds"] for r in summary["history"]),
               final=accuracies(models.load_parameters(ck_dir / "params.h5"), loader, batch, size),
               best=dict(epoch=summary["best"]["epoch"],
                         **accuracies(models.load_parameters(out / "train" / "model.h5"), loader, batch, size)),
               history=summary["history"])
    io.write_json(out / "result.json", res)
    return res


def summarize(root: Path) -> None:
    rs = [json.loads(p.read_text()) for p in sorted(root.glob("seed*/result.json"))]
    if not rs:
        print(f"no result.json under {root}")
        return
    for r in rs:
        print(f"seed {r['seed']}: final acc6 {r['final']['acc6']:.3f} acc5 {r['final']['acc5']:.3f} | "
              f"best (epoch {r['best']['epoch']}) acc6 {r['best']['acc6']:.3f} acc5 {r['best']['acc5']:.3f} | "
              f"train+eval time {r['wall_s_total'] / 60:.1f} min")
    for which in ("final", "best"):
        a6 = np.array([r[which]["acc6"] for r in rs])
        a5 = np.array([r[which]["acc5"] for r in rs])
        print(f"{which}: acc6 {a6.mean():.3f} ± {a6.std(ddof=1) if len(rs) > 1 else 0:.3f}, "
              f"acc5 {a5.mean():.3f} ± {a5.std(ddof=1) if len(rs) > 1 else 0:.3f} (n={len(rs)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--pbc6", type=Path, default=ROOT.parent / "shared" / "data" / "pbc6")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-eval-limit", type=int, default=480,
                    help="Training Error on the first N training images only (saves time)")
    ap.add_argument("--bn-recalibration", type=int, default=training.BN_RECALIBRATION_IMAGES,
                    help="re-estimate BatchNorm statistics on N clean training images each epoch "
                         "(default: the library's, %(default)s; 0: NNC's running statistics)")
    ap.add_argument("--summarize", type=Path, default=None, help="print mean/spread of seed*/result.json")
    a = ap.parse_args()
    if a.summarize:
        return summarize(a.summarize)
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = a.out or Path("/work/runs/accuracy_check") / f"seed{a.seed}"
    r = run(a.seed, out, a.pbc6, a.epochs, a.size, a.batch_size, a.train_eval_limit, a.bn_recalibration)
    print(json.dumps({k: r[k] for k in ("seed", "final", "best", "wall_s_total")}, indent=1))


if __name__ == "__main__":
    main()
