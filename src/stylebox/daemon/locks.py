"""One daemon per inbox: a lock file in each inbox folder.

Two ``stylebox serve`` with different state dirs (so different journals, each unaware of
the other's jobs) on one inbox would both take its files and write each other's output
names over. A daemon therefore holds an exclusive ``flock`` on ``<inbox>/.stylebox.lock``
for as long as it serves that inbox, and writes its pid and state dir into the file so that
a second daemon's refusal can name it. The name is hidden: the watcher and batch scans never
take it as an input. The kernel lets go of the lock when its process ends, however it ends
(``kill -9`` included), so nothing needs cleaning up; the file itself stays.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Protocol

from stylebox.daemon import files
from stylebox.errors import ConfigError

log = logging.getLogger("stylebox.locks")

LOCK_NAME = ".stylebox.lock"


class _Inbox(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def path(self) -> Path: ...


class InboxTaken(ConfigError):
    """Another process holds an inbox's lock: its files are that process's."""


class InboxLocks:
    """The inbox locks one daemon holds, by the inbox folder's resolved path."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._held: dict[Path, IO[str]] = {}
        self._names: dict[Path, str] = {}
        self._refused: set[Path] = set()
        """Folders whose lock could not be taken again (said once, not at each look)."""

    def acquire(self, inboxes: Iterable[_Inbox]) -> None:
        """Hold the lock of every inbox given (those held already stay held), creating
        folders that are missing. All or none: when another process holds one, the locks
        this call took are let go and a :class:`ConfigError` names the inbox and the
        holder."""
        taken: list[Path] = []
        try:
            for inbox in inboxes:
                folder = inbox.path.resolve()
                if folder in self._held:
                    continue
                self._held[folder] = self._lock(inbox.name, folder)
                self._names[folder] = inbox.name
                self._refused.discard(folder)  # held again: its files are this daemon's
                taken.append(folder)
        except BaseException:
            for folder in taken:
                self._release(folder)
            raise

    def keep_only(self, inboxes: Iterable[_Inbox]) -> None:
        """Let go of the inboxes not given (removed from the config)."""
        keep = {inbox.path.resolve() for inbox in inboxes}
        for folder in [folder for folder in self._held if folder not in keep]:
            self._release(folder)

    def refresh(self) -> None:
        """Take a lock again whose file was removed or replaced (the inbox folder was
        deleted and made anew, say): a lock on a file no longer there keeps no one out.
        Cheap (two ``stat`` calls an inbox): the daemon looks five times a second."""
        for folder, handle in list(self._held.items()):
            try:
                held, there = os.fstat(handle.fileno()), (folder / LOCK_NAME).stat()
                if (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino):
                    continue
            except OSError:
                pass  # the file or the folder is gone
            try:
                replacement = self._lock(self._names[folder], folder)
            except (ConfigError, OSError) as exc:
                if folder not in self._refused:
                    self._refused.add(folder)
                    if isinstance(exc, InboxTaken):
                        log.error(
                            "%s; its lock file was removed or replaced; its files are left "
                            "to that daemon",
                            exc,
                        )
                    else:
                        log.error(
                            "inbox %s (%s): its lock file was removed or replaced and cannot "
                            "be taken again: %s; its files wait until it can",
                            self._names[folder],
                            folder,
                            exc,
                        )
                continue
            self._refused.discard(folder)
            handle.close()
            self._held[folder] = replacement
            log.warning(
                "inbox %s (%s): its lock file was gone; taken again", self._names[folder], folder
            )

    def lost(self, folder: Path) -> bool:
        """Whether another daemon took the lock of inbox ``folder`` after it was made anew:
        its files are that daemon's then, not to be taken here too."""
        return folder.resolve() in self._refused

    def close(self) -> None:
        for folder in list(self._held):
            self._release(folder)

    def _lock(self, name: str, folder: Path) -> IO[str]:
        files.make_folder(f"inbox {name!r} path", folder)
        try:
            handle = (folder / LOCK_NAME).open("a+", encoding="utf-8")
        except OSError as exc:
            # A folder the daemon cannot write to is one it could not move photos out of.
            raise ConfigError(
                f"inbox {name!r} ({folder}) cannot be served: its lock file {LOCK_NAME} "
                f"cannot be written there ({exc.strerror or exc}); the daemon must be able "
                "to write in an inbox to move finished photos out of it"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = " ".join(handle.read().split()) or "another process"
            handle.close()
            raise InboxTaken(f"inbox {name!r} ({folder}) is already served by {holder}") from None
        except OSError as exc:  # a file system without locks (ENOLCK on some NFS mounts)
            handle.close()
            raise ConfigError(
                f"inbox {name!r} ({folder}) cannot be served: its lock file {LOCK_NAME} "
                f"cannot be locked ({exc.strerror or exc}); a daemon needs a file system "
                "with file locks for its inboxes"
            ) from None
        except BaseException:
            handle.close()
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, state dir {self.state_dir.resolve()}\n")
        handle.flush()
        return handle

    def _release(self, folder: Path) -> None:
        handle = self._held.pop(folder)
        self._names.pop(folder, None)
        self._refused.discard(folder)
        with contextlib.suppress(OSError):
            handle.close()  # closing the only descriptor lets go of the flock
