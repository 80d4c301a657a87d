"""The web page in a real headless Chromium (Debian's chromium and chromium-driver), against a
real server: ask, watch the answer stream in, open a source, rate the answer.

Without Chromium the tests skip, except under CI (CI=true), where they fail: CI must prove them.
Selenium is given the driver's path, so Selenium Manager (which downloads drivers) never runs.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.common.selenium_manager import SeleniumManager
from selenium.webdriver.support.ui import WebDriverWait
from test_server import PORT_QUESTION, make_home, serving

from kbloop.evaluate.feedback import FeedbackStore
from kbloop.ingest.manifest import Manifest


def find(variable: str, *candidates: str) -> str | None:
    """The program named by $variable, else the first candidate found (on PATH or as a path)."""
    for name in (os.environ.get(variable), *candidates):
        path = name and (shutil.which(name) or (name if Path(name).is_file() else None))
        if path:
            return path
    return None


CHROMIUM = find("CHROMIUM", "chromium", "chromium-browser")
CHROMEDRIVER = find("CHROMEDRIVER", "chromedriver", "/usr/lib/chromium/chromedriver")
MISSING = None if CHROMIUM and CHROMEDRIVER else (
    "needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver")
UNDER_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
pytestmark = pytest.mark.skipif(MISSING is not None and not UNDER_CI, reason=str(MISSING))


@pytest.fixture(scope="module")
def site(tmp_path_factory, embedder, generator):
    home = make_home(tmp_path_factory.mktemp("web") / "kb", embedder)
    with serving(home, embedder, generator) as (url, service):
        yield url, service


@pytest.fixture
def browser(tmp_path, monkeypatch):
    if MISSING:
        pytest.fail(f"CI must run the browser test, and it {MISSING}")

    def no_downloads(*args, **kwargs):
        raise AssertionError("Selenium Manager must not run: it downloads drivers")

    monkeypatch.setattr(SeleniumManager, "binary_paths", no_downloads)
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=DriverService(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "favicon" not in entry["message"]]


def text_of(driver, selector: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, selector).text


def png(width: int, height: int) -> bytes:
    """A real grey PNG image."""
    def part(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + part(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + part(b"IDAT", zlib.compress(rows)) + part(b"IEND", b""))


def test_asking_on_the_page_streams_an_answer_with_clickable_sources(site, browser):
    url, service = site
    manifest = Manifest(service.home.manifest_path)
    try:
        counts = manifest.counts()
        browser.get(url)
        wait = WebDriverWait(browser, 90)
        wait.until(lambda d: "files" in text_of(d, "#kb-summary"))
        assert text_of(browser, "#kb-summary") == f"{counts['files_indexed']} files, {counts['chunks']} chunks"
        assert text_of(browser, "#adapter-list") == "none yet" and text_of(browser, "#eval-report") == "none yet"

        browser.find_element(By.ID, "question").send_keys(PORT_QUESTION)
        browser.find_element(By.ID, "ask-button").click()
        answer = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".turn .answer"))
        wait.until(lambda d: answer.get_attribute("data-state") != "streaming")
        assert answer.get_attribute("data-state") == "done" and "8735" in answer.text
        assert text_of(browser, ".turn .question") == PORT_QUESTION

        sources = browser.find_elements(By.CSS_SELECTOR, ".turn .sources li")
        cited = [s for s in sources if "cited" in s.get_attribute("class").split()]
        assert cited and any("getting-started.md" in s.text for s in cited)
        first = sources[0]
        assert "getting-started.md" in first.text and not first.find_element(By.CSS_SELECTOR, "pre").is_displayed()
        first.find_element(By.TAG_NAME, "button").click()
        shown = first.find_element(By.CSS_SELECTOR, "pre")
        assert shown.is_displayed() and "8735" in shown.text

        browser.find_element(By.CSS_SELECTOR, ".turn .comment").send_keys("should say more")
        browser.find_element(By.CSS_SELECTOR, ".turn .thumb[data-rating='down']").click()
        wait.until(lambda d: text_of(d, ".turn .feedback-state"))
        assert "eval set" in text_of(browser, ".turn .feedback-state")
        [candidate] = FeedbackStore(manifest.db).eval_candidates()
        assert (candidate.question, candidate.comment, candidate.answer) == (PORT_QUESTION, "should say more",
                                                                            answer.text)
        assert candidate.sources[0]["path"] == "getting-started.md"
        assert page_errors(browser) == []
    finally:
        manifest.close()


def test_page_shows_adapters_and_the_latest_evaluation_with_its_plots(site, browser):
    url, service = site
    data = service.home.data_dir
    (data / "adapters" / "a001").mkdir(parents=True)
    (data / "adapters" / "a001" / "lineage.json").write_text(json.dumps({"parent": "base", "dataset": "d001"}))
    run = data / "evals" / "run-001"
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps({"verdict": "promoted", "candidate": {"accuracy": 0.625}}))
    (run / "scores.png").write_bytes(png(40, 20))

    browser.get(url)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#eval-plots img"))
    report = text_of(browser, "#eval-report")
    assert "run-001" in report and "promoted" in report and "candidate.accuracy" in report and "0.625" in report
    assert "a001" in text_of(browser, "#adapter-list") and "from base" in text_of(browser, "#adapter-list")
    image = browser.find_element(By.CSS_SELECTOR, "#eval-plots img")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 40)
    assert page_errors(browser) == []


def test_a_follow_up_shows_how_it_was_read(tmp_path, embedder, browser):
    from fake_ollama import FakeOllama
    from test_followup import REWRITE

    from kbloop import models
    from kbloop.config import Settings

    def reply(body):
        return REWRITE if body["model"] == "judge:1b" else "Harbor listens on TCP port 8735 by default."

    home = make_home(tmp_path / "kb", embedder)
    with FakeOllama(models=("qwen3:4b", "judge:1b"), reply=reply) as server:
        generator = models.create("generator", "ollama:qwen3:4b", Settings(ollama_url=server.url))
        with serving(home, embedder, generator, judge="ollama:judge:1b", ollama_url=server.url,
                     rewrite_follow_ups=True) as (url, _):
            browser.get(url)
            wait = WebDriverWait(browser, 90)
            for question in (PORT_QUESTION, "Which key of the configuration file changes it?"):
                browser.find_element(By.ID, "question").send_keys(question)
                browser.find_element(By.ID, "ask-button").click()
                wait.until(lambda d, q=question: d.find_element(By.CSS_SELECTOR, ".turn .question").text == q
                           and d.find_element(By.CSS_SELECTOR, ".turn .answer").get_attribute("data-state") == "done")
            first, second = browser.find_elements(By.CSS_SELECTOR, ".turn")[::-1]
            assert not first.find_element(By.CSS_SELECTOR, ".read-as").is_displayed()
            assert second.find_element(By.CSS_SELECTOR, ".read-as").text == f"read as: {REWRITE}"
            # Rated as it was read: the evaluation item it makes stands alone.
            second.find_element(By.CSS_SELECTOR, ".thumb[data-rating='down']").click()
            wait.until(lambda d: second.find_element(By.CSS_SELECTOR, ".feedback-state").text)
            assert page_errors(browser) == []
    manifest = Manifest(home.manifest_path)
    try:
        assert [c.question for c in FeedbackStore(manifest.db).eval_candidates()] == [REWRITE]
    finally:
        manifest.close()
