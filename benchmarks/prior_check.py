"""`predict --prior estimate` against `none` and `normal` (not a test): the measurements of
docs/research/cross_site_log.md.

On the robust recipe's seeds trained by ``benchmarks/cross_site.py --variant robust`` (OUT/robust_sS):

(A) d1 after ``adapt`` (``adapted_d1.nnp``), 5-class accuracy with ``--prior none / normal / estimate``;
(B) the pbc6 validation cells (balanced, the model's own lab), 6-class accuracy with each prior;
(C) an eosinophilia smear drawn from the seed's pbc6 validation cells (177 distinct cells, seeded:
    Segment 80, Band 5, Lymph 44, Mono 11, Eosinophil 35, Basophil 2, i.e. 20 % eosinophils), its
    Eosinophil recall and 6-class accuracy with each prior: what a fixed healthy prior costs an
    abnormal smear.

Every prediction is a ``wbc-nnabla predict`` run; finished ones are kept. Results: OUT/prior_check.json.

    nice -n 5 .venv/bin/python benchmarks/prior_check.py --out /work/runs/cross --seed 0 --seed 1 --seed 2 --seed 3
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

import cross_site as cs

PRIORS = ("none", "normal", "estimate")
#: The eosinophilia smear of (C): cells of each class (shares 0.45/0.03/0.25/0.06/0.20/0.01 of 177).
EOSINOPHILIA = {"Segment": 80, "Band": 5, "Lymph": 44, "Mono": 11, "Eosinophil": 35, "Basophil": 2}


def eosinophilia_smear(out: Path, seed: int) -> Path:
    """``OUT/prior_check/eosinophilia_sS.csv`` (path,label,smear): a seeded draw of the seed's valid cells."""
    from wbc_nnabla import fileio
    csv = out / "prior_check" / f"eosinophilia_s{seed}.csv"
    if not csv.exists():
        valid = fileio.read_cells(cs.data_dir(out, "robust", seed) / "valid.csv")
        rng = np.random.default_rng(seed)
        rows = [valid[valid["label"] == c].sample(n, random_state=rng) for c, n in EOSINOPHILIA.items()]
        smear = pd.concat(rows)[["path", "label"]].assign(smear="eosinophilia")
        csv.parent.mkdir(parents=True, exist_ok=True)
        smear.to_csv(csv, index=False)
    return csv


def flags(prior: str) -> list:
    return [] if prior == "none" else ["--prior", prior]


def measure(out: Path, seed: int) -> dict:
    """(A), (B) and (C) of one seed, each with the three priors."""
    run, data = out / f"robust_s{seed}", cs.data_dir(out, "robust", seed)
    pc = out / "prior_check"
    smear = eosinophilia_smear(out, seed)
    res = dict(seed=seed, d1_adapted={}, pbc6_valid={}, eosinophilia={})
    for prior in PRIORS:
        tag = f"s{seed}_{prior}"
        res["d1_adapted"][prior] = cs.five_class(cs.predict(run / "adapted_d1.nnp", out / "d1.csv",
                                                            pc / f"d1_adapted_{tag}.csv", *flags(prior)))
        res["pbc6_valid"][prior] = cs.in_domain(cs.predict(run / "model.nnp", data / "valid.csv",
                                                           pc / f"valid_{tag}.csv", *flags(prior)))
        pred = pd.read_csv(cs.predict(run / "model.nnp", smear, pc / f"eosinophilia_{tag}.csv", *flags(prior)),
                           keep_default_na=False)
        eos = pred["label"] == "Eosinophil"
        res["eosinophilia"][prior] = dict(acc6=float((pred["pred6"] == pred["label"]).mean()),
                                          eos_recall=float((pred.loc[eos, "pred6"] == "Eosinophil").mean()),
                                          eos_called=int((pred["pred6"] == "Eosinophil").sum()), n=len(pred))
    return res


def table(results: list) -> str:
    rows = ["| seed | d1 after `adapt` none / normal / estimate | pbc6 valid 6-class none / normal / estimate "
            "| eosinophilia smear: Eosinophil recall none / normal / estimate (called, of 35) |",
            "| --- | --- | --- | --- |"]
    for r in results + [mean_row(results)]:
        d1 = " / ".join(f"{r['d1_adapted'][p]['acc5']:.3f}" for p in PRIORS)
        va = " / ".join(f"{r['pbc6_valid'][p]['acc6']:.3f}" for p in PRIORS)
        eo = " / ".join(f"{r['eosinophilia'][p]['eos_recall']:.3f} ({r['eosinophilia'][p]['eos_called']})"
                        for p in PRIORS)
        rows.append(f"| {r['seed']} | {d1} | {va} | {eo} |")
    return "\n".join(rows)


def mean_row(results: list) -> dict:
    """The mean over seeds of every figure the table shows (the rule is judged on it)."""
    m = dict(seed="mean")
    for key, fields in (("d1_adapted", ("acc5",)), ("pbc6_valid", ("acc6",)),
                        ("eosinophilia", ("eos_recall", "eos_called", "acc6"))):
        m[key] = {p: {f: float(np.mean([r[key][p][f] for r in results])) for f in fields} for p in PRIORS}
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/work/runs/cross"))
    ap.add_argument("--seed", type=int, action="append", default=[])
    a = ap.parse_args()
    results = [measure(a.out, s) for s in a.seed or [0]]
    (a.out / "prior_check.json").write_text(json.dumps(dict(seeds=results, mean=mean_row(results)), indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
