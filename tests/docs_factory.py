"""Real documents of every supported format, written for tests."""

from __future__ import annotations

from pathlib import Path


def make_pdf(pages: list[list[str]]) -> bytes:
    """A valid PDF with a real text layer: one list of lines per page, Helvetica 11pt."""
    objects: list[bytes] = []
    n_pages = len(pages)
    page_ids = [4 + 2 * i for i in range(n_pages)]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{pid} 0 R" for pid in page_ids).encode()
    objects.append(b"<< /Type /Pages /Kids [" + kids + b"] /Count " + str(n_pages).encode() + b" >>")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, lines in enumerate(pages):
        content_id = page_ids[i] + 1
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents " + str(content_id).encode() + b" 0 R >>"
        )
        body = ["BT /F1 11 Tf 14 TL 50 740 Td"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            body.append(f"({escaped}) Tj T*")
        body.append("ET")
        stream = "\n".join(body).encode("latin-1")
        objects.append(b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def make_docx(path: Path, title: str, sections: list[tuple[str, str]]) -> None:
    from docx import Document

    doc = Document()
    doc.add_heading(title, level=1)
    for heading, text in sections:
        doc.add_heading(heading, level=2)
        doc.add_paragraph(text)
    doc.save(str(path))


# One distinctive fact per format, so a search can tell which file answered.
FACTS = {
    "guide.md": "The lighthouse keeper rotates the brass lens every forty minutes to keep the beam steady.",
    "notes.txt": "Sourdough starter must be fed with rye flour twice a day when the kitchen is warm.",
    "page.html": "The glacier research station records ice core samples at minus thirty degrees.",
    "manual.pdf": "The pressure valve on the espresso machine opens at nine bar of pressure.",
    "report.docx": "Migrating songbirds navigate by the polarised light of the evening sky.",
}

QUERIES = {
    "guide.md": "how often is the lighthouse lens rotated",
    "notes.txt": "what flour feeds the sourdough starter",
    "page.html": "at what temperature are ice core samples kept",
    "manual.pdf": "at what pressure does the espresso valve open",
    "report.docx": "how do migrating songbirds navigate",
}

FILLER = (
    "This paragraph is ordinary filler text that describes routine procedures, schedules and "
    "general housekeeping so that each document has more than one chunk of content to index. "
)


def write_corpus(docs: Path) -> dict[str, str]:
    """Write one document of every format into ``docs``; returns file name -> fact."""
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "guide.md").write_text(
        f"# Lighthouse guide\n\n## Duties\n\n{FILLER * 4}\n\n## The lens\n\n{FACTS['guide.md']}\n\n"
        f"## Weather\n\n{FILLER * 4}\n", encoding="utf-8")
    (docs / "notes.txt").write_text(
        f"BAKING NOTES\n\n{FILLER * 3}\n\nStarter care\n\n{FACTS['notes.txt']}\n", encoding="utf-8")
    (docs / "page.html").write_text(
        f"<html><head><title>Station</title></head><body><h1>Glacier station</h1><p>{FILLER * 3}</p>"
        f"<h2>Samples</h2><p>{FACTS['page.html']}</p></body></html>", encoding="utf-8")
    (docs / "manual.pdf").write_bytes(make_pdf([
        ["Espresso machine manual", "Page one is about unpacking the machine."],
        ["Safety", FACTS["manual.pdf"]],
    ]))
    make_docx(docs / "report.docx", "Bird report", [("Method", FILLER * 5), ("Findings", FACTS["report.docx"])])
    return dict(FACTS)
