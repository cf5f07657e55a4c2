"""Teacher datasets ① and ② and the inference set of Sasaki et al. (2020), section II.3.

The paper crops 750x750 pixels around each white blood cell (WBC) and builds

* dataset ① (**background removed**, only the WBC kept) and dataset ②
  (**background kept**), each balanced by offline rotations (90/180/270
  degrees) and flips until the six classes are equal (2,385 and 3,284 images)
  and resized to 480x480 pixels;
* the **inference set**: the same crop resized to 320x320, no augmentation.

:func:`build_dataset` does this for any cell source and writes a Neural
Network Console (NNC) dataset folder (see ``docs/datasets.md`` for the
layout, the manifest columns and the decisions taken where the paper is
silent). The pure steps are exposed so they can be tested and reused alone:
:func:`dihedral`, :func:`class_targets`, :func:`source_variants`,
:func:`plan_variants`, :func:`split_cells` (in :mod:`~wbc_nnabla.balancing`, re-exported
here); the build report is :mod:`~wbc_nnabla.dataset_report`.

Images are RGB ``uint8`` ``(H, W, 3)``; coordinates are ``(x, y)`` pixels of
the source image.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from . import classes, fileio, outputs, sampling, segmentation
# the plan and the report, split off; public here as before (datasets.dihedral, datasets.split_cells, ...)
from .balancing import (DIHEDRAL_NAMES, SPLITS, assign_variants, class_order, class_targets, dihedral,  # noqa: F401
                        plan_variants, source_variants, split_cells)
from .dataset_report import MIN_WBC_FRACTION, build_counts, report_markdown  # noqa: F401
from .errors import InputError
from .recipe import MAX_INPUT_SIZE, PAPER

log = logging.getLogger(__name__)

BACKGROUNDS = ("remove", "keep")
#: Dataset sizes of the paper (section II.3): ① background removed, ② background kept.
DEFAULT_TOTAL = {"remove": PAPER.total_a, "keep": PAPER.total_b}
#: Most images a dataset may list (``total``): the paper's have 2,385 and 3,284. Each listing is a CSV
#: row; a billion, asked by mistake, would fill the disk with rows of the same 8 variants per cell.
MAX_TOTAL = 1_000_000
DEFAULT_SIZE = PAPER.train_size
DEFAULT_INFERENCE_SIZE = PAPER.infer_size
MANIFEST_COLUMNS = (
    "image", "split", "label", "y", "cell_id", "source_path", "source_row", "smear", "kind",
    "cell_x", "cell_y", "transform", "k", "repeat", "crop_px", "box_x0", "box_y0", "box_x1", "box_y1",
    "pad_top", "pad_bottom", "pad_left", "pad_right", "pad_mode", "background", "wbc_fraction", "size")


# ----------------------------------------------------------------------------- the build


def _stem(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem)[:40]


def _check_labels(table: pd.DataFrame, inference: bool) -> None:
    if inference:
        return
    bad = table[~table["label"].isin(classes.CLASSES6)]
    if len(bad):
        rows = "; ".join(f"{r.source} ({r.label or 'unlabeled'})" for r in bad.head(5).itertuples())
        raise fileio.SourceError(
            f"{len(bad)} cell(s) have no six-class label ({', '.join(classes.CLASSES6)}), which a teacher "
            f"dataset needs: {rows}{' ...' if len(bad) > 5 else ''}. Label them, or build an "
            f"inference set (--inference)")


def _bad_image(e: fileio.ImageReadError, rec: dict, skip_bad: bool, report: dict) -> None:
    """Raise a bad image's error naming its source row, or with ``skip_bad`` list it as skipped."""
    if not skip_bad:
        raise type(e)(f"{fileio.naming(e, rec['path'])} (listed at {rec['source']}); fix or remove it, or skip "
                      f"bad images (--skip-bad)") from None
    report["skipped"].append({"path": rec["path"], "source": rec["source"], "error": str(fileio.naming(e, rec["path"]))})


def _cell_rows(rec: dict, shape: tuple, centres: Optional[np.ndarray], crop_px: int, report: dict) -> List[dict]:
    """The cells of one source row: a given centre (field), located centres, or a single-cell crop."""
    h, w = shape
    base = dict(rec, img_w=w, img_h=h)
    if not np.isnan(rec["x"]):
        if not (0 <= rec["x"] < w and 0 <= rec["y"] < h):
            raise fileio.SourceError(f"{rec['source']}: cell centre ({rec['x']:g}, {rec['y']:g}) lies outside "
                                     f"the {w}x{h} image {rec['path']}")
        return [dict(base, kind="field", cx=rec["x"], cy=rec["y"], crop_px=crop_px)]
    if centres is not None:
        if len(centres) == 0:
            report["no_wbc_located"].append({"path": rec["path"], "source": rec["source"]})
        return [dict(base, kind="located", cx=float(x), cy=float(y), crop_px=crop_px,
                     source=f"{rec['source']}#wbc{j + 1}") for j, (x, y) in enumerate(centres)]
    # a single-cell crop: a centred square of min(crop, shorter side), never padded
    s = min(crop_px, w, h)
    return [dict(base, kind="single", cx=(w - s) // 2 + s // 2, cy=(h - s) // 2 + s // 2, crop_px=s)]


def _mask_png(rgb: np.ndarray, cell: dict, pad_mode: str) -> bytes:
    """The WBC mask of a cell's crop (section II.3, dataset ①) as PNG bytes, kept for pass 2.

    Made in pass 1 so that a crop without two sides (:class:`~wbc_nnabla.images.NoBackgroundError`)
    is a bad image found before the split, skipped with ``--skip-bad`` like an unreadable one.
    """
    crop, _ = segmentation.crop_square(rgb, cell["cx"], cell["cy"], int(cell["crop_px"]), pad_mode=pad_mode)
    ok, buf = cv2.imencode(".png", segmentation.wbc_mask(crop).astype(np.uint8) * 255)
    return buf.tobytes()


def _expand_cells(table: pd.DataFrame, crop_px: int, locate: bool, skip_bad: bool, progress: bool, report: dict,
                  background: str = "keep", pad_mode: str = "reflect", thumbs: Optional[dict] = None) -> pd.DataFrame:
    """Pass 1: read every image once; one row per cell with its centre and crop size.

    Bad images raise (naming the file and the source row) or, with ``skip_bad``,
    are listed in ``report["skipped"]``. Fields without centres are searched with
    :func:`wbc_nnabla.segmentation.locate_wbcs` when ``locate``. With ``background``
    ``remove`` each cell's mask is made here (column ``mask_png``), so a crop without
    two sides is a bad image of this pass. ``thumbs``, when given, receives
    ``{path: fileio.thumbnail(image)}`` of each readable image.
    """
    out = []
    shapes: Dict[str, Optional[tuple]] = {}
    cached: Tuple[Optional[str], Optional[np.ndarray]] = (None, None)
    for rec in tqdm(table.to_dict("records"), desc="checking sources", unit="cell",
                    disable=outputs.bar_disabled(progress)):
        p = rec["path"]
        try:
            if shapes.get(p, ()) is None:
                raise fileio.ImageReadError(f"{p}: same bad image as above")
            rgb = cached[1] if cached[0] == p else fileio.read_rgb(p)
            if thumbs is not None and p not in thumbs:
                thumbs[p] = fileio.thumbnail(rgb)
            cached, shapes[p] = (p, rgb), rgb.shape[:2]
            centres = segmentation.locate_wbcs(rgb) if locate and np.isnan(rec["x"]) else None
        except fileio.ImageReadError as e:
            shapes[p] = None
            _bad_image(e, rec, skip_bad, report)
            continue
        for cell in _cell_rows(rec, shapes[p], centres, crop_px, report):
            try:
                out.append(dict(cell, mask_png=_mask_png(rgb, cell, pad_mode) if background == "remove" else None))
            except fileio.ImageReadError as e:
                _bad_image(e, cell, skip_bad, report)
    df = pd.DataFrame(out, columns=list(fileio.CELL_COLUMNS) + ["img_w", "img_h", "kind", "cx", "cy", "crop_px",
                                                                "mask_png"])
    df["cell_id"] = [f"c{i:05d}_{_stem(p)}" for i, p in enumerate(df["path"])]
    return df


def _check_reencoded(thumbs: dict, table: pd.DataFrame) -> None:
    """Refuse one photo listed twice in two formats (:func:`wbc_nnabla.fileio.reencoded_pairs`): its
    two files could fall in training and validation at once, like byte-identical copies."""
    pairs = fileio.reencoded_pairs(thumbs)
    if pairs:
        where = dict(zip(table["path"], table["source"]))
        a, b = pairs[0]
        raise fileio.SourceError(f"{where.get(a, a)} and {where.get(b, b)} list one photo saved twice ({a} and {b}: the "
                                 f"same name and the same pixels up to re-encoding; {len(pairs)} such pair(s)): it "
                                 f"would count twice and could fall on both sides of the split; keep one file")


def _process(rgb: np.ndarray, row, background: str, size: int, pad_mode: str):
    crop, info = segmentation.crop_square(rgb, row.cx, row.cy, int(row.crop_px), pad_mode=pad_mode)
    info["wbc_fraction"] = ""
    if background == "remove":   # the crop's mask, made in pass 1 (section II.3, dataset ①)
        mask = cv2.imdecode(np.frombuffer(row.mask_png, np.uint8), cv2.IMREAD_GRAYSCALE) > 0
        info["wbc_fraction"] = round(float(mask.mean()), 4)
        crop = segmentation.remove_background(crop, mask)
    return fileio.resize_square(crop, size), info


def _manifest_row(row, info, image, split, k, repeat, background, size, pad_mode) -> dict:
    x0, y0, x1, y1 = info["box"] if info else ("",) * 4
    top, bottom, left, right = info["pad"] if info else ("",) * 4
    return dict(image=image, split=split, label=row.label,
                y=classes.INDEX6.get(row.label, ""), cell_id=row.cell_id, source_path=row.path,
                source_row=row.source, smear=row.smear, kind=row.kind, cell_x=row.cx, cell_y=row.cy,
                transform=DIHEDRAL_NAMES[k] if k is not None else "(unused)",
                k="" if k is None else k, repeat=repeat, crop_px=int(row.crop_px),
                box_x0=x0, box_y0=y0, box_x1=x1, box_y1=y1, pad_top=top, pad_bottom=bottom,
                pad_left=left, pad_right=right, pad_mode=pad_mode, background=background,
                wbc_fraction=info["wbc_fraction"] if info else "", size=size)


def build_dataset(source, out, background: Optional[str] = None, crop: int = PAPER.crop,
                  crop_um: Optional[float] = None, pixel_um: Optional[float] = None,
                  size: Optional[int] = None, total: Optional[int] = None, valid_fraction: float = 0.2,
                  seed: int = 0, inference: bool = False, locate: bool = False, skip_bad: bool = False,
                  overwrite: bool = False, pad_mode: str = "reflect", progress: bool = True,
                  dedupe: bool = False) -> "BuiltDataset":
    """Build teacher dataset ① / ② or the inference set (section II.3) as an NNC dataset folder.

    source: any cell source :func:`wbc_nnabla.fileio.read_cells` reads.
    out: the dataset folder to create (must not exist unless ``overwrite``; never inside a source folder).
    background: ``"remove"`` (dataset ①, :func:`wbc_nnabla.segmentation.remove_background`
        on each crop) or ``"keep"`` (dataset ②); None means remove for a teacher
        set and keep for an inference set (the paper's inference images are plain crops).
    crop: crop side in pixels (:func:`wbc_nnabla.segmentation.crop_size_px`); single-cell
        images without a centre get a centred square of min(crop, shorter side).
    crop_um: crop side in µm instead of ``crop``, at ``pixel_um``.
    pixel_um: µm per pixel, for ``crop_um``.
    size: output side in pixels (default 480, or 320 with ``inference``; at least
        :data:`wbc_nnabla.images.MIN_IMAGE_SIDE`, the smallest image any reader accepts).
    total: images in train + valid (default 2,385 for remove, 3,284 for keep), balanced per
        class within each split.
    valid_fraction: share of the images in ``valid.csv``; the split is made
        per source cell before augmentation (:func:`split_cells`), seeded.
    inference: crop and resize only, no split or augmentation; writes
        ``cells.csv`` and ``test.csv``.
    locate: find WBCs in images that have no centre (:func:`wbc_nnabla.segmentation.locate_wbcs`).
    skip_bad: skip and report bad images (unreadable, too small, corrupt, or without two sides:
        blank, very dark, colour-inverted; :class:`~wbc_nnabla.images.NoBackgroundError`) instead of stopping.
    dedupe: drop cells the source lists twice with the same label (counted in
        the build report); without it a repeated cell is an error naming both rows,
        since its copies could fall in both splits.

    The same inputs and arguments give byte-identical files. Returns a
    :class:`BuiltDataset`: the folder (path-like) and its build report (the
    contents of ``build_report.json``).
    """
    t0 = time.time()
    background = background or ("keep" if inference else "remove")
    size, total = _check_settings(background, pad_mode, size, total, valid_fraction, inference)
    seed = sampling.check_seed(seed)
    crop_px = segmentation.crop_size_px(crop, crop_um, pixel_um)
    source, out = Path(source), Path(out)
    table = fileio.read_cells(source, dedupe=dedupe, by_content=not inference)   # copies would straddle the split
    _check_output_folder(out, source, table, overwrite)
    _check_labels(table, inference)
    cdf, report = _pass_one(source, table, crop_px, locate, skip_bad, progress, background, pad_mode, inference)
    split, variants = _plan(cdf, inference, total, valid_fraction, seed, report)
    config = OrderedDict(command="build-dataset", source=str(source.resolve()), background=background,
                         crop=crop, crop_um=crop_um, pixel_um=pixel_um, crop_px=crop_px, size=size,
                         total=None if inference else total, valid_fraction=float(valid_fraction),
                         seed=int(seed), inference=bool(inference), locate=bool(locate),
                         skip_bad=bool(skip_bad), dedupe=bool(dedupe), pad_mode=pad_mode,
                         environment=outputs.environment())
    _write_dataset(out, overwrite, cdf, (split, variants), config, report, progress)
    log.info("built %s in %.1f s", out, time.time() - t0)
    return BuiltDataset(out, report)


def _pass_one(source: Path, table: pd.DataFrame, crop_px: int, locate: bool, skip_bad: bool, progress: bool,
              background: str, pad_mode: str, inference: bool) -> Tuple[pd.DataFrame, dict]:
    """(cells, report so far): :func:`_expand_cells`, then the checks that need every image read (one
    photo in two formats, for a teacher set; no usable cell)."""
    report = {"mode": "inference" if inference else "teacher", "background": background,
              "skipped": [], "no_wbc_located": [], "warnings": [],
              "duplicates_dropped": table.attrs.get("duplicates_dropped", 0)}
    thumbs = None if inference else {}
    cdf = _expand_cells(table, crop_px, locate, skip_bad, progress, report, background, pad_mode, thumbs)
    _check_reencoded(thumbs or {}, table)
    if len(cdf) == 0:
        raise fileio.SourceError(f"{source}: no usable cells (skipped {len(report['skipped'])} bad images, "
                                 f"{len(report['no_wbc_located'])} fields without a located WBC)")
    return cdf, report


def _write_dataset(out: Path, overwrite: bool, cdf: pd.DataFrame, plan: tuple, config: dict, report: dict,
                   progress: bool) -> None:
    """Pass 2 into a temporary folder renamed to ``out`` (:func:`wbc_nnabla.outputs.atomic_dir`): the
    images, the tables, ``build_report.json``/``.md`` and ``config.json``; ``plan``: (split, variants)."""
    split, variants = plan
    background, size, pad_mode = config["background"], config["size"], config["pad_mode"]
    inference, seed = config["inference"], config["seed"]
    with outputs.atomic_dir(out, overwrite=overwrite, may_replace=_may_replace) as tmp:
        manifest = _write_images(tmp, cdf, split, variants, background, size, pad_mode, progress, inference)
        _write_tables(tmp, cdf, manifest, inference, seed)
        report.update(build_counts(cdf, split, variants, manifest, inference, config["crop_px"]))
        outputs.write_json(tmp / "build_report.json", report)
        outputs.write_text(tmp / "build_report.md", report_markdown(report, config))
        outputs.write_json(tmp / "config.json", config)


def _plan(cdf: pd.DataFrame, inference: bool, total: int, valid_fraction: float, seed: int,
          report: dict) -> Tuple[np.ndarray, List[List[int]]]:
    """(split per cell, variants per cell): ``test`` and the identity for an inference set, else
    :func:`split_cells` and :func:`assign_variants`."""
    if inference:
        return np.array(["test"] * len(cdf), dtype=object), [[0] for _ in range(len(cdf))]
    split = split_cells(cdf, valid_fraction, seed)
    return split, assign_variants(cdf, split, total, float(valid_fraction), seed, report)


@dataclasses.dataclass(frozen=True)
class BuiltDataset:
    """What :func:`build_dataset` made: the dataset folder and its build report.

    Path-like (``os.fspath(built)``, ``str(built)``, ``built / "train.csv"``), so it can be passed
    wherever the folder is expected; ``report`` is what ``build_report.json`` holds.
    """
    path: Path
    report: dict

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, other) -> Path:
        return self.path / other


def is_dataset_folder(folder) -> bool:
    """Whether ``folder`` holds a :func:`build_dataset` output: its ``config.json`` names ``build-dataset``."""
    try:
        return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("command") == "build-dataset"
    except (ValueError, OSError, AttributeError):
        return False


def read_manifest(folder) -> pd.DataFrame:
    """The ``manifest.csv`` of a dataset folder :func:`build_dataset` wrote: one row per written image.

    folder: the dataset folder (:func:`is_dataset_folder`).
    Returns the :data:`MANIFEST_COLUMNS` as text, rows without an image (unused source cells)
    dropped, plus ``image_path``: each image's absolute path, as the dataset's CSVs resolve it.
    Raises :class:`~wbc_nnabla.errors.InputError` naming the folder or file when it is not such a
    dataset or its manifest lacks a column.
    """
    folder = Path(folder)
    if not is_dataset_folder(folder):
        raise InputError(f"{folder}: not a dataset folder (no config.json written by build-dataset)")
    path = folder / "manifest.csv"
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the dataset manifest ({type(e).__name__}: {e})") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: not a build-dataset manifest (no column {', '.join(missing)})")
    df = df[df["image"] != ""].reset_index(drop=True)
    df["image_path"] = [str((folder / p).resolve()) for p in df["image"]]
    return df


def _check_settings(background: str, pad_mode: str, size: Optional[int], total: Optional[int],
                    valid_fraction: float, inference: bool) -> Tuple[int, int]:
    """(size, total) after defaults; :class:`~wbc_nnabla.errors.InputError` naming a setting out of range."""
    if background not in BACKGROUNDS:
        raise InputError(f"background must be one of {', '.join(BACKGROUNDS)} (remove = dataset ①, "
                         f"keep = dataset ②), got {background!r}")
    if pad_mode not in segmentation.PAD_MODES:
        raise InputError(f"pad_mode must be one of {', '.join(sorted(segmentation.PAD_MODES))}, got {pad_mode!r}")
    size = int(size) if size is not None else (DEFAULT_INFERENCE_SIZE if inference else DEFAULT_SIZE)
    if not fileio.MIN_IMAGE_SIDE <= size <= MAX_INPUT_SIZE:
        raise InputError(f"size must be in [{fileio.MIN_IMAGE_SIDE}, {MAX_INPUT_SIZE}] pixels, got {size} (train, "
                         f"predict and every reader refuse images under {fileio.MIN_IMAGE_SIDE} px a side)")
    if inference and total is not None:
        raise InputError("total (--total) has no meaning for an inference set (no augmentation)")
    total = int(total) if total is not None else DEFAULT_TOTAL[background]
    if not inference and not 1 <= total <= MAX_TOTAL:
        raise InputError(f"total must be in [1, {MAX_TOTAL:,}] images, got {total} (beyond the 8 variants of "
                         f"each cell, images are only listed again)")
    if not 0.0 <= float(valid_fraction) < 1.0:
        raise InputError(f"valid_fraction must be in [0, 1), got {valid_fraction!r}")
    return size, total


def _check_output_folder(out: Path, source: Path, table: pd.DataFrame, overwrite: bool) -> None:
    """OUT is not inside a source folder, does not hold one (``--overwrite`` replaces OUT), and may be replaced."""
    source_dirs = [source] + sorted({str(Path(p).parent) for p in table["path"]})
    outputs.check_not_inside(out, source_dirs)
    for d in source_dirs:
        d = Path(d).resolve()
        d = d if d.is_dir() else d.parent
        if out.resolve() == d or out.resolve() in d.parents:
            raise fileio.SourceError(f"output {out} contains the source folder {d}; choose another output "
                                 f"(sources are never written)")
    _check_out(out, overwrite)


def _may_replace(found: Path) -> bool:
    """What the final rename may replace, checked at that moment: an empty folder or a build-dataset output."""
    return found.is_dir() and not found.is_symlink() and (is_dataset_folder(found) or not any(found.iterdir()))


def _check_out(out: Path, overwrite: bool) -> None:
    """OUT must not exist, or (with overwrite) be an earlier build-dataset output or empty.

    The check keeps ``--overwrite`` from deleting a folder that is not a dataset (a typo
    such as ``--overwrite ~`` would otherwise remove a home folder).
    """
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{out}: already exists (choose another output, or --overwrite)")
    if not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; not replaced")
    if not is_dataset_folder(out) and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not a build-dataset output (no config.json from "
                              f"build-dataset); --overwrite replaces only those. Choose another output")


def _write_images(tmp: Path, cdf: pd.DataFrame, split, variants, background, size, pad_mode,
                  progress, inference) -> pd.DataFrame:
    """Pass 2: crop, background, resize and write each (cell, variant) once, as PNG."""
    rows = []
    cache_path, cache_rgb = None, None
    for i, row in enumerate(tqdm(list(cdf.itertuples()), desc="writing images", unit="cell",
                                 disable=outputs.bar_disabled(progress))):
        ks = variants[i]
        if not ks:
            rows.append(_manifest_row(row, None, "", split[i], None, "", background, size, pad_mode))
            continue
        if row.path != cache_path:  # field images hold several cells: read each once in a row
            cache_path, cache_rgb = row.path, fileio.read_rgb(row.path)
        base, info = _process(cache_rgb, row, background, size, pad_mode)
        folder = row.label or "unlabeled"
        seen: Dict[int, int] = {}
        for k in ks:
            rel = f"images/{folder}/{row.cell_id}.png" if inference else \
                f"images/{folder}/{row.cell_id}_{DIHEDRAL_NAMES[k]}.png"
            if k not in seen:  # an identical repeat reuses the file: listed twice, stored once
                fileio.write_image(tmp / rel, dihedral(base, k))
            seen[k] = seen.get(k, -1) + 1
            rows.append(_manifest_row(row, info, rel, split[i], k, seen[k], background, size, pad_mode))
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def _write_tables(tmp: Path, cdf: pd.DataFrame, manifest: pd.DataFrame, inference: bool, seed: int) -> None:
    """``manifest.csv`` and the NNC CSVs; ``train.csv``/``valid.csv`` rows in a seeded random order.

    The manifest keeps the build order (source cell, then variant); the NNC CSVs are
    shuffled so that a tool reading them in file order (NNC with shuffling off, or
    "the first N images") never sees one class at a time.
    """
    def write_csv(path, df):
        with outputs.atomic_path(path) as t:
            df.to_csv(t, index=False, lineterminator="\n")

    write_csv(tmp / "manifest.csv", manifest)
    used = manifest[manifest["image"] != ""]
    if inference:
        write_csv(tmp / "cells.csv", pd.DataFrame({"path": used["image"], "label": used["label"],
                                                   "smear": used["smear"]}))
        if used["label"].isin(classes.CLASSES6).all():
            fileio.write_nnc_csv(tmp / "test.csv", [tmp / p for p in used["image"]],
                             [classes.INDEX6[c] for c in used["label"]])
        else:  # unlabeled (or Neutrophil-only) cells: an NNC CSV with the image column only
            write_csv(tmp / "test.csv", pd.DataFrame({fileio.NNC_HEADER[0]: used["image"]}))
        return
    for i, s in enumerate(SPLITS):
        part = used[used["split"] == s]
        if len(part):
            part = part.iloc[np.random.default_rng([int(seed), 7, i]).permutation(len(part))]
            fileio.write_nnc_csv(tmp / f"{s}.csv", [tmp / p for p in part["image"]], part["y"].astype(int))
