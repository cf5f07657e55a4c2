"""The "judgement pending" cut-off: cells a model is unsure of are left to a human.

Sasaki et al. (2020) end (section IV, discussion and conclusion) by asking for
a "judgement pending" class: boundary cells (Band/Segment, Lymph/Mono, Fig. 10)
that the AI should hold for a technologist instead of calling. This module
decides which cells are held and what a cut-off costs; :func:`wbc_nnabla.scoring.score`
applies it (``score --pending-threshold`` / ``--pending-margin``) and the
reports draw its curve.

* :func:`pending_flags`: the cells held by a top-probability threshold and/or a
  confusable-pair margin, in the six- and five-class views;
* :func:`risk_coverage`, :func:`threshold_for_accuracy`: the coverage-accuracy
  table of a top-probability cut-off on labeled cells, and the lowest cut-off
  reaching a target accuracy;
* :func:`calibrated_cutoff`, :func:`model_cutoff`: a cut-off set on the model's
  own calibration cells (``--pending-threshold model``), so a lab without labels
  can use one (docs/scoring.md, "A cut-off that travels with the model").

Conventions as :mod:`wbc_nnabla.scoring`: probabilities, thresholds, margins,
coverages and accuracies are fractions in [0, 1]. Never imports nnabla.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import pandas as pd

from . import classes
from .classes import NEUTROPHIL
from .errors import InputError
from .predictions import (CALIBRATION_KEY, PRIOR_ESTIMATE, PredictionsError, apply_prior, predictions_table,
                          prior_weights, read_calibration, read_predictions, read_run_config, run_config_path)

#: Pairs of classes whose probability margin can put a cell on hold (paper Fig. 10).
CONFUSABLE_PAIRS: Tuple[Tuple[str, str], ...] = (("Band", "Segment"), ("Lymph", "Mono"))


def _check_fraction(value: Optional[float], flag: str) -> Optional[float]:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PredictionsError(f"{flag} must be a number in [0, 1], got {value!r}") from None
    if not (0.0 <= v <= 1.0):
        raise PredictionsError(f"{flag} must be in [0, 1] (a probability), got {v}")
    return v


def pending_flags(cells: pd.DataFrame, threshold: Optional[float] = None,
                  margin: Optional[float] = None) -> pd.DataFrame:
    """Which cells are "judgement pending" (paper section IV), in the six- and five-class views.

    A cell is pending in the six-class view when its highest probability is
    below ``threshold``, or when it is predicted as one class of a confusable
    pair (Band/Segment, Lymph/Mono) and the two probabilities of that pair differ
    by less than ``margin``. In the five-class view the top probability is the
    five-class one (Band + Segment merged) and only the Lymph/Mono margin
    applies, so a cell pending in five classes is pending in six as well.

    Returns a frame aligned with ``cells``: ``pending6``, ``pending5`` (bool) and
    ``reason`` (text, empty when not pending).
    """
    threshold = _check_fraction(threshold, "pending threshold (--pending-threshold)")
    margin = _check_fraction(margin, "pending margin (--pending-margin)")
    n = len(cells)
    p6 = np.zeros(n, bool)
    p5 = np.zeros(n, bool)
    reason = np.array([""] * n, dtype=object)
    if threshold is not None:
        low6 = cells["top6"].to_numpy() < threshold
        low5 = cells["top5"].to_numpy() < threshold
        p6 |= low6
        p5 |= low5
        for i in np.flatnonzero(low6):
            reason[i] = f"top probability {cells['top6'].iat[i]:.3f} < {threshold:g}"
    if margin is not None:
        pred = cells["pred6"].to_numpy()
        for a, b in CONFUSABLE_PAIRS:
            gap = np.abs(cells["prob_" + a].to_numpy() - cells["prob_" + b].to_numpy())
            hit = np.isin(pred, (a, b)) & (gap < margin)
            p6 |= hit
            if NEUTROPHIL not in (classes.to_class5(a), classes.to_class5(b)):
                p5 |= hit
            for i in np.flatnonzero(hit):
                text = f"{a}-{b} margin {gap[i]:.3f} < {margin:g}"
                reason[i] = f"{reason[i]}; {text}" if reason[i] else text
    return pd.DataFrame({"pending6": p6, "pending5": p5, "reason": reason}, index=cells.index)


def risk_coverage(cells: pd.DataFrame, view: str = "6") -> pd.DataFrame:
    """Coverage-accuracy (risk-coverage) table of a top-probability cut-off, on labeled cells.

    For every distinct top probability ``t`` of the labeled cells (ascending)
    the cells with top probability >= ``t`` are kept: ``n_kept``, ``coverage``
    (kept / labeled, non-increasing in ``t``), ``accuracy`` of the kept cells
    and ``n_errors``. ``view`` is ``"6"`` (six classes, ``top6``) or ``"5"``
    (five classes, ``top5``). The margin rule is not part of this table.
    Empty table when no cell is labeled in that view.
    """
    true, pred, top = _view_columns(cells, view)
    labeled = true != ""
    t = top[labeled]
    correct = (true[labeled] == pred[labeled]).astype(np.int64)
    if len(t) == 0:
        return pd.DataFrame(columns=["threshold", "n_kept", "coverage", "accuracy", "n_errors"])
    order = np.argsort(-t, kind="stable")
    st, sc = t[order], correct[order]
    kept = np.arange(1, len(st) + 1)
    ok = np.cumsum(sc)
    ends = np.flatnonzero(np.r_[st[1:] != st[:-1], True])  # last index of each distinct value
    table = pd.DataFrame({"threshold": st[ends], "n_kept": kept[ends], "coverage": kept[ends] / len(st),
                          "accuracy": ok[ends] / kept[ends], "n_errors": kept[ends] - ok[ends]})
    return table.iloc[::-1].reset_index(drop=True)


def threshold_for_accuracy(table: pd.DataFrame, target: float) -> Optional[dict]:
    """Lowest cut-off of a :func:`risk_coverage` table whose kept cells reach ``target`` accuracy.

    The lowest such threshold keeps the most cells. Returns ``{threshold,
    coverage, accuracy, n_kept}`` or None when no cut-off reaches the target.
    Calibrated on the same labeled cells it is reported on, so it is an
    in-sample estimate: check it on another labeled set before use.
    """
    target = _check_fraction(target, "target accuracy (--target-accuracy)")
    hit = table[table["accuracy"] >= target - 1e-12]
    if hit.empty:
        return None
    row = hit.iloc[0]
    return {"threshold": float(row["threshold"]), "coverage": float(row["coverage"]),
            "accuracy": float(row["accuracy"]), "n_kept": int(row["n_kept"])}


#: ``--pending-threshold model``: the cut-off set on the model's own calibration cells
#: (:func:`model_cutoff`) instead of a number.
MODEL_CUTOFF = "model"
#: The accuracy a ``model`` cut-off is set for when no target is given (as ``reproduce``'s default).
DEFAULT_TARGET_ACCURACY = 0.99


def calibrated_cutoff(record: dict, target: float, prior=None, where: str = "calibration") -> dict:
    """The judgement-pending cut-off (paper section IV) set on a model's calibration cells.

    record: :func:`wbc_nnabla.predictions.calibration_record` (the training run's validation cells
        as the exported model predicted them).
    target: accuracy the kept calibration cells must reach, in the five-class view (the view
        measured across labs: docs/cross_site.md, "Judgement pending across labs").
    prior: the class shares the cells to be scored were predicted with (``predict --prior``, a
        dict; None or ``"none"``: none); the calibration cells get the same prior, so that the
        cut-off and the probabilities it is applied to are on one scale.
    Returns :func:`threshold_for_accuracy`'s dict plus ``target``, ``view`` ("5"), ``n_cells``,
    ``source`` and ``prior``. Raises :class:`PredictionsError` naming ``where`` when the record is
    malformed, the prior was estimated per smear, or no cut-off reaches ``target``.
    """
    labels, probs, names = read_calibration(record, where)
    if prior == PRIOR_ESTIMATE:
        raise PredictionsError(f"{where}: the predictions were made with --prior estimate (a prior per smear), "
                               f"which the calibration cells have no counterpart of; predict with --prior none or "
                               f"normal, or give --pending-threshold a number")
    if isinstance(prior, dict):
        probs = apply_prior(probs, prior_weights(names, prior))
    cells = pd.DataFrame({"path": [f"calibration cell {i + 1}" for i in range(len(labels))], "smear": "",
                          "label": [names[i] for i in labels]})
    table = read_predictions(predictions_table(cells, probs, names), name=where)
    hit = threshold_for_accuracy(risk_coverage(table, "5"), target)
    if hit is None:
        raise PredictionsError(f"{where}: no cut-off keeps the model's {len(labels)} calibration cells at accuracy "
                               f"{target:g} (five classes); choose a lower --target-accuracy")
    return dict(hit, target=float(target), view="5", n_cells=int(len(labels)), source=record.get("source"),
                prior=prior if isinstance(prior, dict) else "none")


def model_cutoff(predictions, target: Optional[float] = None) -> dict:
    """:func:`calibrated_cutoff` of the model behind a predictions CSV (``score --pending-threshold model``).

    predictions: the CSV's path; its run JSON (written by ``predict``) holds the model's
        calibration cells and the prior the cells were predicted with.
    target: default :data:`DEFAULT_TARGET_ACCURACY`.
    The cut-off is set where the model was trained; on another lab's cells it held only after
    ``adapt`` and ``predict --prior normal`` (docs/cross_site.md). Adds ``tta`` (True when the
    predictions averaged views, which the calibration cells did not).
    """
    if isinstance(predictions, pd.DataFrame):
        raise PredictionsError("--pending-threshold model needs the predictions CSV itself: its run JSON names "
                               "the model's calibration cells")
    config = read_run_config(predictions)
    where = str(run_config_path(predictions))
    if config.get(CALIBRATION_KEY) is None:
        raise PredictionsError(f"{where}: the model {config.get('model', '?')} stores no calibration cells (trained "
                               f"before they were stored, or fine-tuned since); give --pending-threshold a number "
                               f"(docs/scoring.md)")
    target = DEFAULT_TARGET_ACCURACY if target is None else _check_fraction(target, "target accuracy")
    cut = calibrated_cutoff(config[CALIBRATION_KEY], target, config.get("prior"), where)
    return dict(cut, tta=bool(config.get("tta")))


def _view_columns(cells: pd.DataFrame, view: str):
    if str(view) not in ("5", "6"):
        raise InputError(f"view must be '5' or '6', got {view!r}")
    v = str(view)
    return (cells["true" + v].to_numpy(dtype=object), cells["pred" + v].to_numpy(dtype=object),
            cells["top" + v].to_numpy(dtype=np.float64))
