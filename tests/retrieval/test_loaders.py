
import pytest

from retrieval.loaders import UnsupportedFileError, load_document, slugify


def test_slugify_matches_github_style():
    assert slugify("Annual plan refunds!") == "annual-plan-refunds"
    assert slugify("  SSO & SAML (2.0) ") == "sso-saml-2-0"


def test_markdown_sections_follow_headings_and_skip_code_fences(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Title\n\nIntro.\n\n## First part\n\nAlpha.\n\n```\n# not a heading\n```\n\n### Sub {#custom}\n\nBeta.\n")
    document = load_document(page)
    assert document.title == "Title"
    assert [(s.heading, s.anchor) for s in document.sections] == [
        ("Title", "title"), ("First part", "first-part"), ("Sub", "custom"),
    ]
    assert "# not a heading" in document.sections[1].text


def test_html_anchor_prefers_ids_then_slug(tmp_path):
    page = tmp_path / "p.html"
    page.write_text(
        "<html><head><title>T</title><script>var x = 1;</script></head><body>"
        "<div class='sphinxsidebar'>Navigation junk</div>"
        "<section id='sec-id'><h2>In a section</h2><p>One\ntwo   three.</p></section>"
        "<h2 id='own-id'>With id</h2><p>Four.</p>"
        "<h2><a name='named'></a>Named anchor</h2><p>Five.</p>"
        "<h2>Plain heading</h2><p>Six <b>bold</b> text.</p></body></html>"
    )
    sections = load_document(page).sections
    assert [s.anchor for s in sections] == ["sec-id", "own-id", "named", "plain-heading"]
    assert sections[0].text == "One two three."
    assert sections[3].text == "Six bold text."
    assert all("junk" not in s.text and "var x" not in s.text for s in sections)


def test_text_file_uses_first_line_as_title(tmp_path):
    page = tmp_path / "p.txt"
    page.write_text("Acceptable use\n\nNo spam.\n\nNo scraping.\n")
    document = load_document(page)
    assert document.title == "Acceptable use"
    assert document.sections[0].anchor == "acceptable-use"
    assert "No scraping." in document.sections[0].text


def _pdf_with_text(lines: list[str]) -> bytes:
    """A minimal valid one-page PDF, built by hand so the test needs no PDF writer."""
    content = "BT /F1 12 Tf 72 720 Td " + " ".join(f"({line}) Tj 0 -16 Td" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = "%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n" + "".join(f"{o:010d} 00000 n \n" for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    return out.encode("latin-1")


def test_pdf_pages_become_sections_with_page_anchors(tmp_path):
    page = tmp_path / "guide.pdf"
    page.write_bytes(_pdf_with_text(["Refunds take 10 business days."]))
    sections = load_document(page).sections
    assert sections[0].anchor == "page=1"
    assert "10 business days" in sections[0].text


def test_unsupported_type_is_refused(tmp_path):
    path = tmp_path / "sheet.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(UnsupportedFileError, match="xlsx"):
        load_document(path)
