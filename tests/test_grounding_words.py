"""Word tests of the grounding checks: a knowledge base's own common words (its product's name
on every page) count as stop words, read from the keyword index rather than written down for one
manual; a qualified name counts as mentioned where the manual drops its module's name."""

from __future__ import annotations

import re

from kbloop.assistant.grounding import keyword_evidence, restates
from kbloop.ingest.manifest import Hit, Manifest
from kbloop.kb import MIGRATIONS


def manifest_with(tmp_path, texts: list[str]) -> Manifest:
    manifest = Manifest(tmp_path / "kbloop.sqlite", MIGRATIONS)
    with manifest.transaction():
        file_id = manifest.db.execute(
            "INSERT INTO files (path, size, mtime_ns, sha256, status, checked_at, updated_at) "
            "VALUES ('a.txt', 1, 1, 'x', 'indexed', 0, 0)"
        ).lastrowid
        for n, text in enumerate(texts):
            manifest.insert_chunk(file_id, n, f"h{n}", text, {}, n)
    return manifest


def test_words_in_half_the_chunks_or_more_are_common_and_numbers_never(tmp_path):
    texts = [f"Harbor release 3 page {n}: setting{n} controls part {n} of the server." for n in range(30)]
    texts += [f"Unrelated note {n} about lighthouse keepers." for n in range(10)]
    manifest = manifest_with(tmp_path, texts)
    common = manifest.common_words()
    assert {"harbor", "release", "page", "server"} <= common
    assert "3" not in common and "lighthouse" not in common and "setting1" not in common


def test_a_small_knowledge_base_has_no_common_words(tmp_path):
    manifest = manifest_with(tmp_path, [f"Harbor page {n}" for n in range(5)])
    assert manifest.common_words() == frozenset()


def test_common_words_follow_the_chunks(tmp_path):
    manifest = manifest_with(tmp_path, [f"Harbor note {n}" for n in range(25)])
    assert "harbor" in manifest.common_words()
    with manifest.transaction():
        file_id = manifest.db.execute("SELECT id FROM files").fetchone()[0]
        for n in range(25, 60):
            manifest.insert_chunk(file_id, n, f"h{n}", f"Lighthouse note {n}", {}, n)
    assert "harbor" not in manifest.common_words() and "note" in manifest.common_words()


def keyword_search_of_every_word(manifest: Manifest, query: str, limit: int) -> list[int]:
    """The keyword search as it was before it dropped common words: every word of the query."""
    words = dict.fromkeys(w for w in re.findall(r"\w+", query.lower()) if len(w) > 1)
    rows = manifest.db.execute("SELECT chunks.vector_id FROM chunks_fts JOIN chunks ON chunks.id = chunks_fts.rowid "
                               "WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts) LIMIT ?",
                               (" OR ".join(f'"{w}"' for w in words), limit))
    return [row[0] for row in rows]


def test_the_keyword_search_leaves_out_common_words_and_ranks_as_before(tmp_path):
    texts = [f"The harbor keeps the log of ship {n} in the archive of the port." for n in range(30)]
    texts += [f"The lighthouse keeper {n} and the lamp of the tower." for n in range(10)]
    texts += ["The lighthouse keeper rotates the lamp of the harbor every night."]
    manifest = manifest_with(tmp_path, texts)
    assert {"the", "harbor", "of"} <= manifest.common_words()
    for query in ("How does the keeper rotate the lamp of the harbor?", "the lamp of the lighthouse keeper 3"):
        assert manifest.keyword_search(query, 8) == keyword_search_of_every_word(manifest, query, 8)
    assert manifest.keyword_search("Which keeper rotates the lamp?", 1) == [40]
    # A question of common words alone is searched with them: they are all it has.
    assert len(manifest.keyword_search("harbor archive", 50)) == 31
    # A chunk that shares only common words with the question is not a keyword match at all.
    assert len(manifest.keyword_search("the keeper", 50)) == 11
    assert len(keyword_search_of_every_word(manifest, "the keeper", 50)) == 41


def test_common_words_are_recorded_for_other_processes_until_the_chunks_change(tmp_path, monkeypatch):
    manifest = manifest_with(tmp_path, [f"Harbor note {n}" for n in range(25)])
    manifest.record_common_words()
    reads = []
    read = Manifest._read_common_words
    monkeypatch.setattr(Manifest, "_read_common_words", lambda self, *a: reads.append(a) or read(self, *a))
    other = Manifest(tmp_path / "kbloop.sqlite", MIGRATIONS)  # as another process opens it
    assert "harbor" in other.common_words() and reads == []
    with manifest.transaction():
        manifest.insert_chunk(1, 99, "h99", "Lighthouse note", {}, 99)
    assert "harbor" in other.common_words() and len(reads) == 1  # read again, not the stale record
    manifest.record_common_words()  # as the ingest that changed the chunks does
    assert len(reads) == 2
    assert Manifest(tmp_path / "kbloop.sqlite", MIGRATIONS).common_words() == other.common_words()
    manifest.record_common_words()  # already recorded: nothing read
    assert len(reads) == 2
    manifest.set_meta("common_words", "{damaged")
    assert Manifest(tmp_path / "kbloop.sqlite", MIGRATIONS).common_words() == other.common_words()
    assert len(reads) == 3


def test_a_common_word_in_the_reply_does_not_make_it_an_answer():
    question = "Which port does the proxy listen on?"
    reply = "Harbor: the proxy listen on port."
    assert not restates(reply, question)
    assert restates(reply, question, frozenset({"harbor", "port"}))


def test_keyword_evidence_does_not_count_a_word_every_chunk_has():
    question = "What does harbor.retention keep in harbor?"
    chunk = Hit(0, 0.2, "a.txt", "Harbor keeps logs in harbor's own folder.", {})
    assert keyword_evidence(question, chunk)
    assert not keyword_evidence(question, chunk, frozenset({"harbor"}))


def test_a_method_documented_under_its_module_counts_as_mentioned():
    from kbloop.assistant.grounding import unmentioned_terms

    chunk = Hit(0, 0.7, "csv.md", "The Sniffer class deduces formats. Sniffer.has_header(sample) analyses the sample.", {})
    assert unmentioned_terms("How many rows does csv.Sniffer.has_header() sample?", [chunk]) == []
    # two-part names stay exact: a near-miss setting is not its neighbour
    assert unmentioned_terms("What is the default of csv.field_size_limit?", [chunk]) == ["csv.field_size_limit"]
    assert unmentioned_terms("What does csv.Sniffer.sniff_rows do?", [chunk]) == ["csv.sniffer.sniff_rows"]


def test_a_file_name_the_question_names_is_not_required_of_the_sources():
    from kbloop.assistant.grounding import names_file, unmentioned_terms

    chunk = Hit(0, 0.7, "tarfile.txt", "For modes 'w:xz' and 'x:xz', tarfile.open() accepts the keyword argument preset.", {})
    question = "I create an .tar.xz with tarfile.open(name, 'w:xz'). Which preset is used?"
    assert unmentioned_terms(question, [chunk]) == []
    # a setting's name is still required, whatever it ends in
    assert unmentioned_terms("What is the default of tarfile.xz_preset?", [chunk]) == ["tarfile.xz_preset"]
    assert names_file("archive.tar.gz") and names_file("libpq.so") and names_file("backup.zip")
    assert not any(map(names_file, ["core.compression", "os.path", "zlib.decompress", "http.postbuffer"]))


def test_names_the_question_quotes_direct_a_search_but_no_refusal():
    from kbloop.assistant.grounding import unmentioned_names, unmentioned_terms

    chunk = Hit(0, 0.7, "http-backend.txt", "GIT_HTTP_EXPORT_ALL bypasses the check, as git\n  daemon does "
                "for zlib.decompress.", {})
    question = ("Which `git daemon` option matches `GIT_HTTP_EXPORT_ALL`, and does `git gc --auto` or "
                "`git repack` call `zlib.decompress()`? See `git repack`.")
    # a command across a line break is mentioned; one name is looked up once; a quoted exact term
    # ("--auto", "zlib.decompress") is looked up as a term, not a second time as a quoted name
    assert unmentioned_names(question, [chunk]) == ["--auto", "git gc --auto", "git repack"]
    assert unmentioned_terms(question, [chunk]) == ["--auto"]  # what a refusal may name


def test_a_name_in_mixed_case_that_no_source_mentions_is_not_covered():
    from kbloop.assistant.grounding import named_terms, unmentioned_names, unmentioned_terms

    chunk = Hit(0, 0.7, "runtime-config-connection.md", "port (integer) The TCP port the server listens on; "
                "5432 by default. PostgreSQL's GiST indexes and the SQLite driver are described elsewhere.", {})
    # a product the manual never names: the question is about something it does not cover
    assert unmentioned_terms("On which TCP port does PgBouncer listen by default?", [chunk]) == ["pgbouncer"]
    assert unmentioned_names("On which TCP port does PgBouncer listen by default?", [chunk]) == ["pgbouncer"]
    # names the sources spell, in any case, are mentioned
    assert unmentioned_terms("Which port does PostgreSQL use for GiST and SQLite?", [chunk]) == []
    # a part of a dotted term is that term's, a plural of capitals no name, a capital first word none
    assert named_terms("What is core.bigFileThreshold for IDs? The Port?") == ["core.bigfilethreshold"]
    assert named_terms("Does GzipFile() or `ZipFile` raise FileExistsError?") == [
        "fileexistserror", "gzipfile", "zipfile"]


def test_a_source_that_states_the_answers_values_is_cited_beside_the_one_worded_like_it():
    from kbloop.assistant.grounding import attribute, stated_values

    question = "Which reflog entries does `git reflog expire` remove sooner by default, and what are the two ages?"
    answer = ("The reflog entries that git reflog expire removes sooner by default are those unreachable from "
              "the current tip. The two default ages are 30 days and 90 days.")
    worded = Hit(0, 0.8, "git-reflog.txt", "git reflog expire prunes older reflog entries; entries unreachable "
                 "from the current tip are removed sooner, after the ages gc.reflogExpire* give.", {})
    stating = Hit(1, 0.7, "git-gc.html", "gc.reflogExpire defaults to 90 days; gc.reflogExpireUnreachable "
                  "defaults to thirty days.", {})
    near = Hit(2, 0.6, "git-prune.md", "Objects older than 300 days, or 2 weeks, are pruned.", {})
    assert stated_values(answer, question) == {"30", "90"}
    # the page that shares the answer's wording, and the one that states its ages (one spelled out)
    assert attribute(answer, question, [worded, stating, near]) == [1, 2]
    # without the values only the wording counts; a number inside another (300) states nothing
    assert attribute("Unreachable entries go sooner.", question, [worded, stating, near]) == [1]
    # a single digit, a value the question gives and an abbreviation are no value of the answer's
    assert stated_values("Use e.g. 2 workers, not 30.", "Is 30 enough?") == set()
    # an exact term the answer adds is a value, found in any case
    assert stated_values("Create recovery.signal in the data directory.", "Which file starts recovery?") == {
        "recovery.signal"}
    setup = Hit(3, 0.6, "initdb.md", "Create the data directory with initdb; the data directory holds the files.", {})
    signal = Hit(4, 0.5, "archiving.pdf", "The server enters recovery when Recovery.signal is present.", {})
    assert attribute("Create recovery.signal in the data directory.", "Which file starts recovery?",
                     [setup, signal]) == [1, 2]


def test_an_abbreviation_is_no_term_a_source_must_mention():
    from kbloop.assistant.grounding import unmentioned_terms
    from kbloop.text import technical_terms

    chunk = Hit(0, 0.7, "push.md", "push.timeout sets how long a push waits for the remote.", {})
    assert unmentioned_terms("How long does a push wait, e.g. for a slow remote?", [chunk]) == []
    assert unmentioned_terms("Which setting, i.e. which key, limits the wait of a push?", [chunk]) == []
    assert technical_terms("Set push.timeout (e.g. 30s), as the U.S. mirror does, or use --verbose.") == [
        "--verbose", "push.timeout"]
    # a name the sources lack is still required beside it
    assert unmentioned_terms("What does push.retries default to, e.g. on a slow link?", [chunk]) == ["push.retries"]


def test_a_name_the_layout_broke_over_lines_is_still_mentioned():
    """A signature exported as text one element per line ("sqlite3.", then "connect") names the
    function: no refusal for a name the sources lack, no further search for it, and a source that
    states an answer's term so is the one cited."""
    from kbloop.assistant.grounding import states_one_of, unmentioned_names, unmentioned_terms
    from kbloop.text import term_text

    assert "sqlite3.connect" in term_text("Module functions\n\nsqlite3.\n\nconnect\n\n(\n\ndatabase,")
    assert "os.path.abspath" in term_text("os.\npath.\nabspath(path)")
    # a sentence's end before a capital, and a number's dot, stay as they are
    assert term_text("It reads the file.\nThe next line") == "it reads the file.\nthe next line"
    assert term_text("since version 3.\n\n5 rows") == "since version 3.\n\n5 rows"

    signature = Hit(0, 0.6, "sqlite3.txt", "Reference\n\nsqlite3.\n\nconnect\n\n(\n\ndatabase,\n\ntimeout\n\n=\n\n5.0", {})
    question = "How long does sqlite3.connect() wait for a locked database by default?"
    assert unmentioned_terms(question, [signature]) == []
    assert unmentioned_names(question, [signature]) == []
    assert states_one_of(signature.text, {"sqlite3.connect"})
    elsewhere = Hit(1, 0.6, "csv.md", "csv.\n\nField sizes are limited.", {})
    assert unmentioned_terms(question, [elsewhere]) == ["sqlite3.connect"]
