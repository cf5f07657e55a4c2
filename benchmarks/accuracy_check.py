"""Accuracy of the training recipe through the user's path (not a test): from scratch, 64x64, 10 epochs.

Runs the README's commands, nothing private, one run per seed:

    wbc-nnabla build-dataset PBC6 OUT/dataset --background keep --total 2400 --size 64 --seed S
    wbc-nnabla train OUT/dataset OUT/train --epochs 10 --batch-size 32 --size 64 --pretrained none \
        --seed S --train-eval-limit 480 --no-progress [--bn-recalibration N] [extra train flags]
    wbc-nnabla predict OUT/train/model.nnp OUT/dataset/valid.csv OUT/pred_best.csv --size 64
    wbc-nnabla predict OUT/train/checkpoints/epoch0010/params.h5 OUT/dataset/valid.csv \
        OUT/pred_final.csv --size 64

and reports 6- and 5-class accuracy on the validation split that `build-dataset` made, for the
final epoch (the last checkpoint) and for `model.nnp` (the best-Validation-Error epoch), read from
the predictions CSVs. An interrupted run resumes (`train --resume`); finished stages are kept.

    nice -n 5 .venv/bin/python benchmarks/accuracy_check.py --seed 0 --out /work/runs/acc_user/seed0
    .venv/bin/python benchmarks/accuracy_check.py --summarize /work/runs/acc_user

Reference (from the brief): PyTorch ResNet-18 + adabound, same augmentations,
0.84 (6-class) / 0.95 (5-class) at this budget.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from wbc_nnabla.cli import main; sys.exit(main())"]


def wbc(*args) -> None:
    """Run one `wbc-nnabla` command (the installed CLI's entry point) and stop on failure."""
    cmd = CLI + [str(a) for a in args]
    print("$ wbc-nnabla " + " ".join(str(a) for a in args), flush=True)
    subprocess.run(cmd, check=True)


def accuracies(pred_csv: Path) -> dict:
    """6- and 5-class accuracy of a predictions CSV written by `wbc-nnabla predict` (columns label, pred6, pred5)."""
    from wbc_nnabla import classes
    df = pd.read_csv(pred_csv, keep_default_na=False)
    five = df["label"].map(classes.to_class5)
    return dict(acc6=float((df["pred6"] == df["label"]).mean()), acc5=float((df["pred5"] == five).mean()),
                n=len(df))


def run(seed: int, out: Path, pbc6: Path, epochs: int, size: int, batch: int, train_eval_limit: int,
        train_flags: list) -> dict:
    ds, tr = out / "dataset", out / "train"
    if not (ds / "valid.csv").exists():
        wbc("build-dataset", pbc6, ds, "--background", "keep", "--total", 2400, "--size", size,
            "--seed", seed, "--no-progress")
    t0 = time.time()
    cfg = tr / "config.json"
    finished = cfg.exists() and "best" in json.loads(cfg.read_text())
    if not finished:
        resume = ["--resume"] if (tr / "checkpoint.json").exists() else []
        wbc("train", ds, tr, "--epochs", epochs, "--batch-size", batch, "--size", size, "--pretrained", "none",
            "--seed", seed, "--train-eval-limit", train_eval_limit, "--no-progress", *resume, *train_flags)
    wall = time.time() - t0
    summary = json.loads(cfg.read_text())
    last = json.loads((tr / "checkpoint.json").read_text())["dir"]
    for name, model in (("best", tr / "model.nnp"), ("final", tr / last / "params.h5")):
        if not (out / f"pred_{name}.csv").exists():
            wbc("predict", model, ds / "valid.csv", out / f"pred_{name}.csv", "--size", size, "--no-progress")
    res = dict(seed=seed, epochs=epochs, size=size, batch_size=batch, train_flags=train_flags,
               wall_s_this_process=wall, wall_s_total=sum(r["seconds"] for r in summary["history"]),
               final=accuracies(out / "pred_final.csv"),
               best=dict(epoch=summary["best"]["epoch"], **accuracies(out / "pred_best.csv")),
               history=summary["history"])
    (out / "result.json").write_text(json.dumps(res, indent=1))
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
                    help="Training Error on a sample of N training images only (saves time; no effect on the model)")
    ap.add_argument("--summarize", type=Path, default=None, help="print mean/spread of seed*/result.json")
    a, train_flags = ap.parse_known_args()
    if a.summarize:
        return summarize(a.summarize)
    out = a.out or Path("/work/runs/accuracy_check") / f"seed{a.seed}"
    r = run(a.seed, out, a.pbc6, a.epochs, a.size, a.batch_size, a.train_eval_limit, train_flags)
    print(json.dumps({k: r[k] for k in ("seed", "final", "best", "wall_s_total")}, indent=1))


if __name__ == "__main__":
    main()
