"""A report as a format-neutral list of blocks, so the PDF and the HTML page say exactly the same."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 1  # 1 = section (starts a page in the PDF), 2 = subsection, 3 = minor


@dataclass(frozen=True)
class Text:
    text: str
    style: str = "body"  # body | note | lead


@dataclass(frozen=True)
class Bullets:
    items: list[str]
    numbered: bool = False


@dataclass(frozen=True)
class Banner:
    """The one-line overall verdict at the top of the first page."""

    text: str
    status: str  # pass | warn | critical | not measured


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    status_column: int | None = None  # cells shaded by status word (PASS, WARN, CRITICAL, REGRESSION)
    align: str = ""  # one letter per column, l or r; default: first column left, others right
    widths: list[float] | None = None  # fractions of the text width
    small: bool = False

    def alignment(self, column: int) -> str:
        if self.align and column < len(self.align):
            return self.align[column]
        return "l" if column == 0 else "r"


@dataclass(frozen=True)
class Chart:
    png: bytes
    caption: str


@dataclass(frozen=True)
class PageBreak:
    pass


Block = Heading | Text | Bullets | Banner | Table | Chart | PageBreak


@dataclass
class Document:
    title: str
    subtitle: str
    blocks: list[Block] = field(default_factory=list)
    footer: str = ""

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)
