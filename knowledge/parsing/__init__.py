"""Uploaded bytes → what kind of file they are (by content) → text sections with page/heading.

Two steps, used at two moments:

- :func:`sniff` runs in the request, on the raw bytes: it decides the file type from the content
  (magic bytes, a zip's members, whether it decodes as text, parses as JSON …), refuses a file
  whose name claims another type (an HTML page named ``.pdf``), and refuses archives that inflate
  past ``MAX_INFLATED_BYTES`` or at a suspicious ratio (zip bombs) before anything unpacks them.
- :func:`parse` runs in the worker: it turns the bytes of a sniffed type into
  :class:`Section` s, each a piece of text with the page (PDF) or heading (HTML, Markdown, DOCX)
  it came from, which chunks keep for citations.

Parsers are well-kept libraries: pypdf, python-docx, BeautifulSoup on lxml; csv and json are the
standard library's.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any

from core.errors import ValidationError

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_INFLATED_BYTES = 200 * 1024 * 1024  # what a DOCX may unpack to, all members together
MAX_COMPRESSION_RATIO = 150  # deflate rarely passes ~20 on real documents; bombs reach thousands

FILE_TYPES = ("pdf", "docx", "html", "markdown", "text", "csv", "json")
# Which detected types an extension may carry. Text-like types may be named by any text extension.
_EXTENSIONS = {
    "pdf": {"pdf"},
    "docx": {"docx"},
    "html": {"html", "htm", "xhtml"},
    "md": {"markdown", "text"},
    "markdown": {"markdown", "text"},
    "txt": {"text", "markdown", "csv", "json"},
    "text": {"text", "markdown"},
    "csv": {"csv", "text"},
    "tsv": {"csv", "text"},
    "json": {"json"},
}


class UnsupportedFile(ValidationError):
    code = "ERR_UNSUPPORTED_FILE"
    message = "This file type is not supported: send txt, md, html, pdf, docx, csv or json."


class FileTypeMismatch(ValidationError):
    code = "ERR_FILE_TYPE_MISMATCH"
    message = "The file's content does not match its name."


class UnsafeArchive(ValidationError):
    code = "ERR_UNSAFE_ARCHIVE"
    message = "The document unpacks to too much data (a zip bomb?) and was refused."


class FileTooLarge(ValidationError):
    code = "ERR_FILE_TOO_LARGE"
    message = "The file is larger than the 50 MB limit."
    status_code = 413


class ParseError(ValidationError):
    code = "ERR_PARSE_FAILED"
    message = "The document could not be read."


@dataclass
class Section:
    """A run of text and where it came from."""

    text: str
    page: int | None = None
    heading: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


# --- sniffing --------------------------------------------------------------------------------


def _extension(filename: str) -> str:
    name = (filename or "").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _check_zip(data: bytes) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise UnsupportedFile("The file looks like a zip archive but cannot be opened.") from exc
    inflated = 0
    for info in archive.infolist():
        inflated += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if inflated > MAX_INFLATED_BYTES or (info.file_size > 1024 * 1024 and ratio > MAX_COMPRESSION_RATIO):
            raise UnsafeArchive(
                details={"inflated_bytes_at_least": inflated, "limit_bytes": MAX_INFLATED_BYTES},
            )
    return archive


def _decode_text(data: bytes) -> str | None:
    if b"\x00" in data[:8192]:
        return None
    for encoding in ("utf-8-sig", "utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ("utf-8-sig",):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    try:  # legacy single-byte text, if it is mostly printable
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        return None
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text[:8192])
    return text if printable >= 0.95 * min(len(text), 8192) else None


_HTML_START = re.compile(
    r"^\s*(<!doctype\s+html|<html[\s>]|<head[\s>]|<body[\s>]|<\?xml[^>]*>\s*<html)", re.I
)
_HTML_TAGS = re.compile(r"<(p|div|h[1-6]|body|html|title|a|span|table|ul|ol|br)\b[^>]*>", re.I)
_MD_HINTS = re.compile(r"^(#{1,6} |\s*[-*+] |\s*\d+\. |```|> )", re.M)


def _text_kind(text: str) -> str:
    head = text[:4096]
    if _HTML_START.match(head) or len(_HTML_TAGS.findall(head)) >= 3:
        return "html"
    stripped = text.strip()
    if stripped[:1] in "[{":
        try:
            json.loads(stripped)
            return "json"
        except ValueError:
            pass
    if _MD_HINTS.search(head):
        return "markdown"
    lines = [line for line in head.splitlines()[:20] if line.strip()]
    if len(lines) >= 2:
        try:
            dialect = csv.Sniffer().sniff("\n".join(lines), delimiters=",;\t")
            counts = {len(row) for row in csv.reader(lines, dialect)}
            if len(counts) == 1 and counts.pop() >= 2:
                return "csv"
        except csv.Error:
            pass
    return "text"


def sniff(data: bytes, filename: str = "") -> str:
    """The file type of ``data`` judged by its content; raises when it is refused.

    The name's extension must agree with the content (a ``.pdf`` that holds HTML is refused with
    ``ERR_FILE_TYPE_MISMATCH``); text-like content may come under any text extension.
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise FileTooLarge(details={"limit_bytes": MAX_UPLOAD_BYTES, "size_bytes": len(data)})
    if not data.strip():
        raise UnsupportedFile("The file is empty.", code="ERR_EMPTY_FILE")
    if data[:5] == b"%PDF-":
        kind = "pdf"
    elif data[:4] == b"PK\x03\x04":
        archive = _check_zip(data)
        names = set(archive.namelist())
        if "word/document.xml" not in names:
            raise UnsupportedFile("Zip archives other than DOCX documents are not supported.")
        kind = "docx"
    else:
        text = _decode_text(data)
        if text is None:
            raise UnsupportedFile()
        kind = _text_kind(text)
    extension = _extension(filename)
    if extension:
        allowed = _EXTENSIONS.get(extension)
        if allowed is None:
            if kind in ("pdf", "docx"):
                return kind
            raise UnsupportedFile(details={"extension": extension})
        # Text-like content with a text extension is fine whatever our guess of its flavour.
        if kind not in allowed and not (kind in ("text", "markdown", "csv") and "text" in allowed):
            raise FileTypeMismatch(
                f"The file is named .{extension} but its content is {kind}.",
                details={"extension": extension, "detected": kind},
            )
        if extension in ("md", "markdown") and kind == "text":
            kind = "markdown"
        if extension in ("csv", "tsv") and kind == "text":
            kind = "csv"
        if extension in ("txt", "text") and kind in ("markdown", "csv"):
            kind = "text" if kind == "csv" else kind
    return kind


# --- parsing ---------------------------------------------------------------------------------

_BLANKS = re.compile(r"\n{3,}")
_SPACES = re.compile(r"[ \t\u00a0]+")


def _clean(text: str) -> str:
    return _BLANKS.sub("\n\n", _SPACES.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))).strip()


def _parse_pdf(data: bytes) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ParseError("Encrypted PDFs are not supported.", code="ERR_PDF_ENCRYPTED")
        sections = []
        for number, page in enumerate(reader.pages, start=1):
            text = _clean(page.extract_text() or "")
            if text:
                sections.append(Section(text=text, page=number))
        return sections
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise ParseError(f"The PDF could not be read: {exc}") from exc


def _parse_docx(data: bytes) -> list[Section]:
    import docx

    _check_zip(data)
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises several unrelated types for broken files
        raise ParseError(f"The DOCX could not be read: {type(exc).__name__}") from exc
    sections: list[Section] = []
    heading, lines = "", []

    def flush() -> None:
        text = _clean("\n".join(lines))
        if text:
            sections.append(Section(text=text, heading=heading))

    for paragraph in document.paragraphs:
        style = (paragraph.style.name or "").lower() if paragraph.style is not None else ""
        if style.startswith("heading") or style == "title":
            flush()
            heading, lines = paragraph.text.strip()[:300], [paragraph.text]
        else:
            lines.append(paragraph.text)
    flush()
    for table in document.tables:
        rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows]
        text = _clean("\n".join(rows))
        if text:
            sections.append(Section(text=text, heading="table"))
    return sections


def _parse_html(text: str) -> list[Section]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "lxml")
    for hidden in soup(["script", "style", "noscript", "template", "svg", "iframe", "head"]):
        hidden.decompose()
    sections: list[Section] = []
    heading, lines = "", []
    body = soup.body or soup
    for element in body.find_all(
        ["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "td", "th", "blockquote"]
    ):
        if element.find(["p", "li", "pre", "h1", "h2", "h3", "table"]):
            continue  # a container: its children come on their own
        words = element.get_text(" ", strip=True)
        if not words:
            continue
        if element.name in ("h1", "h2", "h3", "h4", "h5", "h6"):
            if lines:
                sections.append(Section(text=_clean("\n".join(lines)), heading=heading))
            heading, lines = words[:300], [words]
        else:
            lines.append(("- " if element.name == "li" else "") + words)
    if lines:
        sections.append(Section(text=_clean("\n".join(lines)), heading=heading))
    if not sections:  # markup without the usual blocks: take all visible text
        loose = _clean(body.get_text("\n", strip=True))
        if loose:
            sections.append(Section(text=loose))
    return sections


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


def _parse_markdown(text: str) -> list[Section]:
    sections: list[Section] = []
    heading, lines = "", []
    in_code = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
        match = None if in_code else _MD_HEADING.match(line)
        if match:
            body = _clean("\n".join(lines))
            if body:
                sections.append(Section(text=body, heading=heading))
            heading, lines = match.group(2).strip()[:300], [match.group(2).strip()]
        else:
            lines.append(line)
    body = _clean("\n".join(lines))
    if body:
        sections.append(Section(text=body, heading=heading))
    return sections


def _parse_csv(text: str) -> list[Section]:
    lines = text.splitlines()
    try:
        dialect = csv.Sniffer().sniff("\n".join(lines[:20]), delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(lines, dialect))
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    # One line per row, "column: value", so that a chunk stays readable without its header.
    rendered = [
        "; ".join(f"{name}: {value}" for name, value in zip(header, row, strict=False) if value.strip())
        for row in body
    ]
    text_out = "\n".join(line for line in rendered if line) or ", ".join(header)
    return [Section(text=text_out, heading="", metadata={"columns": header[:50]})]


def _flatten_json(value: Any, path: str, out: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten_json(item, f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _flatten_json(item, f"{path}[{index}]", out)
    elif value is not None:
        out.append(f"{path}: {value}" if path else str(value))


def _parse_json(text: str) -> list[Section]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ParseError(f"The JSON could not be read: {exc}") from exc
    lines: list[str] = []
    _flatten_json(value, "", lines)
    return [Section(text="\n".join(lines))] if lines else []


def parse(data: bytes, file_type: str) -> list[Section]:
    """The text sections of ``data``, a file of ``file_type`` (as :func:`sniff` returned it)."""
    if file_type == "pdf":
        return _parse_pdf(data)
    if file_type == "docx":
        return _parse_docx(data)
    text = _decode_text(data)
    if text is None:
        raise ParseError("The file is not text.")
    return parse_text(text, file_type)


def parse_text(text: str, file_type: str = "text") -> list[Section]:
    """Sections of a text of a text-like type (text, markdown, html, csv, json)."""
    if file_type == "html":
        return _parse_html(text)
    if file_type == "markdown":
        return _parse_markdown(text)
    if file_type == "csv":
        return _parse_csv(text)
    if file_type == "json":
        return _parse_json(text)
    cleaned = _clean(text)
    return [Section(text=cleaned)] if cleaned else []
