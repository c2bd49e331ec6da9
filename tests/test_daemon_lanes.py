"""Issue 12, fairness: each inbox has its own workers, so a quick job is not held up by the
long jobs of another inbox. Real daemons, with a plugin that holds its job until the test
opens a gate."""

from __future__ import annotations

import json
import time
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


def test_a_photo_in_another_inbox_does_not_wait_for_a_long_job(tmp_path: Path) -> None:
    env, _, gate = gated_env(tmp_path)
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=inbox("slow", "a")))
    daemon = Daemon(config, env=env)
    try:
        daemon.wait_ready()
        drop(tmp_path, "in-slow", "long.png", seed=1)
        assert wait_until(lambda: states(tmp_path).get("long.png") == "running", 30)
        began = time.monotonic()
        drop(tmp_path, "inbox", "quick.png", seed=2)
        assert wait_until((tmp_path / "inbox/processed/quick.png").exists, 5), daemon.output()
        assert time.monotonic() - began < 5
        assert states(tmp_path)["long.png"] == "running"
        gate.touch()
        assert wait_until((tmp_path / "in-slow/processed/long.png").exists, 30)
    finally:
        assert daemon.stop() == 0


def test_an_inbox_runs_as_many_jobs_at_once_as_its_workers(tmp_path: Path) -> None:
    env, record, gate = gated_env(tmp_path)
    slow = inbox("slow", "a").replace("settle_seconds", "workers = 2\nsettle_seconds")
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=slow))
    daemon = Daemon(config, env=env)
    try:
        daemon.wait_ready()
        for index in range(3):
            drop(tmp_path, "in-slow", f"p{index}.png", seed=index)
        assert wait_until(lambda: record.read_text().count("run a") == 2, 30)
        time.sleep(1)  # a third would have started by now
        assert record.read_text().count("run a") == 2
        assert sorted(states(tmp_path).values()) == ["queued", "running", "running"]
        gate.touch()
        for index in range(3):
            assert wait_until((tmp_path / f"in-slow/processed/p{index}.png").exists, 30)
    finally:
        assert daemon.stop() == 0


def test_a_device_limit_still_holds_every_inbox_to_it(tmp_path: Path) -> None:
    """``[daemon] workers = { cpu = 1 }``: one job at once on the CPU, whatever the inboxes;
    the daemon says at start that an inbox's jobs can wait behind another's."""
    env, _, gate = gated_env(tmp_path)
    text = POSTERIZE_CONFIG.format(extra=inbox("slow", "a"))
    text = text.replace("[daemon]\n", "[daemon]\nworkers = { cpu = 1 }\n")
    config = write_config(tmp_path, text)
    daemon = Daemon(config, env=env)
    try:
        daemon.wait_ready()
        assert "limits cpu to 1 job(s) at once for 2 inbox worker(s)" in daemon.output()
        drop(tmp_path, "in-slow", "long.png", seed=1)
        assert wait_until(lambda: states(tmp_path).get("long.png") == "running", 30)
        drop(tmp_path, "inbox", "quick.png", seed=2)
        assert wait_until(lambda: states(tmp_path).get("quick.png") == "queued", 30)
        time.sleep(1.5)
        assert states(tmp_path)["quick.png"] == "queued"
        gate.touch()
        assert wait_until((tmp_path / "inbox/processed/quick.png").exists, 30)
    finally:
        assert daemon.stop() == 0


def test_two_inboxes_writing_into_one_outbox_never_give_one_name_twice(tmp_path: Path) -> None:
    """Photos of one name dropped together into two inboxes that share an outbox, both
    running at once: the second result was written over the first, both jobs done."""
    env, record, gate = gated_env(tmp_path)
    text = inbox("a", "a") + inbox("b", "b").replace('outbox = "out-b"', 'outbox = "out-a"')
    daemon = Daemon(write_config(tmp_path, 'state_dir = "state"\n' + text), env=env)
    try:
        daemon.wait_ready()
        drop(tmp_path, "in-a", "photo.png", seed=1)
        drop(tmp_path, "in-b", "photo.png", seed=2)
        assert wait_until(lambda: record.read_text().count("run ") == 2, 30), daemon.output()
        gate.touch()
        for folder in ("in-a", "in-b"):
            assert wait_until((tmp_path / folder / "processed/photo.png").exists, 30)
    finally:
        assert daemon.stop() == 0
    results = sorted(path.name for path in (tmp_path / "out-a").glob("*.json"))
    assert results == ["photo-2.json", "photo.json"]
    sources = {json.loads((tmp_path / "out-a" / name).read_text())["input"]["sha256"]
               for name in results}  # fmt: skip
    assert len(sources) == 2
