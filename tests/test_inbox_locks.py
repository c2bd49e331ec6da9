"""Inbox locks (daemon/locks.py): real flocks on temporary folders. Two lock holders in one
process conflict as two processes do, since a flock belongs to an open file."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from stylebox.daemon.locks import LOCK_NAME, InboxLocks
from stylebox.daemon.watcher import is_ignored
from stylebox.errors import ConfigError


@dataclass(frozen=True)
class Inbox:
    name: str
    path: Path


def test_the_lock_file_is_never_an_input() -> None:
    assert is_ignored(LOCK_NAME)


def test_a_held_inbox_is_refused_naming_it_and_its_holder(tmp_path: Path) -> None:
    one = InboxLocks(tmp_path / "state-one")
    one.acquire([Inbox("a", tmp_path / "a")])
    other = InboxLocks(tmp_path / "state-two")
    with pytest.raises(ConfigError) as refused:
        other.acquire([Inbox("b", tmp_path / "b"), Inbox("mine", tmp_path / "x" / ".." / "a")])
    assert str(refused.value) == (
        f"inbox 'mine' ({tmp_path / 'a'}) is already served by pid {os.getpid()}, "
        f"state dir {tmp_path / 'state-one'}"
    )
    one.acquire([Inbox("b", tmp_path / "b")])  # all or none: other let go of b
    one.keep_only([Inbox("b", tmp_path / "b")])
    other.acquire([Inbox("a", tmp_path / "a")])  # a was let go
    one.close()
    other.close()


def test_a_lock_file_removed_with_its_inbox_is_taken_again(tmp_path: Path) -> None:
    locks = InboxLocks(tmp_path / "state")
    locks.acquire([Inbox("a", tmp_path / "a")])
    shutil.rmtree(tmp_path / "a")
    (tmp_path / "a").mkdir()
    InboxLocks(tmp_path / "elsewhere").acquire([Inbox("a", tmp_path / "a")])  # nothing keeps it
    locks.refresh()
    with pytest.raises(ConfigError):
        InboxLocks(tmp_path / "elsewhere").acquire([Inbox("a", tmp_path / "a")])
    locks.close()


def test_a_lock_another_daemon_took_meanwhile_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    locks = InboxLocks(tmp_path / "state")
    locks.acquire([Inbox("a", tmp_path / "a")])
    shutil.rmtree(tmp_path / "a")
    (tmp_path / "a").mkdir()
    thief = InboxLocks(tmp_path / "elsewhere")
    thief.acquire([Inbox("a", tmp_path / "a")])
    for _ in range(3):  # the daemon looks five times a second
        locks.refresh()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "is already served by" in errors[0]
    assert locks.lost(tmp_path / "a")  # the daemon takes none of its files meanwhile
    locks.keep_only([])  # a reload removes the inbox, and adds it back once it is free
    thief.close()
    locks.acquire([Inbox("a", tmp_path / "a")])
    assert not locks.lost(tmp_path / "a")
    with pytest.raises(ConfigError):  # taken again once free
        InboxLocks(tmp_path / "third").acquire([Inbox("a", tmp_path / "a")])
    locks.close()
