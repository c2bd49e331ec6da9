"""What the status page shows, read from the journal, the jobs' work folders and the
outboxes, and nothing else: the web layer keeps no state of its own about jobs.

Files are found through job ids only: a job's output names come from its journal row
(its stem) and its manifest, never from a URL, and a file is served only if it is a regular
file inside its outbox (no symbolic link, no way out through ``..``).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from stylebox.daemon.journal import JobRow, Journal, State, _row
from stylebox.daemon.status import _running, writes_result
from stylebox.daemon.watcher import left_alone
from stylebox.digests import file_digest
from stylebox.lossplot import has_loss

#: Upper bounds of the job seconds histogram in /metrics.
SECONDS_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
GALLERY = 12
"""Latest results shown per inbox."""
FAILED = 10
"""Latest failed jobs shown per inbox."""
QUEUED = 12
"""Queued jobs listed per inbox, next to run first (the count says how many more wait)."""
LEFT_ALONE = 12
"""Entries no job takes listed per inbox (``left_alone_count`` says how many there are)."""
FileKind = Literal["result", "animation", "loss", "manifest"]
PROBLEM_KINDS = ("disabled", "unwatched", "reload_refused", "http_kept")
"""The ``kind`` of each entry of :meth:`Backend.problems`."""
_SNAPSHOT = re.compile(r"[0-9]{1,9}\.png")


@dataclass
class _Pace:
    """How fast a running job goes, measured within one claim of it (one attempt, one run
    of the daemon): the steps of an earlier run or attempt say nothing of this one's."""

    claim: float | None
    """The claim measured (the journal's ``claimed_at``): a new one starts afresh."""
    step: int
    when: float
    """When ``step`` was seen; once ``moved``, when it was first seen."""
    moved: bool = False
    """Whether ``step`` was seen to change in this claim: until it was, ``when`` is only
    when this reader first looked, and may be long after the step was reached."""
    stale: bool = False
    """``step`` is the one an earlier claim left: a claim clears it in the journal, but one
    an older daemon writes (which did not) shows the old one until this claim reports."""
    rate: float | None = None
    """Steps per second between the last two changes seen."""


@dataclass(frozen=True)
class SourceInfo:
    """What the page needs of one inbox or batch."""

    outbox: Path
    plugin: str
    inbox: Path | None = None
    """An inbox's folder (``None`` for a batch), whose untaken entries the page lists."""
    reserved: frozenset[str] = frozenset()
    """The inbox's own folders in it (``processed``, ``failed``)."""
    fed: bool = False
    """The inbox's folder is another inbox's outbox."""
    waiting: tuple[tuple[str, int], ...] = ()
    """Files of the inbox that wait for the job of the same bytes to end, with its id."""
    set_aside: tuple[str, ...] = ()
    """The inbox's latest duplicates moved to ``processed/`` since the start, each said."""
    set_aside_count: int = 0


class Backend(Protocol):
    """The daemon, as the web layer sees it: where to read, and its two actions."""

    @property
    def journal_path(self) -> Path: ...

    @property
    def state_dir(self) -> Path: ...

    @property
    def token(self) -> str | None: ...

    def web_sources(self) -> Mapping[str, SourceInfo]: ...

    def problems(self) -> list[dict[str, Any]]:
        """What keeps the daemon from serving its config: ``kind``, ``source`` (or
        ``None``), ``since`` (a time, or ``None``) and a one-line ``text`` each."""
        ...

    def retry(self, job_id: int) -> str: ...

    def cancel(self, job_id: int) -> str: ...


class JournalView(Journal):
    """The journal, read-only, with the few bounded queries a page needs on every update
    (a journal of a hundred thousand done jobs must not be read whole once a second)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, read_only=True)

    def latest(self, source: str, state: State, limit: int) -> list[JobRow]:
        rows = self._connection().execute(
            "SELECT * FROM jobs WHERE source = ? AND state = ? ORDER BY finished_at DESC, "
            "id DESC LIMIT ?",
            (source, state, limit),
        )
        return [_row(row) for row in rows]

    def waiting(self, source: str, limit: int) -> list[JobRow]:
        """The first ``limit`` queued jobs of ``source``, in the order they are to run:
        those runnable now by id (as the job loop claims them), then those waiting out a
        retry's backoff."""
        query = (
            "SELECT * FROM jobs WHERE source = ? AND state = 'queued' AND not_before {} ? "
            "ORDER BY id LIMIT ?"
        )
        now, rows = time.time(), []
        for waits in ("<=", ">"):
            found = self._connection().execute(
                query.format(waits), (source, now, limit - len(rows))
            )
            rows += [_row(row) for row in found]
        return rows

    def seconds_histogram(self) -> list[tuple[str, int, float, list[int]]]:
        """Per plugin: done jobs, their total seconds and the count at or below each of
        :data:`SECONDS_BUCKETS`."""
        buckets = ", ".join(f"SUM(seconds <= {bound})" for bound in SECONDS_BUCKETS)
        rows = self._connection().execute(
            f"SELECT plugin, COUNT(*), SUM(seconds), {buckets} FROM jobs "
            "WHERE state = 'done' AND seconds IS NOT NULL GROUP BY plugin"
        )
        return [(r[0], r[1], r[2] or 0.0, [int(n or 0) for n in r[3:]]) for r in rows]

    def failures(self) -> list[tuple[str, str, int]]:
        """Failed jobs per source and error class."""
        rows = self._connection().execute(
            "SELECT source, COALESCE(error_class, 'unknown'), COUNT(*) FROM jobs "
            "WHERE state = 'failed' GROUP BY 1, 2"
        )
        return [(r[0], r[1], r[2]) for r in rows]


class StatusReader:
    """Builds the page's status and job details; shared by the page, the API and metrics.

    A status is kept for ``ttl`` seconds, so that any number of clients cost the daemon one
    read of the journal per ``ttl``."""

    def __init__(self, backend: Backend, ttl: float = 0.4) -> None:
        self.backend = backend
        self.ttl = ttl
        self._journal: JournalView | None = None
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._manifests: dict[int, dict[str, Any]] = {}
        self._paces: dict[int, _Pace] = {}
        """Per job seen running: its pace in its latest claim (kept after it stops running,
        so that a retry's claim can tell the step its journal row still shows is the last
        attempt's)."""

    @property
    def journal(self) -> JournalView | None:
        """``None`` until the daemon has made its journal."""
        if self._journal is None and self.backend.journal_path.exists():
            self._journal = JournalView(self.backend.journal_path)
        return self._journal

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.ttl:
                return self._cached[1]
            report = self._status()
            self._cached = (now, report)
            return report

    def forget(self) -> None:
        """Drop the kept status: an action changed the jobs, and its answer must not be
        followed by a status from before it (a second cancel of a cancelled job)."""
        with self._lock:
            self._cached = None

    def _status(self) -> dict[str, Any]:
        sources = self.backend.web_sources()
        journal = self.journal
        counts = journal.counts() if journal else {}
        report: dict[str, Any] = {
            "time": time.time(),
            "actions": self.backend.token is not None,
            "problems": self.backend.problems(),
            "sources": {},
        }
        running_ids: set[int] = set()
        for key in sorted(set(sources) | set(counts)):
            info = sources.get(key)
            entry: dict[str, Any] = {
                "plugin": info.plugin if info else None,
                "configured": info is not None,
                # Where all results are: the page shows only the latest GALLERY.
                "outbox": str(info.outbox) if info else None,
                **{state: counts.get(key, {}).get(state, 0) for state in _STATES},
                "running_jobs": [],
                "queued_jobs": [],
                "results": [],
                "failed_jobs": [],
            }
            # What sits in the inbox that no job takes (a folder, a mask without its photo):
            # said once in the log, and here for as long as it is there.
            alone = left_alone(info.inbox, info.reserved, info.fed) if info and info.inbox else []
            # No job of their own yet, so in no list: a copy of a photo still queued or
            # running sat in the inbox for minutes, unsaid.
            alone += [
                f"{name} waits for job {job}, of the same bytes, to end: then it is that "
                "job's duplicate, or its retry"
                for name, job in (info.waiting if info else ())
            ]
            entry.update(
                set_aside=list(info.set_aside) if info else [],
                set_aside_count=info.set_aside_count if info else 0,
            )
            entry.update(left_alone=alone[:LEFT_ALONE], left_alone_count=len(alone))
            if journal is not None:
                for row in journal.jobs(key, "running"):
                    running_ids.add(row.id)
                    entry["running_jobs"].append(self._running(row, info))
                entry["queued_jobs"] = [
                    _queued(row, place)
                    for place, row in enumerate(journal.waiting(key, QUEUED), start=1)
                ]
                for row in journal.latest(key, "done", GALLERY):
                    item = self._result(row, info)
                    if item is not None:
                        entry["results"].append(item)
                entry["failed_jobs"] = [
                    _failed(row) for row in journal.latest(key, "failed", FAILED)
                ]
            report["sources"][key] = entry
        if len(self._paces) > _PACES:
            for job_id in set(self._paces) - running_ids:
                del self._paces[job_id]
        return report

    def _running(self, row: JobRow, info: SourceInfo | None) -> dict[str, Any]:
        job = _running(row)
        history = self.history(row.id)
        step, ahead, last = row.step, False, int(history[-1].get("step", 0)) if history else 0
        if last > (step or 0) and self._history_of_claim(row):
            # The journal has the step of at most once a second (so not the last one before
            # a pause), the runner's history every step: the card says the one its chart
            # shows. (A history from before the claim may hold steps a resumed run redoes.)
            step, ahead = last, True
        pace = self._pace(row, step or 0)
        rate = round(pace.rate, 3) if pace.rate is not None else None
        job.update(source=row.source, step=step, steps_per_second=rate)
        if pace.stale and row.eta_at is None and not ahead:  # (the claim resets eta_at)
            job.update(step=None, eta_seconds=None, eta_from=None)
        elif job["eta_from"] == "linear":
            # Not daemon.status's time since the claim over the step, which counts the
            # steps of earlier runs (a resumed job) or attempts (a retry) as this claim's.
            eta = None
            if rate and row.total and step is not None and not job["owner_gone"]:
                eta = round(max(0, row.total - step) / rate, 1)
            job.update(eta_seconds=eta, eta_from="linear" if eta is not None else None)
        if writes_result(step, row.total) and not job["owner_gone"]:
            job.update(writing=True, eta_seconds=None, eta_from=None)
        snapshot = self._newest_snapshot(row, info)
        job["snapshot"] = f"/files/{row.id}/steps/{snapshot}.png" if snapshot is not None else None
        job["snapshot_step"] = snapshot
        # Only a history with a loss has a chart (a fast job reports its one step bare).
        job["loss"] = f"/api/jobs/{row.id}/loss.svg" if has_loss(history) else None
        return job

    def _history_of_claim(self, row: JobRow) -> bool:
        """Whether the job's history on disk was written since its claim (this run's)."""
        try:
            written = self._history_path(row.id).stat().st_mtime
        except OSError:
            return False
        return row.claimed_at is not None and written >= row.claimed_at

    def _pace(self, row: JobRow, step: int) -> _Pace:
        """The job's pace, updated with its ``step`` now (seen about once a second): the
        rate between the last two changes of its step seen in this claim."""
        now = time.time()
        pace = self._paces.get(row.id)
        if pace is None or pace.claim != row.claimed_at:
            stale = pace is not None and step == pace.step
            pace = self._paces[row.id] = _Pace(row.claimed_at, step, now, stale=stale)
        elif step < pace.step:  # a run started over, or resumed from an earlier checkpoint
            pace = self._paces[row.id] = _Pace(row.claimed_at, step, now, moved=True)
        elif step != pace.step:
            if pace.moved and now > pace.when:
                pace.rate = (step - pace.step) / (now - pace.when)
            pace.step, pace.when, pace.moved, pace.stale = step, now, True, False
        return pace

    def steps_per_second(self) -> dict[str, float]:
        """Per source: the summed rate of its running jobs (for /metrics)."""
        status = self.status()
        return {
            key: sum(job["steps_per_second"] or 0.0 for job in entry["running_jobs"])
            for key, entry in status["sources"].items()
        }

    def _newest_snapshot(self, row: JobRow, info: SourceInfo | None) -> int | None:
        folder = self._outputs_folder(row, info)
        if folder is None or not row.stem:
            return None
        try:
            names = os.listdir(folder / f"{row.stem}.steps")
        except OSError:
            return None
        steps = [int(name[:-4]) for name in names if _SNAPSHOT.fullmatch(name)]
        return max(steps) if steps else None

    def _result(self, row: JobRow, info: SourceInfo | None) -> dict[str, Any] | None:
        manifest = self.manifest(row, info)
        if manifest is None:
            return None
        output = manifest.get("output", {})
        base = f"/files/{row.id}"
        return {
            "job": row.id,
            "file": row.file,
            "finished_at": row.finished_at,
            "seconds": row.seconds,
            "result": f"{base}/result",
            # What a gallery tile shows: a result may be 80 MB, the tile a few hundred px.
            "preview": f"{base}/result/preview",
            # None once the photo left processed/ (tidied away): the page says so.
            "input": f"{base}/input" if _input_of(row) is not None else None,
            "animation": f"{base}/animation" if output.get("animation") else None,
            "loss": f"{base}/loss" if output.get("loss_plot") else None,
        }

    # -- one job ---------------------------------------------------------------------------

    def row(self, job_id: int) -> JobRow | None:
        journal = self.journal
        if journal is None:
            return None
        try:
            return journal.get(job_id)
        except KeyError:
            return None

    def job(self, job_id: int) -> dict[str, Any] | None:
        row = self.row(job_id)
        if row is None:
            return None
        info = self.backend.web_sources().get(row.source)
        detail: dict[str, Any] = {
            "job": row.id,
            "source": row.source,
            "file": row.file,
            "state": row.state,
            "plugin": row.plugin,
            "attempts": row.attempts,
            "created_at": row.created_at,
            "started_at": row.started_at,
            "finished_at": row.finished_at,
            "seconds": row.seconds,
            "error": row.reason,
        }
        if row.state == "running":
            detail.update(self._running(row, info))
        if row.state == "done":
            detail["outputs"] = self._result(row, info)
        detail["history"] = self.history(job_id)
        return detail

    def history(self, job_id: int) -> list[dict[str, float]]:
        """The job's per-step metrics: from its manifest once done, else from its work
        folder as the runner keeps it while the job runs."""
        row = self.row(job_id)
        if row is None:
            return []
        if row.state == "done":
            manifest = self.manifest(row, self.backend.web_sources().get(row.source))
            history = manifest.get("history") if manifest else None
            if not isinstance(history, list):
                return []
            return [e for e in history if isinstance(e, dict) and all(map(_finite, e.values()))]
        path = self._history_path(job_id)
        entries: list[dict[str, float]] = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return entries
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                break  # a line being written
            while entries and entries[-1].get("step", 0) >= entry.get("step", 0):
                entries.pop()  # a resumed run redid these steps
            entries.append(entry)
        return [e for e in entries if all(map(_finite, e.values()))]

    def _history_path(self, job_id: int) -> Path:
        return self.backend.state_dir / "jobs" / str(job_id) / "history.jsonl"

    def manifest(self, row: JobRow, info: SourceInfo | None) -> dict[str, Any] | None:
        """A done job's manifest (kept: it never changes), ``None`` if it is not there."""
        cached = self._manifests.get(row.id)
        if cached is not None:
            return cached
        folder = self._outputs_folder(row, info)
        if folder is None or not row.stem:
            return None
        path = _of_job(folder, row.stem, ".json")
        if path is None:
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or manifest.get("input", {}).get("sha256") != row.sha256:
            return None  # another job's set under these names
        if len(self._manifests) > 512:
            self._manifests.clear()
        self._manifests[row.id] = manifest
        return manifest

    # -- files -----------------------------------------------------------------------------

    def output_file(self, job_id: int, kind: FileKind) -> Path | None:
        """One of a done job's outputs, by the names its manifest gives."""
        row = self.row(job_id)
        if row is None or row.state != "done":
            return None
        info = self.backend.web_sources().get(row.source)
        manifest = self.manifest(row, info)
        folder = self._outputs_folder(row, info)
        if manifest is None or folder is None:
            return None
        if kind == "manifest":
            return _of_job(folder, row.stem, ".json")
        output = manifest.get("output", {})
        name = {"result": "result", "animation": "animation", "loss": "loss_plot"}[kind]
        value = output.get(name)
        return _of_job(folder, row.stem, "", value) if isinstance(value, str) else None

    def snapshot_file(self, job_id: int, step: int) -> Path | None:
        row = self.row(job_id)
        if row is None or not row.stem or row.state == "failed":
            return None
        folder = self._outputs_folder(row, self.backend.web_sources().get(row.source))
        if folder is None:
            return None
        return _of_job(folder, row.stem, ".steps", f"{step:04d}.png")

    def input_file(self, job_id: int) -> Path | None:
        """A done job's photo, where the journal says it is now (``processed/``), if that
        file still holds its bytes: one replaced while its job ran stays in the inbox,
        where the journal still points, and is another photo."""
        row = self.row(job_id)
        return None if row is None else _input_of(row)

    @staticmethod
    def _outputs_folder(row: JobRow, info: SourceInfo | None) -> Path | None:
        return info.outbox if info is not None else None

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()


_STATES = ("queued", "running", "done", "failed")
_PACES = 1024
"""Paces kept at most: past it, those of jobs not running are dropped."""


def _of_job(folder: Path, stem: str, suffix: str, *more: str) -> Path | None:
    """The file ``<stem><suffix>/<more>`` of a job's outputs in ``folder``, as
    :func:`_inside` finds it; with ``suffix=""`` and a name in ``more``, that file beside
    them. A stem may lie in sub-folders (``2024/june/photo``, a recursive batch's), which
    are parts of the path here, each checked."""
    *folders, base = stem.split("/")
    if suffix:
        return _inside(folder, *folders, f"{base}{suffix}", *more)
    return _inside(folder, *folders, *more)


def _inside(folder: Path, *parts: str) -> Path | None:
    """``folder/parts`` if it is a regular file there: each part one plain name, no
    symbolic link on the way, and really inside ``folder`` (the outbox may itself be a
    link, which its owner chose)."""
    if any(not part or part in (".", "..") or "/" in part or "\0" in part for part in parts):
        return None
    path = folder.joinpath(*parts)
    try:
        base = folder.resolve(strict=True)
        for depth in range(1, len(parts) + 1):
            if folder.joinpath(*parts[:depth]).is_symlink():
                return None
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(base) or not real.is_file():
        return None
    return real


def _input_of(row: JobRow) -> Path | None:
    """:meth:`StatusReader.input_file` of the job ``row``."""
    if row.state != "done":
        return None
    path = Path(row.input_path)
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            return None
        # (hashed once while the file's size and mtime stay: see file_digest)
        return path if file_digest(path) == row.sha256 else None
    except OSError:
        return None


def _queued(row: JobRow, position: int) -> dict[str, Any]:
    # A job waiting out a retry's backoff says when it may run again.
    backoff = row.not_before if row.not_before > time.time() else None
    return {
        "job": row.id,
        "file": row.file,
        "position": position,
        "created_at": row.created_at,
        # Waiting since: its last (re)queueing, not its first, for a failed photo dropped
        # again (which keeps its job) or one past a retry's backoff.
        "queued_at": max(row.created_at, row.not_before) if backoff is None else row.created_at,
        "retry_at": backoff,
        # Why it waits (a partial copy given time to grow, a disk full): as status says it.
        "reason": row.reason if backoff is not None and row.error_class is not None else None,
    }


def _failed(row: JobRow) -> dict[str, Any]:
    return {
        "job": row.id,
        "file": row.file,
        "error": row.reason,
        "attempts": row.attempts,
        "finished_at": row.finished_at,
        "retry": row.hopeless is None,
        "no_retry": row.hopeless,
    }


def _finite(value: object) -> bool:
    return not isinstance(value, float) or math.isfinite(value)
