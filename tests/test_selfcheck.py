"""llama.cpp tried on this CPU in a child process before a model of it answers: a build whose
kernels crash here loads without repacked weights, or falls back to transformers, instead of
taking the process down. The crashes below are real segmentation faults of a child process."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from conftest import run_cli

from kbloop import models
from kbloop.config import Settings
from kbloop.models import local, selfcheck
from kbloop.models.generators import PackagedGenerator
from kbloop.models.llamacpp import LlamaCppGenerator

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def child(tmp_path, crashes_in: tuple[str, ...], exit_status: int | None = None) -> list[str]:
    """The self-check's child, which first dies by a real segmentation fault in the modes named
    (``default``: llama.cpp's own buffers; ``plain``: without repacking), or exits with a status."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import ctypes, runpy, sys
        if {exit_status!r} is not None:
            sys.exit({exit_status!r})
        if sys.argv[2] in {crashes_in!r}:
            ctypes.string_at(0)  # SIGSEGV
        sys.argv = ["selfcheck", *sys.argv[1:]]
        runpy.run_module("kbloop.models.selfcheck", run_name="__main__")
    """))
    return [sys.executable, str(script)]


@pytest.fixture
def cache(tmp_path):
    local._say_once.cache_clear()
    return tmp_path / "model-cache"


def create(cache, **settings):
    return models.create("generator", "local:smollm2-135m", Settings(model_cache=str(cache), **settings))


def verdicts(cache) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((cache / "selfcheck").glob("*.json"))]


def test_a_model_that_runs_here_is_checked_once_and_loads_as_llama_cpp_chooses(cache, tmp_path, monkeypatch):
    gen = create(cache)
    assert isinstance(gen, LlamaCppGenerator) and gen.repack
    assert [v["verdict"] for v in verdicts(cache)] == ["runs"]
    # The verdict is kept: a child that would crash now is not started again.
    monkeypatch.setattr(selfcheck, "CHILD", child(tmp_path, ("default", "plain")))
    again = create(cache)
    assert isinstance(again, LlamaCppGenerator) and again.repack
    assert again.generate(QUESTION, max_new_tokens=8).strip()
    again.close()


def test_a_crash_with_repacked_weights_loads_the_model_without_them(cache, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(selfcheck, "CHILD", child(tmp_path, ("default",)))
    gen = create(cache)
    try:
        assert isinstance(gen, LlamaCppGenerator) and not gen.repack
        assert gen.load().model_params.use_extra_bufts is False
        assert gen.generate(QUESTION, max_new_tokens=8).strip()
    finally:
        gen.close()
    [kept] = verdicts(cache)
    assert (kept["verdict"], kept["signal"], kept["plain_signal"]) == ("without_repacking", "SIGSEGV", None)
    assert "crashed on this CPU (SIGSEGV)" in caplog.text and "without them" in caplog.text


def test_a_build_that_crashes_here_either_way_runs_on_transformers(cache, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(selfcheck, "CHILD", child(tmp_path, ("default", "plain")))
    assert isinstance(create(cache), PackagedGenerator)
    assert "rebuild llama-cpp-python" in caplog.text and "transformers engine" in caplog.text
    assert [v["verdict"] for v in verdicts(cache)] == ["crashes"]
    # Kept: a later process falls back at once, without a child that would now succeed.
    monkeypatch.setattr(selfcheck, "CHILD", child(tmp_path, ()))
    local._say_once.cache_clear()
    assert isinstance(create(cache), PackagedGenerator)
    # KBLOOP_ENGINE=transformers needs no check at all.
    assert isinstance(create(cache, engine="transformers"), PackagedGenerator)


def test_another_cpu_is_checked_again(cache, tmp_path, monkeypatch):
    assert create(cache).repack
    monkeypatch.setattr(selfcheck, "cpu_features", lambda: "another CPU\nflags: sse2")
    monkeypatch.setattr(selfcheck, "CHILD", child(tmp_path, ("default",)))
    assert not create(cache).repack
    assert sorted(v["verdict"] for v in verdicts(cache)) == ["runs", "without_repacking"]


@pytest.mark.parametrize("how", ["exits 1", "killed", "cannot start"])
def test_a_check_that_decides_nothing_is_not_kept(cache, tmp_path, monkeypatch, caplog, how):
    # A child that fails (exit status 1), is killed from outside (SIGKILL, as by the kernel out of
    # memory) or cannot start says nothing about llama.cpp's kernels: the model loads as before,
    # and the check is tried again next time.
    script = {"exits 1": child(tmp_path, (), exit_status=1),
              "killed": [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
              "cannot start": [str(tmp_path / "no-such-python")]}[how]
    monkeypatch.setattr(selfcheck, "CHILD", script)
    gen = create(cache)
    assert isinstance(gen, LlamaCppGenerator) and gen.repack
    assert verdicts(cache) == [] and "tried again next time" in caplog.text


def test_status_says_what_runs_each_model_and_what_the_check_found(cache, tmp_path, monkeypatch, home):
    settings = Settings(model_cache=str(cache), generator="local:smollm2-135m")
    assert local.engine_status("local:smollm2-135m", settings) == {
        "model": "local:smollm2-135m", "engine": "llama.cpp", "check": None}  # not used yet: nothing ran
    assert not (cache / "selfcheck").exists()
    monkeypatch.setattr(selfcheck, "CHILD", child(tmp_path, ("default", "plain")))
    create(cache)
    assert local.engine_status("local:smollm2-135m", settings)["engine"] == "transformers"
    assert local.engine_status("ollama:qwen3:4b", settings)["engine"] == "ollama"

    env = {"KBLOOP_HOME": str(home.root), "KBLOOP_MODEL_CACHE": str(cache), "KBLOOP_GENERATOR": "local:smollm2-135m"}
    shown = run_cli("status", env=env)
    assert shown.exit_code == 0, shown.output
    assert "generator: local:smollm2-135m on transformers (llama.cpp crashes on this CPU)" in shown.stdout
    assert json.loads(run_cli("status", "--json", env=env).stdout)["models"]["generator"]["check"] == "crashes"


def test_a_crash_with_repacked_weights_and_no_verdict_without_them_loads_without_them(cache, tmp_path, monkeypatch):
    # Repacked weights crashed; the plain try was killed from outside: loading with them again
    # would crash, so the model loads without them, and nothing is kept.
    script = tmp_path / "child.py"
    script.write_text("import ctypes, os, signal, sys\n"
                      "ctypes.string_at(0) if sys.argv[2] == 'default' else os.kill(os.getpid(), signal.SIGKILL)\n")
    monkeypatch.setattr(selfcheck, "CHILD", [sys.executable, str(script)])
    gen = create(cache)
    assert isinstance(gen, LlamaCppGenerator) and not gen.repack
    assert verdicts(cache) == []
