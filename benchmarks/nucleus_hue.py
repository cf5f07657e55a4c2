"""Label-free stain measure (not a test): the hue of WBC nuclei on each site's unlabelled images.

The basis of the ``hue`` range (``train --set hue=30``) of docs/research/cross_site_log.md. Per image, the darkest 8 % of the
pixels (the nucleus, in a cell crop or a smear field) are taken, and the mean angle of their
colour about the grey axis is measured (degrees; 0 = towards red, as the ``hue`` turn).
No labels are read.

    .venv/bin/python benchmarks/nucleus_hue.py
"""
from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np
import pandas as pd

from wbc_nnabla import fileio

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Share of an image's darkest pixels taken as nucleus.
DARK_SHARE = 0.08
GREY = np.ones(3) / np.sqrt(3)
RED = np.array([2.0, -1.0, -1.0]) / np.sqrt(6)        # red's direction in the chroma plane
OTHER = np.cross(GREY, RED)


def nucleus_hue(path: str) -> float:
    """Mean chroma angle (degrees) of the darkest :data:`DARK_SHARE` of the pixels of one image."""
    px = fileio.read_rgb(path).reshape(-1, 3).astype(np.float64) / 255.0
    grey = px.mean(axis=1)
    dark = px[grey <= np.quantile(grey, DARK_SHARE)]
    chroma = dark - dark.mean(axis=1, keepdims=True)
    return float(np.degrees(np.arctan2(chroma @ OTHER, chroma @ RED)).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--every", type=int, default=5, help="take every n-th image of each site")
    a = ap.parse_args()
    d1 = a.shared / "zheng2018-d1"
    sites = {"pbc6 (training lab)": sorted(glob.glob(str(a.shared / "pbc6" / "*" / "*.jpg"))),
             "zheng2018-d1": [str(d1 / f"{i:03d}.bmp") for i in pd.read_csv(d1 / "labels.csv")["image ID"]],
             "bccd-fields": sorted(glob.glob(str(a.shared / "bccd-fields" / "**" / "*.jpg"), recursive=True))}
    print("| site | images | nucleus hue, median (degrees) | 10th-90th percentile |\n| --- | --- | --- | --- |")
    for name, paths in sites.items():
        h = np.array([nucleus_hue(p) for p in paths[::a.every]])
        print(f"| {name} | {len(h)} | {np.median(h):.1f} | {np.quantile(h, 0.1):.1f} to {np.quantile(h, 0.9):.1f} |")


if __name__ == "__main__":
    main()
