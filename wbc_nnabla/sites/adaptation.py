"""Unlabelled site adaptation: AdaBN (Li et al. 2016) of a trained model to another lab's cells.

A model trained on one lab's smears meets another lab's stain and camera as a
shift of its internal feature statistics. AdaBN re-estimates every
BatchNorm layer's running mean and variance on the new site's cells (labels
are neither needed nor read) and changes nothing else: convolution and
classifier weights, BatchNorm scale/shift and the ``preprocess`` constants are
copied byte for byte. The estimate is :func:`wbc_nnabla.engine.recalibrate_bn`
(the "precise BN" step of training) run on the site's cells instead of the
training images.

:func:`adapt_batchnorm` reads a model file (:func:`wbc_nnabla.modelfile.read_model`)
and a source of whole single-cell images (:func:`wbc_nnabla.fileio.read_cell_images`) and writes
a new self-describing ``.nnp`` whose ``wbc_nnabla.json`` records what the
adaptation used (``adaptation``). CLI: ``wbc-nnabla adapt``.

Information maximisation on the same cells, after AdaBN: :mod:`wbc_nnabla.sites.infomax`.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import nnabla as nn
import nnabla.functions as F
import numpy as np

from .. import engine, fileio, modelfile, sampling
from ..errors import InputError, WBCError
from ..loader import ImageLoader
from ..recipe import check_bn_batch
from . import derived, framing
from .stain import standardiser
# nnabla-free settings (the CLI shows them without importing nnabla), re-exported as part of this API.
from .derived import SiteError
from .settings import ADABN_BATCH, DEFAULT_PAD, LEGACY_PAD, MAX_ADAPT_IMAGES, MIN_ADAPT_IMAGES  # noqa: F401

log = logging.getLogger(__name__)


class AdaptationError(SiteError):
    """Adaptation refused: too few cells, nothing to adapt, or an output that would lose a file."""


def bn_statistics(params: Dict[str, np.ndarray]) -> List[str]:
    """Names of the BatchNorm running statistics (``.../bn/mean``, ``.../bn/var``) in a parameter dict."""
    return sorted(k for k in params if k.endswith("/mean") or k.endswith("/var"))


def _input_size(model: Path, meta: dict, size: Optional[int]) -> int:
    """The side the cells are resized to (:func:`wbc_nnabla.modelfile.network_size`), as an adaptation error."""
    try:
        return modelfile.network_size(meta, size, model)
    except modelfile.ModelError as e:
        raise AdaptationError(str(e)) from None


def draw_cells(loader: ImageLoader, n_max: int, seed: int, skip_bad: bool) -> Tuple[np.ndarray, List[str]]:
    """(rows of readable cells in a seeded random order, reasons of skipped cells).

    Cells are read (and cached by ``loader``) in the seeded order until ``n_max``
    are readable; an unreadable one stops with its name unless ``skip_bad``.
    """
    order = sampling.shuffled_sample([""] * len(loader), len(loader), seed)   # labels ignored: one stratum
    rows, skipped = [], []
    for i in order:
        if len(rows) >= n_max:
            break
        try:
            loader.image(int(i))
        except fileio.ImageReadError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
            continue
        rows.append(int(i))
    return np.array(rows, dtype=int), skipped


def estimate_statistics(params: Dict[str, np.ndarray], meta: dict, loader: ImageLoader, rows: np.ndarray,
              batch_size: int, size: int) -> Dict[str, np.ndarray]:
    """New running statistics ``{name: float32 array}`` of every BatchNorm over ``loader``'s ``rows``.

    The batch-statistics graph is built in a parameter dict of its own (nnabla's
    global parameters are not touched), loaded with ``params``, and re-estimated
    by :func:`wbc_nnabla.engine.recalibrate_bn`.
    """
    with nn.parameter_scope("", {}):
        graph = engine.build_graph(meta["arch"], int(meta["num_classes"]), batch_size, size,
                                     norm=meta.get("norm") or "batch")
        variables = engine.set_parameters(params)
        engine.recalibrate_bn(graph, loader, batch_size, rows)
        return {k: variables[k].d.copy() for k in bn_statistics(params)}


def site_scale(meta: dict, paths, seed: int, train_cells=None, where: str = "site cells",
               skip_bad: bool = False) -> Optional[dict]:
    """The re-framing of a site's crops to the training scale (:mod:`wbc_nnabla.sites.framing`), or None.

    The training cells' median WBC share is the model's (``meta['wbc_share']``, stored by
    training) or measured on ``train_cells`` (a cell source) for a model that stores none.
    ``skip_bad``: a site cell whose WBC cannot be measured (e.g. a colour-inverted image) counts as a
    cell without a WBC instead of stopping. Returns ``training``, ``site`` (median-share records) and ``zoom``.
    """
    training_share = meta.get("wbc_share")
    if train_cells is not None:
        training_share = framing.median_share(list(fileio.read_cell_images(train_cells, dedupe_flag=None)["path"]), seed=seed)
    if not training_share:
        return None
    try:
        site = framing.median_share(list(paths), seed=seed, skip_bad=skip_bad)
    except InputError as e:
        raise AdaptationError(f"{where}: {e}; adapt the BatchNorm statistics only with --no-scale "
                              f"(scale=False)") from None
    return dict(training=training_share, site=site, zoom=framing.site_zoom(site, training_share))


def _cells_needed(batch_size: int, max_images: int, min_images: int) -> int:
    """The fewest readable cells ``adapt`` accepts: ``min_images`` and one whole batch; an
    :class:`~wbc_nnabla.errors.InputError` when ``max_images`` could never give them, or for a batch too
    small for BatchNorm's statistics (:data:`~wbc_nnabla.recipe.MIN_BN_BATCH`)."""
    if max_images < 1:
        raise InputError(f"max_images must be >= 1, got {max_images}")
    check_bn_batch(batch_size, error=InputError, hint="")
    need = max(int(min_images), batch_size)
    if max_images < need:
        raise InputError(f"max_images {max_images}: AdaBN needs at least {need} cells (at least {int(min_images)}, "
                         f"and one whole batch of batch_size {batch_size})")
    return need


def _check_batchnorm(model: Path, params: Dict[str, np.ndarray], meta) -> Tuple[Dict[str, np.ndarray], object]:
    """``(params, meta)`` of ``model``; :class:`AdaptationError` for a model with no BatchNorm running
    statistics to adapt."""
    if meta.get("norm") == "group":
        raise AdaptationError(f"{model}: is a GroupNorm model (norm group): it has no BatchNorm running "
                              f"statistics, so AdaBN has nothing to adapt (GroupNorm normalises each cell "
                              f"by its own statistics already); use the model as it is")
    if not bn_statistics(params):
        raise AdaptationError(f"{model}: has no BatchNorm layers (no */mean, */var parameters): nothing to adapt")
    return params, meta


def _whole_batches(loader: ImageLoader, cells: Path, n_listed: int, max_images: int, seed: int, skip_bad: bool,
                   batch_size: int, need: int) -> Tuple[np.ndarray, List[str]]:
    """(rows of readable cells in whole batches, reasons of the skipped ones); :class:`AdaptationError` under ``need``."""
    readable, skipped = draw_cells(loader, max_images, seed, skip_bad)
    rows = readable[:len(readable) // batch_size * batch_size]          # whole batches only
    if len(rows) < need:
        hint = "lower --batch-size" if batch_size > len(readable) else \
            "batch statistics of a handful of cells are noise"
        raise AdaptationError(f"{cells}: {len(readable)} readable cells ({n_listed} listed, {len(skipped)} "
                              f"unreadable) give {len(rows)} in whole batches of {batch_size}; AdaBN needs at "
                              f"least {need}: {hint}")
    return rows, skipped


def _view(meta, scaling: Optional[dict], pad: Optional[str], colour: Optional[Callable]
          ) -> Tuple[float, str, Optional[Callable]]:
    """(zoom, pad, per-crop view) of the adapted model: the measured scale's zoom (else the model's own),
    the padding (:data:`DEFAULT_PAD` when the scale is measured, else the model's), then ``colour``."""
    zoom = scaling["zoom"] if scaling else float(meta.get("zoom", 1.0))
    if pad is None:
        pad = DEFAULT_PAD if scaling else meta.get("pad", LEGACY_PAD)
    framing.check_pad(pad)             # before any estimate: with zoom 1 reframe never sees it
    return zoom, pad, framing.then(None if zoom == 1.0 else (lambda rgb: framing.reframe(rgb, zoom, pad)), colour)


def adapt_batchnorm(model, cells, out, size: Optional[int] = None, batch_size: int = ADABN_BATCH,
                    max_images: int = MAX_ADAPT_IMAGES, seed: int = 0, min_images: int = MIN_ADAPT_IMAGES,
                    overwrite: bool = False, skip_bad: bool = False, scale: bool = True,
                    train_cells=None, pad: Optional[str] = None, stain: str = "none",
                    stain_reference: Optional[dict] = None) -> dict:
    """Write ``out``: ``model`` with every BatchNorm's running mean/var re-estimated on ``cells`` (AdaBN).

    model: a ``.nnp``/``.h5`` model file (:func:`wbc_nnabla.modelfile.read_model`).
    cells: the new site's cells, any source :func:`wbc_nnabla.fileio.read_cell_images` reads;
        labels are ignored. A seeded random sample (``seed``) of at most ``max_images``
        readable cells, rounded down to whole batches of ``batch_size``, is used.
    out: the adapted ``.nnp`` to write (not the model, not inside the cells folder;
        an existing file only with ``overwrite``).
    size: side in pixels the cells are resized to; default the model's training size
        (required for a model that stores none). Stored as the output's ``input_size``.
    min_images: fewest readable cells accepted (default :data:`MIN_ADAPT_IMAGES`).
    skip_bad: leave out unreadable cells (listed) instead of stopping at the first.
    scale: also re-frame the site's crops to the training cells' WBC scale (:func:`site_scale`;
        the factor is stored as the output's ``zoom``, which ``predict`` applies) when the model
        stores the training scale or ``train_cells`` is given; ``False``: statistics only.
    pad: how a crop zoomed out is filled around (:data:`wbc_nnabla.sites.settings.PADS`), stored as the
        output's ``pad``; default :data:`wbc_nnabla.sites.settings.DEFAULT_PAD` when the scale is measured,
        else the model's own.
    stain, stain_reference: a colour standardisation of each cell after the re-framing
        (:func:`wbc_nnabla.sites.stain.standardiser`; e.g. ``reinhard`` towards the model's training
        cells' :func:`wbc_nnabla.sites.stain.reference`): the statistics are estimated on the cells so
        standardised, and the method and reference are stored as the output's ``stain``, which
        ``predict`` applies to every cell (it then refuses a ``--stain`` of its own).

    Every other parameter is copied unchanged. Raises :class:`AdaptationError` (or
    another :class:`~wbc_nnabla.errors.WBCError` naming the file) before writing anything.
    Returns the ``adaptation`` record stored in the output's metadata, plus ``out``,
    ``paths`` (the cells used, in batch order) and ``skipped`` (reasons).
    """
    model, cells, out = Path(model), Path(cells), Path(out)
    need = _cells_needed(batch_size, max_images, min_images)
    seed = sampling.check_seed(seed)
    derived.check_derived_output(model, cells, out, overwrite, "adapt", "adapted")
    params, meta = _check_batchnorm(model, *modelfile.read_model(model))
    size = _input_size(model, meta, size)
    colour = standardiser(stain, stain_reference)
    table = fileio.read_cell_images(cells, dedupe_flag=None)
    loader = ImageLoader(list(table["path"]), np.zeros(len(table), np.int32), size)
    rows, skipped = _whole_batches(loader, cells, len(table), max_images, seed, skip_bad, batch_size, need)
    paths = [loader.paths[i] for i in rows]
    scaling = site_scale(meta, paths, seed, train_cells, str(cells), skip_bad) if scale else None
    zoom, pad, view = _view(meta, scaling, pad, colour)
    if view is not None:        # the cells read so far (and cached) are as given: read them again as the model sees
        loader = ImageLoader(loader.paths, loader.labels, size, transform=view)
    stats = estimate_statistics(params, meta, loader, rows, batch_size, size)
    record = dict(method="AdaBN", model=str(model.resolve()), model_sha256=modelfile.file_sha256(model),
                  source=str(cells.resolve()), n_cells=len(rows), n_listed=len(table), n_skipped=len(skipped),
                  cells_sha256=modelfile.paths_sha256(paths), seed=int(seed), batch_size=int(batch_size), size=size,
                  max_images=int(max_images), layers=len(stats) // 2, scale=scaling, pad=pad, stain=stain,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    view = dict(zoom=zoom, pad=pad, stain=None if colour is None else dict(method=stain, reference=stain_reference))
    modelfile.save_nnp(out, {**params, **stats}, dict(derived.derived_meta(meta, size, "adaptation", record), **view))
    log.info("adapted %d BatchNorm layers of %s on %d cells of %s -> %s", len(stats) // 2, model, len(rows),
             cells, out)
    return dict(record, out=str(out), paths=paths, skipped=skipped)
