"""Colour standardisation of cell images before inference (optional; measured in docs/cross_site.md).

Two classical corrections of another lab's stain and camera, applied to each cell image
before it is resized for the network (``wbc-nnabla predict --stain``):

* ``white-balance``: the image's background (plasma, the brightest quarter of its pixels)
  is mapped to the reference's background colour by one gain per channel (von Kries);
* ``reinhard``: Reinhard et al. (2001) colour transfer, each CIE L*a*b* channel shifted
  and scaled so its mean and standard deviation match the reference's;
* ``macenko``: stain separation (Macenko et al. 2009): the two stains of a Romanowsky
  stain (the azure/methylene-blue of nuclei, the eosin of granules and red cells) are
  found as the extreme directions of the image's optical densities, and each pixel is
  rebuilt with the reference's stain colours, concentrations and background.

The reference is the mean of the same statistics over a set of cells, normally the
model's training images (:func:`reference`). Published work finds such standardisation
can hurt as well as help (Tellez et al. 2019), hence optional and off by default.
nnabla-free (OpenCV and NumPy).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import cv2
import numpy as np

from .. import fileio, sampling
from ..errors import InputError
from .settings import STAIN_METHODS

#: Share of the brightest pixels (by grey level) taken as background.
BACKGROUND_SHARE = 0.25
#: Cells :func:`reference` reads at most (a seeded sample).
REFERENCE_IMAGES = 960
#: Macenko et al. (2009)'s constants: optical density below which a pixel counts as unstained
#: (beta), the percentile of the angles giving the two stain directions (alpha, in per cent),
#: and the percentile of a stain's concentrations taken as its maximum.
MACENKO_BETA = 0.15
MACENKO_ALPHA = 1.0
MACENKO_MAX_PERCENTILE = 99.0
#: Fewest stained pixels a stain separation is made from; with fewer the image is left as it is.
MACENKO_MIN_PIXELS = 100


def background_colour(rgb: np.ndarray) -> np.ndarray:
    """Median RGB ``(3,)`` float (0-255) of the brightest :data:`BACKGROUND_SHARE` of the pixels of ``(H, W, 3)`` uint8."""
    px = rgb.reshape(-1, 3).astype(np.float32)
    grey = px.mean(axis=1)
    bright = px[grey >= np.quantile(grey, 1.0 - BACKGROUND_SHARE)]
    return np.median(bright, axis=0)


def lab_statistics(rgb: np.ndarray) -> np.ndarray:
    """``(2, 3)`` float: per-channel mean and standard deviation of ``rgb`` (uint8 ``(H, W, 3)``) in L*a*b*."""
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3)
    return np.stack([lab.mean(axis=0), lab.std(axis=0)])


def white_balance(rgb: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``rgb`` (uint8 ``(H, W, 3)``) with its background mapped to ``target`` (RGB, 0-255) by per-channel gains."""
    gain = np.asarray(target, np.float32) / np.maximum(background_colour(rgb), 1.0)
    return np.clip(rgb.astype(np.float32) * gain, 0, 255).round().astype(np.uint8)


def reinhard(rgb: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``rgb`` (uint8 ``(H, W, 3)``) with its L*a*b* mean/std per channel set to ``target`` ``(2, 3)``."""
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    own = lab.reshape(-1, 3)
    mean, std = own.mean(axis=0), np.maximum(own.std(axis=0), 1e-3)
    lab = (lab - mean) / std * target[1] + target[0]
    out = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(out * 255.0, 0, 255).round().astype(np.uint8)


def _optical_density(rgb: np.ndarray, white: np.ndarray) -> np.ndarray:
    """``(H*W, 3)`` optical density of uint8 ``rgb`` against its background ``white`` (RGB 0-255), >= 0."""
    px = rgb.reshape(-1, 3).astype(np.float64)
    return np.maximum(-np.log((px + 1.0) / (np.asarray(white, np.float64) + 1.0)), 0.0)


def stain_vectors(od: np.ndarray) -> Optional[np.ndarray]:
    """The two stain directions ``(2, 3)`` (unit rows: azure first, then eosin) of optical densities
    ``(N, 3)``, Macenko et al. (2009); None when fewer than :data:`MACENKO_MIN_PIXELS` are stained.

    The azure (nuclear, blue-purple) stain absorbs red light more than the eosin does: the
    direction with the larger red share comes first, on any lab's hues.
    """
    fg = od[np.all(od > MACENKO_BETA, axis=1)]
    if len(fg) < MACENKO_MIN_PIXELS:
        return None
    plane = np.linalg.eigh(np.cov(fg.T))[1][:, 1:3]                     # the two main directions
    t = fg @ plane
    phi = np.arctan2(t[:, 1], t[:, 0])
    lo, hi = np.percentile(phi, [MACENKO_ALPHA, 100 - MACENKO_ALPHA])
    v = np.stack([plane @ [np.cos(a), np.sin(a)] for a in (lo, hi)])
    v *= np.where(v.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)          # optical densities are positive
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v if v[0, 0] / v[0].sum() >= v[1, 0] / v[1].sum() else v[::-1].copy()


def macenko_statistics(rgb: np.ndarray) -> Optional[dict]:
    """``white`` (RGB 0-255), ``stains`` ``(2, 3)`` and ``cmax`` ``(2,)`` of uint8 ``(H, W, 3)``; None if unstained."""
    white = background_colour(rgb)
    od = _optical_density(rgb, white)
    v = stain_vectors(od)
    if v is None:
        return None
    conc = np.linalg.lstsq(v.T, od.T, rcond=None)[0]                    # (2, N) concentrations
    return dict(white=white, stains=v, cmax=np.maximum(np.percentile(conc, MACENKO_MAX_PERCENTILE, axis=1), 1e-6))


def macenko(rgb: np.ndarray, target: dict) -> np.ndarray:
    """``rgb`` (uint8 ``(H, W, 3)``) rebuilt with ``target``'s stains, maximum concentrations and white
    (:func:`reference`'s ``macenko``); an image without enough stained pixels is returned as it is."""
    own = macenko_statistics(rgb)
    if own is None:
        return rgb
    od = _optical_density(rgb, own["white"])
    conc = np.linalg.lstsq(own["stains"].T, od.T, rcond=None)[0]
    conc *= (np.asarray(target["cmax"]) / own["cmax"])[:, None]
    out = np.asarray(target["white"], np.float64) * np.exp(-(np.asarray(target["stains"]).T @ conc)).T
    return np.clip(out, 0, 255).round().astype(np.uint8).reshape(rgb.shape)


def reference(paths: Sequence[str], max_images: int = REFERENCE_IMAGES, seed: int = 0) -> Dict[str, list]:
    """The standardisation target of a set of cell images (e.g. a model's ``train.csv``).

    A seeded sample of at most ``max_images`` images; returns ``background`` (RGB 0-255, the
    mean of :func:`background_colour`), ``lab`` (``[[mean L, a, b], [std L, a, b]]``, the
    mean of :func:`lab_statistics`) and ``macenko`` (the mean ``white``, unit ``stains`` and
    ``cmax`` of :func:`macenko_statistics`), as JSON-able lists.
    """
    if not len(paths):
        raise InputError("stain reference: no cell images")
    rows = sampling.shuffled_sample([""] * len(paths), min(max_images, len(paths)), seed)
    images = [fileio.read_rgb(paths[int(i)]) for i in rows]
    stats = [m for m in map(macenko_statistics, images) if m is not None]
    if not stats:
        raise InputError(f"stain reference: none of {len(images)} images has {MACENKO_MIN_PIXELS} stained pixels")
    stains = np.mean([m["stains"] for m in stats], axis=0)
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    return dict(background=np.mean([background_colour(im) for im in images], axis=0).round(3).tolist(),
                lab=np.mean([lab_statistics(im) for im in images], axis=0).round(4).tolist(), n_images=len(images),
                macenko=dict(white=np.mean([m["white"] for m in stats], axis=0).round(3).tolist(),
                             stains=stains.round(5).tolist(),
                             cmax=np.mean([m["cmax"] for m in stats], axis=0).round(5).tolist()))


def standardiser(method: str, ref: Optional[dict]):
    """A function uint8 ``(H, W, 3)`` RGB -> same, for ``method`` (one of :data:`STAIN_METHODS`); None for ``none``."""
    if method not in STAIN_METHODS:
        raise InputError(f"--stain {method!r}: choose one of {', '.join(STAIN_METHODS)}")
    if method == "none":
        return None
    if ref is None:
        raise InputError(f"--stain {method} needs a reference (--stain-reference: the training cells, e.g. the "
                         f"dataset's train.csv)")
    if method == "white-balance":
        target = np.asarray(ref["background"], np.float32)
        return lambda rgb: white_balance(rgb, target)
    if method == "macenko":
        if "macenko" not in ref:
            raise InputError("--stain macenko: the reference has no stain separation (made by an older version; "
                             "compute it again from the training cells)")
        return lambda rgb: macenko(rgb, ref["macenko"])
    target = np.asarray(ref["lab"], np.float32)
    return lambda rgb: reinhard(rgb, target)
