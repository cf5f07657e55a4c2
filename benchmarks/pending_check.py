"""Does the "judgement pending" cut-off carry to another lab? (not a test): docs/research/cross_site_log.md.

The paper (section IV) asks for a cut-off that holds boundary cells for a human. A lab would
calibrate it where the model was trained: ``score --target-accuracy A`` on the model's own
validation cells gives the lowest top-probability cut-off T whose kept cells reach accuracy A.
Here that T is applied, unchanged, to the cells of another lab (zheng2018-d1), as a lab that
trusts the cut-off would: what share of d1's cells is kept, and how accurate are they?

On the runs of ``benchmarks/cross_site.py --variant V --seed S`` (OUT/V_sS), five classes, for
A = 0.99 (the library's default) and 0.95; each pair is (calibration cells -> d1 cells):

    pred_valid.csv        -> pred_d1.csv, pred_d1_adapted.csv
    pred_valid_prior.csv  -> pred_d1_prior.csv, pred_d1_adapted_prior.csv     (--prior normal)

Every figure comes from ``wbc-nnabla score`` (summary.json), the command a lab runs:

    wbc-nnabla score OUT/V_sS/pred_valid.csv OUT/pending_check/V_sS/valid_tA --no-figures --target-accuracy A
    wbc-nnabla score OUT/V_sS/pred_d1_adapted.csv OUT/pending_check/V_sS/d1_adapted_tA --no-figures --pending-threshold T
    wbc-nnabla score OUT/V_sS/pred_d1_adapted.csv OUT/pending_check/V_sS/d1_adapted_own_tA --no-figures --target-accuracy A
                                                                       # d1's own best cut-off (with its labels)
    wbc-nnabla score OUT/V_sS/pred_d1_adapted.csv OUT/pending_check/V_sS/d1_adapted_model_tA --no-figures \
        --pending-threshold model --target-accuracy A        # the same cut-off from the model's calibration cells
                                                             # (models trained since they are stored)

    nice -n 5 .venv/bin/python benchmarks/pending_check.py --out /work/runs/cross --variant robust --seed 0 --seed 1

Results: OUT/pending_check.json and the table printed (docs/research/cross_site_log.md's format).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cross_site as cs

TARGETS = (0.99, 0.95)
#: d1 stage -> the in-lab predictions its cut-off is calibrated on (made the same way: with or without the prior).
PAIRS = {"d1": "valid", "d1_adapted": "valid", "d1_prior": "valid_prior", "d1_adapted_prior": "valid_prior"}


def summary(pred: Path, folder: Path, *flags) -> dict:
    """``wbc-nnabla score PRED FOLDER --no-figures FLAGS`` (kept when an earlier run wrote it); its summary.json."""
    if not (folder / "summary.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        cs.wbc("score", pred, folder, "--no-figures", *flags)
    return json.loads((folder / "summary.json").read_text())


def measure(out: Path, variant: str, seed: int) -> list:
    """Every (stage, target) of one run: the in-lab cut-off, and its coverage and accuracy in each lab."""
    run, pc = out / f"{variant}_s{seed}", out / "pending_check" / f"{variant}_s{seed}"
    rows = []
    for stage, calib in PAIRS.items():
        for a in TARGETS:
            cal = summary(run / f"pred_{calib}.csv", pc / f"{calib}_t{a:g}", "--target-accuracy", a)
            # d1's own best cut-off for A (in-sample, with its labels): is the confidence ranking informative there at all?
            own = summary(run / f"pred_{stage}.csv", pc / f"{stage}_own_t{a:g}", "--target-accuracy", a)
            t = cal["threshold_at_target5"]
            row = dict(variant=variant, seed=seed, stage=stage, target=a, threshold=t,
                       in_lab_coverage=cal["coverage_at_target5"], in_lab_accuracy=cal["accuracy_at_target5"],
                       d1_accuracy_all=own["accuracy5_pooled"], d1_own_threshold=own["threshold_at_target5"],
                       d1_own_coverage=own["coverage_at_target5"])
            if t is not None:
                held = summary(run / f"pred_{stage}.csv", pc / f"{stage}_t{a:g}", "--pending-threshold", t)
                row.update(d1_coverage=held["coverage5"], d1_accuracy_kept=held["accuracy5_pooled"],
                           d1_kept=held["n_cells"] - held["n_pending5"], d1_cells=held["n_cells"])
            if json.loads((run / f"pred_{stage}.json").read_text()).get("calibration"):
                by_model = summary(run / f"pred_{stage}.csv", pc / f"{stage}_model_t{a:g}",
                                   "--pending-threshold", "model", "--target-accuracy", a)
                row.update(model_threshold=by_model["pending_threshold"],
                           model_d1_accuracy_kept=by_model["accuracy5_pooled"],
                           model_d1_kept=by_model["n_cells"] - by_model["n_pending5"])
            rows.append(row)
    return rows


def fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list) -> str:
    lines = ["| variant | seed | d1 stage | target A | cut-off T (pbc6 valid) | pbc6 valid coverage / accuracy at T "
             "| d1 all cells | d1 coverage at T | d1 accuracy of kept cells | d1's own cut-off for A: T / coverage "
             "| `--pending-threshold model`: T / d1 kept / accuracy |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['stage']} | {r['target']:g} | {fmt(r['threshold'], '.4f')} "
                     f"| {fmt(r['in_lab_coverage'])} / {fmt(r['in_lab_accuracy'])} | {fmt(r['d1_accuracy_all'])} "
                     f"| {fmt(r.get('d1_coverage'))} ({r.get('d1_kept', '-')} of {r.get('d1_cells', '-')}) "
                     f"| {fmt(r.get('d1_accuracy_kept'))} | {fmt(r['d1_own_threshold'], '.4f')} / {fmt(r['d1_own_coverage'])} "
                     f"| {fmt(r.get('model_threshold'), '.4f')} / {r.get('model_d1_kept', '-')} / "
                     f"{fmt(r.get('model_d1_accuracy_kept'))} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/work/runs/cross"))
    ap.add_argument("--variant", choices=sorted(cs.VARIANTS), action="append", default=[])
    ap.add_argument("--seed", type=int, action="append", default=[])
    a = ap.parse_args()
    rows = [r for v in a.variant or ["robust"] for s in a.seed or [0] for r in measure(a.out, v, s)]
    (a.out / "pending_check.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
