"""Moving inputs out of an inbox without ever losing or overwriting one."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from stylebox.images import atomic_write_bytes, fsync_dir

_lock = threading.Lock()


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


def move_unique(source: Path, folder: Path) -> Path:
    """Rename ``source`` (a file, folder or link: never followed) into ``folder`` under a
    free name, durably."""
    folder.mkdir(parents=True, exist_ok=True)
    with _lock:
        target = free_path(folder, source.name)
        os.rename(source, target)
    fsync_dir(folder)
    fsync_dir(source.parent)
    return target


def write_reason(moved: Path, reason: str, suffix: str = ".error.txt") -> Path:
    """``<name>.error.txt`` (or another ``suffix``) beside a moved input, saying why."""
    note = moved.with_name(moved.name + suffix)
    atomic_write_bytes(note, (reason.rstrip() + "\n").encode())
    return note
