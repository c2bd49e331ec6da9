"""Watching inboxes: turning file-system events into complete, settled files.

A file becomes a job only when it is complete. Candidates come from watchdog's created,
modified, closed and moved-in events (and from rescans); temp and hidden names are
ignored; a candidate is promoted once its size and mtime have not changed for the settle
window (restarted by any new event) and an open-for-read probe succeeds. A companion file
(``photo.mask.png``, see :data:`~stylebox.plugins.api.COMPANION_KINDS`) or sidecar
(``photo.xmp``, see :mod:`stylebox.daemon.sidecars`) is never a job: its events restart the
window of its input (``photo.jpg``), so a photo waits for a mask that arrives within its
settle window. Where the kernel
allows it, a read lease proves no one still has the file open for writing.

Handlers never raise into watchdog: an exception there silently kills its thread. The
observers and the settle loop are supervised by :meth:`InboxWatcher.check` and restarted
if they die. ``check`` also notices an inbox folder that was deleted or replaced (``rm -r
inbox && mkdir inbox``, ``mv inbox old && mkdir inbox``): a watch follows the folder it was
set on, not its path, so it recreates a missing folder, watches the one now at the path
and rescans it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from stylebox.daemon.sidecars import Sidecar, follows_a_photo, photo_beside, sidecar_of
from stylebox.plugins.api import companion_kind, is_ignored

log = logging.getLogger("stylebox.watcher")

#: The files stylebox writes beside a result (its steps/ folder aside).
_BESIDE_A_RESULT = (".json", ".gif", ".loss.svg")


def beside_a_result(name: str, folder: bool) -> bool:
    """Whether ``name`` is what stylebox writes beside each result (its manifest, GIF, loss
    plot, snapshot folder): never an input of an inbox fed by another inbox's or a batch's
    outbox."""
    lowered = name.lower()
    return lowered.endswith(".steps") if folder else lowered.endswith(_BESIDE_A_RESULT)


def left_alone(folder: Path, reserved: Iterable[str] = (), fed: bool = False) -> list[str]:
    """What in the inbox ``folder`` no job takes, by name, each said with why (as the
    watcher logs it once): its folders, and companion and sidecar files whose photo is not
    beside them. ``reserved``: the inbox's own folders (``processed/``, ``failed/``). ``fed``: the
    folder is another inbox's or a batch's outbox, whose snapshot folders are no news."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return []
    skipped = set(reserved)
    said = [
        _subfolder_why(entry.name)
        for entry in entries
        if entry.is_dir(follow_symlinks=False)
        and not is_ignored(entry.name)
        and entry.name not in skipped
        and not (fed and beside_a_result(entry.name, folder=True))
    ]
    orphans = _orphans([entry.name for entry in entries])
    said += [_orphan_why(name, orphans[name]) for name in sorted(orphans)]
    return said


def _subfolder_why(name: str) -> str:
    return (
        f"{name}/ is a folder, left where it is: only files in the inbox itself are taken "
        "(move its photos up, or run a [[batch]] over it)"
    )


def _orphans(names: list[str]) -> dict[str, tuple[str, str] | Sidecar]:
    """The companion and sidecar files among ``names`` (one folder's) whose photo is not
    among them: by name, a companion's kind and its photo's stem, or what the sidecar's
    name says."""
    photos = [name for name in names if not follows_a_photo(name)]
    stems = {name.rsplit(".", 1)[0] for name in photos}
    orphans: dict[str, tuple[str, str] | Sidecar] = {}
    for name in names:
        if is_ignored(name):
            continue
        if (companion := companion_kind(name)) is not None:
            if companion[1] not in stems:
                orphans[name] = companion
            continue
        sidecar = sidecar_of(name)
        if sidecar is not None and not any(sidecar.belongs_to(photo) for photo in photos):
            orphans[name] = sidecar
    return orphans


def _orphan_why(name: str, found: tuple[str, str] | Sidecar) -> str:
    if isinstance(found, Sidecar):
        return (
            f"{name} is a sidecar of a photo named {found.named()} that is not here; it stays "
            "until its photo comes, and then goes where the photo goes (one done or failed "
            "before it came: move it to its photo in processed/ or failed/)"
        )
    kind, stem = found
    suffix = name.rsplit(".", 1)[-1]
    return (
        f"{name} is the {kind} of a photo named {stem}.* that is not here; no job takes it "
        f"until its photo comes (a photo's own name must not end in .{kind}.{suffix})"
    )


@dataclass(frozen=True)
class WatchedFolder:
    """One inbox as the watcher sees it."""

    name: str
    path: Path
    settle_seconds: float
    poll: bool = False
    poll_interval: float = 2.0
    reserved: frozenset[str] = frozenset()
    """Entry names inside the folder that are not inputs (``processed``, ``failed``):
    folders, created with it when it has to be recreated."""
    fed: bool = False
    """The folder is another inbox's or a batch's outbox: only its results are inputs."""


@dataclass
class _Candidate:
    folder: WatchedFolder
    size: int
    mtime_ns: int
    changed_at: float


SettledCallback = Callable[[WatchedFolder, list[Path]], None]


class InboxWatcher:
    """One native observer for all inboxes (plus a polling one per ``watch = "poll"``
    inbox), a settle loop, and the supervision that keeps both alive."""

    def __init__(self, folders: Iterable[WatchedFolder], on_settled: SettledCallback) -> None:
        self.folders = {folder.path: folder for folder in folders}
        self.on_settled = on_settled
        self._candidates: dict[Path, _Candidate] = {}
        self._lock = threading.Lock()
        self._handler = _Handler(self)
        self._observers: list[BaseObserver] = []
        self._observer_for: dict[Path, BaseObserver] = {}
        self._watches: dict[Path, ObservedWatch] = {}
        """The watch on each folder, where it could be set."""
        self._identity: dict[Path, tuple[int, int]] = {}
        """Device and inode of the folder each watch was set on."""
        self._unwatched: set[Path] = set()
        """Folders that could not be (re)created or watched; said once, retried by check."""
        self._orphans: set[Path] = set()
        """Companion and sidecar files with no photo beside them, said once (at a rescan)."""
        self._subfolders: set[Path] = set()
        """Folders in inboxes already said to be left alone (forgotten once gone)."""
        self._stop = threading.Event()
        self._settler: threading.Thread | None = None
        self.restarts = 0

    def remember_said(self, earlier: InboxWatcher) -> None:
        """What ``earlier`` (the watcher a reload replaces) has said once is said: a folder
        or a lone mask left alone was logged again at every reload."""
        with earlier._lock, self._lock:
            self._orphans |= earlier._orphans
            self._subfolders |= earlier._subfolders

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Create and watch every folder; one that cannot be is logged and left to
        :meth:`check`, which tries again (meanwhile :meth:`healthy` is false)."""
        self._start_observers()
        self._start_settler()
        self.rescan()

    def stop(self) -> None:
        self._stop.set()
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            if observer.is_alive():
                observer.join(timeout=5)
        if self._settler is not None:
            self._settler.join(timeout=5)

    def _start_settler(self) -> None:
        self._settler = threading.Thread(target=self._settle_loop, name="settler", daemon=True)
        self._settler.start()

    def _start_observers(self) -> None:
        """Start the observers, then set a watch on each folder through its own."""
        native: BaseObserver | None = None
        observers: list[BaseObserver] = []
        self._observer_for = {}
        self._watches = {}
        for folder in self.folders.values():
            if folder.poll:
                observer: BaseObserver = PollingObserver(timeout=folder.poll_interval)
                observers.append(observer)
            else:
                if native is None:
                    native = Observer()
                    observers.append(native)
                observer = native
            self._observer_for[folder.path] = observer
        for observer in observers:
            observer.daemon = True
            observer.start()
        self._observers = observers
        for folder in self.folders.values():
            self._watch(folder, None)

    def _watch(self, folder: WatchedFolder, problem: str | None) -> bool:
        """(Re)create ``folder`` with its reserved folders and set a new watch on it, in
        place of the old one; ``problem`` says why it is watched again (``None``: the
        first time). False, logged once, if that failed."""
        path = folder.path
        observer = self._observer_for[path]
        old = self._watches.pop(path, None)
        if old is not None:
            with contextlib.suppress(Exception):  # its emitter may have ended already
                observer.unschedule(old)
        try:
            path.mkdir(parents=True, exist_ok=True)
            for name in sorted(folder.reserved):
                (path / name).mkdir(exist_ok=True)
            info = os.stat(path)  # before the watch: a folder replaced in between is seen
            self._watches[path] = observer.schedule(self._handler, str(path), recursive=False)
        except Exception as exc:
            if path not in self._unwatched:
                self._unwatched.add(path)
                log.error(
                    "inbox %s (%s) %s and cannot be watched: %s; trying again",
                    folder.name,
                    path,
                    problem or "is missing",
                    exc,
                    extra={"event": "inbox_unwatched", "inbox": folder.name},
                )
            return False
        self._identity[path] = (info.st_dev, info.st_ino)
        if problem is not None or path in self._unwatched:
            log.warning(
                "inbox %s (%s) %s; watching it again and rescanning it",
                folder.name,
                path,
                problem or "can be watched now",
                extra={"event": "inbox_rewatched", "inbox": folder.name},
            )
        self._unwatched.discard(path)
        return True

    def _watch_problem(self, folder: WatchedFolder) -> str | None:
        """Why the watch on ``folder`` no longer sees what arrives at its path, if so."""
        path = folder.path
        try:
            info = os.stat(path)
        except OSError:
            return "was deleted"
        if not stat.S_ISDIR(info.st_mode):
            return "was replaced by something that is not a folder"
        watch = self._watches.get(path)
        if watch is None:
            return "is not watched"
        if (info.st_dev, info.st_ino) != self._identity.get(path):
            return "was replaced by another folder (moved away or deleted, then made again)"
        try:
            emitters = list(self._observer_for[path].emitters)
        except RuntimeError:  # changed while copied: look again at the next check
            return None
        if not any(emitter.watch == watch and emitter.is_alive() for emitter in emitters):
            # The watch ended: its folder was deleted, and one made since with the same inode.
            return "was deleted and made again"
        return None

    def unwatched(self) -> dict[str, tuple[Path, str]]:
        """The inboxes whose folder is not watched now (gone, replaced, or not made), by
        name, each with its folder and why: systemd's status line and the status page say
        them while ``check`` tries again."""
        problems = {f.name: (f.path, self._watch_problem(f)) for f in self.folders.values()}
        return {
            name: (path, problem)
            for name, (path, problem) in problems.items()
            if problem is not None
        }

    def healthy(self) -> bool:
        """The settle loop and every observer run, and every folder is watched where it is."""
        settler_alive = self._settler is not None and self._settler.is_alive()
        return (
            settler_alive
            and all(observer.is_alive() for observer in self._observers)
            and all(self._watch_problem(folder) is None for folder in self.folders.values())
        )

    def check(self) -> None:
        """Restart dead observers and a dead settle loop, then rescan: the events a dead
        observer missed, and the files a dying settle loop held, are found again. Watch
        again, and rescan, each folder deleted or replaced since it was watched (recreating
        a missing one). Called every fraction of a second; never raises."""
        if self._stop.is_set():
            return
        try:
            self._check()
        except Exception:  # the caller's loop must go on; the next check tries again
            log.exception("checking the watched inboxes failed")

    def _check(self) -> None:
        restarted = False
        if not all(observer.is_alive() for observer in self._observers):
            log.error("a file-system observer died; restarting it and rescanning the inboxes")
            for observer in self._observers:
                with contextlib.suppress(Exception):  # already dead; nothing to stop
                    observer.stop()
            self._start_observers()
            restarted = True
        if self._settler is not None and not self._settler.is_alive():
            log.error("the settle loop died; restarting it and rescanning the inboxes")
            self._start_settler()
            restarted = True
        if restarted:
            self.restarts += 1
            self.rescan()
        for folder in self.folders.values():
            problem = self._watch_problem(folder)
            if problem is not None and self._watch(folder, problem):
                self._scan(folder)

    # -- candidates ------------------------------------------------------------------------

    def rescan(self) -> None:
        """Reconcile with what is on disk: every entry in an inbox becomes a candidate."""
        for folder in self.folders.values():
            self._scan(folder)

    def _scan(self, folder: WatchedFolder) -> None:
        try:
            entries = list(os.scandir(folder.path))
        except OSError as exc:
            log.error("cannot list inbox %s (%s): %s", folder.name, folder.path, exc)
            return
        # The files of one listing become candidates together, after all are looked at:
        # then they settle together and are queued in one transaction. Added one by one, a
        # busy machine let the settle loop take the first ones before the others were seen,
        # and same-size photos missed each other's batch.
        found = [self._candidate(Path(entry.path)) for entry in entries]
        self._say_orphans(folder, [entry.name for entry in entries])
        now = time.monotonic()
        here = {Path(entry.path) for entry in entries}
        with self._lock:
            # A folder taken away and brought back (the next album) is said again.
            self._subfolders = {p for p in self._subfolders if p.parent != folder.path or p in here}
            for path, candidate in found:
                if candidate is None:
                    self._candidates.pop(path, None)
                else:
                    self._candidates[path] = replace(candidate, changed_at=now)

    def _say_orphans(self, folder: WatchedFolder, names: list[str]) -> None:
        """A companion or sidecar file (``photo.mask.png``, ``photo.xmp``) whose photo is
        not beside it waits for it, taken by no job: say so once, rather than leave it
        there in silence."""
        orphans = {folder.path / name: found for name, found in _orphans(names).items()}
        for path in sorted(orphans.keys() - self._orphans):
            log.warning(
                "inbox %s: %s",
                folder.name,
                _orphan_why(path.name, orphans[path]),
                extra={"event": "companion_alone", "path": str(path)},
            )
        with self._lock:
            kept = {path for path in self._orphans if path.parent != folder.path}
            self._orphans = kept | orphans.keys()

    def touch(self, path: Path) -> None:
        """Something happened to ``path``: (re)start its settle window (for a companion or
        sidecar file: its input's)."""
        if path.parent in self.folders:
            if (companion := companion_kind(path.name)) is not None:
                stem = companion[1]
                self._restart_inputs(path.parent, lambda name: Path(name).stem == stem)
                # Alone, it settles too: it may be what a failed photo lacked.
            elif (sidecar := sidecar_of(path.name)) is not None:
                self._restart_inputs(path.parent, sidecar.belongs_to)
                return
        path, candidate = self._candidate(path)
        with self._lock:
            if candidate is None:
                self._candidates.pop(path, None)
            else:
                self._candidates[path] = candidate

    def _restart_inputs(self, folder: Path, whose: Callable[[str], bool]) -> None:
        """Restart the settle window of the candidates in ``folder`` whose name ``whose``."""
        now = time.monotonic()
        with self._lock:
            for path, candidate in list(self._candidates.items()):
                if path.parent == folder and whose(path.name):
                    # A new object: a settle pass holding the old one leaves it be.
                    self._candidates[path] = replace(candidate, changed_at=now)

    def _candidate(self, path: Path) -> tuple[Path, _Candidate | None]:
        """``path`` as a candidate seen now; ``None`` for a name to ignore or a file gone."""
        folder = self.folders.get(path.parent)
        if (
            folder is None
            or is_ignored(path.name)
            or path.name in folder.reserved
            or (follows_a_photo(path.name) and not _lone_companion(path))
        ):
            return path, None
        try:
            info = path.lstat()
        except FileNotFoundError:
            return path, None
        if folder.fed and beside_a_result(path.name, folder=stat.S_ISDIR(info.st_mode)):
            return path, None  # the upstream inbox's manifest, GIF, loss plot, snapshots
        if stat.S_ISDIR(info.st_mode):
            # Only the inbox's own files are inputs. A folder was once taken for a bad one,
            # moved to failed/ while an album was still being copied into it.
            self._say_subfolder(folder, path)
            return path, None
        return path, _Candidate(folder, info.st_size, info.st_mtime_ns, time.monotonic())

    def _say_subfolder(self, folder: WatchedFolder, path: Path) -> None:
        """A folder in an inbox is left where it is: said once, rather than in silence."""
        with self._lock:
            if path in self._subfolders:
                return
            self._subfolders.add(path)
        log.warning(
            "inbox %s: %s",
            folder.name,
            _subfolder_why(path.name),
            extra={"event": "subfolder", "path": str(path)},
        )

    def forget(self, path: Path) -> None:
        with self._lock:
            self._candidates.pop(path, None)

    def _settle_loop(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self._settle_once()
            except Exception:  # the loop must survive anything one file does
                log.exception("settle loop error")

    def _settle_once(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [
                (path, candidate)
                for path, candidate in self._candidates.items()
                if now - candidate.changed_at >= candidate.folder.settle_seconds
            ]
        settled: dict[Path, list[Path]] = {}
        for path, candidate in due:
            try:
                stat = path.lstat()
            except FileNotFoundError:
                self.forget(path)
                continue
            if (stat.st_size, stat.st_mtime_ns) != (candidate.size, candidate.mtime_ns):
                self.touch(path)  # still changing: a new window
                continue
            if not _readable_and_quiet(path):
                self.touch(path)
                continue
            with self._lock:
                current = self._candidates.get(path)
                if current is not candidate:
                    continue  # an event arrived meanwhile; its window decides
                del self._candidates[path]
            settled.setdefault(candidate.folder.path, []).append(path)
        for folder_path, paths in settled.items():  # a burst is queued in one transaction
            try:
                self.on_settled(self.folders[folder_path], paths)
            except Exception:
                log.exception("failed to queue %d file(s) of %s", len(paths), folder_path)


def _lone_companion(path: Path) -> bool:
    """Whether ``path`` is a companion file (``photo.mask.png``) with no photo of its stem
    beside it: one that settles, to bring back a photo that failed for want of it."""
    return companion_kind(path.name) is not None and not photo_beside(path)


def _readable_and_quiet(path: Path) -> bool:
    """Open for reading; where the kernel grants a read lease, no writer has it open."""
    if path.is_symlink() or not path.is_file():
        return True  # not a regular file: the runner refuses it with a reason
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return False  # someone has it open for writing
            # EACCES (not our file), EINVAL (file system without leases): settle alone decides
        else:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return True
    finally:
        os.close(fd)


class _Handler(FileSystemEventHandler):
    """Feeds events to the watcher; never lets an exception reach watchdog."""

    def __init__(self, watcher: InboxWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            # Not "closed_no_write": our own probes and hashing read files and would re-arm them.
            if event.event_type in ("created", "modified", "closed"):
                self.watcher.touch(Path(os.fsdecode(event.src_path)))
            elif event.event_type == "moved":
                self.watcher.forget(Path(os.fsdecode(event.src_path)))
                self.watcher.touch(Path(os.fsdecode(event.dest_path)))
            elif event.event_type == "deleted":
                self.watcher.forget(Path(os.fsdecode(event.src_path)))
        except Exception:
            log.exception("error handling %s", event)
