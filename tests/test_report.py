"""Tests of wbc_nnabla.report: tables, figures, gallery, self-contained reports."""
import ast
import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import predictions_from_confusion, small_counts
from wbc_nnabla import domain, pending, predictions_domain, report, report_blocks, report_figures, scoring

PNG = b"\x89PNG\r\n\x1a\n"


def test_html_and_markdown_tables():
    df = pd.DataFrame({"name": ["<b>x</b>", "y|z"], "n": [3, 4], "acc": [0.12345, np.nan]})
    h = report.html_table(df, index=False)
    assert "&lt;b&gt;x&lt;/b&gt;" in h and "0.123" in h and "nan" not in h.lower()
    m = report.markdown_table(df, index=False).splitlines()
    assert m[0] == "| name | n | acc |" and m[2] == "| <b>x</b> | 3 | 0.123 |"
    assert "y\\|z" in m[3] and m[3].endswith("|  |")
    assert "first 1 of 2 rows" in report.markdown_table(df, max_rows=1)


def test_figure_to_base64_is_png():
    r = scoring.score(predictions_from_confusion(small_counts(), n_smears=3))
    fig = report.confusion_heatmap(r.confusion6, "6 classes")
    data = base64.b64decode(report.figure_to_base64(fig))
    assert data.startswith(PNG)
    assert report.html_img(data, "t").startswith('<img alt="t"')


def test_gallery_with_real_and_missing_images(tmp_path, demo_dir):
    labels = pd.read_csv(demo_dir / "labels.csv")
    lymph = [str(demo_dir / p) for p in labels.loc[labels["label"] == "Lymph", "path"].head(2)]
    df = predictions_from_confusion(np.diag([0, 0, 0, 0, 0, 0]) + np.array(
        [[0] * 6, [0] * 6, [0, 0, 0, 3, 0, 0], [0] * 6, [0] * 6, [0] * 6]), n_smears=1)
    df["path"] = lymph + [str(tmp_path / "gone.png")]
    r = scoring.score(df)
    pairs = report.disagreement_pairs(r.cells)
    assert pairs.iloc[0][["human", "ai", "n"]].tolist() == ["Lymph", "Mono", 3]
    fig, notes = report.disagreement_gallery(r.cells)
    assert fig is not None and report.figure_png(fig).startswith(PNG)
    assert len(notes) == 1 and "gone.png" in notes[0]
    none_fig, none_notes = report.disagreement_gallery(scoring.score(
        predictions_from_confusion(np.eye(6, dtype=int))).cells)
    assert none_fig is None and "no disagreement" in none_notes[0]


def test_score_report_files(tmp_path):
    df = predictions_from_confusion(small_counts(), n_smears=4)
    csv = tmp_path / "pred.csv"
    df.to_csv(csv, index=False)  # relative image paths that do not exist: placeholders
    out = report.write_score(scoring.score(csv, pending_threshold=0.6, target_accuracy=0.9), tmp_path / "out")
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    assert not re.search(r'src="(?!data:)', html)  # self-contained
    assert "Judgement pending" in html and "could not be read" in html
    md = (out / "report.md").read_text()
    refs = re.findall(r"\]\((figures/[^)]+)\)", md)
    assert refs and all((out / r).is_file() for r in refs)
    assert "| Human \\ AI | Basophil |" in md.replace("\\\\", "\\")


def test_compare_report(tmp_path):
    a = predictions_from_confusion(small_counts(), n_smears=4, seed=2)
    b_counts = small_counts().copy()
    b_counts[5, 4], b_counts[5, 5] = 1, 33
    b = predictions_from_confusion(b_counts, n_smears=4, seed=2)
    res = scoring.compare(scoring.score(a), scoring.score(b), name_a="ResNet-18 A", name_b="ResNet-18 B")
    out = report.write_compare(res, tmp_path / "cmp")
    html = (out / "report.html").read_text()
    assert "ResNet-18 A" in html and (out / "figures" / "boxplots.png").is_file()
    assert (out / "A" / "confusion6.csv").is_file() and (out / "B" / "summary.json").is_file()
    seg = res.recall_change.set_index(["view", "class"]).at[("6", "Segment"), "change"]
    assert seg == pytest.approx(33 / 34 - 30 / 34)


def test_formats_doc_names_exactly_the_files_score_and_compare_write(tmp_path):
    """docs/formats.md's score/compare section lists each table and JSON written, and no other."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "formats.md").read_text()
    part = doc.split("## Score and comparison folders")[1].split("\n## ")[0]
    named = set(re.findall(r"`([\w./]+\.(?:csv|json))`", part))
    a = predictions_from_confusion(small_counts(), n_smears=4, seed=2)
    written = set()
    for out in (report.write_score(scoring.score(a), tmp_path / "s"),
                report.write_compare(scoring.compare(scoring.score(a), scoring.score(a), name_b="B"), tmp_path / "c")):
        written |= {p.name for p in out.iterdir() if p.suffix in (".csv", ".json") and not p.name.startswith(".")}
    assert named == written, (sorted(named - written), sorted(written - named))


@pytest.mark.parametrize("old, new", [
    (report, report_blocks), (report, report_figures), (scoring, pending), (domain, predictions_domain)])
def test_names_stay_importable_where_they_were(old, new):
    """Every public name a split-off module defines keeps working from the module it was defined in before."""
    tree = ast.parse(Path(new.__file__).read_text(encoding="utf-8"))
    names = [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]
    names += [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    public = [n for n in names if not n.startswith("_")]
    assert len(public) >= 5
    assert [n for n in public if getattr(old, n, None) is not getattr(new, n)] == []
