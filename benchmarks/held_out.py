"""Held-out-lab check of the cross-site issue (not a test): the robust recipe on pbc6, `adapt`, `predict`.

For each labelled lab given (any cell source the library reads: class folders, a ``path,label``
CSV, an NNC dataset; labels in the six- or five-class names), this runs the issue's commands
and reports 5-class accuracy as exported, after ``adapt`` on the lab's own cells (labels
ignored), and after ``adapt`` with ``predict --prior normal``; the issue asks >= 0.75 after
``adapt``:

    wbc-nnabla build-dataset PBC6 OUT/data_sS --background keep --total 2400 --size 64 --seed S
    wbc-nnabla train OUT/data_sS OUT/robust_sS --recipe robust --size 64 --epochs 10 \
        --batch-size 32 --pretrained none --seed S
    wbc-nnabla predict OUT/robust_sS/model.nnp LAB OUT/held_out/NAME_sS/pred_exported.csv
    wbc-nnabla adapt OUT/robust_sS/model.nnp LAB OUT/held_out/NAME_sS/adapted.nnp \
        --train-cells OUT/data_sS/train.csv
    wbc-nnabla predict OUT/held_out/NAME_sS/adapted.nnp LAB OUT/held_out/NAME_sS/pred_adapted.csv [--prior normal]

The trained model is the one ``benchmarks/cross_site.py --variant robust`` trains in the same
OUT (so a run there is reused, and an interrupted training resumes). NAME is the lab's file or
folder name, or the part before ``=`` in ``NAME=PATH``. A GroupNorm model has nothing to adapt:
its ``adapt`` rows stay empty. Results: ``OUT/held_out/NAME_sS/held_out.json`` and a table.

    .venv/bin/python benchmarks/held_out.py --out /work/runs/cross --seed 0 labA=/data/labA labB=/data/labB.csv
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cross_site as cs

#: The issue's acceptance for each held-out lab (5 classes, after `adapt`).
TARGET = 0.75
STAGES = ("exported", "adapted", "adapted_prior")


def parse_lab(item: str) -> tuple:
    """``NAME=PATH`` or ``PATH`` (NAME = the file's or folder's stem) -> (NAME, PATH)."""
    name, sep, path = item.partition("=")
    path = Path(path if sep else item)
    if not path.exists():
        raise SystemExit(f"held_out: lab {item!r}: {path} does not exist")
    return (name if sep else path.stem), path


def check_lab(out: Path, seed: int, trained: Path, name: str, lab: Path) -> dict:
    """The three 5-class measurements of one lab by the run ``trained``; writes ``held_out.json``."""
    data, model = cs.data_dir(out, "robust", seed), trained / "model.nnp"
    run = out / "held_out" / f"{name}_s{seed}"
    run.mkdir(parents=True, exist_ok=True)
    res = dict(lab=str(lab), seed=seed, model=str(model),
               exported=cs.five_class(cs.predict(model, lab, run / "pred_exported.csv")))
    if cs.is_batchnorm(model):
        adapted = run / "adapted.nnp"
        if not adapted.exists():
            cs.wbc("adapt", model, lab, adapted, "--train-cells", data / "train.csv")
        res["adapted"] = cs.five_class(cs.predict(adapted, lab, run / "pred_adapted.csv"))
        res["adapted_prior"] = cs.five_class(cs.predict(adapted, lab, run / "pred_adapted_prior.csv",
                                                        "--prior", "normal"))
    (run / "held_out.json").write_text(json.dumps(res, indent=1))
    return res


def table(results: dict) -> str:
    """A Markdown table: one row per lab and seed, the three accuracies and the issue's verdict
    (after `adapt`; as exported for a model without BatchNorm, as the issue's check says)."""
    rows = ["| lab | seed | cells | as exported | after `adapt` | `adapt` + prior | recall after `adapt` | >= 0.75 |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (name, seed), r in results.items():
        acc = [f"{r[s]['acc5']:.3f}" if s in r else "" for s in STAGES]
        recall = ", ".join(f"{c} {v:.2f}" for c, v in r.get("adapted", {}).get("recall", {}).items())
        judged = r.get("adapted", r["exported"])      # a GroupNorm model has nothing to adapt: as exported
        verdict = "yes" if judged["acc5"] >= TARGET else "no"
        rows.append(f"| {name} | {seed} | {r['exported']['n']} | " + " | ".join(acc) + f" | {recall} | {verdict} |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labs", nargs="+", metavar="[NAME=]PATH", help="a labelled lab's cells (any cell source)")
    ap.add_argument("--out", type=Path, default=Path("/work/runs/cross"))
    ap.add_argument("--seed", type=int, action="append", default=[])
    ap.add_argument("--pbc6", type=Path, default=cs.SHARED / "pbc6")
    a = ap.parse_args()
    labs = dict(parse_lab(item) for item in a.labs)
    if len(labs) < len(a.labs):
        raise SystemExit("held_out: two labs share a NAME; give each one as NAME=PATH")
    a.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for seed in a.seed or [0]:
        trained = cs.train_variant(a.out, a.pbc6, "robust", seed, [])
        for name, lab in labs.items():
            results[name, seed] = check_lab(a.out, seed, trained, name, lab)
    print(table(results))


if __name__ == "__main__":
    main()
