"""Stain evidence and nuclei: which pixels are nucleus, stained or slide, and which nuclear
fragments make one WBC's nucleus.

The first steps of the WBC mask and of WBC location (section II.3 of Sasaki et al. (2020);
docs/cells.md, steps 1-3): :func:`violet` (nucleus evidence) split in three classes by
:func:`otsu3`, :func:`stained_mask` (not plasma), the lobes of one nucleus grouped
(:func:`nucleus_group`, :func:`group_fragments`), and the check that the nucleus found stands
on a background (:func:`check_border`: a colour-inverted image has its slide in the nucleus
class). Used by :mod:`~wbc_nnabla.segmentation` (masks) and :mod:`~wbc_nnabla.locating`
(fields); split from :mod:`~wbc_nnabla.segmentation`, which re-exports every name here.

Images are RGB ``uint8`` ``(H, W, 3)``; masks ``bool`` ``(H, W)``; ``r_n`` is the radius in
pixels of the disc with the area of the nucleus' convex hull.
"""
from __future__ import annotations

from typing import Optional, Tuple

import cv2
import numpy as np
from scipy import ndimage as ndi

from .images import NoBackgroundError, background_rgb

# Parameters of nucleus grouping, in units of the nucleus radius r_n, so that the method is
# the same at 120 px, 360 px or 750 px crops. See docs/cells.md for how they were chosen.
LOBE_GAP = 1.0        # nucleus fragments (lobes) closer than LOBE_GAP * r_n belong to one cell
STAINED_GAP = 3.0     # ... or closer than STAINED_GAP * r_n with cytoplasm all the way between
MAX_ELONGATION = 1.7  # ... unless joining them makes an elongated pair (two cells side by side)
MAX_SIDE = 512        # images larger than this (px) are first reduced (speed only)
# Stained = not plasma (see stained_mask): optical density above the plasma's median by
# PLASMA_SIGMAS robust standard deviations, by PLASMA_MIN_OD and by STAIN_FRACTION of the
# nucleus' OD.
PLASMA_SIGMAS, PLASMA_MIN_OD, STAIN_FRACTION = 6.0, 0.06, 0.1
#: Largest share of the image's border (its outermost pixels) that the convex hull of a WBC's
#: nucleus may cover in a crop (:func:`check_border`). A nucleus lies inside its cell, which
#: lies inside the crop: its hull reaches the edge only where the crop cuts the cell. Real crops:
#: at most 0.05 (pbc6, 400 cells), 0.13 (Zheng d1, 150 cells); the same crops colour-inverted,
#: whose dark slide becomes the "nucleus": at least 0.29 (0.43 on the demo cells). docs/cells.md.
MAX_NUCLEUS_BORDER = 0.25
#: The same for the largest nucleus of a field (:func:`wbc_nnabla.locating.locate_wbcs`): real
#: BCCD fields at most 0.07 (122 fields), inverted at least 0.19.
MAX_FIELD_BORDER = 0.15


def reduce(rgb: np.ndarray, side: int = MAX_SIDE) -> Tuple[np.ndarray, float]:
    """``(image, f)``: ``rgb`` area-reduced by ``f`` so its longer side is at most ``side`` px (f = 1: as is)."""
    h, w = rgb.shape[:2]
    f = min(1.0, side / max(h, w))
    if f >= 1.0:
        return rgb, 1.0
    return cv2.resize(rgb, (max(8, int(round(w * f))), max(8, int(round(h * f)))), interpolation=cv2.INTER_AREA), f


def border_share(mask: np.ndarray) -> float:
    """Share of the outermost pixels of a bool ``(H, W)`` mask that are set (0 for an empty mask)."""
    ring = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    return float(ring.mean()) if ring.size else 0.0


def check_border(hull: np.ndarray, limit: float = MAX_NUCLEUS_BORDER, what: str = "nucleus") -> None:
    """:class:`~wbc_nnabla.images.NoBackgroundError` when the nucleus hull (bool ``(H, W)``) covers more
    than ``limit`` of the image's border: no background around it (a colour-inverted or dark image)."""
    share = border_share(hull)
    if share > limit:
        raise NoBackgroundError(f"no two sides: the {what} found covers {share:.0%} of the image's border (at "
                                f"most {limit:.0%} in a smear photo): no background around it; a colour-inverted, "
                                f"very dark or blank image?")


def darkness(rgb: np.ndarray, background: Optional[np.ndarray] = None) -> np.ndarray:
    """Stain density ``1 - G / G_background`` in [0, 1] (float32 (H, W)).

    Both eosin and the azure/methylene-blue stains of MGG absorb green, so the
    green channel relative to the slide background orders the pixels as
    background (0) < red cells and cytoplasm (0.2-0.5) < nuclei (0.6-0.9),
    whatever the tint of the background (cream, yellow, white).
    """
    bg = background_rgb(rgb) if background is None else background
    g = cv2.GaussianBlur(rgb[..., 1].astype(np.float32), (0, 0), 1.0)
    return np.clip(1.0 - g / max(float(bg[1]), 1.0), 0.0, 1.0)


def violet(rgb: np.ndarray, background: Optional[np.ndarray] = None) -> np.ndarray:
    """Nucleus evidence in [0, 1] (float32 (H, W)): ``(darkness + blueness) / 2``.

    blueness = ``((B - R) - (B - R)_background) / 255`` clipped at 0. Nuclei
    are both dark and bluer than the background; red cells are redder. Dark
    alone fails on pale fields (BCCD nuclei are light blue-violet, barely
    darker than red cells); blue alone fails on stains with purple-red nuclei
    (Zheng et al.'s rapid stain). The sum separates both.
    """
    bg = background_rgb(rgb) if background is None else background
    f = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), 1.0)
    blue = np.clip(((f[..., 2] - f[..., 0]) - (bg[2] - bg[0])) / 255.0, 0.0, 1.0)
    return 0.5 * (darkness(rgb, bg) + blue)


def otsu3(values: np.ndarray, bins: int = 128) -> Tuple[float, float]:
    """Two thresholds ``(t_low, t_high)`` splitting values in [0, 1] into three classes.

    Three-class Otsu (maximum between-class variance). Written here because
    OpenCV only has the two-class version and scikit-image is not a dependency.
    """
    h, e = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0, 1))
    p = h / max(h.sum(), 1)
    c = (e[:-1] + e[1:]) / 2
    w = np.cumsum(p)
    mu = np.cumsum(p * c)
    i = np.arange(bins)[:, None]
    j = np.arange(bins)[None, :]
    w0, w1, w2 = w[i], w[j] - w[i], 1 - w[j]
    m0, m1, m2 = mu[i], mu[j] - mu[i], mu[-1] - mu[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        sb = m0 ** 2 / w0 + m1 ** 2 / w1 + m2 ** 2 / w2
    sb[~((j > i) & (w0 > 1e-9) & (w1 > 1e-9) & (w2 > 1e-9))] = -1
    a, b = np.unravel_index(np.argmax(sb), sb.shape)
    return float(e[a + 1]), float(e[b + 1])


def optical_density(rgb: np.ndarray, background: Optional[np.ndarray] = None) -> np.ndarray:
    """Optical density relative to the slide background, float32 ``(H, W, 3)`` >= 0.

    ``OD_c = log((bg_c + 1) / (I_c + 1))`` per RGB channel after a 1-px Gaussian
    (Beer-Lambert: proportional to the amount of each dye). Relative to the image's
    own background, so independent of the illumination and of the background tint.
    """
    bg = background_rgb(rgb) if background is None else background
    f = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), 1.0)
    return np.clip(np.log((np.asarray(bg, np.float32) + 1.0) / (f + 1.0)), 0.0, None)


def stained_mask(rgb: np.ndarray, nucleus: Optional[np.ndarray] = None,
                 background: Optional[np.ndarray] = None) -> np.ndarray:
    """Pixels that are not plasma / slide, bool ``(H, W)``, from the image's own statistics.

    rgb: RGB uint8 ``(H, W, 3)``; nucleus: bool ``(H, W)``, the WBC's nucleus (the
    stain reference; optional); background: slide colour (3,), default estimated.

    The norm of :func:`optical_density` must exceed the plasma's (the brightest 20 %
    of pixels) median by ``PLASMA_SIGMAS`` robust standard deviations (1.4826 x MAD),
    by ``PLASMA_MIN_OD``, and, when ``nucleus`` is given, by ``STAIN_FRACTION`` of the
    nucleus' median OD above the plasma. All three are relative to the image itself,
    so a hue, saturation or stain-strength change moves them with the image. On pbc6 a
    pale neutrophil cytoplasm ring is at 0.16-0.21 of the nucleus OD (medians, 3 cells),
    the plasma halo round a basophil at 0.03-0.07 (3 cells); Zheng d1 cytoplasm 0.18-0.32
    (2 cells).
    """
    bg = background_rgb(rgb) if background is None else background
    odn = np.sqrt((optical_density(rgb, bg) ** 2).sum(-1))
    lum = rgb.astype(np.float32).sum(-1)
    plasma = odn[lum >= np.percentile(lum, 80)]
    med = float(np.median(plasma))
    sigma = 1.4826 * float(np.median(np.abs(plasma - med)))
    t = med + max(PLASMA_SIGMAS * sigma, PLASMA_MIN_OD)
    if nucleus is not None and nucleus.any():
        t = max(t, med + STAIN_FRACTION * (float(np.median(odn[nucleus])) - med))
    return odn > t


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of a bool ``(H, W)`` mask, bool ``(H, W)`` (all False for an empty mask)."""
    pts = cv2.findNonZero(mask.astype(np.uint8))
    out = np.zeros(mask.shape, np.uint8)
    if pts is not None:
        cv2.fillConvexPoly(out, cv2.convexHull(pts), 1)
    return out > 0


def equivalent_radius(mask: np.ndarray) -> float:
    """Radius in pixels of the disc with the mask's area (at least 1 pixel of area is assumed)."""
    return float(np.sqrt(max(mask.sum(), 1) / np.pi))


def _elongation(mask: np.ndarray) -> float:
    """Long / short side of the minimum-area rectangle around ``mask`` (>= 1)."""
    pts = cv2.findNonZero(mask.astype(np.uint8))
    (_, _), (a, b), _ = cv2.minAreaRect(pts)
    return float(max(a, b) / max(min(a, b), 1.0))


def _joins(group: np.ndarray, comp: np.ndarray, gap: np.ndarray,
           stained: Optional[np.ndarray] = None) -> bool:
    """Whether nuclear fragment ``comp`` is a lobe of ``group``.

    Yes when it lies within ``LOBE_GAP * r_n`` of the group (``gap`` is the
    distance map to the group), or within ``STAINED_GAP * r_n`` with stained
    pixels (``stained``, the cytoplasm) all along the shortest line between
    them; and the union stays compact (elongation <= MAX_ELONGATION; two
    neighbouring cells side by side are ~2).
    """
    r = equivalent_radius(convex_hull(group))
    g = gap.copy()
    g[~comp] = np.inf
    dmin = float(g.min())
    if dmin > LOBE_GAP * r:
        if stained is None or dmin > STAINED_GAP * r:
            return False
        py, px = np.unravel_index(np.argmin(g), g.shape)
        _, (iy, ix) = ndi.distance_transform_edt(~group, return_indices=True)
        qy, qx = iy[py, px], ix[py, px]
        t = np.linspace(0, 1, max(2, int(dmin) + 2))
        ys = np.round(py + t * (qy - py)).astype(int)
        xs = np.round(px + t * (qx - px)).astype(int)
        if not stained[ys, xs].all():
            return False
    return _elongation(group | comp) <= MAX_ELONGATION


def nucleus_group(nuclear: np.ndarray, centre: Tuple[float, float],
                   stained: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """Nucleus of the cell nearest ``centre`` (x, y): the nuclear fragment nearest the
    centre plus the fragments (lobes) within ``LOBE_GAP * r_n`` of it."""
    lab, n = ndi.label(nuclear)
    if n == 0:
        return None
    idx = np.arange(1, n + 1)
    areas = ndi.sum(nuclear, lab, idx)
    big = idx[areas >= max(0.15 * areas.max(), 10)]  # drop platelets, granules and noise
    _, (iy, ix) = ndi.distance_transform_edt(~np.isin(lab, big), return_indices=True)
    h, w = nuclear.shape
    cx = min(max(int(round(centre[0])), 0), w - 1)
    cy = min(max(int(round(centre[1])), 0), h - 1)
    group = lab == lab[iy[cy, cx], ix[cy, cx]]
    changed = True
    while changed:
        changed = False
        d = ndi.distance_transform_edt(~group)
        for k in big:
            comp = lab == k
            if not (comp & group).any() and _joins(group, comp, d, stained):
                group |= comp
                changed = True
    return group




def group_fragments(nuclear: np.ndarray, min_share: float = 0.15,
                     stained: Optional[np.ndarray] = None) -> list:
    """Nuclear fragments grouped into cells, largest first: list of bool (H, W) masks.

    A group starts from the largest free fragment and takes in the fragments
    within ``LOBE_GAP * r_n`` of it (the lobes of a segmented neutrophil are
    separate dark regions). Fragments smaller than ``min_share`` of the
    largest (platelets, granules, noise) are ignored.
    """
    lab, n = ndi.label(nuclear)
    if n == 0:
        return []
    areas = ndi.sum(nuclear, lab, np.arange(1, n + 1))
    order = [k + 1 for k in np.argsort(-areas) if areas[k] >= max(min_share * areas.max(), 10)]
    free = list(order)
    groups = []
    while free:
        group = lab == free.pop(0)
        changed = True
        while changed and free:
            changed = False
            d = ndi.distance_transform_edt(~group)
            for k in list(free):
                comp = lab == k
                if _joins(group, comp, d, stained):
                    group |= comp
                    free.remove(k)
                    changed = True
        groups.append(group)
    return groups


