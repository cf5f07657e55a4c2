"""Smear-level scoring of predictions against the human differential (paper section III).

Sasaki et al. (2020) score each model on 57 smears of 150-200 cells: the
per-smear agreement with the human differential in six classes and in five
(Band and Segment merged into Neutrophil), its mean +- SD over smears, the best
and worst smear, pooled confusion tables (Table 1: human rows x AI columns with
a per-class "Accuracy" column) and Wilcoxon rank-sum tests of Model A vs
Model B (Fig. 9). The conclusion asks for a "judgement pending" cut-off that
leaves boundary cells to a human; :func:`score` applies it as an option
(:mod:`wbc_nnabla.pending` decides which cells are held; its names are
re-exported here).

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

from .classes import CLASSES5, CLASSES6, DIFF_CLASSES, NEUTROPHIL
from .predictions import PROB_COLUMNS, PathOrFrame, PredictionsError, read_predictions
from .predictions_domain import SMEAR_SHARE, WARNING, outside_smears, summarise, unavailable
# The judgement-pending cut-off lives in its own module; its names stay importable from here.
from .pending import (CONFUSABLE_PAIRS, DEFAULT_TARGET_ACCURACY, MODEL_CUTOFF, calibrated_cutoff,  # noqa: F401
                      model_cutoff, pending_flags, risk_coverage, threshold_for_accuracy)

log = logging.getLogger(__name__)

SD_DDOF = 1


class ComparisonError(PredictionsError):
    """Two predictions files that do not cover the same cells, smears or human labels, or were
    scored with different judgement-pending settings."""


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
    """The domain-shift check of read predictions, per run and smear
    (:func:`wbc_nnabla.predictions_domain.summarise` of their domain columns).

    From the ``domain_distance``/``outside_domain`` columns ``predict`` writes for a
    model that stores a domain reference; without them ``available`` is False.
    A smear is outside the training domain when more than
    :data:`wbc_nnabla.predictions_domain.SMEAR_SHARE` of its cells are outside.
    """
    if "domain_distance" not in cells.columns:
        return unavailable("the predictions have no domain_distance/outside_domain columns (a model "
                           "without a domain reference, or an older predict)")
    return summarise(cells["domain_distance"], cells["outside_domain"], cells["smear"])


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
    bad = outside_smears(check)
    for s in bad:
        log.warning("smear %s: %.0f%% of its cells %s", s, 100 * check["smears"][s]["share_outside"], WARNING)
    return {"domain_check": "outside" if bad else "inside", "smears_outside_domain": bad,
            "domain_share_outside": check["run"]["share_outside"],
            "domain_median_distance": check["run"]["median_distance"], "domain_smear_share": SMEAR_SHARE}


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
