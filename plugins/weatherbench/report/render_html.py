"""The same report document as one self-contained HTML page (inline CSS, charts embedded as data URIs)."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from weatherbench.report import document as doc

CSS = """
body { font-family: "DejaVu Sans", Verdana, sans-serif; font-size: 14px; color: #111; max-width: 60rem;
       margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.3rem; border-top: 2px solid #333;
     padding-top: 0.8rem; margin-top: 2.2rem; } h3 { font-size: 1.05rem; margin-top: 1.4rem; }
h4 { font-size: 0.95rem; }
.subtitle { color: #444; } .note { font-style: italic; font-size: 0.9rem; } .caption { color: #444;
  font-size: 0.82rem; margin-top: 0.2rem; }
.banner { border: 2px solid #000; padding: 0.6rem 0.8rem; font-weight: bold; margin: 1rem 0; }
.banner.pass, .banner.not-measured { background: #eee; } .banner.warn { background: #cfcfcf; }
.banner.critical { background: #2b2b2b; color: #fff; }
table { border-collapse: collapse; margin: 0.6rem 0; width: 100%; font-size: 0.85rem; }
table.small { font-size: 0.75rem; }
th { background: #3a3a3a; color: #fff; text-align: left; padding: 3px 5px; }
td { border-bottom: 1px solid #bbb; padding: 2px 5px; vertical-align: top; }
tr:nth-child(even) td { background: #f3f3f3; }
td.r, th.r { text-align: right; }
td.status-warn { background: #cfcfcf !important; font-weight: bold; }
td.status-critical, td.status-regression { background: #2b2b2b !important; color: #fff; font-weight: bold; }
td.status-pass, td.status-improvement { font-weight: bold; }
figure { margin: 1rem 0; } figure img { max-width: 100%; }
nav ol { columns: 2; font-size: 0.85rem; }
footer { margin-top: 3rem; color: #555; font-size: 0.8rem; }
"""


def _table(block: doc.Table) -> str:
    css = ' class="small"' if block.small else ""
    head = "".join(f'<th class="{block.alignment(i)}">{escape(h)}</th>' for i, h in enumerate(block.header))
    body = []
    for row in block.rows:
        cells = []
        for i, value in enumerate(row):
            classes = [block.alignment(i)]
            if i == block.status_column:
                classes.append("status-" + str(value).lower().replace(" ", "-").replace("/", ""))
            cells.append(f'<td class="{" ".join(classes)}">{escape(str(value))}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    caption = f'<div class="caption">{escape(block.caption)}</div>' if block.caption else ""
    return f"<table{css}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{caption}"


def render_html(document: doc.Document, path: Path) -> Path:
    parts: list[str] = []
    toc: list[str] = []
    anchor = 0
    for block in document.blocks:
        if isinstance(block, doc.PageBreak):
            continue
        if isinstance(block, doc.Heading):
            anchor += 1
            tag = f"h{block.level + 1}"
            parts.append(f'<{tag} id="s{anchor}">{escape(block.text)}</{tag}>')
            if block.level == 1:
                toc.append(f'<li><a href="#s{anchor}">{escape(block.text)}</a></li>')
        elif isinstance(block, doc.Text):
            css = {"note": "note", "lead": "lead"}.get(block.style, "")
            parts.append(f'<p class="{css}">{escape(block.text)}</p>')
        elif isinstance(block, doc.Banner):
            parts.append(f'<div class="banner {block.status.replace(" ", "-")}">{escape(block.text)}</div>')
        elif isinstance(block, doc.Bullets):
            tag = "ol" if block.numbered else "ul"
            items = "".join(f"<li>{escape(item)}</li>" for item in block.items)
            parts.append(f"<{tag}>{items}</{tag}>")
        elif isinstance(block, doc.Table):
            parts.append(_table(block))
        elif isinstance(block, doc.Chart):
            data = base64.b64encode(block.png).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{escape(block.caption)}">'
                f'<figcaption class="caption">{escape(block.caption)}</figcaption></figure>'
            )
    html = (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(document.title)}</title>'
        f"<style>{CSS}</style></head><body>"
        f'<h1>{escape(document.title)}</h1><p class="subtitle">{escape(document.subtitle)}</p>'
        f"<nav><ol>{''.join(toc)}</ol></nav>"
        + "\n".join(parts)
        + f"<footer>{escape(document.footer)}</footer></body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
