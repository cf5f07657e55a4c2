"""Scale of the WBC in a crop, and a lab's crops re-framed to the training lab's scale.

Labs crop their cells differently and photograph them at other magnifications: a
neutrophil fills a median 0.38 of the side of a PBC crop but 0.60 of a Zheng 2018 crop
(measured with :func:`wbc_share`; docs/research/cross_site_log.md), so the same cell reaches the
network 1.6 times larger. The paper's crop is fixed in pixels (750 px at 100x oil,
section II.3), so within one lab the scale is constant; across labs it is not.

The correction is per site, not per cell: the *median* WBC share of a site's cells
(unlabelled) is compared with the training cells' median, and every crop of the site is
zoomed by one factor (:func:`reframe`). Cell-by-cell normalisation would erase the size
difference between classes the model relies on (PBC median share: Lymph 0.28, Mono 0.42).
nnabla-free.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import cv2
import numpy as np

from .. import fileio, sampling, segmentation
from ..errors import InputError
from . import stain
from .settings import DEFAULT_PAD, LEGACY_PAD, PADS

#: Cells :func:`median_share` segments at most (a seeded sample).
SHARE_SAMPLE = 200
#: Images are measured at most this many pixels wide (the share does not depend on it; speed).
MEASURE_SIDE = 128
#: Fewest cells with a WBC found for a median share to count.
MIN_SHARE_CELLS = 20
#: Cells ``predict`` measures for :func:`scale_hint` (a seeded sample; about 1 s).
HINT_SAMPLE = 50
#: :func:`scale_hint` names the scale when the site's median WBC share and the training cells'
#: differ by more than this factor: the paper's Magnification (up to 1.1) times the spread of the
#: median between seeded 50-cell samples of one lab (pbc6, 20 samples: 0.363-0.394, x1.08).
HINT_RATIO = 1.2


def wbc_share(rgb: np.ndarray) -> float:
    """Equivalent diameter of the WBC (:func:`wbc_nnabla.segmentation.wbc_mask`) over the crop's longer side.

    rgb: uint8 ``(H, W, 3)``. Returns NaN when no WBC is found; an image without two sides raises
    :class:`~wbc_nnabla.images.NoBackgroundError` (:func:`wbc_nnabla.segmentation.segment_wbc`).
    """
    h, w = rgb.shape[:2]
    f = min(1.0, MEASURE_SIDE / max(h, w))
    small = rgb if f >= 1.0 else cv2.resize(rgb, (max(8, round(w * f)), max(8, round(h * f))),
                                            interpolation=cv2.INTER_AREA)
    mask = segmentation.wbc_mask(small)
    if not mask.any():
        return float("nan")
    return 2.0 * segmentation.equivalent_radius(mask) / max(small.shape[:2])


def _share_of(path: str, skip_bad: bool) -> float:
    """:func:`wbc_share` of an image file; NaN for a bad one (unreadable, or without two sides) with
    ``skip_bad``, else its :class:`~wbc_nnabla.images.ImageReadError` naming the file."""
    try:
        return wbc_share(fileio.read_rgb(path))
    except fileio.ImageReadError as e:
        if skip_bad:
            return float("nan")
        raise fileio.naming(e, path) from None


def median_share(paths: Sequence[str], n: int = SHARE_SAMPLE, seed: int = 0,
                 skip_bad: bool = False) -> Dict[str, float]:
    """Median :func:`wbc_share` of a seeded sample of at most ``n`` cell images.

    Returns ``median``, ``q10``, ``q90`` (shares), ``n`` (cells measured) and ``found``
    (cells with a WBC). Raises :class:`~wbc_nnabla.errors.InputError` when fewer than
    :data:`MIN_SHARE_CELLS` WBCs are found. A bad image (unreadable, or without two sides:
    blank, very dark, colour-inverted) raises its :class:`~wbc_nnabla.images.ImageReadError`
    naming the file, or with ``skip_bad`` counts as a cell without a WBC.
    """
    rows = sampling.shuffled_sample([""] * len(paths), min(int(n), len(paths)), seed)
    shares = np.array([_share_of(paths[int(i)], skip_bad) for i in rows])
    found = shares[np.isfinite(shares)]
    if len(found) < MIN_SHARE_CELLS:
        raise InputError(f"WBC scale: a WBC was found in {len(found)} of {len(shares)} cells; at least "
                         f"{MIN_SHARE_CELLS} are needed to measure a site's scale")
    q10, med, q90 = np.quantile(found, [0.1, 0.5, 0.9])
    return dict(median=round(float(med), 4), q10=round(float(q10), 4), q90=round(float(q90), 4),
                n=int(len(shares)), found=int(len(found)))


def check_pad(pad: str) -> str:
    """``pad`` if it is one of :data:`wbc_nnabla.sites.settings.PADS`, else an :class:`InputError` naming them."""
    if pad not in PADS:
        raise InputError(f"pad must be one of {', '.join(PADS)}, got {pad!r}")
    return pad


def reframe(rgb: np.ndarray, zoom: float, pad: str = DEFAULT_PAD) -> np.ndarray:
    """The crop ``rgb`` (uint8 ``(H, W, 3)``) seen ``zoom`` times wider around its centre.

    zoom > 1: the square of side ``zoom * max(H, W)`` centred on the crop, the band outside the
    crop filled as ``pad`` says (:data:`wbc_nnabla.sites.settings.PADS`); the cell then fills ``1 / zoom``
    of what it did. On a crop that hugs its cell, ``reflect`` mirrors the cell itself into the band.
    zoom < 1: a centred square crop (``pad`` plays no part).
    """
    if not (np.isfinite(zoom) and zoom > 0):
        raise InputError(f"zoom must be a positive number, got {zoom!r}")
    check_pad(pad)
    h, w = rgb.shape[:2]
    side = max(1, int(round(max(h, w) * float(zoom))))
    if pad == "background":
        fill = np.round(segmentation.background_rgb(rgb)).astype(int)
        return segmentation.crop_square(rgb, w / 2.0, h / 2.0, side, pad_mode="constant", fill=fill)[0]
    return segmentation.crop_square(rgb, w / 2.0, h / 2.0, side, pad_mode=pad)[0]


def site_zoom(site: Dict[str, float], training: Dict[str, float]) -> float:
    """The factor :func:`reframe` applies to a site's crops: site median share / training median share."""
    return round(float(site["median"]) / float(training["median"]), 4)


def model_view(meta: dict) -> Optional[Callable]:
    """What a model asks of each crop, as ``adapt`` set it: the re-framing to the training scale
    (``meta['zoom']``, ``meta['pad']``), then the colour standardisation the model was adapted with
    (``meta['stain']``: ``method`` and ``reference``, :func:`wbc_nnabla.sites.stain.standardiser`), as a
    function uint8 ``(H, W, 3)`` -> same; None when the model takes crops as they are."""
    zoom = float(meta.get("zoom", 1.0))
    pad = meta.get("pad", LEGACY_PAD)
    frame = None if zoom == 1.0 else (lambda rgb: reframe(rgb, zoom, pad))
    stored = meta.get("stain")
    return then(frame, stain.standardiser(stored["method"], stored["reference"]) if stored else None)


def then(first: Optional[Callable], second: Optional[Callable]) -> Optional[Callable]:
    """``second(first(x))`` as one function; either may be None (skipped); None when both are."""
    if first is None or second is None:
        return first or second
    return lambda rgb: second(first(rgb))


def scale_hint(meta: dict, paths: Sequence[str], seed: int = 0) -> Optional[Dict[str, object]]:
    """The WBC scale of crops a model meets, when it is not the model's: for ``predict``'s warning.

    meta: the model's description (``wbc_share`` stored by training, ``zoom`` by ``adapt``); paths:
    the cells' image files. Returns ``training``, ``site`` (:func:`median_share` records of at most
    :data:`HINT_SAMPLE` cells) and ``zoom`` (what ``adapt`` would apply) when the model takes crops
    as they are (zoom 1) and the two medians differ by more than :data:`HINT_RATIO`; else None
    (also when the model stores no scale or too few WBCs are found to measure one). A hint only:
    a bad image among the cells counts as one without a WBC, never stops the caller.
    """
    training = meta.get("wbc_share")
    if not training or float(meta.get("zoom", 1.0)) != 1.0 or not len(paths):
        return None
    try:
        site = median_share(list(paths), n=HINT_SAMPLE, seed=seed, skip_bad=True)
    except InputError:
        return None
    zoom = site_zoom(site, training)
    return dict(training=training, site=site, zoom=zoom) if max(zoom, 1.0 / zoom) > HINT_RATIO else None
