"""Benchmark of wbc_nnabla.segmentation: WBC masks, failure shares, localization, throughput.

Run from the repository root:

    nice -n 10 .venv/bin/python benchmarks/bench_cells.py [--data ../shared/data] [--per-class 100]

Prints (and records in docs/research/benchmarks_log.md by hand):
* Zheng et al. 2018 dataset 1: IoU of wbc_mask against the expert masks (mask > 0),
  mean, median, per class (labels.csv: 1 neutrophil ... 5 basophil), share < 0.6.
* pbc6: share of cells whose mask is only the nucleus or includes a red cell
  (automatic measures, see docs/cells.md), per class; writes the overlay gallery
  docs/gallery/pbc6_masks.png (8 cells per class, flags drawn on each tile).
* bccd-fields: recall / precision of locate_wbcs against the VOC WBC boxes.
* throughput of remove_background on pbc6 360 px crops (crops/s, one process).

Other runs (one at a time, instead of the above):
* ``--color-shifts [--shift-per-class 30] [--shift-revision REV]``: d1 IoU and pbc6 flag
  shares with the colours shifted (hue +-15 deg, saturation x0.6 / x1.4, optical density
  x0.7 / x1.3 in all and in single channels; SHIFTS).
* ``--hard-gallery PNG [--before REV]``: before (git REV) / after pairs of the hard cases
  (pbc6 and BCCD only: the d1 images are GPL and stay out of the project).
* ``--speed [--before REV]``: REV and this checkout timed on the same crops, one thread.
d1 is split by id: the even ids were used for tuning, the odd ids are held out.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from wbc_nnabla import fileio, outputs, segmentation  # noqa: E402

CLASSES = ("Band", "Segment", "Eosinophil", "Basophil", "Mono", "Lymph")
ZHENG_NAMES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}


def zheng_ious(root: Path, shift: Optional[Callable] = None, segment: Callable = None) -> pd.DataFrame:
    """IoU of the WBC mask against the expert mask (> 0) of every d1 cell: id, class, iou.

    shift: colour transform applied to each image first (see SHIFTS); segment: the mask
    function (default segmentation.wbc_mask)."""
    segment = segment or segmentation.wbc_mask
    labels = pd.read_csv(root / "labels.csv")
    rows = []
    for image_id, label in zip(labels.iloc[:, 0], labels.iloc[:, 1]):
        rgb = fileio.read_rgb(root / f"{int(image_id):03d}.bmp")
        truth = fileio.read_rgb(root / f"{int(image_id):03d}.png", min_background=0)[..., 0] > 0   # a mask
        m = segment(shift(rgb) if shift else rgb)
        rows.append({"id": int(image_id), "class": ZHENG_NAMES.get(int(label), str(label)),
                     "iou": (m & truth).sum() / max(1, (m | truth).sum())})
    return pd.DataFrame(rows)


def bench_zheng(root: Path) -> pd.DataFrame:
    df = zheng_ious(root)
    print(f"zheng2018-d1: n={len(df)} IoU mean {df.iou.mean():.4f} median {df.iou.median():.4f} "
          f"share<0.6 {(df.iou < 0.6).mean():.4f} ({(df.iou < 0.6).sum()} cells)")
    for name, part in (("even ids (tuning split)", df[df.id % 2 == 0]), ("odd ids (held out)", df[df.id % 2 == 1])):
        print(f"  {name}: n={len(part)} mean {part.iou.mean():.4f} median {part.iou.median():.4f}")
    print(df.groupby("class").iou.agg(["count", "mean", "median"]).round(4).to_string())
    print("  worst ids:", df.sort_values("iou").head(6)[["id", "iou"]].round(3).values.tolist())
    return df


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


def pbc6_flags(root: Path, per_class: int, shift: Optional[Callable] = None, tiles_per_class: int = 0,
               seg: types.ModuleType = segmentation):
    """Failure flags of the first ``per_class`` pbc6 cells of each class.

    Returns ``(table, tiles, seconds)``: one row per cell (class, path, flags), gallery
    tiles per class (at most ``tiles_per_class``) and the CPU-clock seconds spent in
    segment_wbc + remove_background of ``seg`` (this checkout's segmentation by default)."""
    df = fileio.read_labels_csv(root / "labels.csv")
    rows, tiles, seconds = [], {c: [] for c in CLASSES}, 0.0
    for c in CLASSES:
        for p in df[df.label == c].path.values[:per_class]:
            rgb = fileio.read_rgb(p)
            if shift:
                rgb = shift(rgb)
            t0 = time.perf_counter()
            mask, nucleus = seg.segment_wbc(rgb)
            seg.remove_background(rgb, mask)
            seconds += time.perf_counter() - t0
            fl = failure_flags(mask, nucleus, c)
            rows.append({"class": c, "path": p, **fl})
            if len(tiles[c]) < tiles_per_class:
                tiles[c].append(tile(rgb, mask, nucleus, fl))
    r = pd.DataFrame(rows)
    r["nucleus_only"] = r.nucleus_only.astype(float)
    return r, tiles, seconds


def pbc6_summary(r: pd.DataFrame) -> dict:
    """Red-cell share (all classes), nucleus-only and either-flag shares (WIDE_CYTOPLASM classes)."""
    wide = r[r["class"].isin(WIDE_CYTOPLASM)]
    return {"red_cell": r.red_cell.mean(), "nucleus_only": wide.nucleus_only.mean(),
            "either": (wide.nucleus_only.astype(bool) | wide.red_cell).mean(), "n_wide": len(wide)}


def bench_pbc6(root: Path, per_class: int, gallery: Path) -> None:
    r, tiles, seconds = pbc6_flags(root, per_class, tiles_per_class=8)
    s = pbc6_summary(r)
    print(f"pbc6: n={len(r)} ({per_class} per class) red-cell {s['red_cell']:.4f} (all classes); "
          f"nucleus-only {s['nucleus_only']:.4f} and either {s['either']:.4f} "
          f"(Band, Segment, Eosinophil, Mono; n={s['n_wide']})")
    print(r.groupby("class")[["nucleus_only", "red_cell"]].mean().round(4).to_string())
    print(f"throughput: segment_wbc + remove_background on pbc6 ~360 px crops: "
          f"{len(r) / seconds:.1f} crops/s ({1000 * seconds / len(r):.1f} ms/crop, one process)")
    sheet = np.vstack([np.hstack(tiles[c]) for c in CLASSES])
    fileio.write_image(gallery, sheet)
    print(f"gallery: {gallery} ({gallery.stat().st_size / 1e6:.2f} MB; rows {', '.join(CLASSES)}; "
          "green WBC mask, blue nucleus, N = nucleus only, R = red cell included)")


# ----------------------------------------------------------------------------- colour shifts


def hue_shift(degrees: float) -> Callable:
    """Rotate the hue by ``degrees`` (HSV, float)."""
    def f(rgb):
        hsv = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + degrees) % 360.0
        return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return f


def saturation_scale(factor: float) -> Callable:
    """Multiply the HSV saturation by ``factor`` (clipped to 1)."""
    def f(rgb):
        hsv = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0.0, 1.0)
        return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return f


def od_scale(factors) -> Callable:
    """Scale the optical density ``-log(I / 255)`` of each RGB channel by ``factors`` (3,):
    a stain taken up more (> 1) or less (< 1); ``I' = 255 (I / 255) ** k``."""
    k = np.asarray(factors, np.float32).reshape(1, 1, 3)
    def f(rgb):
        i = (rgb.astype(np.float32) + 1.0) / 256.0
        return np.clip(256.0 * i ** k - 1.0 + 0.5, 0, 255).astype(np.uint8)
    return f


#: The colour shifts of the robustness check: name -> transform of an RGB uint8 image.
SHIFTS = {
    "hue +15 deg": hue_shift(15.0), "hue -15 deg": hue_shift(-15.0),
    "saturation x0.6": saturation_scale(0.6), "saturation x1.4": saturation_scale(1.4),
    "OD x0.7 (all channels)": od_scale((0.7, 0.7, 0.7)), "OD x1.3 (all channels)": od_scale((1.3, 1.3, 1.3)),
    "OD x(0.7, 1, 1.3) (R, G, B)": od_scale((0.7, 1.0, 1.3)), "OD x(1.3, 1, 0.7) (R, G, B)": od_scale((1.3, 1.0, 0.7)),
    "OD x(1, 0.7, 1) (R, G, B)": od_scale((1.0, 0.7, 1.0)), "OD x(1, 1.3, 1) (R, G, B)": od_scale((1.0, 1.3, 1.0)),
}


def bench_shifts(data: Path, pbc6_per_class: int, seg: types.ModuleType = segmentation) -> pd.DataFrame:
    """d1 mean / median IoU and pbc6 flag shares with each colour shift of SHIFTS applied
    (masks by ``seg``, this checkout's segmentation by default)."""
    rows = []
    for name, shift in [("none", None)] + list(SHIFTS.items()):
        z = zheng_ious(data / "zheng2018-d1", shift, seg.wbc_mask)
        row = {"shift": name, "d1 mean": z.iou.mean(), "d1 median": z.iou.median()}
        if pbc6_per_class:
            s = pbc6_summary(pbc6_flags(data / "pbc6", pbc6_per_class, shift, seg=seg)[0])
            row.update({"pbc6 nucleus only": s["nucleus_only"], "pbc6 red cell": s["red_cell"]})
        rows.append(row)
        print(" ", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    t = pd.DataFrame(rows)
    t["d1 mean drop"] = t["d1 mean"].iloc[0] - t["d1 mean"]
    print("colour shifts (d1: 300 cells; pbc6: first %d per class):" % pbc6_per_class)
    print(t.round(4).to_string(index=False))
    return t


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


# ----------------------------------------------------------------------------- before/after gallery


def load_revision(rev: str) -> types.ModuleType:
    """wbc_nnabla.segmentation as it was at git revision ``rev`` of this repository."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:wbc_nnabla/segmentation.py"],
                         check=True, capture_output=True, text=True).stdout
    src = src.replace("from . import", "from wbc_nnabla import").replace("from .", "from wbc_nnabla.")
    mod = types.ModuleType(f"segmentation_{rev}")
    exec(compile(src, f"{rev}:wbc_nnabla/segmentation.py", "exec"), mod.__dict__)
    return mod


def _pair(rgb, old, new, label: str, cls: str = "", size: int = 160):
    """Before | after tiles (green WBC mask, blue nucleus, flags of class ``cls``), the label on the first."""
    tiles = []
    for mod, tag in ((old, "before"), (new, "after")):
        mask, nucleus = mod.segment_wbc(rgb)
        fl = failure_flags(mask, nucleus, cls)
        t = segmentation.overlay(rgb, mask, nucleus, size=size)
        flag = ("N" if fl["nucleus_only"] is True else "") + ("R" if fl["red_cell"] else "")
        cv2.putText(t, f"{tag} {flag}", (3, size - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (200, 0, 0), 1)
        tiles.append(t)
    cv2.putText(tiles[0], label, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1)
    return tiles


def _flagged(rgb, old, new, label: str) -> bool:
    """Whether either mask of the cell is flagged nucleus-only or red-cell-included."""
    for mod in (old, new):
        fl = failure_flags(*mod.segment_wbc(rgb), label)
        if fl["nucleus_only"] is True or fl["red_cell"]:
            return True
    return False


def _touching_red_cell(rgb, reach: float = 0.6) -> bool:
    """Whether a red cell (segmentation.red_cell_markers) lies within ``reach`` r_n of the nucleus hull."""
    _, nucleus = segmentation.segment_wbc(rgb)
    if not nucleus.any():
        return False
    hull = segmentation.convex_hull(nucleus)
    rn = segmentation.equivalent_radius(hull)
    markers = segmentation.red_cell_markers(rgb, hull, rn, nucleus) & ~hull
    d = cv2.distanceTransform((~hull).astype(np.uint8), cv2.DIST_L2, 5)
    return bool(markers.any() and d[markers].min() <= reach * rn)


def hard_gallery(data: Path, rev: str, out: Path, per_class: int, pairs: int = 8) -> None:
    """Before (git ``rev``) / after pairs of the hard cases, written as one PNG.

    Rows: pbc6 Band and Segment cells flagged (nucleus only / red cell) before or after
    (pale neutrophils); pbc6 cells of the other classes flagged before or after (at most 3 per class); pbc6
    Lymph cells with a red cell (red_cell_markers, the Hough circles) within 0.6 r_n of
    the nucleus hull, whatever their masks; BCCD WBCs whose VOC box overlaps an RBC box (another lab's smears:
    crops of 2x the box around its centre, only those inside the field). First ``per_class`` cells per class, at
    most ``pairs`` pairs per row group, in file order (no picking).
    """
    old = load_revision(rev)
    labels = fileio.read_labels_csv(data / "pbc6" / "labels.csv")
    groups = {"pale neutrophils": [], "other classes, flagged": [], "lymphocytes touching red cells": [], "bccd": []}
    for c in CLASSES:
        taken = 0
        for p in labels[labels.label == c].path.values[:per_class]:
            key = ("pale neutrophils" if c in ("Band", "Segment") else
                   "lymphocytes touching red cells" if c == "Lymph" else "other classes, flagged")
            # at most 3 cells of each of Eosinophil, Basophil, Mono, so that all three show
            if len(groups[key]) >= pairs or (key == "other classes, flagged" and taken >= 3):
                continue
            rgb = fileio.read_rgb(p)
            if key == "lymphocytes touching red cells":
                pick = _touching_red_cell(rgb)
            else:
                pick = _flagged(rgb, old, segmentation, c)
            if pick:
                groups[key].append(_pair(rgb, old, segmentation, f"{c} {Path(p).stem}", c))
                taken += 1
    groups["bccd"] = _bccd_pairs(data / "bccd-fields", old, pairs)
    rows = []
    for key, items in groups.items():
        tiles = [t for pair in items for t in pair]
        print(f"  {key}: {len(items)} pairs")
        if tiles:
            rows.append(segmentation.contact_sheet(tiles, 8))
    fileio.write_image(out, np.vstack(rows))
    print(f"hard-case gallery: {out} (before = {rev}, after = this checkout; N nucleus only, R red cell)")


def _bccd_pairs(root: Path, old, pairs: int) -> list:
    """Before/after pairs of BCCD WBCs whose box overlaps an RBC box and whose crop is inside the field."""
    items = []
    for xml in sorted((root / "Annotations").glob("*.xml")):
        boxes = fileio.read_voc(xml, names=("WBC", "RBC"))
        wbc, rbc = boxes[boxes.name == "WBC"], boxes[boxes.name == "RBC"]
        rgb = fileio.read_rgb(root / "JPEGImages" / (xml.stem + ".jpg"))
        for _, b in wbc.iterrows():
            touch = ((rbc.xmin < b.xmax) & (rbc.xmax > b.xmin) & (rbc.ymin < b.ymax) & (rbc.ymax > b.ymin)).any()
            if not touch or len(items) >= pairs:
                continue
            side = int(2 * max(b.xmax - b.xmin, b.ymax - b.ymin))
            crop, info = segmentation.crop_square(rgb, b.x, b.y, side)
            if any(info["pad"]):     # padded crops are artificial: only crops inside the field
                continue
            items.append(_pair(crop, old, segmentation, f"bccd {xml.stem[-5:]}"))
        if len(items) >= pairs:
            break
    return items


def bench_speed(data: Path, rev: str, per_class: int = 15) -> None:
    """segment_wbc + remove_background per pbc6 crop on one thread (cv2.setNumThreads(1)):
    git revision ``rev`` and this checkout timed on the same crops, interleaved so that
    a changing machine load hits both alike."""
    cv2.setNumThreads(1)
    old = load_revision(rev)
    labels = fileio.read_labels_csv(data / "pbc6" / "labels.csv")
    images = [fileio.read_rgb(p) for c in CLASSES for p in labels[labels.label == c].path.values[:per_class]]
    wall, cpu = {rev: 0.0, "this checkout": 0.0}, {rev: 0.0, "this checkout": 0.0}
    for rgb in images:
        for name, mod in ((rev, old), ("this checkout", segmentation)):
            t0, c0 = time.perf_counter(), time.process_time()
            mask, _ = mod.segment_wbc(rgb)
            mod.remove_background(rgb, mask)
            wall[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
    for name in wall:
        print(f"speed, {name}: {len(images) / wall[name]:.1f} crops/s ({1000 * wall[name] / len(images):.0f} ms "
              f"wall, {1000 * cpu[name] / len(images):.0f} ms CPU per crop; {len(images)} pbc6 crops, one thread)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--per-class", type=int, default=100, help="pbc6 cells per class (400 = all)")
    ap.add_argument("--gallery", type=Path, default=ROOT / "docs" / "gallery" / "pbc6_masks.png")
    ap.add_argument("--color-shifts", action="store_true",
                    help="instead: re-run d1 (and pbc6, --shift-per-class cells per class) with the colours "
                         "shifted (hue, saturation, optical density; SHIFTS) and print the table")
    ap.add_argument("--shift-per-class", type=int, default=30,
                    help="pbc6 cells per class in the --color-shifts run (0: d1 only)")
    ap.add_argument("--hard-gallery", type=Path, default=None,
                    help="instead: write before/after pairs of the hard cases to this PNG (see hard_gallery)")
    ap.add_argument("--before", default="b871aa6", help="git revision of the 'before' masks of --hard-gallery and --speed (b871aa6: before the red-cell markers)")
    ap.add_argument("--speed", action="store_true",
                    help="instead: time this checkout against --before on the same pbc6 crops, one thread")
    ap.add_argument("--shift-revision", default=None,
                    help="--color-shifts with the segmentation of this git revision instead of this checkout's")
    args = ap.parse_args(argv)
    print("environment:", outputs.environment())
    if args.speed:
        bench_speed(args.data, args.before)
        return 0
    if args.hard_gallery:
        hard_gallery(args.data, args.before, args.hard_gallery, args.per_class)
        return 0
    if args.color_shifts:
        seg = load_revision(args.shift_revision) if args.shift_revision else segmentation
        bench_shifts(args.data, args.shift_per_class, seg)
        return 0
    bench_zheng(args.data / "zheng2018-d1")
    bench_pbc6(args.data / "pbc6", args.per_class, args.gallery)
    bench_bccd(args.data / "bccd-fields")
    return 0


if __name__ == "__main__":
    sys.exit(main())
