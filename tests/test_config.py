"""Settings: typed, validated, documented, found from --home, $KBLOOP_HOME or the current folder."""

from __future__ import annotations

import pytest

from kbloop.config import (
    Home, Settings, find_home, init_home, render_env_template, render_settings_markdown,
)
from kbloop.errors import ConfigError, HomeNotFound

from conftest import REPO


def test_defaults_and_environment_override_the_env_file(home):
    home.env_file.write_text("KBLOOP_CHUNK_SIZE=600\nKBLOOP_SEARCH_K=7\n")
    settings = home.load_settings(environ={"KBLOOP_SEARCH_K": "3"})
    assert (settings.chunk_size, settings.search_k, settings.embedder) == (600, 3, "local:all-minilm-l6-v2")


@pytest.mark.parametrize("key,value,expected", [
    ("KBLOOP_CHUNK_SIZE", "big", r"KBLOOP_CHUNK_SIZE='big'.*valid integer.*Characters per chunk"),
    ("KBLOOP_CHUNK_SIZE", "10", r"KBLOOP_CHUNK_SIZE='10'.*greater than or equal to 100"),
    ("KBLOOP_KEYWORD_WEIGHT", "-1", r"KBLOOP_KEYWORD_WEIGHT='-1'.*greater than or equal to 0"),
    ("KBLOOP_EMBEDDER", "minilm", r"KBLOOP_EMBEDDER='minilm'.*provider:name"),
    ("KBLOOP_OLLAMA_URL", "localhost:11434", r"KBLOOP_OLLAMA_URL.*http\(s\) URL"),
    ("KBLOOP_CHUNK_OVERLAP", "900", r"KBLOOP_CHUNK_OVERLAP \(900\) must be smaller than KBLOOP_CHUNK_SIZE \(800\)"),
])
def test_bad_values_name_the_setting_and_what_it_accepts(home, key, value, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        home.load_settings(environ={key: value})
    assert "\n" not in str(info.value)


def test_unknown_setting_in_env_file_is_an_error(home):
    home.env_file.write_text("KBLOOP_CHUNKSIZE=600\n")
    with pytest.raises(ConfigError, match="unknown setting KBLOOP_CHUNKSIZE"):
        home.load_settings(environ={})


def test_env_example_documents_every_setting():
    text = (REPO / ".env.example").read_text()
    assert text == render_env_template()
    for name in Settings.model_fields:
        assert f"# {Settings.env_name(name)}=" in text


def test_configuration_doc_documents_every_setting():
    regenerate = (
        "docs/configuration.md is out of date; regenerate it from the repository root with\n"
        "  .venv/bin/python -c \"from kbloop.config import render_settings_markdown as r; "
        "open('docs/configuration.md', 'w', encoding='utf-8').write(r())\""
    )
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert text == render_settings_markdown(), regenerate
    for name in Settings.model_fields:
        assert f"| `{Settings.env_name(name)}` |" in text


def test_home_precedence(tmp_path, monkeypatch):
    a, b = init_home(tmp_path / "a"), init_home(tmp_path / "b")
    assert find_home(str(a.root), environ={"KBLOOP_HOME": str(b.root)}) == a
    assert find_home(None, environ={"KBLOOP_HOME": str(b.root)}) == b
    monkeypatch.chdir(b.root)
    assert find_home(None, environ={}) == Home(b.root)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HomeNotFound, match="kbloop init"):
        find_home(None, environ={})


def test_init_is_idempotent_and_keeps_an_edited_env(tmp_path):
    home = init_home(tmp_path / "kb")
    for folder in ("docs", "vector_store", "data"):
        assert (home.root / folder).is_dir()
    home.env_file.write_text("KBLOOP_SEARCH_K=9\n")
    init_home(home.root)
    assert home.env_file.read_text() == "KBLOOP_SEARCH_K=9\n"
