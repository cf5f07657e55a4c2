"""Reading cell images and labeled cell lists; writing NNC dataset CSVs; safe outputs.

Conventions (see ``docs/formats.md``):

* Images inside the library are RGB ``uint8`` arrays of shape ``(H, W, 3)``.
* A *cell table* is a :class:`pandas.DataFrame` with one row per cell and the
  columns of :data:`CELL_COLUMNS`: ``path`` (absolute), ``label`` (six-class
  name, or ``Neutrophil`` when the subtype is unknown, or empty when
  unlabeled), ``category`` (the taxonomy name, e.g. ``Lymph small``),
  ``smear`` (empty when unknown), ``x``, ``y`` (cell centre in pixels, NaN when
  the image is already a single-cell crop) and ``source`` (``file:row``, for
  error messages and manifests).
* Every writer writes to a temporary path and renames it into place, so an
  interrupted run never leaves a half-written file; sources are only read.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import pandas as pd

from . import classes

PathLike = Union[str, os.PathLike]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
CELL_COLUMNS = ("path", "label", "category", "smear", "x", "y", "source")
#: Header of a Neural Network Console dataset CSV as this library writes it.
NNC_HEADER = ("x:image", "y:label")


class ImageReadError(OSError):
    """An image file that is missing, empty, truncated or not an image."""


class SourceError(ValueError):
    """A cell source (folder or CSV) that does not have the expected shape."""


# ----------------------------------------------------------------------------- images


def _jpeg_is_complete(data: np.ndarray) -> bool:
    # OpenCV decodes a truncated JPEG into a grey-filled image with only a
    # warning on stderr, so a missing end-of-image marker (FF D9) is checked here.
    tail = data[-4096:].tobytes()
    return b"\xff\xd9" in tail


def to_rgb_uint8(image: np.ndarray, name: str = "<array>") -> np.ndarray:
    """Convert an OpenCV-decoded array (BGR/BGRA/gray, 8/16-bit or float) to RGB uint8.

    image: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA.
    16-bit values are scaled by 1/257 and floats in [0, 1] by 255; an alpha
    channel is dropped (microscope images carry no meaningful transparency).
    """
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    elif image.dtype.kind == "f":
        image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageReadError(f"{name}: unsupported pixel type {image.dtype} (expected 8- or 16-bit)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageReadError(f"{name}: unsupported image shape {image.shape}")


def check_rgb(rgb, what: str = "") -> np.ndarray:
    """``rgb`` itself if it is an RGB uint8 array ``(H, W, 3)``, else ValueError (prefixed ``what: ``)."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{what + ': ' if what else ''}expected an RGB uint8 image (H, W, 3), got "
                         f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}")
    return rgb


def read_rgb(path: PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 ``(H, W, 3)``, whatever it holds.

    Accepts BMP, PNG, JPEG and TIFF; grayscale, RGBA and 16-bit images are
    converted. Raises :class:`ImageReadError` naming the file when it is
    missing, empty, truncated or not an image: never returns None.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: no such image file")
    data = np.fromfile(str(p), dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(f"{p}: empty file, expected an image")
    if data[:2].tobytes() == b"\xff\xd8" and not _jpeg_is_complete(data):
        raise ImageReadError(f"{p}: truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise ImageReadError(f"{p}: not a readable image (expected BMP, PNG, JPEG or TIFF)")
    return to_rgb_uint8(image, str(p))


def write_image(path: PathLike, rgb: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write an RGB uint8 ``(H, W, 3)`` (or gray ``(H, W)``) image atomically; format from the suffix."""
    p = Path(path)
    arr = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if p.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(p.suffix, arr, params)
    if not ok:
        raise OSError(f"{p}: OpenCV could not encode an image of shape {rgb.shape} as {p.suffix}")
    with atomic_path(p) as tmp:
        buf.tofile(str(tmp))


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an image to ``size`` x ``size`` pixels, the one rule every stage uses.

    ``cv2.INTER_AREA`` when shrinking (both sides larger than ``size``: no
    aliasing), else ``cv2.INTER_LINEAR``. The paper resizes its 750x750 crops to
    480 (training) and 320 (inference), section II.3. Returns a new array.
    """
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb.copy()
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (int(size), int(size)), interpolation=interp)


def is_image_file(path: PathLike) -> bool:
    """True for a file whose suffix is one of :data:`IMAGE_EXTENSIONS`."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: PathLike) -> list:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_image_file(p))


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
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such CSV file") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: not a readable CSV ({e})") from None


def _resolve(csv_path: Path, rel: str) -> str:
    p = Path(rel)
    return str((p if p.is_absolute() else csv_path.parent / p).resolve())


def read_labels_csv(path: PathLike) -> pd.DataFrame:
    """Cells from a ``path,label[,smear][,x,y]`` CSV (paths relative to the CSV).

    ``label`` may be empty (unlabeled cells, e.g. for prediction). Column
    names are case-insensitive. Errors name the file, the row (1-based line
    number in the file) and what was expected.
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
        where = f"{path}:{i + 2}"
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


def read_cells(source: PathLike) -> pd.DataFrame:
    """Read a labeled cell source of any supported kind.

    * a CSV file: an NNC dataset CSV when its header has ``x:image``, else a
      ``path,label[,smear][,x,y]`` CSV;
    * a folder holding ``labels.csv``: that CSV;
    * a folder holding ``valid.csv``/``train.csv`` only (an NNC dataset folder):
      both, train first;
    * any other folder: one sub-folder per class.
    """
    src = Path(source)
    if src.is_file():
        return read_nnc_csv(src) if is_nnc_csv(src) else read_labels_csv(src)
    if not src.exists():
        raise SourceError(f"{src}: no such file or folder")
    if (src / "labels.csv").is_file():
        return read_labels_csv(src / "labels.csv")
    nnc = [src / n for n in ("train.csv", "valid.csv") if (src / n).is_file()]
    if nnc:
        return pd.concat([read_nnc_csv(p) for p in nnc], ignore_index=True)
    return read_class_folders(src)


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
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")
    return path


# ----------------------------------------------------------------------------- safe outputs


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` on success.

    The parent folder is created; on an exception the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=str(path.parent))
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``path``; rename it to ``path`` on success.

    An interrupted build leaves no half output under ``path``. When ``path``
    exists it is replaced only if ``overwrite`` is true.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (choose another output or allow overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent)))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: PathLike, text: str) -> Path:
    """Write text atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: PathLike, obj) -> Path:
    """Write JSON atomically, indented, with NumPy scalars converted."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")
    return write_text(path, json.dumps(obj, indent=2, default=default, sort_keys=False) + "\n")


def environment() -> dict:
    """Versions of Python, the platform and the installed libraries a run depends on.

    Read from package metadata, so calling it imports none of them (scoring
    stays free of nnabla).
    """
    from importlib import metadata

    from . import __version__
    out = {"wbc_nnabla": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("nnabla", "nnabla-ext-cuda116", "nnabla-ext-cuda120", "numpy", "opencv-python-headless",
                 "scipy", "pandas", "matplotlib", "onnx", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # optional packages may be absent
            continue
    return out


def check_not_inside(out: PathLike, sources: Iterable[PathLike]) -> None:
    """Refuse an output folder inside (or equal to) a source folder: sources stay read-only.

    A source that is a file (a CSV listing cells) protects only itself; pass
    the folders of the images it lists to protect them too.
    """
    out_r = Path(out).resolve()
    for s in sources:
        s_r = Path(s).resolve()
        if s_r.is_file() or not s_r.exists():
            if out_r == s_r:
                raise SourceError(f"output {out} is the source file {s}; choose another output")
            continue
        if out_r == s_r or s_r in out_r.parents:
            raise SourceError(f"output {out} is inside the source folder {s_r}; "
                              f"choose an output outside it (sources are never written)")


# ----------------------------------------------------------------------------- demo data


def demo_data() -> Path:
    """Folder of the embedded demo cells: a stratified subset of the PBC dataset.

    20 May-Grünwald-Giemsa single-cell JPEGs per class (Acevedo et al., Data in
    Brief 30:105474, 2020; CC-BY-4.0, see ``ATTRIBUTION.md`` beside them) with a
    ``labels.csv`` (``path,label``). Read it with :func:`read_cells`.
    """
    return Path(__file__).resolve().parent / "data" / "demo_pbc"
