"""How many unlabelled cells a lab needs for `adapt` (not a test).

`adapt` re-estimates BatchNorm's statistics and measures the WBC scale on a site's unlabelled cells;
it refuses fewer than 32 (``sites.settings.MIN_ADAPT_IMAGES``). This measures, through the CLI, what a lab
gets from a seeded sample of N of its cells (``adapt --max-images N --seed R``), N in :data:`SIZES`,
:data:`DRAWS` draws each, against all of them, on two sets:

* the tight pbc6 crops of ``benchmarks/tight_crops.py`` (``OUT/tight/tight_sS``: the training lab's
  validation cells cropped close, 480 per seed; six classes), so that no d1 figure decides;
* d1 (300 cells; five classes), the labelled foreign lab.

For each model (the cross-site benchmark's ``VARIANT_sS/model.nnp``) and set::

    wbc-nnabla adapt MODEL CELLS OUT/adapt_cells/VARIANT_sS/SET_nN_rR.nnp --max-images N --seed R \
        --train-cells OUT/data_sS/train.csv
    wbc-nnabla predict OUT/adapt_cells/VARIANT_sS/SET_nN_rR.nnp CELLS_LABELLED OUT/adapt_cells/VARIANT_sS/SET_nN_rR.csv

"all" is ``tight_crops.py``'s own ``adapt`` with every cell (``OUT/tight/VARIANT_sS/adapted[_d1]_background.nnp``,
the default pad), which must exist (run ``tight_crops.py`` first). The cells adapted on are among the
cells scored, as with ``adapt`` on a whole site. The rule that reads the result is in
docs/research/cross_site_log.md ("How each constant was chosen", the number of cells `adapt` needs). Finished steps
are kept. Results: ``OUT/adapt_cells/VARIANT_sS.json``; ``--summarize`` prints the table.

    .venv/bin/python benchmarks/adapt_cells.py --out /work/runs/cross --variant robust --seed 0
    .venv/bin/python benchmarks/adapt_cells.py --out /work/runs/cross --summarize
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import cross_site as cs
import tight_crops as tc

#: Cells drawn (``adapt --max-images``), fixed before any run: the refusal floor (32), then doubling.
SIZES = (32, 64, 128)
#: Draws of each size (``adapt --seed``).
DRAWS = (0, 1, 2)


def sets(out: Path, seed: int) -> dict:
    """``{name: (unlabelled cells adapt reads, labelled cells predict scores, score function, all-cells model)}``."""
    tight = tc.tight_cells(out, seed)
    return {"tight": (tight, tight, cs.in_domain, "adapted_background.nnp"),
            "d1": (out / "d1_unlabelled.csv", out / "d1.csv", cs.five_class, "adapted_d1_background.nnp")}


def accuracy(scores: dict) -> float:
    return scores.get("acc6", scores.get("acc5"))


def measure(out: Path, variant: str, seed: int) -> dict:
    """Accuracy after ``adapt`` on N drawn cells (each size and draw) and on all cells, per set."""
    model = out / f"{variant}_s{seed}" / "model.nnp"
    train = out / f"data_s{seed}" / "train.csv"
    run = out / "adapt_cells" / f"{variant}_s{seed}"
    run.mkdir(parents=True, exist_ok=True)
    res = dict(variant=variant, seed=seed)
    for name, (cells, labelled, score, whole) in sets(out, seed).items():
        every = out / "tight" / f"{variant}_s{seed}" / whole
        if not every.exists():
            raise SystemExit(f"{every}: missing; run benchmarks/tight_crops.py --variant {variant} --seed {seed} first")
        res[name] = {"all": accuracy(score(cs.predict(every, labelled, run / f"{name}_all.csv")))}
        for n in SIZES:
            got = []
            for r in DRAWS:
                m = run / f"{name}_n{n}_r{r}.nnp"
                if not m.exists():
                    cs.wbc("adapt", model, cells, m, "--max-images", n, "--seed", r, "--train-cells", train)
                got.append(accuracy(score(cs.predict(m, labelled, run / f"{name}_n{n}_r{r}.csv"))))
            res[name][str(n)] = got
    (out / "adapt_cells" / f"{variant}_s{seed}.json").write_text(json.dumps(res, indent=1))
    return res


def summarize(out: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted((out / "adapt_cells").glob("*_s*.json"))]
    for name, what in (("tight", "tight pbc6 crops, six-class"), ("d1", "d1, five-class")):
        print(f"\n{what} after `adapt` on N drawn cells (mean of {len(DRAWS)} draws [min-max]) and on all:\n")
        print("| variant | seed | " + " | ".join(f"N = {n}" for n in SIZES) + " | all |")
        print("| --- " * (3 + len(SIZES)) + "|")
        for r in rows:
            cells = [f"{np.mean(r[name][str(n)]):.3f} [{min(r[name][str(n)]):.3f}-{max(r[name][str(n)]):.3f}]"
                     for n in SIZES]
            print(f"| {r['variant']} | {r['seed']} | " + " | ".join(cells) + f" | {r[name]['all']:.3f} |")
        for variant in sorted({r["variant"] for r in rows}):
            mine = [r for r in rows if r["variant"] == variant]
            means = [np.mean([np.mean(r[name][str(n)]) for r in mine]) for n in SIZES]
            print(f"| {variant} | mean | " + " | ".join(f"{m:.3f}" for m in means)
                  + f" | {np.mean([r[name]['all'] for r in mine]):.3f} |")


def main():
    tc.bench_main(__doc__, measure, summarize, "adapt_cells")


if __name__ == "__main__":
    main()
