#!/usr/bin/env python3
"""Validator for the pydev knowledge-base QA benchmark (Python 3.11 documentation).

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
import difflib
from collections import Counter, OrderedDict

ROOT = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(ROOT, "corpus")
FORMATS = (".md", ".txt", ".html", ".pdf", ".docx")
TYPES = {"fact", "number", "default", "name", "flag", "procedure", "comparison", "multi-hop"}
NOT_IN_KB = "NOT_IN_KB"
MAX_EVIDENCE = 300
EXPECTED = OrderedDict([("qa_initial.jsonl", 40), ("qa_update1.jsonl", 10),
                        ("qa_changes.jsonl", 4), ("qa_unanswerable.jsonl", 10)])
MIN_TYPES = {"multi-hop": 8, "procedure": 5, "comparison": 5}  # qa_initial

sys.path.insert(0, os.path.dirname(ROOT))  # bench/: the validators' shared part
from corpus_check import Report, doc_contains, doc_texts, find_quote, load_jsonl, norm, read_plain, sources_file, texts_of  # noqa: E402


def parse_changes(rep):
    path = os.path.join(CORPUS, "modified", "changes.md")
    if not os.path.exists(path):
        rep.err("corpus/modified/changes.md missing")
        return {}
    ch = {}
    for line in read_plain(path).splitlines():
        m = re.match(r"^\s*[-*]\s*(modified_file|deleted_file|old_value|new_value)\s*:\s*`?([^`]+?)`?\s*$", line)
        if m:
            ch[m.group(1)] = m.group(2)
    for k in ("modified_file", "deleted_file", "old_value", "new_value"):
        if k not in ch:
            rep.err("changes.md: no '- %s: ...' line" % k)
    return ch


def corpus_files(d):
    p = os.path.join(CORPUS, d)
    if not os.path.isdir(p):
        return []
    return sorted(f for f in os.listdir(p) if not f.startswith("."))


def check_corpus(rep, ch):
    total = 0
    print("== corpus")
    for d in ("initial", "update1"):
        files = corpus_files(d)
        size = sum(os.path.getsize(os.path.join(CORPUS, d, f)) for f in files)
        total += size
        fm = Counter(os.path.splitext(f)[1].lower() for f in files)
        print("  %-8s %2d docs  %8.1f KiB  %s" % (d, len(files), size / 1024.0,
              "  ".join("%s=%d" % (k, fm[k]) for k in sorted(fm))))
        for f in files:
            if os.path.splitext(f)[1].lower() not in FORMATS:
                rep.err("corpus/%s/%s: unexpected format" % (d, f))
            full = os.path.join(CORPUS, d, f)
            vs = doc_texts(full)
            if not vs or len(vs[0][1]) < 200:
                rep.err("corpus/%s/%s: no/too little extractable text" % (d, f))
            for m, t, _ in vs:
                if m.endswith("-error"):
                    rep.err("corpus/%s/%s: %s %s" % (d, f, m, t[:80]))
            if f.endswith(".pdf") and not os.path.exists(sources_file(full)):
                rep.warning("sources/%s/%s.txt missing (needed without pypdf/pdftotext)" % (d, f))
        if d == "initial":
            if not 25 <= len(files) <= 40:
                rep.err("initial: %d docs, expected 25-40" % len(files))
            if fm[".pdf"] < 3 or fm[".docx"] < 3:
                rep.err("initial: need >=3 pdf and >=3 docx")
        if d == "update1" and not 6 <= len(files) <= 10:
            rep.err("update1: %d docs, expected 6-10" % len(files))
    dup = set(corpus_files("initial")) & set(corpus_files("update1"))
    if dup:
        rep.err("same file name in initial/ and update1/: %s" % sorted(dup))
    mod = [f for f in corpus_files("modified") if f != "changes.md"]
    msize = sum(os.path.getsize(os.path.join(CORPUS, "modified", f)) for f in corpus_files("modified"))
    total += msize
    print("  modified %s  (+ changes.md)" % ", ".join(mod))
    print("  total corpus size %.2f MiB" % (total / 1048576.0))
    if total > 8 * 1048576:
        rep.err("corpus larger than 8 MiB")

    if not ch:
        return
    mf, df = ch.get("modified_file"), ch.get("deleted_file")
    old, new = ch.get("old_value"), ch.get("new_value")
    if mod != [mf]:
        rep.err("corpus/modified/ should hold exactly %s (+ changes.md), has %s" % (mf, mod))
    a = os.path.join(CORPUS, "initial", mf or "?")
    b = os.path.join(CORPUS, "modified", mf or "?")
    if not (os.path.exists(a) and os.path.exists(b)):
        rep.err("modified file %s must exist in initial/ and modified/" % mf)
    elif os.path.splitext(mf)[1] in (".md", ".txt", ".html"):
        la, lb = read_plain(a).splitlines(), read_plain(b).splitlines()
        diff = [l for l in difflib.unified_diff(la, lb, lineterm="", n=0)
                if l[:1] in "+-" and not l.startswith(("+++", "---"))]
        minus = [l[1:] for l in diff if l.startswith("-")]
        plus = [l[1:] for l in diff if l.startswith("+")]
        if len(minus) != 1 or len(plus) != 1:
            rep.err("modification must change exactly one line (got -%d/+%d)" % (len(minus), len(plus)))
        elif old not in minus[0] or new not in plus[0] or \
                minus[0].replace(old, new, 1) != plus[0]:
            rep.err("changed line is not exactly old_value -> new_value")
        else:
            print("  change   %s: %r -> %r  (one line)" % (mf, old, new))
        for d in ("initial", "update1"):
            for f in corpus_files(d):
                if doc_contains(os.path.join(CORPUS, d, f), new):
                    rep.err("new value %r already appears in corpus/%s/%s" % (new, d, f))
    if not df or not os.path.exists(os.path.join(CORPUS, "initial", df)):
        rep.err("deleted file %s not in initial/" % df)
    else:
        print("  delete   %s" % df)
    if df == mf:
        rep.err("modified and deleted file must differ")


def check_item(rep, fname, it, ch, strict, stats):
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

    def quote_check(d, src, ev, src_key="source", ev_key="evidence"):
        if not src or not ev:
            rep.err("%s: missing %s/%s" % (where, src_key, ev_key))
            return
        if len(ev) > MAX_EVIDENCE:
            rep.err("%s: %s longer than %d chars (%d)" % (where, ev_key, MAX_EVIDENCE, len(ev)))
        path = os.path.join(CORPUS, d, src)
        if not os.path.exists(path):
            rep.err("%s: %s corpus/%s/%s does not exist" % (where, src_key, d, src))
            return
        ok, how = find_quote(path, ev, strict)
        stats[how.split(",")[0].split(":")[0]] += 1
        if not ok:
            rep.err("%s: %s not found in corpus/%s/%s (%s): %r" % (where, ev_key, d, src, how, ev[:80]))

    def answer_in_evidence(answer_list, evs):
        blob = norm(" ".join(e for e in evs if e)).lower()
        if not any(norm(a).lower() in blob for a in answer_list if a):
            rep.err("%s: the answer does not occur in the evidence" % where)

    if fname == "qa_unanswerable.jsonl":
        if ans != NOT_IN_KB:
            rep.err("%s: answer must be NOT_IN_KB" % where)
        nm = it.get("near_miss_source")
        if nm and not any(nm in corpus_files(d) for d in ("initial", "update1")):
            rep.err("%s: near_miss_source %s not in the corpus" % (where, nm))
        if "source" in it or "evidence" in it:
            rep.err("%s: unanswerable items carry no source/evidence" % where)
        for term in it.get("absent_terms", []):
            for d in ("initial", "update1", "modified"):
                for f in corpus_files(d):
                    if f != "changes.md" and doc_contains(os.path.join(CORPUS, d, f), term):
                        rep.err("%s: absent_term %r occurs in corpus/%s/%s" % (where, term, d, f))
        return
    if fname == "qa_changes.jsonl":
        if ans == NOT_IN_KB:
            if it.get("deleted_source") != ch.get("deleted_file"):
                rep.err("%s: deleted_source must be %s" % (where, ch.get("deleted_file")))
            quote_check("initial", it.get("deleted_source"), it.get("evidence"), "deleted_source")
            if it.get("former_answer"):
                answer_in_evidence([it["former_answer"]], [it.get("evidence")])
        else:
            if "stale_answer" not in it:
                rep.err("%s: changed-fact item needs stale_answer" % where)
            if it.get("source") != ch.get("modified_file"):
                rep.err("%s: source must be the modified file %s" % (where, ch.get("modified_file")))
            quote_check("modified", it.get("source"), it.get("evidence"))
            answer_in_evidence([ans], [it.get("evidence")])
            if it.get("stale_evidence") and doc_contains(
                    os.path.join(CORPUS, "modified", it.get("source") or "?"), it["stale_evidence"]):
                rep.err("%s: stale_evidence still present in the modified file" % where)
            if it.get("stale_evidence"):
                quote_check("initial", it.get("source"), it.get("stale_evidence"), "source", "stale_evidence")
                answer_in_evidence([it["stale_answer"]], [it.get("stale_evidence")])
        return
    d = "initial" if fname == "qa_initial.jsonl" else "update1"
    quote_check(d, it.get("source"), it.get("evidence"))
    evs = [it.get("evidence")]
    if "source2" in it or "evidence2" in it:
        d2 = d
        if fname == "qa_update1.jsonl" and it.get("source2") in corpus_files("initial"):
            d2 = "initial"
        if it.get("type") not in ("multi-hop", "comparison"):
            rep.err("%s: source2 only allowed on multi-hop/comparison items" % where)
        quote_check(d2, it.get("source2"), it.get("evidence2"), "source2", "evidence2")
        evs.append(it.get("evidence2"))
    answer_in_evidence([ans], evs)
    if it.get("type") == "multi-hop" and not it.get("source2"):
        rep.err("%s: multi-hop item needs source2/evidence2" % where)
    if fname == "qa_update1.jsonl":
        # the supporting passage must be new: not present in any initial document
        for f in corpus_files("initial"):
            if doc_contains(os.path.join(CORPUS, "initial", f), it.get("evidence", "")):
                rep.err("%s: evidence already present in corpus/initial/%s" % (where, f))
    if it.get("affected_by_change") and ch and \
            ch.get("modified_file") not in (it.get("source"), it.get("source2")):
        rep.err("%s: affected_by_change but source is not %s" % (where, ch.get("modified_file")))
    if it.get("affected_by_deletion") and ch and \
            ch.get("deleted_file") not in (it.get("source"), it.get("source2")):
        rep.err("%s: affected_by_deletion but source is not %s" % (where, ch.get("deleted_file")))
    if fname == "qa_initial.jsonl" and ch:
        # every item that the change or the deletion invalidates must say so
        mod = os.path.join(CORPUS, "modified", ch.get("modified_file") or "?")
        for sk, ek in (("source", "evidence"), ("source2", "evidence2")):
            if it.get(sk) == ch.get("deleted_file") and not it.get("affected_by_deletion"):
                rep.err("%s: cites the deleted file but lacks affected_by_deletion" % where)
            if it.get(sk) == ch.get("modified_file") and os.path.exists(mod) and \
                    not find_quote(mod, it.get(ek, ""))[0] and not it.get("affected_by_change"):
                rep.err("%s: evidence no longer holds after the change but lacks affected_by_change" % where)


def main(argv):
    if len(argv) >= 2 and argv[0] == "--dump":
        for m, t in texts_of(argv[1])[:1]:
            sys.stdout.write(t if t.endswith("\n") else t + "\n")
        return 0
    strict = "--strict" in argv
    rep = Report()
    ch = parse_changes(rep)
    check_corpus(rep, ch)
    print("== qa files")
    ids = Counter()
    stats = Counter()
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
            check_item(rep, fname, it, ch, strict, stats)
        if fname == "qa_changes.jsonl":
            nk = sum(1 for it in items if it.get("answer") == NOT_IN_KB)
            st = sum(1 for it in items if "stale_answer" in it)
            print("  %-22s changed-fact items=%d (stale_answer), deleted-doc items=%d" % ("", st, nk))
    for i, c in ids.items():
        if c > 1:
            rep.err("duplicate id %r" % i)
    print("  evidence quotes checked: %d  (primary text: %s)" % (
        sum(stats.values()), ", ".join("%s=%d" % kv for kv in sorted(stats.items()))))
    print("== result: %s  (%d failure(s), %d warning(s))%s" % (
        "PASS" if rep.fail == 0 else "FAIL", rep.fail, rep.warn, "  [strict]" if strict else ""))
    return 1 if rep.fail else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
