#!/usr/bin/env bash
# Rebuilds corpus/initial and sources/ from Debian's postgresql-doc-15 package
# (the HTML documentation of PostgreSQL 15).
#
#   apt-get install -y postgresql-doc-15 pandoc libreoffice-writer-nogui
#   bash tools/build_corpus.sh
#
# Nothing here invents text: every document is an upstream page, either
# copied as shipped or converted with pandoc / LibreOffice.
# The qa_*.jsonl files are NOT produced by this script.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
DOC=${DOC:-/usr/share/doc/postgresql-doc-15/html}
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

I="$HERE/corpus/initial"
rm -rf "$I" "$HERE/sources/initial"
mkdir -p "$I"

# ---------------- initial (30 documents) ----------------
for p in runtime-config-autovacuum runtime-config-locks runtime-config-error-handling \
         runtime-config-file-locations runtime-config-preset runtime-config-compatible \
         sql-vacuum sql-cluster app-pgrestore app-vacuumdb backup-file; do
  copy_html "$I" "$p.html" "$p.html"
done
for p in runtime-config-wal runtime-config-resource runtime-config-statistics \
         sql-createindex sql-analyze backup-dump; do
  to_md "$I" "$p.html" "$p.md"
done
for p in runtime-config-connection runtime-config-logging runtime-config-client \
         sql-copy app-pgdump app-pg-dumpall app-pgbasebackup; do
  to_plain "$I" "$p.html" "$p.txt"
done
for p in runtime-config-replication continuous-archiving sql-reindex; do
  to_pdf "$I" "$p.html" "$p.pdf"
done
for p in runtime-config-query routine-vacuuming app-psql; do
  to_docx "$I" "$p.html" "$p.docx"
done

echo "initial: $(ls "$I" | wc -l) files"
du -sh "$HERE/corpus"
