"""Hermetic homes: every test gets its own kb home and a clean KBLOOP_* environment.

The packaged embedder is real and loaded once per session; tests share it to stay fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kbloop import models  # noqa: E402
from kbloop.config import Settings, init_home  # noqa: E402
from kbloop.kb import KnowledgeBase  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for key in list(os.environ):
        if key.startswith("KBLOOP_"):
            monkeypatch.delenv(key)
    # Keep test processes from fighting over the 2 cores.
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def embedder():
    emb = models.create("embedder", "local:all-minilm-l6-v2", Settings())
    emb.embed(["warm up"])
    return emb


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """Packaged models are converted once per test session, here."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def generator(model_cache):
    """The smallest packaged chat model, real, loaded once."""
    gen = models.create("generator", "local:smollm2-135m", Settings(model_cache=str(model_cache)))
    gen.load()
    return gen


@pytest.fixture
def sample_home(home):
    """A home holding the bundled sample documents (the Harbor manual)."""
    import shutil
    from importlib import resources

    for item in resources.files("kbloop.samples").iterdir():
        if item.name.endswith((".md", ".txt", ".html")):
            with resources.as_file(item) as src:
                shutil.copyfile(src, home.root / "docs" / item.name)
    return home


@pytest.fixture
def home(tmp_path):
    return init_home(tmp_path / "kb")


@pytest.fixture
def open_kb(home, embedder):
    """Open (or reopen) the test home's knowledge base with the shared embedder."""
    opened = []

    def _open(target=None, **settings_overrides):
        target = target or home
        settings = target.load_settings()
        if settings_overrides:
            settings = settings.model_copy(update=settings_overrides)
        kb = KnowledgeBase(target, settings, embedder=embedder)
        opened.append(kb)
        return kb

    yield _open
    for kb in opened:
        kb.close()


def cli_env(home: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for a kbloop subprocess: no inherited KBLOOP_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBLOOP_")}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    if home is not None:
        env["KBLOOP_HOME"] = str(home)
    env.update(extra)
    return env
