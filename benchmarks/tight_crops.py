"""Tight crops: how `adapt` should fill the band around a crop it zooms out (not a test).

A lab that crops close around each cell (the cross-site issue's held-out lab C: "tight crops")
gives crops in which the WBC fills most of the side; `adapt` measures that and zooms every crop
out to the training lab's WBC scale. The band it adds is filled as `adapt --pad` says. This
measures each way on a set made from the training lab itself, so that nothing but the framing
differs and no d1 figure takes part in the choice: each pbc6 validation cell of ``data_sS`` is
cropped to CROP px around its centre through the CLI,

    wbc-nnabla build-dataset OUT/tight/cells_sS.csv OUT/tight/tight_sS --inference --crop 146 --size 146

and for each model (the cross-site benchmark's ``VARIANT_sS/model.nnp``, trained on ``data_sS``):

    wbc-nnabla predict MODEL OUT/tight/tight_sS OUT/tight/VARIANT_sS/pred_exported.csv
    wbc-nnabla adapt MODEL OUT/tight/tight_sS OUT/tight/VARIANT_sS/adapted_PAD.nnp --pad PAD \
        --train-cells OUT/data_sS/train.csv                                 # and with --no-scale
    wbc-nnabla predict OUT/tight/VARIANT_sS/adapted_PAD.nnp OUT/tight/tight_sS OUT/tight/VARIANT_sS/pred_PAD.csv
    wbc-nnabla adapt MODEL OUT/d1_unlabelled.csv OUT/tight/VARIANT_sS/adapted_d1_PAD.nnp --pad PAD \
        --train-cells OUT/data_sS/train.csv
    wbc-nnabla predict OUT/tight/VARIANT_sS/adapted_d1_PAD.nnp OUT/d1.csv OUT/tight/VARIANT_sS/pred_d1_PAD.csv

The rule that reads the result is in docs/research/cross_site_log.md ("How each constant was chosen", `adapt`'s
padding). Finished steps are kept. Results: ``OUT/tight/VARIANT_sS.json``; ``--summarize`` prints
the table.

    .venv/bin/python benchmarks/tight_crops.py --out /work/runs/cross --variant robust --seed 0
    .venv/bin/python benchmarks/tight_crops.py --out /work/runs/cross --summarize
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

import cross_site as cs

#: Crop side (px) around each pbc6 cell's centre: 1.1 x the median WBC diameter of a pbc6 crop
#: (0.367 x 363 px = 133 px, measured with the library's mask), fixed before any run.
CROP = 146
#: `adapt --pad` choices measured, and the statistics-only adaptation beside them.
PADS = ("reflect", "replicate", "background")
NO_SCALE = "no-scale"


def tight_cells(out: Path, seed: int) -> Path:
    """``OUT/tight/tight_sS``: the pbc6 validation cells of ``data_sS`` cropped to :data:`CROP` px
    around their centres (``build-dataset --inference``; labels kept for scoring)."""
    target = out / "tight" / f"tight_s{seed}"
    if not (target / "cells.csv").exists():
        manifest = pd.read_csv(out / f"data_s{seed}" / "manifest.csv")
        valid = manifest[manifest["split"] == "valid"].drop_duplicates("cell_id")
        table = pd.DataFrame({"path": valid["source_path"], "label": valid["label"],
                              "x": valid["cell_x"], "y": valid["cell_y"]})
        source = out / "tight" / f"cells_s{seed}.csv"
        source.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(source, index=False)
        cs.wbc("build-dataset", source, target, "--inference", "--crop", CROP, "--size", CROP, "--no-progress")
    return target


def adapted(model: Path, cells: Path, target: Path, pad: str, train: Path) -> Path:
    """``adapt MODEL CELLS TARGET --train-cells TRAIN`` with ``--pad PAD`` (or ``--no-scale``), unless
    done; the training cells as the cross-site benchmark gives them."""
    if not target.exists():
        flag = ["--no-scale"] if pad == NO_SCALE else ["--pad", pad, "--train-cells", train]
        cs.wbc("adapt", model, cells, target, *flag)
    return target


def zoom_of(model: Path) -> float:
    from wbc_nnabla import modelfile
    return float(modelfile.read_model(model)[1].get("zoom", 1.0))


def measure(out: Path, variant: str, seed: int) -> dict:
    """Accuracy on the tight crops (as exported, after ``adapt`` with each pad) and on d1 after ``adapt``."""
    model = out / f"{variant}_s{seed}" / "model.nnp"
    tight, run = tight_cells(out, seed), out / "tight" / f"{variant}_s{seed}"
    train = out / f"data_s{seed}" / "train.csv"
    run.mkdir(parents=True, exist_ok=True)
    res = dict(variant=variant, seed=seed, crop=CROP,
               exported=cs.in_domain(cs.predict(model, tight, run / "pred_exported.csv")))
    for pad in PADS + (NO_SCALE,):
        m = adapted(model, tight, run / f"adapted_{pad}.nnp", pad, train)
        res[pad] = dict(cs.in_domain(cs.predict(m, tight, run / f"pred_{pad}.csv")), zoom=zoom_of(m))
    for pad in PADS:
        m = adapted(model, out / "d1_unlabelled.csv", run / f"adapted_d1_{pad}.nnp", pad, train)
        res["d1_" + pad] = dict(cs.five_class(cs.predict(m, out / "d1.csv", run / f"pred_d1_{pad}.csv")),
                                zoom=zoom_of(m))
    (out / "tight" / f"{variant}_s{seed}.json").write_text(json.dumps(res, indent=1))
    return res


def summarize(out: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted((out / "tight").glob("*_s*.json"))]
    print(f"tight crops ({CROP} px around each pbc6 validation cell), six-class accuracy; d1 five-class "
          f"after `adapt`:\n")
    print("| variant | seed | as exported | `--no-scale` | " + " | ".join(f"`--pad {p}`" for p in PADS)
          + " | zoom | " + " | ".join(f"d1, `--pad {p}`" for p in PADS) + " | d1 zoom |")
    print("| --- " * (6 + 2 * len(PADS)) + "|")
    for r in rows:
        print(f"| {r['variant']} | {r['seed']} | {r['exported']['acc6']:.3f} | {r[NO_SCALE]['acc6']:.3f} | "
              + " | ".join(f"{r[p]['acc6']:.3f}" for p in PADS) + f" | {r[PADS[0]]['zoom']:.2f} | "
              + " | ".join(f"{r['d1_' + p]['acc5']:.3f}" for p in PADS) + f" | {r['d1_' + PADS[0]]['zoom']:.2f} |")


def bench_main(doc: str, measure, summarize, results: str, brief=lambda r: r) -> None:
    """The command line of a benchmark over the cross-site benchmark's models (this one and
    ``adapt_cells.py``): ``--out --variant --seed`` print ``brief(measure(out, variant, seed))`` as
    JSON; ``--summarize`` runs ``summarize(out)`` over every run in ``OUT/results``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the cross-site benchmark's OUT (models, data_sS, d1.csv)")
    ap.add_argument("--variant", default="robust")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--summarize", action="store_true", help=f"print the tables of every run in OUT/{results}")
    a = ap.parse_args()
    if a.summarize:
        summarize(a.out)
        return
    print(json.dumps(brief(measure(a.out, a.variant, a.seed))))


def main():
    bench_main(__doc__, measure, summarize, "tight", brief=lambda r: {
        k: (v.get("acc6", v.get("acc5")) if isinstance(v, dict) else v) for k, v in r.items()})


if __name__ == "__main__":
    main()
