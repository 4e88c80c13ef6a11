"""The HTML page: one self-contained file, images embedded as base64 data URIs, no scripts.

Plain string templates; every piece of text that comes from data is escaped.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

__all__ = ["data_uri", "img", "page", "section", "table"]

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d1d1f; background: #fafafa; line-height: 1.45; }
header { background: #20304a; color: #fff; padding: 14px 28px; }
header h1 { margin: 0; font-size: 22px; }
header p { margin: 4px 0 0; color: #cfd8e6; font-size: 13px; }
nav { background: #e9edf3; padding: 6px 28px; font-size: 13px; position: sticky; top: 0;
      z-index: 2; }
nav a { margin-right: 14px; color: #20304a; text-decoration: none; }
main { padding: 6px 28px 40px; max-width: 1200px; }
section { background: #fff; border: 1px solid #e2e5ea; border-radius: 6px; padding: 10px 18px 14px;
          margin: 16px 0; }
h2 { font-size: 18px; margin: 6px 0 8px; color: #20304a; }
h3 { font-size: 15px; margin: 12px 0 4px; }
p.def, div.def { font-size: 13px; color: #444; }
img { max-width: 100%; height: auto; }
img.movie { width: 100%; image-rendering: pixelated; border: 1px solid #ccc; }
.labels { display: grid; grid-template-columns: repeat(4, 1fr); font-size: 13px; font-weight: 600;
          text-align: center; color: #333; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
td, th { border: 1px solid #dde; padding: 3px 8px; text-align: right; }
th { background: #f0f2f6; }
td.l, th.l { text-align: left; }
.verdict { font-weight: 600; padding: 8px 12px; border-radius: 4px; margin: 8px 0; }
.pass { background: #e3f4e6; color: #1f5f2c; }
.warn { background: #fff4d6; color: #7a5600; }
.fail { background: #fde3e1; color: #8a1c12; }
.unknown { background: #eceff3; color: #333; }
.strip { margin: 8px 0 16px; }
.small { font-size: 12px; color: #555; }
"""


def data_uri(data: bytes, mime: str) -> str:
    """Return a ``data:`` URI of some bytes."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(data: bytes, alt: str, *, mime: str = "image/png", cls: str | None = None) -> str:
    """Return an ``<img>`` element with the image embedded."""
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} alt="{html.escape(alt)}" src="{data_uri(data, mime)}">'


def table(header: Sequence[str], rows: Sequence[Sequence[object]], *, left: int = 1) -> str:
    """Return a table; the first ``left`` columns are left-aligned. Cells are escaped."""

    def cell(tag: str, i: int, value: object) -> str:
        klass = ' class="l"' if i < left else ""
        return f"<{tag}{klass}>{html.escape(str(value))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def section(ident: str, title: str, body: str) -> str:
    """Return a ``<section>`` with an anchor and a heading (``body`` is HTML)."""
    return f'<section id="{ident}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """Return the whole document; ``sections`` are ``(id, title, body_html)``."""
    nav = "".join(f'<a href="#{i}">{html.escape(t)}</a>' for i, t, _ in sections)
    body = "\n".join(section(i, t, b) for i, t, b in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>"
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>"
        f"<nav>{nav}</nav><main>\n{body}\n</main></body></html>\n"
    )
