"""Cell sources: reading labeled cell lists of every kind as one cell table; writing NNC dataset CSVs.

Conventions (see ``docs/formats.md``):

* Images inside the library are RGB ``uint8`` arrays of shape ``(H, W, 3)``, read by
  :func:`~wbc_nnabla.images.read_rgb` (:mod:`~wbc_nnabla.images`, whose names this module
  re-exports: ``fileio.read_rgb`` is the same function).
* A *cell table* is a :class:`pandas.DataFrame` with one row per cell and the
  columns of :data:`CELL_COLUMNS`: ``path`` (absolute), ``label`` (six-class
  name, or ``Neutrophil`` when the subtype is unknown, or empty when
  unlabeled), ``category`` (the taxonomy name, e.g. ``Lymph small``),
  ``smear`` (empty when unknown), ``x``, ``y`` (cell centre in pixels, NaN when
  the image is already a single-cell crop) and ``source`` (``file:row``, for
  error messages and manifests).
* Every writer writes to a temporary path and renames it into place
  (:mod:`~wbc_nnabla.outputs`), so an interrupted run never leaves a half-written
  file; sources are only read.
"""
from __future__ import annotations

import csv
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from . import classes, outputs
from .errors import InputError, PathLike, SourceError
# the images' names, public here since 0.1.0 (fileio.read_rgb, fileio.ImageReadError, ...)
# the duplicate finders, public here since 0.1.0 (fileio.drop_duplicates, fileio.content_keys, ...)
from .duplicates import (content_keys, copy_groups, drop_duplicates, reencoded_pairs,  # noqa: F401
                         thumbnail)
from .images import (BACKGROUND_SIDE, IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, MAX_PIXELS_ENV,  # noqa: F401
                     MIN_BACKGROUND, MIN_IMAGE_SIDE, ImageReadError, NoBackgroundError, background_rgb,
                     check_background, check_rgb, file_sha256, image_files, image_folders, image_size,
                     is_image_file, list_images, max_image_pixels, naming, read_rgb, resize_square, to_rgb_uint8,
                     write_image)

CELL_COLUMNS = ("path", "label", "category", "smear", "x", "y", "source")
#: Header of a Neural Network Console dataset CSV as this library writes it.
NNC_HEADER = ("x:image", "y:label")


def read_image_folder(folder: PathLike, smear: str = "") -> pd.DataFrame:
    """Unlabeled cell table of the images directly in ``folder`` (empty when it holds none)."""
    return cell_table([dict(path=str(p.resolve()), smear=smear, source=str(p)) for p in list_images(folder)])


# ----------------------------------------------------------------------------- cell tables


def cell_table(rows: Sequence[dict]) -> pd.DataFrame:
    """A cell table (columns :data:`CELL_COLUMNS`) from row dicts; missing text fields are ``""``,
    missing ``x``/``y`` NaN."""
    df = pd.DataFrame(list(rows), columns=list(CELL_COLUMNS))
    df["x"] = pd.to_numeric(df["x"], errors="coerce").astype(float)
    df["y"] = pd.to_numeric(df["y"], errors="coerce").astype(float)
    for col in ("label", "category", "smear"):
        df[col] = df[col].fillna("").astype(str)
    return df


def _label_fields(label: str, source: str) -> Tuple[str, str]:
    """(reporting label, category) of a raw label; '' for an unlabeled cell."""
    if label is None or (isinstance(label, float) and np.isnan(label)) or str(label).strip() == "":
        return "", ""
    cat = classes.category(str(label).strip(), source)
    return (cat.class6 or classes.NEUTROPHIL), cat.name


def read_class_folders(root: PathLike) -> pd.DataFrame:
    """Cells from a folder with one sub-folder per class (sub-folder name = label).

    Sub-folders are parsed with the taxonomy (``BNE``, ``lymphocyte``... work);
    an unknown name raises :class:`~wbc_nnabla.classes.LabelError` naming it.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder")
    rows = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = list_images(sub)
        if not images:
            continue
        label, cat = _label_fields(sub.name, f"class folder {sub}")
        for img in images:
            rows.append(dict(path=str(img.resolve()), label=label, category=cat, smear="",
                             x=np.nan, y=np.nan, source=str(img)))
    if not rows:
        raise SourceError(f"{root}: no class sub-folders with images ({', '.join(IMAGE_EXTENSIONS)})")
    return cell_table(rows)


def _read_csv(path: Path) -> pd.DataFrame:
    """The CSV as text columns; :class:`SourceError` naming it when unreadable or a column name repeats."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
    except FileNotFoundError:
        raise SourceError(f"{path}: no such CSV file") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, csv.Error) as e:
        raise SourceError(f"{path}: not a readable CSV ({e})") from None
    _check_header(path, header)
    return df


def _check_header(path: Path, header: Sequence[str]) -> None:
    """Refuse a header naming one column twice (case and spaces aside): pandas would rename the
    second ``label.1`` and the reader would silently use the first."""
    seen: dict = {}
    for i, name in enumerate(header):
        key = name.strip().lower()
        if key in seen:
            raise SourceError(f"{path}:1: column {name.strip()!r} appears twice in the header (columns "
                              f"{seen[key] + 1} and {i + 1}); name each column once")
        seen[key] = i


def _resolve(csv_path: Path, rel: str) -> str:
    p = Path(rel)
    return str((p if p.is_absolute() else csv_path.parent / p).resolve())


def read_labels_csv(path: PathLike) -> pd.DataFrame:
    """Cells from a ``path,label[,smear][,x,y]`` CSV (paths relative to the CSV).

    ``label`` may be empty (unlabeled cells, e.g. for prediction). Column
    names are case-insensitive. Errors name the file, the row (1-based line
    number in the file) and what was expected. An optional ``source_row``
    column names where a row was first listed (``file:row``, as a
    ``reproduce`` split writes it): errors and manifests then name that row.
    """
    path = Path(path)
    df = _read_csv(path)
    df.columns = [c.strip().lower() for c in df.columns]
    if "path" not in df.columns:
        raise SourceError(f"{path}: missing column 'path' (expected columns path,label[,smear][,x,y]; "
                          f"found {', '.join(df.columns)})")
    if ("x" in df.columns) != ("y" in df.columns):
        raise SourceError(f"{path}: columns x and y go together (cell centre in pixels)")
    rows = []
    for i, rec in enumerate(df.to_dict("records")):
        where = rec.get("source_row") or f"{path}:{i + 2}"
        if not rec["path"]:
            raise SourceError(f"{where}: empty path")
        label, cat = _label_fields(rec.get("label", ""), where)
        xy = []
        for c in ("x", "y"):
            v = rec.get(c, "")
            try:
                xy.append(float(v) if v != "" else np.nan)
            except ValueError:
                raise SourceError(f"{where}: column {c} must be a number of pixels, got {v!r}") from None
        rows.append(dict(path=_resolve(path, rec["path"]), label=label, category=cat,
                         smear=rec.get("smear", ""), x=xy[0], y=xy[1], source=where))
    if not rows:
        raise SourceError(f"{path}: no cells listed")
    return cell_table(rows)


def read_nnc_csv(path: PathLike, class_names: Sequence[str] = classes.CLASSES6) -> pd.DataFrame:
    """Cells from a Neural Network Console dataset CSV (``x:image,y:label``, y = class index).

    Extra NNC columns are ignored except ``smear``. ``class_names`` maps the
    index to a label (default: the paper's six classes in Table 1 order).
    """
    path = Path(path)
    df = _read_csv(path)
    xcol = next((c for c in df.columns if c.split(":")[0].strip() == "x"), None)
    ycol = next((c for c in df.columns if c.split(":")[0].strip() == "y"), None)
    if xcol is None:
        raise SourceError(f"{path}: not an NNC dataset CSV (expected header x:image,y:label; "
                          f"found {', '.join(df.columns)})")
    rows = []
    for i, rec in enumerate(df.to_dict("records")):
        where = f"{path}:{i + 2}"
        label = ""
        if ycol is not None and rec[ycol] != "":
            try:
                idx = int(rec[ycol])
                label = class_names[idx] if idx >= 0 else None
            except (ValueError, IndexError):
                label = None
            if label is None:
                raise SourceError(f"{where}: {ycol} must be a class index 0-{len(class_names) - 1} "
                                  f"({', '.join(class_names)}), got {rec[ycol]!r}")
        lab, cat = _label_fields(label, where)
        smear = next((rec[c] for c in df.columns if c.split(":")[0].strip() == "smear"), "")
        rows.append(dict(path=_resolve(path, rec[xcol]), label=lab, category=cat, smear=smear,
                         x=np.nan, y=np.nan, source=where))
    if not rows:
        raise SourceError(f"{path}: no cells listed")
    return cell_table(rows)


def is_nnc_csv(path: PathLike) -> bool:
    """True when the CSV's header looks like an NNC dataset (``x:image``)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline()
    return any(h.strip().startswith("x:") for h in header.split(","))


def read_voc(xml_path: PathLike, names: Optional[Sequence[str]] = ("WBC",)) -> pd.DataFrame:
    """Boxes of a Pascal VOC annotation as a table.

    Columns ``image`` (the ``filename`` element), ``name``, ``xmin``, ``ymin``,
    ``xmax``, ``ymax`` (pixels) and ``x``, ``y`` (box centre). Only objects
    whose name is in ``names`` are kept (all when ``names`` is None).
    Raises :class:`SourceError` naming the file when the XML is malformed.
    """
    p = Path(xml_path)
    try:
        root = ET.parse(str(p)).getroot()
    except ET.ParseError as e:
        raise SourceError(f"{p}: malformed Pascal VOC XML ({e})") from None
    except OSError as e:
        raise SourceError(f"{p}: cannot read Pascal VOC XML ({e})") from None
    if root.tag != "annotation":
        raise SourceError(f"{p}: expected a Pascal VOC <annotation> root, got <{root.tag}>")
    image = (root.findtext("filename") or "").strip()
    rows = []
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if names is not None and name not in names:
            continue
        box = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise SourceError(f"{p}: object {i} ({name!r}) has no numeric bndbox "
                              "xmin/ymin/xmax/ymax") from None
        rows.append({"image": image, "name": name, "xmin": xmin, "ymin": ymin, "xmax": xmax,
                     "ymax": ymax, "x": (xmin + xmax) / 2, "y": (ymin + ymax) / 2})
    return pd.DataFrame(rows, columns=["image", "name", "xmin", "ymin", "xmax", "ymax", "x", "y"])


def read_voc_folder(root: PathLike, names: Sequence[str] = ("WBC",)) -> pd.DataFrame:
    """Unlabeled cells at the centres of the WBC boxes of a Pascal VOC folder.

    root holds ``Annotations/*.xml`` and ``JPEGImages/`` (e.g. BCCD). Returns a
    cell table (``label`` and ``smear`` empty, ``x``, ``y`` = box centre,
    ``source`` = ``<xml>:<box number>``).
    """
    root = Path(root)
    rows = []
    for xml in sorted((root / "Annotations").glob("*.xml")):
        for j, b in enumerate(read_voc(xml, names=names).to_dict("records")):
            image = b["image"] or xml.stem + ".jpg"
            rows.append(dict(path=str((root / "JPEGImages" / image).resolve()), label="", category="",
                             smear="", x=b["x"], y=b["y"], source=f"{xml}:{j + 1}"))
    if not rows:
        raise SourceError(f"{root}: no {'/'.join(names)} boxes in Annotations/*.xml")
    return cell_table(rows)


def read_smear_folders(root: PathLike) -> pd.DataFrame:
    """Unlabeled cells from a folder with one sub-folder per smear (sub-folder name = smear id)."""
    root = Path(root)
    rows = [dict(path=str(p.resolve()), smear=sub.name, source=str(p))
            for sub in _image_subfolders(root) for p in list_images(sub)]
    if not rows:
        raise SourceError(f"{root}: no images in smear sub-folders")
    return cell_table(rows)


def _image_subfolders(root: Path) -> list:
    return [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".") and list_images(d)]


def _is_class_name(name: str) -> bool:
    try:
        classes.category(name)
        return True
    except classes.LabelError:
        return False


#: What :func:`source_kind` can answer, with the reader of each (docs/formats.md, "Cell sources").
SOURCE_KINDS = {
    "nnc-csv": "a Neural Network Console dataset CSV (header x:image[,y:label])",
    "labels-csv": "a path,label[,smear][,x,y] CSV",
    "labels-folder": "a folder holding labels.csv",
    "inference-folder": "an inference dataset folder (build-dataset --inference: cells.csv)",
    "nnc-folder": "an NNC dataset folder (train.csv and/or valid.csv, train first)",
    "voc-folder": "a Pascal VOC folder (Annotations/*.xml + JPEGImages/): one unlabeled cell per WBC box",
    "image-folder": "a folder of images (unlabeled single cells or fields)",
    "class-folders": "a folder with one sub-folder per class",
    "smear-folders": "a folder with one sub-folder per smear (unlabeled)",
}


def source_kind(source: PathLike) -> str:
    """Which kind of cell source ``source`` is: a key of :data:`SOURCE_KINDS`.

    The one rule every stage uses. Files: ``.csv`` only (NNC when the header has
    ``x:``). Folders, first match wins: ``labels.csv``; ``cells.csv``;
    ``train.csv``/``valid.csv``; ``Annotations/`` + ``JPEGImages/``; images
    directly in it; sub-folders of images, all named as classes (class folders)
    or none (smear folders). Raises :class:`SourceError` (or
    :class:`~wbc_nnabla.classes.LabelError` for a mix of class and other
    sub-folder names) saying what was expected.
    """
    src = Path(source)
    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise SourceError(f"{src}: a cell source file must be a .csv (path,label CSV or NNC dataset CSV)")
        return "nnc-csv" if is_nnc_csv(src) else "labels-csv"
    if not src.is_dir():
        raise SourceError(f"{src}: no such file or folder")
    for name, kind in (("labels.csv", "labels-folder"), ("cells.csv", "inference-folder")):
        if (src / name).is_file():
            return kind
    if (src / "train.csv").is_file() or (src / "valid.csv").is_file():
        return "nnc-folder"
    if (src / "Annotations").is_dir() and (src / "JPEGImages").is_dir():
        return "voc-folder"
    subs = _image_subfolders(src)
    if list_images(src):
        if subs:
            raise SourceError(f"{src}: holds images and also sub-folders of images ({subs[0].name}, ...); "
                              f"give the folder of images or the folder of sub-folders, not both")
        return "image-folder"
    if not subs:
        raise SourceError(f"{src}: no images (expected image files, class or smear sub-folders, a labels.csv "
                          f"or an NNC dataset; formats: {', '.join(IMAGE_EXTENSIONS)})")
    known = [_is_class_name(d.name) for d in subs]
    if all(known):
        return "class-folders"
    if not any(known):
        return "smear-folders"
    bad = subs[known.index(False)]
    raise classes.LabelError(f"class folder {bad}: {bad.name!r} is not a class name, while "
                             f"{subs[known.index(True)].name!r} is (one sub-folder per class, or one per smear)")


def _read_kind(src: Path, kind: str) -> pd.DataFrame:
    if kind == "nnc-csv":
        return read_nnc_csv(src)
    if kind == "labels-csv":
        return read_labels_csv(src)
    if kind == "labels-folder":
        return read_labels_csv(src / "labels.csv")
    if kind == "inference-folder":
        return read_labels_csv(src / "cells.csv")
    if kind == "nnc-folder":
        parts = [src / n for n in ("train.csv", "valid.csv") if (src / n).is_file()]
        return pd.concat([read_nnc_csv(p) for p in parts], ignore_index=True)
    if kind == "voc-folder":
        return read_voc_folder(src)
    if kind == "image-folder":
        return read_image_folder(src)
    if kind == "class-folders":
        return read_class_folders(src)
    return read_smear_folders(src)


def read_cells(source: PathLike, dedupe: bool = False, by_content: bool = False,
               dedupe_flag: Optional[str] = "--dedupe") -> pd.DataFrame:
    """Read a cell source of any supported kind (:func:`source_kind`) as a cell table.

    Labels are optional here (a caller that needs them checks). A source that
    lists one image (and centre) twice is an error naming both rows: the copies
    could land in training and validation at once. With ``by_content`` two
    files with the same bytes (a copy under another name) count as one image
    too (:func:`content_keys`). With ``dedupe`` exact repeats (same label and
    smear) are dropped instead and counted in
    ``table.attrs["duplicates_dropped"]``; repeats that disagree stay an error.
    ``dedupe_flag``: the flag the error suggests (None: the command has none).
    """
    src = Path(source)
    table = _read_kind(src, source_kind(src))
    return drop_duplicates(table, dedupe, by_content=by_content, dedupe_flag=dedupe_flag)


def read_cell_images(source: PathLike, dedupe: bool = False, by_content: bool = False,
                     dedupe_flag: Optional[str] = "--dedupe") -> pd.DataFrame:
    """:func:`read_cells` for a command that takes each image whole as one cell (``predict``,
    ``adapt``, ``finetune``, ``train``'s ``style_cells``, ...); see :func:`check_whole_images`."""
    table = read_cells(source, dedupe=dedupe, by_content=by_content, dedupe_flag=dedupe_flag)
    return check_whole_images(table, source)


def check_whole_images(table: pd.DataFrame, source) -> pd.DataFrame:
    """``table``, or a :class:`SourceError` naming its first row that gives a cell centre ``x, y``
    in a larger image (a VOC folder, a CSV with ``x,y``): read whole, the field would stand for that
    cell. Such cells are cropped first, by ``build-dataset SOURCE OUT --inference --crop PX``, whose
    ``OUT/cells.csv`` lists one whole image per cell."""
    xy = [c for c in ("x", "y") if c in table.columns]
    centred = table[xy].notna().any(axis=1) if xy else pd.Series(False, index=table.index)
    if centred.any():
        row = table[centred].iloc[0]
        where = row.get("source") or f"{source}: cell {int(np.flatnonzero(centred)[0]) + 1}"
        raise SourceError(f"{where}: gives a cell centre (x {row.get('x', np.nan):g}, y {row.get('y', np.nan):g}) "
                          f"in {row['path']} ({int(centred.sum())} of {len(table)} cells do); this command reads "
                          f"each image whole as one cell, so the whole field would stand for it. Crop the cells "
                          f"first: wbc-nnabla build-dataset {source} OUT --inference --crop PX (PX: the crop side "
                          f"in the field's pixels), then give OUT/cells.csv")
    return table



# ----------------------------------------------------------------------------- NNC writer


def write_nnc_csv(path: PathLike, images: Iterable[PathLike], labels: Iterable[int],
                  extra: Optional[dict] = None) -> Path:
    """Write a Neural Network Console dataset CSV (``x:image,y:label``).

    images: image paths (relative ones are taken from the current directory), written
        relative to the CSV's folder when inside it, else absolute.
    labels: class indices (six-class order of :data:`wbc_nnabla.classes.CLASSES6`).
    extra: optional further columns ``{header: values}`` (e.g. ``{"smear": [...]}``);
        nnabla's ``data_iterator_csv_dataset`` reads them as extra variables.
    """
    path = Path(path)
    base = path.parent.resolve()
    rel = []
    for p in images:
        p = Path(p).resolve()
        try:
            rel.append(p.relative_to(base).as_posix())
        except ValueError:
            rel.append(str(p))
    df = pd.DataFrame({NNC_HEADER[0]: rel, NNC_HEADER[1]: [int(v) for v in labels]})
    for k, v in (extra or {}).items():
        df[k] = list(v)
    with outputs.atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")
    return path


# ----------------------------------------------------------------------------- demo data


#: The embedded demo sets (:func:`demo_data`): name -> folder under ``wbc_nnabla/data``.
DEMO_SETS = {"full": "demo_pbc", "small": "demo_pbc_small"}


def demo_data(which: str = "full") -> Path:
    """Folder of embedded demo cells: a seeded stratified subset of the PBC dataset.

    May-Grünwald-Giemsa single-cell JPEGs (Acevedo et al., Data in Brief 30:105474, 2020;
    CC-BY-4.0, see ``ATTRIBUTION.md`` beside them) in class folders, with a ``labels.csv``
    (``path,label``). Read it with :func:`read_cells`.

    which: ``"full"`` (the default): 20 cells per class, the PBC files unchanged (about 360x363
        pixels); the tests count on them. ``"small"``: 150 other cells per class, each the centred
        216x216 pixels of its PBC image resized to 96x96 (what ``make demo`` trains on,
        :func:`wbc_nnabla.pipeline.demo`). Both are made by ``scripts/make_demo_subset.py``.
    """
    if which not in DEMO_SETS:
        raise InputError(f"unknown demo set {which!r}; choose one of {', '.join(DEMO_SETS)}")
    return Path(__file__).resolve().parent / "data" / DEMO_SETS[which]


# ----------------------------------------------------------------------------- moved names

#: Public names that moved to :mod:`~wbc_nnabla.outputs` (the safe-output helpers) after 0.1.0.
#: ``fileio.NAME`` still returns them, with a DeprecationWarning, so notebooks written against
#: 0.1.0 keep working; new code imports them from ``outputs``.
MOVED_TO_OUTPUTS = frozenset({
    "atomic_path", "atomic_dir", "atomic_files", "folder_lock", "remove_stale_temporaries",
    "output_of_temporary", "OUTPUT_MARKER", "write_marker", "marker_command", "check_output",
    "check_output_folder", "check_not_inside", "write_text", "json_text", "write_json", "SIMD_LEVELS",
    "cpu_simd", "environment", "bar_disabled"})  # cpuinfo and cpu_model came after the move: outputs only


def __getattr__(name: str):
    # PEP 562: called only for names this module does not define
    if name in MOVED_TO_OUTPUTS:
        warnings.warn(f"wbc_nnabla.fileio.{name} moved to wbc_nnabla.outputs.{name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(outputs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
