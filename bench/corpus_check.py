"""What the benchmark validators (pydev/check.py, pgdev/check.py) share: the text of each
corpus document, as a reader of its format gets it, a quote looked up in it, and the report.

Standard library only.  PDF text comes from pypdf if it is importable, else from `pdftotext`
(poppler) if it is on PATH, else from sources/<dir>/<name>.txt (the text of the document each
PDF was printed from).  DOCX text is read with zipfile + xml.etree.
"""
import html
import json
import os
import re
import shutil
import subprocess
import unicodedata
import zipfile
import xml.etree.ElementTree as ET

# ----------------------------------------------------------------- extraction
_BLOCK = ("p|div|br|li|ul|ol|dl|dt|dd|h[1-6]|tr|td|th|table|pre|blockquote|"
          "hr|title|body|head|html|section|article|tbody|thead")


def html_text(raw):
    s = re.sub(r"(?is)<!--.*?-->", " ", raw)
    s = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", s)
    s = re.sub(r"(?is)<\?xml.*?\?>|<!DOCTYPE.*?>", " ", s)
    s = re.sub(r"(?is)</?(?:%s)\b[^>]*>" % _BLOCK, "\n", s)  # block tags -> break
    s = re.sub(r"(?s)<[^>]+>", "", s)                          # inline tags -> nothing
    return html.unescape(s)


W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def docx_text(path):
    with zipfile.ZipFile(path) as z:
        root = ET.fromstring(z.read("word/document.xml"))
    out = []
    for p in root.iter(W + "p"):
        buf = []
        for el in p.iter():
            if el.tag == W + "t" and el.text:
                buf.append(el.text)
            elif el.tag == W + "tab":
                buf.append("\t")
            elif el.tag in (W + "br", W + "cr"):
                buf.append("\n")
        out.append("".join(buf))
    return "\n".join(out)


def pdf_texts(path):
    """Return list of (method, text) for every available PDF text source."""
    res = []
    try:
        import pypdf  # optional
        r = pypdf.PdfReader(path)
        res.append(("pypdf", "\n".join((pg.extract_text() or "") for pg in r.pages)))
    except ImportError:
        pass
    except Exception as e:  # broken PDF is a failure, reported by caller
        res.append(("pypdf-error", "ERROR: %s" % e))
    if shutil.which("pdftotext"):
        try:
            t = subprocess.run(["pdftotext", "-enc", "UTF-8", path, "-"],
                               capture_output=True, check=True).stdout.decode("utf-8", "replace")
            res.append(("pdftotext", t))
        except Exception as e:
            res.append(("pdftotext-error", "ERROR: %s" % e))
    src = sources_file(path)
    if src and os.path.exists(src):
        with open(src, encoding="utf-8") as f:
            res.append(("sources", f.read()))
    return res


def sources_file(path):
    """The text a corpus document was made from, <benchmark>/sources/<dir>/<name>.txt for
    <benchmark>/corpus/<dir>/<name>; None for a file outside a corpus folder."""
    folder = os.path.dirname(os.path.abspath(path))
    corpus = os.path.dirname(folder)
    if os.path.basename(corpus) != "corpus":
        return None
    return os.path.join(os.path.dirname(corpus), "sources", os.path.basename(folder), os.path.basename(path) + ".txt")


def read_plain(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def texts_of(path):
    """List of (method, text); the first entry is the primary text."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".html", ".htm"):
        return [("html", html_text(read_plain(path)))]
    if ext == ".docx":
        return [("docx", docx_text(path))]
    if ext == ".pdf":
        return pdf_texts(path)
    return [("plain", read_plain(path))]


def norm(s):
    s = unicodedata.normalize("NFKC", s).replace("\u00ad", "")
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"- (?=\S)", "-", s)   # undo line breaks after a hyphen (PDF wrapping)
    return s


def squash(s):
    """Loose form used only for PDFs: no whitespace and no hyphens, because PDF
    text extractors differ in how they rejoin words hyphenated at a line end
    ("copy-\\nfile" -> "copy- file" or "copyfile")."""
    return re.sub(r"[\s\-\u00ad\u2010\u2011]+", "", unicodedata.normalize("NFKC", s))


_cache = {}


def doc_texts(path):
    if path not in _cache:
        _cache[path] = [(m, norm(t), squash(t)) for m, t in texts_of(path)]
    return _cache[path]


def find_quote(path, quote, strict=False):
    """-> (ok, how). Primary text must contain the quote (whitespace-normalized).
    PDFs may fall back to a whitespace- and hyphen-insensitive match; --strict requires all
    available PDF text sources to match."""
    variants = doc_texts(path)
    if not variants:
        return False, "no text extractor"
    q, qs = norm(quote), squash(quote)
    results = []
    for method, t, ts in variants:
        if method.endswith("-error"):
            results.append((method, False))
        elif q in t:
            results.append((method, True))
        elif path.endswith(".pdf") and qs in ts:
            results.append((method + "~loose", True))
        else:
            results.append((method, False))
    if strict:
        ok = all(r for _, r in results)
    else:
        ok = results[0][1]
    return ok, ",".join("%s:%s" % (m, "ok" if r else "MISS") for m, r in results)


def doc_contains(path, needle):
    n = norm(needle).lower()
    return any(n in t.lower() for _, t, _ in doc_texts(path))


# ---------------------------------------------------------------- validation
class Report:
    def __init__(self):
        self.fail = 0
        self.warn = 0

    def err(self, msg):
        self.fail += 1
        print("FAIL  " + msg)

    def warning(self, msg):
        self.warn += 1
        print("WARN  " + msg)


def load_jsonl(rep, root, name):
    path = os.path.join(root, name)
    items = []
    if not os.path.exists(path):
        rep.err("%s: missing" % name)
        return items
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as e:
                rep.err("%s:%d: bad JSON: %s" % (name, ln, e))
    return items
