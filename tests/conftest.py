"""Hermetic homes: every test gets its own kb home and a clean KBLOOP_* environment.

The packaged embedder is real and loaded once per session; tests share it to stay fast.
Tests marked ``slow`` train or run whole pipelines; ``pytest -m "not slow"`` is the quick loop.
Ctrl-C stops a run promptly, children included (see the hooks at the end).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

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
    # The answer check, the second reading of a refusal or of an answer the model was unsure of,
    # and the check of a value it was unsure of load the 1.5B judge; their own tests turn them
    # on, whatever the defaults.
    monkeypatch.setenv("KBLOOP_VERIFY_ANSWERS", "false")
    monkeypatch.setenv("KBLOOP_READ_AGAIN", "false")
    monkeypatch.setenv("KBLOOP_VALUE_CONFIDENCE", "0")
    monkeypatch.setenv("KBLOOP_ANSWER_CONFIDENCE", "0")


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
    env["KBLOOP_VERIFY_ANSWERS"] = "false"
    env["KBLOOP_VALUE_CONFIDENCE"] = "0"  # its own tests turn it on
    env["KBLOOP_ANSWER_CONFIDENCE"] = "0"  # likewise: a judge model's answer would replace the generator's
    if home is not None:
        env["KBLOOP_HOME"] = str(home)
    env.update(extra)
    return env


# -- the command line, in process ----------------------------------------------------------------


class InstalledScript(click.Command):
    """``kbloop`` as its console script runs it, ``sys.exit(main(argv))``, in the shape CliRunner calls.

    Invoking the click group itself would skip main(): a domain error would come back as the
    exception instead of its exit code and one ``error:`` line, and click would turn Ctrl-C
    into exit code 1.
    """

    def __init__(self) -> None:
        super().__init__("kbloop")

    def main(self, args=None, **extra):
        from kbloop.cli.main import main

        sys.exit(main(list(args or ())))


def run_cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``kbloop ARGS`` in this process; the result carries the exit code a user would see."""
    result = CliRunner().invoke(InstalledScript(), list(args), env=env)
    if result.exit_code == 130:  # main()'s code for Ctrl-C: the user wants the run to stop
        raise KeyboardInterrupt
    return result


def cli_error(result: Result, exit_code: int) -> str:
    """Check the CLI's contract for a mistake and return its line: this exit code, one
    ``error:`` line on stderr, nothing on stdout, and no traceback (a crash ends in its own
    exception, not in SystemExit)."""
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == exit_code, result.output
    assert result.stdout == "", result.stdout
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr.rstrip("\n")


# -- Ctrl-C ----------------------------------------------------------------------------------------

CTRL_C = pytest.StashKey[bool]()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Note every Ctrl-C, so the run stops after the test it hit even where the code under test
    swallowed the KeyboardInterrupt: click turns it into exit code 1, kbloop's main() into 130,
    and one raised inside a finalizer is only printed."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return  # ignored (a background job) or someone else's: leave it alone
    session.stash[CTRL_C] = False

    def interrupted(signum, frame):
        session.stash[CTRL_C] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """After each test: a Ctrl-C noted during it ends the run, even if nothing raised it."""
    outcome = yield
    if item.session.stash.get(CTRL_C, False):
        item.session.shouldstop = "interrupted by Ctrl-C"
    return outcome


def pytest_keyboard_interrupt(excinfo) -> None:
    """Kill the processes the tests started, before the teardowns wait for them: a daemon
    finishes its running ingest on SIGINT, and a fine-tune started in its own session never
    sees the terminal's Ctrl-C."""
    import psutil  # a dependency of accelerate

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Hand Ctrl-C back to Python's own handler, and keep the run's exit status for the end."""
    if CTRL_C in session.stash:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    session.config.stash[EXIT_STATUS] = int(exitstatus)


EXIT_STATUS = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End a run whose tests connected Ray in this process without running the interpreter's
    teardown: Ray's native library can crash in its own destructors at exit, after every result
    is reported, and turn a passing run into a segmentation fault (ray-project/ray#37596).
    Every test's Ray was shut down by then, and the reports are flushed first."""
    if "ray._raylet" in sys.modules and EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[EXIT_STATUS])
