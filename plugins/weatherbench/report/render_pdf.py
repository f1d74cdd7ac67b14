"""Lays a report document out as an A4 PDF with ReportLab (real tables, wrapped text, page numbers)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import matplotlib
from PIL import Image as PILImage
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT, TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas as pdfcanvas
from reportlab.platypus import (
    Flowable,
    Image,
    KeepTogether,
    ListFlowable,
    ListItem,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from weatherbench.report import document as doc

MARGIN = 16 * mm
TEXT_WIDTH = A4[0] - 2 * MARGIN
SHORT_TABLE_ROWS = 20
# Fills for status words: distinct in grey print (white, light, dark with white text).
STATUS_FILLS = {
    "PASS": (colors.white, colors.black),
    "IMPROVEMENT": (colors.white, colors.black),
    "WITHIN NOISE": (colors.white, colors.black),
    "WARN": (colors.HexColor("#cfcfcf"), colors.black),
    "NO BASELINE": (colors.white, colors.HexColor("#555555")),
    "N/A": (colors.white, colors.HexColor("#555555")),
    "CRITICAL": (colors.HexColor("#2b2b2b"), colors.white),
    "REGRESSION": (colors.HexColor("#2b2b2b"), colors.white),
}
BANNER_FILLS = {
    "pass": colors.HexColor("#eeeeee"),
    "warn": colors.HexColor("#cfcfcf"),
    "critical": colors.HexColor("#2b2b2b"),
    "not measured": colors.HexColor("#eeeeee"),
}


def _register_fonts() -> str:
    """DejaVu Sans (shipped with matplotlib): the charts' font, and it has µ, ±, ≥ and →."""
    if "DejaVuSans" in pdfmetrics.getRegisteredFontNames():
        return "DejaVuSans"
    fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for name, file in (
        ("DejaVuSans", "DejaVuSans.ttf"),
        ("DejaVuSans-Bold", "DejaVuSans-Bold.ttf"),
        ("DejaVuSans-Oblique", "DejaVuSans-Oblique.ttf"),
        ("DejaVuSans-BoldOblique", "DejaVuSans-BoldOblique.ttf"),
    ):
        pdfmetrics.registerFont(TTFont(name, str(fonts / file)))
    pdfmetrics.registerFontFamily(
        "DejaVuSans",
        normal="DejaVuSans",
        bold="DejaVuSans-Bold",
        italic="DejaVuSans-Oblique",
        boldItalic="DejaVuSans-BoldOblique",
    )
    return "DejaVuSans"


def _styles(font: str) -> dict[str, ParagraphStyle]:
    base = ParagraphStyle("body", fontName=font, fontSize=8.8, leading=11.5, spaceAfter=4)
    bold = f"{font}-Bold"
    return {
        "title": ParagraphStyle("title", parent=base, fontName=bold, fontSize=18, leading=22, spaceAfter=4),
        "subtitle": ParagraphStyle(
            "subtitle", parent=base, textColor=colors.HexColor("#444444"), spaceAfter=8
        ),
        "h1": ParagraphStyle(
            "h1", parent=base, fontName=bold, fontSize=14, leading=17, spaceBefore=2, spaceAfter=6
        ),
        "h2": ParagraphStyle(
            "h2", parent=base, fontName=bold, fontSize=11, leading=14, spaceBefore=8, spaceAfter=4
        ),
        "h3": ParagraphStyle(
            "h3", parent=base, fontName=bold, fontSize=9.5, leading=12, spaceBefore=6, spaceAfter=3
        ),
        "body": base,
        "lead": ParagraphStyle("lead", parent=base, fontSize=9, textColor=colors.HexColor("#222222")),
        "note": ParagraphStyle("note", parent=base, fontName=f"{font}-Oblique", fontSize=8, leading=10.5),
        "caption": ParagraphStyle(
            "caption",
            parent=base,
            fontSize=7.5,
            leading=9.5,
            textColor=colors.HexColor("#444444"),
            spaceAfter=8,
        ),
        "cell": ParagraphStyle("cell", parent=base, fontSize=7.8, leading=9.4, spaceAfter=0),
        "cell_small": ParagraphStyle("cell_small", parent=base, fontSize=6.6, leading=8, spaceAfter=0),
        "banner": ParagraphStyle("banner", parent=base, fontName=bold, fontSize=10, leading=13, spaceAfter=0),
    }


class _Bookmark(Flowable):
    """A zero-size flowable that adds a PDF outline entry where it lands."""

    def __init__(self, title: str, level: int) -> None:
        super().__init__()
        self.title, self.level = title, level
        self.width = self.height = 0

    def draw(self) -> None:
        key = f"h{id(self)}"
        self.canv.bookmarkPage(key)
        self.canv.addOutlineEntry(self.title, key, level=self.level - 1, closed=self.level > 1)


def _fit(text: str, font: str, size: float, width: float) -> str:
    """`text`, cut short with "..." where it would be wider than `width` points."""
    if pdfmetrics.stringWidth(text, font, size) <= width:
        return text
    while text and pdfmetrics.stringWidth(text + "...", font, size) > width:
        text = text[:-1]
    return text.rstrip(" ,") + "..."


def _numbered_canvas(title: str, footer: str, font: str) -> type[pdfcanvas.Canvas]:
    class NumberedCanvas(pdfcanvas.Canvas):
        """Defers each page so the footer can say "page N of M"."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pages: list[dict[str, Any]] = []

        def showPage(self) -> None:  # ReportLab's method name
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self) -> None:
            total = len(self._pages)
            # One cut for every page: room beside the widest page number.
            widest = pdfmetrics.stringWidth(f"page {total} of {total}", font, 7)
            fitted_footer = _fit(footer, font, 7, A4[0] - 2 * MARGIN - widest - 6 * mm)
            for state in self._pages:
                self.__dict__.update(state)
                self.setFont(font, 7)
                self.setFillColor(colors.HexColor("#555555"))
                self.drawString(MARGIN, A4[1] - 10 * mm, title)
                self.drawString(MARGIN, 9 * mm, fitted_footer)
                self.drawRightString(A4[0] - MARGIN, 9 * mm, f"page {self._pageNumber} of {total}")
                self.setStrokeColor(colors.HexColor("#999999"))
                self.setLineWidth(0.4)
                self.line(MARGIN, A4[1] - 11.5 * mm, A4[0] - MARGIN, A4[1] - 11.5 * mm)
                super().showPage()
            super().save()

    return NumberedCanvas


def _table(block: doc.Table, styles: dict[str, ParagraphStyle], font: str) -> list[Flowable]:
    """A short table stays on one page with its caption; a long one splits, its header repeated."""
    parts = _table_parts(block, styles, font)
    return [KeepTogether(parts)] if len(block.rows) <= SHORT_TABLE_ROWS else parts


def _table_parts(block: doc.Table, styles: dict[str, ParagraphStyle], font: str) -> list[Flowable]:
    cell = styles["cell_small" if block.small else "cell"]
    right = ParagraphStyle("r", parent=cell, alignment=TA_RIGHT)
    left = ParagraphStyle("l", parent=cell, alignment=TA_LEFT)
    head = ParagraphStyle("head", parent=cell, fontName=f"{font}-Bold", textColor=colors.white)

    def para(text: str, column: int, header: bool = False) -> Paragraph:
        style = head if header else (right if block.alignment(column) == "r" else left)
        if header and block.alignment(column) == "r":
            style = ParagraphStyle("hr", parent=head, alignment=TA_RIGHT)
        return Paragraph(escape(str(text)), style)

    data = [[para(h, i, True) for i, h in enumerate(block.header)]]
    data += [[para(v, i) for i, v in enumerate(row)] for row in block.rows]
    widths = [w * TEXT_WIDTH for w in block.widths] if block.widths else None
    commands: list[tuple] = [
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#3a3a3a")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#b0b0b0")),
        ("BOX", (0, 0), (-1, -1), 0.5, colors.HexColor("#3a3a3a")),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
        ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
    ]
    for r in range(1, len(data)):
        if r % 2 == 0:
            commands.append(("BACKGROUND", (0, r), (-1, r), colors.HexColor("#f3f3f3")))
    if block.status_column is not None:
        for r, row in enumerate(block.rows, start=1):
            word = str(row[block.status_column]).upper()
            fill, ink = STATUS_FILLS.get(word, (None, None))
            if fill is not None:
                commands.append(("BACKGROUND", (block.status_column, r), (block.status_column, r), fill))
                status_style = ParagraphStyle("s", parent=cell, fontName=f"{font}-Bold", textColor=ink)
                data[r][block.status_column] = Paragraph(escape(str(row[block.status_column])), status_style)
    table = Table(data, colWidths=widths, repeatRows=1, hAlign="LEFT")
    table.setStyle(TableStyle(commands))
    out: list[Flowable] = [table]
    if block.caption:
        out.append(Paragraph(escape(block.caption), styles["caption"]))
    else:
        out.append(Spacer(1, 6))
    return out


def _chart(block: doc.Chart, styles: dict[str, ParagraphStyle]) -> Flowable:
    with PILImage.open(io.BytesIO(block.png)) as picture:
        width_px, height_px = picture.size
    width = TEXT_WIDTH
    height = width * height_px / width_px
    limit = A4[1] - 2 * MARGIN - 40 * mm
    if height > limit:  # a tall chart is scaled down to fit a page with its caption
        width, height = width * limit / height, limit
    image = Image(io.BytesIO(block.png), width=width, height=height)
    image.hAlign = "LEFT"
    return KeepTogether([image, Paragraph(escape(block.caption), styles["caption"])])


def render_pdf(document: doc.Document, path: Path) -> Path:
    font = _register_fonts()
    styles = _styles(font)
    story: list[Flowable] = [
        _Bookmark(document.title, 1),
        Paragraph(escape(document.title), styles["title"]),
        Paragraph(escape(document.subtitle), styles["subtitle"]),
    ]
    blocks = document.blocks
    placed: set[int] = set()  # blocks already laid out together with their heading
    for i, block in enumerate(blocks):
        if id(block) in placed:
            continue
        if isinstance(block, doc.PageBreak):
            story.append(PageBreak())
        elif isinstance(block, doc.Heading):
            heading = Paragraph(escape(block.text), styles[f"h{min(block.level, 3)}"])
            # A heading never ends a page alone: it moves with its lead text and the first chart or
            # table after it (a long table still splits, with its header row repeated).
            keep: list[Flowable] = [_Bookmark(block.text, block.level), heading]
            following = blocks[i + 1] if i + 1 < len(blocks) else None
            if isinstance(following, doc.Text):
                keep.append(Paragraph(escape(following.text), styles[following.style]))
                following = blocks[i + 2] if i + 2 < len(blocks) else None
            if isinstance(following, doc.Chart):
                keep.append(_chart(following, styles))
                placed.add(id(following))
            elif isinstance(following, doc.Table) and len(following.rows) <= SHORT_TABLE_ROWS:
                keep += _table_parts(following, styles, font)  # KeepTogether must not nest
                placed.add(id(following))
            story.append(KeepTogether(keep))
        elif isinstance(block, doc.Text):
            previous = blocks[i - 1] if i else None
            if isinstance(previous, doc.Heading):
                continue  # already placed with its heading
            story.append(Paragraph(escape(block.text), styles[block.style]))
        elif isinstance(block, doc.Banner):
            fill = BANNER_FILLS.get(block.status, colors.white)
            ink = colors.white if block.status == "critical" else colors.black
            banner = Table(
                [
                    [
                        Paragraph(
                            escape(block.text), ParagraphStyle("b", parent=styles["banner"], textColor=ink)
                        )
                    ]
                ],
                colWidths=[TEXT_WIDTH],
            )
            banner.setStyle(
                TableStyle(
                    [
                        ("BACKGROUND", (0, 0), (-1, -1), fill),
                        ("BOX", (0, 0), (-1, -1), 1.2, colors.black),
                        ("TOPPADDING", (0, 0), (-1, -1), 6),
                        ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
                    ]
                )
            )
            story += [banner, Spacer(1, 6)]
        elif isinstance(block, doc.Bullets):
            items = [ListItem(Paragraph(escape(t), styles["body"]), leftIndent=12) for t in block.items]
            story.append(
                ListFlowable(
                    items,
                    bulletType="1" if block.numbered else "bullet",
                    start="1" if block.numbered else None,
                    bulletFontName=font,
                    bulletFontSize=8.5,
                    leftIndent=14,
                )
            )
            story.append(Spacer(1, 4))
        elif isinstance(block, doc.Table):
            story += _table(block, styles, font)
        elif isinstance(block, doc.Chart):
            story.append(_chart(block, styles))
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf = SimpleDocTemplate(
        str(path),
        pagesize=A4,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN,
        title=document.title,
        subject=document.subtitle,
        author="weatherbench",
    )
    pdf.build(story, canvasmaker=_numbered_canvas(document.title, document.footer, font))
    return path
