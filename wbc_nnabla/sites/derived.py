"""The derived-model record: a model the wing makes from another (``adapt``, ``finetune``, ``infomax``,
``self-train``) keeps its description, with a record of what was done under one key.

:func:`check_derived_output` refuses an output that would lose a file before anything is read;
:func:`read_for_derived` reads the model; :func:`derived_meta` is the new description. Every
refusal of the wing is a :class:`SiteError`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from .. import modelfile, outputs, predictions
from ..errors import WBCError


class SiteError(WBCError, ValueError):
    """The base of the wing's refusals: too few cells, settings that cannot work, an output that would lose a file."""


class DerivedModelError(SiteError):
    """A model the wing would derive cannot be written where asked, or its model cannot be read for it."""


#: Description keys that hold only for the exact weights they were measured with: a model whose
#: weights are tuned (``finetune``, ``infomax``, ``self-train``) is written without them. ``adapt``
#: keeps them: it re-estimates BatchNorm statistics only, and the judgement-pending cut-off of the
#: calibration cells was measured to carry across that (docs/research/cross_site_log.md).
WEIGHT_BOUND_KEYS = (predictions.CALIBRATION_KEY,)


def derived_meta(meta: dict, size: int, key: str, record: dict, tuned: bool = False) -> dict:
    """The description of a model derived from ``meta``'s (adapted, fine-tuned): the same, with
    ``input_size`` = ``size`` and ``record`` under ``key``; an earlier record under ``key`` is kept
    as ``record['previous']`` (a model adapted twice keeps its history). ``tuned``: the weights
    changed, so :data:`WEIGHT_BOUND_KEYS` are dropped."""
    base = ("format", "arch", "class_names", "num_classes", "input_size", "wbc_nnabla", "assumed", key)
    base += WEIGHT_BOUND_KEYS if tuned else ()
    extra = {k: v for k, v in meta.items() if k not in base}
    if meta.get(key):
        record = dict(record, previous=meta[key])
    return modelfile.model_meta(meta["arch"], meta["class_names"], size, **extra, **{key: record})


def check_derived_output(model: Path, cells: Path, out: Path, overwrite: bool, command: str, verb: str) -> None:
    """Refuse (:class:`DerivedModelError`) the output of a command that derives a model from ``model`` and ``cells``
    (``adapt``, ``finetune``): no ``.nnp``, the model itself, inside the cells folder, or an existing
    file without ``overwrite`` (:func:`wbc_nnabla.outputs.check_output`). ``verb``: "adapted", "fine-tuned"."""
    if out.suffix.lower() != ".nnp":
        raise DerivedModelError(f"{out}: the {verb} model must be written as a .nnp")
    if out.resolve() == model.resolve():
        raise DerivedModelError(f"{out}: is the model itself; write the {verb} model to another file "
                    f"(the input model is never replaced)")
    if cells.is_dir():
        outputs.check_not_inside(out, [cells])
    try:
        outputs.check_output(out, command, overwrite, [model, cells], folder=False)
    except FileExistsError as e:
        raise DerivedModelError(str(e)) from None


def read_for_derived(model: Path, cells: Path, out: Path, overwrite: bool, command: str, verb: str,
                     size: Optional[int] = None) -> Tuple[Dict[str, np.ndarray], dict, int]:
    """(parameters, description, input side in px) of ``model`` for a command deriving ``out`` from it.

    :func:`check_derived_output` first, then :func:`read_model` and :func:`network_size`
    (``size``: the caller's, or None for the model's); a missing size is raised as :class:`DerivedModelError`.
    """
    check_derived_output(model, cells, out, overwrite, command, verb)
    params, meta = modelfile.read_model(model)
    try:
        return params, meta, modelfile.network_size(meta, size, model)
    except modelfile.ModelError as e:
        raise DerivedModelError(str(e)) from None
