"""Writing scoring results: tables, JSON, figures and reports (paper section III: Table 1, Figs. 9 and 10).

:mod:`wbc_nnabla.scoring` computes, this module renders (as scikit-learn's
``metrics`` and ``metrics/_plot``): :func:`write_score` and :func:`write_compare`
write a score or compare folder; :func:`score_sections` and
:func:`compare_sections` are the sections of their reports (which
:mod:`wbc_nnabla.reproduce_report` reuses). It imports scoring, never the other
way, and never imports nnabla.

Its parts, each re-exported here so that every name stays importable from this module:

* :mod:`wbc_nnabla.report_blocks` — the generic building blocks: figures as PNG,
  tables, sections, HTML and Markdown documents, :func:`write_report`;
* :mod:`wbc_nnabla.report_figures` — the figures of a score or comparison
  (Table 1 heatmap, per-smear histogram, judgement-pending curve, differential,
  Fig. 9 box plots, Fig. 10 gallery), :class:`matplotlib.figure.Figure` objects
  made without pyplot and rendered with the Agg canvas.
"""
from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from . import outputs, scoring
from .predictions_domain import WARNING
# Re-exported: the building blocks and figures were defined here before they got their own modules.
from .report_blocks import (DPI, ReportFigure, Section, figure_png, figure_to_base64, format_value,  # noqa: F401
                            html_document, html_img, html_paragraph, html_table, markdown_document,
                            markdown_table, section, write_report)
from .report_figures import (accuracy_histogram, box_plots, confusion_heatmap, differential_figure,  # noqa: F401
                             disagreement_gallery, disagreement_pairs, resolve_image, risk_coverage_figure)


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

    From the ``domain_*`` keys :func:`wbc_nnabla.scoring.score` adds (see :mod:`wbc_nnabla.predictions_domain`).
    """
    bad = summary.get("smears_outside_domain") or []
    if not bad:
        return []
    return [f"WARNING: {len(bad)} smear(s) {WARNING}: {', '.join(map(str, bad))} (more than "
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


def _summary_texts(result: "scoring.ScoreResult") -> List[str]:
    """The paragraphs of a score report's summary: domain warnings, counts, mean ± SD and pooled accuracies."""
    s = result.summary
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
    return domain_warnings(s) + text


def _pending_texts(s: dict) -> List[str]:
    """The paragraphs of a score report's judgement-pending section, from the score summary ``s``."""
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
    return ptext


def score_sections(result: "scoring.ScoreResult", figures: Sequence[ReportFigure] = (),
                   notes: Sequence[str] = (), level: int = 2, prefix: str = "figures/") -> List[Section]:
    """The sections of a score report (summary, Table 1 in 6 and 5 classes, per smear, pending, figures)."""
    s = result.summary
    fig = {f.name: f for f in figures}

    def sec(title: str, texts: Sequence[str], tables: Sequence[Tuple[pd.DataFrame, dict]] = (),
            names: Sequence[str] = ()) -> Section:
        return section(title, texts, tables, [fig[n] for n in names if n in fig], level, prefix)

    out = [sec("Summary", _summary_texts(result), [(_summary_frame(s), {})]), domain_section(result, level)]
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
    tables = [(result.pending[["path", "smear", "label", "pred6", "top6", "reason"]], {"index": False, "max_rows": 50})] \
        if len(result.pending) else []
    out.append(sec("Judgement pending", _pending_texts(s), tables, ["risk_coverage"]))
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
    folders = {str(resolve_image(str(p), result.base_dir).absolute().parent) for p in pd.unique(result.cells["path"])}
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
