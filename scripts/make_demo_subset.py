"""Copy a seeded stratified subset of ../shared/data/pbc6 into wbc_nnabla/data/demo_pbc.

Run once by the maintainers (the subset is committed); kept so the choice is reproducible:
    .venv/bin/python scripts/make_demo_subset.py ../shared/data/pbc6 --per-class 20 --seed 0
"""
import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

ap = argparse.ArgumentParser()
ap.add_argument("pbc6", type=Path)
ap.add_argument("--per-class", type=int, default=20)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "wbc_nnabla/data/demo_pbc")
a = ap.parse_args()
labels = pd.read_csv(a.pbc6 / "labels.csv")
rng = np.random.default_rng(a.seed)
rows = []
for label, grp in labels.groupby("label", sort=True):
    pick = grp.iloc[np.sort(rng.choice(len(grp), a.per_class, replace=False))]
    for rel in pick["path"]:
        dst = a.out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(a.pbc6 / rel, dst)
        rows.append((rel, label))
pd.DataFrame(rows, columns=["path", "label"]).to_csv(a.out / "labels.csv", index=False)
shutil.copyfile(a.pbc6 / "LICENSE-CC-BY-4.0.md", a.out / "LICENSE-CC-BY-4.0.md")
print(f"wrote {len(rows)} cells to {a.out}")
