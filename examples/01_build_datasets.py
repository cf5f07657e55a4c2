"""Step 1 (paper section II.3): build dataset ① (background removed), dataset ② (background kept)
and the inference set from labeled cell images.

    python examples/01_build_datasets.py [SOURCE] --work WORK [--size 480] [--total-a 2385] [--total-b 3284]

SOURCE defaults to the embedded demo cells; with your own photos pass a class-folder tree or a
path,label[,smear][,x,y] CSV. The paper's values are the defaults of `wbc-nnabla build-dataset`;
the defaults below are small so the example runs in a minute.
"""
import argparse
from pathlib import Path

import pandas as pd

from wbc_nnabla import datasets, fileio

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("source", nargs="?", default=str(fileio.demo_data()))
ap.add_argument("--work", default="work", help="folder for every step's outputs")
ap.add_argument("--crop", type=int, default=360, help="crop side in pixels (paper: 750 on 2560x1920 photos)")
ap.add_argument("--size", type=int, default=64, help="training input side (paper: 480)")
ap.add_argument("--infer-size", type=int, default=64, help="inference input side (paper: 320)")
ap.add_argument("--total-a", type=int, default=240, help="images in dataset ① (paper: 2385)")
ap.add_argument("--total-b", type=int, default=240, help="images in dataset ② (paper: 3284)")
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()
work = Path(args.work)
work.mkdir(parents=True, exist_ok=True)

# Hold out a third of the cells (stratified, seeded) as the inference set: they never enter training.
cells = fileio.read_cells(args.source)
held = cells.groupby("label", group_keys=False).sample(frac=1 / 3, random_state=args.seed)
teacher = cells.drop(index=held.index)
held = held.assign(smear=[f"S{i % 4 + 1}" for i in range(len(held))])  # four stand-in smears
teacher[["path", "label"]].to_csv(work / "teacher.csv", index=False)
held[["path", "label", "smear"]].to_csv(work / "inference.csv", index=False)

# ① background removed, ② background kept: balanced by the eight rotations/flips, split per source cell.
datasets.build_dataset(work / "teacher.csv", work / "dataset_A", background="remove", crop=args.crop,
                       size=args.size, total=args.total_a, seed=args.seed, overwrite=True)
datasets.build_dataset(work / "teacher.csv", work / "dataset_B", background="keep", crop=args.crop,
                       size=args.size, total=args.total_b, seed=args.seed, overwrite=True)
# The inference set: crop and resize only.
datasets.build_dataset(work / "inference.csv", work / "dataset_inference", inference=True, crop=args.crop,
                       size=args.infer_size, seed=args.seed, overwrite=True)

for name in ("dataset_A", "dataset_B"):
    train = pd.read_csv(work / name / "train.csv")
    print(f"{name}: {len(train)} training images, per class {train['y:label'].value_counts().sort_index().tolist()}")
