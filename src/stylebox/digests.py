"""File digests that plugins mix into their identity (see ``Plugin.identity``)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

_lock = threading.Lock()
_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, kept while its size and mtime stay the same (so a plugin
    can ask again at each reload without reading its model again)."""
    stat = path.stat()
    key = (str(path.absolute()), stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key in _digests:
            return _digests[key]
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    with _lock:
        _digests[key] = digest
    return digest
