"""Moving inputs out of an inbox without ever losing or overwriting one."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from stylebox.errors import ConfigError
from stylebox.images import atomic_write_bytes, fsync_dir
from stylebox.logs import readable

_lock = threading.Lock()


#: Longest file name most file systems take (ext4, XFS, Btrfs, ZFS...), in bytes.
NAME_MAX = 255
#: Longest name an input keeps in processed/ or failed/, in bytes: room for its number, its
#: note's suffix and that note's temp file: ``.NAME-99999.duplicate.txt.XXXXXXXX.tmp``.
MOVED_NAME_MAX = NAME_MAX - len(".-99999.duplicate.txt.XXXXXXXX.tmp")


def fitting(name: str, limit: int = MOVED_NAME_MAX) -> str:
    """``name`` with its stem cut, a character at a time, until the whole is at most
    ``limit`` bytes as the file system stores it (a name that is not UTF-8 included); its
    extension kept. A name near the file system's limit, moved aside under a number or
    given a ``.error.txt`` beside it, would fail to move, and its job never end."""
    if len(os.fsencode(name)) <= limit:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem or len(os.fsencode(dot + suffix)) > limit // 2:
        stem, dot, suffix = name, "", ""
    while stem and len(os.fsencode(stem + dot + suffix)) > limit:
        stem = stem[:-1]
    return stem + dot + suffix


def free_path(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/stem-2.ext`` and so on if that is taken."""
    candidate = folder / name
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        stem, suffix = name, ""
    n = 2
    while os.path.lexists(candidate):
        candidate = folder / (f"{stem}-{n}.{suffix}" if suffix else f"{stem}-{n}")
        n += 1
    return candidate


def make_folder(what: str, folder: Path) -> None:
    """Make the folder a setting names (``what``: ``--out``, ``inbox 'photos' outbox``), or
    refuse it in one line before anything starts: a file there, a parent that is no folder,
    no permission."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{what} {folder} is a file, not a folder") from None
    except OSError as exc:
        raise ConfigError(
            f"{what} {folder} cannot be made a folder: {exc.strerror or exc}"
        ) from None


def move_unique(
    source: Path,
    folder: Path,
    name: str | None = None,
    before: Callable[[Path], None] | None = None,
) -> Path:
    """Rename ``source`` (a file, folder or link: never followed) into ``folder`` under a
    free name (``name``, else its own cut to :data:`MOVED_NAME_MAX` bytes; numbered if
    taken), durably. A ``folder`` on another
    file system (a ``processed_dir`` on a NAS, say) gets a copy, whole under its name
    before the original is removed. ``before(target)`` is called with the name chosen,
    before the move, while no other move of this process can take it (to record where the
    file is going: a crash between the two leaves the record, and the file where it was)."""
    folder.mkdir(parents=True, exist_ok=True)
    with _lock:
        # Its own name leaves room for a note beside it; a name given (a companion's, which
        # keeps its kind: photo.mask.png) only for a number.
        wanted = fitting(name, NAME_MAX - len("-99999")) if name else fitting(source.name)
        target = free_path(folder, wanted)
        if before is not None:
            before(target)
        try:
            os.rename(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _copy_across(source, target)
    fsync_dir(folder)
    fsync_dir(source.parent)
    return target


def _copy_across(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` on another file system: copied under a hidden name
    first, so that ``target`` never holds part of it, then the original removed."""
    partial = target.with_name(f".{target.name}.moving")
    _remove(partial)  # left by a copy a crash cut short
    try:
        if source.is_symlink():
            os.symlink(os.readlink(source), partial)
        elif source.is_dir():
            shutil.copytree(source, partial, symlinks=True)
        else:
            shutil.copy2(source, partial)
            with partial.open("rb") as handle:
                os.fsync(handle.fileno())
        os.rename(partial, target)
    except BaseException:  # a full disk, say: no half copy left behind
        _remove(partial)
        raise
    if source.is_dir() and not source.is_symlink():
        shutil.rmtree(source)
    else:
        source.unlink()


def _remove(path: Path) -> None:
    """Remove ``path`` (a file, link or folder) if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_reason(moved: Path, reason: str, suffix: str = ".error.txt") -> Path:
    """``<name>.error.txt`` (or another ``suffix``) beside a moved input, saying why."""
    note = moved.with_name(moved.name + suffix)
    atomic_write_bytes(note, (readable(reason).rstrip() + "\n").encode())
    return note


def digest(path: Path) -> str:
    """The sha256 of the file at ``path``, as the journal keeps a job's input."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def holds(path: Path, sha256: str) -> bool:
    """Whether ``path`` still holds the bytes a job was queued for: a file whose bytes
    are others was replaced, and is not that job's to move. A job for something that is not
    a regular file (``"-"``), or a file that cannot be read now, is taken as it is."""
    if sha256 == "-":
        return True
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return False
        return digest(path) == sha256
    except OSError:
        return True
