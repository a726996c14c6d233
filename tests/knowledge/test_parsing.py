"""Parsing and sniffing: every supported type from a real small file, and refused ones."""

from __future__ import annotations

import json

import pytest

from knowledge import parsing
from knowledge.chunking import chunk_sections, count_tokens, split_section

from .files import make_docx, make_pdf, make_zip_bomb_docx

HTML = b"""<!doctype html><html><head><title>T</title><script>var x = 1;</script></head>
<body><h1>Returns</h1><p>Items may be returned within 30 days.</p>
<h2>Refunds</h2><ul><li>Refunds go to the original card.</li></ul></body></html>"""


def test_pdf_pages_are_kept_for_citations():
    data = make_pdf(["Otters hold hands while sleeping.", "Beavers build dams from branches."])
    assert parsing.sniff(data, "animals.pdf") == "pdf"
    sections = parsing.parse(data, "pdf")
    assert [s.page for s in sections] == [1, 2]
    assert "Otters hold hands" in sections[0].text and "Beavers" in sections[1].text


def test_docx_headings_become_sections_and_tables_are_read():
    data = make_docx(
        [("Returns", "Items may be returned within 30 days."), ("Refunds", "Refunds go to the card.")],
        table=[["plan", "price"], ["pro", "20"]],
    )
    assert parsing.sniff(data, "policy.docx") == "docx"
    sections = parsing.parse(data, "docx")
    assert [s.heading for s in sections] == ["Returns", "Refunds", "table"]
    assert "30 days" in sections[0].text
    assert "pro | 20" in sections[2].text


def test_html_drops_scripts_and_keeps_headings():
    assert parsing.sniff(HTML, "page.html") == "html"
    sections = parsing.parse(HTML, "html")
    assert [s.heading for s in sections] == ["Returns", "Refunds"]
    assert "var x" not in " ".join(s.text for s in sections)
    assert "- Refunds go to the original card." in sections[1].text


def test_markdown_sections_follow_headings():
    data = b"# Intro\nHello there.\n\n## Setup\nRun make.\n```\n# not a heading\n```\n"
    assert parsing.sniff(data, "readme.md") == "markdown"
    sections = parsing.parse(data, "markdown")
    assert [s.heading for s in sections] == ["Intro", "Setup"]
    assert "# not a heading" in sections[1].text


def test_csv_rows_are_rendered_with_their_column_names():
    data = b"name,role\nAda,engineer\nGrace,admiral\n"
    assert parsing.sniff(data, "people.csv") == "csv"
    (section,) = parsing.parse(data, "csv")
    assert "name: Ada; role: engineer" in section.text
    assert section.metadata["columns"] == ["name", "role"]


def test_json_is_flattened_to_paths():
    data = json.dumps({"plan": {"name": "pro", "seats": [1, 2]}}).encode()
    assert parsing.sniff(data, "plan.json") == "json"
    (section,) = parsing.parse(data, "json")
    assert "plan.name: pro" in section.text and "plan.seats[1]: 2" in section.text


def test_plain_text():
    assert parsing.sniff(b"just words here", "notes.txt") == "text"
    assert parsing.parse(b"just  words\r\nhere", "text")[0].text == "just words\nhere"


def test_html_named_pdf_is_refused():
    with pytest.raises(parsing.FileTypeMismatch) as caught:
        parsing.sniff(HTML, "invoice.pdf")
    assert caught.value.code == "ERR_FILE_TYPE_MISMATCH"
    assert caught.value.details == {"extension": "pdf", "detected": "html"}


def test_pdf_named_txt_is_refused():
    with pytest.raises(parsing.FileTypeMismatch):
        parsing.sniff(make_pdf(["x"]), "notes.txt")


def test_zip_bomb_docx_is_refused_before_unpacking():
    with pytest.raises(parsing.UnsafeArchive) as caught:
        parsing.sniff(make_zip_bomb_docx(), "report.docx")
    assert caught.value.code == "ERR_UNSAFE_ARCHIVE"


def test_binary_and_empty_files_are_refused():
    with pytest.raises(parsing.UnsupportedFile):
        parsing.sniff(b"\x00\x01\x02\x03" * 100, "blob.bin")
    with pytest.raises(parsing.UnsupportedFile) as caught:
        parsing.sniff(b"   ", "empty.txt")
    assert caught.value.code == "ERR_EMPTY_FILE"


def test_a_zip_that_is_not_a_docx_is_refused():
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("a.txt", "hello")
    with pytest.raises(parsing.UnsupportedFile):
        parsing.sniff(out.getvalue(), "a.docx")


def test_chunks_respect_the_token_budget_and_overlap():
    text = " ".join(f"Sentence number {i} talks about otters and rivers." for i in range(200))
    pieces = split_section(text, chunk_size=64, overlap=16)
    assert len(pieces) > 10
    assert all(tokens <= 64 for _, tokens in pieces)
    assert all(count_tokens(piece) <= 64 for piece, _ in pieces)
    # neighbours share text (the overlap)
    first_tail = pieces[0][0].split()[-3:]
    assert " ".join(first_tail) in pieces[1][0]


def test_chunks_keep_page_and_heading():
    sections = [parsing.Section(text="alpha " * 10, page=3), parsing.Section(text="beta " * 10, heading="B")]
    drafts = chunk_sections(sections, chunk_size=64, overlap=8)
    assert [(d.seq, d.page, d.section) for d in drafts] == [(0, 3, ""), (1, None, "B")]
    assert drafts[0].content_hash != drafts[1].content_hash
