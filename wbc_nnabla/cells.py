"""WBC location in smear fields, square crops, WBC mask and background removal.

Implements the data preparation of section II.3 of Sasaki et al. (2020):
crops of 750x750 pixels around each white blood cell (WBC), and dataset ①
in which the background (red cells, plasma, slide) is removed so that only the
WBC is kept. See ``docs/cells.md`` for the method and its parameters.

Images are RGB ``uint8`` arrays of shape ``(H, W, 3)``; masks are ``bool``
``(H, W)``; coordinates are ``(x, y)`` in pixels of the source image.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

PAD_MODES = {
    "reflect": cv2.BORDER_REFLECT_101,
    "constant": cv2.BORDER_CONSTANT,
    "replicate": cv2.BORDER_REPLICATE,
}

# ----------------------------------------------------------------------------- crops (section II.3)


def crop_size_px(crop_px: int = 750, crop_um: Optional[float] = None,
                 pixel_um: Optional[float] = None) -> int:
    """Side of the square crop in pixels.

    The paper crops 750x750 pixels at 100x oil on 2560x1920 photos (section
    II.3). Other microscopes differ in pixel size, so the crop may instead be
    given in micrometres: ``crop_um`` (µm) / ``pixel_um`` (µm per pixel),
    rounded to the nearest pixel. Both or neither of the two must be given.
    """
    if (crop_um is None) != (pixel_um is None):
        raise ValueError("crop size in micrometres needs both crop_um (µm) and pixel_um (µm/px); "
                         f"got crop_um={crop_um!r}, pixel_um={pixel_um!r}")
    if crop_um is not None:
        if not (float(crop_um) > 0 and float(pixel_um) > 0):
            raise ValueError(f"crop_um and pixel_um must be positive, got {crop_um!r} and {pixel_um!r}")
        size = int(round(float(crop_um) / float(pixel_um)))
    else:
        size = int(crop_px)
    if size < 1:
        raise ValueError(f"crop size must be at least 1 pixel, got {size}")
    return size


def crop_square(rgb: np.ndarray, cx: float, cy: float, size: int,
                pad_mode: str = "reflect") -> Tuple[np.ndarray, dict]:
    """Square ``size`` x ``size`` crop centred on pixel ``(cx, cy)`` (section II.3).

    rgb: RGB uint8 ``(H, W, 3)``. Where the square leaves the image it is
    padded with :func:`cv2.copyMakeBorder`: ``"reflect"`` (mirror without
    repeating the edge pixel), ``"constant"`` (white, like a slide background)
    or ``"replicate"``.

    Returns ``(crop, info)``: crop ``(size, size, 3)`` uint8 and ``info`` with
    ``box`` = ``(x0, y0, x1, y1)`` in source pixels (x1, y1 exclusive, may lie
    outside the image), ``pad`` = ``(top, bottom, left, right)`` pixels added,
    ``pad_mode`` and ``center`` = ``(cx, cy)`` rounded to pixels.
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {rgb.shape}")
    size = int(size)
    if size < 1:
        raise ValueError(f"crop size must be at least 1 pixel, got {size}")
    if not (np.isfinite(cx) and np.isfinite(cy)):
        raise ValueError(f"crop centre must be finite, got ({cx}, {cy})")
    h, w = rgb.shape[:2]
    icx, icy = int(round(float(cx))), int(round(float(cy)))
    x0, y0 = icx - size // 2, icy - size // 2
    x1, y1 = x0 + size, y0 + size
    top, bottom = max(0, -y0), max(0, y1 - h)
    left, right = max(0, -x0), max(0, x1 - w)
    sub = rgb[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    if sub.size == 0:
        raise ValueError(f"crop centre ({cx}, {cy}) with size {size} lies entirely outside the "
                         f"{w}x{h} image")
    if top or bottom or left or right:
        # reflect needs the source to be larger than the pad; fall back to replicate otherwise
        mode = pad_mode
        if mode == "reflect" and (top >= sub.shape[0] or bottom >= sub.shape[0]
                                  or left >= sub.shape[1] or right >= sub.shape[1]):
            mode = "replicate"
        crop = cv2.copyMakeBorder(np.ascontiguousarray(sub), top, bottom, left, right,
                                  PAD_MODES[mode], value=(255, 255, 255))
    else:
        crop = sub.copy()
    info = {"box": (x0, y0, x1, y1), "pad": (top, bottom, left, right), "pad_mode": pad_mode,
            "center": (icx, icy)}
    return crop, info


# ----------------------------------------------------------------------------- WBC mask (section II.3, dataset ①)


def _nucleus_score(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel 'violet darkness' in [0, 255] (float32 (H, W)).

    MGG nuclei are dark violet: low green and relatively high blue. Red cells
    (pink-orange) and background (cream) have high green.
    """
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    return np.clip(0.5 * (b - g) + 0.5 * (255.0 - g), 0, 255)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    return ndi.binary_fill_holes(mask)


def _component_nearest(mask: np.ndarray, point: Tuple[float, float]) -> np.ndarray:
    """The connected component of ``mask`` nearest ``point`` (x, y)."""
    lab, n = ndi.label(mask)
    if n == 0:
        return mask.copy()
    if n == 1:
        return lab == 1
    dist = ndi.distance_transform_edt(lab == 0, return_indices=True)[1]
    x, y = int(round(point[0])), int(round(point[1]))
    y = min(max(y, 0), mask.shape[0] - 1)
    x = min(max(x, 0), mask.shape[1] - 1)
    iy, ix = dist[0][y, x], dist[1][y, x]
    return lab == lab[iy, ix]


def nucleus_mask(rgb: np.ndarray) -> np.ndarray:
    """Nucleus (bool (H, W)) of the WBC nearest the image centre."""
    s = _nucleus_score(rgb).astype(np.uint8)
    t, _ = cv2.threshold(s, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    m = s > t
    h, w = m.shape
    return _fill_holes(_component_nearest(m, (w / 2, h / 2)))


def wbc_mask(rgb: np.ndarray) -> np.ndarray:
    """WBC (nucleus + cytoplasm) of the cell nearest the image centre, bool ``(H, W)``.

    One connected region with holes filled. Section II.3, dataset ①.
    """
    _check_rgb(rgb)
    nuc = nucleus_mask(rgb)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    sat = hsv[..., 1]
    t, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    fg = (sat > t) | nuc
    lab, n = ndi.label(fg)
    keep = np.unique(lab[nuc])
    keep = keep[keep > 0]
    cell = np.isin(lab, keep) if keep.size else nuc
    return _fill_holes(cell)


def remove_background(rgb: np.ndarray, mask: Optional[np.ndarray] = None,
                      fill: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """Dataset ① image (section II.3): everything outside the WBC mask set to ``fill``.

    rgb: RGB uint8 ``(H, W, 3)``; mask: bool ``(H, W)`` (computed with
    :func:`wbc_mask` when None); fill: RGB colour of the removed background.
    Returns a new RGB uint8 array.
    """
    _check_rgb(rgb)
    if mask is None:
        mask = wbc_mask(rgb)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {rgb.shape[:2]}")
    out = rgb.copy()
    out[~mask] = np.asarray(fill, dtype=np.uint8)
    return out


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError("expected an RGB uint8 image of shape (H, W, 3), got "
                         f"{getattr(rgb, 'dtype', type(rgb))} {getattr(rgb, 'shape', '')}")


# ----------------------------------------------------------------------------- location in fields


def locate_wbcs(field_rgb: np.ndarray) -> np.ndarray:
    """Centres ``(K, 2)`` float ``(x, y)`` in pixels of the WBCs in a smear field image."""
    _check_rgb(field_rgb)
    s = _nucleus_score(field_rgb).astype(np.uint8)
    t, _ = cv2.threshold(s, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    m = s > max(t, 100)
    h, w = m.shape
    r = max(2, int(round(min(h, w) / 100)))
    m = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_CLOSE,
                         cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (4 * r + 1, 4 * r + 1))) > 0
    lab, n = ndi.label(m)
    if n == 0:
        return np.zeros((0, 2), float)
    areas = ndi.sum(m, lab, np.arange(1, n + 1))
    keep = np.nonzero(areas >= 0.2 * areas.max())[0] + 1
    cents = ndi.center_of_mass(m, lab, keep)
    return np.array([(c[1], c[0]) for c in cents], float).reshape(-1, 2)


# ----------------------------------------------------------------------------- Pascal VOC boxes


def read_voc(xml_path, names: Sequence[str] = ("WBC",)) -> pd.DataFrame:
    """Boxes of a Pascal VOC annotation as a table.

    Columns ``image`` (the ``filename`` element), ``name``, ``xmin``, ``ymin``,
    ``xmax``, ``ymax`` (pixels) and ``x``, ``y`` (box centre). Only objects
    whose name is in ``names`` are kept (all when ``names`` is None).
    Raises ``ValueError`` naming the file when the XML is malformed.
    """
    p = Path(xml_path)
    try:
        root = ET.parse(str(p)).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{p}: malformed Pascal VOC XML ({e})") from None
    except OSError as e:
        raise ValueError(f"{p}: cannot read Pascal VOC XML ({e})") from None
    if root.tag != "annotation":
        raise ValueError(f"{p}: expected a Pascal VOC <annotation> root, got <{root.tag}>")
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
            raise ValueError(f"{p}: object {i} ({name!r}) has no numeric bndbox "
                             "xmin/ymin/xmax/ymax") from None
        rows.append({"image": image, "name": name, "xmin": xmin, "ymin": ymin, "xmax": xmax,
                     "ymax": ymax, "x": (xmin + xmax) / 2, "y": (ymin + ymax) / 2})
    return pd.DataFrame(rows, columns=["image", "name", "xmin", "ymin", "xmax", "ymax", "x", "y"])
