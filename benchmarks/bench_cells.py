"""Benchmark of wbc_nnabla.segmentation: WBC masks, failure shares, localization, throughput.

Run from the repository root:

    nice -n 10 .venv/bin/python benchmarks/bench_cells.py [--data ../shared/data] [--per-class 100]

Prints (and records in docs/benchmarks.md by hand):
* Zheng et al. 2018 dataset 1: IoU of wbc_mask against the expert masks (mask > 0),
  mean, median, per class (labels.csv: 1 neutrophil ... 5 basophil), share < 0.6.
* pbc6: share of cells whose mask is only the nucleus or includes a red cell
  (automatic measures, see docs/cells.md), per class; writes the overlay gallery
  docs/gallery/pbc6_masks.png (8 cells per class, flags drawn on each tile).
* bccd-fields: recall / precision of locate_wbcs against the VOC WBC boxes.
* throughput of remove_background on pbc6 360 px crops (crops/s, one process).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from wbc_nnabla import fileio, segmentation  # noqa: E402

CLASSES = ("Band", "Segment", "Eosinophil", "Basophil", "Mono", "Lymph")
ZHENG_NAMES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}


def bench_zheng(root: Path) -> None:
    labels = pd.read_csv(root / "labels.csv")
    rows = []
    for image_id, label in zip(labels.iloc[:, 0], labels.iloc[:, 1]):
        rgb = fileio.read_rgb(root / f"{int(image_id):03d}.bmp")
        truth = fileio.read_rgb(root / f"{int(image_id):03d}.png")[..., 0] > 0
        m = segmentation.wbc_mask(rgb)
        rows.append({"id": int(image_id), "class": ZHENG_NAMES.get(int(label), str(label)),
                     "iou": (m & truth).sum() / max(1, (m | truth).sum())})
    df = pd.DataFrame(rows)
    print(f"zheng2018-d1: n={len(df)} IoU mean {df.iou.mean():.4f} median {df.iou.median():.4f} "
          f"share<0.6 {(df.iou < 0.6).mean():.4f} ({(df.iou < 0.6).sum()} cells)")
    print(df.groupby("class").iou.agg(["count", "mean", "median"]).round(4).to_string())
    print("  worst ids:", df.sort_values("iou").head(6)[["id", "iou"]].round(3).values.tolist())


# Classes whose MGG cytoplasm is a wide ring around the nucleus: there a mask of at most
# 1.1x the nucleus' convex hull has lost the cytoplasm. Lymph and Basophil cells are
# mostly nucleus (or granules over it), so the area ratio cannot tell; they are judged
# on the gallery only.
WIDE_CYTOPLASM = ("Band", "Segment", "Eosinophil", "Mono")


def failure_flags(mask: np.ndarray, nucleus: np.ndarray, label: str) -> dict:
    """Automatic failure measures of one mask (definitions in docs/cells.md)."""
    if not mask.any() or not nucleus.any():
        return {"nucleus_only": True, "red_cell": False, "area_ratio": 0.0, "solidity": 0.0}
    ratio = mask.sum() / max(1, segmentation.convex_hull(nucleus).sum())
    solidity = mask.sum() / max(1, segmentation.convex_hull(mask).sum())
    nucleus_only = bool(ratio < 1.1) if label in WIDE_CYTOPLASM else np.nan
    return {"nucleus_only": nucleus_only, "red_cell": bool(solidity < 0.9),
            "area_ratio": float(ratio), "solidity": float(solidity)}


def tile(rgb, mask, nucleus, flags, size=140):
    o = rgb.copy()
    th = max(1, rgb.shape[0] // 150)
    for m, col in ((mask, (0, 160, 0)), (nucleus, (0, 0, 255))):
        cs, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(o, cs, -1, col, th)
    o = cv2.resize(o, (size, size), interpolation=cv2.INTER_AREA)
    text = ("N" if flags["nucleus_only"] is True else "") + ("R" if flags["red_cell"] else "")
    if text:
        cv2.putText(o, text, (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (220, 0, 0), 2)
    return o


def bench_pbc6(root: Path, per_class: int, gallery: Path) -> None:
    df = fileio.read_labels_csv(root / "labels.csv")
    rows, tiles, seconds, n_timed = [], {c: [] for c in CLASSES}, 0.0, 0
    for c in CLASSES:
        for p in df[df.label == c].path.values[:per_class]:
            rgb = fileio.read_rgb(p)
            t0 = time.perf_counter()
            mask, nucleus = segmentation.segment_wbc(rgb)
            segmentation.remove_background(rgb, mask)
            seconds += time.perf_counter() - t0
            n_timed += 1
            fl = failure_flags(mask, nucleus, c)
            rows.append({"class": c, "path": p, **fl})
            if len(tiles[c]) < 8:
                tiles[c].append(tile(rgb, mask, nucleus, fl))
    r = pd.DataFrame(rows)
    r["nucleus_only"] = r.nucleus_only.astype(float)
    wide = r[r["class"].isin(WIDE_CYTOPLASM)]
    print(f"pbc6: n={len(r)} ({per_class} per class) red-cell {r.red_cell.mean():.4f} (all classes); "
          f"nucleus-only {wide.nucleus_only.mean():.4f} and either "
          f"{(wide.nucleus_only.astype(bool) | wide.red_cell).mean():.4f} "
          f"(Band, Segment, Eosinophil, Mono; n={len(wide)})")
    print(r.groupby("class")[["nucleus_only", "red_cell"]].mean().round(4).to_string())
    print(f"throughput: segment_wbc + remove_background on pbc6 ~360 px crops: "
          f"{n_timed / seconds:.1f} crops/s ({1000 * seconds / n_timed:.1f} ms/crop, one process)")
    sheet = np.vstack([np.hstack(tiles[c]) for c in CLASSES])
    fileio.write_image(gallery, sheet)
    print(f"gallery: {gallery} ({gallery.stat().st_size / 1e6:.2f} MB; rows {', '.join(CLASSES)}; "
          "green WBC mask, blue nucleus, N = nucleus only, R = red cell included)")


def bench_bccd(root: Path, radius: float = 40.0) -> None:
    hits, inside, t_total = [], [], 0.0
    for xml in sorted((root / "Annotations").glob("*.xml")):
        boxes = fileio.read_voc(xml)
        rgb = fileio.read_rgb(root / "JPEGImages" / (xml.stem + ".jpg"))
        t0 = time.perf_counter()
        c = segmentation.locate_wbcs(rgb)
        t_total += time.perf_counter() - t0
        for bx, by in zip(boxes.x, boxes.y):
            hits.append(bool(len(c)) and float(np.min(np.hypot(c[:, 0] - bx, c[:, 1] - by))) <= radius)
        for x, y in c:
            inside.append(bool(((boxes.xmin <= x) & (x <= boxes.xmax)
                                & (boxes.ymin <= y) & (y <= boxes.ymax)).any()))
    n_fields = len(list((root / "Annotations").glob("*.xml")))
    print(f"bccd-fields: {n_fields} fields, {len(hits)} WBC boxes, {len(inside)} located centres: "
          f"recall@{radius:.0f}px {np.mean(hits):.4f} precision {np.mean(inside):.4f} "
          f"({n_fields / t_total:.1f} fields/s)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--per-class", type=int, default=100, help="pbc6 cells per class (400 = all)")
    ap.add_argument("--gallery", type=Path, default=ROOT / "docs" / "gallery" / "pbc6_masks.png")
    args = ap.parse_args(argv)
    print("environment:", fileio.environment())
    bench_zheng(args.data / "zheng2018-d1")
    bench_pbc6(args.data / "pbc6", args.per_class, args.gallery)
    bench_bccd(args.data / "bccd-fields")
    return 0


if __name__ == "__main__":
    sys.exit(main())
