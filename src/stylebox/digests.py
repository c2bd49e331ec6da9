"""File digests that plugins mix into their identity (see ``Plugin.identity``)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

#: Digests kept, the least recently asked for dropped first: a daemon's status page asks
#: for every photo it shows, and a long-running one sees unboundedly many.
KEPT = 1024

_lock = threading.Lock()
_digests: OrderedDict[tuple[str, int, int], str] = OrderedDict()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, kept while its size and mtime stay the same (so a plugin
    can ask again at each reload without reading its model again), for the :data:`KEPT`
    files last asked for."""
    stat = path.stat()
    key = (str(path.absolute()), stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key in _digests:
            _digests.move_to_end(key)
            return _digests[key]
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    with _lock:
        _digests[key] = digest
        while len(_digests) > KEPT:
            _digests.popitem(last=False)
    return digest
