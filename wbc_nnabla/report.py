"""Writing scoring results: tables, JSON, figures and reports (paper section III: Table 1, Figs. 9 and 10).

:mod:`wbc_nnabla.scoring` computes, this module renders (as scikit-learn's
``metrics`` and ``metrics/_plot``): :func:`write_score` and :func:`write_compare`
write a score or compare folder. It imports scoring, never the other way, and
never imports nnabla.

Everything here draws on :class:`matplotlib.figure.Figure` objects created
without pyplot, so importing this module never changes the matplotlib backend
of a notebook and figures are rendered with the Agg canvas.

Building blocks for larger reports (:mod:`wbc_nnabla.reproduce_report` reuses them):

* :func:`figure_png`, :func:`figure_to_base64`, :func:`html_img` — a figure as PNG bytes / base64 / ``<img>``;
* :func:`html_table`, :func:`markdown_table`, :func:`html_paragraph`, :func:`format_value` — tables, text, values;
* :class:`Section`, :func:`section`, :func:`html_document`, :func:`markdown_document`,
  :func:`write_report` — a report from sections;
* :func:`score_sections`, :func:`compare_sections` — the sections of a ``score`` / ``compare`` run.
"""
from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import domain, fileio, outputs, scoring
from .classes import DIFF_CLASSES

log = logging.getLogger(__name__)

DPI = 100


# ----------------------------------------------------------------------------- figure plumbing


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """Render a figure to PNG bytes with the Agg canvas."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def figure_to_base64(fig: Union[Figure, bytes], dpi: int = DPI) -> str:
    """A figure (or PNG bytes) as a base64 string, for ``data:image/png;base64,...``."""
    data = fig if isinstance(fig, (bytes, bytearray)) else figure_png(fig, dpi)
    return base64.b64encode(data).decode("ascii")


def html_img(fig: Union[Figure, bytes], alt: str = "", width: Optional[int] = None) -> str:
    """An ``<img>`` tag embedding the figure as base64 PNG (self-contained HTML)."""
    w = f' style="max-width:{int(width)}px"' if width else ""
    return (f'<img alt="{html.escape(alt)}"{w} '
            f'src="data:image/png;base64,{figure_to_base64(fig)}"/>')


def format_value(v, digits: int = 3) -> str:
    """A table or text value as text: floats with ``digits`` decimals (NaN/inf blank), None blank."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else f"{v:.{digits}f}"
    return "" if v is None else str(v)


def html_table(df: pd.DataFrame, digits: int = 3, index: bool = True, max_rows: Optional[int] = None) -> str:
    """A DataFrame as an HTML table (values escaped; floats with ``digits`` decimals, NaN blank)."""
    shown = df if max_rows is None or len(df) <= max_rows else df.head(max_rows)
    body = shown.to_html(index=index, escape=True, na_rep="", classes="wbc", border=0,
                         float_format=lambda v: format_value(v, digits))
    if shown is not df:
        body += f"<p class='note'>first {max_rows} of {len(df)} rows shown (full table in the CSV)</p>"
    return body


def markdown_table(df: pd.DataFrame, digits: int = 3, index: bool = True, max_rows: Optional[int] = None) -> str:
    """A DataFrame as a GitHub-flavoured Markdown pipe table.

    Written by hand because :meth:`pandas.DataFrame.to_markdown` needs the
    optional ``tabulate`` package, which is not a dependency.
    """
    shown = df if max_rows is None or len(df) <= max_rows else df.head(max_rows)
    cols = ([str(shown.index.name or "")] if index else []) + [str(c) for c in shown.columns]
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |", "|" + "---|" * len(cols)]
    for tup in shown.itertuples(index=True, name=None):  # keeps each column's dtype (iterrows would not)
        cells = ([format_value(tup[0], digits)] if index else []) + [format_value(v, digits) for v in tup[1:]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if shown is not df:
        lines.append(f"\n(first {max_rows} of {len(df)} rows; full table in the CSV)")
    return "\n".join(lines)


@dataclass
class Section:
    """One report section: a title, its HTML body and its Markdown body."""

    title: str
    html: str
    markdown: str
    level: int = 2


@dataclass
class ReportFigure:
    """A rendered figure: file name (``figures/<name>.png``), caption and PNG bytes."""

    name: str
    caption: str
    png: bytes

    def html(self) -> str:
        return f"<figure>{html_img(self.png, self.caption)}<figcaption>{html.escape(self.caption)}</figcaption></figure>"

    def markdown(self, prefix: str = "figures/") -> str:
        return f"![{self.caption}]({prefix}{self.name}.png)\n\n*{self.caption}*"


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table.wbc{border-collapse:collapse;font-size:.85em;margin:.5em 0}
table.wbc th,table.wbc td{border:1px solid #ddd;padding:3px 7px;text-align:right}
table.wbc th{background:#f3f3f3} figure{margin:1em 0} figcaption{font-size:.85em;color:#555}
img{max-width:100%} .note{font-size:.85em;color:#555} code{background:#f3f3f3;padding:0 3px}
"""


def html_document(title: str, sections: Sequence[Section], intro: str = "") -> str:
    """A self-contained HTML page (inline CSS, images embedded) from sections."""
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if intro:
        parts.append(f"<p>{intro}</p>")
    for s in sections:
        parts.append(f"<h{s.level}>{html.escape(s.title)}</h{s.level}>\n{s.html}")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def markdown_document(title: str, sections: Sequence[Section], intro: str = "") -> str:
    """A Markdown report from sections (figures referenced as files next to it)."""
    parts = [f"# {title}\n"]
    if intro:
        parts.append(intro + "\n")
    for s in sections:
        parts.append(f"{'#' * s.level} {s.title}\n\n{s.markdown}\n")
    return "\n".join(parts)


def html_paragraph(text: str) -> str:
    """``text`` escaped in a ``<p>`` element."""
    return f"<p>{html.escape(text)}</p>"


def section(title: str, texts: Sequence[str] = (), tables: Sequence[Tuple[pd.DataFrame, dict]] = (),
            figures: Sequence["ReportFigure"] = (), level: int = 2, prefix: str = "figures/") -> Section:
    """A section of paragraphs, then tables ``(DataFrame, html_table/markdown_table options)``,
    then figures, rendered alike in HTML and Markdown."""
    h = "".join(html_paragraph(t) for t in texts) + "".join(html_table(d, **kw) for d, kw in tables)
    m = "\n\n".join(list(texts) + [markdown_table(d, **kw) for d, kw in tables])
    for f in figures:
        h += f.html()
        m += "\n\n" + f.markdown(prefix)
    return Section(title, h, m, level)


# ----------------------------------------------------------------------------- figures


def _counts(table: pd.DataFrame) -> pd.DataFrame:
    names = [c for c in table.index if c != "Total"]
    return table.loc[names, names].astype(float)


def confusion_heatmap(table: pd.DataFrame, title: str = "") -> Figure:
    """Heatmap of a Table 1 confusion table: colour = share of the human row, text = count."""
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
    """Histograms of the per-smear accuracy in six and five classes, with the mean."""
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
    """Coverage-accuracy of the "judgement pending" cut-off: accuracy vs coverage, and both vs threshold."""
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
    """AI vs human differential (% per smear), one panel per class, with the identity line."""
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
    """Counts of (human, AI) disagreements among scored cells, most frequent first."""
    t, p = "true" + view, "pred" + view
    pend = cells["pending" + view] if "pending" + view in cells else False
    wrong = cells[(cells[t] != "") & (cells[t] != cells[p]) & ~pend]
    if wrong.empty:
        return pd.DataFrame(columns=["human", "ai", "n"])
    pairs = wrong.groupby([t, p]).size().reset_index(name="n").rename(columns={t: "human", p: "ai"})
    return pairs.sort_values(["n", "human", "ai"], ascending=[False, True, True], kind="stable").reset_index(drop=True)


def _resolve_image(path: str, base_dir: Optional[str]) -> Path:
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
            img, err = _thumbnail(_resolve_image(row.path, base_dir), thumb)
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


# ----------------------------------------------------------------------------- score / compare reports


def score_figures(result: "scoring.ScoreResult", gallery: bool = True, title: str = "") -> Tuple[List[ReportFigure], List[str]]:
    """Render the figures of a score run; returns them and the gallery notes."""
    s = result.summary
    figs = [
        ReportFigure("confusion6", f"{title}Confusion table, 6 classes (Table 1 layout; colour = share of human row)",
                     figure_png(confusion_heatmap(result.confusion6, "6 classes"))),
        ReportFigure("confusion5", f"{title}Confusion table, 5 classes (Band + Segment = Neutrophil)",
                     figure_png(confusion_heatmap(result.confusion5, "5 classes"))),
        ReportFigure("accuracy_histogram", f"{title}Per-smear accuracy",
                     figure_png(accuracy_histogram(result.per_smear))),
        ReportFigure("differential", f"{title}WBC differential per smear, AI vs human",
                     figure_png(differential_figure(result.differential))),
    ]
    if not result.risk_coverage6.empty:
        figs.append(ReportFigure("risk_coverage", f"{title}Coverage and accuracy of the judgement-pending cut-off",
                                 figure_png(risk_coverage_figure(result.risk_coverage6, result.risk_coverage5,
                                                                 s.get("target_accuracy"),
                                                                 s.get("pending_threshold")))))
    notes: List[str] = []
    if gallery:
        fig, notes = disagreement_gallery(result.cells, result.base_dir)
        if fig is not None:
            figs.append(ReportFigure("disagreements", f"{title}Cells where AI and human disagree (Fig. 10 style)",
                                     figure_png(fig)))
    return figs, notes


def _summary_frame(summary: dict) -> pd.DataFrame:
    keys = ["n_cells", "n_smears", "n_labeled6", "n_labeled5", "n_neutrophil_only", "n_unlabeled",
            "accuracy6_pooled", "accuracy5_pooled", "accuracy6_mean", "accuracy6_sd", "accuracy5_mean",
            "accuracy5_sd", "best_smear", "best_smear_accuracy6", "worst_smear", "worst_smear_accuracy6",
            "pending_threshold", "pending_margin", "n_pending", "coverage", "target_accuracy",
            "threshold_at_target6", "coverage_at_target6", "threshold_at_target5", "coverage_at_target5",
            "domain_check", "domain_share_outside"]
    rows = [(k, summary[k]) for k in keys if k in summary]
    return pd.DataFrame({"value": [format_value(v) for _, v in rows]}, index=pd.Index([k for k, _ in rows], name="figure"))


def domain_warnings(summary: dict) -> List[str]:
    """Warning lines of a score summary: one naming the smears outside the training domain (none inside).

    From the ``domain_*`` keys :func:`wbc_nnabla.scoring.score` adds (see :mod:`wbc_nnabla.domain`).
    """
    bad = summary.get("smears_outside_domain") or []
    if not bad:
        return []
    return [f"WARNING: {len(bad)} smear(s) {domain.WARNING}: {', '.join(map(str, bad))} (more than "
            f"{summary['domain_smear_share']:.0%} of their cells are unlike the cells the model was trained on; "
            f"see the domain-shift check)."]


def domain_section(result: "scoring.ScoreResult", level: int = 2, title: str = "Domain-shift check") -> Section:
    """The domain-shift check of a score: what it measured per smear, or why it is unavailable."""
    s = result.summary
    if s.get("domain_check") in (None, "unavailable"):
        return section(title, [f"Unavailable: {s.get('domain_check_reason', 'no check in the data')}. "
                                              "Nothing tells whether these cells resemble the training cells."],
                       level=level)
    text = [f"Share of cells unlike the cells the model was trained on (beyond the 99th percentile of their own "
            f"distances; a fine-tuned model also counts its site's labelled cells as such): "
            f"{s['domain_share_outside']:.1%} over the run, median distance {s['domain_median_distance']:.2f}. "
            f"A smear is outside the training domain above {s['domain_smear_share']:.0%} (docs/inference.md)."]
    text += domain_warnings(s) or ["Every smear is inside the training domain."]
    cols = ["smear", "n_cells", "domain_median_distance", "domain_share_outside", "outside_domain"]
    return section(title, text, [(result.per_smear[cols], {"index": False, "max_rows": 100})],
                   level=level)


def score_sections(result: "scoring.ScoreResult", figures: Sequence[ReportFigure] = (),
                   notes: Sequence[str] = (), level: int = 2, prefix: str = "figures/") -> List[Section]:
    """The sections of a score report (summary, Table 1 in 6 and 5 classes, per smear, pending, figures)."""
    s = result.summary
    fig = {f.name: f for f in figures}

    def sec(title: str, texts: Sequence[str], tables: Sequence[Tuple[pd.DataFrame, dict]] = (),
            names: Sequence[str] = ()) -> Section:
        return section(title, texts, tables, [fig[n] for n in names if n in fig], level, prefix)

    sd_note = f"Mean ± SD over smears (sample SD, ddof={s['sd_ddof']}); pooled = all scored cells together."
    text = [f"{s['n_cells']} cells in {s['n_smears']} smears from {result.source}.",
            f"6 classes: mean {format_value(s['accuracy6_mean'])} ± {format_value(s['accuracy6_sd'])}, pooled "
            f"{format_value(s['accuracy6_pooled'])}; 5 classes: mean {format_value(s['accuracy5_mean'])} ± "
            f"{format_value(s['accuracy5_sd'])}, pooled {format_value(s['accuracy5_pooled'])}. {sd_note}"]
    if s["n_neutrophil_only"]:
        text.append(f"{s['n_neutrophil_only']} cells labeled only 'Neutrophil' by the human count in the "
                    f"5-class figures and are left out of the 6-class ones.")
    if s["n_unlabeled"]:
        text.append(f"{s['n_unlabeled']} cells have no human label: they count in the AI differential only.")
    if s["smears_without_scored_cells"]:
        text.append(f"Smears without a scored cell (left out of mean and SD): {', '.join(s['smears_without_scored_cells'])}.")
    text = domain_warnings(s) + text
    out = [sec("Summary", text, [(_summary_frame(s), {})]), domain_section(result, level)]
    out.append(sec("Confusion table, 6 classes (Table 1, human rows x AI columns)",
                   ["'Accuracy' is the recall of each human class; the Total row holds the pooled accuracy."],
                   [(result.confusion6, {})], ["confusion6"]))
    out.append(sec("Confusion table, 5 classes (Band and Segment merged)", [], [(result.confusion5, {})],
                   ["confusion5"]))
    out.append(sec("Per-smear accuracy", [], [(result.per_smear[["smear", "n_cells", "accuracy6", "accuracy5",
                                                                 "n_pending", "n_scored6", "n_scored5"]],
                                               {"index": False})], ["accuracy_histogram"]))
    diff = result.differential.groupby("class", sort=False)["abs_diff"].agg(["mean", "max"])
    diff.columns = ["mean abs. difference (points)", "max abs. difference (points)"]
    out.append(sec("WBC differential, AI vs human",
                   ["Per-smear percentages are in differential.csv; below, the absolute difference per class "
                    "over smears."], [(diff, {"digits": 2})], ["differential"]))
    ptext = []
    if s.get("pending_threshold") is None and s.get("pending_margin") is None:
        ptext.append("No judgement-pending cut-off was set: every cell is scored. The curve shows what a "
                     "top-probability cut-off would keep.")
    else:
        ptext.append(f"{s['n_pending']} cells pending (coverage {format_value(s['coverage'])}); listed in pending.csv, "
                     f"never counted as correct or wrong.")
    if s.get("target_accuracy") is not None:
        for v in ("6", "5"):
            th = s.get("threshold_at_target" + v)
            ptext.append(f"{v} classes: target accuracy {s['target_accuracy']:g} "
                         + (f"reached from threshold {th:.4f} (coverage {s['coverage_at_target' + v]:.3f}, "
                            f"in-sample)." if th is not None else "is not reached by any threshold."))
    tables = [(result.pending[["path", "smear", "label", "pred6", "top6", "reason"]], {"index": False, "max_rows": 50})] \
        if len(result.pending) else []
    out.append(sec("Judgement pending", ptext, tables, ["risk_coverage"]))
    if "disagreements" in fig or notes:
        uniq = sorted(set(notes))
        gtext = [f"{len(uniq)} image(s) could not be read and are shown as placeholders."] if uniq else []
        g = sec("Disagreements (Fig. 10 style)", gtext, [(disagreement_pairs(result.cells).head(10), {"index": False})],
                ["disagreements"])
        if uniq:
            g.html += "<ul class='note'>" + "".join(f"<li>{html.escape(n)}</li>" for n in uniq[:20]) + "</ul>"
            g.markdown += "\n\n" + "\n".join(f"- {n}" for n in uniq[:20])
        out.append(g)
    return out


def write_report(folder: Path, title: str, figures: Sequence[ReportFigure], sections: Sequence[Section]) -> None:
    """Write ``figures/<name>.png``, ``report.html`` (self-contained) and ``report.md`` into ``folder``."""
    if figures:
        (folder / "figures").mkdir(exist_ok=True)
    for f in figures:
        (folder / "figures" / f"{f.name}.png").write_bytes(f.png)
    outputs.write_text(folder / "report.html", html_document(title, sections))
    outputs.write_text(folder / "report.md", markdown_document(title, sections))


def write_score_report(result: "scoring.ScoreResult", folder: Union[str, os.PathLike], gallery: bool = True,
                       extra_sections: Sequence[Tuple[str, Sequence[str], Sequence[Tuple[pd.DataFrame, dict]]]] = ()
                       ) -> None:
    """Write ``figures/*.png``, ``report.html`` (self-contained) and ``report.md`` of a score run into ``folder``;
    ``extra_sections`` (``(title, paragraphs, [(table, options)])``, e.g. a review's agreement) come last."""
    folder = Path(folder)
    figures, notes = score_figures(result, gallery=gallery)
    write_report(folder, "WBC differential scoring (Sasaki et al. 2020, section III)", figures,
                 score_sections(result, figures, notes) + [section(t, x, tb) for t, x, tb in extra_sections])


def compare_sections(result: "scoring.CompareResult", figures: Sequence[ReportFigure] = (), level: int = 2,
                     prefix: str = "figures/") -> List[Section]:
    """Sections of a compare report: tests (Fig. 9), recall change per class, per-smear pairs."""
    s = result.summary
    a, b = result.name_a, result.name_b
    rows = []
    for v in ("5", "6"):
        t = s["tests" + v]
        rows.append({"classes": v, f"{a} mean": t["mean_a"], f"{a} SD": s[f"accuracy{v}_sd_a"],
                     f"{b} mean": t["mean_b"], f"{b} SD": s[f"accuracy{v}_sd_b"], "mean diff (B-A)": t["mean_diff"],
                     "rank-sum p": t["p_ranksum"], "signed-rank p": t["p_signedrank"], "smears": t["n_pairs"]})
    tests = pd.DataFrame(rows).set_index("classes")
    notes = [t["note"] for t in (s["tests5"], s["tests6"]) if t["note"]]
    notes += [f"{v} classes: {t[f'p_{k}_note']}." for v, t in (("5", s["tests5"]), ("6", s["tests6"]))
              for k in scoring.TESTS if f"p_{k}_note" in t]
    text = [f"{s['n_cells']} cells in {s['n_smears']} smears, matched by path. Wilcoxon rank-sum "
            f"(scipy.stats.ranksums, as in the paper) and, since smears are paired, signed-rank "
            f"(scipy.stats.wilcoxon). SD: sample SD (ddof={s['sd_ddof']})."] + notes
    boxplots = [f for f in figures if f.name == "boxplots"]
    out = [section(f"{a} vs {b}: per-smear accuracy", text, [(tests, {"digits": 4})], boxplots, level, prefix)]
    rc = result.recall_change.rename(columns={"recall_a": f"recall {a}", "recall_b": f"recall {b}"})
    out.append(section("Per-class accuracy (recall) change",
                       ["Recall of each human class (Table 1 'Accuracy'); change = B - A."],
                       [(rc, {"index": False})], level=level))
    out.append(section("Per-smear pairs", tables=[(result.per_smear, {"index": False})], level=level))
    return out


def write_compare_report(result: "scoring.CompareResult", folder: Union[str, os.PathLike]) -> None:
    """Write the Fig. 9 box plots, the confusion heatmaps of both models and ``report.html``/``report.md``."""
    folder = Path(folder)
    tests = {"5": result.summary["tests5"], "6": result.summary["tests6"]}
    figures = [ReportFigure("boxplots", f"Per-smear accuracy, {result.name_a} vs {result.name_b} (Fig. 9 style)",
                            figure_png(box_plots(result.per_smear, result.name_a, result.name_b, tests)))]
    sections = compare_sections(result, figures)
    for tag, name, sc in (("A", result.name_a, result.score_a), ("B", result.name_b, result.score_b)):
        f6 = ReportFigure(f"confusion6_{tag}", f"{name}: confusion table, 6 classes",
                          figure_png(confusion_heatmap(sc.confusion6, f"{name}, 6 classes")))
        figures.append(f6)
        sections.append(section(f"{name}: Table 1 (6 and 5 classes)",
                                tables=[(sc.confusion6, {}), (sc.confusion5, {})], figures=[f6]))
    write_report(folder, f"{result.name_a} vs {result.name_b} (Sasaki et al. 2020, Fig. 9)", figures, sections)


# ----------------------------------------------------------------------------- score / compare folders


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


def _score_inputs(result: "scoring.ScoreResult") -> List[str]:
    """What a score run read: its predictions CSV and the folder of every image its ``path`` column names.

    Image paths are resolved as the gallery reads them (relative ones from the
    CSV's folder). Their folders, not the images, are listed: an output folder
    holding an image entry (a symbolic link too) is refused.
    """
    source = result.settings.get("predictions")
    files = [source] if source and Path(source).exists() else []
    folders = {str(_resolve_image(str(p), result.base_dir).absolute().parent) for p in pd.unique(result.cells["path"])}
    return files + sorted(folders)


def _check_output(out_dir: Path, command: str, overwrite: bool,
                  results: Sequence["scoring.ScoreResult"]) -> None:
    """Refuse an output folder that is not an earlier ``command`` output, or that is or holds an input.

    :func:`wbc_nnabla.outputs.check_output` with the files and image folders of
    :func:`_score_inputs` of ``results``: ``overwrite`` replaces only a folder
    that is empty or carries the marker of the same command, and never one the
    predictions point into.
    """
    if not out_dir.exists() and not out_dir.is_symlink():
        return      # nothing to lose: skip listing the image folders
    inputs = sorted(set().union(*(_score_inputs(r) for r in results)))
    outputs.check_output(out_dir, command, overwrite, inputs, folder=True)


def write_score(result: "scoring.ScoreResult", out_dir: Union[str, os.PathLike], figures: bool = True,
                gallery: bool = True, overwrite: bool = False, extra_sections=(),
                extra_files: Optional[Dict[str, object]] = None) -> Path:
    """Write a :class:`~wbc_nnabla.scoring.ScoreResult` into ``out_dir`` (created atomically: a temp folder renamed at the end).

    Files: ``per_smear.csv``, ``confusion6.csv``, ``confusion5.csv``,
    ``differential.csv``, ``pending.csv``, ``risk_coverage.csv``,
    ``summary.json``, ``config.json`` and, with ``figures``, ``figures/*.png``,
    ``report.html`` (self-contained) and ``report.md``; the folder is marked as a
    ``score`` output (:data:`wbc_nnabla.outputs.OUTPUT_MARKER`). Raises
    ``FileExistsError`` when ``out_dir`` exists and ``overwrite`` is false, or
    when it is not an earlier score output (nor empty); :class:`wbc_nnabla.fileio.SourceError`
    when it is, or holds, the predictions CSV or an image it points to. ``extra_sections`` and
    ``extra_files`` (``{name: DataFrame (CSV) or dict (JSON)}``) add another stage's results, e.g.
    ``score --reviewed``'s agreement (:meth:`wbc_nnabla.review.labels.Agreement.sections`, ``.files``).
    """
    out_dir = Path(out_dir)
    _check_output(out_dir, "score", overwrite, [result])
    with outputs.atomic_dir(out_dir, overwrite=overwrite, command="score") as tmp:
        write_score_files(result, tmp)
        for name, obj in (extra_files or {}).items():
            if isinstance(obj, pd.DataFrame):
                obj.to_csv(tmp / name, index=not isinstance(obj.index, pd.RangeIndex), float_format="%.6g")
            else:
                outputs.write_json(tmp / name, _json_safe(obj))
        if figures:
            write_score_report(result, tmp, gallery=gallery, extra_sections=extra_sections)
    return out_dir


def write_score_files(result: "scoring.ScoreResult", folder: Union[str, os.PathLike]) -> None:
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
    outputs.write_json(folder / "summary.json", _json_safe(result.summary))
    outputs.write_json(folder / "config.json", _json_safe({"command": "score", **result.settings,
                                                      "environment": outputs.environment()}))


def write_compare(result: "scoring.CompareResult", out_dir: Union[str, os.PathLike], figures: bool = True,
                  overwrite: bool = False) -> Path:
    """Write a :class:`~wbc_nnabla.scoring.CompareResult`: ``comparison.json``, ``per_smear_pairs.csv``,
    ``recall_change.csv``, ``config.json``, each model's score in ``A/`` and ``B/``
    folders (tables only) and, with ``figures``, box plots and ``report.html``/``report.md``.

    The folder is marked as a ``compare`` output; ``overwrite`` replaces only an
    earlier compare output (or an empty folder), never one holding either
    predictions CSV or an image they point to (as :func:`write_score`)."""
    out_dir = Path(out_dir)
    _check_output(out_dir, "compare", overwrite, [result.score_a, result.score_b])
    with outputs.atomic_dir(out_dir, overwrite=overwrite, command="compare") as tmp:
        result.per_smear.to_csv(tmp / "per_smear_pairs.csv", index=False, float_format="%.6g")
        result.recall_change.to_csv(tmp / "recall_change.csv", index=False, float_format="%.6g")
        outputs.write_json(tmp / "comparison.json", _json_safe(result.summary))
        outputs.write_json(tmp / "config.json", _json_safe({"command": "compare", "model_a": result.name_a,
                                                       "model_b": result.name_b,
                                                       "predictions_a": result.summary["predictions_a"],
                                                       "predictions_b": result.summary["predictions_b"],
                                                       "pending_threshold": result.summary["pending_threshold"],
                                                       "pending_margin": result.summary["pending_margin"],
                                                       "environment": outputs.environment()}))
        for sub, s in (("A", result.score_a), ("B", result.score_b)):
            (tmp / sub).mkdir()
            write_score_files(s, tmp / sub)
        if figures:
            write_compare_report(result, tmp)
    return out_dir
