"""Issue 12 against a real daemon: nothing lost or mixed up when files arrive in bulk, with
odd names, or when two daemons are pointed at one inbox."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import encoded, installed_site, photo
from daemon_helpers import POSTERIZE_CONFIG, Daemon, wait_until, write_config


def _jobs(state: Path) -> dict[str, int]:
    with sqlite3.connect(state / "journal.sqlite3") as db:
        counts = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
    db.close()
    return counts


def _events(daemon: Daemon) -> list[dict]:
    return [json.loads(line) for line in daemon.output().splitlines() if line.startswith("{")]


def test_a_rescan_during_a_burst_makes_no_phantom_failures_or_duplicates(tmp_path: Path) -> None:
    """Rescans every 0.5 s while 200 files go through: each is queued once and done once;
    none is journaled as a failed 'special' file or reported as a duplicate of itself."""
    text = POSTERIZE_CONFIG.format(extra="").replace("rescan_seconds = 2", "rescan_seconds = 0.5")
    config = write_config(tmp_path, text.replace("settle_seconds = 0.2", "settle_seconds = 0.05"))
    staging, inbox = tmp_path / "staging", tmp_path / "inbox"
    staging.mkdir()
    data = [encoded(photo(8, 8, seed=n)) for n in range(200)]
    for n, payload in enumerate(data):
        (staging / f"p{n:03d}.png").write_bytes(payload)
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        for n in range(200):
            os.rename(staging / f"p{n:03d}.png", inbox / f"p{n:03d}.png")
        processed = inbox / "processed"
        assert wait_until(lambda: len(list(processed.glob("p*.png"))) == 200, 120)
        assert wait_until(lambda: _jobs(tmp_path / "state") == {"done": 200}, 10), _jobs(
            tmp_path / "state"
        )
    finally:
        assert daemon.stop() == 0
    events = [event.get("event") for event in _events(daemon)]
    assert events.count("duplicate") == 0 and events.count("failed") == 0
    assert events.count("queued") == 200 and events.count("done") == 200
    assert not list(processed.glob("*.duplicate.txt"))
    assert not list((inbox / "failed").iterdir())


def test_a_name_that_is_not_utf8_goes_through_with_its_arrival(tmp_path: Path) -> None:
    """20 photos and caf\\xe9.png (a Latin-1 name) arrive together: all 21 are processed,
    the odd one under a readable output name, its original moved under its exact name."""
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=""))
    staging, inbox, outbox = tmp_path / "staging", tmp_path / "inbox", tmp_path / "outbox"
    staging.mkdir()
    names = [f"p{n:02d}.png".encode() for n in range(20)] + [b"caf\xe9.png"]
    for n, name in enumerate(names):
        Path(os.fsdecode(os.fsencode(staging) + b"/" + name)).write_bytes(
            encoded(photo(8, 8, seed=n))
        )
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        for name in names:
            os.rename(os.fsencode(staging) + b"/" + name, os.fsencode(inbox) + b"/" + name)
        processed = os.fsencode(inbox / "processed")
        assert wait_until(lambda: len(os.listdir(processed)) == 21, 60), daemon.output()[-3000:]
        assert sorted(os.listdir(processed)) == sorted(names)
        assert wait_until(lambda: _jobs(tmp_path / "state") == {"done": 21}, 10)
    finally:
        assert daemon.stop() == 0
    results = sorted(p.name for p in outbox.glob("*.png"))
    assert results == sorted([f"p{n:02d}.png" for n in range(20)] + ["caf\ufffd.png"])
    manifest = json.loads((outbox / "caf\ufffd.json").read_text())
    assert manifest["output"]["result"] == "caf\ufffd.png"
    assert "caf\ufffd.png" in [event.get("file") for event in _events(daemon)]
    assert "UnicodeEncodeError" not in daemon.output()


def test_a_second_daemon_on_the_same_inbox_is_refused_whatever_its_state_dir(
    tmp_path: Path,
) -> None:
    first = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=""))
    inbox = tmp_path / "inbox"
    other = tmp_path / "other"
    other.mkdir()
    text = POSTERIZE_CONFIG.format(extra="").replace('path = "inbox"', f'path = "{inbox}"')
    second = write_config(other, text)  # its own state dir and outbox, under other/
    daemon = Daemon(first)
    try:
        daemon.wait_ready()
        refused = subprocess.run(
            [sys.executable, "-m", "stylebox.cli", "serve", "--config", str(second)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 2
        (line,) = refused.stderr.splitlines()
        assert f"inbox 'poster' ({inbox})" in line
        assert f"pid {daemon.process.pid}, state dir {tmp_path / 'state'}" in line
        assert not (other / "state" / "journal.sqlite3").exists()

        photo(16, 16).save(inbox / "photo.png")  # the first one serves on, lock file left alone
        assert wait_until(lambda: (inbox / "processed" / "photo.png").exists(), 30)
        assert (inbox / ".stylebox.lock").is_file()
        assert not list((inbox / "failed").iterdir())
        assert not list((inbox / "processed").glob(".stylebox*"))
    finally:
        assert daemon.stop() == 0

    again = Daemon(second)  # once the first has stopped, the inbox is free to serve
    try:
        again.wait_ready()
    finally:
        assert again.stop() == 0


UNRULY = '''
import os
import threading
import time

from stylebox.plugins.api import Plugin, PluginParams


class Params(PluginParams):
    pass


class Unruly(Plugin[Params]):
    """Leaves a thread running for good and moves the working directory."""

    name = "unruly"
    version = "1"
    Params = Params

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        threading.Thread(target=lambda: time.sleep(3600), name="lingering").start()

    def process(self, image, job):
        os.chdir(os.environ["UNRULY_CWD"])
        job.progress(1, 1)
        return image
'''


def test_a_plugin_that_moves_the_cwd_and_leaves_a_thread_neither_blocks_reload_nor_exit(
    tmp_path: Path,
) -> None:
    # The reload read the config by its relative name in the plugin's directory ("config
    # file not found"), and SIGTERM left the daemon waiting for the thread for good.
    site = installed_site(tmp_path, "unruly", "[stylebox.plugins]\nunruly = unruly:Unruly\n",
                          {"unruly.py": UNRULY})  # fmt: skip
    (tmp_path / "elsewhere").mkdir()
    text = POSTERIZE_CONFIG.format(extra="").replace('plugin = "posterize"', 'plugin = "unruly"')
    write_config(tmp_path, text.replace("params = { bits = 2 }", ""))
    env = {
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "UNRULY_CWD": str(tmp_path / "elsewhere"),
    }
    daemon = Daemon(Path("stylebox.toml"), env=env, cwd=tmp_path)
    try:
        daemon.wait_ready()
        (tmp_path / "inbox" / "photo.png").write_bytes(encoded(photo(8, 8)))
        assert wait_until((tmp_path / "outbox" / "photo.json").is_file, 30), daemon.output()
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "config reloaded" in daemon.output(), 30), daemon.output()
    finally:
        began = time.monotonic()
        assert daemon.stop() == 0
    assert time.monotonic() - began < 20
    assert "exiting without waiting for threads a plugin left running: lingering" in (
        daemon.output()
    )


CLOSES_BADLY = """
from stylebox.plugins.api import Plugin, PluginParams
class ClosesBadly(Plugin):
    name = "closesbadly"
    Params = PluginParams
    def process(self, image, job):
        job.progress(1, 1)
        return image
    def close(self):
        raise RuntimeError("close broke")
"""


def test_a_plugin_whose_close_raises_neither_fails_the_stop_nor_a_run(tmp_path: Path) -> None:
    # A SIGTERM ended serve with a traceback and 1, its journal left marked as in use (the
    # next start warned of an unclean stop), and `run` with a traceback and 1.
    site = installed_site(tmp_path, "closesbadly",
                          "[stylebox.plugins]\nclosesbadly = closesbadly:ClosesBadly\n",
                          {"closesbadly.py": CLOSES_BADLY})  # fmt: skip
    text = POSTERIZE_CONFIG.format(extra="").replace(
        'plugin = "posterize"', 'plugin = "closesbadly"'
    )
    config = write_config(tmp_path, text.replace("params = { bits = 2 }", ""))
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    daemon = Daemon(config, env=env)
    try:
        daemon.wait_ready()
        (tmp_path / "inbox" / "photo.png").write_bytes(encoded(photo(8, 8)))
        assert wait_until((tmp_path / "outbox" / "photo.json").is_file, 30), daemon.output()
    finally:
        assert daemon.stop() == 0, daemon.output()
    said = [json.loads(line) for line in daemon.output().splitlines() if "close()" in line]
    assert [(line["msg"], line["event"]) for line in said] == [
        ("plugin closesbadly: close() failed", "plugin_bug")
    ]
    assert "RuntimeError: close broke" in said[0]["exception"]
    assert not list((tmp_path / "state").glob("journal.sqlite3.running.*"))

    photo(8, 8).save(tmp_path / "one.png")
    ran = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "run", str(tmp_path / "one.png"),
         "--plugin", "closesbadly", "--out", str(tmp_path / "ran")],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "plugin closesbadly: close() failed" in ran.stderr
    assert (tmp_path / "ran" / "one.png").is_file()
