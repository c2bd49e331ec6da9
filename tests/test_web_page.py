"""What the status page shows, in a real browser (Debian's headless chromium, driven by
Selenium) at a desktop's and a phone's width, against a real daemon: the queue with its
cancel buttons, failed jobs a retry cannot help, the live loss chart's title and text
size, the gallery's previews and the viewer's full-size view of a small result, a token
asked for again, and a daemon that stops while the page is open.

One daemon for the module: an inbox whose plugin steps (with a loss), snapshots and then
holds its job at a gate while more photos queue behind it, a posterize inbox with a
small done result and a file that is no image, and one with more results than the gallery
shows."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import installed_site, photo
from daemon_helpers import Daemon, wait_until, write_config
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from test_web import Client, free_port
from test_web_browser import chrome

from stylebox.web.state import FAILED, GALLERY, LEFT_ALONE, QUEUED

TOKEN = "page-token-0123456789"
WAITING = QUEUED + 5
"""Photos queued behind the held job: more than the page lists."""
SHELVED = GALLERY + 3
"""Results of the shelf inbox: more than its gallery shows."""
DESKTOP, PHONE = (1280, 800), (390, 844)

STEPPER = """
import os, time
from stylebox.errors import Cancelled
from stylebox.plugins.api import Plugin, PluginParams

class Params(PluginParams):
    steps: int = 20

class Held(Plugin):
    name = "held"
    Params = Params

    def process(self, image, job):
        total = self.params.steps * 10
        for step in range(1, self.params.steps + 1):
            time.sleep(0.1)  # the runner keeps a history on disk once a job ran a second
            job.progress(step, total, loss=1e6 / step, content=1e3 * step, style=1e6 / step)
            if step % 5 == 0:
                job.snapshot(image, step)
        while not os.path.exists(os.environ["GATE"]):
            if job.cancelled:
                raise Cancelled("stopped at the gate")
            time.sleep(0.05)
        return image
"""


@dataclass
class Scene:
    folder: Path
    daemon: Daemon
    client: Client
    browser: webdriver.Chrome

    def source(self, key: str) -> dict[str, Any]:
        return self.client.status()["sources"][key]

    def open(self, size: tuple[int, int]) -> None:
        """The page at a viewport of ``size`` CSS pixels (a phone's: as a phone lays it
        out), loaded afresh and live."""
        width, height = size
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}
        self.browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        self.browser.get(f"http://127.0.0.1:{self.client.port}/")
        assert self.until("document.getElementById('connection').textContent === 'live'", 20)

    def js(self, script: str, *args: object) -> Any:
        return self.browser.execute_script(script, *args)

    def until(self, expression: str, timeout: float = 10) -> bool:
        """Whether the JavaScript ``expression`` comes true within ``timeout`` seconds."""
        return wait_until(lambda: bool(self.js(f"return {expression}")), timeout)

    def shot(self, name: str) -> None:
        folder = Path(os.environ.get("STYLEBOX_WEBSHOTS", self.folder / "shots"))
        folder.mkdir(parents=True, exist_ok=True)
        self.browser.save_screenshot(str(folder / f"{name}.png"))


def config(port: int) -> str:
    return f"""state_dir = "state"
[daemon]
rescan_seconds = 2
drain_seconds = 10
[http]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"

[[inbox]]
name = "held"
path = "in-held"
outbox = "out-held"
plugin = "held"
settle_seconds = 0.2
max_attempts = 1

[[inbox]]
name = "poster"
path = "in-poster"
outbox = "out-poster"
plugin = "posterize"
settle_seconds = 0.2
params = {{ bits = 2 }}

[[inbox]]
name = "junk"
path = "in-junk"
outbox = "out-junk"
plugin = "posterize"
settle_seconds = 0.2

[[inbox]]
name = "shelf"
path = "in-shelf"
outbox = "out-shelf"
plugin = "posterize"
settle_seconds = 0.2
"""


def drop(folder: Path, name: str, seed: int, size: tuple[int, int] = (24, 16)) -> None:
    staged = folder.parent / f".staged-{name}"
    photo(*size, seed=seed).save(staged, "PNG")
    os.rename(staged, folder / name)


def held_env(folder: Path) -> tuple[dict[str, str], Path]:
    """The environment of a daemon with the held plugin, and the gate that lets it go."""
    entry_points = "[stylebox.plugins]\nheld = held:Held\n"
    site = installed_site(folder, "held", entry_points, {"held.py": STEPPER})
    gate = folder / "gate"
    env = {
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "GATE": str(gate),
    }
    return env, gate


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    folder = tmp_path_factory.mktemp("page")
    env, gate = held_env(folder)
    port = free_port()
    daemon = Daemon(write_config(folder, config(port)), env)
    browser = None
    try:
        daemon.wait_ready()
        client = Client(port)

        def status(key: str) -> dict[str, Any]:
            return client.status()["sources"][key]

        drop(folder / "in-poster", "small.png", seed=1, size=(256, 192))
        (folder / "in-poster" / "notes.png").write_bytes(b"hello, this is not a picture\n" * 20)
        for number in range(FAILED + 2):
            (folder / "in-junk" / f"junk-{number:02d}.png").write_text(f"no picture {number}\n")
        for number in range(SHELVED):
            drop(folder / "in-shelf", f"shelved-{number:02d}.png", seed=200 + number)
        # Ended before the held job takes the worker.
        assert wait_until(lambda: status("inbox:junk")["failed"] == FAILED + 2, 30)
        assert wait_until(lambda: status("inbox:shelf")["done"] == SHELVED, 60), daemon.output()
        drop(folder / "in-held", "first.png", seed=2)
        assert wait_until(lambda: status("inbox:held")["running"] == 1, 30), daemon.output()
        for seed in range(WAITING):
            drop(folder / "in-held", f"waiting-{seed:02d}.png", seed=100 + seed)
        assert wait_until(lambda: status("inbox:held")["queued"] == WAITING, 30), daemon.output()
        ended = ("done", "failed")
        assert wait_until(lambda: [status("inbox:poster")[n] for n in ended] == [1, 1], 30)
        job = status("inbox:held")["running_jobs"][0]["job"]
        assert wait_until(lambda: client.request(f"/api/jobs/{job}/loss.svg")[0] == 200, 30)
        browser = chrome()
        yield Scene(folder, daemon, client, browser)
    finally:
        if browser is not None:
            browser.quit()
        gate.touch()
        daemon.stop()


def test_queued_jobs_are_listed_with_a_cancel_button(scene: Scene) -> None:
    scene.open(DESKTOP)
    assert scene.until(
        f"document.querySelectorAll('#source-inbox_held .queued li').length === {QUEUED}"
    )
    items = scene.js(
        "return [...document.querySelectorAll('#source-inbox_held .queued li')]"
        ".map(li => [li.dataset.job, li.textContent, !!li.querySelector('button.cancel')])"
    )
    queued = sorted(row.id for row in _rows(scene) if row.state == "queued")
    assert [int(job) for job, _, _ in items] == queued[:QUEUED]  # in the order they run
    first, last = items[0][1], items[-1][1]
    assert first.startswith("1. waiting-00.png · queued ") and first.endswith(" ago cancel"), first
    assert last.startswith(f"{QUEUED}. waiting-{QUEUED - 1:02d}.png"), last
    assert all(button for _, _, button in items)
    more = scene.js("return document.querySelector('#source-inbox_held .queued-more').textContent")
    assert more == f"and {WAITING - QUEUED} more"
    scene.shot("queued-desktop")

    # A cancel from the list: the job leaves the queue and shows among the failed.
    scene.js(f"localStorage.setItem('stylebox-token', '{TOKEN}')")
    job = int(items[1][0])
    scene.browser.find_element(By.CSS_SELECTOR, f"li[data-job='{job}'] button.cancel").click()
    gone = f"!document.querySelector('.queued li[data-job=\"{job}\"]')"
    assert scene.until(f"{gone} && !!document.getElementById('failed-{job}')", 20)
    assert scene.source("inbox:held")["queued"] == WAITING - 1
    assert scene.js(f"return document.getElementById('failed-{job}').textContent").startswith(
        "waiting-01.png: Cancelled"
    )
    assert scene.js(f"return !!document.querySelector('#failed-{job} button.retry')")


def test_bad_input_is_not_offered_a_retry_but_shows_why(scene: Scene) -> None:
    [failed] = scene.source("inbox:poster")["failed_jobs"]
    job = failed["job"]
    assert failed["error"].startswith("BadInput: ") and failed["retry"] is False
    scene.open(PHONE)
    assert scene.until(f"!!document.getElementById('failed-{job}')")
    text = scene.js(f"return document.getElementById('failed-{job}').textContent")
    assert text.startswith("notes.png: BadInput: ") and "not an image" in text, text
    assert "a retry cannot help" in text
    assert not scene.js(f"return !!document.querySelector('#failed-{job} button')")
    # Only what holds something is headed: no 'running' or 'queued' over nothing.
    shown = scene.js(
        "return [...document.querySelectorAll('#source-inbox_poster h3')]"
        ".filter(h => h.offsetParent !== null).map(h => h.textContent)"
    )
    assert shown == ["latest results", "failed"], shown
    scene.shot("failed-phone")

    # Nor does the API take it: its photo would only fail the same way again.
    token = {"X-Stylebox-Token": TOKEN}
    status, body = scene.client.json(f"/api/jobs/{job}/retry", "POST", **token)
    assert status == 409 and "bad input" in body["error"], body
    assert "a retry would fail the same way" in body["error"] and "(BadInput: " in body["error"]
    # Said so that it also fits a photo that only lacks its mask, which is no damaged one.
    assert body["error"].endswith(
        "mend what the reason says (a good copy of the photo, or what it lacks beside it, "
        "such as its mask) and drop it into the inbox again"
    )
    assert (scene.folder / "in-poster" / "failed" / "notes.png").is_file()


def test_failed_jobs_past_the_latest_are_counted_and_the_count_leads_to_them(
    scene: Scene,
) -> None:
    # The list stopped at 10 without a word, beside a count of 12.
    scene.open(PHONE)
    assert scene.until("document.querySelectorAll('#source-inbox_junk .failed li').length > 0")
    shown = scene.js("return document.querySelectorAll('#source-inbox_junk .failed li').length")
    more = scene.js("return document.querySelector('#source-inbox_junk .failed-more').textContent")
    assert (shown, more) == (FAILED, "and 2 earlier")
    scene.js("document.querySelector('#source-inbox_junk .count-failed').click()")
    assert scene.until(
        "(() => { const r = document.querySelector('#source-inbox_junk-failed')"
        ".getBoundingClientRect(); return Math.abs(r.top) < 2; })()"
    )


def test_the_live_loss_chart_is_titled_by_the_file_and_legible(scene: Scene) -> None:
    [running] = scene.source("inbox:held")["running_jobs"]
    svg = scene.client.request(f"/api/jobs/{running['job']}/loss.svg")[2].decode()
    assert ">first</text>" in svg and "job " not in svg
    # Drawn at the width the page asks for (its card's), within bounds.
    for asked, box in (("300", "0 0 300 200"), ("99999", "0 0 640 320"), ("x", "0 0 640 320")):
        svg = scene.client.request(f"/api/jobs/{running['job']}/loss.svg?width={asked}")[2]
        assert f'viewBox="{box}"'.encode() in svg, asked
    # Drawn to the step the card says, not past it: the card said step 18, its chart ran to
    # 23 (a history on disk ahead of the journal's step, or an earlier run's yet to be redone).
    job = running["job"]
    assert wait_until(lambda: len(scene.client.json(f"/api/jobs/{job}")[1]["history"]) > 5, 20)
    for asked, points in (
        ("5", 5),
        ("x", len(scene.client.json(f"/api/jobs/{job}")[1]["history"])),
    ):
        svg = scene.client.request(f"/api/jobs/{job}/loss.svg?step={asked}")[2].decode()
        [line] = [
            line
            for line in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}polyline")
            if line.get("data-series") == "loss"
        ]
        assert len(line.get("points", "").split()) == points, asked
    for name, size in (("desktop", DESKTOP), ("phone", PHONE)):
        scene.open(size)
        assert scene.until("!!document.querySelector('article.job .loss svg')", 20)
        # The card's label and its chart say the same step.
        agree = (
            "(() => { const card = document.querySelector('article.job');"
            " const step = /step (\\d+) \\//.exec(card.querySelector('.meta').textContent);"
            " const line = card.querySelector('.loss polyline[data-series=loss]');"
            " return !!step && !!line"
            " && line.getAttribute('points').trim().split(/\\s+/).length === Number(step[1]); })()"
        )
        assert scene.until(agree, 20), scene.js(
            "return document.querySelector('article.job .meta').textContent"
        )
        # Each label's size on screen: its font size times the scale the chart is drawn at.
        sizes = scene.js(
            "return [...document.querySelectorAll('article.job .loss svg text')].map(t =>"
            " [t.textContent, parseFloat(getComputedStyle(t).fontSize)"
            " * t.getScreenCTM().a])"
        )
        assert sizes and all(px >= 10 for _, px in sizes), (name, sizes)
        assert scene.js("return document.documentElement.scrollWidth <= window.innerWidth")
        scene.js("document.querySelector('article.job').scrollIntoView()")
        scene.shot(f"running-{name}")


def test_a_full_size_view_is_never_smaller_than_its_tile(scene: Scene) -> None:
    for name, size in (("phone", PHONE), ("desktop", DESKTOP)):
        scene.open(size)
        tile = "figure.result img[data-full$='/result']"
        assert scene.until(f'document.querySelector("{tile}")?.naturalWidth > 0', 20)
        width = scene.js(f'return document.querySelector("{tile}").getBoundingClientRect().width')
        scene.browser.find_element(By.CSS_SELECTOR, tile).click()
        assert scene.until(
            "document.getElementById('viewer').open"
            " && document.getElementById('full').naturalWidth > 0"
        )
        shown = scene.js(
            "const r = document.getElementById('full').getBoundingClientRect();"
            "return [r.width, r.height, window.innerWidth, window.innerHeight]"
        )
        full_width, full_height, screen_width, screen_height = shown
        assert full_width >= width - 0.5, (name, shown, width)
        assert full_width >= 256 and full_width <= screen_width, (name, shown)
        assert full_height <= screen_height, (name, shown)
        scene.shot(f"viewer-{name}")
        scene.js("document.getElementById('viewer').close()")


def test_the_gallery_shows_previews_and_says_where_the_older_results_are(scene: Scene) -> None:
    # A 7680x5120 result was its own tile (82 MB at 375 px); and the latest 12 of "20 done"
    # were shown without a word of the others.
    scene.open(PHONE)
    gallery = "#source-inbox_shelf"
    assert scene.until(f"document.querySelectorAll('{gallery} figure.result').length > 0", 20)
    more = scene.js(f"return document.querySelector('{gallery} .results-more').textContent")
    outbox = scene.folder / "out-shelf"
    assert more == f"showing the latest {GALLERY} of {SHELVED}; all are in {outbox}", more
    tiles = scene.js(
        f"return [...document.querySelectorAll('{gallery} figure.result img[alt^=result]')]"
        ".map(i => [i.getAttribute('src'), i.dataset.full])"
    )
    assert len(tiles) == GALLERY
    for src, full in tiles:
        assert re.fullmatch(r"/files/\d+/result/preview", src), src
        assert full == src.removesuffix("/preview"), full  # the viewer's: the result itself
    # The others' galleries, all shown, say nothing more.
    assert (
        scene.js("return document.querySelector('#source-inbox_poster .results-more').textContent")
        == ""
    )
    scene.shot("gallery-phone")


def test_what_an_inbox_holds_that_no_job_takes_is_listed_while_it_is_there(
    scene: Scene,
) -> None:
    # An album copied into the inbox, or a mask whose photo never came, waited there with
    # one line in the log: on the page nothing said why those photos got no result.
    inbox = scene.folder / "in-shelf"
    (inbox / "album").mkdir()
    drop(inbox / "album", "inside.png", seed=9)
    drop(inbox, "gone.mask.png", seed=10)
    scene.open(PHONE)
    part = "#source-inbox_shelf-alone"
    assert scene.until(f"document.querySelectorAll('{part} li').length == 2", 20)
    said = scene.js(f"return [...document.querySelectorAll('{part} li')].map(i => i.textContent)")
    assert said == [
        "album/ is a folder, left where it is: only files in the inbox itself are taken (move "
        "its photos up, or run a [[batch]] over it)",
        "gone.mask.png is the mask of a photo named gone.* that is not here; no job takes it "
        "until its photo comes (a photo's own name must not end in .mask.png)",
    ]
    heading = scene.js(f"return document.querySelector('{part} h3').textContent")
    assert heading == "left alone in the inbox"
    assert scene.js(f"return document.querySelector('{part}').offsetParent !== null")
    # Not the inbox's own processed/ and failed/, nor another inbox's nothing.
    assert scene.js("return document.querySelector('#source-inbox_poster-alone').hidden")
    scene.js("window.scrollTo(0, document.body.scrollHeight)")  # the last inbox's last part
    scene.until("[...document.images].every(i => i.complete)")
    scene.js("window.scrollTo(0, document.body.scrollHeight)")
    scene.shot("left-alone-phone")
    # Many: the first ones, and a count of the rest.
    for number in range(LEFT_ALONE):
        (inbox / f"more-{number:02d}").mkdir()
    more = f"document.querySelector('{part} .left-alone-more').textContent"
    assert scene.until(f"{more} == 'and 2 more'", 20), scene.js(f"return {more}")
    assert scene.js(f"return document.querySelectorAll('{part} li').length") == LEFT_ALONE
    # Gone from the inbox, gone from the page.
    for folder in [inbox / "album", *inbox.glob("more-*")]:
        shutil.rmtree(folder)
    (inbox / "gone.mask.png").unlink()
    assert scene.until(f"document.querySelector('{part}').hidden", 20)


def test_a_refused_reload_is_said_at_the_top_until_the_config_is_mended(scene: Scene) -> None:
    # The daemon went on with its old config and only its log said why: the page showed
    # nothing amiss while the edited config file was not what ran.
    config = scene.folder / "stylebox.toml"
    good = config.read_text()
    config.write_text(good.replace("rescan_seconds = 2", "rescan_seconds = -1"))
    scene.open(PHONE)
    assert scene.js("return document.getElementById('problems').hidden")
    scene.daemon.process.send_signal(signal.SIGHUP)
    assert scene.until("!document.getElementById('problems').hidden", 20)
    said = scene.js("return document.querySelector('#problems li').textContent")
    assert re.fullmatch(
        r"reload refused, the config before it still runs: .*rescan_seconds.*"
        r" \(at \d\d:\d\d:\d\d\)",
        said,
    ), said
    assert scene.js("return document.querySelector('#problems h2').textContent") == (
        "Not as configured"
    )
    # In sight above the inboxes, and within a phone's width.
    assert scene.js(
        "const box = document.getElementById('problems').getBoundingClientRect();"
        "return box.bottom <= document.getElementById('sources').getBoundingClientRect().top"
        " && box.right <= window.innerWidth"
    )
    scene.shot("reload-refused-phone")
    config.write_text(good)
    scene.daemon.process.send_signal(signal.SIGHUP)
    assert scene.until("document.getElementById('problems').hidden", 20)


def test_a_refused_token_is_asked_for_again_and_the_action_tried_once_more(scene: Scene) -> None:
    # After a reload changed the token, the first click only said the header was wrong (and
    # forgot the token): the user had to click again.
    scene.open(DESKTOP)
    assert scene.until("!!document.querySelector('#source-inbox_held .queued li button.cancel')")
    scene.js(
        "localStorage.setItem('stylebox-token', 'the-token-before-the-reload');"
        "window.asked = []; window.alerts = [];"
        f"window.prompt = (text) => {{ window.asked.push(text); return '{TOKEN}'; }};"
        "window.alert = (text) => { window.alerts.push(text); };"
    )
    job = int(
        scene.js("return document.querySelector('#source-inbox_held .queued li').dataset.job")
    )
    scene.browser.find_element(By.CSS_SELECTOR, f"li[data-job='{job}'] button.cancel").click()
    assert scene.until(f"!!document.getElementById('failed-{job}')", 20), scene.js(
        "return [window.asked, window.alerts, document.getElementById('notice')?.textContent]"
    )
    assert len(scene.js("return window.asked")) == 1
    assert scene.js("return window.alerts") == []
    assert scene.js("return document.getElementById('notice').hidden")
    assert scene.js("return localStorage.getItem('stylebox-token')") == TOKEN


def test_a_daemon_that_stops_is_said_so_and_its_last_state_offers_no_action(
    tmp_path: Path,
) -> None:
    # Stopped (SIGTERM) with the page open: the page went on showing the running card, its
    # time left and an active cancel button, under a small "reconnecting…"; a click threw
    # "Uncaught TypeError: Failed to fetch" and showed nothing.
    env, gate = held_env(tmp_path)
    port = free_port()
    path = write_config(tmp_path, config(port).replace("drain_seconds = 10", "drain_seconds = 1"))
    daemon = Daemon(path, env)
    browser = None
    try:
        daemon.wait_ready()
        client = Client(port)
        drop(tmp_path / "in-held", "first.png", seed=2)
        drop(tmp_path / "in-held", "second.png", seed=3)

        def held() -> dict[str, Any]:
            return client.status()["sources"]["inbox:held"]

        assert wait_until(lambda: (held()["running"], held()["queued"]) == (1, 1), 30)
        [running] = held()["running_jobs"]
        browser = chrome()
        scene = Scene(tmp_path, daemon, client, browser)
        scene.open(DESKTOP)
        card = f"document.getElementById('job-{running['job']}')"
        assert scene.until(f"{card}?.querySelector('.meta').textContent.includes('step')")
        scene.js(f"localStorage.setItem('stylebox-token', '{TOKEN}')")
        assert scene.js("return document.getElementById('banner').hidden")
        buttons = "[...document.querySelectorAll('main button')]"
        assert scene.js(f"return {buttons}.length") == 2
        assert not scene.js(f"return {buttons}.some(b => b.disabled)")

        assert daemon.stop(timeout=30) == 0
        banner = "document.getElementById('banner')"
        assert scene.until(f"!{banner}.hidden", 15)
        text = scene.js(f"return {banner}.textContent")
        assert re.fullmatch(
            r"The daemon is not answering since \d\d:\d\d:\d\d; showing the last known state\.",
            text,
        ), text
        assert scene.js(f"return {card}.classList.contains('stale')")
        meta = scene.js(f"return {card}.querySelector('.meta').textContent")
        assert meta.endswith(" · last known") and "left" not in meta and "steps/s" not in meta
        assert scene.js(f"return {buttons}.every(b => b.disabled)")
        # Said in sight, wherever the page is scrolled to (it was at the page's top only).
        scene.js(
            "document.querySelector('main').append(Object.assign("
            "document.createElement('div'), {style: 'height: 3000px'}));"
            "window.scrollTo(0, 2000)"
        )  # a long page
        top, height = scene.js(
            f"const r = {banner}.getBoundingClientRect(); return [r.top, r.height]"
        )
        assert scene.js("return window.scrollY") >= 1000 and top == 0 and height > 0, (top, height)
        scene.shot("daemon-gone")

        # An action that reaches no daemon (a click just before the page knew) says so.
        errors, notice = browser.execute_async_script(
            "const done = arguments[arguments.length - 1], errors = [];"
            "addEventListener('unhandledrejection', (e) => errors.push(String(e.reason)));"
            f"Promise.resolve(act({running['job']}, 'cancel'))"
            ".catch((e) => errors.push(`rejected: ${e}`))"
            ".then(() => setTimeout(() => {"
            "  const n = document.getElementById('notice');"
            "  done([errors, n && !n.hidden ? n.textContent : null]); }, 100));"
        )
        assert errors == [], errors
        assert notice.startswith(
            f"Could not cancel job {running['job']}: the daemon is not answering"
        )

        # Back (the same state and port): live again, the actions with it.
        daemon = Daemon(path, env)
        daemon.wait_ready()
        assert scene.until(
            f"{banner}.hidden && {buttons}.length > 0 && {buttons}.every(b => !b.disabled)", 20
        )
        assert scene.js("return document.getElementById('connection').textContent") == "live"
        assert not scene.js("return document.querySelector('article.job.stale')")
    finally:
        if browser is not None:
            browser.quit()
        gate.touch()
        daemon.stop()


def test_the_page_keeps_the_keyboard_focus_and_opens_the_viewer_from_it(scene: Scene) -> None:
    # The count pills were made anew at each update, about every second while a job ran:
    # the keyboard's focus fell back to the page's start. The gallery's pictures took clicks
    # only; a file name's two spaces showed as one; on a phone each photo and its result
    # stood one above the other, a screen high.
    scene.open(PHONE)
    pill = "document.querySelector('#source-inbox_held .counts a[href]')"
    assert scene.until(f"!!{pill}")
    scene.js(f"window.focused = {pill}; window.focused.focus()")
    junk = scene.folder / "in-junk"
    (junk / "two  spaces.png").write_text("no picture either\n")  # an update of the page
    failed = scene.source("inbox:junk")["failed"]
    count = "document.querySelector('#source-inbox_junk .count-failed').textContent"
    assert scene.until(f"{count} === '{failed + 1} failed'", 20), scene.js(f"return {count}")
    assert scene.js("return document.activeElement === window.focused")
    assert scene.js("return document.contains(window.focused)")
    # As it is named, spaces and all: the shown text is the rendered one.
    names = [item.text for item in scene.browser.find_elements(By.CSS_SELECTOR, ".failed li b")]
    assert "two  spaces.png" in names, names

    # Photo and result side by side on the phone, each a button the keyboard reaches.
    tile = "#source-inbox_poster figure.result"
    assert scene.until(f"document.querySelector('{tile} img[alt^=result]')?.naturalWidth > 0")
    boxes = scene.js(
        f"return [...document.querySelectorAll('{tile} button.open')]"
        ".map(b => { const r = b.getBoundingClientRect(); return [r.top, r.width]; })"
    )
    assert len(boxes) == 2 and abs(boxes[0][0] - boxes[1][0]) < 1, boxes
    assert all(width < PHONE[0] / 2 for _, width in boxes), boxes
    opener = scene.browser.find_element(By.CSS_SELECTOR, f"{tile} button.open:last-of-type")
    opener.send_keys(Keys.ENTER)
    assert scene.until(
        "document.getElementById('viewer').open"
        " && document.getElementById('full').src.endsWith('/result')"
    )
    scene.js("document.getElementById('viewer').close()")
    scene.shot("keyboard-phone")

    # A list made anew (the queue moved on) keeps the focus on the control it was on.
    queue = "#source-inbox_held .queued"
    scene.js(f"document.querySelector('{queue} li:nth-child(3) button').focus()")
    key = scene.js("return document.activeElement.dataset.key")
    first = int(scene.js(f"return document.querySelector('{queue} li').dataset.job"))
    status, _ = scene.client.json(
        f"/api/jobs/{first}/cancel", "POST", **{"X-Stylebox-Token": TOKEN}
    )
    assert status == 200
    assert scene.until(f"!document.querySelector('{queue} li[data-job=\"{first}\"]')", 20)
    assert key and scene.js("return document.activeElement.dataset.key") == key

    # A running job's cancel asks first (a mis-click cost a long job); "no" leaves it be.
    scene.js(
        f"localStorage.setItem('stylebox-token', '{TOKEN}'); window.asked = [];"
        "window.confirm = (text) => { window.asked.push(text); return false; };"
    )
    scene.browser.find_element(By.CSS_SELECTOR, "article.job button.cancel").click()
    [asked] = scene.js("return window.asked")
    assert re.fullmatch(
        r"Cancel first\.png, running at step \d+ / 200\? It ends as failed; retry queues it "
        r"again\.",
        asked,
    ), asked
    time.sleep(1)
    assert scene.source("inbox:held")["running"] == 1


def _rows(scene: Scene) -> list:
    from stylebox.daemon.journal import Journal

    journal = Journal(scene.folder / "state" / "journal.sqlite3", read_only=True)
    try:
        return journal.jobs("inbox:held")
    finally:
        journal.close()
