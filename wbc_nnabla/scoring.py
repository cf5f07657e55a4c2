"""Smear-level scoring of predictions against the human differential (paper section III).

Sasaki et al. (2020) score each model on 57 smears of 150-200 cells: the
per-smear agreement with the human differential in six classes and in five
(Band and Segment merged into Neutrophil), its mean +- SD over smears, the best
and worst smear, pooled confusion tables (Table 1: human rows x AI columns with
a per-class "Accuracy" column) and Wilcoxon rank-sum tests of Model A vs
Model B (Fig. 9). The conclusion asks for a "judgement pending" cut-off that
leaves boundary cells to a human; :func:`score` implements it as an option.

This module reads a predictions CSV (see ``docs/scoring.md``) and never imports
nnabla, so it scores predictions of any model or tool. Figures and reports are
drawn by :mod:`wbc_nnabla.report`.

Conventions: accuracies are fractions in [0, 1]; differentials are percents;
SDs over smears use ``ddof=1`` (sample SD); pending cells are never counted as
correct or wrong.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from scipy import stats

from . import classes, io
from .classes import CLASSES5, CLASSES6, NEUTROPHIL

log = logging.getLogger(__name__)

#: Probability columns of a six-class predictions CSV, in Table 1 order.
PROB_COLUMNS: Tuple[str, ...] = tuple("prob_" + c for c in CLASSES6)
REQUIRED_COLUMNS: Tuple[str, ...] = ("path", "pred6") + PROB_COLUMNS
OPTIONAL_COLUMNS: Tuple[str, ...] = ("smear", "label", "pred5")
#: Smear name given to every cell when no cell of the file names a smear.
ALL_SMEARS = "(all)"
#: Smear name given to cells without smear when other cells have one.
NO_SMEAR = "(no smear)"
#: Pairs of classes whose probability margin can put a cell on hold (paper Fig. 10).
CONFUSABLE_PAIRS: Tuple[Tuple[str, str], ...] = (("Band", "Segment"), ("Lymph", "Mono"))
SD_DDOF = 1
#: Tolerance on the sum of a row's probabilities (CSV rounding of float32 softmax).
PROB_SUM_TOL = 0.01

PathOrFrame = Union[str, os.PathLike, pd.DataFrame]


class PredictionsError(ValueError):
    """A predictions file (or option) that cannot be scored; the message names file, line and column."""


class ComparisonError(PredictionsError):
    """Two predictions files that do not cover the same cells, smears or human labels."""


# ----------------------------------------------------------------------------- reading


def _line(i: int) -> int:
    """1-based line number in the CSV of data row ``i`` (header on line 1)."""
    return int(i) + 2


def _load_frame(source: PathOrFrame, name: Optional[str]) -> Tuple[pd.DataFrame, str, Optional[Path]]:
    if isinstance(source, pd.DataFrame):
        return source.copy(), name or "<predictions DataFrame>", None
    path = Path(source)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise PredictionsError(f"{path}: no such predictions file") from None
    except IsADirectoryError:
        raise PredictionsError(f"{path}: is a folder; expected a predictions CSV file") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise PredictionsError(f"{path}: not a readable predictions CSV ({e})") from None
    return df, name or str(path), path.resolve().parent


def _check_columns(df: pd.DataFrame, name: str) -> Dict[str, str]:
    """Map canonical column names to the frame's (case-insensitive); refuse other class sets."""
    by_lower = {str(c).strip().lower(): c for c in df.columns}
    found_probs = [str(c).strip() for c in df.columns if str(c).strip().lower().startswith("prob_")]
    expected = ", ".join(PROB_COLUMNS)
    if not found_probs:
        raise PredictionsError(
            f"{name}: no probability columns; expected {expected} (found columns: "
            f"{', '.join(map(str, df.columns)) or 'none'})")
    if sorted(c.lower() for c in found_probs) != sorted(c.lower() for c in PROB_COLUMNS):
        raise PredictionsError(
            f"{name}: predictions of a model with another class set: expected probability columns "
            f"{expected}; found {', '.join(found_probs)}")
    missing = [c for c in REQUIRED_COLUMNS if c.lower() not in by_lower]
    if missing:
        raise PredictionsError(
            f"{name}: missing column(s) {', '.join(missing)}; expected path, smear, label, pred6, pred5, "
            f"{expected} (found {', '.join(map(str, df.columns))})")
    return {c: by_lower[c.lower()] for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c.lower() in by_lower}


def _parse_labels(values: pd.Series, name: str, column: str, convert, allow_empty: bool) -> List[str]:
    """Convert each distinct spelling once (fast on 10^4 rows); errors name the first bad line."""
    out = {}
    for value in pd.unique(values):
        text = str(value).strip()
        if text == "":
            if not allow_empty:
                i = int(np.flatnonzero((values.astype(str).str.strip() == "").to_numpy())[0])
                raise PredictionsError(f"{name} line {_line(i)}, column '{column}': empty; expected one of "
                                       f"{', '.join(CLASSES6)}")
            out[value] = ""
            continue
        i = int(np.flatnonzero((values == value).to_numpy())[0])
        try:
            out[value] = convert(text, f"{name} line {_line(i)}, column '{column}'") or ""
        except classes.LabelError as e:
            raise PredictionsError(str(e)) from None
    return [out[v] for v in values]


def read_predictions(source: PathOrFrame, name: Optional[str] = None) -> pd.DataFrame:
    """Read and check a predictions CSV (or DataFrame) of the six-class model.

    Columns (case-insensitive): ``path``, ``pred6`` and ``prob_<class>`` for
    the six classes are required; ``smear``, ``label`` (human label: a six-class
    name, ``Neutrophil`` when only the five-class label is known, or empty) and
    ``pred5`` are optional. Any accepted synonym is read (see
    :mod:`wbc_nnabla.classes`).

    Returns one row per cell with columns ``path, smear, label, true6, true5,
    pred6, pred5, prob_*`` (floats), ``top6``, ``top5`` (highest six- and
    five-class probability) and ``line`` (line in the file). ``true6`` is empty
    for unlabeled and ``Neutrophil``-only cells, ``true5`` for unlabeled cells.
    Cells without smear go to smear ``(all)`` when no cell names one, else to
    ``(no smear)``.

    Raises :class:`PredictionsError` naming the file, line and column.
    """
    df, name, base_dir = _load_frame(source, name)
    if len(df) == 0:
        raise PredictionsError(f"{name}: no cells (the file has a header but no rows)")
    cols = _check_columns(df, name)
    df = df.reset_index(drop=True)
    out = pd.DataFrame({"path": df[cols["path"]].astype(str).str.strip()})
    empty = np.flatnonzero((out["path"] == "").to_numpy())
    if len(empty):
        raise PredictionsError(f"{name} line {_line(empty[0])}, column 'path': empty path")
    dup = out["path"].duplicated(keep=False).to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)[:2]
        raise PredictionsError(f"{name} lines {_line(rows[0])} and {_line(rows[1])}, column 'path': the same cell "
                               f"{out['path'].iloc[rows[0]]!r} is listed twice")
    smear = df[cols["smear"]].astype(str).str.strip() if "smear" in cols else pd.Series([""] * len(df))
    if (smear == "").all():
        smear = pd.Series([ALL_SMEARS] * len(df))
    else:
        smear = smear.where(smear != "", NO_SMEAR)
    out["smear"] = smear.to_numpy()
    label = df[cols["label"]].astype(str) if "label" in cols else pd.Series([""] * len(df))
    out["label"] = label.str.strip().to_numpy()
    out["true6"] = _parse_labels(label, name, "label",
                                 lambda t, s: classes.to_class6(t, s, allow_neutrophil=True), True)
    out["true5"] = _parse_labels(label, name, "label", classes.to_class5, True)
    out["pred6"] = _parse_labels(df[cols["pred6"]], name, "pred6", classes.to_class6, False)
    out["pred5"] = classes.merge_to_five(out["pred6"])
    if "pred5" in cols:
        given = _parse_labels(df[cols["pred5"]], name, "pred5", classes.to_class5, True)
        bad = np.flatnonzero([g != "" and g != p for g, p in zip(given, out["pred5"])])
        if len(bad):
            i = bad[0]
            raise PredictionsError(
                f"{name} line {_line(i)}, column 'pred5': {given[i]!r} disagrees with pred6 "
                f"{out['pred6'].iloc[i]!r} (expected {out['pred5'].iloc[i]!r})")
    probs = _parse_probs(df, cols, name)
    for j, c in enumerate(PROB_COLUMNS):
        out[c] = probs[:, j]
    out["top6"] = probs.max(axis=1)
    out["top5"] = five_class_probs(probs).max(axis=1)
    out["line"] = np.arange(len(df)) + 2
    out.attrs["name"] = name
    out.attrs["base_dir"] = str(base_dir) if base_dir else None
    return out


def _parse_probs(df: pd.DataFrame, cols: Dict[str, str], name: str) -> np.ndarray:
    """The ``(N, 6)`` float64 probability matrix; every value finite in [0, 1], rows summing to 1."""
    probs = np.empty((len(df), len(PROB_COLUMNS)), dtype=np.float64)
    for j, c in enumerate(PROB_COLUMNS):
        col = pd.to_numeric(df[cols[c]], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(col) | (col < -1e-6) | (col > 1 + 1e-6))
        if len(bad):
            i = bad[0]
            raise PredictionsError(f"{name} line {_line(i)}, column '{c}': {df[cols[c]].iloc[i]!r} is not a "
                                   f"probability in [0, 1]")
        probs[:, j] = np.clip(col, 0.0, 1.0)
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > PROB_SUM_TOL)
    if len(bad):
        i = bad[0]
        raise PredictionsError(f"{name} line {_line(i)}: probabilities prob_* sum to {sums[i]:.4f}, "
                               f"expected 1 (softmax output, tolerance {PROB_SUM_TOL})")
    return probs


def five_class_probs(probs6: np.ndarray) -> np.ndarray:
    """Merge ``(N, 6)`` six-class probabilities to ``(N, 5)`` (Band + Segment = Neutrophil)."""
    p = np.asarray(probs6, dtype=np.float64)
    band, seg = classes.INDEX6["Band"], classes.INDEX6["Segment"]
    keep = [classes.INDEX6[c] for c in CLASSES5[:-1]]
    return np.concatenate([p[:, keep], (p[:, band] + p[:, seg])[:, None]], axis=1)


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


def _view_columns(cells: pd.DataFrame, view: str):
    if str(view) not in ("5", "6"):
        raise ValueError(f"view must be '5' or '6', got {view!r}")
    v = str(view)
    return (cells["true" + v].to_numpy(dtype=object), cells["pred" + v].to_numpy(dtype=object),
            cells["top" + v].to_numpy(dtype=np.float64))


# ----------------------------------------------------------------------------- tables


def confusion_table(true: Sequence[str], pred: Sequence[str], class_names: Sequence[str],
                    pending: Optional[Sequence[bool]] = None) -> pd.DataFrame:
    """Table 1's layout: human rows x AI columns, ``Total`` and per-class ``Accuracy``.

    true, pred: class names per cell (cells with an empty ``true`` are left out).
    pending: optional bool per cell; when given, a ``Pending`` column counts the
    held cells of each human class, which count in ``Total`` but not in
    ``Accuracy`` (= diagonal / (Total - Pending), the recall of the human
    class). The ``Total`` row holds column sums and the pooled accuracy.
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


DIFF_CLASSES: Tuple[str, ...] = CLASSES6 + (NEUTROPHIL,)


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
    """Everything :func:`score` computes; write it with :func:`write_score`.

    cells: the predictions (see :func:`read_predictions`) plus ``pending6``,
        ``pending5``, ``reason``, ``correct6``, ``correct5`` (bool; False when not scored).
    per_smear, differential, pending (the held cells), risk_coverage6/5: tables.
    confusion6, confusion5: Table 1 layout (see :func:`confusion_table`).
    summary: the ``summary.json`` dict; settings: the options used.
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
    pending_threshold: hold cells whose top probability is below it ("judgement pending").
    pending_margin: also hold Band/Segment and Lymph/Mono calls whose pair margin is below it.
    target_accuracy: report the lowest top-probability cut-off whose kept labeled
        cells reach this accuracy (six- and five-class), from the risk-coverage table.
    Pending cells never count as correct or wrong.
    """
    cells = predictions if _is_read(predictions) else read_predictions(predictions, name)
    cells = cells.copy()
    pend = pending_flags(cells, pending_threshold, pending_margin)
    cells["pending6"], cells["pending5"], cells["reason"] = pend["pending6"], pend["pending5"], pend["reason"]
    cells["correct6"] = (cells["true6"] != "") & ~cells["pending6"] & (cells["true6"] == cells["pred6"])
    cells["correct5"] = (cells["true5"] != "") & ~cells["pending5"] & (cells["true5"] == cells["pred5"])
    per = per_smear_table(cells)
    conf6 = confusion_table(cells["true6"], cells["pred6"], CLASSES6, cells["pending6"] if _on(pending_threshold, pending_margin) else None)
    conf5 = confusion_table(cells["true5"], cells["pred5"], CLASSES5, cells["pending5"] if _on(pending_threshold, pending_margin) else None)
    rc6, rc5 = risk_coverage(cells, "6"), risk_coverage(cells, "5")
    pending = cells.loc[cells["pending6"], ["path", "smear", "label", "pred6", "pred5", "top6", "top5", "reason",
                                            "pending5"] + list(PROB_COLUMNS) + ["line"]].reset_index(drop=True)
    settings = {"predictions": cells.attrs.get("name"), "pending_threshold": pending_threshold,
                "pending_margin": pending_margin, "target_accuracy": target_accuracy}
    summary = _summary(cells, per, conf6, conf5, rc6, rc5, settings)
    return ScoreResult(cells=cells, per_smear=per, confusion6=conf6, confusion5=conf5,
                       differential=differential(cells), pending=pending, risk_coverage6=rc6,
                       risk_coverage5=rc5, summary=summary, settings=settings)


def _is_read(obj) -> bool:
    return isinstance(obj, pd.DataFrame) and {"true6", "true5", "top6", "top5"} <= set(obj.columns)


def _on(threshold, margin) -> bool:
    return threshold is not None or margin is not None


def _summary(cells, per, conf6, conf5, rc6, rc5, settings) -> dict:
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


def paired_tests(a: Sequence[float], b: Sequence[float]) -> dict:
    """Wilcoxon tests of per-smear accuracies of two models on the same smears (paper Fig. 9).

    a, b: accuracies per smear, aligned (pairs with a NaN are dropped).
    ``p_ranksum``: :func:`scipy.stats.ranksums` (the paper's rank-sum test, which
    treats the samples as independent). ``p_signedrank``:
    :func:`scipy.stats.wilcoxon` on the pairs (smears are paired), zero
    differences dropped (``zero_method='wilcox'``); when every difference is
    zero the result is statistic 0, p = 1.0 and a note (scipy's own result is
    then undefined). ``mean_diff``: mean of b - a over the pairs.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    out = {"n_pairs": int(len(a)), "mean_a": float(a.mean()) if len(a) else math.nan,
           "mean_b": float(b.mean()) if len(b) else math.nan,
           "mean_diff": float((b - a).mean()) if len(a) else math.nan,
           "ranksum_statistic": math.nan, "p_ranksum": math.nan,
           "signedrank_statistic": math.nan, "p_signedrank": math.nan, "note": ""}
    if len(a) == 0:
        out["note"] = "no smear scored by both models"
        return out
    r = stats.ranksums(a, b)
    out["ranksum_statistic"], out["p_ranksum"] = float(r.statistic), float(r.pvalue)
    if np.all(a == b):
        out["signedrank_statistic"], out["p_signedrank"] = 0.0, 1.0
        out["note"] = "all paired differences are zero: signed-rank p set to 1.0"
    else:
        w = stats.wilcoxon(b, a, zero_method="wilcox")
        out["signedrank_statistic"], out["p_signedrank"] = float(w.statistic), float(w.pvalue)
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


def compare(pred_a: PathOrFrame, pred_b: PathOrFrame, name_a: str = "Model A", name_b: str = "Model B",
            pending_threshold: Optional[float] = None, pending_margin: Optional[float] = None) -> CompareResult:
    """Compare two models on the same smears (paper section III, Fig. 9).

    Cells are matched by ``path``; both files must list the same cells with the
    same smear and human label (else :class:`ComparisonError`). Per-smear
    accuracies are paired by smear and tested with :func:`paired_tests` in five
    and six classes. ``recall_change`` gives each class's recall (Table 1
    "Accuracy") for both models and the change (b - a).
    """
    if name_a == name_b:
        raise ComparisonError(f"the two models need different names, got {name_a!r} twice")
    a = read_predictions(pred_a) if not _is_read(pred_a) else pred_a
    b = read_predictions(pred_b) if not _is_read(pred_b) else pred_b
    _check_same_cells(a, b, a.attrs.get("name", name_a), b.attrs.get("name", name_b))
    sa = score(a, pending_threshold, pending_margin)
    sb = score(b, pending_threshold, pending_margin)
    cols = ["smear", "n_cells", "accuracy6", "accuracy5", "n_pending"]
    per = sa.per_smear[cols].merge(sb.per_smear[cols], on=["smear", "n_cells"], suffixes=("_a", "_b"))
    per["diff6"] = per["accuracy6_b"] - per["accuracy6_a"]
    per["diff5"] = per["accuracy5_b"] - per["accuracy5_a"]
    t6 = paired_tests(per["accuracy6_a"], per["accuracy6_b"])
    t5 = paired_tests(per["accuracy5_a"], per["accuracy5_b"])
    rows = []
    for view, ca, cb in (("6", sa.confusion6, sb.confusion6), ("5", sa.confusion5, sb.confusion5)):
        ra, rb = recalls(ca), recalls(cb)
        for c in ra:
            rows.append({"view": view, "class": c, "n_cells": int(ca.at[c, "Total"]), "recall_a": ra[c],
                         "recall_b": rb[c], "change": rb[c] - ra[c]})
        rows.append({"view": view, "class": "Total", "n_cells": int(ca.at["Total", "Total"]),
                     "recall_a": float(ca.at["Total", "Accuracy"]), "recall_b": float(cb.at["Total", "Accuracy"]),
                     "change": float(cb.at["Total", "Accuracy"] - ca.at["Total", "Accuracy"])})
    change = pd.DataFrame(rows)
    summary = {
        "model_a": name_a, "model_b": name_b, "predictions_a": sa.settings["predictions"],
        "predictions_b": sb.settings["predictions"], "n_cells": int(len(a)), "n_smears": int(len(per)),
        "p_ranksum5": t5["p_ranksum"], "p_ranksum6": t6["p_ranksum"],
        "p_signedrank5": t5["p_signedrank"], "p_signedrank6": t6["p_signedrank"],
        "mean_diff5": t5["mean_diff"], "mean_diff6": t6["mean_diff"],
        "accuracy5_mean_a": t5["mean_a"], "accuracy5_mean_b": t5["mean_b"],
        "accuracy6_mean_a": t6["mean_a"], "accuracy6_mean_b": t6["mean_b"],
        "accuracy5_sd_a": sa.summary["accuracy5_sd"], "accuracy5_sd_b": sb.summary["accuracy5_sd"],
        "accuracy6_sd_a": sa.summary["accuracy6_sd"], "accuracy6_sd_b": sb.summary["accuracy6_sd"],
        "tests5": t5, "tests6": t6, "sd_ddof": SD_DDOF,
        "mean_diff_is": f"mean over smears of ({name_b} - {name_a})",
        "pending_threshold": pending_threshold, "pending_margin": pending_margin,
    }
    return CompareResult(name_a, name_b, sa, sb, per, change, summary)


# ----------------------------------------------------------------------------- synthetic predictions


def predictions_from_confusion(counts6, n_smears: int = 57, seed: int = 0,
                               path_prefix: str = "cells/") -> pd.DataFrame:
    """A predictions table whose pooled six-class confusion equals ``counts6`` (for tests and benchmarks).

    counts6: ``(6, 6)`` integer counts, human rows x AI columns in Table 1 order.
    Cells are shuffled (``seed``) and split into ``n_smears`` smears of nearly
    equal size named ``S01``...; each gets a softmax-like probability row whose
    top class is its AI class, drawn higher for correct calls (0.55-1.0) than
    for wrong ones (0.4-0.9), so cut-offs behave as with a real model.
    Columns are those of a predictions CSV (``path`` = ``<prefix>cell_<n>.png``).
    """
    counts6 = np.asarray(counts6, dtype=np.int64)
    if counts6.shape != (6, 6) or (counts6 < 0).any():
        raise ValueError(f"counts6 must be a (6, 6) array of non-negative counts, got shape {counts6.shape}")
    rng = np.random.default_rng(seed)
    ti, pi = np.nonzero(counts6)
    true = np.repeat(ti, counts6[ti, pi])
    pred = np.repeat(pi, counts6[ti, pi])
    order = rng.permutation(len(true))
    true, pred = true[order], pred[order]
    n = len(true)
    top = np.where(true == pred, rng.uniform(0.55, 1.0, n), rng.uniform(0.4, 0.9, n))
    # each other class gets at most 0.6 * (1 - top) < top (as top > 0.375): the top class stays on top
    rest = (0.5 * rng.dirichlet(np.ones(5), n) + 0.1) * (1.0 - top)[:, None]
    probs = np.zeros((n, 6))
    for i in range(6):
        others = [j for j in range(6) if j != i]
        m = pred == i
        probs[np.ix_(m, others)] = rest[m]
        probs[m, i] = top[m]
    smear = np.empty(n, dtype=object)
    for k, idx in enumerate(np.array_split(np.arange(n), max(1, int(n_smears)))):
        smear[idx] = f"S{k + 1:02d}"
    names = np.array(CLASSES6, dtype=object)
    df = pd.DataFrame({"path": [f"{path_prefix}cell_{i:05d}.png" for i in range(n)], "smear": smear,
                       "label": names[true], "pred6": names[pred],
                       "pred5": classes.merge_to_five(names[pred])})
    for j, c in enumerate(PROB_COLUMNS):
        df[c] = probs[:, j]
    return df


# ----------------------------------------------------------------------------- writing


def _json_safe(obj):
    """Replace NaN/inf by None (JSON has no NaN) recursively."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _check_output(out_dir: Path, inputs: Sequence[Optional[str]]) -> None:
    out_r = out_dir.resolve()
    for s in inputs:
        if not s or not Path(s).exists():
            continue
        p = Path(s).resolve()
        if p == out_r or out_r in p.parents:
            raise PredictionsError(f"output folder {out_dir} holds the input {s}; choose another output "
                                   f"(the output folder is replaced as a whole)")


def write_score(result: ScoreResult, out_dir: Union[str, os.PathLike], figures: bool = True,
                gallery: bool = True, overwrite: bool = False) -> Path:
    """Write a :class:`ScoreResult` into ``out_dir`` (created atomically: a temp folder renamed at the end).

    Files: ``per_smear.csv``, ``confusion6.csv``, ``confusion5.csv``,
    ``differential.csv``, ``pending.csv``, ``risk_coverage.csv``,
    ``summary.json``, ``config.json`` and, with ``figures``, ``figures/*.png``,
    ``report.html`` (self-contained) and ``report.md``. Raises
    ``FileExistsError`` when ``out_dir`` exists and ``overwrite`` is false.
    """
    out_dir = Path(out_dir)
    _check_output(out_dir, [result.settings.get("predictions")])
    with io.atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_score_files(result, tmp)
        if figures:
            from . import report
            report.write_score_report(result, tmp, gallery=gallery)
    return out_dir


def write_score_files(result: ScoreResult, folder: Union[str, os.PathLike]) -> None:
    """The tables and JSON of :func:`write_score`, into an existing ``folder`` (no figures)."""
    folder = Path(folder)
    result.per_smear.to_csv(folder / "per_smear.csv", index=False, float_format="%.6g")
    result.confusion6.to_csv(folder / "confusion6.csv", float_format="%.6g")
    result.confusion5.to_csv(folder / "confusion5.csv", float_format="%.6g")
    result.differential.to_csv(folder / "differential.csv", index=False, float_format="%.6g")
    result.pending.to_csv(folder / "pending.csv", index=False, float_format="%.6g")
    rc = pd.concat([result.risk_coverage6.assign(view="6"), result.risk_coverage5.assign(view="5")])
    rc[["view", "threshold", "n_kept", "coverage", "accuracy", "n_errors"]].to_csv(
        folder / "risk_coverage.csv", index=False, float_format="%.6g")
    io.write_json(folder / "summary.json", _json_safe(result.summary))
    io.write_json(folder / "config.json", _json_safe({"command": "score", **result.settings,
                                                      "environment": io.environment()}))


def write_compare(result: CompareResult, out_dir: Union[str, os.PathLike], figures: bool = True,
                  overwrite: bool = False) -> Path:
    """Write a :class:`CompareResult`: ``comparison.json``, ``per_smear_pairs.csv``,
    ``recall_change.csv``, ``config.json``, each model's score in ``A/`` and ``B/``
    folders (tables only) and, with ``figures``, box plots and ``report.html``/``report.md``."""
    out_dir = Path(out_dir)
    _check_output(out_dir, [result.summary.get("predictions_a"), result.summary.get("predictions_b")])
    with io.atomic_dir(out_dir, overwrite=overwrite) as tmp:
        result.per_smear.to_csv(tmp / "per_smear_pairs.csv", index=False, float_format="%.6g")
        result.recall_change.to_csv(tmp / "recall_change.csv", index=False, float_format="%.6g")
        io.write_json(tmp / "comparison.json", _json_safe(result.summary))
        io.write_json(tmp / "config.json", _json_safe({"command": "compare", "model_a": result.name_a,
                                                       "model_b": result.name_b,
                                                       "predictions_a": result.summary["predictions_a"],
                                                       "predictions_b": result.summary["predictions_b"],
                                                       "pending_threshold": result.summary["pending_threshold"],
                                                       "pending_margin": result.summary["pending_margin"],
                                                       "environment": io.environment()}))
        for sub, s in (("A", result.score_a), ("B", result.score_b)):
            (tmp / sub).mkdir()
            write_score_files(s, tmp / sub)
        if figures:
            from . import report
            report.write_compare_report(result, tmp)
    return out_dir
