"""Building blocks of the HTML and Markdown reports: figures as PNG, tables, sections, documents.

Generic (no scoring knowledge): :mod:`wbc_nnabla.report` builds the ``score`` and
``compare`` reports from them and :mod:`wbc_nnabla.reproduce_report` the
``reproduce``/``demo`` one; both re-use the same look. Every name here is
re-exported by :mod:`wbc_nnabla.report`, where it was defined before.

* :func:`figure_png`, :func:`figure_to_base64`, :func:`html_img` — a figure as PNG bytes / base64 / ``<img>``;
* :func:`html_table`, :func:`markdown_table`, :func:`html_paragraph`, :func:`format_value` — tables, text, values;
* :class:`Section`, :class:`ReportFigure`, :func:`section`, :func:`html_document`,
  :func:`markdown_document`, :func:`write_report` — a report from sections.

Figures are :class:`matplotlib.figure.Figure` objects rendered with the Agg
canvas (never pyplot), at :data:`DPI` dots per inch. HTML pages are
self-contained (inline CSS, images embedded as base64 PNG); Markdown pages refer
to ``figures/<name>.png`` beside them.
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import outputs

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


def write_report(folder: Path, title: str, figures: Sequence[ReportFigure], sections: Sequence[Section]) -> None:
    """Write ``figures/<name>.png``, ``report.html`` (self-contained) and ``report.md`` into ``folder``."""
    if figures:
        (folder / "figures").mkdir(exist_ok=True)
    for f in figures:
        (folder / "figures" / f"{f.name}.png").write_bytes(f.png)
    outputs.write_text(folder / "report.html", html_document(title, sections))
    outputs.write_text(folder / "report.md", markdown_document(title, sections))
