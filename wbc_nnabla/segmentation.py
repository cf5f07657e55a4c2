"""Square crops, the WBC mask and background removal; ``wbc-nnabla segment``.

Implements the data preparation of section II.3 of Sasaki et al. (2020):
crops of 750x750 pixels around each white blood cell (WBC), and dataset ①
in which the background (red cells, plasma, slide) is removed so that only the
WBC is kept. See ``docs/cells.md`` for the method and its parameters.

The nucleus evidence and grouping are in :mod:`~wbc_nnabla.nuclei`, WBC location in fields in
:mod:`~wbc_nnabla.locating`; this module re-exports their names (``segmentation.locate_wbcs``,
``segmentation.violet``, ... as before the split). An image without two sides (no bright
background, or none around the nucleus found) raises
:class:`~wbc_nnabla.images.NoBackgroundError` before GrabCut is called, never ``cv2.error``.

Images are RGB ``uint8`` arrays of shape ``(H, W, 3)``; masks are ``bool``
``(H, W)``; coordinates are ``(x, y)`` in pixels of the source image.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from . import images, outputs, sampling
from .errors import InputError
from .images import NoBackgroundError
# names of the split-off modules, public here since 0.1.0 (segmentation.violet, segmentation.locate_wbcs, ...)
from .locating import LOCATE_COLUMNS, locate_images, locate_table, locate_wbcs  # noqa: F401
from .nuclei import (LOBE_GAP, MAX_ELONGATION, MAX_FIELD_BORDER, MAX_NUCLEUS_BORDER, MAX_SIDE,  # noqa: F401
                     PLASMA_MIN_OD, PLASMA_SIGMAS, STAIN_FRACTION, STAINED_GAP, background_rgb, border_share,
                     check_border, convex_hull, darkness, equivalent_radius, group_fragments, nucleus_group,
                     optical_density, otsu3, reduce, stained_mask, violet)
from .recipe import PAPER

log = logging.getLogger(__name__)

PAD_MODES = {
    "reflect": cv2.BORDER_REFLECT_101,
    "constant": cv2.BORDER_CONSTANT,
    "replicate": cv2.BORDER_REPLICATE,
}

# ----------------------------------------------------------------------------- crops (section II.3)


def crop_size_px(crop_px: int = PAPER.crop, crop_um: Optional[float] = None,
                 pixel_um: Optional[float] = None) -> int:
    """Side of the square crop in pixels.

    The paper crops 750x750 pixels at 100x oil on 2560x1920 photos (section
    II.3). Other microscopes differ in pixel size, so the crop may instead be
    given in micrometres: ``crop_um`` (µm) / ``pixel_um`` (µm per pixel),
    rounded to the nearest pixel. Both or neither of the two must be given.
    """
    if (crop_um is None) != (pixel_um is None):
        raise InputError("crop size in micrometres needs both crop_um (µm) and pixel_um (µm/px); "
                         f"got crop_um={crop_um!r}, pixel_um={pixel_um!r}")
    if crop_um is not None:
        if not (float(crop_um) > 0 and float(pixel_um) > 0):
            raise InputError(f"crop_um and pixel_um must be positive, got {crop_um!r} and {pixel_um!r}")
        size = int(round(float(crop_um) / float(pixel_um)))
    else:
        size = int(crop_px)
    if size < 1:
        raise InputError(f"crop size must be at least 1 pixel, got {size}")
    return size


def crop_square(rgb: np.ndarray, cx: float, cy: float, size: int,
                pad_mode: str = "reflect", fill: Sequence[int] = (255, 255, 255)) -> Tuple[np.ndarray, dict]:
    """Square ``size`` x ``size`` crop centred on pixel ``(cx, cy)`` (section II.3).

    rgb: RGB uint8 ``(H, W, 3)``.
    pad_mode: how the square is padded where it leaves the image (:func:`cv2.copyMakeBorder`):
        ``"reflect"`` (mirror without repeating the edge pixel), ``"constant"`` (``fill``;
        white by default, like a slide background) or ``"replicate"``.
    fill: RGB colour of ``"constant"`` padding.

    Returns ``(crop, info)``: crop ``(size, size, 3)`` uint8 and ``info`` with
    ``box`` = ``(x0, y0, x1, y1)`` in source pixels (x1, y1 exclusive, may lie
    outside the image), ``pad`` = ``(top, bottom, left, right)`` pixels added,
    ``pad_mode`` and ``center`` = ``(cx, cy)`` rounded to pixels.
    """
    if pad_mode not in PAD_MODES:
        raise InputError(f"pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"expected an RGB image of shape (H, W, 3), got {rgb.shape}")
    size = int(size)
    if size < 1:
        raise InputError(f"crop size must be at least 1 pixel, got {size}")
    if not (np.isfinite(cx) and np.isfinite(cy)):
        raise InputError(f"crop centre must be finite, got ({cx}, {cy})")
    h, w = rgb.shape[:2]
    icx, icy = int(round(float(cx))), int(round(float(cy)))
    x0, y0 = icx - size // 2, icy - size // 2
    x1, y1 = x0 + size, y0 + size
    top, bottom = max(0, -y0), max(0, y1 - h)
    left, right = max(0, -x0), max(0, x1 - w)
    sub = rgb[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    if sub.size == 0:
        raise InputError(f"crop centre ({cx}, {cy}) with size {size} lies entirely outside the "
                         f"{w}x{h} image")
    if top or bottom or left or right:
        # reflect needs the source to be larger than the pad; fall back to replicate otherwise
        mode = pad_mode
        if mode == "reflect" and (top >= sub.shape[0] or bottom >= sub.shape[0]
                                  or left >= sub.shape[1] or right >= sub.shape[1]):
            mode = "replicate"
        crop = cv2.copyMakeBorder(np.ascontiguousarray(sub), top, bottom, left, right,
                                  PAD_MODES[mode], value=tuple(int(v) for v in fill))
    else:
        crop = sub.copy()
    info = {"box": (x0, y0, x1, y1), "pad": (top, bottom, left, right), "pad_mode": pad_mode,
            "center": (icx, icy)}
    return crop, info


# ----------------------------------------------------------------------------- WBC mask (section II.3, dataset ①)


# Parameters of the WBC mask, in units of the nucleus radius r_n (radius of the
# disc with the area of the nucleus' convex hull), so that the method is the same
# at 120 px, 360 px or 750 px crops. See docs/cells.md for how they were chosen.
# (LOBE_GAP, STAINED_GAP, MAX_ELONGATION, MAX_SIDE and the plasma thresholds: wbc_nnabla.nuclei.)
CELL_REACH = 1.6      # the WBC ends within CELL_REACH * r_n of the nucleus' convex hull
WORK_RADIUS = 24.0    # GrabCut runs at a scale where r_n is at most this many pixels
GRABCUT_ITERS = 4
# Retry for pale cytoplasm (see has_cytoplasm_ring): a mask of at most NUCLEUS_ONLY x the
# nucleus hull area, or covering less than RING_COVER of the stained ring RING_INNER..RING_OUTER
# r_n around the hull, is retried when that ring is stained all around; the retry takes
# stained pixels within RING_SEED r_n as sure WBC, and is kept when its solidity is at
# least RETRY_SOLIDITY (after the red-cell cut).
NUCLEUS_ONLY = 1.1
RING_INNER, RING_OUTER = 0.05, 0.35
RING_MEAN, RING_MIN = 0.6, 0.25
RING_SEED = 0.25
RING_COVER = 0.5
RETRY_SOLIDITY = 0.85
# Stained = not plasma (see stained_mask): optical density above the plasma's median by
# PLASMA_SIGMAS robust standard deviations, by PLASMA_MIN_OD and by STAIN_FRACTION of the
# nucleus' OD.
# Red cells as sure background (see red_cell_markers): Hough circles of radius
# RBC_MIN..RBC_MAX r_n and quality >= RBC_QUALITY, centre farther than RBC_CLEAR x the
# radius from the nucleus hull, at most RBC_NUCLEAR nucleus-class; the disc shrunk by
# RBC_MARGIN of its radius is sure background.
RBC_MIN, RBC_MAX, RBC_CLEAR, RBC_MARGIN = 0.45, 1.4, 0.7, 0.2
RBC_QUALITY, RBC_NUCLEAR = 0.75, 0.3
# Red-cell cut (see cut_red_cells): masks less convex than MIN_SOLIDITY lose their round
# lobes (distance-transform maxima smaller than CUT_SMALLER x the largest, CUT_CLEAR x
# their radius away from the hull), each widened by CUT_WIDEN of its radius.
MIN_SOLIDITY, CUT_WIDEN, CUT_CLEAR, CUT_SMALLER = 0.9, 0.1, 0.4, 0.9


def red_cell_markers(rgb: np.ndarray, hull_w: np.ndarray, rw: float, nuclear: np.ndarray) -> np.ndarray:
    """Red cells (and other round objects that are not the WBC) as sure background.

    rgb: RGB uint8 ``(H, W, 3)``; hull_w: bool ``(H, W)``, the WBC's nucleus hull; rw:
    its :func:`equivalent_radius` ``r_n`` (px); nuclear: bool ``(H, W)``, nucleus-class
    pixels (top class of :func:`otsu3`).

    Red cells are round with a sharp rim (often a pale centre) and about as wide as a
    nucleus: circles of radius ``RBC_MIN..RBC_MAX r_n`` are found by the gradient Hough
    transform (``cv2.HOUGH_GRADIENT_ALT``, circle quality >= ``RBC_QUALITY``) on the
    grey image. A circle is kept when it keeps ``RBC_CLEAR`` x its radius away from the
    hull (it is not the WBC itself, nor overlaps its nucleus) and at most
    ``RBC_NUCLEAR`` of it is nucleus-class (not a lobe or another WBC's nucleus; those
    are left to the nucleus grouping). Returns bool ``(H, W)``: the kept discs shrunk
    by ``RBC_MARGIN`` of their radius, which a WBC mask may not enter. Colour plays
    no part, so a stain or camera change does not move them.
    """
    g = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (0, 0), 1.0)
    rmin, rmax = max(2, int(RBC_MIN * rw)), int(np.ceil(RBC_MAX * rw))
    found = cv2.HoughCircles(g, cv2.HOUGH_GRADIENT_ALT, 1.5, minDist=rmin, param1=60,
                             param2=RBC_QUALITY, minRadius=rmin, maxRadius=rmax)
    out = np.zeros(hull_w.shape, np.uint8)
    if found is None:
        return out > 0
    dh = ndi.distance_transform_edt(~hull_w)
    h, w = hull_w.shape
    for x, y, r in found[0]:
        ix, iy = min(max(int(round(x)), 0), w - 1), min(max(int(round(y)), 0), h - 1)
        if dh[iy, ix] <= RBC_CLEAR * r:
            continue
        disc = np.zeros_like(out)
        cv2.circle(disc, (ix, iy), int(round(r * (1.0 - RBC_MARGIN))), 1, -1)
        if nuclear[disc > 0].mean() <= RBC_NUCLEAR:
            out |= disc
    return out > 0


def _segment(rgb: np.ndarray, centre: Tuple[float, float]) -> Tuple[np.ndarray, np.ndarray]:
    """(WBC mask, nucleus mask), both bool (H, W), at the resolution of ``rgb``."""
    h, w = rgb.shape[:2]
    s = violet(rgb)
    t_low, t_high = otsu3(s)
    nuc = nucleus_group(s > t_high, centre, s > t_low)
    if nuc is None:
        return np.zeros((h, w), bool), np.zeros((h, w), bool)
    nuc = ndi.binary_fill_holes(nuc)
    check_border(convex_hull(nuc))   # a nucleus spanning the border is the slide of an inverted image
    rn = equivalent_radius(convex_hull(nuc))
    f = min(1.0, WORK_RADIUS / rn)
    if f < 1.0:  # GrabCut is O(pixels): work where the nucleus is WORK_RADIUS px
        size = (max(8, int(round(w * f))), max(8, int(round(h * f))))
        img = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        s_w = cv2.resize(s, size, interpolation=cv2.INTER_AREA)
        nuc_w = cv2.resize(nuc.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        if not nuc_w.any():
            nuc_w = cv2.resize(nuc.astype(np.uint8), size, interpolation=cv2.INTER_AREA) > 0
    else:
        img, s_w, nuc_w = rgb, s, nuc
    m = _working_mask(img, s_w, (t_low, t_high), nuc_w, background_rgb(rgb))
    if f < 1.0:
        m = cv2.resize(m.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_LINEAR) > 127
        m = _largest(m)
    return m, nuc


def _working_mask(img: np.ndarray, s_w: np.ndarray, thresholds: Tuple[float, float],
                  nuc_w: np.ndarray, background: np.ndarray) -> np.ndarray:
    """WBC mask (bool (H, W)) at the working scale: seeds, red-cell markers, GrabCut,
    pale-cytoplasm retry, red-cell cut (docs/cells.md, steps 4-8)."""
    t_low, t_high = thresholds
    hull_w = convex_hull(nuc_w)
    rw = equivalent_radius(hull_w)
    d = ndi.distance_transform_edt(~hull_w)
    gc = _seeds(s_w, t_low, nuc_w, hull_w, d, rw)
    nuclear = s_w > t_high
    rbc = red_cell_markers(img, hull_w, rw, nuclear) & ~hull_w
    gc[rbc] = cv2.GC_BGD
    m = _grabcut(img, gc, nuc_w, hull_w, rw)
    ring = ((s_w > t_low) | stained_mask(img, nuc_w, background)) & ~rbc
    inner = ring & (d > RING_INNER * rw) & (d <= RING_OUTER * rw)
    if _needs_retry(m, hull_w, inner) and has_cytoplasm_ring(ring, hull_w, d, rw):
        # Pale cytoplasm (MGG neutrophils) has the colour of the red cells around it, so
        # GrabCut's colour models can hand it to the background and keep only the
        # nucleus. A stained ring all around the nucleus says a cytoplasm is there:
        # retry with the stained pixels of its inner part as sure WBC, which puts the
        # cytoplasm colour into the WBC model. A retry that is not convex grew into red
        # cells around a cell whose nucleus-sized mask was right (monocytes): dropped.
        gc[(d <= RING_SEED * rw) & ring] = cv2.GC_FGD
        m2 = _grabcut(img, gc, nuc_w, hull_w, rw)
        if solidity(m2) < MIN_SOLIDITY:
            m2 = cut_red_cells(m2, hull_w, rw, nuclear)
        if solidity(m2) >= RETRY_SOLIDITY:
            return m2
    if solidity(m) < MIN_SOLIDITY:
        m = cut_red_cells(m, hull_w, rw, nuclear)
    return m


def _needs_retry(m: np.ndarray, hull_w: np.ndarray, inner: np.ndarray) -> bool:
    """Whether the mask may have lost a pale cytoplasm: it is at most NUCLEUS_ONLY x the
    hull area, or it leaves more than 1 - RING_COVER of the stained ring ``inner`` out."""
    if m.sum() <= NUCLEUS_ONLY * hull_w.sum():
        return True
    return inner.any() and (m & inner).sum() < RING_COVER * inner.sum()


def solidity(mask: np.ndarray) -> float:
    """Area of ``mask`` / area of its convex hull (1 for a convex shape, 0 for an empty mask)."""
    return float(mask.sum()) / max(1.0, float(convex_hull(mask).sum()))


def cut_red_cells(mask: np.ndarray, hull_w: np.ndarray, rw: float, nuclear: np.ndarray) -> np.ndarray:
    """Remove red cells a WBC mask grew into through a contact, bool ``(H, W)``.

    mask: bool ``(H, W)``, the WBC mask; hull_w, rw: nucleus hull and its radius ``r_n``
    (px); nuclear: bool ``(H, W)`` nucleus-class pixels.

    A swallowed red cell is a round lobe of the mask: a maximum of the mask's distance
    transform (within ``0.5 r_n``) of inscribed radius ``RBC_MIN..RBC_MAX r_n``, smaller
    than ``CUT_SMALLER`` x the mask's largest (the WBC's own), whose centre lies farther
    than ``CUT_CLEAR`` x that radius from the hull and whose disc is at most
    ``RBC_NUCLEAR`` nucleus-class. Each such disc, widened by ``CUT_WIDEN`` of its
    radius, is removed; the part connected to the nucleus is kept, opened by
    ``0.15 r_n`` and its holes filled. The cut is kept only when it makes the mask more
    convex (higher :func:`solidity`) and leaves more than ``NUCLEUS_ONLY`` x the hull.
    """
    dt = ndi.distance_transform_edt(mask)
    k = 2 * max(1, int(round(0.5 * rw))) + 1
    peaks = (dt == ndi.maximum_filter(dt, size=k)) & (dt >= RBC_MIN * rw) & (dt <= RBC_MAX * rw)
    peaks &= (ndi.distance_transform_edt(~hull_w) > CUT_CLEAR * dt) & (dt < CUT_SMALLER * dt.max())
    lab, n = ndi.label(peaks)
    if n == 0:
        return mask
    cut = np.zeros(mask.shape, np.uint8)
    for cy, cx in ndi.center_of_mass(peaks, lab, np.arange(1, n + 1)):
        iy, ix = int(round(cy)), int(round(cx))
        disc = np.zeros_like(cut)
        cv2.circle(disc, (ix, iy), int(round(dt[iy, ix] * (1.0 + CUT_WIDEN))), 1, -1)
        if nuclear[disc > 0].mean() <= RBC_NUCLEAR:
            cut |= disc
    kept = mask & (cut == 0)
    r = max(1, int(round(0.15 * rw)))
    se = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    kept = (cv2.morphologyEx(kept.astype(np.uint8), cv2.MORPH_OPEN, se) > 0) | (hull_w & mask)
    lab, _ = ndi.label(kept)
    kept = ndi.binary_fill_holes(np.isin(lab, np.unique(lab[hull_w & mask])) & (lab > 0))
    if kept.sum() <= NUCLEUS_ONLY * (hull_w & mask).sum() or solidity(kept) <= solidity(mask):
        return mask
    return kept


def _seeds(s_w: np.ndarray, t_low: float, nuc_w: np.ndarray, hull_w: np.ndarray,
           d: np.ndarray, rw: float) -> np.ndarray:
    """GrabCut seed mask (uint8 (H, W) of cv2.GC_*) at the working scale.

    Nucleus = sure WBC; stained pixels connected to it within reach = probable
    WBC; the rest within reach = probable background (red cells compete here);
    unstained pixels away from the nucleus and everything beyond reach = sure
    background. GrabCut then separates WBC from red cells by colour and edges.
    ``d`` is the distance (px) to the nucleus hull, ``rw`` its radius (px).
    """
    reach = d <= CELL_REACH * rw
    lab, _ = ndi.label(((s_w > t_low) & reach) | hull_w)
    connected = np.isin(lab, np.unique(lab[nuc_w]))
    gc = np.full(nuc_w.shape, cv2.GC_PR_BGD, np.uint8)
    gc[connected] = cv2.GC_PR_FGD
    gc[(d > 0.25 * rw) & (s_w < 0.5 * t_low)] = cv2.GC_BGD
    gc[~reach] = cv2.GC_BGD
    gc[nuc_w] = cv2.GC_FGD
    return gc


def _grabcut(img: np.ndarray, gc: np.ndarray, nuc_w: np.ndarray, hull_w: np.ndarray,
             rw: float) -> np.ndarray:
    """WBC mask (bool) from GrabCut on RGB ``img`` with seeds ``gc``, cleaned up.

    GrabCut fits one colour model to each side and fails (``cv2.error``) when the seeds give
    one side no pixel: that is checked first, as :class:`~wbc_nnabla.images.NoBackgroundError`.
    """
    check_two_sides(gc)
    gc = gc.copy()
    bgm = np.zeros((1, 65), np.float64)
    fgm = np.zeros((1, 65), np.float64)
    # GrabCut's k-means start draws from OpenCV's global RNG: seed it so the mask
    # depends on the image only (the same crop always gives the same mask)
    cv2.setRNGSeed(0)
    cv2.grabCut(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), gc, None, bgm, fgm, GRABCUT_ITERS,
                cv2.GC_INIT_WITH_MASK)
    m = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    # an opening of 0.15 r_n cuts thin bridges to touching red cells and platelets
    k = max(1, int(round(0.15 * rw)))
    se = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    m = (cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN, se) > 0) | nuc_w
    lab, _ = ndi.label(m)
    m = np.isin(lab, np.unique(lab[nuc_w]))
    return ndi.binary_fill_holes(m | hull_w)


def check_two_sides(gc: np.ndarray) -> np.ndarray:
    """``gc`` (GrabCut seeds, uint8 ``(H, W)`` of ``cv2.GC_*``) when both sides have a sample, else
    :class:`~wbc_nnabla.images.NoBackgroundError`: background = ``GC_BGD`` or ``GC_PR_BGD``, WBC =
    ``GC_FGD`` or ``GC_PR_FGD`` (what ``cv2.grabCut`` asserts, ``!bgdSamples.empty() &&
    !fgdSamples.empty()``)."""
    background = int(((gc == cv2.GC_BGD) | (gc == cv2.GC_PR_BGD)).sum())
    if background == 0 or background == gc.size:
        side = "background" if background == 0 else "WBC"
        raise NoBackgroundError(f"no two sides: the nucleus and its reach cover the whole image, leaving GrabCut no "
                                f"{side} sample; a blank, very dark or colour-inverted image?")
    return gc


def has_cytoplasm_ring(stained: np.ndarray, hull_w: np.ndarray, d: np.ndarray, rw: float) -> bool:
    """Whether a stained ring surrounds the nucleus hull (a wide cytoplasm is there).

    stained: bool ``(H, W)``, stained pixels (``> t_low``).
    hull_w: bool ``(H, W)``, the nucleus hull (:func:`convex_hull`).
    d: float ``(H, W)``, distance in pixels to the hull.
    rw: the hull's :func:`equivalent_radius` ``r_n`` in pixels.

    Looks at the ring ``RING_INNER * r_n < d <= RING_OUTER * r_n`` (``d``: distance
    to the hull, px) in 8 angular sectors: stained (``> t_low``) share >= RING_MEAN
    overall and >= RING_MIN in every sector. On pbc6, neutrophils whose mask lost the
    cytoplasm score 0.7-0.9 / >= 0.35; lymphocytes and basophils (thin or no
    cytoplasm, red cells touching on one side) <= 0.45 / ~0.
    """
    ring = (d > RING_INNER * rw) & (d <= RING_OUTER * rw)
    yy, xx = np.nonzero(ring)
    if len(yy) == 0:
        return False
    cy, cx = ndi.center_of_mass(hull_w)
    sector = ((np.arctan2(yy - cy, xx - cx) + np.pi) / (2 * np.pi) * 8).astype(int) % 8
    st = stained[yy, xx].astype(float)
    share = np.bincount(sector, st, 8) / np.maximum(np.bincount(sector, minlength=8), 1)
    return bool(st.mean() >= RING_MEAN and share.min() >= RING_MIN)


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    return lab == (np.argmax(ndi.sum(mask, lab, np.arange(1, n + 1))) + 1)


def segment_wbc(rgb: np.ndarray, centre: Optional[Tuple[float, float]] = None
                ) -> Tuple[np.ndarray, np.ndarray]:
    """WBC and nucleus masks (bool (H, W) each) of the cell nearest ``centre``.

    centre: ``(x, y)`` in pixels, default the image centre. Method (section
    II.3, dataset ①; details in docs/cells.md): nuclei are the top class of a
    three-class Otsu split of :func:`violet` (dark and blue); the nucleus nearest the centre plus its
    lobes sets the scale ``r_n``; GrabCut seeded from the nucleus, limited to
    ``CELL_REACH * r_n`` around it, separates the cytoplasm from red cells and
    background; an opening of ``0.15 r_n`` cuts bridges; holes are filled.
    An empty mask means no nucleus was found. An image without two sides raises
    :class:`~wbc_nnabla.images.NoBackgroundError` (no bright background,
    :func:`wbc_nnabla.images.check_background`; a nucleus hull over more than
    :data:`MAX_NUCLEUS_BORDER` of the border, :func:`check_border`; seeds without a
    background or WBC sample, :func:`check_two_sides`), never ``cv2.error``.
    """
    images.check_background(images.check_rgb(rgb))
    h, w = rgb.shape[:2]
    if centre is None:
        centre = (w / 2.0, h / 2.0)
    small, f = reduce(rgb)
    if f >= 1.0:
        return _segment(rgb, centre)
    m, nuc = _segment(small, (centre[0] * f, centre[1] * f))
    up = lambda a: cv2.resize(a.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_LINEAR) > 127
    return _largest(up(m)), up(nuc)


def wbc_mask(rgb: np.ndarray, centre: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """WBC (nucleus + cytoplasm) of the cell nearest the image centre, bool ``(H, W)``.

    One connected region with holes filled (section II.3, dataset ①). See
    :func:`segment_wbc` for the method; all False when no nucleus is found;
    :class:`~wbc_nnabla.images.NoBackgroundError` for an image without two sides.
    """
    return segment_wbc(rgb, centre)[0]


def remove_background(rgb: np.ndarray, mask: Optional[np.ndarray] = None,
                      fill: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """Dataset ① image (section II.3): everything outside the WBC mask set to ``fill``.

    rgb: RGB uint8 ``(H, W, 3)``.
    mask: bool ``(H, W)`` (computed with :func:`wbc_mask` when None).
    fill: RGB colour of the removed background.

    Returns a new RGB uint8 array.
    """
    images.check_rgb(rgb)
    if mask is None:
        mask = wbc_mask(rgb)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != rgb.shape[:2]:
        raise InputError(f"mask shape {mask.shape} does not match image shape {rgb.shape[:2]}")
    out = rgb.copy()
    out[~mask] = np.asarray(fill, dtype=np.uint8)
    return out


# ----------------------------------------------------------------------------- overlays


def overlay(rgb: np.ndarray, mask: np.ndarray, nucleus: Optional[np.ndarray] = None,
            size: Optional[int] = None) -> np.ndarray:
    """RGB uint8 copy of ``rgb`` with the WBC mask outline (green) and nucleus (blue).

    size: when given, the overlay is resized to ``size`` x ``size`` pixels
    (a gallery tile).
    """
    images.check_rgb(rgb)
    o = rgb.copy()
    th = max(1, max(rgb.shape[:2]) // 150)
    for m, col in ((mask, (0, 160, 0)), (nucleus, (0, 0, 255))):
        if m is None:
            continue
        cs, _ = cv2.findContours(np.asarray(m).astype(np.uint8), cv2.RETR_EXTERNAL,
                                 cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(o, cs, -1, col, th)
    if size:
        o = cv2.resize(o, (int(size), int(size)), interpolation=cv2.INTER_AREA)
    return o


def contact_sheet(tiles: Sequence[np.ndarray], columns: int = 8) -> np.ndarray:
    """Tiles of equal shape (RGB uint8) laid out in rows of ``columns``; blank (white) padding."""
    if not tiles:
        raise InputError("contact_sheet needs at least one tile")
    tiles = list(tiles)
    blank = np.full_like(tiles[0], 255)
    while len(tiles) % columns:
        tiles.append(blank)
    return np.vstack([np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)])


# ----------------------------------------------------------------------------- many images: segment, locate

#: Side in pixels of a tile of the ``segment`` gallery, and tiles per row.
GALLERY_TILE, GALLERY_COLUMNS = 160, 8


def _unique_stems(paths: Sequence[Path]) -> None:
    """Refuse two images that would write the same ``<stem>.png`` mask."""
    stems: dict = {}
    for p in paths:
        if p.stem in stems:
            raise InputError(f"{p} and {stems[p.stem]} would both write {p.stem}.png; segment them separately")
        stems[p.stem] = p


def segment_images(inputs: Sequence, out, gallery: int = 48, overwrite: bool = False) -> dict:
    """WBC masks of many single-cell crops, written into the folder ``out`` (``wbc-nnabla segment``).

    inputs: image files and/or folders (searched recursively, :func:`wbc_nnabla.images.image_files`).
    out: output folder, never inside an input folder; written whole in one rename
        (:func:`wbc_nnabla.outputs.atomic_dir`, with the ``segment`` marker). An existing
        folder is replaced only with ``overwrite`` and when it is empty or an
        earlier ``segment`` output (:func:`wbc_nnabla.outputs.check_output_folder`).
    gallery: overlay (:func:`overlay`, :data:`GALLERY_TILE` px tiles) of a seeded
        sample of ``gallery`` cells stratified by sub-folder, in ``out/gallery.png``
        (0: none).

    Writes one mask per image, ``out/<stem>.png`` (uint8: 0 outside, 255 WBC;
    :func:`segment_wbc`); two inputs with the same stem are refused. An image whose
    mask fails for want of two sides (:class:`~wbc_nnabla.images.NoBackgroundError`:
    blank, very dark, colour-inverted) gets no mask: it is listed in ``out/failed.csv``
    (``image, error``) and logged; when every image fails, nothing is written and the
    error names the first. Any other bad image stops the run, naming it. Returns
    ``dict(out, images, empty, failed, gallery, gallery_images)``: the folder, the
    number of masks, how many are empty (no nucleus found), how many failed, the
    gallery path (None without one) and the number of cells it shows.
    """
    out = Path(out)
    if gallery < 0:
        raise InputError(f"gallery must be >= 0 cells (0: none), got {gallery}")
    paths = images.image_files(inputs)
    outputs.check_not_inside(out, images.image_folders(inputs))
    _unique_stems(paths)
    replace = outputs.check_output_folder(out, "segment", overwrite, paths)
    # the gallery shows a seeded sample stratified by sub-folder, not the first N files
    # (a class-sorted folder would show one class only)
    shown = set(sampling.shuffled_sample([p.parent.name for p in paths], gallery, 0).tolist()) \
        if gallery > 0 else set()
    with outputs.atomic_dir(out, overwrite=replace, command="segment") as tmp:
        tiles, empty, failed = _write_masks(tmp, paths, shown)
        if tiles:
            images.write_image(tmp / "gallery.png", contact_sheet([tiles[i] for i in sorted(tiles)], GALLERY_COLUMNS))
    return dict(out=out, images=len(paths) - len(failed), empty=empty, failed=len(failed),
                gallery=out / "gallery.png" if tiles else None, gallery_images=len(tiles))


#: Columns of ``segment``'s ``failed.csv``: the image, why its mask could not be made.
FAILED_COLUMNS = ("image", "error")


def _write_masks(tmp: Path, paths: Sequence[Path], shown: set) -> Tuple[dict, int, List[Tuple[str, str]]]:
    """Write each image's mask into ``tmp``: (gallery tiles by index, empty masks, failed ``(image, error)``)."""
    tiles, empty, failed = {}, 0, []
    for i, p in enumerate(paths):
        try:
            rgb = images.read_rgb(p)
            mask, nucleus = segment_wbc(rgb)
        except NoBackgroundError as e:
            failed.append((str(p), str(images.naming(e, p))))
            log.warning("%s", failed[-1][1])
            continue
        empty += int(not mask.any())
        images.write_image(tmp / f"{p.stem}.png", mask.astype(np.uint8) * 255)
        if i in shown:
            tiles[i] = overlay(rgb, mask, nucleus, size=GALLERY_TILE)
    if failed and len(failed) == len(paths):
        raise NoBackgroundError(f"no mask could be made: all {len(paths)} image(s) lack two sides; first: "
                                f"{failed[0][1]}")
    if failed:
        pd.DataFrame(failed, columns=list(FAILED_COLUMNS)).to_csv(tmp / "failed.csv", index=False,
                                                                   lineterminator="\n")
        log.warning("%d of %d masks failed (no two sides), listed in failed.csv", len(failed), len(paths))
    return tiles, empty, failed
