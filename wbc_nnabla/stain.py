"""Colour standardisation of cell images before inference (optional; measured in docs/cross_site.md).

Two classical corrections of another lab's stain and camera, applied to each cell image
before it is resized for the network (``wbc-nnabla predict --stain``):

* ``white-balance``: the image's background (plasma, the brightest quarter of its pixels)
  is mapped to the reference's background colour by one gain per channel (von Kries);
* ``reinhard``: Reinhard et al. (2001) colour transfer, each CIE L*a*b* channel shifted
  and scaled so its mean and standard deviation match the reference's.

The reference is the mean of the same statistics over a set of cells, normally the
model's training images (:func:`reference`). Published work finds such standardisation
can hurt as well as help (Tellez et al. 2019), hence optional and off by default.
nnabla-free (OpenCV and NumPy).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import cv2
import numpy as np

from . import fileio, sampling
from .errors import InputError
from .recipe import STAIN_METHODS

#: Share of the brightest pixels (by grey level) taken as background.
BACKGROUND_SHARE = 0.25
#: Cells :func:`reference` reads at most (a seeded sample).
REFERENCE_IMAGES = 960


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


def reference(paths: Sequence[str], max_images: int = REFERENCE_IMAGES, seed: int = 0) -> Dict[str, list]:
    """The standardisation target of a set of cell images (e.g. a model's ``train.csv``).

    A seeded sample of at most ``max_images`` images; returns ``background`` (RGB 0-255, the
    mean of :func:`background_colour`) and ``lab`` (``[[mean L, a, b], [std L, a, b]]``, the
    mean of :func:`lab_statistics`), as JSON-able lists.
    """
    if not len(paths):
        raise InputError("stain reference: no cell images")
    rows = sampling.shuffled_sample([""] * len(paths), min(max_images, len(paths)), seed)
    images = [fileio.read_rgb(paths[int(i)]) for i in rows]
    return dict(background=np.mean([background_colour(im) for im in images], axis=0).round(3).tolist(),
                lab=np.mean([lab_statistics(im) for im in images], axis=0).round(4).tolist(), n_images=len(images))


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
    target = np.asarray(ref["lab"], np.float32)
    return lambda rgb: reinhard(rgb, target)
