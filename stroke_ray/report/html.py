"""HTML building blocks of the report: page shell, tables, figures; everything inline.

Text is escaped here; only :class:`Markup` passes through unchanged. Images are embedded as
``data:image/png;base64`` URIs, styles and the table-sorting script are inline, so the page
loads nothing from the network.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Markup",
    "Number",
    "number",
    "table",
    "figure",
    "definitions",
    "link",
    "section",
    "note",
    "page",
]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; background: #f2f2f2; user-select: none; }
table.sortable th[data-order="asc"]::after { content: " \\25B2"; }
table.sortable th[data-order="desc"]::after { content: " \\25BC"; }
tr.error td { background: #fde8e8; } td.error { color: #a00; max-width: 32em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: 600; } dd { margin: 0; }
figure { margin: 0.5em 0 1.5em; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; }
p.note { color: #666; font-style: italic; }
"""

_SCRIPT = """
function sortTable(th) {
  const body = th.closest("table").tBodies[0];
  const column = th.cellIndex;
  const ascending = th.dataset.order !== "asc";
  th.closest("tr").querySelectorAll("th").forEach((h) => delete h.dataset.order);
  th.dataset.order = ascending ? "asc" : "desc";
  const key = (row) => {
    const cell = row.cells[column];
    const text = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    const value = parseFloat(text);
    return text === "" ? null : (isNaN(value) ? text : value);
  };
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
  });
  rows.forEach((row) => body.appendChild(row));
}
document.querySelectorAll("table.sortable th").forEach(
  (th) => th.addEventListener("click", () => sortTable(th)));
"""


class Markup(str):
    """Trusted HTML that is inserted as is."""


@dataclass(frozen=True)
class Number:
    """A numeric cell: shown with ``digits`` decimals, sorted by value (missing sorts last)."""

    value: float | None
    digits: int = 3


def _escape(value: object) -> str:
    return value if isinstance(value, Markup) else html.escape(str(value))


def number(value: object, digits: int = 3) -> str:
    """A number as text with ``digits`` decimals; '–' when missing."""
    if value is None or math.isnan(float(value)):
        return "–"
    return f"{float(value):.{digits}f}"


def _cell(value: object) -> str:
    if isinstance(value, Number):
        text = number(value.value, value.digits)
        sort_key = "" if text == "–" else repr(float(value.value))
        return f'<td class="num" data-sort="{sort_key}">{text}</td>'
    if value is None:
        return '<td data-sort="">–</td>'
    return f"<td>{_escape(value)}</td>"


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    sortable: bool = False,
    row_classes: Sequence[str] | None = None,
) -> str:
    """An HTML table; cells are text, :class:`Number`, :class:`Markup` or None."""
    head = "".join(f"<th>{_escape(name)}</th>" for name in header)
    body = []
    for index, row in enumerate(rows):
        css = row_classes[index] if row_classes else ""
        attribute = f' class="{css}"' if css else ""
        body.append(f"<tr{attribute}>{''.join(_cell(value) for value in row)}</tr>")
    css = ' class="sortable"' if sortable else ""
    return f"<table{css}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(png: bytes, alt: str, caption: str, anchor: str | None = None) -> str:
    """A figure with an embedded PNG and a caption."""
    data = base64.b64encode(png).decode("ascii")
    identifier = f' id="{html.escape(anchor)}"' if anchor else ""
    return (
        f'<figure{identifier}><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
        f"<figcaption>{_escape(caption)}</figcaption></figure>"
    )


def definitions(items: Mapping[str, object]) -> str:
    """A definition list of label → value."""
    entries = "".join(f"<dt>{_escape(k)}</dt><dd>{_escape(v)}</dd>" for k, v in items.items())
    return f"<dl>{entries}</dl>"


def link(text: str, anchor: str) -> Markup:
    """A link to an anchor on the page."""
    return Markup(f'<a href="#{html.escape(anchor)}">{html.escape(text)}</a>')


def section(title: str, *parts: str) -> str:
    """A titled section."""
    return f"<section><h2>{html.escape(title)}</h2>{''.join(parts)}</section>\n"


def note(text: str) -> str:
    """A short remark (e.g. why a figure is missing)."""
    return f'<p class="note">{html.escape(text)}</p>'


def page(title: str, sections: Iterable[str]) -> str:
    """The whole HTML document."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>\n{''.join(sections)}\n"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )
