"""HTML → readable text for the ``web_fetch`` tool, with the standard library's ``html.parser``.

A model needs the words of a page, not its markup: scripts, styles and other invisible parts are
dropped, block elements become line breaks, list items get a dash, whitespace is collapsed and the
``<title>`` is kept apart. No dependency: ``html.parser`` is tolerant of broken markup and never
fetches anything (no external entities, no network).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

# Elements whose content is never shown to a reader.
_HIDDEN = {"script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "head"}
# Elements that start a new line of text.
_BLOCKS = {
    "address", "article", "aside", "blockquote", "dd", "details", "div", "dl", "dt", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
    "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody", "thead", "tfoot",
    "tr", "ul", "br", "caption", "option",
}  # fmt: skip
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")


class _TextExtractor(HTMLParser):
    """Collects visible text and the title while the parser walks the document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self.hidden_depth = 0
        self.in_title = False
        self.in_pre = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "title":
            self.in_title = True
            return
        if tag in _HIDDEN and tag not in _VOID:
            self.hidden_depth += 1
            return
        if tag == "pre":
            self.in_pre += 1
        if tag in _BLOCKS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")
        elif tag in ("td", "th"):
            self.parts.append(" | ")

    def handle_startendtag(self, tag: str, attrs) -> None:
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
            return
        if tag in _HIDDEN and tag not in _VOID:
            self.hidden_depth = max(0, self.hidden_depth - 1)
            return
        if tag == "pre":
            self.in_pre = max(0, self.in_pre - 1)
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title_parts.append(data)
        elif self.hidden_depth == 0:
            self.parts.append(data if self.in_pre else data.replace("\n", " "))


def html_to_text(markup: str) -> tuple[str, str]:
    """``(title, text)`` of an HTML document: its visible text, one line per block."""
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
    except AssertionError:  # html.parser gives up on a few pathological inputs; keep what it has
        pass
    title = " ".join("".join(parser.title_parts).split())
    lines = [_SPACES.sub(" ", line).strip() for line in "".join(parser.parts).split("\n")]
    return title, "\n".join(line for line in lines if line)
