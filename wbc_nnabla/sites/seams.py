"""The wing's two seams: the only places where the paper's core calls the cross-lab wing.

The paper's library (training, prediction) knows nothing of other labs. Two declared points
let the wing take part, and ``tests/test_architecture.py`` checks that no other core module
imports :mod:`wbc_nnabla.sites`:

1. **Prediction** (:mod:`wbc_nnabla.predictor` calls :func:`prediction_hooks`): a per-crop *view*
   (the re-framing to the training scale and the colour standardisation that ``adapt`` stored in
   the model, then ``predict --stain``) and a per-batch *observer* of the network inputs that
   ends by adding the domain-shift check to the predictions table.
2. **Training** (:mod:`wbc_nnabla.training` calls :func:`training_record` only with
   ``TrainConfig.site_record``): contributors to the model's description, the training cells'
   WBC scale and domain reference, which ``adapt`` and the domain-shift check read.

A model that carries nothing of the wing (no zoom, stain or reference) gets no view and an
observer that computes nothing.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from ..errors import InputError
from . import domain, framing
from .stain import standardiser

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- seam 1: prediction


def cell_transform(meta: dict, stain: str = "none", stain_reference: Optional[dict] = None) -> Optional[Callable]:
    """What happens to each cell image before the network's preprocessing: the model's own view (its
    re-framing to the training scale and colour standardisation, :func:`wbc_nnabla.sites.framing.model_view`,
    set by ``adapt``), then ``stain``; None when neither applies.

    Raises :class:`~wbc_nnabla.errors.InputError` for a ``stain`` on a model ``adapt`` made: its
    BatchNorm statistics were estimated on the site's cells as ``adapt`` saw them, and a
    standardisation after the fact would show it cells of other statistics (``adapt --stain`` instead).
    """
    if stain != "none" and meta.get("stain"):
        raise InputError(f"--stain {stain}: the model applies its own colour standardisation "
                         f"({meta['stain']['method']}, set by adapt --stain); predict without --stain")
    if stain != "none" and meta.get("adaptation"):
        raise InputError(f"--stain {stain}: the model's BatchNorm statistics were estimated by adapt on cells "
                         f"without it; adapt with --stain {stain} --stain-reference CELLS and predict without --stain")
    return framing.then(framing.model_view(meta), standardiser(stain, stain_reference))


class DomainCheck:
    """The domain-shift check of one predict run (docs/inference.md, "Domain-shift warning").

    :meth:`observe` takes each batch of network inputs ``(N, 3, S, S)`` (descriptors are kept only
    when the model stores a reference); :meth:`finish` adds the columns ``domain_distance`` and
    ``outside_domain`` to the predictions table and returns its summary, and logs a warning per run
    or smear outside. Without a reference it says the check is unavailable.
    """

    def __init__(self, meta: dict, where: str):
        self.meta, self.where = meta, where
        self.ref = meta.get(domain.META_KEY)
        self.desc: List[np.ndarray] = []

    def observe(self, x: np.ndarray) -> None:
        """Keep the descriptors of a batch of network inputs (RGB in [0, 1])."""
        if self.ref:
            self.desc.append(domain.descriptors(x))

    def finish(self, out: pd.DataFrame) -> Tuple[pd.DataFrame, dict]:
        """(``out`` with the check's columns, the check's summary): see the class docstring."""
        if not self.ref:
            log.info("domain-shift check unavailable: %s stores no domain reference", self.where)
            return out, domain.unavailable(f"{self.where} stores no domain reference (trained without one; add "
                                           f"one with `wbc-nnabla domain-reference`)")
        desc = np.concatenate(self.desc) if self.desc else np.zeros((0, len(domain.DESCRIPTORS)))
        domain.check_reference(self.ref, f"{self.where}: {domain.META_KEY}")
        sites = domain.site_references(self.meta, self.where)
        dist = domain.distance(self.ref, desc)
        flags = domain.outside_all(self.ref, dist, sites, desc)
        out["domain_distance"] = dist
        out["outside_domain"] = flags.astype(np.int64)
        summary = dict(domain.summarise(dist, flags, out["smear"], self.ref["cell_threshold"]),
                       site_references=[site["source"] for site in sites])
        self._warn(summary, out)
        return out, summary

    def _warn(self, summary: dict, out: pd.DataFrame) -> None:
        """Log the run and every smear outside the training domain, and the WBC scale when it differs."""
        if summary["run"]["outside_domain"]:
            log.warning("%.0f%% of the %d cells are outside the training domain of %s: %s",
                        100 * summary["run"]["share_outside"], len(out), self.where, domain.WARNING)
            summary["scale"] = framing.scale_hint(self.meta, list(out["path"]))
            if summary["scale"]:
                log.warning("%s", domain.scale_warning(summary["scale"]))
        for s in domain.outside_smears(summary):
            if len(summary["smears"]) > 1:
                log.warning("smear %s: %.0f%% of its cells %s", s, 100 * summary["smears"][s]["share_outside"],
                            domain.WARNING)


@dataclasses.dataclass
class PredictionHooks:
    """What the predictor asks of the wing for one run: ``view`` (per crop, uint8 ``(H, W, 3)`` RGB in and
    out, or None), ``observe`` (per batch of network inputs) and ``finish`` (the predictions table in,
    the table with the check's columns and the check's summary out)."""
    view: Optional[Callable]
    observe: Callable[[np.ndarray], None]
    finish: Callable[[pd.DataFrame], Tuple[pd.DataFrame, dict]]


def prediction_hooks(meta: dict, where: str, stain: str = "none",
                     stain_reference: Optional[dict] = None) -> PredictionHooks:
    """Seam 1: the wing's part in one predict run of the model described by ``meta`` (file ``where``)."""
    check = DomainCheck(meta, where)
    return PredictionHooks(cell_transform(meta, stain, stain_reference), check.observe, check.finish)


# ----------------------------------------------------------------------------- seam 2: training


def training_record(loader, scale_seed: int, domain_seed: int) -> Dict[str, Optional[dict]]:
    """Seam 2: what the model's description records of its training cells for the wing, in this order:
    ``wbc_share`` (their median WBC share, :func:`wbc_nnabla.sites.framing.median_share`, which ``adapt``
    re-frames another lab's crops to; None, logged, when too few WBCs are found) and ``domain_reference``
    (:func:`wbc_nnabla.sites.reference.domain_reference`; left out when there are too few cells).

    loader: the clean training images (:class:`wbc_nnabla.loader.ImageLoader`, at the training size).
    """
    try:
        share = framing.median_share(loader.paths, seed=scale_seed)
    except InputError as e:
        log.warning("training cells' WBC scale not recorded: %s", e)
        share = None
    from . import reference                 # reads images through the loader: not needed to predict
    ref = reference.domain_reference(loader, domain_seed)
    return dict(wbc_share=share, **({domain.META_KEY: ref} if ref else {}))
