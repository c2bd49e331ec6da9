"""The journal: a SQLite database that is the source of truth for every job.

A job moves queued -> running (under a lease with a heartbeat) -> done | failed. A restart
reclaims expired leases, and those jobs resume from their checkpoints. The uniqueness key
(input sha256 + source + plugin + params hash) makes processing idempotent: the same bytes
dropped twice with the same settings are not stylised twice.

Paths are kept exactly: one that is not valid UTF-8 (a Latin-1 ``caf\xe9.png`` copied
from an old share) is stored as its bytes, a BLOB, and read back as the ``str`` that
``os.fsdecode`` gives, so the file can still be opened and moved; names and error messages,
which are for people, are stored readable (each byte that is not UTF-8 shown as U+FFFD).

WAL mode with ``synchronous=FULL``: a commit that returned survives a power cut. Each thread
gets its own connection; SQLite serialises the writers.

Rows committed since the last checkpoint live only in the write-ahead log
(``journal.sqlite3-wal``). A journal whose log went missing after an unclean stop (deleted
by hand, lost by a restore that copied only the main file) has lost them, and the daemon
says so when it opens it (see :meth:`Journal.__init__`).
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from stylebox.errors import BadInput, InputChanged, StateError
from stylebox.logs import readable

log = logging.getLogger("stylebox.journal")

_markers = itertools.count(1)
"""Tells apart the running markers of journals one process opens."""

State = Literal["queued", "running", "done", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    source        TEXT NOT NULL,            -- 'inbox:<name>' or 'batch:<name>'
    origin_path   TEXT NOT NULL,            -- where the input arrived (a BLOB of its bytes
                                            -- when the path is not UTF-8)
    input_path    TEXT NOT NULL,            -- where the input is now (the same)
    name          TEXT NOT NULL,            -- the file name it arrived with, readable
    sha256        TEXT NOT NULL,
    plugin        TEXT NOT NULL,
    params_hash   TEXT NOT NULL,
    unique_key    TEXT NOT NULL UNIQUE,
    state         TEXT NOT NULL DEFAULT 'queued',
    attempts      INTEGER NOT NULL DEFAULT 0,
    not_before    REAL NOT NULL DEFAULT 0,  -- retry backoff
    lease_owner   TEXT,
    lease_expires REAL,
    stem          TEXT,                     -- output names, fixed at first claim
    step          INTEGER,
    total         INTEGER,
    eta_at        REAL,                     -- when the plugin's own estimate (its eta
                                            -- metric, with the step) says the job ends
    error_class   TEXT,
    error_message TEXT,
    hopeless      TEXT,                     -- a failed job's reason a retry cannot help
    created_at    REAL NOT NULL,
    started_at    REAL,
    claimed_at    REAL,
    finished_at   REAL,
    seconds       REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, not_before);
CREATE INDEX IF NOT EXISTS jobs_by_source ON jobs (source, state);
CREATE INDEX IF NOT EXISTS jobs_by_origin ON jobs (origin_path, source);
"""

# Columns added since the first journals were written: (name, SQL type). A journal file
# from before gets them when it is next opened, empty for its existing rows.
_ADDED_COLUMNS = (("eta_at", "REAL"), ("hopeless", "TEXT"))


#: Failed jobs a retry cannot help, by error class: how rows that a journal from before the
#: ``hopeless`` column recorded are read.
_HOPELESS = {
    "BadInput": "bad input",
    "Truncated": "bad input",
    "InputChanged": "superseded",
}


def hopeless(error: BaseException) -> str | None:
    """Why a retry of a job that failed with ``error`` cannot help, or ``None`` if it may.
    By class, so that a plugin's own subclass of :class:`BadInput` counts as bad input."""
    if isinstance(error, BadInput):
        return "bad input"  # the same bytes fail the same way
    if isinstance(error, InputChanged):
        return "superseded"  # its photo was replaced by bytes that have a job of their own
    return None


@dataclass(frozen=True)
class JobRow:
    id: int
    source: str
    origin_path: str
    input_path: str
    name: str
    sha256: str
    plugin: str
    params_hash: str
    unique_key: str
    state: State
    attempts: int
    not_before: float
    lease_owner: str | None
    lease_expires: float | None
    stem: str | None
    step: int | None
    total: int | None
    eta_at: float | None
    """Wall-clock time the plugin expects the job to end, from the ``eta`` metric it
    reported with ``step``; ``None`` when it reported none."""
    error_class: str | None
    error_message: str | None
    hopeless: str | None
    """Why a retry of this failed job cannot help (``"bad input"``, ``"superseded"``), or
    ``None`` if it may: its photo would fail the same way again."""
    created_at: float
    started_at: float | None
    claimed_at: float | None
    finished_at: float | None
    seconds: float | None

    @property
    def file(self) -> str:
        """The job's file as people are told of it: under the sub-folder its results are
        in (a recursive batch's ``2024/june/a.jpg``: two folders' ``a.jpg`` told apart),
        else by its name."""
        subfolder = PurePosixPath(self.stem or "").parent
        return self.name if subfolder == PurePosixPath(".") else f"{subfolder}/{self.name}"

    @property
    def reason(self) -> str | None:
        """The error the job last ended a try with, as people read it (``PluginError:
        ...``), or ``None`` where it has none."""
        if self.error_class is None:
            return None
        if not self.error_message:
            return f"{self.error_class} (raised without a message)"
        return f"{self.error_class}: {self.error_message}"


@dataclass(frozen=True)
class NewJob:
    source: str
    input_path: Path
    sha256: str
    plugin: str
    params_hash: str
    unique_key: str
    stem: str | None = None
    """Output names chosen at queueing time, so they survive any crash."""


def journal_path(state_dir: Path) -> Path:
    """Where the journal of a state dir lives: one for serve, batch and run alike."""
    return state_dir / "journal.sqlite3"


class Journal:
    """All job bookkeeping; every method is one short transaction."""

    def __init__(
        self, path: Path, *, read_only: bool = False, running_marker: bool = False
    ) -> None:
        """Open (or create) the journal at ``path``, adding what a journal of an earlier
        version lacks. ``read_only=True``, for readers such as ``stylebox status``, opens
        an existing journal read-only and leaves the file exactly as it is (an older daemon
        may still be using it): rows read from it have ``None`` in the columns it lacks,
        and every write is refused.

        A writer first looks for an unclean stop whose write-ahead log is gone, and logs
        one warning if it finds one (:meth:`_check_lost_log`). With ``running_marker`` (the
        daemon) it then marks the journal as in use until :meth:`close`: a file
        ``<name>.running.<pid>.<n>`` beside it, locked while this process lives, so that
        the next opener can tell a process that stopped without closing it."""
        self.path = path
        self.read_only = read_only
        self._local = threading.local()
        self._marker: tuple[Path, IO[str]] | None = None
        self._made = False
        """The file exists (this opener made or found it): a thread's later connection must
        not make a new, empty one where it was deleted, and write jobs into it unseen."""
        try:
            if read_only:
                # A journal that is not there, or not a database, is refused now.
                self._connection().execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            self._check_lost_log()  # before a connection makes a new, empty log
            self._connection().executescript(_SCHEMA)  # idempotent; commits on its own
            self._migrate()
        except sqlite3.OperationalError as exc:  # a disk error, a read-only file system...
            raise StateError(f"the journal {path} cannot be opened ({exc})") from exc
        except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
            raise StateError(
                f"the journal {path} cannot be used ({exc}); move it aside and start again "
                "(the photos still in inboxes are queued anew, results already made are kept)"
            ) from exc
        opened = path.stat()
        self._identity = (opened.st_dev, opened.st_ino)
        self._made = True
        if running_marker:
            self._marker = self._mark_running()

    def gone(self) -> str | None:
        """Why the file this journal was opened on is no longer at its path (deleted, or
        another file put there), or ``None``: a writer that went on would keep its jobs
        where no one else, and no next start, can see them."""
        try:
            now = self.path.stat()
        except FileNotFoundError:
            return f"the journal {self.path} was deleted"
        except OSError as exc:  # passing on a network share; lasting if its folder went
            return f"the journal {self.path} cannot be looked at ({exc.strerror or exc})"
        if (now.st_dev, now.st_ino) != self._identity:
            return f"the journal {self.path} was replaced by another file"
        return None

    def _check_lost_log(self) -> None:
        """Warn, once, when the last process that wrote this journal stopped uncleanly and
        its write-ahead log is gone: the rows it committed after the last checkpoint are
        lost. An unclean stop shows as a running marker whose process is gone (its lock is
        free; the marker is removed now) or, for a writer that leaves no marker, as the
        ``-shm`` index without its ``-wal`` while no marked process runs."""
        wal, shm = (self.path.with_name(self.path.name + suffix) for suffix in ("-wal", "-shm"))
        stale: list[str] = []
        live = False
        for marker in sorted(self.path.parent.glob(f"{self.path.name}.running.*")):
            try:
                handle = marker.open("r")
            except OSError:
                continue
            with handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    live = True  # its process runs (this one's other journal, say)
                    continue
                stale.append(handle.read().strip() or marker.name)
                marker.unlink(missing_ok=True)
        if not self.path.exists() or os.path.lexists(wal):
            return
        if stale:
            evidence = f"the process that had it open ({'; '.join(stale)}) did not close it"
        elif os.path.lexists(shm) and not live:
            evidence = f"{shm.name} is there without it"
        else:
            return
        log.warning(
            "the journal's write-ahead log %s is missing after an unclean stop (%s): jobs "
            "queued or changed since the last checkpoint may be lost from the journal. Each "
            "job's work folder is checked against its input's sha256 before it is used, so "
            "no checkpoint of another photo is resumed; files still in an inbox are queued "
            "again by the rescan",
            wal.name,
            evidence,
            extra={"event": "journal_log_lost", "journal": str(self.path)},
        )

    def _mark_running(self) -> tuple[Path, IO[str]]:
        marker = self.path.with_name(f"{self.path.name}.running.{os.getpid()}.{next(_markers)}")
        handle = marker.open("w")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new name: no one holds it
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        return marker, handle

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            if self.read_only:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                connection = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
            else:
                target, uri = (
                    (f"{self.path.absolute().as_uri()}?mode=rw", True)
                    if self._made
                    else (str(self.path), False)
                )
                connection = sqlite3.connect(target, uri=uri, timeout=30, isolation_level=None)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=FULL")
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA busy_timeout=30000")
            self._local.connection = connection
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _migrate(self) -> None:
        """Add the columns a journal written by an earlier version lacks. In a write
        transaction, so that two processes opening the same old journal at once (the daemon
        and ``stylebox status``) cannot both add a column."""
        db = self._connection()
        if not self._missing_columns(db):
            return  # the usual case: no write, so a status read never waits on the daemon
        with self._transaction() as db:
            for name, kind in self._missing_columns(db):
                db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    @staticmethod
    def _missing_columns(db: sqlite3.Connection) -> list[tuple[str, str]]:
        present = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
        return [(name, kind) for name, kind in _ADDED_COLUMNS if name not in present]

    def close(self) -> None:
        """Close this thread's connection, and end the running mark (a clean stop). The
        write-ahead log is checkpointed into the journal's file first: other threads that
        are still alive at a stop (the lease keeper, the page's readers) keep theirs open,
        and with them the log, which held every job while the file stayed a bare 4 KB."""
        connection = getattr(self._local, "connection", None)
        if connection is None and not self.read_only and self._marker is not None:
            try:
                connection = self._connection()
            except sqlite3.Error as exc:  # the file deleted meanwhile: the marker still goes
                log.warning("journal checkpoint at close failed: %s", exc)
        if connection is not None:
            if not self.read_only:
                try:
                    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as exc:  # the log stays, whole, for the next opener
                    log.warning("journal checkpoint at close failed: %s", exc)
            connection.close()
            self._local.connection = None
        if self._marker is not None:
            marker, handle = self._marker
            self._marker = None
            marker.unlink(missing_ok=True)
            handle.close()

    # -- adding work -----------------------------------------------------------------------

    def add(self, entries: list[NewJob]) -> list[tuple[JobRow, bool]]:
        """Queue jobs in one transaction, one result per entry, decided in this order:

        - a job with the entry's key (the same bytes and settings), or an unfinished job of
          the same source for the same path and bytes (a rescan seeing a queued file again,
          whatever ``dedupe`` says): that job, with ``False``;
        - a queued job of the same source for the same path with other bytes (the file was
          replaced before its job started): that job takes the entry over, with ``True``.
          It stands for the new bytes from now on, with fresh attempts, and keeps its output
          names (``stem``), so the entry's are not used;
        - otherwise a new job, with ``True``.
        """
        results: list[tuple[JobRow, bool]] = []
        now = time.time()
        with self._transaction() as db:
            for entry in entries:
                row = self._existing(db, entry)
                if row is not None:
                    results.append((_row(row), False))
                    continue
                row = db.execute(
                    "SELECT id FROM jobs WHERE origin_path = ? AND source = ? "
                    "AND state = 'queued' ORDER BY id DESC LIMIT 1",
                    (_path(entry.input_path), entry.source),
                ).fetchone()
                if row is not None:
                    results.append((_row(self._take_over(db, row["id"], entry)), True))
                    continue
                row = db.execute(
                    "INSERT INTO jobs (source, origin_path, input_path, name, sha256, plugin, "
                    "params_hash, unique_key, stem, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                    (
                        entry.source,
                        _path(entry.input_path),
                        _path(entry.input_path),
                        readable(entry.input_path.name),
                        entry.sha256,
                        entry.plugin,
                        entry.params_hash,
                        entry.unique_key,
                        entry.stem,
                        now,
                    ),
                ).fetchone()
                results.append((_row(row), True))
        return results

    def queued_at(self, source: str, path: Path, other_than: int) -> JobRow | None:
        """A queued job of ``source`` but ``other_than`` whose input is ``path``, if any."""
        row = (
            self._connection()
            .execute(
                "SELECT * FROM jobs WHERE origin_path = ? AND source = ? AND state = 'queued' "
                "AND id != ? ORDER BY id DESC LIMIT 1",
                (_path(path), source, other_than),
            )
            .fetchone()
        )
        return _row(row) if row is not None else None

    def replace_input(self, job_id: int, entry: NewJob, delay: float = 0.0) -> tuple[JobRow, bool]:
        """Job ``job_id`` found other bytes at its input than it was queued for (the file
        was replaced and no one saw it): it stands for ``entry``'s bytes from now on, queued
        again after ``delay`` with fresh attempts and keeping its output names: ``(job,
        True)``. Unless those bytes already have a job (see :meth:`add`): that one is
        returned, with ``False``, and ``job_id`` is left as it is."""
        with self._transaction() as db:
            row = self._existing(db, entry, exclude=job_id)
            if row is not None:
                return _row(row), False
            return _row(self._take_over(db, job_id, entry, time.time() + delay)), True

    def follow(
        self, job_id: int, origin: Path, input_path: Path, stem: str | None
    ) -> tuple[JobRow, str | None] | None:
        """The queued job ``job_id``'s file, queued at ``origin``, was renamed or moved to
        ``input_path`` before any worker took it: it is that file's job from now on, under
        output names ``stem`` (``None``: those it has). The job and the names it had;
        ``None`` (nothing changed) where a worker has taken it meanwhile, or it is not at
        ``origin`` any more (followed already)."""
        with self._transaction() as db:
            found = db.execute(
                "SELECT stem FROM jobs WHERE id = ? AND state = 'queued' AND origin_path = ?",
                (job_id, _path(origin)),
            ).fetchone()
            if found is None:
                return None
            db.execute(
                "UPDATE jobs SET origin_path = ?, input_path = ?, name = ?, "
                "stem = COALESCE(?, stem) WHERE id = ?",
                (_path(input_path), _path(input_path), readable(input_path.name), stem, job_id),
            )
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return _row(row), found["stem"]

    def rekey(self, job_id: int, plugin: str, params_hash: str) -> JobRow:
        """Job ``job_id`` runs with other settings than it was queued with (a reload changed
        its inbox's params): its key says so, so that the same bytes dropped with the old
        settings are not taken for a duplicate of its result. Where another job has that
        key already, it gets a key of its own that no later arrival matches."""
        with self._transaction() as db:
            return self._rekey(db, job_id, plugin=plugin, params_hash=params_hash)

    def move(self, job_ids: list[int], to: str) -> None:
        """Jobs ``job_ids`` are source ``to``'s from now on (their inbox renamed by a
        reload, its folder the same)."""
        with self._transaction() as db:
            for job_id in job_ids:
                self._rekey(db, job_id, source=to)

    @staticmethod
    def _rekey(db: sqlite3.Connection, job_id: int, **fields: str) -> JobRow:
        """Set ``fields`` (``source``, ``plugin``, ``params_hash``) of job ``job_id`` and
        its key to match; a key another job has already gets a suffix no arrival matches."""
        (key,) = db.execute("SELECT unique_key FROM jobs WHERE id = ?", (job_id,)).fetchone()
        parts = key.split("|")
        if parts[0] != "special" and len(parts) >= 4:  # digest|source|plugin|params|...
            for index, name in ((1, "source"), (2, "plugin"), (3, "params_hash")):
                parts[index] = fields.get(name, parts[index])
        elif parts[0] == "special" and "source" in fields:  # special|source|uuid
            parts[1] = fields["source"]
        key = "|".join(parts)
        if db.execute(
            "SELECT 1 FROM jobs WHERE unique_key = ? AND id != ?", (key, job_id)
        ).fetchone():
            key += f"|{uuid.uuid4().hex}"
        columns = "".join(f"{name} = ?, " for name in fields)
        row = db.execute(
            f"UPDATE jobs SET {columns}unique_key = ? WHERE id = ? RETURNING *",
            (*fields.values(), key, job_id),
        ).fetchone()
        return _row(row)

    def existing(self, entry: NewJob) -> JobRow | None:
        """The job ``entry`` would be taken as (see :meth:`add`), if there is one."""
        row = self._existing(self._connection(), entry)
        return _row(row) if row is not None else None

    @staticmethod
    def _existing(
        db: sqlite3.Connection, entry: NewJob, exclude: int | None = None
    ) -> sqlite3.Row | None:
        """The job that ``entry``'s bytes already have: by key, or unfinished for the same
        path with the same bytes."""
        row = db.execute("SELECT * FROM jobs WHERE unique_key = ?", (entry.unique_key,)).fetchone()
        if row is not None and row["id"] != exclude:
            return row
        found: sqlite3.Row | None = db.execute(
            "SELECT * FROM jobs WHERE origin_path = ? AND source = ? AND sha256 = ? "
            "AND state IN ('queued', 'running') AND id IS NOT ? ORDER BY id LIMIT 1",
            (_path(entry.input_path), entry.source, entry.sha256, exclude),
        ).fetchone()
        return found

    @staticmethod
    def _take_over(
        db: sqlite3.Connection, job_id: int, entry: NewJob, not_before: float = 0.0
    ) -> sqlite3.Row:
        row: sqlite3.Row = db.execute(
            "UPDATE jobs SET state = 'queued', sha256 = ?, unique_key = ?, name = ?, "
            "plugin = ?, params_hash = ?, stem = COALESCE(stem, ?), attempts = 0, "
            "not_before = ?, lease_owner = NULL, lease_expires = NULL, step = NULL, "
            "total = NULL, eta_at = NULL, error_class = NULL, error_message = NULL, "
            "hopeless = NULL, started_at = NULL, claimed_at = NULL WHERE id = ? RETURNING *",
            (
                entry.sha256,
                entry.unique_key,
                readable(entry.input_path.name),
                entry.plugin,
                entry.params_hash,
                entry.stem,
                not_before,
                job_id,
            ),
        ).fetchone()
        return row

    def retry_failed(self, job_id: int, input_path: Path, stem: str | None = None) -> JobRow:
        """A failed job's input was dropped again (under ``input_path``, its name now):
        give it a fresh set of attempts, keeping its output names, or taking ``stem``
        instead (another job took them meanwhile). Its start time is cleared: it starts
        afresh (a photo cut short gets its grace again, counted from this claim)."""
        return self._queue_again(job_id, input_path, stem, "failed")

    def remake(self, job_id: int, input_path: Path, stem: str) -> JobRow:
        """A done job of a batch whose result is not in the outbox (deleted, or the outbox
        or its format changed): queued again as :meth:`retry_failed` queues a failed one,
        under output names ``stem``."""
        return self._queue_again(job_id, input_path, stem, "done")

    def _queue_again(self, job_id: int, input_path: Path, stem: str | None, state: str) -> JobRow:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, not_before = ?, "
                "started_at = NULL, origin_path = ?, input_path = ?, name = ?, "
                "error_class = NULL, hopeless = NULL, error_message = NULL, finished_at = NULL, "
                "stem = COALESCE(?, stem) "
                "WHERE id = ? AND state = ?",
                (
                    time.time(),  # runnable from now: when it was queued again, for the page
                    _path(input_path),
                    _path(input_path),
                    readable(input_path.name),
                    stem,
                    job_id,
                    state,
                ),
            )
            return _row(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    # -- leases ----------------------------------------------------------------------------

    def claim(
        self,
        owner: str,
        lease_seconds: float,
        sources: set[str] | None = None,
        ids: set[int] | None = None,
        *,
        to_run: bool = True,
    ) -> JobRow | None:
        """Take the oldest runnable job under a lease, or ``None`` if there is none;
        ``sources`` and ``ids``: only among those. ``to_run=False``: taken to be ended
        without running (a cancel), so it counts no attempt, gets no start time, and may be
        one waiting out a retry's backoff."""
        with self._transaction() as db:
            claimed = self._claim(db, owner, lease_seconds, sources, ids, 1, to_run)
        return claimed[0] if claimed else None

    def claim_many(
        self,
        owner: str,
        lease_seconds: float,
        source: str,
        limit: int,
        ids: set[int] | None = None,
    ) -> list[JobRow]:
        """Take up to ``limit`` of the oldest runnable jobs of one source that have not
        been tried (a retry runs alone: see :meth:`JobLoop._claim`), in one go."""
        with self._transaction() as db:
            return self._claim(db, owner, lease_seconds, {source}, ids, limit, untried=True)

    def queued(self, sources: set[str], ids: set[int] | None = None) -> int:
        """How many jobs of ``sources`` (and ``ids``) are queued, runnable now or later."""
        query, args = _among("SELECT COUNT(*) FROM jobs WHERE state = 'queued'", sources, ids)
        count: int = self._connection().execute(query, args).fetchone()[0]
        return count

    @staticmethod
    def _claim(
        db: sqlite3.Connection,
        owner: str,
        lease_seconds: float,
        sources: set[str] | None,
        ids: set[int] | None,
        limit: int,
        to_run: bool = True,
        untried: bool = False,
    ) -> list[JobRow]:
        now = time.time()
        # A cancel takes a job waiting out a retry's backoff too: it is ended, not run.
        query, args = _among(
            "SELECT id FROM jobs WHERE state = 'queued' AND not_before <= ?"
            + (" AND attempts = 0" if untried else ""),
            sources,
            ids,
            [now if to_run else math.inf],
        )
        found = [row["id"] for row in db.execute(query + " ORDER BY id LIMIT ?", [*args, limit])]
        claimed = []
        for job_id in found:
            db.execute(
                "UPDATE jobs SET state = 'running', lease_owner = ?, lease_expires = ?, "
                "attempts = attempts + ?, started_at = COALESCE(started_at, ?), "
                # A new claim starts its progress afresh: the step an earlier attempt or
                # run reached is no step of this one (status showed it until the first report).
                "claimed_at = ?, eta_at = NULL, step = NULL, total = NULL WHERE id = ?",
                (owner, now + lease_seconds, int(to_run), now if to_run else None, now, job_id),
            )
            claimed.append(
                _row(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
            )
        return claimed

    def heartbeat(
        self, job_id: int, owner: str, lease_seconds: float, claimed_at: float | None = None
    ) -> bool:
        """Extend a lease; ``False`` if the job is no longer ours (``claimed_at``: no longer
        that claim's, though this owner may have claimed it again since)."""
        query = (
            "UPDATE jobs SET lease_expires = ? WHERE id = ? AND lease_owner = ? "
            "AND state = 'running'"
        )
        args: list[object] = [time.time() + lease_seconds, job_id, owner]
        if claimed_at is not None:
            query += " AND claimed_at = ?"
            args.append(claimed_at)
        with self._transaction() as db:
            return db.execute(query, args).rowcount == 1

    def holds(self, job_id: int, owner: str, claimed_at: float) -> bool:
        """Whether the claim of ``owner`` made at ``claimed_at`` still has job ``job_id``
        (no other claim took it over)."""
        row = (
            self._connection()
            .execute(
                "SELECT 1 FROM jobs WHERE id = ? AND state = 'running' AND lease_owner = ? "
                "AND claimed_at = ?",
                (job_id, owner, claimed_at),
            )
            .fetchone()
        )
        return row is not None

    def reclaim_expired(self, sources: set[str] | None = None) -> int:
        """Put running jobs whose lease ran out back in the queue (their worker died);
        ``sources``: only among those."""
        query, args = _among(
            "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires = NULL, "
            "attempts = MAX(attempts - 1, 0) WHERE state = 'running' AND lease_expires < ?",
            sources,
            None,
            [time.time()],
        )
        with self._transaction() as db:
            return db.execute(query, args).rowcount

    def reclaim_dead(self, host: str, alive: Callable[[int], bool]) -> int:
        """Put back running jobs of processes on ``host`` that no longer exist.

        Owners are ``host:pid``; a job whose worker was killed goes back to the queue at
        once rather than when its lease runs out. A kill does not count as an attempt.
        """
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id, lease_owner FROM jobs WHERE state = 'running' AND lease_owner LIKE ?",
                (f"{host}:%",),
            ).fetchall()
            dead = [r["id"] for r in rows if not alive(int(r["lease_owner"].rsplit(":", 1)[1]))]
            for job_id in dead:
                db.execute(
                    "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires = NULL, "
                    "attempts = MAX(attempts - 1, 0) WHERE id = ?",
                    (job_id,),
                )
            return len(dead)

    # -- outcomes --------------------------------------------------------------------------

    def set_stem(self, job_id: int, stem: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET stem = ? WHERE id = ?", (stem, job_id))

    def set_progress(self, job_id: int, step: int, total: int, eta: float | None = None) -> None:
        """Record progress; ``eta``: the seconds left by the plugin's own estimate (its
        ``eta`` metric), kept as the time it points at, or ``None`` for none."""
        eta_at = None
        if eta is not None and math.isfinite(eta):
            eta_at = time.time() + max(0.0, eta)
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET step = ?, total = ?, eta_at = ? WHERE id = ?",
                (step, total, eta_at, job_id),
            )

    def requeue(
        self,
        job_id: int,
        *,
        delay: float = 0.0,
        refund_attempt: bool = False,
        error: BaseException | None = None,
    ) -> None:
        """Back to the queue after ``delay``: a retry, whose claim counted an attempt, or
        (``refund_attempt``) a run that does not count, a drain say, whose claim's attempt is
        given back. A job claimed not to run (``claim(to_run=False)``) counted none."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires = NULL, "
                "not_before = ?, attempts = attempts - ?, error_class = COALESCE(?, error_class), "
                "error_message = COALESCE(?, error_message), hopeless = NULL WHERE id = ?",
                (
                    time.time() + delay,
                    int(refund_attempt),
                    type(error).__name__ if error else None,
                    readable(str(error)) if error else None,
                    job_id,
                ),
            )

    def finish(
        self,
        job_id: int,
        state: Literal["done", "failed"],
        *,
        seconds: float | None = None,
        error: BaseException | None = None,
        input_path: Path | None = None,
    ) -> None:
        """Close a job; ``input_path`` records where its input was moved."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, lease_owner = NULL, lease_expires = NULL, "
                "finished_at = ?, seconds = ?, error_class = ?, error_message = ?, "
                "hopeless = ?, input_path = COALESCE(?, input_path) WHERE id = ?",
                (
                    state,
                    time.time(),
                    seconds,
                    type(error).__name__ if error else None,
                    readable(str(error)) if error else None,
                    hopeless(error) if error else None,
                    _path(input_path) if input_path else None,
                    job_id,
                ),
            )

    def unfinish(self, job_id: int, owner: str, lease_seconds: float, input_path: Path) -> None:
        """Undo :meth:`finish` of a job whose input could not follow its recorded end
        (the move failed): running again under ``owner``'s lease, its input at
        ``input_path`` (where it still is), for the caller to retry or requeue it. The
        error it was ending with stays, as its last."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'running', lease_owner = ?, lease_expires = ?, "
                "finished_at = NULL, seconds = NULL, hopeless = NULL, input_path = ? "
                "WHERE id = ?",
                (owner, time.time() + lease_seconds, _path(input_path), job_id),
            )

    # -- reading ---------------------------------------------------------------------------

    def get(self, job_id: int) -> JobRow:
        row = self._connection().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return _row(row)

    def jobs(
        self,
        source: str | None = None,
        state: State | None = None,
        *,
        origin: Path | None = None,
        sha256: str | None = None,
        error_class: str | None = None,
        latest_first: bool = False,
    ) -> list[JobRow]:
        """The jobs of ``source`` in ``state``, of the file ``origin``, of the bytes
        ``sha256``, that ended with ``error_class`` (each where given), by id."""
        query = "SELECT * FROM jobs WHERE 1"
        args: list[object] = []
        for column, value in (
            ("source", source),
            ("state", state),
            ("origin_path", None if origin is None else _path(origin)),
            ("sha256", sha256),
            ("error_class", error_class),
        ):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        order = " ORDER BY id DESC" if latest_first else " ORDER BY id"
        rows = self._connection().execute(query + order, args)
        return [_row(r) for r in rows]

    def adopt_failed(
        self,
        entries: list[NewJob],
        by_path: bool = False,
        kept: Callable[[str], bool] | None = None,
    ) -> list[JobRow]:
        """Each entry's failed job, where its bytes (and companions) failed in its source
        under other plugin settings, takes the entry's key and settings, as a queued job
        is re-keyed when it runs: the photo dropped again after the settings changed (a
        retry from the status page after a reload, a batch run with new params) is that
        job tried again, not a new one beside a failure that never cleared. ``by_path``
        (a batch's files, which stay where they are): a file that failed unread (its
        permissions) is its path's failed job too, readable now or not (each run added
        one more). ``kept(input_path)`` (an inbox's): whether a failed job's file is still
        where its failure put it (``failed/``), which makes the entry a copy, not that job
        tried again (see ``Pipeline._needs_own_job``); one whose file is not, of the entry's
        own name, is its job whatever its bytes (a photo mended and moved back). The jobs
        adopted; an entry whose key a job has already adopts none."""
        adopted: list[JobRow] = []
        with self._transaction() as db:
            for entry in entries:
                if db.execute(
                    "SELECT 1 FROM jobs WHERE unique_key = ?", (entry.unique_key,)
                ).fetchone():
                    continue
                job_id = self._failed_of(db, entry, kept)
                if job_id is None and kept is not None:
                    job_id = self._failed_here(db, entry, kept)
                if job_id is None and by_path:
                    found = db.execute(
                        "SELECT id FROM jobs WHERE source = ? AND state = 'failed' "
                        "AND sha256 = '-' AND origin_path = ? ORDER BY id DESC LIMIT 1",
                        (entry.source, _path(entry.input_path)),
                    ).fetchone()
                    job_id = found[0] if found else None
                if job_id is not None:
                    row = db.execute(
                        "UPDATE jobs SET plugin = ?, params_hash = ?, unique_key = ?, "
                        "sha256 = ? WHERE id = ? RETURNING *",
                        (entry.plugin, entry.params_hash, entry.unique_key, entry.sha256, job_id),
                    ).fetchone()
                    adopted.append(_row(row))
        return adopted

    @staticmethod
    def _failed_here(
        db: sqlite3.Connection, entry: NewJob, kept: Callable[[str], bool]
    ) -> int | None:
        """The latest failed job of an inbox file of ``entry``'s name whose file is no
        longer where its failure put it: moved back mended (other bytes), or taken away
        and the name used again. Its failure is then this arrival's to clear, not left
        listed for ever with its note beside no photo."""
        found = db.execute(
            "SELECT id, input_path FROM jobs WHERE source = ? AND state = 'failed' "
            "AND origin_path = ? ORDER BY id DESC LIMIT 1",
            (entry.source, _path(entry.input_path)),
        ).fetchone()
        if found is None:
            return None
        moved_to = os.fsdecode(found[1])
        # Never moved (superseded where it was): no failure of a file that left failed/.
        if moved_to == str(entry.input_path) or kept(moved_to):
            return None
        return int(found[0])

    @staticmethod
    def _failed_of(
        db: sqlite3.Connection, entry: NewJob, kept: Callable[[str], bool] | None = None
    ) -> int | None:
        """The failed job of ``entry``'s bytes, source and companions under other
        settings, or of its bytes and source that failed for want of the companions it has
        now, if there is one."""
        wanted = entry.unique_key.split("|")
        if entry.sha256 == "-" or len(wanted) < 4:
            return None
        failed = db.execute(
            "SELECT id, unique_key, error_class, input_path FROM jobs WHERE source = ? "
            "AND state = 'failed' AND sha256 = ? ORDER BY id DESC",
            (entry.source, entry.sha256),
        ).fetchall()
        for job_id, key, error_class, input_path in failed:
            if kept is not None and kept(os.fsdecode(input_path)):
                continue
            # A copy's job of an inbox is of those bytes as any is (its own part aside).
            had = [part for part in key.split("|") if not part.startswith("copy:")]
            # The same bytes, source and companions; only the settings differ.
            if len(had) == len(wanted) and had[:2] + had[4:] == wanted[:2] + wanted[4:]:
                return job_id
            # Or it failed for want of a mask, which it has now: the same bytes and source.
            own = [part for part in had if not part.startswith("path:")]
            wants = error_class == "MissingCompanion" and len(own) == 4 < len(wanted)
            if wants and own[:2] == wanted[:2]:
                return job_id
        return None

    def backup(self, target: sqlite3.Connection) -> None:
        """Copy the whole journal into ``target`` (a dry run works on a copy)."""
        self._connection().backup(target)

    def known_keys(self, keys: list[str]) -> set[str]:
        """Those of ``keys`` that some job has (its file's bytes and settings seen before)."""
        known: set[str] = set()
        db = self._connection()
        for start in range(0, len(keys), 500):  # under SQLite's limit on bound values
            chunk = keys[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            query = f"SELECT unique_key FROM jobs WHERE unique_key IN ({marks})"
            known.update(key for (key,) in db.execute(query, chunk))
        return known

    def live_copy(self, key: str) -> JobRow | None:
        """The latest job of a copy of the bytes of ``key`` (its own key ``key|copy:...``)
        that is queued, running or done; ``None`` if there is none."""
        found = (
            self._connection()
            .execute(
                "SELECT * FROM jobs WHERE substr(unique_key, 1, ?) = ? "
                "AND state IN ('queued', 'running', 'done') ORDER BY id DESC LIMIT 1",
                (len(key) + len("|copy:"), f"{key}|copy:"),
            )
            .fetchone()
        )
        return _row(found) if found else None

    def unfinished_origins(self, source: str) -> set[str]:
        """The origin paths of ``source``'s queued and running jobs: one column, read on
        every arrival, so not whole rows."""
        rows = self._connection().execute(
            "SELECT origin_path FROM jobs WHERE source = ? AND state IN ('queued', 'running')",
            (source,),
        )
        return {os.fsdecode(path) if isinstance(path, bytes) else path for (path,) in rows}

    def counts(self) -> dict[str, dict[str, int]]:
        """Jobs per source and state."""
        result: dict[str, dict[str, int]] = {}
        rows = self._connection().execute(
            "SELECT source, state, COUNT(*) FROM jobs GROUP BY source, state"
        )
        for source, state, count in rows:
            result.setdefault(source, {})[state] = count
        return result


_FIELDS = tuple(f.name for f in fields(JobRow))
_PATHS = ("origin_path", "input_path")


def _among(
    query: str, sources: set[str] | None, ids: set[int] | None, args: list[object] | None = None
) -> tuple[str, list[object]]:
    """``query`` narrowed to jobs of ``sources`` and with ``ids`` (``None``: any)."""
    args = list(args or [])
    if sources is not None:
        query += f" AND source IN ({', '.join('?' * len(sources))})"
        args += sorted(sources)
    if ids is not None:
        query += f" AND id IN ({', '.join('?' * len(ids))})"
        args += sorted(ids)
    return query, args


def _path(path: Path | str) -> str | bytes:
    """How the journal keeps a path: as text, or as its bytes when it is not UTF-8."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text)
    return text


def _row(row: sqlite3.Row | Any) -> JobRow:
    # By name, with None for a column an unmigrated journal lacks, and ignoring columns a
    # later version added.
    present = set(row.keys())
    values = {name: row[name] if name in present else None for name in _FIELDS}
    if values["state"] != "failed":
        values["hopeless"] = None  # left from an earlier failure of a job queued again
    elif "hopeless" not in present or values["hopeless"] is None:
        values["hopeless"] = _HOPELESS.get(values["error_class"] or "")  # an older journal's
    for name in _PATHS:
        if isinstance(values[name], bytes):
            values[name] = os.fsdecode(values[name])
    return JobRow(**values)
