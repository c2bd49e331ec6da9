"""The watcher with a real watchdog observer on temporary folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stylebox.daemon.watcher import InboxWatcher, WatchedFolder, is_ignored, left_alone

SETTLE = 0.4


class Recorder:
    """Records each settled file with its size at that moment (it must be complete)."""

    def __init__(self) -> None:
        self.settled: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def __call__(self, folder: WatchedFolder, paths: list[Path]) -> None:
        for path in paths:
            size = path.lstat().st_size if path.exists() else -1
            with self.lock:
                self.settled.append((path.name, size))

    def names(self) -> list[str]:
        with self.lock:
            return [name for name, _ in self.settled]

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.names()) < count and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.fixture(params=["native", "poll"])
def watched(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, Recorder]]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "processed").mkdir()
    recorder = Recorder()
    folder = WatchedFolder(
        "a", inbox, SETTLE, poll=request.param == "poll", poll_interval=0.1,
        reserved=frozenset({"processed"}),
    )  # fmt: skip
    watcher = InboxWatcher([folder], recorder)
    watcher.start()
    try:
        yield inbox, recorder
    finally:
        watcher.stop()


def test_slow_writer_is_taken_once_and_complete(watched: tuple[Path, Recorder]) -> None:
    inbox, recorder = watched
    chunk = os.urandom(64 * 1024)
    with (inbox / "slow.jpg").open("wb") as handle:
        for _ in range(6):  # pauses shorter than the settle window
            handle.write(chunk)
            handle.flush()
            time.sleep(SETTLE * 0.6)
    recorder.wait_for(1)
    time.sleep(SETTLE * 2)
    assert recorder.settled == [("slow.jpg", 6 * len(chunk))]


def test_writer_holding_the_file_open_is_not_taken_early(watched: tuple[Path, Recorder]) -> None:
    inbox, recorder = watched
    with (inbox / "held.jpg").open("wb") as handle:
        handle.write(b"x" * 1000)
        handle.flush()
        time.sleep(SETTLE * 3)  # unchanged, but still open for writing
        if recorder.names():
            pytest.skip("this file system grants no leases; settling alone decides")
        handle.write(b"y" * 1000)
    recorder.wait_for(1)
    assert recorder.settled == [("held.jpg", 2000)]


def test_temp_file_then_rename(watched: tuple[Path, Recorder]) -> None:
    inbox, recorder = watched
    temp = inbox / ".upload.jpg.part"
    temp.write_bytes(b"z" * 5000)
    time.sleep(SETTLE * 2)
    assert recorder.names() == []  # hidden and partial names are never inputs
    temp.rename(inbox / "upload.jpg")
    recorder.wait_for(1)
    time.sleep(SETTLE * 2)
    assert recorder.settled == [("upload.jpg", 5000)]


def test_mv_from_another_folder(watched: tuple[Path, Recorder], tmp_path: Path) -> None:
    inbox, recorder = watched
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(b"m" * 777)
    subprocess.run(["mv", str(outside), str(inbox / "moved.jpg")], check=True)
    recorder.wait_for(1)
    time.sleep(SETTLE * 2)
    assert recorder.settled == [("moved.jpg", 777)]


def test_cp_of_a_large_file(watched: tuple[Path, Recorder], tmp_path: Path) -> None:
    inbox, recorder = watched
    big = tmp_path / "big.jpg"
    big.write_bytes(os.urandom(48 * 1024 * 1024))
    subprocess.run(["cp", str(big), str(inbox / "big.jpg")], check=True)
    recorder.wait_for(1)
    time.sleep(SETTLE * 2)
    assert recorder.settled == [("big.jpg", big.stat().st_size)]


def test_reserved_and_ignored_names_are_not_inputs(watched: tuple[Path, Recorder]) -> None:
    inbox, recorder = watched
    for name in ("~$doc.jpg", "a.crdownload", "b.tmp", ".hidden.jpg"):
        (inbox / name).write_bytes(b"1")
    (inbox / "processed" / "done.jpg").write_bytes(b"1")
    (inbox / "real.jpg").write_bytes(b"1")
    recorder.wait_for(1)
    time.sleep(SETTLE * 2)
    assert recorder.names() == ["real.jpg"]


def test_files_present_at_start_are_found_by_the_first_scan(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "waiting.jpg").write_bytes(b"w" * 10)
    recorder = Recorder()
    watcher = InboxWatcher([WatchedFolder("a", inbox, 0.1)], recorder)
    watcher.start()
    try:
        recorder.wait_for(1)
    finally:
        watcher.stop()
    assert recorder.names() == ["waiting.jpg"]


def test_a_companion_without_its_photo_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "lonely.mask.png").write_bytes(b"m" * 10)
    (inbox / "paired.mask.png").write_bytes(b"m" * 10)
    (inbox / "paired.jpg").write_bytes(b"p" * 10)
    watcher = InboxWatcher([WatchedFolder("a", inbox, 0.1)], Recorder())
    watcher.rescan()
    watcher.rescan()  # as every rescan_seconds: not said again
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == [
        "inbox a: lonely.mask.png is the mask of a photo named lonely.* that is not here; no "
        "job takes it until its photo comes (a photo's own name must not end in .mask.png)"
    ]


def test_what_no_job_takes_is_listed_with_why_as_long_as_it_is_there(tmp_path: Path) -> None:
    # Said once in the log, and then only there: the page and `stylebox status` list it.
    inbox = tmp_path / "inbox"
    for folder in ("album", "processed", "failed", ".thumbnails"):
        (inbox / folder).mkdir(parents=True)
    (inbox / "linked").symlink_to(inbox / "album")  # a link is a file that fails, not left
    for name in ("lonely.mask.png", "paired.mask.png", "paired.jpg", ".hidden.mask.png"):
        (inbox / name).write_bytes(b"x")
    assert left_alone(inbox, {"processed", "failed"}) == [
        "album/ is a folder, left where it is: only files in the inbox itself are taken "
        "(move its photos up, or run a [[batch]] over it)",
        "lonely.mask.png is the mask of a photo named lonely.* that is not here; no job takes "
        "it until its photo comes (a photo's own name must not end in .mask.png)",
    ]
    (inbox / "lonely.png").write_bytes(b"x")
    shutil.rmtree(inbox / "album")
    assert left_alone(inbox, {"processed", "failed"}) == []
    assert left_alone(tmp_path / "gone") == []  # an inbox not made yet holds nothing


def test_files_found_together_are_queued_together_on_a_busy_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first scan finds four photos; a busy machine takes a while over each. They
    settle as one arrival, so same-size photos can go to a batching plugin together."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for index in range(4):
        (inbox / f"same{index}.png").write_bytes(b"p" * 10)
    arrivals: list[list[str]] = []
    watcher = InboxWatcher(
        [WatchedFolder("a", inbox, 0.1)],
        lambda folder, paths: arrivals.append(sorted(p.name for p in paths)),
    )
    look = watcher._candidate

    def slow_look(path: Path):
        time.sleep(0.08)  # more than a settle tick between two files
        return look(path)

    monkeypatch.setattr(watcher, "_candidate", slow_look)
    watcher.start()
    try:
        deadline = time.monotonic() + 10
        while sum(map(len, arrivals)) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        watcher.stop()
    assert arrivals == [[f"same{index}.png" for index in range(4)]]


def test_a_dead_observer_is_restarted(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    recorder = Recorder()
    watcher = InboxWatcher([WatchedFolder("a", inbox, 0.1)], recorder)
    watcher.start()
    try:
        for observer in watcher._observers:  # kill it the way a handler bug would
            observer.stop()
            observer.join()
        assert not watcher.healthy()
        watcher.check()
        assert watcher.healthy() and watcher.restarts == 1
        (inbox / "after.jpg").write_bytes(b"a")
        recorder.wait_for(1)
        assert recorder.names() == ["after.jpg"]
    finally:
        watcher.stop()


def test_ignore_patterns() -> None:
    assert is_ignored(".x.jpg") and is_ignored("x.part") and is_ignored("~$x.docx")
    assert not is_ignored("photo.jpg")
    # Windows names its droppings in any case; so may a copy from an old share.
    assert all(map(is_ignored, ["Thumbs.db", "THUMBS.DB", "Desktop.ini", "DESKTOP.INI", "x.TMP"]))


def test_handler_exceptions_never_reach_watchdog(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    calls: list[str] = []

    def explode(folder: WatchedFolder, paths: list[Path]) -> None:
        calls.extend(path.name for path in paths)
        raise RuntimeError("bug in a callback")

    watcher = InboxWatcher([WatchedFolder("a", inbox, 0.1)], explode)
    watcher.start()
    try:
        (inbox / "one.jpg").write_bytes(b"1")
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.02)
        (inbox / "two.jpg").write_bytes(b"2")
        while len(calls) < 2 and time.monotonic() < deadline + 5:
            time.sleep(0.02)
        assert sorted(calls) == ["one.jpg", "two.jpg"] and watcher.healthy()
    finally:
        watcher.stop()
    shutil.rmtree(inbox)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_settle_loop_is_restarted(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    calls: list[str] = []

    def dies_once(folder: WatchedFolder, paths: list[Path]) -> None:
        calls.extend(path.name for path in paths)
        if len(calls) == 1:
            raise SystemExit  # gets past the loop's guard, which catches Exception: it ends

    watcher = InboxWatcher([WatchedFolder("a", inbox, 0.1)], dies_once)
    watcher.start()
    try:
        (inbox / "one.jpg").write_bytes(b"1")
        deadline = time.monotonic() + 10
        while watcher.healthy() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert calls == ["one.jpg"] and not watcher.healthy()
        watcher.check()
        assert watcher.healthy() and watcher.restarts == 1
        (inbox / "two.jpg").write_bytes(b"2")
        while "two.jpg" not in calls and time.monotonic() < deadline + 10:
            time.sleep(0.02)
        assert "two.jpg" in calls
        assert calls.count("one.jpg") == 2  # the file it held when it died, found again
    finally:
        watcher.stop()


def watch_until_settled(watcher: InboxWatcher, recorder: Recorder, timeout: float = 5.0) -> None:
    """Call ``check()`` every 0.2 s, as the service does, until a file settles."""
    deadline = time.monotonic() + timeout
    while not recorder.names() and time.monotonic() < deadline:
        watcher.check()
        time.sleep(0.2)


@pytest.mark.parametrize("mode", ["native", "poll"])
@pytest.mark.parametrize("how", ["rm -r", "mv"])
def test_a_deleted_or_replaced_inbox_is_watched_again(
    tmp_path: Path, mode: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = tmp_path / "inbox"
    recorder = Recorder()
    folder = WatchedFolder(
        "a", inbox, 0.1, poll=mode == "poll", poll_interval=0.1,
        reserved=frozenset({"processed", "failed"}),
    )  # fmt: skip
    watcher = InboxWatcher([folder], recorder)
    watcher.start()
    try:
        assert (inbox / "processed").is_dir() and watcher.healthy()
        if how == "rm -r":
            shutil.rmtree(inbox)
            assert not watcher.healthy()  # missing: the watch is gone with it
            watcher.check()  # recreates it, with the reserved folders inside
            assert (inbox / "processed").is_dir() and (inbox / "failed").is_dir()
        else:
            inbox.rename(tmp_path / "elsewhere")
            inbox.mkdir()
            assert not watcher.healthy()  # the watch is on the folder that moved away
        watcher.check()
        assert watcher.healthy()
        (inbox / "new.jpg").write_bytes(b"n" * 10)
        watch_until_settled(watcher, recorder)
        assert recorder.names() == ["new.jpg"]
        assert (inbox / "processed").is_dir() and (inbox / "failed").is_dir()
    finally:
        watcher.stop()
    assert any("watching it again" in r.getMessage() for r in caplog.records)


def test_an_inbox_that_cannot_be_recreated_is_unhealthy_until_it_can(tmp_path: Path) -> None:
    parent = tmp_path / "share"
    inbox = parent / "inbox"
    recorder = Recorder()
    watcher = InboxWatcher([WatchedFolder("a", inbox, 0.1)], recorder)
    watcher.start()
    try:
        shutil.rmtree(parent)
        parent.write_text("a file where the inbox's parent was\n")
        watcher.check()
        assert not watcher.healthy() and not inbox.exists()
        watcher.check()  # still missing: still unhealthy, and no exception
        assert not watcher.healthy()
        parent.unlink()
        watcher.check()
        assert watcher.healthy() and inbox.is_dir()
        (inbox / "back.jpg").write_bytes(b"b")
        watch_until_settled(watcher, recorder)
        assert recorder.names() == ["back.jpg"]
    finally:
        watcher.stop()


def test_a_folder_being_copied_in_is_left_where_it_is_and_said_once(
    watched: tuple[Path, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    # An album copied into the inbox was taken for a bad input and moved to failed/ while
    # the copy still ran ("cp: cannot create regular file 'inbox/album/b2.webp'").
    inbox, recorder = watched
    album = inbox / "album"
    album.mkdir()
    (album / "a.jpg").write_bytes(b"a" * 100)
    (inbox / "Thumbs.db").write_bytes(b"windows thumbnails")
    (inbox / "photo.jpg").write_bytes(b"p" * 100)
    recorder.wait_for(1)
    time.sleep(SETTLE * 3)
    (album / "b.jpg").write_bytes(b"b" * 100)  # the copy goes on
    time.sleep(SETTLE * 2)
    assert recorder.names() == ["photo.jpg"]
    said = [r for r in caplog.records if getattr(r, "event", None) == "subfolder"]
    assert len(said) == 1 and "album/ is a folder, left where it is" in said[0].getMessage()


def test_a_folder_is_said_again_when_it_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "album").mkdir(parents=True)
    watcher = InboxWatcher([WatchedFolder("a", inbox, 0.1)], Recorder())
    watcher.rescan()
    watcher.rescan()  # as every rescan_seconds: not said again
    (inbox / "album").rmdir()
    watcher.rescan()
    (inbox / "album").mkdir()  # the next album, of the same name
    watcher.rescan()
    said = [r for r in caplog.records if getattr(r, "event", None) == "subfolder"]
    assert len(said) == 2


def test_what_was_said_once_is_not_said_again_by_the_watcher_a_reload_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "album").mkdir(parents=True)
    (inbox / "lone.mask.png").write_bytes(b"a mask whose photo is not here")
    folders = [WatchedFolder("a", inbox, 0.1)]
    first = InboxWatcher(folders, Recorder())
    first.rescan()
    second = InboxWatcher(folders, Recorder())  # as a reload (SIGHUP) makes
    second.remember_said(first)
    second.rescan()
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("subfolder") == 1 and events.count("companion_alone") == 1
