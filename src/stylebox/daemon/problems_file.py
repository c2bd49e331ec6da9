"""What keeps a running daemon from serving its config, kept where ``stylebox status`` reads it.

The daemon knows things its journal does not: an inbox whose plugin failed to start (a bad
model file, a missing driver) is disabled, its photos waiting in its folder, with no job
for ``stylebox status`` to count. The status page lists them from the daemon itself; this
file, ``state_dir/problems.json``, carries the same list to the other process. It is read
only while a daemon holds the lock of ``state_dir/serve.lock``: one left by a daemon that
was killed is not read as the word of a running one.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from stylebox.daemon.leases import pid_alive
from stylebox.images import atomic_write_bytes

PROBLEMS_NAME = "problems.json"

#: What a disabled inbox's or batch's files wait for (a plugin module imported once stays
#: imported: a reload loads again only one that failed to import).
MENDED = (
    "the plugin is mended and the daemon reloaded (SIGHUP), or restarted where the "
    "plugin's code changed"
)
DISABLED_WAIT = f"its files wait until {MENDED}"


def publish(state_dir: Path, problems: list[dict[str, Any]], disabled: dict[str, str]) -> None:
    """Write this process's ``problems`` (the status page's list) and the reason of each
    ``disabled`` source (by ``table:name``) for ``stylebox status``."""
    data = {"pid": os.getpid(), "problems": problems, "disabled": disabled}
    atomic_write_bytes(state_dir / PROBLEMS_NAME, json.dumps(data).encode(), sync_folder=False)


def withdraw(state_dir: Path) -> None:
    """The daemon stops: nothing it said holds any longer."""
    with contextlib.suppress(OSError):
        (state_dir / PROBLEMS_NAME).unlink(missing_ok=True)


def read(state_dir: Path) -> dict[str, Any] | None:
    """What the daemon serving ``state_dir`` published (``pid``, ``problems``,
    ``disabled``), or ``None`` when no daemon that is still running did."""
    try:
        data = json.loads((state_dir / PROBLEMS_NAME).read_text())
        pid = int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):  # none, or being replaced
        return None
    served = _served(state_dir)
    alive = served if served is not None else pid_alive(pid)
    return data if alive else None


def _served(state_dir: Path) -> bool | None:
    """Whether a process holds the lock on ``state_dir/serve.lock`` (a daemon serves it),
    as the kernel's table of locks says (``/proc/locks``); ``None`` where it cannot be told.
    A pid alone misleads: a killed daemon's may be another process's by now, and a daemon
    in a container has another pid outside it. Looking takes no lock, so a daemon starting
    meanwhile is never refused for it."""
    try:
        info = os.stat(state_dir / "serve.lock")
    except OSError:  # a daemon makes it first thing: none served here
        return False
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    # By inode (MAJ:MIN:INODE): a layered file system may name another device than stat.
    for line in table.splitlines():
        fields = line.split()
        if "->" in fields or "FLOCK" not in fields:  # "->": a process waiting for a lock
            continue
        if any(f.count(":") == 2 and f.rpartition(":")[2] == str(info.st_ino) for f in fields):
            return True
    return False
