"""Inbox locks (daemon/locks.py): real flocks on temporary folders. Two lock holders in one
process conflict as two processes do, since a flock belongs to an open file."""

from __future__ import annotations

import errno
import fcntl
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


def test_a_lock_file_that_cannot_be_made_again_is_said_as_such(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It was said as if another daemon held the inbox ("its files are left to that
    # daemon") when none did: the lock file could not be written.
    locks = InboxLocks(tmp_path / "state")
    locks.acquire([Inbox("a", tmp_path / "a")])
    (tmp_path / "a" / LOCK_NAME).unlink()
    (tmp_path / "a" / LOCK_NAME).mkdir()  # something that is no file in its place
    for _ in range(3):
        locks.refresh()
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.startswith(
        f"inbox a ({tmp_path / 'a'}): its lock file was removed or replaced and cannot be taken "
        f"again: inbox 'a' ({tmp_path / 'a'}) cannot be served: its lock file {LOCK_NAME} "
        "cannot be written there"
    ), error
    assert error.endswith("; its files wait until it can")
    assert locks.lost(tmp_path / "a")
    locks.close()


def test_a_file_system_without_locks_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some NFS mounts answer flock with ENOLCK: it left the start with a traceback.
    def no_locks(handle: object, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    refusal = (
        r"^inbox 'a' \(.*\) cannot be served: its lock file .* cannot be locked "
        r"\(No locks available\); a daemon needs a file system"
    )
    with pytest.raises(ConfigError, match=refusal):
        InboxLocks(tmp_path / "state").acquire([Inbox("a", tmp_path / "a")])
