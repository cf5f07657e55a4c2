"""Colour standardisation after `adapt`: `adapt --stain` on d1's unlabelled cells (not a test).

`predict --stain` was measured on the models as exported only; a lab's path is `adapt` first, and
a model `adapt` made refuses a later `--stain` (its BatchNorm statistics were estimated on the cells
as `adapt` saw them). `adapt --stain M --stain-reference TRAIN` estimates them on the standardised
cells and stores the standardisation for `predict`. For each model of the cross-site benchmark
(``VARIANT_sS/model.nnp``, trained on ``data_sS``), through the CLI:

    wbc-nnabla adapt MODEL OUT/d1_unlabelled.csv OUT/stain_adapt/VARIANT_sS/adapted_none.nnp
    wbc-nnabla adapt MODEL OUT/d1_unlabelled.csv OUT/stain_adapt/VARIANT_sS/adapted_M.nnp \
        --stain M --stain-reference OUT/data_sS/train.csv          # M: white-balance, reinhard, macenko
    wbc-nnabla predict OUT/stain_adapt/VARIANT_sS/adapted_M.nnp OUT/d1.csv .../pred_M.csv [--prior normal]

The rule that reads the result is in docs/research/cross_site_log.md ("How each constant was chosen", colour
standardisation after `adapt`). Finished steps are kept. Results: ``OUT/stain_adapt/VARIANT_sS.json``;
``--summarize`` prints the table.

    .venv/bin/python benchmarks/stain_after_adapt.py --out /work/runs/cross --variant robust --seed 0
    .venv/bin/python benchmarks/stain_after_adapt.py --out /work/runs/cross --summarize
"""
from __future__ import annotations

import json
from pathlib import Path

import cross_site as cs
from tight_crops import bench_main

#: `adapt` without a standardisation (the baseline), then each `--stain` method.
METHODS = ("none", "white-balance", "reinhard", "macenko")


def measure(out: Path, variant: str, seed: int) -> dict:
    """d1 five-class accuracy after `adapt [--stain M]`, without and with `--prior normal`, per method."""
    run = out / "stain_adapt" / f"{variant}_s{seed}"
    run.mkdir(parents=True, exist_ok=True)
    model, train = out / f"{variant}_s{seed}" / "model.nnp", cs.data_dir(out, variant, seed) / "train.csv"
    res = {}
    for m in METHODS:
        adapted = run / f"adapted_{m}.nnp"
        if not adapted.exists():
            flags = [] if m == "none" else ["--stain", m, "--stain-reference", train]
            cs.wbc("adapt", model, out / "d1_unlabelled.csv", adapted, *flags)
        res[m] = cs.five_class(cs.predict(adapted, out / "d1.csv", run / f"pred_{m}.csv"))
        res[f"{m}_prior"] = cs.five_class(cs.predict(adapted, out / "d1.csv", run / f"pred_{m}_prior.csv",
                                                     "--prior", "normal"))
    (out / "stain_adapt" / f"{variant}_s{seed}.json").write_text(json.dumps(res, indent=1))
    return res


def summarize(out: Path) -> None:
    """A Markdown table: one row per run, d1 accuracy after `adapt` per method (without / with the prior)."""
    print("| model | " + " | ".join(METHODS) + " |")
    print("| --- |" + " --- |" * len(METHODS))
    for f in sorted((out / "stain_adapt").glob("*.json")):
        r = json.loads(f.read_text())
        print(f"| {f.stem} | " + " | ".join(f"{r[m]['acc5']:.3f} / {r[m + '_prior']['acc5']:.3f}" for m in METHODS)
              + " |")
    print("\nrecall after `adapt --stain M` (no prior), Neutrophil / Eosinophil / Mono / Lymph:")
    for f in sorted((out / "stain_adapt").glob("*.json")):
        r = json.loads(f.read_text())
        print(f"  {f.stem}: " + "; ".join(
            f"{m} " + ", ".join(f"{r[m]['recall'].get(c, float('nan')):.2f}"
                                for c in ("Neutrophil", "Eosinophil", "Mono", "Lymph")) for m in METHODS))


def main():
    bench_main(__doc__, measure, summarize, "stain_adapt",
               brief=lambda r: {k: v["acc5"] for k, v in r.items()})


if __name__ == "__main__":
    main()
