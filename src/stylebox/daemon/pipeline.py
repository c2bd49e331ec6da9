"""Journal -> runner -> outbox: what happens to a job, whichever source queued it.

``stylebox serve`` (watched inboxes) and ``stylebox batch`` (a folder on a schedule) both
queue files here and run them here; only their sources differ.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

from stylebox.config import InboxConfig, LoadedConfig
from stylebox.daemon import files
from stylebox.daemon.journal import JobRow, Journal, NewJob
from stylebox.daemon.leases import Stop, owner_id
from stylebox.daemon.outbox import Outbox, safe_folder, same_folder
from stylebox.daemon.runner import Job, JobResult, PluginHandle, Reporter, Runner
from stylebox.daemon.sidecars import photo_beside, sidecars_of
from stylebox.daemon.sources import Source, close_plugin
from stylebox.errors import (
    BadInput,
    Cancelled,
    InputChanged,
    MissingCompanion,
    PluginError,
    StorageError,
    StyleboxError,
    Truncated,
    describe,
)
from stylebox.images import refused_on_sight
from stylebox.logs import shown
from stylebox.plugins.api import (
    COMPANION_KINDS,
    Plugin,
    all_companions_of,
    companion_kind,
    companion_lists,
    companions_of,
)

log = logging.getLogger("stylebox.pipeline")

UNSETTLED_RETRY_SECONDS = 60
"""How long a job whose end could not be recorded waits before it is tried again."""

TRUNCATED_GRACE_SETTLES = 10
"""How many settle times an inbox photo that ends before its image does must stay
unchanged before it fails: a writer that closes the file between pauses longer than the
settle time would otherwise see the first part fail and the rest arrive as a file of its
own."""

CRASH_MARGIN = 0.5
"""Seconds by which an inbox file must predate its job's recorded end to be taken for the
input a crash left there before it could be moved."""

#: How many of an inbox's latest duplicates the status page lists.
SET_ASIDE_SAID = 12

Outcome = Literal["queued", "known", "waiting", "duplicate", "retry", "moved", "gone", "error"]
"""What became of a file given to :meth:`Pipeline.enqueue`: a job was queued for it (a new
one, or the queued job of a file it replaced); it already has one (``known``); another file
with its bytes has a job still to end, which decides (``waiting``); its bytes were done
before (``duplicate``); its failed job is tried again (``retry``); its job's end was
recorded but a crash came before it was moved, which it is now (``moved``); it is no longer
there (``gone``); the journal refused it (``error``: it stays for the next rescan)."""


class Executor(Protocol):
    """What runs a claimed group of one source's jobs: :meth:`Runner.execute_many`'s
    signature, so that a :class:`Pipeline` can hand them to another process (a Ray actor)
    and record the ends of what comes back exactly as it records local ones."""

    def execute_many(
        self,
        jobs: Sequence[Job],
        plugin: PluginHandle,
        outbox: Outbox,
        cancels: Sequence[threading.Event],
        on_process: Callable[[Job], None] | None = None,
        on_outcome: Callable[[int, JobResult | StyleboxError], None] | None = None,
    ) -> list[JobResult | StyleboxError]: ...


def _own_entry(entry: NewJob, path: Path, inbox: bool) -> NewJob:
    """``entry`` as a job of the file ``path`` alone (see :meth:`Pipeline._needs_own_job`).
    A batch's key names the path by the digest of its bytes (a name that is not UTF-8 is
    no text for the journal): its next run finds that job again. An inbox's is new each
    time: the path is free again once its job has moved the file away, and the same
    name's next copy, its first copy's failure still in ``failed/``, is a job of its own
    too (the path's key would find that failed job, and ask for its own job again)."""
    if inbox:
        return replace(entry, unique_key=f"{entry.unique_key}|copy:{uuid.uuid4().hex}")
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()
    return replace(entry, unique_key=f"{entry.unique_key}|path:{digest}")


class Pipeline:
    """Queues files into the journal and carries claimed jobs to done or failed."""

    def __init__(
        self,
        loaded: LoadedConfig,
        sources: dict[str, Source],
        journal: Journal,
        reporter: Reporter | None = None,
        on_queued: Callable[[], None] | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.loaded = loaded
        self.sources = sources
        self.journal = journal
        self.owner = owner_id()
        self.on_queued = on_queued or (lambda: None)
        self.reporter: Reporter = _JournalReporter(journal, reporter)
        """Where jobs report progress: the journal (for status), then ``reporter``."""
        self.runner = Runner(loaded.config.images, self.reporter)
        self.executor = executor
        """Runs claimed jobs elsewhere (a Ray batch's actors); ``None``: :attr:`runner`, here."""
        self._running_plugins: dict[int, tuple[Stop, Plugin[Any]]] = {}
        """The plugin instance each running job uses, which a reload must not close, with its
        run's stop flag: a job ended early and claimed again is the new run's entry."""
        self._retired: dict[int, Plugin[Any]] = {}
        """Instances that no source uses since a reload, to close once no job runs them."""
        self._waiting: dict[int, dict[Path, str]] = {}
        """Files that wait, in the inbox, for the job of another file with their bytes."""
        self._set_aside: dict[str, deque[str]] = {}
        """By inbox, since the start: the latest duplicates moved to ``processed/``, said."""
        self._set_aside_count: Counter[str] = Counter()
        """By inbox, since the start: how many duplicates were moved to ``processed/``."""
        self._lock = threading.Lock()
        self._reserve_unfinished(sources)

    def _reserve_unfinished(self, sources: dict[str, Source]) -> None:
        """Output names of unfinished jobs are taken, even before any file of theirs
        exists."""
        for state in ("queued", "running"):
            for row in self.journal.jobs(state=state):
                if row.stem and row.source in sources:
                    sources[row.source].outbox.claim(row.stem)

    def adopt_renamed(self) -> int:
        """At start and after a reload: queued jobs of an inbox the config no longer names,
        whose photos lie in the folder of an inbox it serves under another name (renamed
        while stylebox was stopped, or removed by one reload and added back by another),
        are that inbox's now; how many. Left under the old name they waited for good, and
        the scan queued their photos again: two jobs of one photo, which a later rename
        back brought together, both running and writing the same names. Each keeps its
        output name where it is free in its new outbox."""
        return self._adopt(self.loaded, self.sources)

    def _adopt(self, loaded: LoadedConfig, sources: dict[str, Source]) -> int:
        """:meth:`adopt_renamed` for the config ``loaded`` and its ``sources``: at a
        reload, before they are swapped in, so that no photo settling meanwhile is queued
        beside the job that is about to be its inbox's."""
        # Named by the config (a disabled inbox's too) or served: its jobs stay its own.
        kept = {f"inbox:{inbox.name}" for inbox in loaded.config.inbox} | sources.keys()
        taking = {same_folder(path): key for key, path in _inbox_folders(sources)}
        moves: dict[tuple[str, str], list[JobRow]] = {}
        for row in self.journal.jobs(state="queued"):
            if row.source.startswith("inbox:") and row.source not in kept:
                new = taking.get(same_folder(Path(row.input_path).parent))
                if new is not None:
                    moves.setdefault((row.source, new), []).append(row)
        for (old, new), rows in moves.items():
            self._move_jobs(old, new, rows, sources[new])
        return sum(len(rows) for rows in moves.values())

    def adopt_renamed_batch(self, source: Source, name: str) -> int:
        """Before batch ``name`` queues its files: the jobs of a batch the config no longer
        names, all of whose files lie in this batch's source folder (the batch renamed), are
        this batch's now, done ones included; how many. Where the source folders of two
        batches of the config hold them (one inside the other), they go to the innermost.
        Left under the old name, every photo was stylised again (for gatys, hours) into new
        names beside identical results. A done job whose result is not in this batch's
        outbox is remade, as any such one is."""
        batches = self.loaded.config.batch
        kept = {f"batch:{batch.name}" for batch in batches}
        homes = {batch.name: same_folder(batch.source) for batch in batches}
        moved = 0
        for old in self.journal.counts():
            if not old.startswith("batch:") or old in kept:
                continue
            rows = self.journal.jobs(old)
            folders = {same_folder(Path(row.origin_path).parent) for row in rows}
            holding = [
                n for n, home in homes.items() if all(f.is_relative_to(home) for f in folders)
            ]
            innermost = max(holding, key=lambda n: len(homes[n].parts), default=None)
            if rows and innermost == name:
                self._move_jobs(old, source.key, rows, source)
                moved += len(rows)
        return moved

    def _move_jobs(self, old: str, new: str, rows: list[JobRow], target: Source | None) -> None:
        """Journal ``rows`` (jobs of source ``old``) as ``new``'s. Where ``target`` is given
        (the jobs will write to its outbox, another folder than before), each queued job
        keeps its output name there when it is free, else takes the next free one; a running
        job finishes with the sources it started with."""
        self.journal.move([row.id for row in rows], new)
        if target is not None:
            for row in rows:
                if row.state != "queued":
                    continue
                if row.stem is None or target.outbox.reserve_stem(row.stem) is None:
                    self.journal.set_stem(row.id, target.reserve(row))
        log.info("%s is now %s: its %d job(s) go with it", old, new, len(rows))

    def reconfigure(self, loaded: LoadedConfig, sources: dict[str, Source]) -> None:
        """Swap in a reloaded config and its sources (the one way a reload changes this
        pipeline).

        Output names stay taken across it: each new outbox of a folder an old one wrote to
        shares that one's in-flight reservations (those of files being queued included),
        and the stems of every queued and running job are reserved in the new sources'
        outboxes, as at start. Jobs running now finish with the sources they started with.
        Plugin instances that no new source uses are closed: at once, or, when a running
        job uses one, as soon as no running job does.
        """
        # An inbox renamed, its folder the same: its unfinished jobs go with it (left under
        # the old name, they waited for good, and the rescan queued their files again).
        # Paired by folder, all looked up before any moves: two inboxes may swap folders.
        taking = {same_folder(path): key for key, path in _inbox_folders(sources)}
        moves = []
        for old, path in _inbox_folders(self.sources):
            new = taking.get(same_folder(path))
            if new is not None and new != old:
                rows = [*self.journal.jobs(old, "queued"), *self.journal.jobs(old, "running")]
                moves.append((old, new, rows))
        for old, new, rows in moves:
            if rows:
                outbox = sources[new].outbox
                same = same_folder(outbox.folder) == same_folder(self.sources[old].outbox.folder)
                self._move_jobs(old, new, rows, None if same else sources[new])
        # Then those of inboxes an earlier reload removed, whose folders are served again.
        self._adopt(loaded, sources)
        earlier = {same_folder(s.outbox.folder): s.outbox for s in self.sources.values()}
        for source in sources.values():
            outbox = earlier.get(same_folder(source.outbox.folder))
            if outbox is not None and outbox is not source.outbox:
                source.outbox.share_reservations(outbox)
        self._reserve_unfinished(sources)
        kept = {id(source.plugin.instance) for source in sources.values()}
        with self._lock:
            for source in self.sources.values():
                instance = source.plugin.instance
                if id(instance) not in kept:
                    self._retired[id(instance)] = instance
            self.loaded = loaded
            self.sources = sources
            self.runner = Runner(loaded.config.images, self.reporter)
        self._close_retired()

    def _close_retired(self) -> None:
        """Close the retired plugin instances that no running job uses."""
        with self._lock:
            busy = {id(instance) for _, instance in self._running_plugins.values()}
            idle = [key for key in self._retired if key not in busy]
            closing = [self._retired.pop(key) for key in idle]
        for instance in closing:
            if close_plugin(instance):
                log.info(
                    "closed a %s instance: no inbox or batch uses its params now", instance.name
                )

    @property
    def state_dir(self) -> Path:
        return self.loaded.config.state_dir

    # -- queueing --------------------------------------------------------------------------

    def enqueue(self, source: Source, paths: list[Path]) -> list[Outcome]:
        """Record settled files of ``source`` as jobs, exactly once, in one transaction.

        A path that is gone by now was taken care of (its job moved it, say) and is skipped:
        ``"gone"``; so is a folder (an album being copied in is left where it is). One that
        is there but not a regular file (a FIFO, device or link) is journaled too, so that
        its refusal is recorded. A file whose path has a
        queued job for other bytes (it was replaced) takes that job over. If the journal
        refuses the arrival, each file is tried on its own, and one it still refuses stays
        in the inbox for the next rescan (``"error"``, logged) while the others go through;
        no output name stays reserved for a file that got no job.

        A mask among ``paths`` (one that settled with no photo beside it) is no job and has
        no outcome: the photo it brings back from ``failed/`` (see :meth:`_bring_back`) has
        one, after those of the other paths. Callers that pair outcomes with ``paths`` pass
        photos only.
        """
        # A mask that settled with no photo beside it: it may be what a failed photo lacked.
        followers = [path for path in paths if companion_kind(path.name) is not None]
        if followers:
            back = [photo for path in followers if (photo := self._bring_back(source, path))]
            paths = [path for path in paths if path not in followers] + back
            if not paths:
                return []
        # A file a rescan sees again while its job is queued or running is that job: it
        # takes no output name, so that a new file settling beside it gets the next free one.
        unfinished = self.journal.unfinished_origins(source.key)
        companions = _companion_keys(paths)
        entries = [self._entry(source, path, companions.get(path)) for path in paths]
        # Nor does a copy of bytes a job has (a duplicate, or a failed job's retry, which
        # keeps that job's names), once or twice over: its name held for a moment and then
        # released, the next new file skipped it (photo-3 where photo-2 was free).
        seen = self.journal.known_keys([entry.unique_key for entry in entries if entry])
        unknown = [entry for entry in entries if entry and entry.unique_key not in seen]
        by_path = not source.moves_inputs  # a batch's file is where it failed
        kept = None if by_path else partial(_kept_aside, source.config.path)
        for row in self.journal.adopt_failed(unknown, by_path, kept) if unknown else []:
            seen.add(row.unique_key)
            log.info(
                "tried again as the job it failed in (under earlier settings, unread, or "
                "without its mask)",
                extra=self._fields(row, "adopted"),
            )
        for index, (path, entry) in enumerate(zip(paths, entries, strict=True)):
            if entry is None or entry.unique_key in seen or str(path) in unfinished:
                continue
            seen.add(entry.unique_key)
            stem = source.reserve_for(path)
            entries[index] = replace(entry, stem=stem)
        added = self._add(source, [entry for entry in entries if entry is not None])
        outcomes: list[Outcome] = []
        for path, entry in zip(paths, entries, strict=True):
            if entry is None:
                outcomes.append("gone")
                continue
            result = added.pop(0)
            try:
                outcomes.append(
                    "error" if result is None else self._after_add(source, path, entry, *result)
                )
            except Exception:  # moving a duplicate failed, say: the others go on
                log.exception("cannot take %s", files.readable(str(path)))
                outcomes.append("error")
        if "queued" in outcomes or "retry" in outcomes:
            self.on_queued()
        return outcomes

    def _bring_back(self, source: Source, companion: Path) -> Path | None:
        """The photo that failed in the inbox ``source`` for want of the ``companion`` file
        (``harbour.mask.png``) now there, moved back from ``failed/`` beside it (to be
        queued as that job's retry); ``None`` when no such photo waits there, or its photo
        is in the inbox (its job reads the companion)."""
        found = companion_kind(companion.name)
        if found is None or not source.moves_inputs or not os.path.lexists(companion):
            return None
        kind, stem = found
        if photo_beside(companion):
            return None
        wanting = self.journal.jobs(
            source.key, "failed", error_class="MissingCompanion", latest_first=True
        )
        for row in wanting:
            origin, photo = Path(row.origin_path), Path(row.input_path)
            if origin.parent != companion.parent or origin.stem != stem or photo == origin:
                continue
            if not files.holds(photo, row.sha256):
                continue  # gone from failed/, or replaced there
            try:
                moved = move_input(photo, origin.parent, name=origin.name)
            except OSError as exc:
                log.warning("cannot bring %s back: %s", files.readable(str(photo)), exc)
                return None
            Path(f"{photo}.error.txt").unlink(missing_ok=True)
            log.info(
                "%s came for %s, which failed for want of its %s: back from %s/ to run with it",
                source.name_of(companion),
                source.name_of(moved),
                kind,
                photo.parent.name,
                extra={**self._fields(row, "brought_back"), "companion": companion.name},
            )
            return moved
        return None

    def would_run(
        self, source: Source, paths: Sequence[Path], left: Counter[str] | None = None
    ) -> list[Path]:
        """Those of ``paths`` that :meth:`enqueue` would give a job to run, changing
        nothing: all but those whose bytes, companions and settings have a job done (a
        failed one is retried, an unfinished one continues). ``left`` counts why each
        other one would not run: ``done before``, ``the same bytes as another file``,
        ``gone``."""
        left = Counter() if left is None else left
        companions = _companion_keys(paths)
        todo = []
        seen: set[str] = set()  # a second file of the same bytes waits for the first's job
        for path in paths:
            entry = self._entry(source, path, companions.get(path))
            if entry is None:
                left["gone"] += 1
                continue
            row = self.journal.existing(entry)
            if row is not None and self._needs_own_job(source, row, path):
                row = self.journal.existing(_own_entry(entry, path, inbox=False))
            elif entry.unique_key in seen:
                left["the same bytes as another file"] += 1
                continue
            seen.add(entry.unique_key)
            if row is None or row.state != "done":
                todo.append(path)
            elif row.origin_path == str(path) and not self._result_stands(source, row):
                todo.append(path)  # remade (see _after_add)
            else:
                left["done before"] += 1
        return todo

    def _entry(self, source: Source, path: Path, companions: str | None = None) -> NewJob | None:
        """The job ``path`` would be, without output names; ``None`` if it is gone or a
        folder (a file replaced by one since it settled). ``companions``: what its
        companion files add to its key (see :func:`_companion_keys`)."""
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(mode):
            return None
        digest = "-"
        if stat.S_ISREG(mode):
            try:
                digest = files.digest(path)
            except FileNotFoundError:
                return None
            except OSError as exc:  # unreadable: its job fails saying why
                log.warning("cannot read %s: %s", files.readable(str(path)), exc)
        if digest != "-":
            key = f"{digest}|{source.key}|{source.plugin.name}|{source.params_hash}"
            if companions:
                key += f"|{companions}"
            if not source.config.dedupe:
                key += f"|{uuid.uuid4().hex}"
        else:  # folders, links, devices: journaled so their refusal is recorded too
            key = f"special|{source.key}|{uuid.uuid4().hex}"
        return NewJob(
            source=source.key,
            input_path=path,
            sha256=digest,
            plugin=source.plugin.name,
            params_hash=source.params_hash,
            unique_key=key,
        )

    def _add(self, source: Source, entries: list[NewJob]) -> list[tuple[JobRow, bool] | None]:
        """``journal.add``; if it refuses the lot, each entry alone, ``None`` for those it
        refuses (their output names released)."""
        if not entries:
            return []
        try:
            return list(self.journal.add(entries))
        except Exception as exc:
            if len(entries) == 1:
                self._refused(source, entries[0], exc)
                return [None]
            log.warning(
                "the journal refused %d file(s) at once (%s); one by one", len(entries), exc
            )
        results: list[tuple[JobRow, bool] | None] = []
        for entry in entries:
            try:
                results.append(self.journal.add([entry])[0])
            except Exception as exc:
                self._refused(source, entry, exc)
                results.append(None)
        return results

    @staticmethod
    def _refused(source: Source, entry: NewJob, error: Exception) -> None:
        if entry.stem is not None:
            source.outbox.release_stem(entry.stem)
        log.error(
            "cannot queue %s: %s; it stays in place for the next rescan",
            files.readable(str(entry.input_path)),
            describe(error),
            extra={"event": "not-queued", "source": entry.source},
        )

    def _after_add(
        self, source: Source, path: Path, entry: NewJob, row: JobRow, new: bool
    ) -> Outcome:
        if entry.stem is not None and not (new and row.stem == entry.stem):
            source.outbox.release_stem(entry.stem)  # the job has names of its own
        if new:
            if row.stem == entry.stem:
                log.info("queued", extra=self._fields(row, "queued"))
                self._refuse_on_sight(source, path, row)
            else:
                log.info(
                    "replaced while queued: the job is for the new bytes now",
                    extra=self._fields(row, "replaced"),
                )
                self._wake_waiting(row.id)  # its copies of the old bytes are no longer its
            return "queued"
        if row.state in ("queued", "running") and row.origin_path == str(path):
            return "known"
        if not os.path.lexists(path):
            return "gone"  # seen just before its own job (or someone) moved it away
        if self._left_by_a_crash(source, path, row):
            return "moved"
        if followed := self._follow_rename(source, path, row):
            row = followed
            log.info(
                "renamed or moved while queued: the job is this file's now",
                extra={**self._fields(row, "renamed"), "path": files.readable(str(path))},
            )
            return "known"
        if row.state == "queued" and not os.path.lexists(row.origin_path):
            now = self.journal.get(row.id)  # followed to this file by another call just now
            if now.state == "queued" and now.origin_path == str(path):
                return "known"
        if row.state in ("queued", "running"):
            # Its bytes' job has not ended: whether this is a duplicate of a result, or its
            # retry, or (that file replaced) a job of its own is known only when it ends.
            with self._lock:
                self._waiting.setdefault(row.id, {})[path] = source.key
            if (now := self.journal.get(row.id)).state not in ("queued", "running"):
                # It ended in between, and woke its waiters before this one was there.
                with self._lock:
                    mine = self._waiting.get(row.id, {}).pop(path, None)
                if mine is not None and now.error_class == "Cancelled":
                    self._cancel_copy(now, path, source.key, now.reason or "Cancelled")
                    return "gone"
                if mine is not None:
                    return self.enqueue(source, [path])[0]
            fields = self._fields(row, "waiting")
            # Said of the file that waits (as a duplicate is): the job's is ``same_as``.
            log.info(
                "%s: waiting for the job of the same bytes (%s), to be what its end makes it",
                source.name_of(path),
                fields["file"],
                extra={
                    **fields,
                    "file": source.name_of(path),
                    "same_as": fields["file"],
                    "path": files.readable(str(path)),
                },
            )
            return "waiting"
        if self._needs_own_job(source, row, path):
            # Another copy of those bytes may have a job of its own already: this one is
            # its duplicate, or waits for it, as for any job (each ran again, and again).
            live = self.journal.live_copy(entry.unique_key) if source.moves_inputs else None
            if live is not None:
                return self._after_add(source, path, entry, live, False)
            back = self._moved_back(source, row, path)
            if back is None:
                stem = source.reserve_for(path)
                own = replace(_own_entry(entry, path, source.moves_inputs), stem=stem)
                added = self._add(source, [own])[0]
                return "error" if added is None else self._after_add(source, path, own, *added)
            row = back
        if row.state == "failed":
            self._drop_stranded_note(source, row)
            stem = self._retry_stem(source, row, path)
            row = self.journal.retry_failed(row.id, path, stem)
            if row.origin_path != str(path):  # another call queued it again first, for
                if row.stem != stem:  # its own file: this one waits for that job's end
                    source.outbox.release_stem(stem)
                return self.enqueue(source, [path])[0]
            self._supersede_queued(source, path, row)  # the retry moves the file when done
            log.info("queued again after failing", extra=self._fields(row, "retry"))
            return "retry"
        if (
            not source.moves_inputs
            and row.origin_path == str(path)
            and not self._result_stands(source, row)
        ):
            # A batch's own file, done, whose result is not where the batch writes now: its
            # names if they are free, else new ones (an earlier format's result keeps its).
            assert row.stem is not None
            kept = source.outbox.reserve_stem(row.stem)
            row = self.journal.remake(row.id, path, kept.stem if kept else source.reserve(row))
            log.info(
                "queued again: nothing of its result is in the outbox (deleted, or a new "
                "outbox), or it is of another format",
                extra={**self._fields(row, "remake"), "outbox": str(source.outbox.folder)},
            )
            return "retry"
        # The same bytes with the same settings: not stylised twice.
        if source.moves_inputs:
            self._supersede_queued(source, path, row)
            self._clear_failure_here(source, path, row)
            assert isinstance(source.config, InboxConfig)
            moved = move_input(path, source.config.processed_dir)
            name = shown(row.name)
            note = f"duplicate of job {row.id} ({name}); its result: {source.outbox.folder}"
            if row.stem:
                note += f"/{row.stem}.*"
            files.write_reason(moved, note, suffix=".duplicate.txt")
            said = (
                f"{source.name_of(path)}: the same bytes and settings as job {row.id} ({name});"
                f" not stylised again, moved to processed/ as {moved.name}"
            )
            with self._lock:
                latest = self._set_aside.setdefault(source.key, deque(maxlen=SET_ASIDE_SAID))
                latest.appendleft(said)
                self._set_aside_count[source.key] += 1
        # A batch run again finds each file's own earlier job: counted as done before (in
        # its end line), not said for each file, which would call it a copy of itself.
        again = not source.moves_inputs and row.origin_path == str(path)
        fields = self._fields(row, "duplicate")
        earlier = fields["file"]
        log.log(
            logging.DEBUG if again else logging.INFO,
            "%s: the same bytes with the same settings as %s (job %d), whose result stands for "
            "it; not stylised again",
            source.name_of(path),
            earlier,
            row.id,
            extra={
                **fields,
                "file": source.name_of(path),
                "same_as": earlier,
                "path": files.readable(str(path)),
            },
        )
        return "duplicate"

    def _left_by_a_crash(self, source: Source, path: Path, row: JobRow) -> bool:
        """Whether ``path`` is the input of ended job ``row`` that a crash left in the inbox:
        a job's end is recorded, with where its input goes, just before the input is moved
        (see :meth:`_complete` and :meth:`_fail`). Then it goes there now. Known from the
        journal (the input was to leave from this path, and is not where it was to go) and
        the file (unchanged since the job ended; a photo dropped again is newer)."""
        if not source.moves_inputs or row.state not in ("done", "failed"):
            return False
        if row.origin_path != str(path) or row.input_path == row.origin_path:
            return False
        target = Path(row.input_path)
        try:
            # (The file system's clock is coarser than time.time(): a margin keeps a photo
            # dropped again just as its job ended from passing for one left behind.)
            changed = path.lstat().st_ctime
            if os.path.lexists(target) or changed > (row.finished_at or 0) - CRASH_MARGIN:
                return False
        except OSError:
            return False
        try:  # with its companions (photo.mask.png), as the job would have moved them
            move_input(path, target.parent, name=target.name)
        except FileNotFoundError:  # its job, ending just now, moved it as it was seen
            return True
        log.info(
            "moved where its job's end said, which a crash had cut short",
            extra={**self._fields(row, "moved"), "path": files.readable(str(target))},
        )
        return True

    def _take_to_end(self, job_id: int) -> JobRow | None:
        """Claim the queued job ``job_id`` to end it without running it (a cancel, a
        refusal, a job superseded), so that no worker takes it meanwhile; ``None`` if one
        already has."""
        lease = self.loaded.config.daemon.lease_seconds
        return self.journal.claim(self.owner, lease, ids={job_id}, to_run=False)

    def _refuse_on_sight(self, source: Source, path: Path, row: JobRow) -> None:
        """End the new job ``row`` as failed at once where its file's header shows it can
        never be decoded (see :func:`refused_on_sight`): its turn may be hours away behind
        gatys jobs, and the runner would refuse it the same way then."""
        images = self.loaded.config.images
        error = refused_on_sight(
            path, max_pixels=images.max_pixels, formats=frozenset(images.formats)
        )
        if error is None:
            return
        claimed = self._take_to_end(row.id)
        if claimed is None:  # a worker took it: it fails there, the same way
            return
        try:
            self._fail(source, claimed, error)
        except Exception:  # not moved aside: back to the queue, to fail in its turn
            self.journal.requeue(claimed.id)
            raise

    @staticmethod
    def _needs_own_job(source: Source, row: JobRow, path: Path) -> bool:
        """Whether the file ``path``, whose bytes' job ``row`` is another file's and
        failed, gets a job of its own: while that file is there too (a batch's in its
        library, an inbox's in ``failed/``), each file's failure is its own to say and
        count. (A batch's took the job over, and the file that had it was "done before" in
        the next run, its failure unsaid; an inbox's copies were one failed job named after
        the last, the files before it in ``failed/`` named by none.) A file moved or renamed
        since, or moved back from ``failed/``, takes its old job over, as before."""
        if row.state != "failed":
            return False
        if not source.moves_inputs:
            return row.origin_path != str(path) and os.path.lexists(row.origin_path)
        # An inbox's: whatever the name (a name of the inbox is free again once moved).
        return _kept_aside(source.config.path, row.input_path)

    def _moved_back(self, source: Source, row: JobRow, path: Path) -> JobRow | None:
        """For the inbox file ``path``, whose bytes' failed job ``row`` still has its file
        in ``failed/``: another failed job of those bytes whose file is gone from there,
        the one ``path`` is (moved back by hand or by the status page's Retry), of its name
        if one is; ``None`` if there is none, and ``path`` is a copy of its own."""
        if not source.moves_inputs:
            return None
        gone = [
            other
            for other in self.journal.jobs(
                source.key, "failed", sha256=row.sha256, latest_first=True
            )
            if other.id != row.id and _left_failed(source.config.path, other.input_path)
        ]
        named = [other for other in gone if other.name == files.readable(path.name)]
        return (named or gone or [None])[0]

    @staticmethod
    def _result_stands(source: Source, row: JobRow) -> bool:
        """Whether done job ``row``'s result stands in ``source``'s outbox: its result is
        there in the format asked for now, or its manifest is, naming a result of that
        format (the result moved on, as an inbox on the outbox takes it, or was archived).
        Nothing of it there (deleted, or a new outbox), or a result of another format: no."""
        if row.stem is None:  # a legacy job, named when it ran: no telling
            return True
        names = source.outbox.names(row.stem)
        if names.result.is_file():
            return True
        try:
            recorded = json.loads(names.manifest.read_text())["output"]["result"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return bool(recorded == names.result.name)

    def _follow_rename(self, source: Source, path: Path, row: JobRow) -> JobRow | None:
        """Job ``row``, still queued in ``source``, whose file is gone from where it was
        queued: ``path``, of the same bytes, is that file renamed or moved, and the job is
        its own from now on (it failed as 'vanished' and was then run again for ``path``
        as a retry). A job queued for what ``path`` held before ends, superseded, as when a
        file is copied over a queued one. Named after ``path``, unless it has begun under
        its names (snapshots, a checkpoint, a result a crash left): it keeps them, or they
        would be strays beside an animation that lacks its first steps. ``None`` where
        that is not so, or a worker took the job meanwhile."""
        if row.state != "queued" or row.source != source.key:
            return None
        if os.path.lexists(row.origin_path):
            return None  # a copy: it waits for the job's end
        self._supersede_queued(source, path, row)  # (it frees the name that file had)
        stem = None if self._begun(source, row) else source.reserve_for(path)
        followed = self.journal.follow(row.id, Path(row.origin_path), path, stem)
        if followed is None:  # taken by a worker, or followed already by another call
            if stem is not None:
                source.outbox.release_stem(stem)
            return None
        row, before = followed
        if stem is not None and before is not None:
            source.outbox.release_stem(before)
        return row

    def _begun(self, source: Source, row: JobRow) -> bool:
        """Whether job ``row`` has left anything under its output names or in its work
        folder (an earlier run's snapshots or checkpoint, a result before a crash)."""
        if row.stem is None:
            return False
        names = source.outbox.names(row.stem)
        return (
            (self.state_dir / "jobs" / str(row.id)).exists()
            or names.steps.exists()
            or source.outbox.holds_result(row.stem, row.sha256)
        )

    @staticmethod
    def _retry_stem(source: Source, row: JobRow, path: Path) -> str:
        """A failed job dropped again keeps its output names if they are still free (its
        failure released them) or hold its own complete result; else it gets new ones, as
        it does where its file is now in another sub-folder of a batch (its results go to
        the sub-folder the outbox mirrors) or has another name than it had (its results
        are named after the file dropped, as any job's are; the name it has in failed/,
        which the status page's Retry moves back, is its own)."""
        folder = safe_folder(source.subfolder(path))
        if row.stem is not None and row.stem.rpartition("/")[0] != folder:
            return source.reserve_for(path)
        if row.stem is not None and source.outbox.holds_result(row.stem, row.sha256):
            return source.outbox.claim(row.stem).stem
        own = {row.name, files.readable(Path(row.input_path).name)}
        if files.readable(path.name) not in own:
            return source.reserve_for(path)
        if row.stem is not None and source.outbox.reserve_stem(row.stem) is not None:
            return row.stem
        return source.reserve(row)

    def _fields(self, row: JobRow, event: str) -> dict[str, Any]:
        """A job's fields in its log lines; ``file`` is its name, under its sub-folder in
        a recursive batch (``2024/june/a.jpg``, where its results are in the outbox)."""
        source = self.sources.get(row.source)
        name = source.file_name(row) if source is not None else row.name
        return {"event": event, "job": row.id, "source": row.source, "file": name}

    def set_aside(self, key: str) -> tuple[list[str], int]:
        """Inbox ``key``'s latest duplicates set aside since the start, newest first, each
        said in a line, and how many there were in all. Safe from any thread."""
        with self._lock:
            return list(self._set_aside.get(key, ())), self._set_aside_count[key]

    def waiting_copies(self) -> dict[str, list[tuple[Path, int]]]:
        """By source: the files that wait, in their folder, for the job of the same bytes
        to end (to be its duplicate or its retry), each with that job's id. Safe from any
        thread."""
        found: dict[str, list[tuple[Path, int]]] = {}
        with self._lock:
            for job_id, paths in self._waiting.items():
                for path, key in paths.items():
                    found.setdefault(key, []).append((path, job_id))
        return found

    def _wake_waiting(self, job_id: int) -> None:
        """Job ``job_id`` ended, or no longer stands for the bytes it had: queue the files
        that waited for it again, to be what its end makes them."""
        with self._lock:
            waiting = self._waiting.pop(job_id, {})
        by_source: dict[str, list[Path]] = {}
        for path, key in waiting.items():
            by_source.setdefault(key, []).append(path)
        for key, paths in by_source.items():
            source = self.sources.get(key)  # as a reload left it; gone: the files stay
            if source is None:
                continue
            try:
                self.enqueue(source, paths)
            except Exception:  # a rescan finds them anyway
                log.exception("cannot queue the files that waited for job %s", job_id)

    # -- running ---------------------------------------------------------------------------

    def run(
        self,
        rows: list[JobRow],
        stops: Mapping[int, Stop] | None = None,
        on_process: Callable[[Job], None] | None = None,
        on_ended: Callable[[JobRow], None] | None = None,
    ) -> None:
        """Carry claimed jobs of one source to done, failed, or back to the queue (same-size
        images together through the plugin's ``process_batch``), each as soon as its
        outcome is known. Never raises.

        ``stops``: each job's stop flag, which the caller may raise (see :class:`Stop`);
        ``on_process(job)`` is called as the plugin starts on a job; ``on_ended(row)`` as
        a job's end is recorded (it may be claimed again from then on, by another run)."""
        stops = stops if stops is not None else {row.id: Stop() for row in rows}
        with self._lock:  # a reload swaps sources under it, so this one is not closed
            source = self.sources.get(rows[0].source)
            if source is not None:
                instance = source.plugin.instance
                self._running_plugins.update({key: (stop, instance) for key, stop in stops.items()})
        if source is None:  # its inbox was removed by a reload: leave it for later
            for row in rows:
                self.journal.requeue(row.id, delay=60, refund_attempt=True)
            return
        began = time.monotonic()
        ended: set[int] = set()

        def end(row: JobRow, outcome: JobResult | Exception | None) -> None:
            ended.add(row.id)
            stop = stops[row.id]
            try:
                if stop.claimed_at is not None and not self.journal.holds(
                    row.id, self.owner, stop.claimed_at
                ):
                    stop.stop("lost")  # taken over since the last heartbeat
                self._record_end(source, row, outcome, stop, began)
            except Exception as exc:  # its end could not be recorded: not left 'running'
                self._end_unrecorded(row, exc)
            self._not_running(row.id, stop)
            if on_ended is not None:
                on_ended(row)

        try:
            try:
                outcomes = self._run(source, rows, stops, on_process, end)
            except Exception as exc:  # a bug or an I/O error: retried like a plugin fault
                log.exception("jobs %s crashed", [row.id for row in rows])
                error = PluginError(describe(exc))
                outcomes = dict.fromkeys(stops, error)
            for row in rows:
                if row.id not in ended:
                    end(row, outcomes[row.id])
        finally:
            for row in rows:
                self._not_running(row.id, stops[row.id])
            self._close_retired()

    def _not_running(self, job_id: int, stop: Stop) -> None:
        """Job ``job_id``'s run (known by its ``stop`` flag) no longer uses its instance."""
        with self._lock:
            if self._running_plugins.get(job_id, (None, None))[0] is stop:
                del self._running_plugins[job_id]

    def _end_unrecorded(self, row: JobRow, error: Exception) -> None:
        """A job whose end could not be written (its input not moved, the journal not told:
        a full disk, a folder made unusable) goes back to the queue to try again after a
        minute, with the reason kept for ``stylebox status``; left 'running', it would wait
        for a restart with no lease kept. An I/O error is said in one line each minute; only
        anything else (a bug) with its traceback."""
        log.error(
            "job %s: cannot record its end (%s); it is queued to try again in %d s",
            row.id,
            describe(error),
            UNSETTLED_RETRY_SECONDS,
            exc_info=not isinstance(error, OSError | StorageError),
            extra=self._fields(row, "unsettled"),
        )
        try:
            self.journal.requeue(
                row.id, delay=UNSETTLED_RETRY_SECONDS, refund_attempt=True, error=error
            )
        except Exception:
            log.exception("job %s: cannot queue it again either", row.id)

    def _run(
        self,
        source: Source,
        rows: list[JobRow],
        cancels: Mapping[int, threading.Event],
        on_process: Callable[[Job], None] | None,
        on_outcome: Callable[[JobRow, JobResult | Exception | None], None],
    ) -> dict[int, JobResult | Exception | None]:
        """Each job's outcome: its result, its error, or ``None`` when it had finished
        before a crash and only the move of its input was left. ``on_outcome(row, outcome)``
        is called as each is known, while the others run: those known before any runs
        (ended before a crash, their photo gone), those the executor ends as it goes."""
        outcomes: dict[int, JobResult | Exception | None] = {}
        jobs: list[tuple[JobRow, Job]] = []
        for index, row in enumerate(rows):
            work_dir = self.state_dir / "jobs" / str(row.id)
            path = Path(row.input_path)
            if row.stem is None:  # queued by a retry of a failed job
                stem = source.reserve(row)
                self.journal.set_stem(row.id, stem)
            else:
                stem = row.stem
            names = source.outbox.claim(stem)
            if row.attempts > 1 or work_dir.exists():  # a crash may have left temp files
                source.outbox.remove_temporaries(names)
            if source.outbox.holds_result(stem, row.sha256):
                outcomes[row.id] = None
            elif not os.path.lexists(path):  # deleted or moved away while queued
                where = "inbox" if source.moves_inputs else "batch's source folder"
                outcomes[row.id] = BadInput(
                    f"{path.name} vanished from the {where} before it could be processed"
                )
            elif path.is_symlink():
                outcomes[row.id] = BadInput(
                    f"{path.name} is a symbolic link; links are not followed out of the inbox"
                )
            if row.id in outcomes:  # known without running it: ended now, not after the rest
                on_outcome(row, outcomes[row.id])
                continue
            if (row.plugin, row.params_hash) != (source.plugin.name, source.params_hash):
                # Queued before a reload changed the params: known by those it runs with.
                rows[index] = row = self.journal.rekey(
                    row.id, source.plugin.name, source.params_hash
                )
            log.info("started", extra=self._fields(row, "started"))
            name = source.file_name(row)
            job = Job(
                path,
                work_dir,
                label=source.label(name),
                stem=stem,
                job_id=row.id,
                sha256=row.sha256,
                file=name,
            )
            jobs.append((row, job))
        executor = self.executor or self.runner
        results = executor.execute_many(
            [job for _, job in jobs],
            source.plugin,
            source.outbox,
            [cancels[row.id] for row, _ in jobs],
            on_process,
            lambda index, outcome: on_outcome(jobs[index][0], outcome),
        )
        for (row, _), result in zip(jobs, results, strict=True):
            outcomes[row.id] = result
        return outcomes

    def cancel_queued(self, job_id: int) -> bool:
        """Fail the queued job ``job_id`` as cancelled by request, without running it: it
        is claimed first (so no worker takes it meanwhile), then ends as a run that was
        cancelled does, its input moved aside with the reason (one waiting out a retry's
        backoff too). ``False`` if it could not be claimed (a worker took it)."""
        row = self._take_to_end(job_id)
        if row is None:
            return False
        source = self.sources.get(row.source)
        # (Claimed not to run, it counted no attempt: there is none to give back.)
        if source is None:  # its inbox was removed by a reload: leave it for later
            self.journal.requeue(row.id)
            return False
        try:
            self._fail(source, row, Cancelled("cancelled by request"))
        except Exception:  # claimed but not failed: back to the queue, not stuck as running
            self.journal.requeue(row.id)
            raise
        return True

    def _record_end(
        self,
        source: Source,
        row: JobRow,
        outcome: JobResult | Exception | None,
        stop: Stop,
        began: float,
    ) -> None:
        if stop.reason == "lost":  # the job is another run's now: its end is that run's
            log.warning(
                "its lease lapsed and another worker took the job over; this run ends "
                "without recording anything",
                extra=self._fields(row, "lost"),
            )
            return
        if isinstance(outcome, Cancelled):
            said = str(outcome) or "no reason given"
            if stop.reason == "drain":
                self.journal.requeue(row.id, refund_attempt=True)
                if self.journal.path.exists():
                    log.info("stopped; will resume", extra=self._fields(row, "drained"))
                else:  # the journal was deleted under the daemon: nothing remembers the job
                    log.warning(
                        "stopped; its journal %s was deleted, so it will not resume: its "
                        "photo is queued anew at the next start",
                        self.journal.path,
                        extra=self._fields(row, "drained"),
                    )
            elif stop.reason == "timeout":
                seconds = source.config.timeout_seconds
                error = PluginError(f"timed out after {seconds} s ({said})")
                self._retry_or_fail(source, row, error)
            elif stop.reason == "cancel":
                self._fail(source, row, Cancelled("cancelled by request"))
            else:  # the plugin gave up on its own: a fault like any other
                self._retry_or_fail(source, row, PluginError(f"cancelled itself: {said}"))
        elif isinstance(outcome, InputChanged):
            self._input_changed(source, row, outcome)
        elif isinstance(outcome, Truncated) and (wait := self._still_growing(source, row)):
            self.journal.requeue(row.id, delay=wait, refund_attempt=True, error=outcome)
            log.info(
                "cut short: waiting %.0f s for the rest before failing it",
                wait,
                extra={**self._fields(row, "truncated"), "error": str(outcome)},
            )
        elif isinstance(outcome, MissingCompanion) and self._came_meanwhile(source, row, outcome):
            self.journal.requeue(row.id, refund_attempt=True, error=outcome)
            log.info(
                "its %s came while it ran without it: tried again with it",
                outcome.kind,
                extra=self._fields(row, "companion_came"),
            )
        elif isinstance(outcome, BadInput):
            self._fail(source, row, outcome)
        elif isinstance(outcome, PluginError):
            self._retry_or_fail(source, row, outcome)
        elif isinstance(outcome, Exception):
            self._retry_or_fail(source, row, PluginError(describe(outcome)))
        else:
            if outcome is not None:
                seconds = outcome.manifest["timings"]["total_seconds"]
            else:  # ended before a crash: its time is in its manifest
                seconds = source.outbox.result_seconds(row.stem) if row.stem else 0.0
            try:
                self._complete(source, row, seconds)
            except OSError as exc:  # the input could not be moved: try again later
                error = StorageError(f"its input could not be moved: {exc}", exc)
                log.error("job %s could not be completed: %s", row.id, error)
                self._retry_or_fail(source, row, error)
                return
            except Exception as exc:  # a bug: its traceback says where
                log.exception("job %s could not be completed", row.id)
                self._retry_or_fail(source, row, PluginError(describe(exc)))
                return
            # The job's own time (its manifest's), not its group's: same-size photos run
            # together end when the last of them does.
            took = seconds if outcome else time.monotonic() - began
            log.info("done", extra={**self._fields(row, "done"), "seconds": round(took, 3)})
            if stop.reason == "cancel":  # asked after the plugin had returned its result
                log.warning(
                    "the cancel came after the job had finished; its result is kept",
                    extra=self._fields(row, "cancel_too_late"),
                )
            elif stop.reason == "timeout":  # it did not stop when asked, and finished
                log.warning(
                    "finished past its time limit (timeout_seconds = %g): plugin %s did not "
                    "stop when asked; its result is whole and kept",
                    source.config.timeout_seconds,
                    source.plugin.name,
                    extra=self._fields(row, "past_time_limit"),
                )

    @staticmethod
    def _still_growing(source: Source, row: JobRow) -> float:
        """For an inbox photo cut short: the seconds left until its bytes have been there
        :data:`TRUNCATED_GRACE_SETTLES` settle times, counted from the job's first claim
        for them (new bytes take the job over and start the count again; the file's own
        time is not used, as a clock ahead of ours would put it off for good); 0 once they
        have, or for a batch's or run's file, which no one is writing."""
        if not isinstance(source.config, InboxConfig) or row.started_at is None:
            return 0.0
        grace = TRUNCATED_GRACE_SETTLES * source.config.settle_seconds
        return min(grace, max(0.0, grace - (time.time() - row.started_at)))

    def _complete(self, source: Source, row: JobRow, seconds: float) -> None:
        """Record job ``row`` done and move its input to ``processed/``: the journal first,
        naming where the input goes, so that a crash between the two leaves the input in
        the inbox, moved by the next rescan (:meth:`_left_by_a_crash`), and the journal
        right; the other way round, the next start found the input gone."""

        def record(target: Path | None) -> None:
            self.journal.finish(row.id, "done", seconds=seconds, input_path=target)

        if not self._move_after(source, row, record, "processed"):
            record(None)
        self._wake_waiting(row.id)

    def _move_after(
        self,
        source: Source,
        row: JobRow,
        record: Callable[[Path | None], None],
        folder: Literal["processed", "failed"],
    ) -> bool:
        """Move job ``row``'s inbox input to its ``folder``, calling ``record(target)``
        just before; ``False`` when nothing moves (a batch's or run's input; one gone or
        replaced while the job ran: said in the log). A move that fails after the record
        (a folder not writable, a full disk) raises with the job's journal row as it was
        (running, its input in the inbox), for the caller to retry or requeue it."""
        origin = Path(row.origin_path)
        if not source.moves_inputs:
            return False
        if not os.path.lexists(origin):
            log.info(
                "input gone from the inbox while its job ran; nothing to move to %s/",
                folder,
                extra=self._fields(row, "input_gone"),
            )
            return False
        if not files.holds(origin, row.sha256):
            self._replaced_while_running(row)
            return False
        assert isinstance(source.config, InboxConfig)
        where = source.config.processed_dir if folder == "processed" else source.config.failed_dir
        recorded: list[Path] = []

        def before(target: Path) -> None:
            record(target)
            recorded.append(target)

        try:
            move_input(origin, where, before=before)
        except Exception:
            # The end was written and the input did not follow: undone. (One that did, and
            # failed after, a folder's fsync say, keeps its record: it is where that says.)
            if recorded and os.path.lexists(origin):
                lease = self.loaded.config.daemon.lease_seconds
                self.journal.unfinish(row.id, self.owner, lease, origin)
                Path(f"{recorded[0]}.error.txt").unlink(missing_ok=True)
            raise
        return True

    def _replaced_while_running(self, row: JobRow) -> None:
        """The job ended on the bytes it read, but its input path holds others now: they
        are not its input, so they stay where they are, to be queued as a job of their own
        once they have settled (the watcher saw them arrive; a rescan finds them anyway)."""
        log.info(
            "input replaced while its job ran; the new file stays in the inbox",
            extra=self._fields(row, "replaced"),
        )

    def _input_changed(self, source: Source, row: JobRow, error: InputChanged) -> None:
        """The job's input holds other bytes than it was queued for (replaced unseen): the
        job is queued again for them, keeping its names, after the inbox's settle time (a
        writer may still be at work); unless they already have a job,
        and then this one ends as failed saying so and the file is taken like any arrival
        of those bytes (a duplicate of a done job, say). Its input is not moved for it."""
        origin = Path(row.origin_path)
        entry = self._entry(source, origin, _companion_keys([origin]).get(origin))
        if entry is None:
            self._fail(source, row, BadInput(f"{row.name} vanished while its job started"))
            return
        settle = source.config.settle_seconds if isinstance(source.config, InboxConfig) else 0
        current, kept = self.journal.replace_input(row.id, entry, delay=settle)
        if kept:
            log.info(
                "input replaced before its job read it; queued again for the new bytes",
                extra={**self._fields(current, "replaced"), "error": str(error)},
            )
            self.on_queued()
            self._wake_waiting(row.id)
            return
        self._superseded(source, row, current)
        self._after_add(source, origin, entry, current, False)
        self._wake_waiting(row.id)

    def _supersede_queued(self, source: Source, path: Path, current: JobRow) -> None:
        """``path`` now holds bytes that job ``current`` has, and is moved away as their
        duplicate or by their retry: a job queued for the bytes it held before (a photo cut
        short and completed since, say) would find it gone, so it ends now, superseded by
        ``current``. One a worker took a moment before is left to it, and may end as
        'vanished' (BadInput) instead: the rest arriving just as the wait for it ran out."""
        queued = self.journal.queued_at(source.key, path, other_than=current.id)
        if queued is None:
            return
        row = self._take_to_end(queued.id)
        if row is not None:
            self._superseded(source, row, current)
            self._wake_waiting(row.id)

    def _superseded(self, source: Source, row: JobRow, current: JobRow) -> None:
        """End job ``row`` as failed: the bytes now at its input are job ``current``'s.
        What it wrote is discarded (unless it is a complete result of its own bytes); its
        input is not moved for it."""
        superseded = InputChanged(
            f"{row.name} was replaced by other bytes before it was processed; those are job "
            f"{current.id}'s ({current.state})",
            current.sha256,
        )
        if row.stem:
            source.outbox.end_without_result(row.stem, row.sha256)
        shutil.rmtree(self.state_dir / "jobs" / str(row.id), ignore_errors=True)
        self.journal.finish(row.id, "failed", error=superseded)
        log.warning(
            "superseded", extra={**self._fields(row, "superseded"), "error": str(superseded)}
        )

    @staticmethod
    def _drop_stranded_note(source: Source, row: JobRow) -> None:
        """The note of failed job ``row``, whose file has left ``failed/`` (moved back, or
        deleted), as its job is tried again: a note beside no photo, naming a job that is
        no longer failed."""
        if source.moves_inputs and not os.path.lexists(row.input_path):
            Path(f"{row.input_path}.error.txt").unlink(missing_ok=True)

    def _clear_failure_here(self, source: Source, path: Path, done: JobRow) -> None:
        """``path``, of this inbox, is a duplicate of job ``done``: a failed job of its name
        whose file left ``failed/`` (the photo mended and moved back, to bytes done before)
        ends superseded by ``done``, its note gone, rather than stay listed failed."""
        for row in self.journal.jobs(source.key, "failed", origin=path, latest_first=True):
            if row.id == done.id or not _left_failed(source.config.path, row.input_path):
                continue
            self._drop_stranded_note(source, row)
            # Its outputs ended with its failure (their names may be another job's now).
            superseded = InputChanged(
                f"{row.name} came back with other bytes, those of job {done.id} ({done.state})",
                done.sha256,
            )
            self.journal.finish(row.id, "failed", error=superseded)
            log.info(
                "superseded", extra={**self._fields(row, "superseded"), "error": str(superseded)}
            )

    @staticmethod
    def _came_meanwhile(source: Source, row: JobRow, error: MissingCompanion) -> bool:
        """Whether the inbox photo of job ``row``, which failed for want of a companion,
        has it beside it now (dropped while the job ran): else it would go to ``failed/``
        with the photo, and the note would ask for a file that is there already."""
        if not source.moves_inputs or not os.path.lexists(row.origin_path):
            return False
        return error.kind in companions_of(Path(row.origin_path))

    def _retry_or_fail(self, source: Source, row: JobRow, error: PluginError) -> None:
        if (
            isinstance(error, StorageError)
            and error.passing
            and isinstance(source.config, InboxConfig)
        ):
            # A full disk or a share gone away fails nothing: the daemon waits for it, and
            # tries each minute without counting a try (three tries took 15 s, then every
            # photo dropped meanwhile was in failed/). A reason that stays (a name the file
            # system refuses) is tried as a plugin fault, or it would run for ever.
            self.journal.requeue(
                row.id, delay=UNSETTLED_RETRY_SECONDS, refund_attempt=True, error=error
            )
            log.warning(
                "waiting: %s; tried again in %d s",
                error,
                UNSETTLED_RETRY_SECONDS,
                extra={**self._fields(row, "storage_wait"), "error": str(error)},
            )
            return
        if error.retry and row.attempts < source.config.max_attempts:
            delay = self.loaded.config.daemon.retry_backoff_seconds * 2 ** (row.attempts - 1)
            self.journal.requeue(row.id, delay=delay, error=error)
            log.warning(
                "retrying",
                extra={**self._fields(row, "retry"), "error": str(error), "delay": delay},
            )
            return
        self._fail(source, row, error)

    def _fail(self, source: Source, row: JobRow, error: Exception) -> None:
        """Record job ``row`` failed with ``error`` and move its input to ``failed/`` with
        the reason beside it: the reason and the journal first, as :meth:`_complete` does."""
        reason = shown(describe(error))  # one line, whatever its file's name holds
        stem = row.stem or self.journal.get(row.id).stem  # a legacy job named when it ran
        if stem:
            source.outbox.end_without_result(stem, row.sha256)
        shutil.rmtree(self.state_dir / "jobs" / str(row.id), ignore_errors=True)

        def record(target: Path | None) -> None:
            if target is not None:
                # A job ended before it ran (refused on sight, cancelled while queued)
                # says so: a bare "attempts: 0" read as a count that went wrong.
                tries = f"{row.attempts}" if row.attempts else "0 (it never ran)"
                said = f"{reason}\nattempts: {tries}\njob: {row.id}"
                if (
                    isinstance(error, MissingCompanion)
                    and source.moves_inputs
                    and error.kind in COMPANION_KINDS
                ):
                    wanted = f"{Path(row.origin_path).stem}.{error.kind}.png"
                    said += (
                        f"\nthen: drop {shown(wanted)} into the inbox, and this photo comes "
                        "back from here to run with it"
                    )
                files.write_reason(target, said)
            self.journal.finish(row.id, "failed", error=error, input_path=target)

        if not self._move_after(source, row, record, "failed"):
            record(None)
        log.error("failed", extra={**self._fields(row, "failed"), "error": reason})
        if isinstance(error, Cancelled):
            self._cancel_waiting(row, reason)
        else:
            self._wake_waiting(row.id)

    def _cancel_waiting(self, row: JobRow, reason: str) -> None:
        """Job ``row`` was cancelled by request: the copies of its photo that waited for it
        are cancelled with it (woken, they would run it again as a retry), moved aside
        from an inbox with the reason; a batch's stay for its next run to decide."""
        with self._lock:
            waiting = self._waiting.pop(row.id, {})
        for path, key in waiting.items():
            self._cancel_copy(row, path, key, reason)

    def _cancel_copy(self, row: JobRow, path: Path, key: str, reason: str) -> None:
        """The copy ``path`` (of source ``key``) of cancelled job ``row``'s photo, moved
        aside from an inbox with ``reason``."""
        source = self.sources.get(key)
        if source is None or not source.moves_inputs or not os.path.lexists(path):
            return
        assert isinstance(source.config, InboxConfig)
        try:
            moved = move_input(path, source.config.failed_dir)
            said = f"{reason}\nthe same photo as job {row.id}: {shown(row.name)}"
            files.write_reason(moved, said)
        except OSError:  # it stays in the inbox; the next rescan retries the job
            log.exception("cannot move %s aside", files.readable(str(path)))
            return
        log.info(
            "cancelled with the job of the same bytes",
            extra={**self._fields(row, "cancelled"), "path": files.readable(str(moved))},
        )


class _JournalReporter:
    """Progress into the journal (for ``stylebox status``), at most once a second a job. A
    report that comes sooner is kept and written when the second is up, so the step a job
    pauses at (a checkpoint, a long step) is the journal's too, not the one before it."""

    INTERVAL = 1.0

    def __init__(self, journal: Journal, inner: Reporter | None) -> None:
        self.journal = journal
        self.inner = inner
        self._lock = threading.Lock()
        self._last: dict[int, float] = {}
        self._pending: dict[int, tuple[int, int, float | None]] = {}
        self._timers: dict[int, threading.Timer] = {}
        self._runs: dict[int, Job] = {}
        """The run of each job id reported now: a job claimed again in this process while
        its lost run still winds down has two, and only the newer one's reports count."""

    def started(self, job: Job) -> None:
        if job.job_id is not None:
            with self._lock:
                self._last[job.job_id] = time.monotonic()
                self._runs[job.job_id] = job
        if self.inner:
            self.inner.started(job)

    def progress(self, job: Job, step: int, total: int, metrics: dict[str, float]) -> None:
        # A second between writes: status stays fresh and quick jobs write nothing.
        job_id = job.job_id
        if job_id is not None and self._runs.get(job_id) is job:
            report = (step, total, metrics.get("eta"))
            with self._lock:
                now = time.monotonic()
                due = self._last.get(job_id, now) + self.INTERVAL
                write = now >= due
                if write:
                    self._last[job_id] = now
                    self._pending.pop(job_id, None)
                else:
                    self._pending[job_id] = report
                    if job_id not in self._timers:
                        timer = threading.Timer(due - now, self._flush, args=(job_id,))
                        timer.daemon = True
                        self._timers[job_id] = timer
                        timer.start()
            if write:
                self._write(job_id, report)
        if self.inner:
            self.inner.progress(job, step, total, metrics)

    def finished(self, job: Job, result: JobResult) -> None:
        self._forget(job)
        if self.inner:
            self.inner.finished(job, result)

    def failed(self, job: Job, error: StyleboxError) -> None:
        self._forget(job)  # a report kept back is not written over the failed job's row
        if self.inner:
            self.inner.failed(job, error)

    def _forget(self, job: Job) -> None:
        if job.job_id is not None:
            with self._lock:
                if self._runs.get(job.job_id) is not job:
                    return  # an older run's end: the newer one goes on
                del self._runs[job.job_id]
                self._last.pop(job.job_id, None)
                self._pending.pop(job.job_id, None)
                timer = self._timers.pop(job.job_id, None)
            if timer is not None:
                timer.cancel()

    def _flush(self, job_id: int) -> None:
        """The report kept back for ``job_id``, written now that its second is up."""
        with self._lock:
            self._timers.pop(job_id, None)
            report = self._pending.pop(job_id, None)
            if report is None or job_id not in self._last:  # written since, or ended
                return
            self._last[job_id] = time.monotonic()
        self._write(job_id, report)

    def _write(self, job_id: int, report: tuple[int, int, float | None]) -> None:
        step, total, eta = report
        try:
            self.journal.set_progress(job_id, step, total, eta=eta)
        except Exception as exc:  # progress is for show: the job must not fail on it
            log.warning("cannot record the progress of job %s: %s", job_id, exc)


def _companion_keys(paths: Sequence[Path]) -> dict[Path, str]:
    """For each of ``paths`` with companion files beside it (``photo.mask.png``), their
    kinds and digests, for its job's key: the same photo with another mask is another job,
    not a duplicate. One listing per folder, not one per file: an arrival can be
    thousands of files."""
    indexes: dict[Path, dict[str, dict[str, list[str]]]] = {}
    for folder in {path.parent for path in paths}:
        try:
            indexes[folder] = companion_lists(os.listdir(folder))
        except OSError:
            continue
    keys: dict[Path, str] = {}
    for path in paths:
        found = indexes.get(path.parent, {}).get(path.stem, {})
        parts = []
        # Each of them: two masks beside a photo done with one are no duplicate of it, but
        # a job that fails for them (see companion_clash).
        for kind, names in sorted(found.items()):
            for name in names:
                if name == path.name:
                    continue
                try:
                    parts.append(f"{kind}:{files.digest(path.parent / name)}")
                except OSError:  # gone or unreadable: the job takes what is there when it runs
                    continue
        if parts:
            keys[path] = "|".join(parts)
    return keys


def move_input(
    origin: Path,
    folder: Path,
    before: Callable[[Path], None] | None = None,
    name: str | None = None,
) -> Path:
    """Move the input at ``origin`` into ``folder`` under a free name (``name``, else its
    own), where it is now; its companion files (``photo.mask.png``) and sidecars
    (``photo.xmp``) follow it, named after it there, and one that cannot be moved stays,
    logged. ``before``: see :func:`files.move_unique`."""
    moved = files.move_unique(origin, folder, name, before=before)
    followers = [
        (path, f"{moved.stem}.{kind}{path.suffix}") for kind, path in all_companions_of(origin)
    ]
    followers += [
        (path, sidecar.renamed(origin.name, moved.name)) for path, sidecar in sidecars_of(origin)
    ]
    for path, named in followers:
        try:
            files.move_unique(path, moved.parent, named)
        except OSError as exc:
            log.warning("cannot move %s with its input: %s", files.readable(str(path)), exc)
    return moved


def _kept_aside(inbox: Path, input_path: str) -> bool:
    """Whether a failed job's file at ``input_path`` is still where its failure put it,
    out of the ``inbox`` (in ``failed/``): an arrival of its bytes is a copy of it then."""
    return Path(input_path).parent != inbox and os.path.lexists(input_path)


def _left_failed(inbox: Path, input_path: str) -> bool:
    """Whether a failed job's file, moved out of the ``inbox`` (to ``failed/``), is gone
    from there: moved back (by hand, mended, or by the page's Retry), or deleted."""
    return Path(input_path).parent != inbox and not os.path.lexists(input_path)


def _inbox_folders(sources: dict[str, Source]) -> list[tuple[str, Path]]:
    """The inboxes among ``sources``: each key with its folder."""
    return [
        (key, source.config.path)
        for key, source in sources.items()
        if isinstance(source.config, InboxConfig)
    ]
