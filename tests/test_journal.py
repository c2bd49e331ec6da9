from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
from conftest import EARLIER_JOBS_TABLE

from stylebox.daemon import status
from stylebox.daemon.journal import Journal, NewJob
from stylebox.daemon.service import no_retry
from stylebox.errors import BadInput, InputChanged, MissingCompanion, PluginError


def add(journal: Journal, name: str, key: str | None = None, source: str = "inbox:a"):
    entry = NewJob(source, Path("/in") / name, "ab" * 32, "gatys", "p", key or name, name)
    return journal.add([entry])[0]


def test_wal_and_full_sync(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    db = journal._connection()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_close_leaves_every_job_in_the_file_while_other_threads_hold_connections(
    tmp_path: Path,
) -> None:
    # The daemon's lease and page threads were still alive at the stop, their connections
    # open: the jobs stayed only in the write-ahead log, the journal's file a bare 4 KB.
    # (The log file may stay, empty, while another thread's connection is open.)
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    add(journal, "a.png")
    reading, stop = threading.Event(), threading.Event()

    def reader() -> None:
        journal.jobs("inbox:a")
        reading.set()
        stop.wait(10)
        assert [row.name for row in journal.jobs("inbox:a")] == ["a.png"]  # still usable

    thread = threading.Thread(target=reader)
    thread.start()
    assert reading.wait(10)
    journal.close()
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, wal.stat().st_size
    with closing(sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True)) as db:
        assert db.execute("SELECT name FROM jobs").fetchall() == [("a.png",)]
    stop.set()
    thread.join(10)
    journal.close()


def test_same_key_is_one_job(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    first, new = add(journal, "a.jpg", key="k")
    again, new_again = add(journal, "b.jpg", key="k")
    assert new and not new_again and again.id == first.id
    assert len(journal.jobs()) == 1


def test_claim_lease_heartbeat_finish(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    add(journal, "a.jpg")
    add(journal, "b.jpg", source="batch:x")
    row = journal.claim("host:1", 30, {"inbox:a"})
    assert row is not None and row.name == "a.jpg" and row.state == "running"
    assert row.attempts == 1 and row.lease_owner == "host:1"
    assert journal.claim("host:1", 30, {"inbox:a"}) is None  # nothing else for that source
    assert journal.heartbeat(row.id, "host:1", 30)
    assert not journal.heartbeat(row.id, "host:2", 30)
    journal.finish(row.id, "done", seconds=1.5)
    done = journal.get(row.id)
    assert done.state == "done" and done.seconds == 1.5 and done.lease_owner is None
    assert journal.counts() == {"inbox:a": {"done": 1}, "batch:x": {"queued": 1}}


def test_dead_owner_and_expired_leases_are_reclaimed(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    add(journal, "a.jpg")
    add(journal, "b.jpg")
    add(journal, "c.jpg")
    dead = journal.claim("here:111", 300)
    alive = journal.claim("here:222", 300)
    expired = journal.claim("elsewhere:1", -1)
    assert journal.reclaim_dead("here", lambda pid: pid == 222) == 1
    assert journal.get(dead.id).state == "queued"
    assert journal.get(dead.id).attempts == 0  # a kill is not an attempt
    assert journal.get(alive.id).state == "running"
    add(journal, "d.jpg", source="inbox:b")
    other = journal.claim("elsewhere:2", -1, {"inbox:b"})
    assert journal.reclaim_expired({"inbox:a"}) == 1  # a batch's start: its own jobs only
    assert journal.get(expired.id).state == "queued"
    assert journal.get(other.id).state == "running"
    assert journal.reclaim_expired() == 1


def test_requeue_with_backoff_and_errors(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    add(journal, "a.jpg")
    row = journal.claim("h:1", 30)
    journal.requeue(row.id, delay=60, error=PluginError("flaky"))
    again = journal.get(row.id)
    assert again.state == "queued" and again.attempts == 1
    assert again.error_class == "PluginError" and again.not_before > time.time() + 50
    assert journal.claim("h:1", 30) is None  # still backing off
    journal.finish(row.id, "failed", error=BadInput("not an image"))
    failed = journal.get(row.id)
    assert failed.error_class == "BadInput" and failed.error_message == "not an image"
    assert (again.reason, failed.reason) == ("PluginError: flaky", "BadInput: not an image")
    # A plugin's bare `raise PluginError()` was said as "PluginError: " (status, run, the page)
    journal.finish(row.id, "failed", error=PluginError())
    assert journal.get(row.id).reason == "PluginError (raised without a message)"
    retried = journal.retry_failed(row.id, Path("/in/a-again.jpg"))
    assert retried.state == "queued" and retried.attempts == 0
    assert retried.origin_path == "/in/a-again.jpg"


class TooSmall(BadInput):
    """A plugin's own kind of bad input."""


def test_a_failure_a_retry_cannot_help_is_known_by_its_class(tmp_path: Path) -> None:
    # A plugin's own subclass of BadInput was recorded by its name alone, which the journal
    # did not know: the page offered a retry that failed the same way.
    journal = Journal(tmp_path / "j.sqlite3")
    for name, error in [("a.jpg", TooSmall("1x1")), ("b.jpg", PluginError("flaky"))]:
        add(journal, name)
        journal.finish(journal.claim("h:1", 30).id, "failed", error=error)
    small, flaky = journal.jobs("inbox:a")
    assert (small.error_class, small.hopeless) == ("TooSmall", "bad input")
    assert flaky.hopeless is None
    assert journal.retry_failed(small.id, Path("/in/a-again.jpg")).hopeless is None


def test_a_refused_retry_says_how_the_photo_is_run_again_where_it_came_from(
    tmp_path: Path,
) -> None:
    # A batch's or a run's bad photo was told to be dropped into an inbox it never had, and
    # a superseded job to mend a mask it never lacked.
    journal = Journal(tmp_path / "j.sqlite3")
    sources = ["inbox:a", "batch:b", "run:/out"]
    for source in sources:
        add(journal, f"{source[0]}.jpg", source=source)
        journal.finish(journal.claim("h:1", 30).id, "failed", error=BadInput("not an image"))
    add(journal, "s.jpg")
    journal.finish(journal.claim("h:1", 30).id, "failed", error=InputChanged("replaced", "cd"))
    add(journal, "harbour.jpg")
    lacks = MissingCompanion("no mask", kind="mask")
    journal.finish(journal.claim("h:1", 30).id, "failed", error=lacks)
    rows = journal.jobs()
    said = [no_retry(row) for row in rows]
    mend = (
        "(BadInput: not an image): a retry would fail the same way; mend what the reason says "
        "(a good copy of the photo, or what it lacks beside it, such as its mask) and"
    )
    assert said == [
        f"job {rows[0].id} failed as bad input {mend} drop it into the inbox again",
        f"job {rows[1].id} failed as bad input {mend} run the batch again",
        f"job {rows[2].id} failed as bad input {mend} run it again",
        f"job {rows[3].id} failed as superseded (InputChanged: replaced): a retry would fail "
        "the same way; its photo is that other job's now",
        f"job {rows[4].id} failed as bad input (MissingCompanion: no mask): a retry would fail "
        "the same way; drop its mask (harbour.mask.png) into the inbox: the photo comes back "
        "with it",
    ]


def test_an_earlier_journals_failures_are_read_by_class_name(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(EARLIER_JOURNAL)
        db.execute(
            "UPDATE jobs SET state = 'failed', error_class = 'Truncated' WHERE name = 'b.png'"
        )
    rows = {row.name: row for row in Journal(path).jobs()}
    assert rows["a.png"].hopeless is None and rows["b.png"].hopeless == "bad input"


def test_a_drain_does_not_count_as_an_attempt(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    add(journal, "a.jpg")
    row = journal.claim("h:1", 30)
    journal.requeue(row.id, refund_attempt=True)
    assert journal.get(row.id).attempts == 0


@pytest.mark.parametrize("threads", [4])
def test_concurrent_claims_never_share_a_job(tmp_path: Path, threads: int) -> None:
    import threading

    journal = Journal(tmp_path / "j.sqlite3")
    for i in range(60):
        add(journal, f"{i}.jpg")
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        while (row := journal.claim(f"h:{n}", 30)) is not None:
            with lock:
                claimed.append(row.id)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert sorted(claimed) == list(range(1, 61))


# A journal as an earlier version wrote it: no eta_at column, none of the indexes.
EARLIER_JOURNAL = (
    EARLIER_JOBS_TABLE
    + """
INSERT INTO jobs (source, origin_path, input_path, name, sha256, plugin, params_hash,
                  unique_key, state, created_at)
VALUES ('inbox:poster', '/in/a.png', '/in/a.png', 'a.png', 'x', 'posterize', 'h', 'a', 'done', 1),
       ('inbox:poster', '/in/b.png', '/in/b.png', 'b.png', 'y', 'posterize', 'h', 'b', 'queued', 2);
"""
)


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_status_leaves_an_earlier_journal_exactly_as_it_is(tmp_path: Path, mode: str) -> None:
    import json
    import os
    import sqlite3
    import subprocess
    import sys

    state = tmp_path / "state"
    state.mkdir()
    journal_file = state / "journal.sqlite3"
    db = sqlite3.connect(journal_file)
    db.execute(f"PRAGMA journal_mode={mode}")
    db.executescript(EARLIER_JOURNAL)
    db.close()
    past = time.time_ns() - 3600 * 10**9
    os.utime(journal_file, ns=(past, past))
    before = journal_file.read_bytes()
    config = tmp_path / "stylebox.toml"
    config.write_text(
        'state_dir = "state"\n[[inbox]]\nname = "poster"\npath = "inbox"\noutbox = "outbox"\n'
        'plugin = "posterize"\nparams = { bits = 2 }\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "stylebox.cli", "status", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)["sources"]["inbox:poster"]
    assert (counts["done"], counts["queued"]) == (1, 1)
    assert journal_file.read_bytes() == before
    assert journal_file.stat().st_mtime_ns == past


def test_progress_that_cannot_be_recorded_does_not_fail_the_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress is for show: a journal that cannot take it (locked past its timeout) is
    logged, and the plugin's progress call, and so its job, goes on."""
    import sqlite3

    from stylebox.daemon.pipeline import _JournalReporter
    from stylebox.daemon.runner import Job

    journal = Journal(tmp_path / "journal.sqlite3")

    def locked(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(journal, "set_progress", locked)
    reporter = _JournalReporter(journal, None)
    job = Job(tmp_path / "photo.png", tmp_path / "work", job_id=7)
    reporter.started(job)
    time.sleep(1.05)  # progress is written at most once a second
    reporter.progress(job, 3, 10, {})
    assert "cannot record the progress of job 7" in caplog.text


@pytest.mark.parametrize("ending", ["done", "failed"])
def test_the_step_a_job_pauses_at_reaches_the_journal(tmp_path: Path, ending: str) -> None:
    # Reports come at most once a second into the journal; the last one before a pause
    # (a long step, a checkpoint) was dropped, and status showed the step before it. One
    # kept back as the job failed was written a second later over the failed job's row.
    from stylebox.daemon.pipeline import _JournalReporter
    from stylebox.daemon.runner import Job
    from stylebox.errors import PluginError

    journal = Journal(tmp_path / "journal.sqlite3")
    add(journal, "photo.png")
    (row,) = journal.jobs()
    reporter = _JournalReporter(journal, None)
    job = Job(tmp_path / "photo.png", tmp_path / "work", job_id=row.id)
    reporter.started(job)
    for step in (1, 2, 3):  # within the first second: none written yet
        reporter.progress(job, step, 10, {})
    assert journal.get(row.id).step is None
    deadline = time.monotonic() + 5
    while journal.get(row.id).step is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (journal.get(row.id).step, journal.get(row.id).total) == (3, 10)
    reporter.progress(job, 4, 10, {})  # kept back, then the job ends: nothing written after
    if ending == "done":
        reporter.finished(job, None)  # type: ignore[arg-type]
    else:
        reporter.failed(job, PluginError("broken"))
    time.sleep(1.2)
    assert journal.get(row.id).step == 3
    assert reporter._timers == {} and reporter._last == {}
    journal.close()


def status_setup(tmp_path: Path) -> tuple[Path, Journal]:
    """A config of one inbox ``a`` for ``stylebox status``, and its journal."""
    config = tmp_path / "stylebox.toml"
    config.write_text(
        'state_dir = "state"\n[[inbox]]\nname = "a"\npath = "inbox"\noutbox = "outbox"\n'
        'plugin = "posterize"\n'
    )
    return config, Journal(tmp_path / "state" / "journal.sqlite3")


def test_status_lists_the_newest_failures_by_when_they_failed(tmp_path: Path) -> None:
    # A photo dropped again keeps its job id: failed anew, it was left out of the five
    # 'last errors' (picked by id) for older ones.
    config, journal = status_setup(tmp_path)
    for n in range(6):
        add(journal, f"{n}.png")
        journal.finish(journal.claim("h:1", 30).id, "failed", error=BadInput(f"bad {n}"))
    first = journal.retry_failed(1, Path("/in/0.png"))
    journal.finish(journal.claim("h:1", 30, ids={first.id}).id, "failed", error=BadInput("again"))
    journal.close()
    errors = status.collect(config)["sources"]["inbox:a"]["last_errors"]
    assert [e["job"] for e in errors] == [1, 6, 5, 4, 3]


def test_status_prints_a_name_with_a_line_break_or_an_escape_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Printed raw, a photo's name forged a "failed #" line and cleared the terminal.
    config, journal = status_setup(tmp_path)
    name = "x\x1b[2Jy\n  failed #999 forged.png: BadInput: forged.png"
    add(journal, name)
    journal.finish(journal.claim("h:1", 30).id, "failed", error=BadInput(f"{name} is empty"))
    journal.close()
    assert status.print_status(config) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed
    failed = [line for line in printed.splitlines() if "failed #" in line]
    assert len(failed) == 1 and failed[0].startswith("  failed #1 x\\x1b[2Jy\\n  failed #999")


def test_status_lists_as_waiting_only_jobs_held_back_after_an_error(tmp_path: Path) -> None:
    # A job retried once, then drained (queued again at once, its old error kept) was shown
    # waiting with that error for good.
    config, journal = status_setup(tmp_path)
    for name in ("retried.png", "drained.png"):
        add(journal, name)
    retried, drained = journal.claim("h:1", 30), journal.claim("h:1", 30)
    journal.requeue(retried.id, delay=60, error=PluginError("CUDA out of memory"))
    journal.requeue(drained.id, error=PluginError("CUDA out of memory"))
    again = journal.claim("h:1", 30)
    assert again is not None and again.id == drained.id
    journal.requeue(drained.id, refund_attempt=True)  # a drain: its error stays on the row
    journal.close()
    waiting = status.collect(config)["sources"]["inbox:a"]["waiting_jobs"]
    assert [(job["file"], job["error"]) for job in waiting] == [
        ("retried.png", "PluginError: CUDA out of memory")
    ]
    assert 55 < waiting[0]["retry_in_seconds"] <= 60


def test_a_thread_opening_a_deleted_journal_makes_no_new_one(tmp_path: Path) -> None:
    # A thread's first look after the file was deleted made a new, empty journal there:
    # the daemon then said it was "replaced by another file" (or, had it gone on, wrote
    # its jobs where all history was lost).
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.path.unlink()
    failed: list[BaseException] = []

    def look() -> None:
        try:
            journal.jobs()
        except sqlite3.Error as exc:
            failed.append(exc)

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    assert failed and not journal.path.exists()
    assert journal.gone() == f"the journal {journal.path} was deleted"


def test_a_journal_deleted_before_its_close_still_ends_its_running_mark(tmp_path: Path) -> None:
    # Closed from a thread with no connection yet, after the file was deleted: the close
    # raised, and the running mark was left to say an unclean stop.
    journal = Journal(tmp_path / "journal.sqlite3", running_marker=True)
    journal.path.unlink()
    thread = threading.Thread(target=journal.close)
    thread.start()
    thread.join()
    assert not list(tmp_path.glob("journal.sqlite3.running.*"))


def test_a_new_claim_starts_its_progress_afresh(tmp_path: Path) -> None:
    # A retried or resumed job showed the step its earlier attempt or run had reached
    # until its first report ("step 18/60" for a run that was at 3).
    journal = Journal(tmp_path / "journal.sqlite3")
    add(journal, "photo.png")
    row = journal.claim("h:1", 30)
    assert row is not None
    journal.set_progress(row.id, 18, 60)
    journal.requeue(row.id, refund_attempt=True)
    again = journal.claim("h:1", 30)
    assert again is not None and (again.step, again.total) == (None, None)
    journal.close()
