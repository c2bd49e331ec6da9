"""The daemon end to end: a real process, a real observer, a real journal."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    MENDED_EXPLODES,
    STYLES,
    broken_plugins_site,
    corrupt_exif_jpeg,
    installed_site,
    make_bad_inputs,
    photo,
)
from daemon_helpers import (
    POSTERIZE_CONFIG,
    Daemon,
    drop,
    gated_env,
    gatys_config,
    inbox,
    wait_until,
    write_config,
)
from PIL import Image

from stylebox.daemon.locks import LOCK_NAME


def results(outbox: Path) -> list[Path]:
    return sorted(p for p in outbox.glob("*.json"))


def test_a_dropped_photo_is_processed_and_moved(tmp_path: Path) -> None:
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=""))
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
        assert (inbox / "processed").is_dir() and (inbox / "failed").is_dir()
        photo(64, 48).save(tmp_path / "p.png")
        os.rename(tmp_path / "p.png", inbox / "holiday.png")
        assert wait_until(lambda: (inbox / "processed" / "holiday.png").exists(), 30)
        manifest = json.loads((outbox / "holiday.json").read_text())
        assert manifest["plugin"] == {"name": "posterize", "version": "1.0.0"}
        assert (outbox / "holiday.png").is_file()
        assert not (inbox / "holiday.png").exists()
        # A library's warning on a photo names its job and file as the job's lines do
        # (it named the file "inbox:poster/exif.jpg", the progress bar's label).
        (tmp_path / "exif.jpg").write_bytes(corrupt_exif_jpeg(photo(32, 24)))
        os.rename(tmp_path / "exif.jpg", inbox / "exif.jpg")
        assert wait_until(lambda: (inbox / "processed" / "exif.jpg").exists(), 30)
    finally:
        assert daemon.stop() == 0
    assert "STOPPING=1" in daemon.messages
    lines = [json.loads(line) for line in daemon.output().splitlines() if line.startswith("{")]
    (started,) = [line for line in lines if line["msg"] == "started" and line["file"] == "exif.jpg"]
    warned = [line for line in lines if line["logger"] == "py.warnings"]
    assert [(line["job"], line["file"]) for line in warned] == [(started["job"], "exif.jpg")]


def test_bad_files_end_in_failed_with_reasons_while_serving(tmp_path: Path) -> None:
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=""))
    outside = tmp_path / "secret.jpg"
    photo(16, 16).save(outside, "JPEG")
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        inbox = tmp_path / "inbox"
        staging = tmp_path / "staging"
        bad = make_bad_inputs(staging)
        folder, _ = bad.pop("directory")  # a folder in an inbox is left where it is
        os.rename(folder, inbox / "directory-x.jpg")
        for kind, (path, _) in bad.items():
            os.rename(path, inbox / f"{kind}-{path.name}")
        os.symlink(outside, inbox / "link.jpg")
        photo(32, 32).save(inbox / "good.png")
        expected = len(bad) + 1
        failed = inbox / "failed"
        assert wait_until(lambda: len(list(failed.glob("*.error.txt"))) == expected, 60)
        reasons = {p.name: p.read_text() for p in failed.glob("*.error.txt")}
        for kind, (path, reason) in bad.items():
            assert reason in reasons[f"{kind}-{path.name}.error.txt"]
        for kind in ("empty", "text", "format"):  # refused on sight, when queued
            assert "attempts: 0 (it never ran)" in reasons[f"{kind}-{bad[kind][0].name}.error.txt"]
        assert "symbolic link" in reasons["link.jpg.error.txt"]
        assert (inbox / "directory-x.jpg").is_dir() and not (failed / "directory-x.jpg").exists()
        assert outside.exists()  # the link's target was neither read nor moved
        assert wait_until(lambda: (inbox / "processed" / "good.png").exists(), 30)
        assert daemon.process.poll() is None
    finally:
        assert daemon.stop() == 0
    assert not list((tmp_path / "outbox").glob("secret*"))


def test_same_bytes_twice_are_not_processed_twice(tmp_path: Path) -> None:
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=""))
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        inbox = tmp_path / "inbox"
        photo(40, 30).save(inbox / "a.png")
        assert wait_until(lambda: (inbox / "processed" / "a.png").exists(), 30)
        photo(40, 30).save(inbox / "copy-of-a.png")
        note = inbox / "processed" / "copy-of-a.png.duplicate.txt"
        assert wait_until(note.exists, 30)
        assert "duplicate of job 1" in note.read_text()
        assert len(results(tmp_path / "outbox")) == 1
    finally:
        daemon.stop()


def test_gatys_inbox_writes_snapshots_animation_and_manifest(tmp_path: Path) -> None:
    style = tmp_path / "style.png"
    with Image.open(STYLES / "starry_night.jpg") as painting:
        painting.convert("RGB").resize((48, 38)).save(style)
    config = gatys_config(tmp_path, style, "size = 64, steps = 6, snapshot_every = 2", settle=0.2)
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
        photo(64, 48).save(inbox / "street.png")
        assert wait_until(lambda: (inbox / "processed" / "street.png").exists(), 90)
        assert sorted(p.name for p in (outbox / "street.steps").iterdir()) == [
            "0000.png", "0002.png", "0004.png", "0006.png",
        ]  # fmt: skip
        assert (outbox / "street.gif").is_file() and (outbox / "street.png").is_file()
        manifest = json.loads((outbox / "street.json").read_text())
        assert len(manifest["history"]) == 6
        status = subprocess.run(
            [sys.executable, "-m", "stylebox.cli", "status", "--json", "--config", str(config)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert json.loads(status.stdout)["sources"]["inbox:starry"]["done"] == 1
    finally:
        daemon.stop()


def test_sigterm_drains_and_the_next_start_resumes(tmp_path: Path) -> None:
    style = tmp_path / "style.png"
    photo(40, 40, seed=4).save(style)
    config = gatys_config(
        tmp_path,
        style,
        "size = 64, steps = 150, snapshot_every = 0, checkpoint_every = 10",
        daemon="drain_seconds = 30",
    )
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    photo(64, 48).save(inbox / "long.png")
    daemon = Daemon(config)
    daemon.wait_ready()

    def steps_done() -> int:
        found = list(tmp_path.glob("state/jobs/*/history.jsonl"))
        return len(found[0].read_text().splitlines()) if found else 0

    assert wait_until(lambda: steps_done() > 12, 60)
    assert daemon.stop(timeout=40) == 0
    assert not (tmp_path / "outbox" / "long.png").exists()
    assert (inbox / "long.png").exists()  # not moved until done
    assert list(tmp_path.glob("state/jobs/*/checkpoint/gatys.pt"))

    again = Daemon(config)
    try:
        again.wait_ready()
        assert wait_until(lambda: (inbox / "processed" / "long.png").exists(), 120)
        manifest = json.loads((tmp_path / "outbox" / "long.json").read_text())
        assert manifest["resumed_from_step"] >= 10
        assert [h["step"] for h in manifest["history"]] == list(range(1, 151))
    finally:
        again.stop()


def test_sighup_refuses_a_bad_config_and_applies_a_good_one(tmp_path: Path) -> None:
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=""))
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        config.write_text(POSTERIZE_CONFIG.format(extra="").replace("bits = 2", "bits = 99"))
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "reload refused" in daemon.output(), 20)
        assert "params.bits" in daemon.output()
        moved = POSTERIZE_CONFIG.format(extra="").replace('"state"', '"state-elsewhere"')
        config.write_text(moved)
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "a new state_dir needs a restart" in daemon.output(), 20)
        photo(20, 20).save(tmp_path / "inbox" / "still.png")
        assert wait_until(lambda: (tmp_path / "inbox" / "processed" / "still.png").exists(), 30)

        second = (
            '[[inbox]]\nname = "two"\npath = "inbox2"\noutbox = "outbox2"\n'
            'plugin = "posterize"\nsettle_seconds = 0.2\n'
            '[[batch]]\nname = "library"\nsource = "library"\noutbox = "stylised"\n'
            'plugin = "posterize"\n'
        )
        (tmp_path / "library").mkdir()
        config.write_text(POSTERIZE_CONFIG.format(extra=second))
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "config reloaded" in daemon.output(), 20)
        # Its inboxes, as the start names them (the batch was listed as one).
        lines = [json.loads(line) for line in daemon.output().splitlines() if line[:1] == "{"]
        (reloaded,) = [line for line in lines if line["msg"] == "config reloaded"]
        assert reloaded["inboxes"] == "inbox:poster, inbox:two"
        assert daemon.receive("STATUS=watching inbox:poster, inbox:two", 10)
        photo(20, 20, seed=2).save(tmp_path / "inbox2" / "new.png")
        assert wait_until(lambda: (tmp_path / "outbox2" / "new.json").exists(), 30)
    finally:
        daemon.stop()


def test_watchdog_pings_while_healthy(tmp_path: Path) -> None:
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=""))
    daemon = Daemon(config, env={"WATCHDOG_USEC": "400000"})
    try:
        daemon.wait_ready()
        assert daemon.receive("WATCHDOG=1", 10)
        assert daemon.receive("STATUS=0 running", 10)
        # An inbox that cannot be watched (a file in its folder's place): the pings stop,
        # and the status line says which (it said nothing but the counts).
        (tmp_path / "inbox").rename(tmp_path / "inbox-away")
        (tmp_path / "inbox").write_text("not a folder")
        assert daemon.receive("; not watched: inbox:poster", 10), daemon.messages[-3:]
        (tmp_path / "inbox").unlink()
        (tmp_path / "inbox-away").rename(tmp_path / "inbox")
    finally:
        daemon.stop()


def assert_refused_as_served(config: Path) -> None:
    """``stylebox serve`` on ``config`` refuses to start: another daemon serves it."""
    second = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode == 2 and "already served by pid" in second.stderr


# /sys refuses new folders to anyone, root too (whom permissions do not stop).
UNMAKEABLE = "/sys/stylebox-test/outbox"


@pytest.mark.parametrize("where", ["outbox", "lock"])
def test_an_inbox_the_daemon_cannot_write_is_refused_at_start_in_one_line(
    tmp_path: Path, where: str
) -> None:
    """An outbox that cannot be made, or an inbox where the lock file cannot be written
    (here: a folder in its place), ends the start with one line naming it, not a
    traceback."""
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=""))
    if where == "outbox":
        config.write_text(config.read_text().replace('"outbox"', f'"{UNMAKEABLE}"'))
        wanted = f"inbox 'poster' outbox {UNMAKEABLE} cannot be made a folder: "
    else:
        (tmp_path / "inbox" / LOCK_NAME).mkdir(parents=True)
        wanted = f"inbox 'poster' ({tmp_path / 'inbox'}) cannot be served: its lock file"
    started = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 2, started.stderr
    assert started.stderr.startswith(f"stylebox: config error: {wanted}"), started.stderr
    assert "Traceback" not in started.stderr


def test_a_second_daemon_on_the_same_state_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=""))
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        assert_refused_as_served(config)
    finally:
        daemon.stop()


def test_an_inbox_folder_made_anew_is_locked_again_at_once(tmp_path: Path) -> None:
    # Moved away and made again, the inbox has no lock file: until the daemon takes one,
    # a second daemon (another state dir) could serve it too, and each photo run twice.
    text = POSTERIZE_CONFIG.format(extra="").replace("rescan_seconds = 2", "rescan_seconds = 600")
    config = write_config(tmp_path, text)
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        (tmp_path / "inbox").rename(tmp_path / "inbox-old")
        (tmp_path / "inbox").mkdir()
        assert wait_until((tmp_path / "inbox" / LOCK_NAME).exists, 5), daemon.output()
        other = config.with_name("other.toml")
        other.write_text(text.replace('state_dir = "state"', 'state_dir = "state-other"'))
        assert_refused_as_served(other)
    finally:
        daemon.stop()


def test_a_journal_deleted_while_serving_stops_the_daemon_saying_so(tmp_path: Path) -> None:
    # Jobs written on to the deleted file would be seen by no one, nor by the next start.
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=""))
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        (tmp_path / "state" / "journal.sqlite3").unlink()
        assert daemon.process.wait(timeout=30) == 1
    finally:
        daemon.stop()
    assert "journal.sqlite3 was deleted while serving: stopping" in daemon.output()


def test_a_job_stopped_as_its_journal_went_does_not_promise_to_resume(tmp_path: Path) -> None:
    # Its log said "stopped; will resume", and the next start began it anew.
    env, record, _ = gated_env(tmp_path)
    config = write_config(tmp_path, 'state_dir = "state"\n' + inbox("held", "a"))
    daemon = Daemon(config, env=env)
    try:
        daemon.wait_ready()
        drop(tmp_path, "in-held", "photo.png", seed=1)
        assert wait_until(lambda: record.exists() and "run a" in record.read_text(), 30)
        (tmp_path / "state" / "journal.sqlite3").unlink()
        assert daemon.process.wait(timeout=30) == 1
    finally:
        daemon.stop()
    output = daemon.output()
    assert "journal.sqlite3 was deleted, so it will not resume" in output
    assert "will resume" not in output.replace("will not resume", "")


def test_bad_config_refuses_to_start_naming_the_field(tmp_path: Path) -> None:
    text = POSTERIZE_CONFIG.format(extra="").replace("bits = 2", "bits = 0")
    config = write_config(tmp_path, text)
    result = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "[[inbox]] #1 (poster).params.bits" in result.stderr and "Traceback" not in result.stderr


def test_a_burst_of_files_is_all_processed(tmp_path: Path) -> None:
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=""))
    inbox = tmp_path / "inbox"
    staging = tmp_path / "staging"
    staging.mkdir()
    count = 600
    for i in range(count):
        photo(8, 8, seed=i).save(staging / f"f{i:04d}.png")
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        for path in staging.iterdir():
            os.rename(path, inbox / path.name)
        processed = inbox / "processed"
        assert wait_until(lambda: len(list(processed.iterdir())) == count, 240), daemon.output()
        assert len(results(tmp_path / "outbox")) == count
    finally:
        daemon.stop()


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    style = tmp_path / "style.png"
    photo(40, 40, seed=4).save(style)
    config = gatys_config(
        tmp_path,
        style,
        "size = 48, steps = 8, snapshot_every = 2, checkpoint_every = 2",
        daemon="retry_backoff_seconds = 0.1",
    )
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    names = [f"photo{i:02d}.png" for i in range(14)]
    for i, name in enumerate(names):
        photo(48, 36, seed=i).save(inbox / name)
    (inbox / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    rng = random.Random(7)
    processed, failed = inbox / "processed", inbox / "failed"

    def finished() -> int:
        done = len(list(processed.glob("*.png"))) if processed.exists() else 0
        return done + (len(list(failed.glob("*.error.txt"))) if failed.exists() else 0)

    for _ in range(6):
        daemon = Daemon(config)
        daemon.wait_ready()
        time.sleep(rng.uniform(0.3, 2.5))
        daemon.kill()
        if finished() == len(names) + 1:
            break
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        assert wait_until(lambda: finished() == len(names) + 1, 180), daemon.output()
    finally:
        daemon.stop()

    outbox = tmp_path / "outbox"
    manifests = results(outbox)
    assert len(manifests) == len(names)  # exactly one output per input, none duplicated
    hashes = sorted(json.loads(m.read_text())["input"]["name"] for m in manifests)
    assert hashes == names
    for manifest in manifests:
        with Image.open(manifest.with_suffix(".png")) as image:
            image.load()  # every result is a complete, valid image
    assert not [p for p in outbox.rglob("*") if p.name.startswith(".")]  # no partial files
    assert sorted(p.name for p in processed.glob("*.png")) == names
    assert (failed / "broken.jpg.error.txt").is_file()
    assert not list(inbox.glob("*.png"))


def test_status_tells_of_an_inbox_disabled_when_its_plugin_failed_to_start(
    tmp_path: Path,
) -> None:
    """``stylebox status`` loads the config but starts no plugin: an inbox the daemon
    disabled because its plugin failed to start (a model file that is no model) is known
    from the daemon, with the photos that wait in its folder, and the daemon's other
    problems (an inbox folder gone); once the daemon is killed, its word no longer holds."""
    model = tmp_path / "bad.onnx"
    model.write_bytes(b"not a model" * 100)
    extra = (
        f'[[inbox]]\nname = "broken"\npath = "in-broken"\noutbox = "out-broken"\n'
        f'plugin = "fast"\nparams = {{ model = "{model}" }}\n'
        f'[[inbox]]\nname = "gone"\npath = "in-gone"\noutbox = "out-gone"\n'
        f'plugin = "posterize"\nparams = {{ bits = 2 }}\n'
    )
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=extra))

    def status(*flags: str) -> str:
        command = [sys.executable, "-m", "stylebox.cli", "status", *flags]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        photo(32, 24).save(tmp_path / "in-broken" / "photo.png")
        said = status("--config", str(config))
        assert "inbox:broken: 0 queued, 0 running, 0 done, 0 failed" in said
        assert "  DISABLED: plugin 'fast' failed to start: BadModel: " in said, said
        assert "  1 file(s) wait in its folder until the plugin is mended" in said, said
        report = json.loads(status("--config", str(config), "--json"))
        assert report["sources"]["inbox:broken"]["disabled"].startswith("plugin 'fast' failed")
        assert report["sources"]["inbox:broken"]["files_waiting"] == 1
        assert report["sources"]["inbox:poster"]["disabled"] is None
        # A file in an inbox folder's place: the config no longer loads here, the journal
        # is read without it, and the daemon's word with it.
        shutil.rmtree(tmp_path / "in-gone")
        (tmp_path / "in-gone").write_text("a file in the folder's place")
        assert daemon.receive("not watched: inbox:gone", 30), daemon.messages[-3:]
        said = status("--state-dir", str(tmp_path / "state"))
        assert "daemon: inbox gone: its folder " in said, said
        assert "  DISABLED: plugin 'fast' failed to start: BadModel: " in said, said
    finally:
        daemon.kill()
    said = status("--state-dir", str(tmp_path / "state"))
    assert "DISABLED" not in said and "daemon:" not in said, said
    assert (tmp_path / "in-broken" / "photo.png").is_file()


def test_a_dead_daemons_problems_are_not_read_though_its_pid_is_in_use(tmp_path: Path) -> None:
    # Killed, a daemon leaves its problems.json; its pid may be another process's by now.
    import fcntl

    from stylebox.daemon import problems_file

    problems_file.publish(tmp_path, [], {"inbox:a": "plugin 'x' failed to start"})
    assert json.loads((tmp_path / "problems.json").read_text())["pid"] == os.getpid()
    assert problems_file.read(tmp_path) is None  # no serve.lock at all
    with (tmp_path / "serve.lock").open("a+") as lock:
        assert problems_file.read(tmp_path) is None  # the pid lives, no daemon holds it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a serving daemon does
        assert problems_file.read(tmp_path)["disabled"] == {"inbox:a": "plugin 'x' failed to start"}


def test_broken_plugins_are_reported_and_the_other_inboxes_keep_working(tmp_path: Path) -> None:
    site = broken_plugins_site(tmp_path)
    inboxes = "".join(
        f'[[inbox]]\nname = "{name}"\npath = "in-{name}"\noutbox = "out-{name}"\n'
        f'plugin = "{name}"\nsettle_seconds = 0.2\nmax_attempts = 1\n'
        for name in ("explodes", "notmodel", "raises")
    )
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=inboxes))
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    daemon = Daemon(config, env=env)
    try:
        daemon.wait_ready()
        for folder in ("inbox", "in-explodes", "in-notmodel", "in-raises"):
            photo(32, 24).save(tmp_path / "staged.png")
            os.rename(tmp_path / "staged.png", tmp_path / folder / "photo.png")
        assert wait_until(lambda: (tmp_path / "inbox/processed/photo.png").exists(), 30)
        reason = tmp_path / "in-raises/failed/photo.png.error.txt"
        assert wait_until(reason.exists, 30)
        assert "plugin raises failed: KeyError: 'lookup table missing'" in reason.read_text()
        # The inbox of the plugin that cannot load keeps its file, untouched.
        assert (tmp_path / "in-explodes/photo.png").is_file()
        assert (tmp_path / "in-notmodel/photo.png").is_file()
        assert daemon.receive("disabled: inbox:explodes, inbox:notmodel", 10)
        status = subprocess.run(
            [sys.executable, "-m", "stylebox.cli", "status", "--config", str(config)],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
        )
        assert "DISABLED: plugin 'explodes'" in status.stdout, status.stdout + status.stderr
        # Mended and reloaded, the inbox takes the file that waited for it.
        (site / "brokenplugins" / "explodes.py").write_text(MENDED_EXPLODES)
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: (tmp_path / "in-explodes/processed/photo.png").exists(), 30)
    finally:
        assert daemon.stop() == 0
    log = daemon.output()
    assert "explodes is disabled: plugin 'explodes'" in log
    assert "no GPU driver here" in log
    assert "notmodel is disabled: plugin 'notmodel'" in log and "not a pydantic model" in log
    # A plugin's own bug is one log line that holds its traceback, for its author to find
    # the line (the reason in failed/ names only the exception).
    (line,) = [json.loads(x) for x in log.splitlines() if '"plugin_bug"' in x]
    assert line["msg"] == "plugin raises raised KeyError: 'lookup table missing'"
    assert 'raises.py", line 6, in process' in line["exception"]


def test_a_reload_starts_workers_for_a_device_type_that_had_none(tmp_path: Path) -> None:
    """The only inbox is disabled at start (its plugin cannot load), so no worker starts;
    once the plugin is mended, the reload that enables the inbox also starts its workers."""
    site = broken_plugins_site(tmp_path)
    config = write_config(
        tmp_path,
        'state_dir = "state"\n[[inbox]]\nname = "explodes"\npath = "inbox"\n'
        'outbox = "outbox"\nplugin = "explodes"\nsettle_seconds = 0.2\n',
    )
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    daemon = Daemon(config, env=env)
    try:
        daemon.wait_ready()
        (site / "brokenplugins" / "explodes.py").write_text(MENDED_EXPLODES)
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "config reloaded" in daemon.output(), 20)
        photo(20, 20).save(tmp_path / "staged.png")
        os.rename(tmp_path / "staged.png", tmp_path / "inbox" / "photo.png")
        outcome = tmp_path / "outbox" / "photo.json"
        assert wait_until(outcome.exists, 30), daemon.output()[-4000:]
    finally:
        assert daemon.stop() == 0


def recording_plugin_site(folder: Path) -> Path:
    """A plugin ``recorder`` that passes images through and appends ``start TAG`` and
    ``close TAG`` to ``$RECORDER_LOG`` as each instance starts and is closed."""
    source = (
        "import os\n"
        "from stylebox.plugins.api import Plugin, PluginParams\n"
        "class Params(PluginParams):\n"
        "    tag: str = 'x'\n"
        "def note(line):\n"
        "    with open(os.environ['RECORDER_LOG'], 'a') as log:\n"
        "        log.write(line + '\\n')\n"
        "class Recorder(Plugin):\n"
        "    name = 'recorder'\n"
        "    Params = Params\n"
        "    def __init__(self, params, runtime):\n"
        "        super().__init__(params, runtime)\n"
        "        note('start ' + params.tag)\n"
        "    def process(self, image, job):\n"
        "        return image\n"
        "    def close(self):\n"
        "        note('close ' + self.params.tag)\n"
    )
    entry = "[stylebox.plugins]\nrecorder = recorder:Recorder\n"
    return installed_site(folder, "recorder", entry, {"recorder.py": source})


def log_messages(daemon: Daemon) -> list[str]:
    return [
        json.loads(line)["msg"] for line in daemon.output().splitlines() if line.startswith("{")
    ]


def test_sighup_with_folders_that_cannot_be_made_keeps_the_old_config(tmp_path: Path) -> None:
    """A reload that fails while it is applied (not only a config that does not validate)
    is refused in one log line; the daemon keeps serving on the old config, the plugin
    instances made for the refused config are closed, and SIGTERM still exits 0."""
    site = recording_plugin_site(tmp_path)
    record = tmp_path / "recorder.log"
    env = {
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "RECORDER_LOG": str(record),
    }

    def inbox(name: str, path: str, tag: str) -> str:
        return (
            f'[[inbox]]\nname = "{name}"\npath = "{path}"\noutbox = "out-{name}"\n'
            f'plugin = "recorder"\nsettle_seconds = 0.2\nparams = {{ tag = "{tag}" }}\n'
        )

    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=inbox("rec", "in-rec", "a")))
    (tmp_path / "afile").write_text("a file, where the new inbox's parent should be\n")
    daemon = Daemon(config, env=env)
    try:
        daemon.wait_ready()
        assert record.read_text() == "start a\n"
        # Caught by validation: the inbox would be inside a regular file.
        extra = inbox("rec", "in-rec", "a") + inbox("bad", "afile/inbox", "b")
        config.write_text(POSTERIZE_CONFIG.format(extra=extra))
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "reload refused" in daemon.output(), 20), daemon.output()
        (refused,) = [m for m in log_messages(daemon) if m.startswith("reload refused")]
        assert "[[inbox]] #3 (bad).path" in refused and "afile" in refused
        assert "\n" not in refused
        # Fails only while it is applied: the name is too long for the file system.
        extra = inbox("rec", "in-rec", "a") + inbox("long", "x" * 300, "c")
        config.write_text(POSTERIZE_CONFIG.format(extra=extra))
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: len(
            [m for m in log_messages(daemon) if m.startswith("reload refused")]
        ) == 2, 30), daemon.output()  # fmt: skip
        refused = [m for m in log_messages(daemon) if m.startswith("reload refused")][1]
        assert "File name too long" in refused and "\n" not in refused
        assert record.read_text() == "start a\nstart c\nclose c\n"
        assert daemon.process.poll() is None
        assert "config reloaded" not in daemon.output()

        for folder in ("inbox", "in-rec"):
            photo(20, 20).save(tmp_path / "staged.png")
            os.rename(tmp_path / "staged.png", tmp_path / folder / "still.png")
        assert wait_until(lambda: (tmp_path / "inbox/processed/still.png").exists(), 30)
        assert wait_until(lambda: (tmp_path / "in-rec/processed/still.png").exists(), 30)
    finally:
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.output()
    assert record.read_text() == "start a\nstart c\nclose c\nclose a\n"


def test_a_deleted_or_replaced_inbox_is_watched_again_at_once(tmp_path: Path) -> None:
    """``rm -r inbox && mkdir inbox`` and ``mv inbox elsewhere && mkdir inbox``: a photo
    dropped into the new folder is taken within seconds, not at the next rescan."""
    text = POSTERIZE_CONFIG.format(extra="").replace("rescan_seconds = 2", "rescan_seconds = 600")
    config = write_config(tmp_path, text)
    inbox = tmp_path / "inbox"
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        for index, replace in enumerate(("rm -r", "mv")):
            if replace == "rm -r":
                subprocess.run(["rm", "-r", str(inbox)], check=True)
            else:
                subprocess.run(["mv", str(inbox), str(tmp_path / "elsewhere")], check=True)
            inbox.mkdir(exist_ok=True)  # the daemon may have recreated it already
            photo(20, 20, seed=index).save(tmp_path / "staged.png")
            os.rename(tmp_path / "staged.png", inbox / f"after-{index}.png")
            done = inbox / "processed" / f"after-{index}.png"
            assert wait_until(done.exists, 10), f"{replace}: {daemon.output()[-3000:]}"
            assert (inbox / "failed").is_dir()
        messages = log_messages(daemon)
        assert any("inbox poster" in m and "watching" in m for m in messages), messages
        events = [json.loads(line).get("event") for line in daemon.output().splitlines()
                  if line.startswith("{")]  # fmt: skip
        assert events.count("inbox_rewatched") >= 2, events
        # SIGUSR1: every thread's stack, as plain text in the log; the daemon goes on.
        daemon.process.send_signal(signal.SIGUSR1)
        assert wait_until(lambda: "Current thread 0x" in daemon.output(), 10)
        assert 'File "' in daemon.output().split("Current thread 0x", 1)[1]
    finally:
        assert daemon.stop() == 0


def test_a_flood_of_signals_drains_once_and_exits(tmp_path: Path) -> None:
    """Signals that arrive while the main thread holds a lock (inside an Event's wait, say)
    must not wait on it: 300 SIGTERM, SIGINT and SIGHUP sent as fast as they go (as
    `timeout` and make together send two) end in one clean drain, exit 0."""
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=""))
    daemon = Daemon(config)
    daemon.wait_ready()
    for n in range(300):
        daemon.process.send_signal((signal.SIGHUP, signal.SIGTERM, signal.SIGINT)[n % 3])
    assert daemon.stop(timeout=60) == 0, daemon.output()[-3000:]


def test_a_chain_of_inboxes_passes_on_only_the_results(tmp_path: Path) -> None:
    """An inbox whose folder is another inbox's outbox took the whole output set: the
    manifest and loss plot failed as bad inputs, and the GIF (its first frame the photo
    as it came) was styled and marked done."""
    from stylebox.config import load_config
    from stylebox.daemon.watcher import left_alone

    config = gatys_config(
        tmp_path, STYLES / "starry_night.jpg", "size = 48, steps = 2, snapshot_every = 1"
    )
    text = config.read_text().replace('outbox = "outbox"', 'outbox = "middle"') + (
        '[[inbox]]\nname = "poster"\npath = "middle"\noutbox = "outbox"\n'
        'plugin = "posterize"\nsettle_seconds = 0.2\nparams = { bits = 2 }\n'
    )
    config = write_config(tmp_path, text)
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        photo(48, 32, seed=1).save(tmp_path / "inbox" / "photo.png")
        assert wait_until((tmp_path / "middle/processed/photo.png").exists, 120), daemon.output()
        assert wait_until((tmp_path / "outbox/photo.json").exists, 30), daemon.output()
        time.sleep(1.5)  # what was written beside the result has settled too
    finally:
        assert daemon.stop() == 0
    middle = {path.name for path in (tmp_path / "middle").iterdir()}
    assert {"photo.json", "photo.gif", "photo.steps", "photo.loss.svg"} <= middle
    assert not list((tmp_path / "middle").glob("failed/*"))
    assert sorted(path.name for path in (tmp_path / "outbox").glob("*.png")) == ["photo.png"]
    (poster,) = [i for i in load_config(config).config.inbox if i.name == "poster"]
    assert poster.fed_by == "starry"
    assert left_alone(poster.path, poster.reserved(), fed=True) == []
    assert left_alone(poster.path, poster.reserved()) != []  # unfed, photo.steps/ is news
