"""Copy a seeded stratified subset of ../shared/data/pbc6 into the package's embedded demo data.

Run once by the maintainers (the subsets are committed); kept so the choice is reproducible.

The 120 cells the tests use (``fileio.demo_data()``), the PBC files unchanged:
    .venv/bin/python scripts/make_demo_subset.py ../shared/data/pbc6 --per-class 20 --seed 0

The cells ``make demo`` trains on (``fileio.demo_data("small")``): 150 other cells per class, each
the centred 216x216 pixels of the 360x363 PBC image (the WBC is at the centre of every PBC image)
resized to 96x96 and stored as JPEG quality 90, so that the package stays small (about 3 MB):
    .venv/bin/python scripts/make_demo_subset.py ../shared/data/pbc6 --per-class 150 --seed 1 \\
        --centre-crop 216 --size 96 --quality 90 --exclude wbc_nnabla/data/demo_pbc \\
        --out wbc_nnabla/data/demo_pbc_small
"""
import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pbc6", type=Path, help="the PBC folder (class folders and labels.csv)")
    ap.add_argument("--per-class", type=int, default=20, help="cells per class")
    ap.add_argument("--seed", type=int, default=0, help="seed of the choice")
    ap.add_argument("--out", type=Path, default=ROOT / "wbc_nnabla/data/demo_pbc", help="folder to write")
    ap.add_argument("--exclude", type=Path, action="append", default=[],
                    help="an embedded set (its labels.csv) whose cells are not chosen again (repeatable)")
    ap.add_argument("--centre-crop", type=int, default=None, metavar="PX",
                    help="keep the centred PX x PX pixels of each image (default: the file unchanged)")
    ap.add_argument("--size", type=int, default=None, metavar="PX", help="resize to PX x PX (needs --centre-crop)")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of changed images")
    a = ap.parse_args()
    if a.size and not a.centre_crop:
        ap.error("--size needs --centre-crop (the PBC images are not square)")
    return a


def choose(labels: pd.DataFrame, per_class: int, seed: int, exclude) -> pd.DataFrame:
    """``per_class`` rows of each label, seeded, none of them listed in an ``exclude`` set."""
    taken = set()
    for folder in exclude:
        taken |= set(pd.read_csv(folder / "labels.csv")["path"])
    labels = labels[~labels["path"].isin(taken)]
    rng = np.random.default_rng(seed)
    picks = [grp.iloc[np.sort(rng.choice(len(grp), per_class, replace=False))]
             for _, grp in labels.groupby("label", sort=True)]
    return pd.concat(picks)[["path", "label"]]


def write_cell(src: Path, dst: Path, crop, size, quality: int) -> None:
    """Copy ``src`` to ``dst``, or its centred ``crop`` square resized to ``size`` (area interpolation)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not crop:
        shutil.copyfile(src, dst)
        return
    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    if crop > min(h, w):
        raise SystemExit(f"{src}: {w}x{h} pixels, smaller than --centre-crop {crop}")
    y0, x0 = (h - crop) // 2, (w - crop) // 2
    img = img[y0:y0 + crop, x0:x0 + crop]
    if size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    if not cv2.imwrite(str(dst), img, [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise SystemExit(f"{dst}: could not write")


def main() -> None:
    a = parse_args()
    pick = choose(pd.read_csv(a.pbc6 / "labels.csv"), a.per_class, a.seed, a.exclude)
    for rel in pick["path"]:
        write_cell(a.pbc6 / rel, a.out / rel, a.centre_crop, a.size, a.quality)
    pick.to_csv(a.out / "labels.csv", index=False)
    shutil.copyfile(a.pbc6 / "LICENSE-CC-BY-4.0.md", a.out / "LICENSE-CC-BY-4.0.md")
    print(f"wrote {len(pick)} cells to {a.out}")


if __name__ == "__main__":
    main()
