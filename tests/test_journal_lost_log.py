"""Issue 12: a journal whose write-ahead log went missing after an unclean stop is noticed
and said, in one warning, when it is opened again."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import photo
from daemon_helpers import POSTERIZE_CONFIG, Daemon, wait_until, write_config

from stylebox.daemon.journal import Journal, NewJob

LOST = "write-ahead log journal.sqlite3-wal is missing after an unclean stop"


def warnings(daemon: Daemon) -> list[str]:
    lines = [json.loads(line) for line in daemon.output().splitlines() if line.startswith("{")]
    return [line["msg"] for line in lines if LOST in line["msg"]]


def test_a_killed_daemon_whose_wal_is_deleted_is_noticed_at_the_next_start(tmp_path: Path):
    config = write_config(tmp_path, POSTERIZE_CONFIG.format(extra=""))
    state = tmp_path / "state"
    daemon = Daemon(config)
    daemon.wait_ready()
    photo(20, 20).save(tmp_path / "staged.png")
    os.rename(tmp_path / "staged.png", tmp_path / "inbox" / "a.png")
    assert wait_until((tmp_path / "inbox/processed/a.png").exists, 30), daemon.output()
    assert len(list(state.glob("journal.sqlite3.running.*"))) == 1
    daemon.kill()
    wal = state / "journal.sqlite3-wal"
    assert wal.is_file()
    wal.unlink()

    again = Daemon(config)
    try:
        again.wait_ready()
        (warning,) = warnings(again)
        assert "did not close it" in warning and "may be lost" in warning
        assert "checked against its input's sha256" in warning
        photo(20, 20, seed=5).save(tmp_path / "staged.png")
        os.rename(tmp_path / "staged.png", tmp_path / "inbox" / "b.png")
        assert wait_until((tmp_path / "inbox/processed/b.png").exists, 30), again.output()
    finally:
        assert again.stop() == 0
    assert not list(state.glob("journal.sqlite3.running.*"))  # a clean stop ends the mark

    third = Daemon(config)  # after a clean stop: nothing to say
    try:
        third.wait_ready()
    finally:
        assert third.stop() == 0
    assert len(warnings(third)) == 1  # the one the second start logged, in the same log file


def test_a_lost_wal_is_noticed_from_its_shm_without_a_marker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """A writer that leaves no marker (``stylebox batch``, an earlier daemon) and stops
    uncleanly leaves the ``-shm`` index: with it and no ``-wal``, the loss is said too."""
    path = tmp_path / "journal.sqlite3"
    writer = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from stylebox.daemon.journal import Journal, NewJob\n"
        "journal = Journal(Path(sys.argv[1]))\n"
        "journal.add([NewJob('inbox:a', Path('/in/a.png'), '0' * 64, 'p', 'h', 'k')])\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", writer, str(path)], check=True, timeout=60)
    assert path.with_name("journal.sqlite3-shm").exists()
    path.with_name("journal.sqlite3-wal").unlink()
    with caplog.at_level(logging.WARNING, logger="stylebox.journal"):
        journal = Journal(path)
    journal.add([NewJob("inbox:a", Path("/in/b.png"), "1" * 64, "p", "h", "k2")])
    journal.close()
    (record,) = [r for r in caplog.records if LOST in r.getMessage()]
    assert "journal.sqlite3-shm is there without it" in record.getMessage()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stylebox.journal"):
        Journal(path).close()  # closed cleanly: nothing to say
    assert not caplog.records
