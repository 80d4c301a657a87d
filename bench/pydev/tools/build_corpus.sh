#!/usr/bin/env bash
# Rebuilds corpus/initial, corpus/update1 and sources/ from Debian's python3.11-doc
# package (the HTML documentation of Python 3.11.2, with its reStructuredText sources).
#
#   apt-get install -y python3.11-doc pandoc libreoffice-writer-nogui
#   bash tools/build_corpus.sh
#
# Nothing here invents text: every document is an upstream page, either
# copied as shipped or converted with pandoc / LibreOffice.
# corpus/modified/ and the qa_*.jsonl files are NOT produced by this script.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
DOC=${DOC:-/usr/share/doc/python3.11/html}
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

PANDOC_IN="html-native_divs-native_spans"

copy_html() {   # $1 = dest dir, $2 = upstream page (relative to $DOC), $3 = dest name
  cp "$DOC/$2" "$1/$3"
}
to_md() {
  pandoc --quiet -f "$PANDOC_IN" -t gfm-raw_html --wrap=none "$DOC/$2" -o "$1/$3"
}
to_plain() {
  pandoc --quiet -f "$PANDOC_IN" -t plain --wrap=auto --columns=78 "$DOC/$2" -o "$1/$3"
}
copy_rst() {  # upstream reStructuredText source, shipped as .rst.txt
  cp "$DOC/$2" "$1/$3"
}
to_docx() {
  pandoc --quiet -f "$PANDOC_IN" -t docx "$DOC/$2" -o "$1/$3"
  mkdir -p "$HERE/sources/$(basename "$1")"
  python3 "$HERE/check.py" --dump "$1/$3" > "$HERE/sources/$(basename "$1")/$3.txt"
}
to_pdf() {  # HTML -> DOCX (pandoc) -> PDF (LibreOffice headless)
  local stem="${3%.pdf}"
  pandoc --quiet -f "$PANDOC_IN" -t docx "$DOC/$2" -o "$TMP/$stem.docx"
  soffice --headless --convert-to pdf --outdir "$TMP" "$TMP/$stem.docx" >/dev/null 2>&1
  cp "$TMP/$stem.pdf" "$1/$3"
  mkdir -p "$HERE/sources/$(basename "$1")"
  # text of the document the PDF was printed from (fallback when no PDF text extractor exists)
  python3 "$HERE/check.py" --dump "$TMP/$stem.docx" > "$HERE/sources/$(basename "$1")/$3.txt"
}

I="$HERE/corpus/initial"; U="$HERE/corpus/update1"
rm -rf "$I" "$U" "$HERE/sources/initial" "$HERE/sources/update1"
mkdir -p "$I" "$U"

# ---------------- initial (30 documents) ----------------
for p in glob fnmatch linecache marshal netrc tomllib plistlib filecmp zlib bz2; do
  copy_html "$I" "library/$p.html" "$p.html"
done
for p in fileinput tempfile os.path lzma csv json; do
  to_md "$I" "library/$p.html" "$p.md"
done
copy_rst "$I" _sources/library/stat.rst.txt           stat.rst.txt
copy_rst "$I" _sources/library/tarfile.rst.txt        tarfile.rst.txt
copy_rst "$I" _sources/tutorial/inputoutput.rst.txt   tutorial-inputoutput.rst.txt
for p in sqlite3 configparser pickle zipfile shutil; do
  to_plain "$I" "library/$p.html" "$p.txt"
done
for p in gzip shelve copyreg; do
  to_pdf "$I" "library/$p.html" "$p.pdf"
done
for p in pathlib io hashlib; do
  to_docx "$I" "library/$p.html" "$p.docx"
done

# ---------------- update1 (8 documents) ----------------
for p in quopri uu; do copy_html "$U" "library/$p.html" "$p.html"; done
for p in dbm zipapp zipimport; do to_md "$U" "library/$p.html" "$p.md"; done
to_plain "$U" library/mmap.html mmap.txt
copy_rst "$U" _sources/library/xdrlib.rst.txt xdrlib.rst.txt
to_docx "$U" library/mailbox.html mailbox.docx

echo "initial: $(ls "$I" | wc -l) files, update1: $(ls "$U" | wc -l) files"
du -sh "$HERE/corpus"
