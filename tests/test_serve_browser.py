"""The web page in a real headless browser: Debian's chromium driven by Playwright.

Locally the test skips with a message when chromium or Playwright is missing; in CI (CI or
IMGPROC_REQUIRE_BROWSER set) it fails instead, so the page is always tested there.
Set IMGPROC_UPDATE_SCREENSHOT=1 to refresh docs/serve-page.png from this run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from .serve_process import ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).parents[1]
SAMPLES = ROOT / "examples" / "images"
SCREENSHOT = ROOT / "docs" / "serve-page.png"
INSTALL = ("apt-get install -y chromium (Debian's browser; never `playwright install`) and "
           "pip install playwright")


def _browser_or_skip() -> None:
    missing = []
    if not CHROMIUM.exists():
        missing.append(str(CHROMIUM))
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if not missing:
        return
    message = f"the page test needs {' and '.join(missing)}: {INSTALL}"
    if os.environ.get("IMGPROC_REQUIRE_BROWSER") or os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """Return the server's data folder; fail the test if a process is left running."""
    before = _children()
    yield tmp_path / "data"
    assert _children() == before, "a server or browser process was left running"


def _children() -> set[int]:
    result = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True)
    return {int(p) for p in result.stdout.split()}


@pytest.mark.slow
def test_page_uploads_two_images_and_shows_downloadable_results(data_dir: Path,
                                                                  tmp_path: Path) -> None:
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    inputs = [SAMPLES / "camera-grey.png", SAMPLES / "astronaut.jpg"]
    with ServerProcess(data_dir, token="page-token") as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(server.url)
            page.fill("#token", "page-token")  # the server has a token: the page asks for it
            page.click("#token-form button")
            page.wait_for_selector("#plugin option[value=colorize]", state="attached")
            page.select_option("#plugin", "colorize")
            page.fill("[name=opt-strength]", "1.3")
            page.set_input_files("#files", [str(p) for p in inputs])
            page.click("#run")
            page.wait_for_function(
                "() => { const imgs = [...document.querySelectorAll('.result img.after')];"
                " return imgs.length === 2 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
                timeout=60_000)
            assert page.locator(".result[data-status=done]").count() == 2
            sizes = page.eval_on_selector_all(".result img.after",
                                              "imgs => imgs.map(i => [i.naturalWidth, "
                                              "i.naturalHeight])")
            assert sizes == [[256, 256], [256, 256]]
            with page.expect_download() as first:
                page.locator(".result a.download").first.click()
            saved = tmp_path / first.value.suggested_filename
            first.value.save_as(saved)
            with Image.open(saved) as out:
                assert out.size == (256, 256) and out.mode == "RGB"
            page.wait_for_selector("#download-all:not([hidden])")
            with page.expect_download() as everything:
                page.click("#download-all")
            zipped = tmp_path / "all.zip"
            everything.value.save_as(zipped)
            with zipfile.ZipFile(zipped) as zf:
                assert sorted(zf.namelist()) == ["astronaut.jpg", "camera-grey.png"]
            shot = tmp_path / "serve-page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
        server.kill()
    if os.environ.get("IMGPROC_UPDATE_SCREENSHOT"):
        shutil.copyfile(shot, SCREENSHOT)
