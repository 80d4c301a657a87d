#!/usr/bin/env python3
"""Validator for the pgdev knowledge-base QA benchmark (PostgreSQL 15 documentation).

Standard library only.  PDF text comes from pypdf if it is importable, else
from `pdftotext` (poppler) if it is on PATH, else from sources/<dir>/<name>.txt
(the text of the document each PDF was printed from).  DOCX text is read with
zipfile + xml.etree.

    python3 check.py            # validate everything, exit 1 on any failure
    python3 check.py --strict   # also require every PDF quote in *all* available
                                # PDF text sources (pypdf, pdftotext, sources/)
    python3 check.py --dump F   # print the extracted text of one document
"""
import os
import re
import sys
from collections import Counter, OrderedDict

ROOT = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(ROOT, "corpus")
DIRS = ("initial",)
FORMATS = (".md", ".txt", ".html", ".pdf", ".docx")
TYPES = {"fact", "number", "default", "name", "flag", "procedure", "comparison", "multi-hop"}
NOT_IN_KB = "NOT_IN_KB"
MAX_EVIDENCE = 300
EXPECTED = OrderedDict([("qa_initial.jsonl", 40), ("qa_unanswerable.jsonl", 10)])
MIN_TYPES = {"multi-hop": 8, "procedure": 5, "comparison": 5}  # qa_initial
MAX_SIZE = 2 * 1048576   # whole corpus/

sys.path.insert(0, os.path.dirname(ROOT))  # bench/: the validators' shared part
from corpus_check import Report, doc_contains, doc_texts, find_quote, load_jsonl, norm, sources_file, texts_of  # noqa: E402


def corpus_files(d="initial"):
    p = os.path.join(CORPUS, d)
    if not os.path.isdir(p):
        return []
    return sorted(f for f in os.listdir(p) if not f.startswith("."))


def check_corpus(rep):
    print("== corpus")
    extra = sorted(d for d in (os.listdir(CORPUS) if os.path.isdir(CORPUS) else [])
                   if d not in DIRS)
    if extra:
        rep.err("corpus/ should hold only initial/, also has %s" % extra)
    files = corpus_files("initial")
    size = sum(os.path.getsize(os.path.join(CORPUS, "initial", f)) for f in files)
    fm = Counter(os.path.splitext(f)[1].lower() for f in files)
    print("  %-8s %2d docs  %8.1f KiB  %s" % ("initial", len(files), size / 1024.0,
          "  ".join("%s=%d" % (k, fm[k]) for k in sorted(fm))))
    for f in files:
        if os.path.splitext(f)[1].lower() not in FORMATS:
            rep.err("corpus/initial/%s: unexpected format" % f)
        full = os.path.join(CORPUS, "initial", f)
        vs = doc_texts(full)
        if not vs or len(vs[0][1]) < 200:
            rep.err("corpus/initial/%s: no/too little extractable text" % f)
        for m, t, _ in vs:
            if m.endswith("-error"):
                rep.err("corpus/initial/%s: %s %s" % (f, m, t[:80]))
        if f.endswith((".pdf", ".docx")) and not os.path.exists(sources_file(full)):
            if f.endswith(".pdf"):
                rep.err("sources/initial/%s.txt missing (needed without pypdf/pdftotext)" % f)
            else:
                rep.warning("sources/initial/%s.txt missing" % f)
    if not 25 <= len(files) <= 32:
        rep.err("initial: %d docs, expected 25-32" % len(files))
    for ext in FORMATS:
        if fm[ext] < 3:
            rep.err("initial: need >=3 %s files, have %d" % (ext, fm[ext]))
    print("  total corpus size %.2f MiB" % (size / 1048576.0))
    if size > MAX_SIZE:
        rep.err("corpus larger than %.1f MiB" % (MAX_SIZE / 1048576.0))


def check_item(rep, fname, it, strict, stats, cited):
    iid = it.get("id", "?")
    where = "%s[%s]" % (fname, iid)
    for k in ("id", "question", "answer", "type"):
        if not isinstance(it.get(k), str) or not it.get(k).strip():
            rep.err("%s: missing field %s" % (where, k))
    if it.get("type") not in TYPES:
        rep.err("%s: bad type %r" % (where, it.get("type")))
    if "accept" in it and not (isinstance(it["accept"], list) and all(isinstance(x, str) for x in it["accept"])):
        rep.err("%s: accept must be a list of strings" % where)
    ans = it.get("answer", "")
    prefix = "n" if fname == "qa_unanswerable.jsonl" else "i"
    if not re.fullmatch(prefix + r"\d\d", str(it.get("id"))):
        rep.err("%s: id should look like %s01" % (where, prefix))

    def quote_check(src, ev, src_key="source", ev_key="evidence"):
        if not src or not ev:
            rep.err("%s: missing %s/%s" % (where, src_key, ev_key))
            return
        if len(ev) > MAX_EVIDENCE:
            rep.err("%s: %s longer than %d chars (%d)" % (where, ev_key, MAX_EVIDENCE, len(ev)))
        path = os.path.join(CORPUS, "initial", src)
        if not os.path.exists(path):
            rep.err("%s: %s corpus/initial/%s does not exist" % (where, src_key, src))
            return
        cited.add(src)
        ok, how = find_quote(path, ev, strict)
        stats[how.split(",")[0].split(":")[0]] += 1
        if not ok:
            rep.err("%s: %s not found in corpus/initial/%s (%s): %r" % (where, ev_key, src, how, ev[:80]))

    if fname == "qa_unanswerable.jsonl":
        if ans != NOT_IN_KB:
            rep.err("%s: answer must be NOT_IN_KB" % where)
        nm = it.get("near_miss_source")
        if not nm and not it.get("absent_terms"):
            rep.err("%s: needs near_miss_source or absent_terms" % where)
        if not it.get("note"):
            rep.err("%s: needs a note" % where)
        if nm and nm not in corpus_files("initial"):
            rep.err("%s: near_miss_source %s not in the corpus" % (where, nm))
        if "source" in it or "evidence" in it:
            rep.err("%s: unanswerable items carry no source/evidence" % where)
        for term in it.get("absent_terms", []):
            for f in corpus_files("initial"):
                if doc_contains(os.path.join(CORPUS, "initial", f), term):
                    rep.err("%s: absent_term %r occurs in corpus/initial/%s" % (where, term, f))
        return
    if ans == NOT_IN_KB:
        rep.err("%s: answerable item with answer NOT_IN_KB" % where)
    quote_check(it.get("source"), it.get("evidence"))
    evs = [it.get("evidence")]
    if "source2" in it or "evidence2" in it:
        if it.get("type") not in ("multi-hop", "comparison"):
            rep.err("%s: source2 only allowed on multi-hop/comparison items" % where)
        quote_check(it.get("source2"), it.get("evidence2"), "source2", "evidence2")
        evs.append(it.get("evidence2"))
    blob = norm(" ".join(e for e in evs if e)).lower()
    if norm(ans).lower() not in blob:
        rep.err("%s: the answer does not occur in the evidence" % where)
    if norm(ans).lower() in norm(it.get("question", "")).lower():
        rep.err("%s: the question contains its own answer" % where)
    if it.get("type") == "multi-hop":
        if not it.get("source2"):
            rep.err("%s: multi-hop item needs source2/evidence2" % where)
        elif it.get("source2") == it.get("source"):
            rep.err("%s: multi-hop item needs two different files" % where)


def main(argv):
    if len(argv) >= 2 and argv[0] == "--dump":
        for m, t in texts_of(argv[1])[:1]:
            sys.stdout.write(t if t.endswith("\n") else t + "\n")
        return 0
    strict = "--strict" in argv
    rep = Report()
    check_corpus(rep)
    print("== qa files")
    ids = Counter()
    stats = Counter()
    cited = set()
    for fname, n in EXPECTED.items():
        items = load_jsonl(rep, ROOT, fname)
        tc = Counter(it.get("type") for it in items)
        print("  %-22s %3d items  (%s)" % (fname, len(items),
              ", ".join("%s=%d" % (k, tc[k]) for k in sorted(tc, key=str))))
        if len(items) != n:
            rep.err("%s: %d items, expected %d" % (fname, len(items), n))
        if fname == "qa_initial.jsonl":
            for t, least in MIN_TYPES.items():
                if tc[t] < least:
                    rep.err("%s: %d %s items, expected at least %d" % (fname, tc[t], t, least))
        for it in items:
            ids[it.get("id")] += 1
            check_item(rep, fname, it, strict, stats, cited)
        if fname == "qa_initial.jsonl":
            fmts = Counter(os.path.splitext(it.get("source") or "")[1] for it in items)
            print("  %-22s primary sources by format: %s" % ("", ", ".join(
                "%s=%d" % kv for kv in sorted(fmts.items()))))
            for ext in FORMATS:
                if not fmts[ext]:
                    rep.err("qa_initial: no item has a %s primary source" % ext)
    for i, c in ids.items():
        if c > 1:
            rep.err("duplicate id %r" % i)
    unc = [f for f in corpus_files("initial") if f not in cited]
    print("  documents cited by no item (distractors): %s" % (", ".join(unc) or "none"))
    if not unc:
        rep.warning("no distractor document (every file is cited)")
    print("  evidence quotes checked: %d  (primary text: %s)" % (
        sum(stats.values()), ", ".join("%s=%d" % kv for kv in sorted(stats.items()))))
    print("== result: %s  (%d failure(s), %d warning(s))%s" % (
        "PASS" if rep.fail == 0 else "FAIL", rep.fail, rep.warn, "  [strict]" if strict else ""))
    return 1 if rep.fail else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
