"""Smear-level scoring of predictions against the human differential (paper section III).

Sasaki et al. (2020) score each model on 57 smears of 150-200 cells: the
per-smear agreement with the human differential in six classes and in five
(Band and Segment merged into Neutrophil), its mean +- SD over smears, the best
and worst smear, pooled confusion tables (Table 1: human rows x AI columns with
a per-class "Accuracy" column) and Wilcoxon rank-sum tests of Model A vs
Model B (Fig. 9). The conclusion asks for a "judgement pending" cut-off that
leaves boundary cells to a human; :func:`score` implements it as an option.

This module reads a predictions CSV with :func:`wbc_nnabla.predictions.read_predictions`
(see ``docs/scoring.md``) and never imports nnabla, so it scores predictions of
any model or tool. It computes and returns results only: writing them (tables,
JSON, figures, reports) is :mod:`wbc_nnabla.report`'s job.

Conventions: accuracies are fractions in [0, 1]; differentials are percents;
SDs over smears use ``ddof=1`` (sample SD); pending cells are never counted as
correct or wrong.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats

from . import classes
from .sites import domain
from .errors import InputError
from .classes import CLASSES5, CLASSES6, DIFF_CLASSES, NEUTROPHIL
from .predictions import (CALIBRATION_KEY, PRIOR_ESTIMATE, PROB_COLUMNS, PathOrFrame, PredictionsError,
                          apply_prior, predictions_table, prior_weights, read_calibration, read_predictions,
                          read_run_config, run_config_path)

log = logging.getLogger(__name__)

#: Pairs of classes whose probability margin can put a cell on hold (paper Fig. 10).
CONFUSABLE_PAIRS: Tuple[Tuple[str, str], ...] = (("Band", "Segment"), ("Lymph", "Mono"))
SD_DDOF = 1


class ComparisonError(PredictionsError):
    """Two predictions files that do not cover the same cells, smears or human labels, or were
    scored with different judgement-pending settings."""


# ----------------------------------------------------------------------------- judgement pending


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
        measured across labs: docs/research/cross_site_log.md, "Judgement pending across labs").
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
    ``adapt`` and ``predict --prior normal`` (docs/research/cross_site_log.md). Adds ``tta`` (True when the
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


# ----------------------------------------------------------------------------- tables


def confusion_table(true: Sequence[str], pred: Sequence[str], class_names: Sequence[str],
                    pending: Optional[Sequence[bool]] = None) -> pd.DataFrame:
    """Table 1's layout: human rows x AI columns, ``Total`` and per-class ``Accuracy``.

    true: human class names per cell (cells with an empty ``true`` are left out).
    pred: AI class names per cell.
    pending: optional bool per cell; when given, a ``Pending`` column counts the
        held cells of each human class, which count in ``Total`` but not in
        ``Accuracy`` (= diagonal / (Total - Pending), the recall of the human class).

    The ``Total`` row holds column sums and the pooled accuracy.
    """
    true = np.asarray(true, dtype=object)
    pred = np.asarray(pred, dtype=object)
    hold = np.zeros(len(true), bool) if pending is None else np.asarray(pending, bool)
    keep = true != ""
    names = list(class_names)
    k = len(names)
    index = {c: i for i, c in enumerate(names)}
    counts = np.zeros((k, k), dtype=np.int64)
    held = np.zeros(k, dtype=np.int64)
    ti = np.array([index[c] for c in true[keep]], dtype=np.int64)
    pi = np.array([index[c] for c in pred[keep]], dtype=np.int64)
    hk = hold[keep]
    np.add.at(counts, (ti[~hk], pi[~hk]), 1)
    np.add.at(held, ti[hk], 1)
    table = pd.DataFrame(counts, index=names, columns=names)
    if pending is not None:
        table["Pending"] = held
    table["Total"] = counts.sum(axis=1) + held
    table.loc["Total"] = table.sum(axis=0)
    scored = table["Total"] - (table["Pending"] if pending is not None else 0)
    diag = np.r_[np.diag(counts), np.trace(counts)]
    with np.errstate(invalid="ignore", divide="ignore"):
        table["Accuracy"] = np.where(scored.to_numpy() > 0, diag / np.maximum(scored.to_numpy(), 1), np.nan)
    table.index.name = "Human \\ AI"
    return table


def recalls(table: pd.DataFrame) -> Dict[str, float]:
    """Per-class ``Accuracy`` (recall) of a :func:`confusion_table`, NaN where a class has no cell."""
    return {c: float(table.at[c, "Accuracy"]) for c in table.index if c != "Total"}


def _pct(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 100.0 * num / np.maximum(den, 1), np.nan)


def _differential_counts(cells: pd.DataFrame) -> Tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """Per-smear counts of each class (six classes + Neutrophil) by the AI and by the human."""
    smears = sorted(pd.unique(cells["smear"]))

    def counts(col: str, names: Sequence[str]) -> pd.DataFrame:
        t = pd.crosstab(cells["smear"], cells[col])
        return t.reindex(index=smears, columns=list(names), fill_value=0).astype(np.int64)

    ai = counts("pred6", CLASSES6)
    ai[NEUTROPHIL] = ai["Band"] + ai["Segment"]
    hu = counts("true6", CLASSES6)
    hu[NEUTROPHIL] = counts("true5", [NEUTROPHIL])[NEUTROPHIL]
    n_ai = cells.groupby("smear").size().reindex(smears)
    n_human = (cells["true5"] != "").groupby(cells["smear"]).sum().reindex(smears)
    return ai, hu, n_ai, n_human


def differential(cells: pd.DataFrame) -> pd.DataFrame:
    """Per-smear WBC differential by the AI and by the human, long format (one row per smear and class).

    Columns: ``smear, class, n_ai, ai_pct, n_human, human_pct, abs_diff``
    (percentage points). The AI differential counts every cell of the smear
    (its ``pred6``, pending or not); the human one every labeled cell, so with
    ``Neutrophil``-only labels the human Band% + Segment% is below Neutrophil%.
    Classes: the six of Table 1 and ``Neutrophil`` (= Band + Segment).
    """
    ai, hu, n_ai, n_human = _differential_counts(cells)
    rows = []
    for smear in ai.index:
        ai_p = _pct(ai.loc[smear].to_numpy(float), float(n_ai[smear]))
        hu_p = _pct(hu.loc[smear].to_numpy(float), float(n_human[smear]))
        for j, c in enumerate(DIFF_CLASSES):
            rows.append({"smear": smear, "class": c, "n_ai": int(ai.at[smear, c]), "ai_pct": ai_p[j],
                         "n_human": int(hu.at[smear, c]), "human_pct": hu_p[j],
                         "abs_diff": abs(ai_p[j] - hu_p[j])})
    return pd.DataFrame(rows, columns=["smear", "class", "n_ai", "ai_pct", "n_human", "human_pct", "abs_diff"])


def per_smear_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per smear: counts, ``accuracy6``, ``accuracy5``, pending and the AI/human differential (%).

    ``cells`` needs the ``pending6``/``pending5`` columns of :func:`pending_flags`.
    accuracy6 = correct / scored among cells with a six-class label that are not
    pending; accuracy5 likewise with the five-class labels. NaN when a smear has
    no scored cell (left out of mean and SD).
    """
    c = cells
    lab6, lab5 = c["true6"] != "", c["true5"] != ""
    s6, s5 = lab6 & ~c["pending6"], lab5 & ~c["pending5"]
    frame = pd.DataFrame({
        "smear": c["smear"], "n_cells": 1, "n_labeled6": lab6, "n_labeled5": lab5,
        "n_neutrophil_only": lab5 & ~lab6, "n_pending": c["pending6"], "n_pending5": c["pending5"],
        "n_scored6": s6, "n_correct6": s6 & (c["true6"] == c["pred6"]),
        "n_scored5": s5, "n_correct5": s5 & (c["true5"] == c["pred5"]),
    })
    t = frame.groupby("smear", sort=True).sum().astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        t.insert(0, "accuracy6", np.where(t["n_scored6"] > 0, t["n_correct6"] / t["n_scored6"].clip(lower=1), np.nan))
        t.insert(1, "accuracy5", np.where(t["n_scored5"] > 0, t["n_correct5"] / t["n_scored5"].clip(lower=1), np.nan))
    ai, hu, n_ai, n_human = _differential_counts(c)
    for cl in DIFF_CLASSES:
        t["ai_pct_" + cl] = _pct(ai[cl].to_numpy(float), n_ai.to_numpy(float))
    for cl in DIFF_CLASSES:
        t["human_pct_" + cl] = _pct(hu[cl].to_numpy(float), n_human.to_numpy(float))
    t = t.reset_index()
    first = ["smear", "n_cells", "accuracy6", "accuracy5", "n_pending"]
    return t[first + [k for k in t.columns if k not in first]]


def domain_check(cells: pd.DataFrame) -> dict:
    """The domain-shift check of read predictions (:func:`wbc_nnabla.sites.domain.summarise`), per run and smear.

    From the ``domain_distance``/``outside_domain`` columns ``predict`` writes for a
    model that stores a domain reference; without them ``available`` is False.
    A smear is outside the training domain when more than
    :data:`wbc_nnabla.sites.domain.SMEAR_SHARE` of its cells are outside.
    """
    if "domain_distance" not in cells.columns:
        return domain.unavailable("the predictions have no domain_distance/outside_domain columns (a model "
                                  "without a domain reference, or an older predict)")
    return domain.summarise(cells["domain_distance"], cells["outside_domain"], cells["smear"])


def _add_domain_columns(per: pd.DataFrame, check: dict) -> pd.DataFrame:
    """Per-smear ``domain_median_distance``, ``domain_share_outside`` and ``outside_domain`` (when available)."""
    if not check.get("available"):
        return per
    per = per.copy()
    for col, key in (("domain_median_distance", "median_distance"), ("domain_share_outside", "share_outside"),
                     ("outside_domain", "outside_domain")):
        per[col] = [check["smears"][str(s)][key] for s in per["smear"]]
    return per


def mean_sd(values: Sequence[float]) -> Tuple[float, float, int]:
    """Mean and sample SD (``ddof=1``) of the finite values, and how many there were (SD NaN for n < 2)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), (float(v.std(ddof=SD_DDOF)) if len(v) > SD_DDOF else math.nan), int(len(v))


# ----------------------------------------------------------------------------- score


@dataclass
class ScoreResult:
    """Everything :func:`score` computes; write it with :func:`wbc_nnabla.report.write_score`.

    cells: the predictions (see :func:`read_predictions`) plus ``pending6``,
        ``pending5``, ``reason``, ``correct6``, ``correct5`` (bool; False when not scored).
    per_smear: a table.
    differential: a table.
    pending: a table of the held cells.
    risk_coverage6: a table.
    risk_coverage5: a table.
    confusion6: Table 1 layout (see :func:`confusion_table`).
    confusion5: Table 1 layout (see :func:`confusion_table`).
    summary: the ``summary.json`` dict.
    settings: the options used.
    """

    cells: pd.DataFrame
    per_smear: pd.DataFrame
    confusion6: pd.DataFrame
    confusion5: pd.DataFrame
    differential: pd.DataFrame
    pending: pd.DataFrame
    risk_coverage6: pd.DataFrame
    risk_coverage5: pd.DataFrame
    summary: dict
    settings: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        return str(self.settings.get("predictions", "<predictions>"))

    @property
    def base_dir(self) -> Optional[str]:
        """Folder that relative image paths are read from (the predictions file's folder)."""
        return self.cells.attrs.get("base_dir")


def _best_worst(per_smear: pd.DataFrame, col: str) -> Tuple[Optional[str], float, Optional[str], float]:
    t = per_smear[np.isfinite(per_smear[col].to_numpy(float))]
    if t.empty:
        return None, math.nan, None, math.nan
    # ties go to the smear with more scored cells, then to the first name
    n = "n_scored" + col[-1]
    best = t.sort_values([col, n, "smear"], ascending=[False, False, True], kind="stable").iloc[0]
    worst = t.sort_values([col, n, "smear"], ascending=[True, False, True], kind="stable").iloc[0]
    return str(best["smear"]), float(best[col]), str(worst["smear"]), float(worst[col])


def score(predictions: PathOrFrame, pending_threshold: Optional[float] = None,
          pending_margin: Optional[float] = None, target_accuracy: Optional[float] = None,
          name: Optional[str] = None) -> ScoreResult:
    """Score a predictions CSV against the human labels per smear (paper section III, Table 1).

    predictions: path of a predictions CSV or a DataFrame with its columns.
    pending_threshold: hold cells whose top probability is below it ("judgement pending"); or
        ``"model"`` (:data:`MODEL_CUTOFF`): the cut-off set on the model's calibration cells for
        ``target_accuracy`` (default 0.99; :func:`model_cutoff`), recorded as
        ``pending_threshold_from`` in the summary.
    pending_margin: also hold Band/Segment and Lymph/Mono calls whose pair margin is below it.
    target_accuracy: report the lowest top-probability cut-off whose kept labeled
        cells reach this accuracy (six- and five-class), from the risk-coverage table.
    Pending cells never count as correct or wrong.
    """
    cutoff = None
    if isinstance(pending_threshold, str) and pending_threshold.strip().lower() == MODEL_CUTOFF:
        cutoff = model_cutoff(predictions, target_accuracy)
        pending_threshold = cutoff["threshold"]
    cells = predictions if _is_read(predictions) else read_predictions(predictions, name)
    cells = cells.copy()
    pend = pending_flags(cells, pending_threshold, pending_margin)
    cells["pending6"], cells["pending5"], cells["reason"] = pend["pending6"], pend["pending5"], pend["reason"]
    cells["correct6"] = (cells["true6"] != "") & ~cells["pending6"] & (cells["true6"] == cells["pred6"])
    cells["correct5"] = (cells["true5"] != "") & ~cells["pending5"] & (cells["true5"] == cells["pred5"])
    check = domain_check(cells)
    per = _add_domain_columns(per_smear_table(cells), check)
    held = _pending_cutoff_set(pending_threshold, pending_margin)
    conf6 = confusion_table(cells["true6"], cells["pred6"], CLASSES6, cells["pending6"] if held else None)
    conf5 = confusion_table(cells["true5"], cells["pred5"], CLASSES5, cells["pending5"] if held else None)
    rc6, rc5 = risk_coverage(cells, "6"), risk_coverage(cells, "5")
    pending = cells.loc[cells["pending6"], ["path", "smear", "label", "pred6", "pred5", "top6", "top5", "reason",
                                            "pending5"] + list(PROB_COLUMNS) + ["line"]].reset_index(drop=True)
    settings = {"predictions": cells.attrs.get("name"), "pending_threshold": pending_threshold,
                "pending_margin": pending_margin, "target_accuracy": target_accuracy}
    if cutoff is not None:
        settings["pending_threshold_from"] = cutoff
    summary = _score_summary(cells, per, conf6, conf5, rc6, rc5, settings)
    summary.update(_domain_summary(check))
    return ScoreResult(cells=cells, per_smear=per, confusion6=conf6, confusion5=conf5,
                       differential=differential(cells), pending=pending, risk_coverage6=rc6,
                       risk_coverage5=rc5, summary=summary, settings=settings)


def _domain_summary(check: dict) -> dict:
    """``summary.json`` keys of the domain-shift check; a warning is logged per smear outside."""
    if not check.get("available"):
        return {"domain_check": "unavailable", "domain_check_reason": check.get("reason", "")}
    bad = domain.outside_smears(check)
    for s in bad:
        log.warning("smear %s: %.0f%% of its cells %s", s, 100 * check["smears"][s]["share_outside"], domain.WARNING)
    return {"domain_check": "outside" if bad else "inside", "smears_outside_domain": bad,
            "domain_share_outside": check["run"]["share_outside"],
            "domain_median_distance": check["run"]["median_distance"], "domain_smear_share": domain.SMEAR_SHARE}


def _is_read(obj) -> bool:
    return isinstance(obj, pd.DataFrame) and {"true6", "true5", "top6", "top5"} <= set(obj.columns)


def _pending_cutoff_set(threshold, margin) -> bool:
    """True when a judgement-pending cut-off is set (the confusion tables then get a ``Pending`` column)."""
    return threshold is not None or margin is not None


def _score_summary(cells, per, conf6, conf5, rc6, rc5, settings) -> dict:
    """The ``summary.json`` dict of a score: counts, accuracies (mean, SD, pooled), best/worst smear, pending."""
    n = len(cells)
    m6, sd6, k6 = mean_sd(per["accuracy6"])
    m5, sd5, k5 = mean_sd(per["accuracy5"])
    b6, bv6, w6, wv6 = _best_worst(per, "accuracy6")
    b5, bv5, w5, wv5 = _best_worst(per, "accuracy5")
    n_p6, n_p5 = int(cells["pending6"].sum()), int(cells["pending5"].sum())
    lab6, lab5 = cells["true6"] != "", cells["true5"] != ""
    out = {
        "n_cells": n, "n_smears": int(per.shape[0]), "n_labeled6": int(lab6.sum()), "n_labeled5": int(lab5.sum()),
        "n_neutrophil_only": int((lab5 & ~lab6).sum()), "n_unlabeled": int((~lab5).sum()),
        "accuracy6_pooled": float(conf6.at["Total", "Accuracy"]),
        "accuracy5_pooled": float(conf5.at["Total", "Accuracy"]),
        "accuracy6_mean": m6, "accuracy6_sd": sd6, "accuracy5_mean": m5, "accuracy5_sd": sd5,
        "sd_ddof": SD_DDOF, "n_smears_scored6": k6, "n_smears_scored5": k5,
        "best_smear": b6, "best_smear_accuracy6": bv6, "worst_smear": w6, "worst_smear_accuracy6": wv6,
        "best_smear5": b5, "best_smear_accuracy5": bv5, "worst_smear5": w5, "worst_smear_accuracy5": wv5,
        "n_pending": n_p6, "n_pending5": n_p5,
        "coverage": (n - n_p6) / n if n else math.nan, "coverage5": (n - n_p5) / n if n else math.nan,
        "recall6": recalls(conf6), "recall5": recalls(conf5),
        "smears_without_scored_cells": [str(s) for s in per.loc[~np.isfinite(per["accuracy6"].to_numpy(float)), "smear"]],
        "smallest_smear_cells": int(per["n_cells"].min()) if len(per) else 0,
    }
    out.update({k: v for k, v in settings.items() if k != "predictions"})
    target = settings.get("target_accuracy")
    if target is not None:
        for v, rc in (("6", rc6), ("5", rc5)):
            hit = threshold_for_accuracy(rc, target)
            out["threshold_at_target" + v] = hit["threshold"] if hit else None
            out["coverage_at_target" + v] = hit["coverage"] if hit else None
            out["accuracy_at_target" + v] = hit["accuracy"] if hit else None
    return out


# ----------------------------------------------------------------------------- compare (Fig. 9)


#: Significance level of the paper's tests (Fig. 9); a test that cannot reach it reports no p-value.
ALPHA = 0.05
#: The tests of :func:`paired_tests`: key in its result -> name in messages.
TESTS = {"ranksum": "rank-sum", "signedrank": "signed-rank"}


def smallest_p_values(n: int) -> Dict[str, float]:
    """Smallest p-value each test of :func:`paired_tests` can give with ``n`` smears per model.

    Computed by the tests themselves on the most extreme arrangement: for the
    rank-sum test every accuracy of one model below every accuracy of the
    other, for the signed-rank test ``n`` differences of one sign and distinct
    sizes. E.g. one smear: rank-sum 0.317, signed-rank 1.0; the rank-sum test
    can reach p < 0.05 from 3 smears, the signed-rank test from 6. NaN for ``n = 0``.
    """
    if n < 1:
        return {k: math.nan for k in TESTS}
    low = np.arange(n, dtype=np.float64)
    return {"ranksum": float(stats.ranksums(low, low + n).pvalue),
            "signedrank": float(stats.wilcoxon(low + 1.0).pvalue)}


def _unavailable(test: str, n: int, smallest: float) -> str:
    """Why a test's p-value is not reported (the ``p_<test>_note`` of :func:`paired_tests`)."""
    if n < 1:
        return "no smear scored by both models"
    return (f"{n} smear{'s' if n != 1 else ''} per model: the {TESTS[test]} test cannot reach p < {ALPHA:g} "
            f"(smallest possible p {smallest:.3g}); no p-value reported")


def paired_tests(a: Sequence[float], b: Sequence[float]) -> dict:
    """Wilcoxon tests of per-smear accuracies of two models on the same smears (paper Fig. 9).

    a: accuracies per smear of the first model.
    b: accuracies per smear of the second model, aligned with ``a`` (pairs with a NaN are dropped).

    ``p_ranksum``: :func:`scipy.stats.ranksums` (the paper's rank-sum test, which
    treats the samples as independent). ``p_signedrank``:
    :func:`scipy.stats.wilcoxon` on the pairs (smears are paired), zero
    differences dropped (``zero_method='wilcox'``); when every difference is
    zero the result is statistic 0, p = 1.0 and a note (scipy's own result is
    then undefined). ``mean_diff``: mean of b - a over the pairs.

    A test that cannot reach p < :data:`ALPHA` with this many smears, whatever
    the accuracies (:func:`smallest_p_values`), reports p = NaN (``null`` in
    JSON) and says why in ``p_ranksum_note`` / ``p_signedrank_note`` (keys
    present only then): a p-value it could never make small is not evidence.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(len(a))
    out = {"n_pairs": n, "mean_a": float(a.mean()) if n else math.nan,
           "mean_b": float(b.mean()) if n else math.nan,
           "mean_diff": float((b - a).mean()) if n else math.nan,
           "ranksum_statistic": math.nan, "p_ranksum": math.nan,
           "signedrank_statistic": math.nan, "p_signedrank": math.nan, "note": ""}
    smallest = smallest_p_values(n)
    if n == 0:
        out["note"] = "no smear scored by both models"
    else:
        r = stats.ranksums(a, b)
        out["ranksum_statistic"], out["p_ranksum"] = float(r.statistic), float(r.pvalue)
        if np.all(a == b):
            out["signedrank_statistic"], out["p_signedrank"] = 0.0, 1.0
            if smallest["signedrank"] < ALPHA:
                out["note"] = "all paired differences are zero: signed-rank p set to 1.0"
        else:
            w = stats.wilcoxon(b, a, zero_method="wilcox")
            out["signedrank_statistic"], out["p_signedrank"] = float(w.statistic), float(w.pvalue)
    for test in TESTS:
        if not smallest[test] < ALPHA:   # NaN (no pairs) included
            out["p_" + test] = math.nan
            out[f"p_{test}_note"] = _unavailable(test, n, smallest[test])
    return out


@dataclass
class CompareResult:
    """Output of :func:`compare`: the two scores, per-smear pairs, tests and per-class recall change."""

    name_a: str
    name_b: str
    score_a: ScoreResult
    score_b: ScoreResult
    per_smear: pd.DataFrame
    recall_change: pd.DataFrame
    summary: dict


def _check_same_cells(a: pd.DataFrame, b: pd.DataFrame, na: str, nb: str) -> None:
    pa, pb = set(a["path"]), set(b["path"])
    if pa != pb:
        only_a, only_b = sorted(pa - pb), sorted(pb - pa)
        raise ComparisonError(
            f"{na} and {nb} do not list the same cells: {len(only_a)} only in {na} "
            f"(e.g. {only_a[:2]}), {len(only_b)} only in {nb} (e.g. {only_b[:2]}); "
            f"compare predictions of the same cells (matched by the 'path' column)")
    m = a.set_index("path")[["smear", "true6", "true5", "line"]].join(
        b.set_index("path")[["smear", "true6", "true5", "line"]], lsuffix="_a", rsuffix="_b")
    for col, what in (("smear", "smear"), ("true5", "human label"), ("true6", "human label")):
        bad = m[m[col + "_a"] != m[col + "_b"]]
        if not bad.empty:
            p = bad.index[0]
            raise ComparisonError(
                f"cell {p!r}: {what} differs between {na} line {bad.at[p, 'line_a']} "
                f"({bad.at[p, col + '_a']!r}) and {nb} line {bad.at[p, 'line_b']} ({bad.at[p, col + '_b']!r}); "
                f"both files must carry the same smears and human labels")


def _check_same_pending(sa: ScoreResult, sb: ScoreResult) -> None:
    """Refuse two scores made with different judgement-pending cut-offs (their accuracies would not pair)."""
    for key in ("pending_threshold", "pending_margin"):
        va, vb = sa.settings.get(key), sb.settings.get(key)
        if va != vb:
            raise ComparisonError(f"{sa.source} and {sb.source} were scored with different {key} "
                                  f"({va!r} and {vb!r}); score both with the same judgement-pending settings")


def _recall_change(sa: ScoreResult, sb: ScoreResult) -> pd.DataFrame:
    """Per-class recall (Table 1 "Accuracy") of both models and its change b - a, six and five classes."""
    rows = []
    for view, ca, cb in (("6", sa.confusion6, sb.confusion6), ("5", sa.confusion5, sb.confusion5)):
        ra, rb = recalls(ca), recalls(cb)
        for c in ra:
            rows.append({"view": view, "class": c, "n_cells": int(ca.at[c, "Total"]), "recall_a": ra[c],
                         "recall_b": rb[c], "change": rb[c] - ra[c]})
        rows.append({"view": view, "class": "Total", "n_cells": int(ca.at["Total", "Total"]),
                     "recall_a": float(ca.at["Total", "Accuracy"]), "recall_b": float(cb.at["Total", "Accuracy"]),
                     "change": float(cb.at["Total", "Accuracy"] - ca.at["Total", "Accuracy"])})
    return pd.DataFrame(rows)


def compare(score_a: ScoreResult, score_b: ScoreResult, name_a: str = "Model A",
            name_b: str = "Model B") -> CompareResult:
    """Compare two models scored on the same smears (paper section III, Fig. 9).

    score_a: the :func:`score` result of the first model's predictions.
    score_b: the :func:`score` result of the second model's predictions, made with the same
        judgement-pending settings as ``score_a`` (else :class:`ComparisonError`).

    Cells are matched by ``path``; both must list the same cells with the same
    smear and human label (else :class:`ComparisonError`). Per-smear accuracies
    are paired by smear and tested with :func:`paired_tests` in five and six
    classes. ``recall_change`` gives each class's recall (Table 1 "Accuracy")
    for both models and the change (b - a).
    """
    for r in (score_a, score_b):
        if not isinstance(r, ScoreResult):
            raise TypeError(f"compare takes the ScoreResult of scoring.score(predictions), got {type(r).__name__}")
    if name_a == name_b:
        raise ComparisonError(f"the two models need different names, got {name_a!r} twice")
    sa, sb = score_a, score_b
    _check_same_cells(sa.cells, sb.cells, sa.cells.attrs.get("name", name_a), sb.cells.attrs.get("name", name_b))
    _check_same_pending(sa, sb)
    cols = ["smear", "n_cells", "accuracy6", "accuracy5", "n_pending"]
    per = sa.per_smear[cols].merge(sb.per_smear[cols], on=["smear", "n_cells"], suffixes=("_a", "_b"))
    per["diff6"] = per["accuracy6_b"] - per["accuracy6_a"]
    per["diff5"] = per["accuracy5_b"] - per["accuracy5_a"]
    t6 = paired_tests(per["accuracy6_a"], per["accuracy6_b"])
    t5 = paired_tests(per["accuracy5_a"], per["accuracy5_b"])
    summary = {
        "model_a": name_a, "model_b": name_b, "predictions_a": sa.settings["predictions"],
        "predictions_b": sb.settings["predictions"], "n_cells": int(len(sa.cells)), "n_smears": int(len(per)),
        "p_ranksum5": t5["p_ranksum"], "p_ranksum6": t6["p_ranksum"],
        "p_signedrank5": t5["p_signedrank"], "p_signedrank6": t6["p_signedrank"],
        "mean_diff5": t5["mean_diff"], "mean_diff6": t6["mean_diff"],
        "accuracy5_mean_a": t5["mean_a"], "accuracy5_mean_b": t5["mean_b"],
        "accuracy6_mean_a": t6["mean_a"], "accuracy6_mean_b": t6["mean_b"],
        "accuracy5_sd_a": sa.summary["accuracy5_sd"], "accuracy5_sd_b": sb.summary["accuracy5_sd"],
        "accuracy6_sd_a": sa.summary["accuracy6_sd"], "accuracy6_sd_b": sb.summary["accuracy6_sd"],
        **{f"p_{test}{v}_note": t[f"p_{test}_note"] for v, t in (("5", t5), ("6", t6)) for test in TESTS
           if f"p_{test}_note" in t},
        "tests5": t5, "tests6": t6, "sd_ddof": SD_DDOF,
        "mean_diff_is": f"mean over smears of ({name_b} - {name_a})",
        "pending_threshold": sa.settings.get("pending_threshold"), "pending_margin": sa.settings.get("pending_margin"),
    }
    return CompareResult(name_a, name_b, sa, sb, per, _recall_change(sa, sb), summary)
