"""bench/scale.py's synthetic corpus: copies are deterministic and share no chunk with each other.

kbloop reuses a vector whenever a chunk's text hash is already stored, so copies that repeated
text would measure copying, not embedding. These tests make a few copies of small kbdev
documents, one of each format, and split them with kbloop's own splitter (PDFs through kbloop's
own loader; the other formats' text is taken out here, since unstructured takes seconds to load).
The slow test runs the benchmark's ``--quick`` smoke run end to end.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kbloop.ingest.chunking import chunk_document, make_splitter
from kbloop.ingest.loaders import Element, Loaded, load_pdf

REPO = Path(__file__).resolve().parent.parent
KBDEV = REPO.parent / "shared" / "kbdev" / "corpus" / "initial"
SAMPLES = ("git-credential-cache.md", "git-shell.txt", "git-instaweb.html", "git-credential-store.docx",
           "gitcredentials.pdf")
COPIES = 3

pytestmark = pytest.mark.skipif(not all((KBDEV / name).is_file() for name in SAMPLES),
                                reason="the kbdev benchmark is not next to the repository")


@pytest.fixture
def scale(monkeypatch):
    """bench/scale.py as a module (it imports its sibling ``workdir`` as a script would)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "bench" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "source"
    folder.mkdir()
    for name in SAMPLES:
        shutil.copyfile(KBDEV / name, folder / name)
    return folder


def digest(files: list[Path], root: Path) -> dict[str, str]:
    return {f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def elements(path: Path) -> Loaded:
    """The document's text as kbloop would chunk it: paragraphs, without markup."""
    if path.suffix == ".pdf":
        return load_pdf(path)
    if path.suffix == ".docx":
        xml = zipfile.ZipFile(io.BytesIO(path.read_bytes())).read("word/document.xml").decode("utf-8")
        paragraphs = ["".join(re.findall(r"<w:t(?: [^>]*)?>([^<]*)</w:t>", p)) for p in xml.split("</w:p>")]
    elif path.suffix == ".html":
        text = re.sub(r"<(script|style)\b.*?</\1>", " ", path.read_text(encoding="utf-8"), flags=re.S)
        paragraphs = re.split(r"<(?:p|div|li|dt|dd|td|th|pre|h\d|title)\b[^>]*>", text)
        paragraphs = [re.sub(r"<[^>]*>", "", p) for p in paragraphs]
    else:
        paragraphs = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
    return Loaded([Element(p.strip()) for p in paragraphs if p.strip()])


def test_copies_are_deterministic_and_copy_zero_is_the_original(scale, source, tmp_path):
    first = scale.make_corpus(source, tmp_path / "a", COPIES)
    second = scale.make_corpus(source, tmp_path / "b", COPIES)

    assert len(first) == COPIES * len(SAMPLES)
    assert digest(first, tmp_path / "a") == digest(second, tmp_path / "b")
    originals = {name: hashlib.sha256((source / name).read_bytes()).hexdigest() for name in SAMPLES}
    copies = digest(first, tmp_path / "a")
    for name in SAMPLES:
        assert copies[f"copy-000/{name}"] == originals[name]
        assert len({copies[f"copy-{k:03d}/{name}"] for k in range(COPIES)}) == COPIES


def test_copies_share_no_chunk_text(scale, source, tmp_path):
    files = scale.make_corpus(source, tmp_path / "corpus", COPIES)
    splitter = make_splitter(800, 120)
    texts: dict[str, list[str]] = {}
    for path in files:
        texts[path.relative_to(tmp_path / "corpus").as_posix()] = [
            c.text for c in chunk_document(elements(path), splitter)]

    every = [text for chunks in texts.values() for text in chunks]
    assert len(every) > 100
    assert len(set(every)) == len(every)
    for name in SAMPLES:  # each copy has about as many chunks as the original (markers add a little)
        original = len(texts[f"copy-000/{name}"])
        assert all(original <= len(texts[f"copy-{k:03d}/{name}"]) <= 1.25 * original + 2 for k in range(1, COPIES))


def test_pdf_copies_read_back_through_kbloops_loader(scale, source, tmp_path):
    scale.make_corpus(source, tmp_path / "corpus", 2)
    original = load_pdf(source / "gitcredentials.pdf")
    copy = load_pdf(tmp_path / "corpus" / "copy-001" / "gitcredentials.pdf")

    assert copy.title == f"{original.title} (copy 1)"
    assert [e.page for e in copy.elements] == [e.page for e in original.elements]
    assert all(re.search(r"\(c1\.\d+\)", e.text) for e in copy.elements)
    assert "git1 config credential.helper" in copy.elements[0].text


def test_growth_exponent_is_the_log_log_slope(scale):
    assert scale.growth_exponent([700, 7000, 70000], [2.0, 20.0, 200.0]) == pytest.approx(1.0)
    assert scale.growth_exponent([100, 10000], [3.0, 30.0]) == pytest.approx(0.5)
    assert scale.growth_exponent([700], [2.0]) is None


@pytest.mark.slow
def test_quick_run_measures_a_real_ingest(tmp_path):
    """``bench/scale.py --quick`` end to end: one 1x home, every command in its own process."""
    out = tmp_path / "scale.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "scale.py"), "--quick", "--workdir",
                          str(tmp_path / "work"), "--out", str(out)],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    (home,) = results["results"]
    assert (home["scale"], home["engine"], home["store"]) == (1, "local", "faiss")
    assert home["files"] == len(list(KBDEV.iterdir()))
    assert home["full"]["counts"]["chunks_reused"] == 0
    assert home["chunks"] == home["distinct_texts"] > 0
    assert home["noop"]["counts"]["files_unchanged"] == home["files"]
    assert home["edit"]["counts"]["files_changed"] == 1
    assert home["search"]["n"] == 10 and home["search"]["p50_ms"] > 0
    assert results["ann"]["vectors"] == 2 * home["chunks"]
    assert [row["recall_at_10"] for row in results["ann"]["rows"]][0] == 1.0
