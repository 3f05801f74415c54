"""The web page in a real browser: headless Chromium (Debian's `chromium` package, on PATH) driven by
Playwright for Python, pointed at that browser (never `playwright install`). Types a prompt, waits for
streamed text to appear and grow, stops it, chats, generates a diffusion grid and a density grid.

Screenshots go to the test's tmp dir; with GENLAB_UPDATE_SCREENSHOTS=1 the page's screenshot is also
written to docs/images/serve/page.png (the README's picture) so that `make test` leaves the tree clean.
Set GENLAB_SKIP_BROWSER=1 to skip on a machine without chromium (CI installs it: .ci/run)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.serve.conftest import LiveServer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "images" / "serve"


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("GENLAB_SKIP_BROWSER") == "1":
        pytest.skip("GENLAB_SKIP_BROWSER=1")
    exe = shutil.which("chromium")
    assert exe, "the browser test needs Debian's chromium on PATH: apt-get install -y chromium (see .ci/run)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"], headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def slow_server(runs):
    """Every family's run; each engine step takes >= 15 ms so that streaming is visible in the page."""
    srv = LiveServer([runs["lm"], runs["ldm"], runs["made"]], max_batch=4)
    eng = srv.models["lm"].engine
    step = eng.step

    def slow_step():
        time.sleep(0.015)
        step()

    eng.step = slow_step
    yield srv
    srv.stop()


@pytest.mark.slow
def test_page_streams_stops_chats_and_draws(browser, slow_server, tmp_path):
    srv = slow_server
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((srv.url, "data:")) else None)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(srv.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length === 3")
    assert page.locator("#text-panel").is_visible()

    # completion: streamed text appears, then grows; tokens/s is shown
    page.fill("#max_tokens", "50")
    page.fill("#temperature", "0.9")
    page.fill("#seed", "1")
    page.fill("#prompt", "def main(")
    page.click("#generate")
    page.wait_for_function("(document.getElementById('completion')?.textContent || '').length > 0")
    n0 = len(page.locator("#completion").text_content())
    page.wait_for_function(f"document.getElementById('completion').textContent.length > {n0}")
    page.wait_for_function("document.getElementById('generate').disabled === false", timeout=30_000)
    assert "tokens/s" in page.text_content("#tps") and page.text_content("#tps").startswith("50 tokens")
    page.screenshot(path=str(tmp_path / "page.png"))
    if os.environ.get("GENLAB_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "page.png", DOCS / "page.png")

    # stop: a long generation is cut short and the slot is freed
    page.fill("#max_tokens", "54")  # the prompt's 9 bytes + 54 < the run's context of 64
    page.click("#generate")
    page.wait_for_function("(document.getElementById('completion')?.textContent || '').length > 2")
    page.click("#stop")
    page.wait_for_function("document.getElementById('generate').disabled === false")
    stopped = int(page.text_content("#tps").split()[0])
    assert stopped < 54 and not page.text_content("#error")
    eng = srv.models["lm"].engine
    t0 = time.time()
    while eng.running and time.time() - t0 < 5:
        time.sleep(0.02)
    assert not eng.running

    # chat: the user's turn and a streamed assistant turn
    page.select_option("#mode", "chat")
    page.fill("#max_tokens", "12")
    page.fill("#prompt", "hello there")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#chat-log .msg').length === 2")
    page.wait_for_function("document.getElementById('generate').disabled === false")
    assert page.locator("#chat-log .msg.user").text_content() == "hello there"

    # diffusion: a grid of images
    page.select_option("#model", "ldm")
    assert page.locator("#image-panel").is_visible() and not page.locator("#text-panel").is_visible()
    page.fill("#img-n", "4")
    page.fill("#img-steps", "4")
    page.click("#img-generate")
    page.wait_for_function("document.querySelectorAll('#images img').length === 4")
    page.wait_for_function(
        "[...document.querySelectorAll('#images img')].every(i => i.complete && i.naturalWidth === 8)"
    )
    page.screenshot(path=str(tmp_path / "images.png"))

    # density: a sample grid
    page.select_option("#model", "made")
    page.fill("#samples-n", "16")
    page.click("#samples-generate")
    page.wait_for_function("document.getElementById('samples-img').naturalWidth > 0")
    page.screenshot(path=str(tmp_path / "samples.png"))

    assert not errors and not outside, (errors, outside)
    page.close()
