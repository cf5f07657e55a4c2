"""What a review yields: the live differential, the corrections as labels, AI-vs-reviewer agreement.

* :func:`live_differential`: a smear's differential by the AI and by the review, six and five
  classes, counts and percent (what the page shows, recomputed after every action).
* :func:`export_labels` (``wbc-nnabla review-export``): the reviewed cells as a cell source
  ``path,label,smear`` that ``finetune``, ``build-dataset``, ``predict`` and ``score`` read
  (:func:`wbc_nnabla.fileio.read_cells`). By default only signed smears go out; cells marked
  unusable never do, undecided cells never do.
* :func:`agreement` (``wbc-nnabla score PRED OUT --reviewed REVIEW``): how often the reviewer kept
  the AI's call, per class and overall (CellaVision's anchor: technologists agreed with 82 % of the
  DM96's pre-classifications), the reviewed differential beside the AI's, and what became of the
  pending cells. :meth:`Agreement.sections` returns plain report sections the score writer appends.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .. import classes, fileio, outputs, scoring
from ..classes import CLASSES5, CLASSES6, DIFF_CLASSES, NEUTROPHIL
from . import db
from .db import UNUSABLE, ReviewDB, ReviewError
from .load import image_paths

from ..errors import PathLike
#: Columns of the exported cell source.
EXPORT_COLUMNS = ("path", "label", "smear")
#: The anchor the agreement is compared with (issue 47): technologists agreed with this share of the
#: CellaVision DM96's pre-classifications, and this share of cells sat in its "Unidentified" group.
ANCHOR_AGREEMENT = 0.82
ANCHOR_UNIDENTIFIED = 0.026


# ----------------------------------------------------------------------------- the page's differential


def _to5(c: str) -> str:
    return NEUTROPHIL if c in ("Band", "Segment") else c


def live_differential(ai: Sequence[str], decisions: Sequence[Optional[str]]) -> dict:
    """A smear's differential by the AI (every cell) and by the review (decided cells, unusable left out).

    Returns ``{rows: [{class, ai_n, ai_pct, review_n, review_pct}] for the six classes of Table 1 and
    Neutrophil (Band + Segment), n_cells, n_counted (reviewed into a class), n_unusable, n_undecided}``;
    percentages of ``n_cells`` (AI) and of ``n_counted`` (review), None when there is no cell.
    """
    ai_n = Counter(ai)
    done = [d for d in decisions if d is not None]
    rv_n = Counter(d for d in done if d != UNUSABLE)
    for count in (ai_n, rv_n):
        count[NEUTROPHIL] = count["Band"] + count["Segment"]
    n, counted = len(ai), sum(rv_n[c] for c in CLASSES6)

    def pct(k: int, total: int) -> Optional[float]:
        return round(100.0 * k / total, 1) if total else None

    rows = [{"class": c, "ai_n": ai_n[c], "ai_pct": pct(ai_n[c], n), "review_n": rv_n[c],
             "review_pct": pct(rv_n[c], counted)} for c in DIFF_CLASSES]
    return {"rows": rows, "n_cells": n, "n_counted": counted, "n_unusable": len(done) - counted,
            "n_undecided": n - len(done)}


# ----------------------------------------------------------------------------- export


def export_table(review: ReviewDB, include_unsigned: bool = False, smears: Sequence[str] = ()) -> pd.DataFrame:
    """The cells :func:`export_labels` writes: ``path, label, smear`` (reviewer's class), in smear order."""
    rows = review.cells()
    known = {r["smear"] for r in rows}
    unknown = [s for s in smears if s not in known]
    if unknown:
        raise ReviewError(f"{review.path}: no smear {unknown[0]!r} (smears: {', '.join(sorted(known))})")
    keep = [r for r in rows if r["decision"] in CLASSES6 and (include_unsigned or r["signed_at"] is not None)
            and (not smears or r["smear"] in smears)]
    return pd.DataFrame({"path": [r["path"] for r in keep], "label": [r["decision"] for r in keep],
                         "smear": [r["smear"] for r in keep]}, columns=list(EXPORT_COLUMNS))


def export_labels(db_path: PathLike, out: PathLike, include_unsigned: bool = False, smears: Sequence[str] = (),
                  overwrite: bool = False) -> dict:
    """Write the reviewed cells of ``db_path`` as a cell source ``out`` (``path,label,smear`` CSV) and
    ``out`` with ``.json`` (what was exported, from which review, signed by whom).

    include_unsigned: also the decided cells of smears not signed yet. smears: only these smears.
    Cells marked :data:`~wbc_nnabla.review.db.UNUSABLE` and undecided cells are never exported.
    Raises :class:`ReviewError` when no cell qualifies. Returns the JSON record.
    """
    review = ReviewDB(db_path)
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise ReviewError(f"{out}: the exported cell source must be a .csv file")
    record_path = out.with_suffix(".json")
    for target in (out, record_path):
        outputs.check_output(target, "review-export", overwrite, [review.path], folder=False)
    table = export_table(review, include_unsigned, smears)
    if table.empty:
        raise ReviewError(f"{review.path}: no reviewed cell to export ("
                          + ("no decided cell" if include_unsigned else
                             "no signed smear; sign one, or give --include-unsigned") + ")")
    signed = {s["name"]: s for s in review.smears()}
    record = {"command": "review-export", "review": str(review.path.resolve()),
              "predictions": review.meta().get("predictions"), "n_cells": int(len(table)),
              "per_class": {c: int((table["label"] == c).sum()) for c in CLASSES6},
              "include_unsigned": bool(include_unsigned),
              "smears": {s: {"cells": int((table["smear"] == s).sum()), "signed_by": signed[s]["signed_by"],
                             "signed_at": signed[s]["signed_at"]} for s in pd.unique(table["smear"])},
              "left_out_unusable": sum(1 for r in review.cells() if r["decision"] == UNUSABLE),
              "exported_at": db.now()}
    with outputs.atomic_files([out, record_path], overwrite=overwrite) as (tmp_csv, tmp_json):
        table.to_csv(tmp_csv, index=False, lineterminator="\n")
        tmp_json.write_text(outputs.json_text(record), encoding="utf-8")
    return record


# ----------------------------------------------------------------------------- agreement


def is_review_db(path: PathLike) -> bool:
    """True when ``path`` is a review database (:func:`wbc_nnabla.review.db.check_file` passes)."""
    try:
        db.check_file(path)
        return True
    except ReviewError:
        return False


def reviewed_cells(source: PathLike) -> pd.DataFrame:
    """The reviewer's calls: ``path`` (absolute), ``review6`` (a class of Table 1, ``Unusable``, or "" for a
    Neutrophil-only label or an undecided cell), ``review5`` ("" undecided), ``pending`` (bool, or NaN
    when the source does not say).

    source: a review database (every cell, decided in a signed smear or not) or a labelled cell source
    (``review-export``'s CSV, or any ``path,label`` source :func:`wbc_nnabla.fileio.read_cells` reads).
    """
    if str(source).lower().endswith((".sqlite", ".db", ".sqlite3")) or is_review_db(source):
        rows = ReviewDB(source).cells()
        six = [r["decision"] or "" for r in rows]
        return pd.DataFrame({"path": [r["path"] for r in rows], "review6": six,
                             "review5": [d if d in ("", UNUSABLE) else _to5(d) for d in six],
                             "pending": [bool(r["pending"]) for r in rows]})
    table = fileio.read_cells(source, dedupe_flag=None)
    table = table[table["label"] != ""]
    six = [lab if lab in CLASSES6 else "" for lab in table["label"]]
    return pd.DataFrame({"path": [str(Path(p).resolve()) for p in table["path"]], "review6": six,
                         "review5": [classes.to_class5(lab) for lab in table["label"]], "pending": np.nan})


@dataclass
class Agreement:
    """AI-vs-reviewer agreement of one predictions file (:func:`agreement`).

    summary: figures (JSON-safe). per_class: per AI class. confusion6 / confusion5: Table 1 layout
    with the reviewer's rows and the AI's columns. differential: per smear and class, the AI's and the
    review's percentages. pending: what became of the pending cells.
    """

    summary: dict
    per_class: pd.DataFrame
    confusion6: pd.DataFrame
    confusion5: pd.DataFrame
    differential: pd.DataFrame
    pending: pd.DataFrame
    notes: List[str] = field(default_factory=list)

    def files(self) -> Dict[str, object]:
        """``{file name: DataFrame or dict}`` to write beside the score's tables."""
        return {"review_agreement.json": self.summary, "review_per_class.csv": self.per_class,
                "review_confusion6.csv": self.confusion6, "review_confusion5.csv": self.confusion5,
                "review_differential.csv": self.differential, "review_pending.csv": self.pending}

    def sections(self) -> List[Tuple[str, List[str], List[Tuple[pd.DataFrame, dict]]]]:
        """Report sections as ``(title, paragraphs, [(table, table options)])``: plain data any writer renders."""
        s = self.summary
        text = [f"{s['n_reviewed']} of {s['n_cells']} cells reviewed ({s['review_source']}); "
                f"{s['n_unusable']} taken out of the count as not a leukocyte / unusable.",
                f"The reviewer kept the AI's call for {_pct(s['agreement6'])} of the cells in six classes "
                f"({s['n_agreement6']} cells) and {_pct(s['agreement5'])} in five classes ({s['n_agreement5']} cells). "
                f"Anchor: technologists agreed with {ANCHOR_AGREEMENT:.0%} of the CellaVision DM96's "
                f"pre-classifications, {ANCHOR_UNIDENTIFIED:.1%} of its cells unidentified."] + self.notes
        diff = self.differential.groupby("class", sort=False)["abs_diff"].agg(["mean", "max"])
        diff.columns = ["mean abs. difference (points)", "max abs. difference (points)"]
        return [
            ("Review: AI vs reviewer", text, [(self.per_class, {"index": False})]),
            ("Review: confusion table, 6 classes (reviewer rows x AI columns)",
             ["'Accuracy' is the share of each reviewer class the AI called so (its recall)."],
             [(self.confusion6, {}), (self.confusion5, {})]),
            ("Review: differential, AI vs reviewer",
             ["The AI's differential counts every cell; the review's the cells reviewed into a class. Per smear "
              "in review_differential.csv; below, the absolute difference per class over smears."],
             [(diff, {"digits": 2})]),
            ("Review: the pending cells", [_pending_text(s)], [(self.pending, {"index": False})]),
        ]


def _pct(v) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.1f} %"


def _pending_text(s: dict) -> str:
    if s["pending_from"] == "none":
        return "No pending cut-off is known for these cells (a labels CSV without --pending-threshold)."
    return (f"{s['n_pending']} cells were pending (cut-off from the {s['pending_from']}): {s['pending_confirmed']} "
            f"confirmed, {s['pending_reclassified']} reclassified, {s['pending_unusable']} out of the count, "
            f"{s['pending_undecided']} not reviewed.")


def agreement(cells: pd.DataFrame, reviewed: PathLike) -> Agreement:
    """AI-vs-reviewer agreement of read predictions ``cells`` against the review ``reviewed``.

    cells: :func:`wbc_nnabla.predictions.read_predictions` output, or a score's cells (its
        ``pending6`` column gives the pending cells when ``reviewed`` is a labels CSV).
    reviewed: a review database or a labelled cell source (:func:`reviewed_cells`); cells are matched
        by image file. The pending cells are the database's (its cut-off), else the score's.
    Raises :class:`ReviewError` when no cell of ``reviewed`` is in ``cells``.
    """
    rev = reviewed_cells(reviewed)
    paths = image_paths(cells)
    frame = pd.DataFrame({"path": paths, "smear": cells["smear"].astype(str).to_numpy(),
                          "pred6": cells["pred6"].to_numpy(), "pred5": cells["pred5"].to_numpy()})
    merged = frame.merge(rev, on="path", how="left")
    merged[["review6", "review5"]] = merged[["review6", "review5"]].fillna("")
    done = merged["review5"] != ""
    if not done.any():
        raise ReviewError(f"{reviewed}: none of its reviewed cells is in {cells.attrs.get('name', 'the predictions')}")
    if rev["pending"].notna().any():
        pending, pending_from = merged["pending"].fillna(False).astype(bool), "review database"
    elif "pending6" in cells:
        pending, pending_from = pd.Series(cells["pending6"].to_numpy(bool)), "score's --pending-threshold"
    else:
        pending, pending_from = pd.Series(np.zeros(len(merged), bool)), "none"
    summary = _summary(merged, pending.to_numpy(bool), pending_from, str(reviewed))
    summary["n_review_not_in_predictions"] = int(len(set(rev.loc[rev["review5"] != "", "path"]) - set(paths)))
    return Agreement(summary=summary, per_class=_per_class(merged),
                     confusion6=scoring.confusion_table(_classes_only(merged["review6"], CLASSES6), merged["pred6"],
                                                        CLASSES6),
                     confusion5=scoring.confusion_table(_classes_only(merged["review5"], CLASSES5), merged["pred5"],
                                                        CLASSES5),
                     differential=_differential(merged), pending=_pending_table(merged, pending.to_numpy(bool)))


def _classes_only(values: pd.Series, names: Sequence[str]) -> List[str]:
    return [v if v in names else "" for v in values]


def _summary(m: pd.DataFrame, pending: np.ndarray, pending_from: str, source: str) -> dict:
    six = m["review6"].isin(CLASSES6).to_numpy()
    five = m["review5"].isin(CLASSES5).to_numpy()
    kept6 = (m["review6"] == m["pred6"]).to_numpy() & six
    kept5 = (m["review5"] == m["pred5"]).to_numpy() & five
    unusable = (m["review6"] == UNUSABLE).to_numpy()
    decided = (m["review5"] != "").to_numpy()
    confirmed = pending & (kept6 | (~six & kept5))
    return {"review_source": source, "n_cells": int(len(m)), "n_reviewed": int(decided.sum()),
            "n_unusable": int(unusable.sum()), "n_undecided": int((~decided).sum()),
            "agreement6": float(kept6.sum() / six.sum()) if six.any() else None, "n_agreement6": int(six.sum()),
            "agreement5": float(kept5.sum() / five.sum()) if five.any() else None, "n_agreement5": int(five.sum()),
            "pending_from": pending_from, "n_pending": int(pending.sum()),
            "share_pending": float(pending.mean()) if len(m) else None,
            "pending_confirmed": int(confirmed.sum()),
            "pending_reclassified": int((pending & five & ~confirmed).sum()),
            "pending_unusable": int((pending & unusable).sum()), "pending_undecided": int((pending & ~decided).sum()),
            "anchor_agreement": ANCHOR_AGREEMENT, "anchor_unidentified": ANCHOR_UNIDENTIFIED}


def _per_class(m: pd.DataFrame) -> pd.DataFrame:
    """Per AI class: calls reviewed into a class, kept by the reviewer, their share; out of the count; reviewer's n."""
    rows = []
    six = m["review6"].isin(CLASSES6)
    for c in CLASSES6:
        called = (m["pred6"] == c) & six
        kept = int((called & (m["review6"] == c)).sum())
        rows.append({"class": c, "ai_calls_reviewed": int(called.sum()), "kept": kept,
                     "agreement": kept / int(called.sum()) if called.any() else np.nan,
                     "out_of_count": int(((m["pred6"] == c) & (m["review6"] == UNUSABLE)).sum()),
                     "reviewer_n": int((m["review6"] == c).sum())})
    return pd.DataFrame(rows)


def _differential(m: pd.DataFrame) -> pd.DataFrame:
    """Per smear and class: the AI's differential (every cell) and the review's (cells reviewed into a class)."""
    frame = pd.DataFrame({"smear": m["smear"], "pred6": m["pred6"],
                          "true6": _classes_only(m["review6"], CLASSES6), "true5": _classes_only(m["review5"], CLASSES5)})
    out = scoring.differential(frame)
    return out.rename(columns={"n_human": "n_review", "human_pct": "review_pct"})


def _pending_table(m: pd.DataFrame, pending: np.ndarray) -> pd.DataFrame:
    """The pending cells by AI call and outcome (confirmed, reclassified, out of the count, not reviewed)."""
    p = m[pending]
    kept = (p["review6"] == p["pred6"]) | ((p["review6"] == "") & (p["review5"] == p["pred5"]))
    outcome = np.where(p["review5"] == "", "not reviewed", np.where(p["review6"] == UNUSABLE, "out of the count",
                                                                    np.where(kept, "confirmed", "reclassified")))
    table = pd.crosstab(p["pred6"], outcome).reindex(index=list(CLASSES6), fill_value=0)
    table = table.reindex(columns=["confirmed", "reclassified", "out of the count", "not reviewed"], fill_value=0)
    table.index.name = "AI call"
    return table.reset_index()
