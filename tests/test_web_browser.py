"""The status page in a real browser: Debian's headless chromium, driven by Selenium, watches
a real daemon stylise a tiny photo with gatys. The snapshot must change while the job runs,
the loss curve must be drawn, and the result must land in the gallery. A screenshot is kept
under var/test-artifacts/.

Never skipped: where chromium or its driver is missing (``make setup`` installs them), this
test fails saying so."""

from __future__ import annotations

import os
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from conftest import photo
from daemon_helpers import Daemon, gatys_config, wait_until
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from test_web import free_port

ARTIFACTS = Path(__file__).resolve().parents[1] / "var" / "test-artifacts"
PHONE_WIDTH = 390
#: A camera's name for a photo, as people keep them: it must wrap, not widen the page.
LONG = "IMG_20240612_154233_HDR_panorama_from_grandmas_ninetieth_birthday_party_final"


def chrome() -> webdriver.Chrome:
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    assert browser and driver, (
        "chromium and chromedriver are needed (Debian: apt-get install chromium "
        "chromium-driver; `make setup` does it)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(argument)
    # A phone's screen: a headless window is never narrower than 500 px, an emulated one is.
    metrics = {"width": PHONE_WIDTH, "height": 1400, "pixelRatio": 1}
    options.add_experimental_option("mobileEmulation", {"deviceMetrics": metrics})
    return webdriver.Chrome(options=options, service=DriverService(executable_path=driver))


def test_the_page_shows_a_gatys_job_growing_live(tmp_path: Path, style_file: Path) -> None:
    port = free_port()
    config = gatys_config(
        tmp_path,
        style_file,
        "size = 48, steps = 120, snapshot_every = 2, checkpoint_every = 0",
        daemon="rescan_seconds = 5",
    )
    config.write_text(config.read_text() + f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
    daemon = Daemon(config)
    browser = None
    try:
        daemon.wait_ready()
        browser = chrome()
        browser.get(f"http://127.0.0.1:{port}/")
        assert wait_until(lambda: _text(browser, "#connection") == "live", 20)
        assert browser.execute_script("return window.innerWidth") == PHONE_WIDTH

        staged = tmp_path / ".photo.png"
        photo(64, 48, seed=7).save(staged)
        os.rename(staged, tmp_path / "inbox" / f"{LONG}.png")
        (tmp_path / "inbox" / f"{LONG}_notes.jpg").write_text("not a picture")

        # Snapshots as the page shows them: the src of the running job's image, and that
        # the browser decoded it.
        seen: list[str] = []
        drawn = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            cards = browser.find_elements(By.CSS_SELECTOR, "article.job")
            if cards:
                source = browser.execute_script(
                    "const i = document.querySelector('article.job img.snapshot');"
                    "return i && i.complete && i.naturalWidth > 0 ? i.getAttribute('src') : null"
                )
                if source and source not in seen:
                    seen.append(source)
                drawn = max(drawn, len(_curve(browser)))
                if len(seen) >= 2 and drawn >= 2:  # the page shows it growing: keep a picture
                    browser.save_screenshot(str(tmp_path / "running.png"))
                    assert _fits(browser), "the running job's card is wider than the phone"
            elif seen and _results(browser):
                break
            time.sleep(0.1)
        assert len(seen) >= 2, f"the snapshot never changed: {seen}\n{daemon.output()[-3000:]}"
        assert drawn >= 2, "no loss curve was drawn"

        assert wait_until(lambda: bool(_results(browser)), 60), daemon.output()[-3000:]
        images = browser.execute_script(
            "return [...document.querySelectorAll('figure.result img')]"
            ".map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
        )
        assert wait_until(lambda: all(ok for _, ok in _loaded(browser)), 10), images
        assert {src.rsplit("/", 1)[1] for src, _ in images} == {"input", "preview"}
        # Readable on a phone: nothing wider than its screen, the long names wrapped, the
        # failed file's too; its count takes you to it.
        assert wait_until(lambda: _text(browser, ".failed li b") == f"{LONG}_notes.jpg", 30)
        assert _fits(browser)
        browser.find_element(By.CSS_SELECTOR, ".count-failed").click()
        assert wait_until(lambda: browser.execute_script(
            "const r = document.querySelector('.failed').getBoundingClientRect();"
            "return r.top >= 0 && r.top < window.innerHeight"
        ), 5)  # fmt: skip
        browser.save_screenshot(str(tmp_path / "failed.png"))
        # A click shows the result at full size (its tile shows a preview).
        browser.find_element(By.CSS_SELECTOR, "figure.result img[data-full$='/result']").click()
        assert wait_until(lambda: browser.execute_script(
            "const d = document.getElementById('viewer'), i = document.getElementById('full');"
            "return d.open && i.complete && i.naturalWidth > 0 && i.src.endsWith('/result')"
        ), 10)  # fmt: skip
        browser.save_screenshot(str(tmp_path / "done.png"))
    finally:
        if browser is not None:
            browser.quit()
        daemon.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for name in ("running.png", "failed.png", "done.png"):
            if (tmp_path / name).exists():
                shutil.copy(tmp_path / name, ARTIFACTS / f"status-page-{name}")

    # And the gatys job's own loss plot in the outbox: four curves over its 120 steps.
    svg = ET.parse(tmp_path / "outbox" / f"{LONG}.loss.svg").getroot()
    lines = {
        line.get("data-series"): len(line.get("points", "").split())
        for line in svg.iter("{http://www.w3.org/2000/svg}polyline")
    }
    # The content loss is 0 at the first step (the photo itself), which a log scale leaves out.
    assert lines == {"loss": 120, "content": 119, "style": 120, "tv": 120}
    assert (tmp_path / "running.png").stat().st_size > 0


def _fits(browser: webdriver.Chrome) -> bool:
    """Nothing on the page is wider than the screen, nor spills out of its box (a long
    name that does not wrap runs past the card's edge and off the screen)."""
    return bool(
        browser.execute_script(
            "if (document.documentElement.scrollWidth > innerWidth) return false;"
            "return [...document.querySelectorAll('main *')]"
            ".filter(e => e instanceof HTMLElement && e.getClientRects().length)"
            ".every(e => e.getBoundingClientRect().right <= innerWidth + 1"
            "  && (e.clientWidth === 0 || e.scrollWidth <= e.clientWidth + 1))"
        )
    )


def _text(browser: webdriver.Chrome, selector: str) -> str:
    return str(browser.execute_script(f"return document.querySelector('{selector}').textContent"))


def _curve(browser: webdriver.Chrome) -> list[str]:
    """The points of the running job's total loss line, as drawn in the page."""
    points = browser.execute_script(
        "const l = document.querySelector('article.job .loss polyline[data-series=loss]');"
        "return l ? l.getAttribute('points') : ''"
    )
    return str(points).split()


def _results(browser: webdriver.Chrome) -> list[object]:
    return list(browser.find_elements(By.CSS_SELECTOR, "figure.result"))


def _loaded(browser: webdriver.Chrome) -> list[list[object]]:
    return list(
        browser.execute_script(
            "return [...document.querySelectorAll('figure.result img')]"
            ".map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
        )
    )
