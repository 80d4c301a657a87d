"""A docs folder with everything that can go wrong at once, ingested by ``kbloop`` as a user runs it.

Links out of the folder, text in UTF-16 and latin-1, binary and corrupt files, empty and
oversized ones, and a file and a folder that cannot be read, beside ordinary documents. The run
must finish, say for each bad file why in one line, leave no traceback, index what is good and
keep what the links point to out of the index.

Read errors are injected into the ``kbloop`` process (``os.scandir`` and ``open`` fail for
chosen paths, as in test_scan_safety.py), so the test behaves the same as root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import cli_env
from docs_factory import QUERIES, write_corpus

SECRET = "The vault under the bakery opens with the word periwinkle-anvil-42."
SECRET_QUERY = "what word opens the vault under the bakery"
FOLDER_SECRET = "The spare key for the boathouse is taped under the third oar."
UTF16_FACT = "The observatory dome turns on twelve bronze wheels greased each spring."
UTF16_QUERY = "what does the observatory dome turn on"
LATIN1_FACT = "Le café du musée sert une crème brûlée à la lavande chaque dimanche."
LATIN1_QUERY = "which dessert does the museum café serve on Sundays"

# Runs `kbloop ARGS` with read errors for the real paths listed in KBLOOP_TEST_DENY.
DENYING_KBLOOP = """
import builtins, errno, io, os, sys
denied = set(os.environ.pop("KBLOOP_TEST_DENY").split(os.pathsep))

def check(path):
    if os.path.realpath(os.fspath(path)) in denied:
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

real_scandir = os.scandir
def scandir(path="."):
    check(path)
    return real_scandir(path)

def opener(real):
    def open_(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            check(file)
        return real(file, *args, **kwargs)
    return open_

os.scandir = scandir
builtins.open = opener(builtins.open)
io.open = opener(io.open)
from kbloop.cli.main import main
sys.exit(main(sys.argv[1:]))
"""

# Each bad file and the start of the reason the ingest gives for it.
BAD = {
    "nul.md": "binary",
    "broken.pdf": "corrupt PDF",
    "broken.docx": "not a valid DOCX",
    "empty.md": "empty",
    "blank.md": "no text",
    "big.txt": "over KBLOOP_MAX_FILE_MB",
    "locked.md": "cannot read: Permission denied",
    "locked": "cannot read folder: Permission denied",
}
LINKS = ["secret.txt", "elsewhere"]


def hostile_docs(docs, outside) -> list[str]:
    """Write the folder; returns the paths whose reads are to fail."""
    write_corpus(docs)
    (outside / "folder").mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET + "\n")
    (outside / "folder" / "more.md").write_text(f"# Boathouse\n\n{FOLDER_SECRET}\n")
    (docs / "secret.txt").symlink_to(outside / "secret.txt")
    (docs / "elsewhere").symlink_to(outside / "folder", target_is_directory=True)
    (docs / "utf16.md").write_bytes(f"# Observatory\n\n{UTF16_FACT}\n".encode("utf-16"))
    (docs / "latin1.txt").write_bytes(f"Musée\n\n{LATIN1_FACT}\n".encode("latin-1"))
    (docs / "nul.md").write_bytes(b"# Header\n\x00\x00\x01\x02" + bytes(range(256)) * 40)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pa" + os.urandom(300))
    (docs / "broken.docx").write_bytes(b"PK\x03\x04" + os.urandom(2000))
    (docs / "empty.md").write_bytes(b"")
    (docs / "blank.md").write_text("   \n\n\t  \n")
    (docs / "big.txt").write_text("Long line of harmless filler about rivers and bridges.\n" * 12_000)
    (docs / "locked.md").write_text("# Locked\n\nThe cellar door sticks in wet weather.\n")
    (docs / "locked").mkdir()
    (docs / "locked" / "inner.md").write_text("# Inner\n\nThe pantry shelf holds jars of plum jam.\n")
    return [str((docs / "locked.md").resolve()), str((docs / "locked").resolve())]


def kbloop(*args, env, deny=()):
    """`kbloop ARGS` as a subprocess, with read errors for ``deny``."""
    if deny:
        command = [sys.executable, "-c", DENYING_KBLOOP, *args]
        env = env | {"KBLOOP_TEST_DENY": os.pathsep.join(deny)}
    else:
        command = [sys.executable, "-m", "kbloop.cli.main", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def search(query, env, k=5):
    out = kbloop("search", query, "-k", str(k), "--json", "--local", env=env)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
def test_a_hostile_docs_folder_is_ingested_without_a_crash_or_a_leak(tmp_path):
    home = tmp_path / "kb"
    assert kbloop("init", str(home), env=cli_env()).returncode == 0
    deny = hostile_docs(home / "docs", tmp_path / "outside")
    env = cli_env(home, KBLOOP_MAX_FILE_MB="0.5")

    out = kbloop("-v", "ingest", env=env, deny=deny)  # -v: the log names each skipped link
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stdout.startswith("files:  7 added, 0 changed, 0 unchanged, 0 renamed, 0 deleted, 8 failed, 2 ignored\n")
    failed = {line.split(":")[0].removeprefix("  failed "): line.split(": ", 1)[1]
              for line in out.stdout.splitlines() if line.startswith("  failed ")}
    assert set(failed) == set(BAD), out.stdout
    for path, reason in BAD.items():
        assert reason in failed[path], (path, failed[path])
    for link in LINKS:
        assert f"skipped {link}: link to" in out.stderr and "outside the docs folder" in out.stderr, out.stderr

    # Each search loads the embedder in its own process: a few queries, not one per file.
    for name in ("guide.md", "manual.pdf"):
        assert search(QUERIES[name], env)[0]["path"] == name
    assert search(UTF16_QUERY, env)[0]["text"].endswith(UTF16_FACT)
    [hit, *_] = search(LATIN1_QUERY, env)
    assert hit["path"] == "latin1.txt" and LATIN1_FACT in hit["text"]
    # The index holds fewer than 50 chunks: this search returns all of them.
    hits = search(f"{SECRET_QUERY}; the spare key for the boathouse", env, k=50)
    assert len(hits) < 50 and {hit["path"] for hit in hits} == {*QUERIES, "utf16.md", "latin1.txt"}
    leaks = [hit for hit in hits if "periwinkle" in hit["text"] or "boathouse" in hit["text"]]
    assert leaks == []
