"""Issue 12: a reload (SIGHUP) is one Pipeline.reconfigure: the output names of queued and
running jobs stay taken, and plugin instances no inbox uses any more are closed. Real
daemons, with a plugin that holds its job until the test opens a gate."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from daemon_helpers import (
    POSTERIZE_CONFIG,
    Daemon,
    drop,
    gated_env,
    inbox,
    states,
    wait_until,
    write_config,
)


def test_output_names_of_queued_jobs_stay_taken_across_a_reload(tmp_path: Path) -> None:
    """``photo.png`` is queued behind a running job, its stem reserved; after SIGHUP a
    ``photo.jpg`` (the same stem) arrives: it gets ``photo-2``, and both results are whole."""
    env, _, gate = gated_env(tmp_path)
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=inbox("g", "a")))
    daemon = Daemon(config, env=env)
    try:
        daemon.wait_ready()
        drop(tmp_path, "in-g", "first.png", seed=1)
        assert wait_until(lambda: states(tmp_path).get("first.png") == "running", 30)
        drop(tmp_path, "in-g", "photo.png", seed=2)
        assert wait_until(lambda: states(tmp_path).get("photo.png") == "queued", 30)
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "config reloaded" in daemon.output(), 30), daemon.output()
        drop(tmp_path, "in-g", "photo.jpg", seed=3, fmt="JPEG")
        assert wait_until(lambda: states(tmp_path).get("photo.jpg") == "queued", 30)
        gate.touch()
        processed = tmp_path / "in-g" / "processed"
        for name in ("first.png", "photo.png", "photo.jpg"):
            assert wait_until((processed / name).exists, 30), daemon.output()[-3000:]
    finally:
        assert daemon.stop() == 0
    outbox = tmp_path / "out-g"
    made = {
        path.stem: json.loads(path.read_text())["input"]["name"] for path in outbox.glob("*.json")
    }
    assert made == {"first": "first.png", "photo": "photo.png", "photo-2": "photo.jpg"}
    for stem in made:
        assert (outbox / f"{stem}.png").is_file()


def test_a_reload_closes_the_plugin_instances_it_no_longer_uses(tmp_path: Path) -> None:
    """An instance no inbox uses is closed at the reload, one a running job uses once that
    job ends; one still used stays open until the daemon stops."""
    env, record, gate = gated_env(tmp_path)
    extra = inbox("busy", "a") + inbox("idle", "b") + inbox("kept", "c")
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=extra))
    daemon = Daemon(config, env=env)
    try:
        daemon.wait_ready()
        assert sorted(record.read_text().split("\n")[:-1]) == ["start a", "start b", "start c"]
        drop(tmp_path, "in-busy", "held.png", seed=1)
        assert wait_until(lambda: "run a" in record.read_text(), 30)
        # "busy" gets new params, "idle" goes, "kept" stays as it is.
        config.write_text(POSTERIZE_CONFIG.format(extra=inbox("busy", "d") + inbox("kept", "c")))
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "config reloaded" in daemon.output(), 30), daemon.output()
        assert wait_until(lambda: "close b" in record.read_text(), 10), record.read_text()
        assert "close a" not in record.read_text()  # its job is still running
        gate.touch()
        assert wait_until((tmp_path / "in-busy/processed/held.png").exists, 30)
        assert wait_until(lambda: "close a" in record.read_text(), 10), record.read_text()
        assert "close c" not in record.read_text() and "close d" not in record.read_text()
    finally:
        assert daemon.stop() == 0
    lines = record.read_text().split("\n")[:-1]
    closed = sorted(line for line in lines if line.startswith("close"))
    assert closed == ["close a", "close b", "close c", "close d"]  # each exactly once
    assert "Traceback" not in daemon.output()
