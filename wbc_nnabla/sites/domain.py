"""Domain-shift check: how far a smear's cells are from the cells a model was trained on.

A model trained in one lab gives confident wrong answers on another lab's
stain and camera (docs/inference.md, "Domain-shift warning"). This module
describes what the training cells look like, and measures each predicted cell
against that description, so a lab knows when not to trust the numbers.
Not in Sasaki et al. (2020), whose model is used in the lab that trained it.

* :func:`descriptors`: a handful of colour/appearance numbers per cell image
  (:data:`DESCRIPTORS`), computed from the network input itself (RGB in
  [0, 1]), after an area resize to :data:`DESCRIPTOR_SIZE` pixels so that the
  numbers do not depend on the network's input size;
* :func:`reference`: their summary over a model's training cells (mean,
  correlation, per-cell threshold), stored in the model's metadata under
  :data:`META_KEY` by training;
* :func:`distance`: a cell's Mahalanobis distance to that reference (with a
  noise floor :data:`FLOOR` per descriptor); a cell is
  *outside* beyond the reference's ``cell_threshold`` (the
  :data:`CELL_QUANTILE` quantile of the training cells' own distances);
* :func:`summarise`: per run and per smear, the median distance and the share
  of cells outside; a smear is outside the training domain when that share
  exceeds :data:`SMEAR_SHARE` (measured by ``benchmarks/bench_domain.py``,
  docs/research/benchmarks_log.md). It describes the predictions CSV's own columns, so it is
  defined by the file's owner, :mod:`wbc_nnabla.predictions_domain` (with
  :func:`unavailable`, :func:`outside_smears`, :func:`smear_is_outside`,
  :data:`SMEAR_SHARE`, :data:`WARNING`), and re-exported here: scoring and the
  reports read it there, never this module.

nnabla-free (NumPy and OpenCV only): it works for every backend.
"""
from __future__ import annotations

from typing import List, Sequence

import cv2
import numpy as np

from ..errors import WBCError
# The summary of the predictions CSV's domain columns belongs to the predictions file's owner;
# re-exported here, where it was defined before.
from ..predictions_domain import (SMEAR_SHARE, WARNING, outside_smears, smear_is_outside,  # noqa: F401
                                 summarise, unavailable)

#: Key of the reference in a model's description (``wbc_nnabla.json`` of the ``.nnp``, ONNX metadata).
META_KEY = "domain_reference"
#: Key of the references of a site's labelled cells the model was fine-tuned on (``finetune``): a list,
#: one per fine-tuning. A cell like those cells is inside the model's domain too (:func:`outside_all`).
SITE_KEY = "domain_site_references"
FORMAT = "wbc_nnabla-domain/1"
#: Side (pixels) the network input is area-resized to before the descriptors are computed.
DESCRIPTOR_SIZE = 32
#: Per-cell descriptors, in order. ``od`` is optical density ``-log10((255 I + 1) / 256)`` per
#: RGB channel; ``bright`` the mean of R, G, B in [0, 1]; ``stain_share`` the share of a channel
#: in the optical density of the darkest quarter of pixels (the stained nucleus/granules).
DESCRIPTORS = ("od_mean_R", "od_mean_G", "od_mean_B", "od_sd_R", "od_sd_G", "od_sd_B",
               "bright_p90", "bright_p10", "stain_share_R", "stain_share_G")
#: A cell is outside when its distance exceeds this quantile of the training cells' distances.
CELL_QUANTILE = 0.99
#: Ridge added to each descriptor's variance (as a share of it) before the covariance is inverted.
RIDGE = 0.01
#: Noise floor of every descriptor (its units: optical density, brightness in [0, 1], share):
#: added as variance ``FLOOR ** 2``, so a descriptor that hardly varies over the training cells
#: (a background made white, a very uniform lamp) does not turn a 1-grey-level change into a
#: huge distance. 0.005 is about 1.3 grey levels of brightness.
FLOOR = 0.005
#: Fewest training cells a reference is made from (training with fewer stores none).
MIN_CELLS = 20


class DomainError(WBCError, ValueError):
    """A domain reference that is malformed, or descriptors of the wrong shape."""


# ----------------------------------------------------------------------------- descriptors


def _small(x: np.ndarray) -> np.ndarray:
    """``(N, 3, S, S)`` inputs -> ``(N, D, D, 3)`` float32 in [0, 1], area-resized to :data:`DESCRIPTOR_SIZE`."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != 3:
        raise DomainError(f"expected network inputs (N, 3, S, S), got shape {x.shape}")
    scale = np.float32(1 / 255) if x.dtype == np.uint8 else np.float32(1)
    d = DESCRIPTOR_SIZE
    out = np.empty((len(x), d, d, 3), np.float32)
    for i, img in enumerate(x):
        hwc = np.ascontiguousarray(img.transpose(1, 2, 0), dtype=np.float32) * scale
        out[i] = hwc if hwc.shape[:2] == (d, d) else cv2.resize(
            hwc, (d, d), interpolation=cv2.INTER_AREA if hwc.shape[0] > d else cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0)


def descriptors(x: np.ndarray) -> np.ndarray:
    """Colour/appearance descriptors ``(N, len(DESCRIPTORS))`` float64 of network inputs.

    x: ``(N, 3, S, S)`` RGB, float in [0, 1] (what every backend receives,
        :func:`wbc_nnabla.predictor.preprocess`) or uint8 in [0, 255] (training's loader).
    """
    small = _small(x)
    n = len(small)
    od = -np.log10((small * 255.0 + 1.0) / 256.0).reshape(n, -1, 3)
    bright = small.mean(axis=-1).reshape(n, -1)
    p90, p25, p10 = np.quantile(bright, [0.9, 0.25, 0.1], axis=1)
    dark = (bright <= p25[:, None])[..., None]
    dark_od = (od * dark).sum(axis=1) / np.maximum(dark.sum(axis=1), 1)
    share = dark_od / np.maximum(dark_od.sum(axis=1, keepdims=True), 1e-6)
    return np.column_stack([od.mean(axis=1), od.std(axis=1), p90, p10, share[:, :2]]).astype(np.float64)


# ----------------------------------------------------------------------------- reference and distance


def _check_descriptors(desc: np.ndarray) -> np.ndarray:
    desc = np.asarray(desc, dtype=np.float64)
    if desc.ndim != 2 or desc.shape[1] != len(DESCRIPTORS):
        raise DomainError(f"expected descriptors (N, {len(DESCRIPTORS)}), got shape {desc.shape}")
    return desc


def _mahalanobis(desc: np.ndarray, mean: np.ndarray, sd: np.ndarray, corr: np.ndarray,
                 ridge: float = RIDGE, floor: float = FLOOR) -> np.ndarray:
    """Distance ``(N,)`` under the covariance ``sd corr sd`` plus, per descriptor, max(ridge var, floor^2)."""
    cov = corr * np.outer(sd, sd) + np.diag(np.maximum(ridge * sd ** 2, floor ** 2))
    d = desc - mean
    return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d), 0.0))


def _fit(desc: np.ndarray):
    """(mean, sd, correlation) of descriptors ``(N, D)``; a constant descriptor has sd 0 and correlation 0."""
    mean, sd = desc.mean(axis=0), desc.std(axis=0)
    z = (desc - mean) / np.where(sd > 0, sd, 1.0)
    corr = z.T @ z / len(desc)
    np.fill_diagonal(corr, 1.0)
    return mean, sd, corr


def _out_of_fold(desc: np.ndarray) -> np.ndarray:
    """Each cell's distance to a reference fitted on the other half of the cells (even/odd rows).

    In-sample Mahalanobis distances are optimistic (a cell pulls the fit towards
    itself, strongly for few cells); the threshold comes from these instead.
    """
    dist = np.empty(len(desc))
    for fold in (0, 1):
        test = np.arange(len(desc)) % 2 == fold
        dist[test] = _mahalanobis(desc[test], *_fit(desc[~test]))
    return dist


def reference(desc: np.ndarray, quantile: float = CELL_QUANTILE, source: str = "") -> dict:
    """The JSON-able summary of the training cells' descriptors ``(N, D)`` (stored under :data:`META_KEY`).

    desc: descriptors of the training cells, in a random order (the two halves
        of the threshold's cross-fit are the even and odd rows).
    Holds the descriptors' ``mean`` and ``sd`` and their ``corr`` (correlation)
    over all cells; ``cell_threshold`` = the ``quantile`` of the training
    cells' out-of-fold distances (each to the fit of the other half), and the
    quantiles 0.5/0.9/0.99 of those; ``n_cells`` and ``source`` (what the cells
    were). Raises :class:`DomainError` for fewer than :data:`MIN_CELLS` cells.
    """
    desc = _check_descriptors(desc)
    if len(desc) < MIN_CELLS:
        raise DomainError(f"{len(desc)} cells: a domain reference needs at least {MIN_CELLS}")
    if not 0.5 <= quantile < 1:
        raise DomainError(f"quantile {quantile}: expected a value in [0.5, 1)")
    mean, sd, corr = _fit(desc)
    dist = _out_of_fold(desc)
    return dict(format=FORMAT, descriptors=list(DESCRIPTORS), descriptor_size=DESCRIPTOR_SIZE,
                mean=mean.tolist(), sd=sd.tolist(), corr=corr.tolist(), ridge=RIDGE, floor=FLOOR, n_cells=int(len(desc)),
                cell_quantile=float(quantile), cell_threshold=float(np.quantile(dist, quantile)),
                distance_quantiles={str(q): float(np.quantile(dist, q)) for q in (0.5, 0.9, 0.99)},
                source=str(source))


def check_reference(ref: dict, where: str = "domain reference") -> dict:
    """``ref`` if it is a reference of this version of :func:`reference`; else :class:`DomainError` naming ``where``."""
    if not isinstance(ref, dict) or ref.get("format") != FORMAT:
        raise DomainError(f"{where}: not a domain reference (expected format {FORMAT!r})")
    if list(ref.get("descriptors", [])) != list(DESCRIPTORS) or ref.get("descriptor_size") != DESCRIPTOR_SIZE:
        raise DomainError(f"{where}: made with other descriptors ({ref.get('descriptors')}); "
                          f"recompute it (`wbc-nnabla domain-reference`)")
    d = len(DESCRIPTORS)
    try:
        shapes = [np.asarray(ref[k], float).shape for k in ("mean", "sd", "corr")] + \
            [(float(ref["cell_threshold"]), float(ref["ridge"]), float(ref["floor"]))]
    except (KeyError, TypeError, ValueError) as e:
        raise DomainError(f"{where}: incomplete or non-numeric ({type(e).__name__}: {e})") from None
    if shapes[:3] != [(d,), (d,), (d, d)]:
        raise DomainError(f"{where}: mean/sd/corr have shapes {shapes[:3]}, expected ({d},), ({d},), ({d}, {d})")
    if not all(np.isfinite(np.asarray(ref[k], float)).all() for k in ("mean", "sd", "corr", "cell_threshold")):
        raise DomainError(f"{where}: holds non-finite numbers (NaN or infinity)")
    return ref


def distance(ref: dict, desc: np.ndarray) -> np.ndarray:
    """Mahalanobis distance ``(N,)`` of descriptors ``(N, D)`` to the reference (in SDs of the training cells).

    The covariance is the training cells' plus, per descriptor, the larger of
    the reference's ``ridge`` (:data:`RIDGE`) x its variance and its ``floor`` (:data:`FLOOR`) squared.
    """
    ref = check_reference(ref)
    return _mahalanobis(_check_descriptors(desc), np.asarray(ref["mean"]), np.asarray(ref["sd"]),
                        np.asarray(ref["corr"]), float(ref["ridge"]), float(ref["floor"]))


def outside(ref: dict, dist: np.ndarray) -> np.ndarray:
    """Per-cell flag ``(N,)`` bool: distance above the reference's ``cell_threshold``."""
    return np.asarray(dist, dtype=np.float64) > float(check_reference(ref)["cell_threshold"])


def site_references(meta: dict, where: str = "model") -> List[dict]:
    """The checked references under :data:`SITE_KEY` of a model's description ``meta`` (``[]`` when none)."""
    refs = meta.get(SITE_KEY) or []
    if not isinstance(refs, list):
        raise DomainError(f"{where}: {SITE_KEY} is not a list of domain references")
    return [check_reference(r, f"{where}: {SITE_KEY}[{i}]") for i, r in enumerate(refs)]


def outside_all(ref: dict, dist: np.ndarray, sites: Sequence[dict], desc: np.ndarray) -> np.ndarray:
    """Per-cell flag ``(N,)`` bool: outside the training cells' reference ``ref`` (``dist``: the cells'
    :func:`distance` to it) and outside every site reference in ``sites`` (the labelled cells a model
    was fine-tuned on are training cells too); ``desc``: the cells' descriptors ``(N, D)``."""
    flags = outside(ref, dist)
    for site in sites:
        flags &= outside(site, distance(site, desc))
    return flags


# ----------------------------------------------------------------------------- console text


def scale_warning(scale: dict) -> str:
    """The sentence ``predict`` prints when its cells' WBC scale is not the model's
    (:func:`wbc_nnabla.sites.framing.scale_hint`)."""
    site, training = scale["site"]["median"], scale["training"]["median"]
    return (f"the WBC fills a median {site:.2f} of the crop's side here, {training:.2f} in the training cells "
            f"({site / training:.1f}x): run `wbc-nnabla adapt MODEL CELLS OUT.nnp` on these cells, which "
            f"re-frames them to the training scale (docs/inference.md)")
