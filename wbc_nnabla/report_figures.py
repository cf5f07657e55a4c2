"""Figures of scoring results: Table 1 heatmaps, per-smear histograms, the judgement-pending curve,
the AI vs human differential, Fig. 9 box plots and the Fig. 10 gallery of disagreeing cells.

Each function takes the tables :mod:`wbc_nnabla.scoring` computes and returns a
:class:`matplotlib.figure.Figure` created without pyplot (importing this module
never changes the matplotlib backend of a notebook); render it with
:func:`wbc_nnabla.report_blocks.figure_png`. Every name here is re-exported by
:mod:`wbc_nnabla.report`, where it was defined before. Never imports nnabla.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import fileio
from .classes import DIFF_CLASSES


def _counts(table: pd.DataFrame) -> pd.DataFrame:
    names = [c for c in table.index if c != "Total"]
    return table.loc[names, names].astype(float)


def confusion_heatmap(table: pd.DataFrame, title: str = "") -> Figure:
    """Heatmap of a Table 1 confusion table (paper section III): colour = share of the human row, text = count.

    table: :func:`wbc_nnabla.scoring.confusion_table` (``k`` classes plus ``Total``/``Accuracy``);
        the figure is about ``0.9 k`` inches square, each row labelled with its recall.
    """
    counts = _counts(table)
    rows = counts.to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        share = rows / np.maximum(rows.sum(axis=1, keepdims=True), 1)
    k = len(counts)
    fig = Figure(figsize=(1.0 + 0.9 * k, 0.8 + 0.75 * k))
    ax = fig.add_subplot(111)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(rows[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(k), counts.columns, rotation=45, ha="right")
    ax.set_yticks(range(k), [f"{c} ({table.at[c, 'Accuracy']:.3f})" if np.isfinite(table.at[c, "Accuracy"])
                             else c for c in counts.index])
    ax.set_xlabel("AI")
    ax.set_ylabel("Human (recall)")
    acc = table.at["Total", "Accuracy"]
    ax.set_title(f"{title}  accuracy {acc:.3f}" if np.isfinite(acc) else title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of human class")
    return fig


def accuracy_histogram(per_smear: pd.DataFrame, title: str = "") -> Figure:
    """Histograms of the per-smear accuracy (fractions in [0, 1]) in six and five classes, with the mean.

    per_smear: :attr:`wbc_nnabla.scoring.ScoreResult.per_smear` (columns ``accuracy6``, ``accuracy5``;
        smears without a scored cell, NaN, are left out).
    """
    fig = Figure(figsize=(9, 3.2))
    for k, col in enumerate(("accuracy6", "accuracy5")):
        ax = fig.add_subplot(1, 2, k + 1)
        v = per_smear[col].to_numpy(float)
        v = v[np.isfinite(v)]
        if len(v):
            lo = min(float(v.min()), 0.95 if col == "accuracy5" else 0.7)
            ax.hist(v, bins=np.linspace(lo, 1.0, 21), color="#4c72b0", edgecolor="white")
            ax.axvline(v.mean(), color="#c44e52", lw=1.5, label=f"mean {v.mean():.3f}")
            ax.legend(fontsize=8, loc="upper left")
        ax.set_xlabel(f"per-smear accuracy, {col[-1]} classes")
        ax.set_ylabel("smears")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def risk_coverage_figure(rc6: pd.DataFrame, rc5: pd.DataFrame, target: Optional[float] = None,
                         threshold: Optional[float] = None) -> Figure:
    """Coverage-accuracy of the "judgement pending" cut-off (paper section IV): accuracy vs coverage, and
    both vs threshold.

    rc6, rc5: :func:`wbc_nnabla.pending.risk_coverage` tables of the six- and five-class views.
    target: accuracy drawn as a line (None: none); threshold: the cut-off in use (None: none).
    """
    fig = Figure(figsize=(10, 3.5))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for rc, lab, col in ((rc6, "6 classes", "#4c72b0"), (rc5, "5 classes", "#55a868")):
        if rc.empty:
            continue
        ax1.plot(rc["coverage"], rc["accuracy"], color=col, label=lab)
        ax2.plot(rc["threshold"], rc["coverage"], color=col, ls="--", label=f"coverage, {lab}")
        ax2.plot(rc["threshold"], rc["accuracy"], color=col, label=f"accuracy, {lab}")
    if target is not None:
        ax1.axhline(target, color="#c44e52", lw=0.8, ls=":", label=f"target {target:g}")
    if threshold is not None:
        ax2.axvline(threshold, color="#c44e52", lw=0.8, ls=":", label=f"threshold {threshold:g}")
    ax1.set_xlabel("coverage (share of cells kept)")
    ax1.set_ylabel("accuracy of kept cells")
    ax1.invert_xaxis()
    ax2.set_xlabel("top-probability threshold")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=7)
    fig.suptitle("Judgement pending: cells below the threshold are left to a human", fontsize=10)
    return fig


def differential_figure(diff: pd.DataFrame) -> Figure:
    """AI vs human differential (percent of a smear's cells), one panel per class, with the identity line.

    diff: :func:`wbc_nnabla.scoring.differential` (long format: one row per smear and class).
    """
    names = list(DIFF_CLASSES)
    fig = Figure(figsize=(12, 3.4))
    for k, c in enumerate(names):
        ax = fig.add_subplot(1, len(names), k + 1)
        d = diff[diff["class"] == c]
        ax.scatter(d["human_pct"], d["ai_pct"], s=8, color="#4c72b0")
        hi = max(1.0, float(np.nanmax(np.r_[d["human_pct"].to_numpy(float), d["ai_pct"].to_numpy(float), 0.0])))
        ax.plot([0, hi], [0, hi], color="#999", lw=0.8)
        ax.set_title(c, fontsize=9)
        ax.set_xlabel("human %", fontsize=8)
        if k == 0:
            ax.set_ylabel("AI %", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("WBC differential per smear: AI vs human", fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.16, top=0.82, wspace=0.4)
    return fig


def box_plots(per_smear_pairs: pd.DataFrame, name_a: str = "Model A", name_b: str = "Model B",
              tests: Optional[Dict[str, dict]] = None) -> Figure:
    """Fig. 9-style box plots of per-smear accuracy of two models, five and six classes.

    per_smear_pairs: :attr:`scoring.CompareResult.per_smear`.
    tests: ``{"5": ..., "6": ...}`` from :func:`scoring.paired_tests` for the p-values in the titles.
    """
    fig = Figure(figsize=(8, 3.8))
    rng = np.random.default_rng(0)  # jitter only
    for k, view in enumerate(("5", "6")):
        ax = fig.add_subplot(1, 2, k + 1)
        data = []
        for s in ("a", "b"):
            v = per_smear_pairs[f"accuracy{view}_{s}"].to_numpy(float)
            data.append(v[np.isfinite(v)])
        ax.boxplot(data, widths=0.5)
        ax.set_xticks([1, 2], [name_a, name_b])
        for i, v in enumerate(data):
            ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, len(v)), v, s=6, alpha=0.5, color="#4c72b0")
        t = (tests or {}).get(view)
        p = "" if not t else f"\nrank-sum p {_pval(t['p_ranksum'])}, signed-rank p {_pval(t['p_signedrank'])}"
        ax.set_title(f"{view} classes{p}", fontsize=9)
        if k == 0:
            ax.set_ylabel("per-smear accuracy")
    fig.tight_layout()
    return fig


def _pval(p) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "< .001" if p < 0.001 else f"= {p:.3f}"


# ----------------------------------------------------------------------------- disagreement gallery (Fig. 10)


def disagreement_pairs(cells: pd.DataFrame, view: str = "6") -> pd.DataFrame:
    """Counts of (human, AI) disagreements among scored cells, most frequent first (paper Fig. 10).

    cells: :attr:`wbc_nnabla.scoring.ScoreResult.cells` (pending cells are left out when flagged).
    view: ``"6"`` or ``"5"`` classes. Returns columns ``human``, ``ai``, ``n``.
    """
    t, p = "true" + view, "pred" + view
    pend = cells["pending" + view] if "pending" + view in cells else False
    wrong = cells[(cells[t] != "") & (cells[t] != cells[p]) & ~pend]
    if wrong.empty:
        return pd.DataFrame(columns=["human", "ai", "n"])
    pairs = wrong.groupby([t, p]).size().reset_index(name="n").rename(columns={t: "human", p: "ai"})
    return pairs.sort_values(["n", "human", "ai"], ascending=[False, True, True], kind="stable").reset_index(drop=True)


def resolve_image(path: str, base_dir: Optional[str]) -> Path:
    """The image file a predictions ``path`` names: a relative one is taken from ``base_dir``
    (the predictions file's folder, :attr:`wbc_nnabla.scoring.ScoreResult.base_dir`) when given."""
    p = Path(path)
    if not p.is_absolute() and base_dir:
        p = Path(base_dir) / p
    return p


def _thumbnail(path: Path, size: int) -> Tuple[np.ndarray, Optional[str]]:
    """RGB uint8 ``(size, size, 3)`` thumbnail, or a grey placeholder and the reason it is one."""
    try:
        rgb = fileio.read_rgb(path)
    except (fileio.ImageReadError, OSError) as e:
        return np.full((size, size, 3), 200, np.uint8), str(e)
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA), None


def disagreement_gallery(cells: pd.DataFrame, base_dir: Optional[str] = None, view: str = "6",
                         max_pairs: int = 6, per_pair: int = 6, thumb: int = 96) -> Tuple[Optional[Figure], List[str]]:
    """Fig. 10-style grid of cells where the AI and the human disagree.

    base_dir: the folder relative image paths are taken from (images are read with
        :func:`wbc_nnabla.fileio.read_rgb`).
    max_pairs: at most this many (human, AI) pairs, most frequent pairs first.
    per_pair: up to this many cells per pair, the most confident AI calls first (``top6``).
    thumb: side of the shown squares in px.

    One row per (human, AI) pair. A missing or unreadable image is a grey tile
    marked "missing" and listed in the returned notes. Returns ``(figure or None when no disagreement, notes)``.
    """
    pairs = disagreement_pairs(cells, view).head(max_pairs)
    notes: List[str] = []
    if pairs.empty:
        return None, ["no disagreement between AI and human among scored cells"]
    t, p = "true" + view, "pred" + view
    # one mosaic image on one axis: drawing 36 small axes costs seconds on the 2-core machine
    pad = max(2, thumb // 12)
    step = thumb + pad
    mosaic = np.full((len(pairs) * step + pad, per_pair * step + pad, 3), 255, np.uint8)
    labels = []
    for r, pr in enumerate(pairs.itertuples(index=False)):
        sel = cells[(cells[t] == pr.human) & (cells[p] == pr.ai)]
        if "pending" + view in sel:
            sel = sel[~sel["pending" + view]]
        sel = sel.sort_values(["top6", "path"], ascending=[False, True], kind="stable").head(per_pair)
        for c, row in enumerate(sel.itertuples(index=False)):
            img, err = _thumbnail(resolve_image(row.path, base_dir), thumb)
            y0, x0 = pad + r * step, pad + c * step
            mosaic[y0:y0 + thumb, x0:x0 + thumb] = img
            labels.append((x0, y0, f"{row.top6:.2f}" + (" missing" if err else ""), bool(err)))
            if err:
                notes.append(f"missing image shown as a placeholder: {err}")
    fig = Figure(figsize=(per_pair * step / 72.0 + 1.9, len(pairs) * step / 72.0 + 0.5))
    ax = fig.add_axes((1.6 / (per_pair * step / 72.0 + 1.9), 0.02, 1 - 1.7 / (per_pair * step / 72.0 + 1.9), 0.9))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for x0, y0, text, missing in labels:
        ax.text(x0 + 2, y0 + thumb - 3, text, fontsize=6, color="#c00" if missing else "white",
                bbox=dict(facecolor="black", alpha=0.4, pad=0.5, lw=0) if not missing else None)
    for r, pr in enumerate(pairs.itertuples(index=False)):
        ax.text(-pad, pad + r * step + thumb / 2, f"{pr.human}\n-> AI {pr.ai}\n(n={pr.n})", fontsize=8,
                ha="right", va="center")
    ax.set_title("Cells where AI and human disagree (rows: human -> AI; label: AI top probability)", fontsize=8)
    return fig, notes
