"""The report of a ``reproduce`` / ``demo`` run: the paper's Results in one page.

It knows the pipeline's folder layout (``model_A/learning_curve.png``...;
see :mod:`wbc_nnabla.pipeline`) and assembles its sections from the generic
blocks of :mod:`wbc_nnabla.report_blocks`, the figures of
:mod:`wbc_nnabla.report_figures` and the score/compare sections of
:mod:`wbc_nnabla.report`: learning curves (Figs. 5 and 7), Table 1
A1/A2/B1/B2, Fig. 9, Fig. 10 with Grad-CAM, and the judgement-pending curve.
Reads only files under the run folder and results already computed (never
imports nnabla).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from . import report, report_figures, scoring
from .report_blocks import (ReportFigure, Section, figure_png, format_value, html_paragraph, html_table,
                            markdown_table, section, write_report)


def _file_figures(figures: List[ReportFigure], items) -> Tuple[str, str]:
    """Add a figure per existing PNG file ``(name, caption, path)``; returns their HTML and Markdown."""
    h, m = "", ""
    for name, caption, path in items:
        if Path(path).is_file():
            f = ReportFigure(name, caption, Path(path).read_bytes())
            figures.append(f)
            h, m = h + f.html(), m + "\n\n" + f.markdown()
    return h, m


def _run_section(config: dict, split: dict, summary: dict) -> Section:
    """The settings of the run, the split, its duration and a warning when inference and training scales differ."""
    cfg_df = pd.DataFrame({"value": [format_value(v) for v in config.values()]},
                          index=pd.Index(list(config.keys()), name="setting"))
    warn = []
    if config.get("infer_size") != config.get("train_size"):
        warn.append(f"Inference input {config['infer_size']} px vs training input {config['train_size']} px: both "
                    f"come from the same crop, so at inference every cell looks "
                    f"{config['infer_size'] / config['train_size']:.2f}x as large as in training (the paper's "
                    f"480/320). Global average pooling accepts any size, but the features do not rescale; see "
                    f"docs/method.md, '480/320', and the 'recommended' preset, which infers at the training scale.")
    text = [f"Preset '{config.get('preset')}'. {split.get('note', '')}.",
            f"Teacher cells: {split.get('n_teacher')}; inference cells: {split.get('n_inference')} in "
            f"{split.get('n_smears')} smears. Whole run: {summary.get('seconds')} s."] + warn
    return section("Run", text, [(cfg_df, {})])


def _table1_section(score_a: "scoring.ScoreResult", score_b: "scoring.ScoreResult") -> Section:
    """Table 1: A1/B1 five classes, A2/B2 six classes, with each model's mean ± SD over smears."""
    h, m = "", ""
    for tag, sc in (("A", score_a), ("B", score_b)):
        s = sc.summary
        line = (f"Model {tag}: 6 classes {format_value(s['accuracy6_mean'])} ± {format_value(s['accuracy6_sd'])}, "
                f"5 classes {format_value(s['accuracy5_mean'])} ± {format_value(s['accuracy5_sd'])} (mean ± SD over "
                f"smears); best smear {s['best_smear']}, worst {s['worst_smear']}.")
        warn = report.domain_warnings(s)
        line = " ".join([line] + warn)
        h += html_paragraph(line) + f"<h3>Table 1 {tag}1 (5 classes)</h3>" + html_table(sc.confusion5)
        h += f"<h3>Table 1 {tag}2 (6 classes)</h3>" + html_table(sc.confusion6)
        m += f"\n\n{line}\n\n**Table 1 {tag}1 (5 classes)**\n\n{markdown_table(sc.confusion5)}"
        m += f"\n\n**Table 1 {tag}2 (6 classes)**\n\n{markdown_table(sc.confusion6)}"
    return Section("Table 1: confusion tables (human rows x AI columns)", h, m)


def _disagreement_section(figures: List[ReportFigure], score_b: "scoring.ScoreResult",
                          gradcams: Sequence[dict]) -> Section:
    """Fig. 10: the cells where Model B and the human disagree, the most frequent pairs, the Grad-CAM overlays."""
    fig, _ = report_figures.disagreement_gallery(score_b.cells, score_b.base_dir)
    h, m = "", ""
    if fig is not None:
        g = ReportFigure("disagreements_B", "Model B: cells where AI and human disagree (Fig. 10 style)",
                         figure_png(fig))
        figures.append(g)
        h, m = g.html(), g.markdown()
    pairs = report_figures.disagreement_pairs(score_b.cells).head(10)
    h += html_table(pairs, index=False)
    m += "\n\n" + markdown_table(pairs, index=False)
    hg, mg = _file_figures(figures, [(f"gradcam_{i}", f"Grad-CAM, Model B: human {c['human']}, AI {c['ai']} "
                                      f"({Path(c['cell']).name})", Path(c["path"])) for i, c in enumerate(gradcams)])
    return Section("Disagreements and Grad-CAM (Fig. 10; discussion)", h + hg, m + mg)


def _pending_section(figures: List[ReportFigure], score_b: "scoring.ScoreResult") -> List[Section]:
    """Judgement pending: the risk-coverage curve of Model B and a dozen rows of its table (none without labels)."""
    rc = score_b.risk_coverage6
    if rc.empty:
        return []
    f = ReportFigure("risk_coverage_B", "Model B: coverage and accuracy of a judgement-pending cut-off",
                     figure_png(report_figures.risk_coverage_figure(score_b.risk_coverage6, score_b.risk_coverage5,
                                                                    score_b.summary.get("target_accuracy"),
                                                                    score_b.summary.get("pending_threshold"))))
    figures.append(f)
    keep = rc.iloc[np.unique(np.linspace(0, len(rc) - 1, min(len(rc), 12)).round().astype(int))]
    text = ["Cells whose top probability is below a threshold are held for a human (the paper's "
            "conclusion). Coverage = share of cells the AI decides; accuracy over those."]
    return [section("Judgement pending (conclusion)", text, [(keep, {"index": False})], [f])]


def reproduce_sections(out: Path, config: dict, split: dict, score_a: "scoring.ScoreResult",
                       score_b: "scoring.ScoreResult", comparison: "scoring.CompareResult",
                       gradcams: Sequence[dict], summary: dict) -> Tuple[List[Section], List[ReportFigure]]:
    """Sections mirroring the paper's Results: curves (Figs 5/7), Table 1 A1/A2/B1/B2, Fig. 9, Fig. 10, pending.

    out: the run folder (learning curves are read from ``out/model_A`` and ``out/model_B``).
    config: the run's settings.
    split: ``split/split.json``.
    score_a: the result of Model A.
    score_b: the result of Model B.
    comparison: the comparison of both models.
    gradcams: dicts ``path`` (overlay PNG), ``cell``, ``human``, ``ai``.
    summary: the headline summary (``seconds``).

    Returns the sections and the figures they show.
    """
    figures: List[ReportFigure] = []
    sections: List[Section] = [_run_section(config, split, summary)]
    # Figs 5 and 7: learning curves written by the training stage.
    h, m = _file_figures(figures, [(f"learning_curve_{tag}", f"WBC Model {tag}: Cost, Training Error and "
                                    f"Validation Error per epoch (Fig. {n} style)",
                                    out / f"model_{tag}" / "learning_curve.png") for tag, n in (("A", 5), ("B", 7))])
    sections.append(Section("Learning curves (Figs 5 and 7)", h, m))
    sections.append(_table1_section(score_a, score_b))
    sections.append(report.domain_section(score_b, title="Domain-shift check (Model B's inference cells)"))
    # Fig. 9: box plots and tests.
    tests = {"5": comparison.summary["tests5"], "6": comparison.summary["tests6"]}
    box = ReportFigure("boxplots", "Per-smear accuracy, Model A vs Model B (Fig. 9 style)",
                       figure_png(report_figures.box_plots(comparison.per_smear, comparison.name_a,
                                                           comparison.name_b, tests)))
    figures.append(box)
    sections.extend(report.compare_sections(comparison, [box])[:2])
    sections.append(_disagreement_section(figures, score_b, gradcams))
    sections.extend(_pending_section(figures, score_b))
    return sections, figures


def write_reproduce_report(out: Union[str, os.PathLike], config: dict, split: dict, score_a, score_b, comparison,
                           gradcams: Sequence[dict], summary: dict) -> Path:
    """Write ``OUT/report.html`` (self-contained), ``OUT/report.md`` and ``OUT/figures/``; returns the HTML path."""
    out = Path(out)
    sections, figures = reproduce_sections(out, config, split, score_a, score_b, comparison, gradcams, summary)
    write_report(out, "WBC Model A and B: reproduction of Sasaki et al. (2020)", figures, sections)
    return out / "report.html"
