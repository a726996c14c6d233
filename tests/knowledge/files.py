"""Small real files built by the tests: PDF (fpdf2), DOCX (python-docx), and hostile ones."""

from __future__ import annotations

import io
import zipfile


def make_pdf(pages: list[str]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def make_docx(sections: list[tuple[str, str]], table: list[list[str]] | None = None) -> bytes:
    import docx

    document = docx.Document()
    for heading, body in sections:
        document.add_heading(heading, level=1)
        document.add_paragraph(body)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_zip_bomb_docx(inflated_mb: int = 64) -> bytes:
    """A DOCX-shaped zip whose one member inflates to ``inflated_mb`` MB of zeros (ratio ~1000)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>")
        block = b"\0" * (1024 * 1024)
        with archive.open("word/media/bomb.bin", "w", force_zip64=True) as member:
            for _ in range(inflated_mb):
                member.write(block)
    return out.getvalue()
